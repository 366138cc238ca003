//! Vault entries due for re-encryption (`payvault keys rotate`): under an older master key
//! version, or sealed in an older associated-data format.

use sqlx::PgExecutor;

use super::vault::BoundEntry;
use crate::crypto::SealedEntry;

/// A live entry waiting to be re-encrypted under a newer master key version (or AAD format).
#[derive(Debug, Clone)]
pub struct RotationRow {
    pub token: String,
    pub entry: BoundEntry,
}

/// Locks up to `limit` live entries with a token above `after` (in token order), under a key
/// version below `current`, or sealed in an AAD format older than `aad_version` (skipping rows
/// another rotator holds), for re-encryption in the caller's transaction. `after` is the last
/// token of the previous batch (`""` to start): without it every batch walked the primary key
/// from the first token through all the entries already rotated (quadratic in the vault's size).
pub async fn claim_for_rotation(
    db: impl PgExecutor<'_>,
    current: i32,
    aad_version: i16,
    limit: i64,
    after: &str,
) -> Result<Vec<RotationRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT token, key_version, aad_version, wrapped_key AS "wrapped_key!",
               ciphertext AS "ciphertext!", kind, exp_month, exp_year, tenant_id
        FROM vault_entries
        WHERE token > $4 AND (key_version < $1 OR aad_version < $3) AND deleted_at IS NULL
        ORDER BY token
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        "#,
        current,
        limit,
        aad_version,
        after,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RotationRow {
            token: r.token,
            entry: BoundEntry {
                sealed: SealedEntry {
                    key_version: r.key_version,
                    aad_version: r.aad_version,
                    wrapped_key: r.wrapped_key,
                    ciphertext: r.ciphertext,
                },
                tenant: r.tenant_id,
                kind: r.kind,
                exp_month: r.exp_month,
                exp_year: r.exp_year,
            },
        })
        .collect())
}

/// How many live entries [`claim_for_rotation`] has left to claim.
pub async fn count_for_rotation(
    db: impl PgExecutor<'_>,
    current: i32,
    aad_version: i16,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "n!" FROM vault_entries
        WHERE (key_version < $1 OR aad_version < $2) AND deleted_at IS NULL
        "#,
        current,
        aad_version,
    )
    .fetch_one(db)
    .await
}

/// One re-encrypted entry for [`update_rotated`].
pub struct Rotated<'a> {
    pub token: &'a str,
    pub sealed: SealedEntry,
    pub fingerprint: Vec<u8>,
}

/// Stores a batch of re-encrypted entries in one statement (one round trip per batch, not one
/// per entry).
pub async fn update_rotated(
    db: impl PgExecutor<'_>,
    rows: &[Rotated<'_>],
) -> Result<(), sqlx::Error> {
    let tokens: Vec<&str> = rows.iter().map(|r| r.token).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.sealed.key_version).collect();
    let wrapped: Vec<&[u8]> = rows
        .iter()
        .map(|r| r.sealed.wrapped_key.as_slice())
        .collect();
    let ciphertexts: Vec<&[u8]> = rows
        .iter()
        .map(|r| r.sealed.ciphertext.as_slice())
        .collect();
    let fingerprints: Vec<&[u8]> = rows.iter().map(|r| r.fingerprint.as_slice()).collect();
    let aad: Vec<i16> = rows.iter().map(|r| r.sealed.aad_version).collect();
    sqlx::query!(
        r#"
        UPDATE vault_entries v
        SET key_version = u.key_version, wrapped_key = u.wrapped_key, ciphertext = u.ciphertext,
            fingerprint = u.fingerprint, aad_version = u.aad_version
        FROM unnest($1::text[], $2::int[], $3::bytea[], $4::bytea[], $5::bytea[], $6::smallint[])
             AS u(token, key_version, wrapped_key, ciphertext, fingerprint, aad_version)
        WHERE v.token = u.token
        "#,
        &tokens as _,
        &versions,
        &wrapped as _,
        &ciphertexts as _,
        &fingerprints as _,
        &aad,
    )
    .execute(db)
    .await?;
    Ok(())
}

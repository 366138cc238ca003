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

/// Locks up to `limit` live entries under a key version below `current`, or sealed in an AAD
/// format older than `aad_version` (skipping rows another rotator holds), for re-encryption in
/// the caller's transaction.
pub async fn claim_for_rotation(
    db: impl PgExecutor<'_>,
    current: i32,
    aad_version: i16,
    limit: i64,
) -> Result<Vec<RotationRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT token, key_version, aad_version, wrapped_key AS "wrapped_key!",
               ciphertext AS "ciphertext!", kind, exp_month, exp_year, tenant_id
        FROM vault_entries
        WHERE (key_version < $1 OR aad_version < $3) AND deleted_at IS NULL
        ORDER BY token
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        "#,
        current,
        limit,
        aad_version,
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

pub async fn update_rotated(
    db: impl PgExecutor<'_>,
    token: &str,
    sealed: &SealedEntry,
    fingerprint: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE vault_entries
        SET key_version = $2, wrapped_key = $3, ciphertext = $4, fingerprint = $5, aad_version = $6
        WHERE token = $1
        "#,
        token,
        sealed.key_version,
        sealed.wrapped_key,
        sealed.ciphertext,
        fingerprint,
        sealed.aad_version,
    )
    .execute(db)
    .await?;
    Ok(())
}

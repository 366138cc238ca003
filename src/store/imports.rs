//! Bulk import and export of vault entries (`payvault import`, `payvault export`): the
//! `import_sources` table and batched reads and writes of `vault_entries`.
//!
//! The batch insert is the one place imported entries enter the vault; a tenant column, when
//! there is one, is added here beside `created_by`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::vault::BoundEntry;
use crate::crypto::SealedEntry;

/// One imported record: the source system's id and the token it maps to. `entry` is `None`
/// when the token already exists (a deduplicated card), `Some` for a new vault entry.
#[derive(Debug)]
pub struct ImportedRecord<'a> {
    pub source_id: &'a str,
    pub token: &'a str,
    pub entry: Option<NewImportedEntry<'a>>,
}

/// A new vault entry from an import: what tokenize stores, plus the network transaction id.
#[derive(Debug)]
pub struct NewImportedEntry<'a> {
    pub kind: &'a str,
    pub sealed: &'a SealedEntry,
    pub fingerprint: &'a [u8],
    pub brand: Option<&'a str>,
    pub bin: Option<&'a str>,
    pub last4: &'a str,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
    pub network_transaction_id: Option<&'a str>,
}

/// What every entry of one import batch shares.
#[derive(Debug, Clone, Copy)]
pub struct ImportScope<'a> {
    pub source: &'a str,
    /// The tenant of `created_by`, which every entry belongs to.
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    /// The processor profile that issued the imported network transaction ids, if known.
    pub network_transaction_issuer: Option<&'a str>,
}

/// Inserts a batch of imported records and their new vault entries in one statement, which
/// Postgres runs atomically. A source id already recorded (by a concurrent import of the same
/// source) is skipped with its entry. Returns the source ids inserted.
pub async fn insert_batch(
    db: impl PgExecutor<'_>,
    scope: &ImportScope<'_>,
    records: &[ImportedRecord<'_>],
) -> Result<Vec<String>, sqlx::Error> {
    let source_ids: Vec<&str> = records.iter().map(|r| r.source_id).collect();
    let tokens: Vec<&str> = records.iter().map(|r| r.token).collect();
    let new: Vec<(&str, &NewImportedEntry<'_>)> = records
        .iter()
        .filter_map(|r| r.entry.as_ref().map(|e| (r.token, e)))
        .collect();
    let e_tokens: Vec<&str> = new.iter().map(|(t, _)| *t).collect();
    let kinds: Vec<&str> = new.iter().map(|(_, e)| e.kind).collect();
    let key_versions: Vec<i32> = new.iter().map(|(_, e)| e.sealed.key_version).collect();
    let aad_versions: Vec<i16> = new.iter().map(|(_, e)| e.sealed.aad_version).collect();
    let wrapped: Vec<&[u8]> = new
        .iter()
        .map(|(_, e)| e.sealed.wrapped_key.as_slice())
        .collect();
    let ciphertexts: Vec<&[u8]> = new
        .iter()
        .map(|(_, e)| e.sealed.ciphertext.as_slice())
        .collect();
    let fingerprints: Vec<&[u8]> = new.iter().map(|(_, e)| e.fingerprint).collect();
    let brands: Vec<Option<&str>> = new.iter().map(|(_, e)| e.brand).collect();
    let bins: Vec<Option<&str>> = new.iter().map(|(_, e)| e.bin).collect();
    let last4s: Vec<&str> = new.iter().map(|(_, e)| e.last4).collect();
    let months: Vec<Option<i16>> = new.iter().map(|(_, e)| e.exp_month).collect();
    let years: Vec<Option<i16>> = new.iter().map(|(_, e)| e.exp_year).collect();
    let ntids: Vec<Option<&str>> = new.iter().map(|(_, e)| e.network_transaction_id).collect();
    sqlx::query_scalar!(
        r#"
        WITH src AS (
            INSERT INTO import_sources (source, source_id, token)
            SELECT $1, u.source_id, u.token FROM unnest($2::text[], $3::text[]) AS u(source_id, token)
            ON CONFLICT ON CONSTRAINT import_sources_pkey DO NOTHING
            RETURNING source_id, token
        ), entry AS (
            INSERT INTO vault_entries
                (tenant_id, token, created_by, kind, key_version, wrapped_key, ciphertext, fingerprint,
                 brand, bin, last4, exp_month, exp_year, expires_at, aad_version,
                 network_transaction_id, network_transaction_issuer)
            SELECT $20::uuid, e.token, $4::uuid, e.kind, e.key_version, e.wrapped_key, e.ciphertext,
                   e.fingerprint, e.brand, e.bin, e.last4, e.exp_month, e.exp_year,
                   $5::timestamptz, e.aad_version, e.ntid,
                   CASE WHEN e.ntid IS NULL THEN NULL ELSE $6::text END
            FROM unnest($7::text[], $8::text[], $9::integer[], $10::bytea[], $11::bytea[],
                        $12::bytea[], $13::text[], $14::text[], $15::text[], $16::smallint[],
                        $17::smallint[], $18::smallint[], $19::text[])
                 AS e(token, kind, key_version, wrapped_key, ciphertext, fingerprint, brand, bin,
                      last4, exp_month, exp_year, aad_version, ntid)
            WHERE e.token IN (SELECT token FROM src)
            RETURNING token
        )
        SELECT source_id AS "source_id!" FROM src
        "#,
        scope.source,
        &source_ids as &[&str],
        &tokens as &[&str],
        scope.created_by,
        scope.expires_at,
        scope.network_transaction_issuer,
        &e_tokens as &[&str],
        &kinds as &[&str],
        &key_versions,
        &wrapped as &[&[u8]],
        &ciphertexts as &[&[u8]],
        &fingerprints as &[&[u8]],
        &brands as &[Option<&str>],
        &bins as &[Option<&str>],
        &last4s as &[&str],
        &months as &[Option<i16>],
        &years as &[Option<i16>],
        &aad_versions,
        &ntids as &[Option<&str>],
        scope.tenant_id,
    )
    .fetch_all(db)
    .await
}

/// A record an earlier import of the same source already vaulted, with what the result file
/// shows of its entry.
#[derive(Debug, Clone)]
pub struct KnownRecord {
    pub source_id: String,
    pub token: String,
    pub kind: String,
    pub brand: Option<String>,
    pub bin: Option<String>,
    pub last4: String,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
    pub fingerprint: Vec<u8>,
}

/// Which of `source_ids` this source already imported.
pub async fn find_known(
    db: impl PgExecutor<'_>,
    source: &str,
    source_ids: &[&str],
) -> Result<Vec<KnownRecord>, sqlx::Error> {
    sqlx::query_as!(
        KnownRecord,
        r#"
        SELECT s.source_id, s.token, v.kind, v.brand, v.bin, v.last4, v.exp_month, v.exp_year,
               v.fingerprint
        FROM import_sources s JOIN vault_entries v ON v.token = s.token
        WHERE s.source = $1 AND s.source_id = ANY($2)
        "#,
        source,
        source_ids as &[&str],
    )
    .fetch_all(db)
    .await
}

/// For deduplication: the oldest live, unexpired entry of `created_by` for each fingerprint
/// that has one (the entry tokenize's deduplication would return).
pub async fn find_live_by_fingerprints(
    db: impl PgExecutor<'_>,
    created_by: Uuid,
    fingerprints: &[&[u8]],
) -> Result<Vec<(Vec<u8>, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT DISTINCT ON (fingerprint) fingerprint, token FROM vault_entries
        WHERE created_by = $1 AND fingerprint = ANY($2) AND deleted_at IS NULL
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY fingerprint, created_at
        "#,
        created_by,
        fingerprints as &[&[u8]],
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.fingerprint, r.token)).collect())
}

/// An entry as export reads it; `entry` is `None` for one deleted or expired.
#[derive(Debug, Clone)]
pub struct ExportRow {
    pub token: String,
    pub entry: Option<BoundEntry>,
    pub network_transaction_id: Option<String>,
}

/// The next `limit` entries after `after` in token order, live or not (so that the page is
/// read down the primary key whatever the planner believes about liveness; the caller skips
/// the rest and continues after the last token).
pub async fn export_page(
    db: impl PgExecutor<'_>,
    after: &str,
    limit: i64,
    tenant: Option<Uuid>,
) -> Result<Vec<ExportRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT token, tenant_id, key_version, aad_version, wrapped_key, ciphertext, kind, exp_month,
               exp_year, network_transaction_id,
               deleted_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS "live!"
        FROM vault_entries
        WHERE token > $1 AND ($3::uuid IS NULL OR tenant_id = $3)
        ORDER BY token
        LIMIT $2
        "#,
        after,
        limit,
        tenant,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let entry = match (r.live, r.wrapped_key, r.ciphertext) {
                (true, Some(wrapped_key), Some(ciphertext)) => Some(BoundEntry {
                    sealed: SealedEntry {
                        key_version: r.key_version,
                        aad_version: r.aad_version,
                        wrapped_key,
                        ciphertext,
                    },
                    tenant: r.tenant_id,
                    kind: r.kind,
                    exp_month: r.exp_month,
                    exp_year: r.exp_year,
                }),
                _ => None,
            };
            ExportRow {
                token: r.token,
                entry,
                network_transaction_id: r.network_transaction_id,
            }
        })
        .collect())
}

/// The live, unexpired entries among `tokens`.
pub async fn export_listed(
    db: impl PgExecutor<'_>,
    tokens: &[String],
) -> Result<Vec<ExportRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT token, tenant_id, key_version, aad_version, wrapped_key AS "wrapped_key!",
               ciphertext AS "ciphertext!", kind, exp_month, exp_year, network_transaction_id
        FROM vault_entries
        WHERE token = ANY($1) AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        ORDER BY token
        "#,
        tokens,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ExportRow {
            token: r.token,
            entry: Some(BoundEntry {
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
            }),
            network_transaction_id: r.network_transaction_id,
        })
        .collect())
}

//! The `vault_entries` and `idempotency_records` tables.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::audit::AuditBatch;
use super::charges::ChargeState;
use crate::crypto::{EntryBinding, SealedEntry};
use crate::domain::AuditEvent;

/// A vault entry to insert: ciphertexts plus the display metadata allowed in clear.
#[derive(Debug)]
pub struct NewEntry<'a> {
    pub token: &'a str,
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    pub kind: &'a str,
    pub sealed: &'a SealedEntry,
    pub fingerprint: &'a [u8],
    pub brand: Option<&'a str>,
    pub bin: Option<&'a str>,
    pub last4: &'a str,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The idempotency record claiming (credential, key) for an operation.
#[derive(Debug)]
pub struct NewIdempotency<'a> {
    pub credential_id: Uuid,
    /// The credential's tenant.
    pub tenant_id: Uuid,
    pub key: &'a str,
    pub request_mac: &'a [u8],
    pub mac_key_version: i32,
}

/// Inserts the idempotency record, the vault entry and its audit events in one statement, which
/// Postgres runs atomically: all land or none does. Returns `false`, inserting nothing, when the
/// idempotency key is already taken; a concurrent insert of the same key waits for the first to
/// commit, so concurrent duplicates can never create two entries.
///
/// One statement rather than a transaction of three saves four round trips per tokenize. Its
/// parameters follow the column lists: the entry's ($1-$13 and $20, in the order of
/// [`insert_entry`]), the idempotency record's ($14-$18, the token is the entry's), then the
/// events ($19), then the tenant of both ($21).
pub async fn insert_tokenized_entry(
    db: impl PgExecutor<'_>,
    idem: &NewIdempotency<'_>,
    entry: &NewEntry<'_>,
    events: &AuditBatch<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query_scalar!(
        r#"
        WITH idem AS (
            INSERT INTO idempotency_records
                (credential_id, idempotency_key, operation, request_mac, mac_key_version, state,
                 token, tenant_id)
            VALUES ($14, $15, 'tokenize', $16, $17, $18, $1, $21)
            ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
            RETURNING token
        ), entry AS (
            INSERT INTO vault_entries
                (token, created_by, kind, key_version, wrapped_key, ciphertext, fingerprint,
                 brand, bin, last4, exp_month, exp_year, expires_at, aad_version, tenant_id)
            SELECT idem.token, $2::uuid, $3::text, $4::integer, $5::bytea, $6::bytea, $7::bytea,
                   $8::text, $9::text, $10::text, $11::smallint, $12::smallint, $13::timestamptz,
                   $20::smallint, $21::uuid
            FROM idem
            RETURNING token
        ), audited AS (
            SELECT payvault_insert_audit_events($19) FROM entry
        )
        SELECT count(*) AS "inserted!" FROM entry, audited
        "#,
        entry.token,
        entry.created_by,
        entry.kind,
        entry.sealed.key_version,
        entry.sealed.wrapped_key,
        entry.sealed.ciphertext,
        entry.fingerprint,
        entry.brand,
        entry.bin,
        entry.last4,
        entry.exp_month,
        entry.exp_year,
        entry.expires_at,
        idem.credential_id,
        idem.key,
        idem.request_mac,
        idem.mac_key_version,
        ChargeState::Succeeded as ChargeState,
        events.json() as _,
        entry.sealed.aad_version,
        entry.tenant_id,
    )
    .fetch_one(db)
    .await?;
    if inserted == 1 {
        events.mark_written();
    }
    Ok(inserted == 1)
}

/// Inserts a vault entry on its own (the charge flow vaults a card inside its own transaction).
pub async fn insert_entry(
    db: impl PgExecutor<'_>,
    entry: &NewEntry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO vault_entries
            (token, created_by, kind, key_version, wrapped_key, ciphertext, fingerprint,
             brand, bin, last4, exp_month, exp_year, expires_at, aad_version, tenant_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
        "#,
        entry.token,
        entry.created_by,
        entry.kind,
        entry.sealed.key_version,
        entry.sealed.wrapped_key,
        entry.sealed.ciphertext,
        entry.fingerprint,
        entry.brand,
        entry.bin,
        entry.last4,
        entry.exp_month,
        entry.exp_year,
        entry.expires_at,
        entry.sealed.aad_version,
        entry.tenant_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A live entry's ciphertexts and the clear columns bound into them.
#[derive(Debug, Clone)]
pub struct BoundEntry {
    pub sealed: SealedEntry,
    /// The row's tenant, bound into AAD v3.
    pub tenant: Uuid,
    pub kind: String,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
}

impl BoundEntry {
    /// The columns as the associated data binds them.
    pub fn binding(&self) -> EntryBinding<'_> {
        EntryBinding {
            tenant: self.tenant,
            kind: &self.kind,
            exp_month: self.exp_month,
            exp_year: self.exp_year,
        }
    }
}

/// An entry as the charge flow needs it.
#[derive(Debug, Clone)]
pub enum StoredEntry {
    Active {
        entry: BoundEntry,
        /// The stored credential's network transaction id, once a charge returned one.
        network_transaction_id: Option<String>,
        /// The processor (profile name) that issued it; `None` for ids stored before issuers
        /// were recorded.
        network_transaction_issuer: Option<String>,
    },
    /// Crypto-shredded: the data key is gone.
    Deleted,
    /// Past its `expires_at` (the purge job will shred it).
    Expired,
}

/// `tenant`'s entry `token`: another tenant's is not found.
pub async fn find_entry(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
) -> Result<Option<StoredEntry>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year,
               network_transaction_id, network_transaction_issuer, tenant_id,
               deleted_at IS NOT NULL AS "deleted!",
               coalesce(expires_at <= now(), false) AS "expired!"
        FROM vault_entries WHERE token = $1 AND tenant_id = $2
        "#,
        token,
        tenant,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(
        |r| match (r.deleted, r.expired, r.wrapped_key, r.ciphertext) {
            (false, false, Some(wrapped_key), Some(ciphertext)) => StoredEntry::Active {
                entry: BoundEntry {
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
                },
                network_transaction_id: r.network_transaction_id,
                network_transaction_issuer: r.network_transaction_issuer,
            },
            (false, true, _, _) => StoredEntry::Expired,
            _ => StoredEntry::Deleted,
        },
    ))
}

/// Loads a live entry's ciphertexts and bound columns, whichever tenant's it is: for the
/// operator (the master key check at start, `keys` commands), never for a caller, whose
/// lookups take its tenant ([`find_entry`], [`lock_sealed_entry`]).
pub async fn find_sealed_entry(
    db: impl PgExecutor<'_>,
    token: &str,
) -> Result<Option<BoundEntry>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year,
               tenant_id
        FROM vault_entries WHERE token = $1 AND deleted_at IS NULL
        "#,
        token,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| {
        Some(BoundEntry {
            sealed: SealedEntry {
                key_version: r.key_version,
                aad_version: r.aad_version,
                wrapped_key: r.wrapped_key?,
                ciphertext: r.ciphertext?,
            },
            tenant: r.tenant_id,
            kind: r.kind,
            exp_month: r.exp_month,
            exp_year: r.exp_year,
        })
    }))
}

/// Like [`find_sealed_entry`] for `tenant`'s entry only, locking the row until the caller's
/// transaction ends, so that a concurrent `keys rotate` cannot replace the data key between
/// reading and rewriting it.
pub async fn lock_sealed_entry(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
) -> Result<Option<BoundEntry>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year,
               tenant_id
        FROM vault_entries WHERE token = $1 AND tenant_id = $2 AND deleted_at IS NULL
        FOR UPDATE
        "#,
        token,
        tenant,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| {
        Some(BoundEntry {
            sealed: SealedEntry {
                key_version: r.key_version,
                aad_version: r.aad_version,
                wrapped_key: r.wrapped_key?,
                ciphertext: r.ciphertext?,
            },
            tenant: r.tenant_id,
            kind: r.kind,
            exp_month: r.exp_month,
            exp_year: r.exp_year,
        })
    }))
}

/// What the merchant API shows about a token: never the card.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenMetadata {
    pub token: String,
    pub kind: String,
    pub brand: Option<String>,
    pub bin: Option<String>,
    pub last4: String,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
    pub fingerprint: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Whether a network transaction id is stored for merchant-initiated charges (never the id).
    pub has_network_transaction_id: bool,
}

/// `tenant`'s token `token`: another tenant's is not found.
pub async fn find_token_metadata(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
) -> Result<Option<TokenMetadata>, sqlx::Error> {
    sqlx::query_as!(
        TokenMetadata,
        r#"
        SELECT token, kind, brand, bin, last4, exp_month, exp_year, fingerprint, created_at,
               expires_at, deleted_at,
               network_transaction_id IS NOT NULL AS "has_network_transaction_id!"
        FROM vault_entries WHERE token = $1 AND tenant_id = $2
        "#,
        token,
        tenant,
    )
    .fetch_optional(db)
    .await
}

/// Stores the network transaction id of a token's first approved charge through `issuer` (a
/// processor profile name) that returned one. Set once per processor: `false` when the entry
/// already has one from `issuer` (or of unrecorded issuer, or is gone), and that one stands.
pub async fn set_network_transaction_id(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
    network_transaction_id: &str,
    issuer: &str,
) -> Result<bool, sqlx::Error> {
    // Set once per processor: an id from another processor is replaced (the token is now
    // charged through this one); one of unrecorded issuer is kept.
    let done = sqlx::query!(
        r#"
        UPDATE vault_entries
        SET network_transaction_id = $2, network_transaction_issuer = $3
        WHERE token = $1 AND tenant_id = $4 AND deleted_at IS NULL
          AND (network_transaction_id IS NULL OR network_transaction_issuer <> $3)
        "#,
        token,
        network_transaction_id,
        issuer,
        tenant,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Crypto-shreds a live entry: its wrapped data key and ciphertext are cleared (old row versions
/// keep them until VACUUM, as the WAL and backups do; see the README). Returns
/// `false` if it was already deleted or does not exist.
pub async fn shred_entry(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        UPDATE vault_entries SET wrapped_key = NULL, ciphertext = NULL, deleted_at = now()
        WHERE token = $1 AND tenant_id = $2 AND deleted_at IS NULL
        "#,
        token,
        tenant,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Shreds up to `limit` expired entries, writing one `token_expire` audit event for each in the
/// same transaction (built and MAC'd by payvault, like every event). Returns how many were
/// shredded.
pub async fn purge_expired(
    pool: &sqlx::PgPool,
    signer: &super::audit_mac::EventSigner,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let shredded = sqlx::query!(
        r#"
        WITH doomed AS (
            SELECT token FROM vault_entries
            WHERE deleted_at IS NULL AND expires_at <= now()
            ORDER BY expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE vault_entries v SET wrapped_key = NULL, ciphertext = NULL, deleted_at = now()
        FROM doomed WHERE v.token = doomed.token
        RETURNING v.token, v.expires_at, v.tenant_id
        "#,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    if shredded.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let events: Vec<AuditEvent> = shredded
        .iter()
        .map(|row| {
            let expired_at = row
                .expires_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            let mut event = AuditEvent::system(
                "token_expire",
                serde_json::json!({ "expired_at": expired_at, "shredded": true }),
            )
            .with_token(&row.token);
            event.tenant_id = Some(row.tenant_id);
            event
        })
        .collect();
    let refs: Vec<&AuditEvent> = events.iter().collect();
    let batch = AuditBatch::new(signer, &refs).map_err(super::audit::sealed_error)?;
    super::audit::insert_audit_events(&mut *tx, &batch).await?;
    tx.commit().await?;
    Ok(shredded.len() as u64)
}

/// How many live entries each master key version protects.
pub async fn count_by_key_version(db: impl PgExecutor<'_>) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT key_version, count(*) AS "n!" FROM vault_entries
        WHERE deleted_at IS NULL GROUP BY key_version ORDER BY key_version
        "#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.key_version, r.n)).collect())
}

/// Serialises deduplicating tokenizes of one card by one credential (transaction-scoped; the
/// fingerprint is keyed per tenant and the credential belongs to one).
pub async fn lock_fingerprint(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    fingerprint: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT pg_advisory_xact_lock(hashtextextended(encode($2::bytea, 'hex') || ($1::uuid)::text, 0))::text",
        credential_id,
        fingerprint,
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// The oldest live, unexpired entry of this credential (in `tenant`) with this fingerprint.
pub async fn find_live_by_fingerprint(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    credential_id: Uuid,
    fingerprint: &[u8],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT token FROM vault_entries
        WHERE created_by = $1 AND fingerprint = $2 AND tenant_id = $3 AND deleted_at IS NULL
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY created_at LIMIT 1
        "#,
        credential_id,
        fingerprint,
        tenant,
    )
    .fetch_optional(db)
    .await
}

/// Sets a live card entry's expiry, with its wrapped key re-bound to it
/// ([`crate::crypto::KeyRing::rebind`]); `true` if it changed.
pub async fn update_card_expiry(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
    exp_month: Option<i16>,
    exp_year: Option<i16>,
    rebound: &SealedEntry,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        UPDATE vault_entries SET exp_month = $2, exp_year = $3, wrapped_key = $4, aad_version = $5
        WHERE token = $1 AND tenant_id = $6 AND kind = 'card' AND deleted_at IS NULL
          AND (exp_month, exp_year) IS DISTINCT FROM ($2, $3)
        "#,
        token,
        exp_month,
        exp_year,
        rebound.wrapped_key,
        rebound.aad_version,
        tenant,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets (or clears) a live entry's expiry.
pub async fn set_expiry(
    db: impl PgExecutor<'_>,
    tenant: Uuid,
    token: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE vault_entries SET expires_at = $2
        WHERE token = $1 AND tenant_id = $3 AND deleted_at IS NULL
        "#,
        token,
        expires_at,
        tenant,
    )
    .execute(db)
    .await?;
    Ok(())
}

//! The `idempotency_records` table as the tokenize flow and the retention purge use it (the
//! charge state machine's statements are in [`super::charges`]).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::charges::ChargeState;
use super::vault::NewIdempotency;

/// What an earlier request with the same idempotency key did.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub operation: String,
    pub request_mac: Vec<u8>,
    pub mac_key_version: i32,
    pub state: ChargeState,
    pub token: Option<String>,
    /// The answer was purged after the retention period ([`purge_idempotency_answers`]).
    pub purged: bool,
}

pub async fn find_idempotency_record(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
) -> Result<Option<IdempotencyRecord>, sqlx::Error> {
    sqlx::query_as!(
        IdempotencyRecord,
        r#"
        SELECT operation, request_mac, mac_key_version, state AS "state: ChargeState", token,
               purged_at IS NOT NULL AS "purged!"
        FROM idempotency_records
        WHERE credential_id = $1 AND idempotency_key = $2
        "#,
        credential_id,
        key,
    )
    .fetch_optional(db)
    .await
}

/// Claims the idempotency key for a tokenize answered with an existing token.
pub async fn insert_idempotency_record(
    db: impl PgExecutor<'_>,
    idem: &NewIdempotency<'_>,
    token: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO idempotency_records
            (credential_id, idempotency_key, operation, request_mac, mac_key_version, state, token,
             tenant_id)
        VALUES ($1, $2, 'tokenize', $3, $4, $5, $6, $7)
        ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
        "#,
        idem.credential_id,
        idem.key,
        idem.request_mac,
        idem.mac_key_version,
        ChargeState::Succeeded as ChargeState,
        token,
        idem.tenant_id,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Purges the answers of up to `limit` finished idempotency records last updated before
/// `before`: the charge outcome and the token are cleared, while the key, request MAC and state
/// stay, so a later retry is still recognised (and refused as a duplicate, never run again).
/// Records whose outcome is unknown or still in flight are kept whole: reconciliation needs
/// them. Several instances can run it at once (`SKIP LOCKED`). Returns how many were purged.
pub async fn purge_idempotency_answers(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        UPDATE idempotency_records r SET outcome = NULL, token = NULL, purged_at = now()
        FROM (
            SELECT credential_id, idempotency_key FROM idempotency_records
            WHERE purged_at IS NULL AND state IN ('succeeded', 'failed') AND updated_at < $1
            ORDER BY updated_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ) doomed
        WHERE r.credential_id = doomed.credential_id
          AND r.idempotency_key = doomed.idempotency_key
        "#,
        before,
        limit,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

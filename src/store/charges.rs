//! Charge bookkeeping in `idempotency_records` (operation `charge`).

use std::time::Duration;

use sqlx::PgExecutor;
use uuid::Uuid;

/// The first attempt's claim on (credential, key).
#[derive(Debug)]
pub struct NewCharge<'a> {
    pub credential_id: Uuid,
    pub key: &'a str,
    pub request_mac: &'a [u8],
    pub mac_key_version: i32,
    pub processor_key: &'a str,
    pub lease: Duration,
}

/// Claims the key for a first attempt and, only if claimed, inserts `events` (rows of
/// [`crate::store::audit::events_json`]) in the same statement: one round trip, one commit.
/// `false` when the key is already taken; a concurrent claim of the same key waits for the first
/// to commit, so exactly one caller gets `true`.
pub async fn claim_new_charge(
    db: impl PgExecutor<'_>,
    c: &NewCharge<'_>,
    events: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"
        WITH claim AS (
            INSERT INTO idempotency_records
                (credential_id, idempotency_key, operation, request_mac, mac_key_version, state,
                 attempts, lease_expires_at, processor_key)
            VALUES ($1, $2, 'charge', $3, $4, 'in_flight', 1, now() + make_interval(secs => $5), $6)
            ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
            RETURNING attempts
        ), audited AS (
            INSERT INTO audit_events
                (request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
                 token, transaction_id, masked_data, amount_minor, currency, details, forwarded_for)
            SELECT e.request_id, e.actor_id, e.actor_kind, e.action, e.outcome, e.error_code,
                   e.client_addr, e.token, e.transaction_id, e.masked_data, e.amount_minor,
                   e.currency, coalesce(e.details, '{}'::jsonb), e.forwarded_for
            FROM claim, jsonb_to_recordset($7::jsonb) AS e(
                request_id text, actor_id uuid, actor_kind text, action text, outcome text,
                error_code text, client_addr text, token text, transaction_id text,
                masked_data text, amount_minor bigint, currency text, details jsonb,
                forwarded_for text)
        )
        SELECT attempts FROM claim
        "#,
        c.credential_id,
        c.key,
        c.request_mac,
        c.mac_key_version,
        c.lease.as_secs_f64(),
        c.processor_key,
        events,
    )
    .fetch_optional(db)
    .await?;
    Ok(claimed.is_some())
}

/// An existing record, as a later attempt sees it.
#[derive(Debug, Clone)]
pub struct ChargeRecord {
    pub operation: String,
    pub request_mac: Vec<u8>,
    pub mac_key_version: i32,
    pub state: String,
    pub attempts: i32,
    pub lease_expired: bool,
    pub processor_key: Option<String>,
    pub outcome: Option<serde_json::Value>,
}

pub async fn find_charge_record(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
) -> Result<Option<ChargeRecord>, sqlx::Error> {
    sqlx::query_as!(
        ChargeRecord,
        r#"
        SELECT operation, request_mac, mac_key_version, state, attempts,
               coalesce(lease_expires_at < now(), false) AS "lease_expired!",
               processor_key, outcome
        FROM idempotency_records
        WHERE credential_id = $1 AND idempotency_key = $2
        "#,
        credential_id,
        key,
    )
    .fetch_optional(db)
    .await
}

/// Takes over a charge whose outcome is unknown, or whose in-flight attempt outlived its lease
/// (its instance died). Only one caller wins, checked by the attempt counter it saw. Returns the
/// new attempt number.
pub async fn take_over_charge(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
    seen_attempts: i32,
    lease: Duration,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        UPDATE idempotency_records
        SET state = 'in_flight', attempts = attempts + 1,
            lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
        WHERE credential_id = $1 AND idempotency_key = $2 AND operation = 'charge'
          AND attempts = $3
          AND (state = 'unknown' OR (state = 'in_flight' AND lease_expires_at < now()))
        RETURNING attempts
        "#,
        credential_id,
        key,
        seen_attempts,
        lease.as_secs_f64(),
    )
    .fetch_optional(db)
    .await
}

/// Records the outcome of attempt `attempt` and, only if recorded, inserts `events` in the
/// same statement. `false` if another attempt has taken over since (this one's lease expired);
/// its outcome then stands.
#[allow(clippy::too_many_arguments)]
pub async fn finish_charge(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
    attempt: i32,
    state: &str,
    outcome: &serde_json::Value,
    token: Option<&str>,
    events: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let finished = sqlx::query_scalar!(
        r#"
        WITH finished AS (
            UPDATE idempotency_records
            SET state = $4, outcome = $5, token = $6, lease_expires_at = NULL, updated_at = now()
            WHERE credential_id = $1 AND idempotency_key = $2 AND attempts = $3
              AND state = 'in_flight'
            RETURNING attempts
        ), audited AS (
            INSERT INTO audit_events
                (request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
                 token, transaction_id, masked_data, amount_minor, currency, details, forwarded_for)
            SELECT e.request_id, e.actor_id, e.actor_kind, e.action, e.outcome, e.error_code,
                   e.client_addr, e.token, e.transaction_id, e.masked_data, e.amount_minor,
                   e.currency, coalesce(e.details, '{}'::jsonb), e.forwarded_for
            FROM finished, jsonb_to_recordset($7::jsonb) AS e(
                request_id text, actor_id uuid, actor_kind text, action text, outcome text,
                error_code text, client_addr text, token text, transaction_id text,
                masked_data text, amount_minor bigint, currency text, details jsonb,
                forwarded_for text)
        )
        SELECT attempts FROM finished
        "#,
        credential_id,
        key,
        attempt,
        state,
        outcome,
        token,
        events,
    )
    .fetch_optional(db)
    .await?;
    Ok(finished.is_some())
}

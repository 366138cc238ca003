//! Charge bookkeeping in `idempotency_records` (operation `charge`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::PgExecutor;
use uuid::Uuid;

use super::audit::AuditBatch;

/// The state of an idempotency record (`idempotency_records.state`, text under the
/// `idempotency_records_state_check` constraint). Charges move through all four (see
/// `crate::charge`); a tokenize record is written `Succeeded` and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ChargeState {
    /// An attempt holds the lease and may be calling the processor.
    InFlight,
    /// The processor approved: final, replayed.
    Succeeded,
    /// The processor declined: final, replayed.
    Failed,
    /// Timeout, 5xx, bad answer or unreachable: a retry re-sends with the same processor key.
    Unknown,
}

impl ChargeState {
    /// A final state: a retry is answered from the stored outcome.
    pub fn is_final(self) -> bool {
        matches!(self, ChargeState::Succeeded | ChargeState::Failed)
    }
}

/// The first attempt's claim on (credential, key).
#[derive(Debug)]
pub struct NewCharge<'a> {
    pub credential_id: Uuid,
    /// The credential's tenant.
    pub tenant_id: Uuid,
    pub key: &'a str,
    pub request_mac: &'a [u8],
    pub mac_key_version: i32,
    pub processor_key: &'a str,
    pub lease: Duration,
}

/// Claims the key for a first attempt and, only if claimed, records `events` in the same
/// statement: one round trip, one commit. `false` when the key is already taken; a concurrent
/// claim of the same key waits for the first to commit, so exactly one caller gets `true`.
pub async fn claim_new_charge(
    db: impl PgExecutor<'_>,
    c: &NewCharge<'_>,
    events: &AuditBatch<'_>,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"
        WITH claim AS (
            INSERT INTO idempotency_records
                (credential_id, idempotency_key, operation, request_mac, mac_key_version, state,
                 attempts, lease_expires_at, processor_key, tenant_id)
            VALUES ($1, $2, 'charge', $3, $4, $5, 1, now() + make_interval(secs => $6), $7, $9)
            ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING
            RETURNING attempts
        ), audited AS (
            SELECT payvault_insert_audit_events($8) FROM claim
        )
        SELECT attempts AS "attempts!" FROM claim, audited
        "#,
        c.credential_id,
        c.key,
        c.request_mac,
        c.mac_key_version,
        ChargeState::InFlight as ChargeState,
        c.lease.as_secs_f64(),
        c.processor_key,
        events.json() as _,
        c.tenant_id,
    )
    .fetch_optional(db)
    .await?;
    if claimed.is_some() {
        events.mark_written();
    }
    Ok(claimed.is_some())
}

/// An existing record, as a later attempt sees it.
#[derive(Debug, Clone)]
pub struct ChargeRecord {
    pub operation: String,
    pub request_mac: Vec<u8>,
    pub mac_key_version: i32,
    pub state: ChargeState,
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
        SELECT operation, request_mac, mac_key_version, state AS "state: ChargeState", attempts,
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

/// A later attempt's take-over of a charge whose outcome is unknown, or whose in-flight attempt
/// outlived its lease (its instance died).
#[derive(Debug)]
pub struct TakeOver<'a> {
    pub credential_id: Uuid,
    pub key: &'a str,
    /// The attempt counter the taker saw; the take-over is attempt `seen_attempts + 1`.
    pub seen_attempts: i32,
    pub lease: Duration,
}

impl TakeOver<'_> {
    /// The attempt number this take-over becomes, if it wins.
    pub fn attempt(&self) -> i32 {
        self.seen_attempts + 1
    }
}

/// Takes over a charge and, only if taken, records `events` in the same statement. Only one
/// caller wins, checked by the attempt counter it saw. Returns the new attempt number
/// ([`TakeOver::attempt`]).
pub async fn take_over_charge(
    db: impl PgExecutor<'_>,
    t: &TakeOver<'_>,
    events: &AuditBatch<'_>,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH taken AS (
            UPDATE idempotency_records
            SET state = $5, attempts = attempts + 1,
                lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
            WHERE credential_id = $1 AND idempotency_key = $2 AND operation = 'charge'
              AND attempts = $3
              AND (state = $6 OR (state = $5 AND lease_expires_at < now()))
            RETURNING attempts
        ), audited AS (
            SELECT payvault_insert_audit_events($7) FROM taken
        )
        SELECT attempts AS "attempts!" FROM taken, audited
        "#,
        t.credential_id,
        t.key,
        t.seen_attempts,
        t.lease.as_secs_f64(),
        ChargeState::InFlight as ChargeState,
        ChargeState::Unknown as ChargeState,
        events.json() as _,
    )
    .fetch_optional(db)
    .await
    .inspect(|taken| {
        if taken.is_some() {
            events.mark_written();
        }
    })
}

/// Renews the lease of attempt `attempt` (its holder's heartbeat): `false` when that attempt no
/// longer holds the charge (another took it over, or marked it abandoned, after the lease
/// lapsed), so its holder stops renewing. A lapsed lease nobody has acted on yet is renewed: the
/// holder is alive, and a taker's update re-checks the lease in its own statement.
pub async fn renew_charge_lease(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
    attempt: i32,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query!(
        r#"
        UPDATE idempotency_records
        SET lease_expires_at = now() + make_interval(secs => $4)
        WHERE credential_id = $1 AND idempotency_key = $2 AND operation = 'charge'
          AND attempts = $3 AND state = $5
        "#,
        credential_id,
        key,
        attempt,
        lease.as_secs_f64(),
        ChargeState::InFlight as ChargeState,
    )
    .execute(db)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// The outcome of one attempt, to record.
#[derive(Debug)]
pub struct FinishedCharge<'a> {
    pub credential_id: Uuid,
    pub key: &'a str,
    pub attempt: i32,
    pub state: ChargeState,
    /// The stored answer a retry gets back (`crate::charge::ChargeOutcome`).
    pub outcome: &'a serde_json::Value,
    /// The token a `save_card` charge vaulted.
    pub token: Option<&'a str>,
}

/// Records the outcome of an attempt and, only if recorded, `events` in the same statement.
/// `false` if another attempt has taken over since (this one's lease expired); its outcome then
/// stands.
pub async fn finish_charge(
    db: impl PgExecutor<'_>,
    f: &FinishedCharge<'_>,
    events: &AuditBatch<'_>,
) -> Result<bool, sqlx::Error> {
    let finished = sqlx::query_scalar!(
        r#"
        WITH finished AS (
            UPDATE idempotency_records
            SET state = $4, outcome = $5, token = $6, lease_expires_at = NULL, updated_at = now()
            WHERE credential_id = $1 AND idempotency_key = $2 AND attempts = $3
              AND state = $7
            RETURNING attempts
        ), audited AS (
            SELECT payvault_insert_audit_events($8) FROM finished
        )
        SELECT attempts AS "attempts!" FROM finished, audited
        "#,
        f.credential_id,
        f.key,
        f.attempt,
        f.state as ChargeState,
        f.outcome,
        f.token,
        ChargeState::InFlight as ChargeState,
        events.json() as _,
    )
    .fetch_optional(db)
    .await?;
    if finished.is_some() {
        events.mark_written();
    }
    Ok(finished.is_some())
}

/// Marks an abandoned attempt (in flight past its lease: its instance died) as `unknown`
/// without re-sending it, for a processor a re-send is not safe with, and records `events` in
/// the same statement. `false` when another caller moved the record first.
pub async fn abandon_charge(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
    seen_attempts: i32,
    outcome: &serde_json::Value,
    events: &AuditBatch<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query_scalar!(
        r#"
        WITH abandoned AS (
            UPDATE idempotency_records
            SET state = $4, outcome = $5, lease_expires_at = NULL, updated_at = now()
            WHERE credential_id = $1 AND idempotency_key = $2 AND operation = 'charge'
              AND attempts = $3 AND state = $6 AND lease_expires_at < now()
            RETURNING attempts
        ), audited AS (
            SELECT payvault_insert_audit_events($7) FROM abandoned
        )
        SELECT attempts AS "attempts!" FROM abandoned, audited
        "#,
        credential_id,
        key,
        seen_attempts,
        ChargeState::Unknown as ChargeState,
        outcome,
        ChargeState::InFlight as ChargeState,
        events.json() as _,
    )
    .fetch_optional(db)
    .await?;
    if done.is_some() {
        events.mark_written();
    }
    Ok(done.is_some())
}

/// A charge whose outcome is unknown, for reconciliation: never card data (the masked card,
/// token, amount and first attempt time come from the charge's first `charge_attempt` audit
/// event).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnknownCharge {
    pub transaction_id: String,
    /// The tenant the charge belongs to (its name).
    pub tenant: String,
    pub credential: String,
    /// `unknown`, or `in_flight` past its lease (its instance died).
    pub state: String,
    pub attempts: i32,
    pub token: Option<String>,
    pub masked_card: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub processor_error: Option<String>,
}

/// Charges whose outcome is unknown (or whose in-flight attempt was abandoned), oldest first;
/// with `tenant`, that tenant's only.
pub async fn list_unknown_charges(
    db: impl PgExecutor<'_>,
    tenant: Option<Uuid>,
    limit: i64,
) -> Result<Vec<UnknownCharge>, sqlx::Error> {
    sqlx::query_as!(
        UnknownCharge,
        r#"
        SELECT r.idempotency_key AS transaction_id, t.name AS tenant, c.name AS credential, r.state,
               r.attempts, a.token AS "token?", a.masked_data AS "masked_card?",
               a.amount_minor AS "amount_minor?", a.currency AS "currency?",
               a.occurred_at AS "first_attempt_at?", r.updated_at,
               r.outcome ->> 'error_code' AS processor_error
        FROM idempotency_records r
        JOIN credentials c ON c.id = r.credential_id
        JOIN tenants t ON t.id = r.tenant_id
        LEFT JOIN LATERAL (
            SELECT e.token, e.masked_data, e.amount_minor, e.currency, e.occurred_at
            FROM audit_events e
            WHERE e.action = 'charge_attempt' AND e.actor_id = r.credential_id
              AND e.transaction_id = r.idempotency_key
            ORDER BY e.id
            LIMIT 1
        ) a ON true
        WHERE r.operation = 'charge'
          AND (r.state = $1 OR (r.state = $2 AND r.lease_expires_at < now()))
          AND ($4::uuid IS NULL OR r.tenant_id = $4)
        ORDER BY r.created_at, r.idempotency_key
        LIMIT $3
        "#,
        ChargeState::Unknown as ChargeState,
        ChargeState::InFlight as ChargeState,
        limit,
        tenant,
    )
    .fetch_all(db)
    .await
}

/// How long ago a charge's record last changed (its latest attempt was claimed, or ended): a
/// lower bound on how long ago that attempt's request went to the processor.
pub async fn charge_record_age(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    key: &str,
) -> Result<Option<std::time::Duration>, sqlx::Error> {
    let secs = sqlx::query_scalar!(
        r#"
        SELECT extract(epoch FROM now() - updated_at)::float8 AS "age!"
        FROM idempotency_records
        WHERE credential_id = $1 AND idempotency_key = $2
        "#,
        credential_id,
        key,
    )
    .fetch_optional(db)
    .await?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}

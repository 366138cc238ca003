//! Writes to the append-only `audit_events` table.

use serde::Serialize;
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::AuditEvent;

/// Audit events ready for `payvault_insert_audit_events(jsonb)`, the one SQL function that
/// writes `audit_events` (see its migration). Every statement that records events takes one of
/// these, so events reach the database in exactly one shape, built here. Serialised while the
/// statement is encoded: an event that cannot be serialised fails the operation it records.
#[derive(Debug)]
pub struct AuditBatch<'a> {
    rows: Vec<EventRow<'a>>,
}

/// One `audit_events` row as the SQL function reads it (field names are its column names). A
/// column computed in Rust later (a per-event MAC, the writer's identity) is one more field here
/// and one more column in the function.
#[derive(Debug, Serialize)]
pub struct EventRow<'a> {
    request_id: Option<&'a str>,
    actor_id: Option<Uuid>,
    actor_kind: &'a str,
    action: &'a str,
    outcome: &'a str,
    error_code: Option<&'a str>,
    client_addr: Option<&'a str>,
    forwarded_for: Option<&'a str>,
    token: Option<&'a str>,
    transaction_id: Option<&'a str>,
    masked_data: Option<&'a str>,
    amount_minor: Option<i64>,
    currency: Option<&'a str>,
    details: &'a serde_json::Value,
    tenant_id: Option<Uuid>,
}

impl<'a> From<&'a AuditEvent> for EventRow<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        Self {
            request_id: e.request_id.as_deref(),
            actor_id: e.actor_id,
            actor_kind: e.actor_kind,
            action: e.action,
            outcome: e.outcome(),
            error_code: e.error_code.as_deref(),
            client_addr: e.client_addr.as_deref(),
            forwarded_for: e.forwarded_for.as_deref(),
            token: e.token.as_deref(),
            transaction_id: e.transaction_id.as_deref(),
            masked_data: e.masked_data.as_deref(),
            amount_minor: e.amount_minor,
            currency: e.currency.as_deref(),
            details: &e.details,
            tenant_id: e.tenant_id,
        }
    }
}

impl<'a> AuditBatch<'a> {
    pub fn new(events: &[&'a AuditEvent]) -> Self {
        Self {
            rows: events.iter().map(|&e| e.into()).collect(),
        }
    }

    pub fn one(event: &'a AuditEvent) -> Self {
        Self::new(&[event])
    }

    /// The `events` argument of `payvault_insert_audit_events` (a jsonb array).
    pub fn json(&self) -> Json<&[EventRow<'a>]> {
        Json(&self.rows)
    }
}

/// Writes one event on its own (or inside the caller's transaction).
pub async fn insert_audit_event(
    db: impl PgExecutor<'_>,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    insert_audit_events(db, &AuditBatch::one(event)).await
}

/// Writes a batch of events on its own (or inside the caller's transaction).
pub async fn insert_audit_events(
    db: impl PgExecutor<'_>,
    events: &AuditBatch<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT payvault_insert_audit_events($1) AS "inserted!""#,
        events.json() as _,
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// An audit event as stored, with everything the seal covers.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub request_id: Option<String>,
    pub actor_id: Option<uuid::Uuid>,
    pub actor_kind: String,
    pub action: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    pub masked_data: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// `details` as Postgres prints jsonb: canonical (sorted keys, fixed spacing).
    pub details: String,
}

/// Filters of an audit query; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub action: Option<String>,
    /// Credential id, username or name.
    pub actor: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    pub outcome: Option<String>,
    /// Only this tenant's events (the caller's, on the API without `audit:all`).
    pub tenant: Option<Uuid>,
}

/// Events matching `filter` with id above `after`, in id order.
pub async fn list_audit_events(
    db: impl PgExecutor<'_>,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as!(
        AuditRow,
        r#"
        SELECT id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code,
               client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor,
               currency, details::text AS "details!"
        FROM audit_events
        WHERE id > $1
          AND ($2::timestamptz IS NULL OR occurred_at >= $2)
          AND ($3::timestamptz IS NULL OR occurred_at < $3)
          AND ($4::text IS NULL OR action = $4)
          AND ($5::text IS NULL OR actor_id::text = $5
               OR actor_id IN (SELECT id FROM credentials WHERE username = $5 OR name = $5))
          AND ($6::text IS NULL OR token = $6)
          AND ($7::text IS NULL OR transaction_id = $7)
          AND ($8::text IS NULL OR outcome = $8)
          AND ($10::uuid IS NULL OR tenant_id = $10)
        ORDER BY id
        LIMIT $9
        "#,
        after,
        filter.since,
        filter.until,
        filter.action,
        filter.actor,
        filter.token,
        filter.transaction_id,
        filter.outcome,
        limit,
        filter.tenant,
    )
    .fetch_all(db)
    .await
}

/// Sealed events with seal seq above `after`, in chain order (the export order: final, so a
/// cursor never skips an event that committed late). Seals whose event is gone (tampering, which
/// `audit verify` reports) are skipped.
pub async fn export_sealed_events(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, AuditRow)>, sqlx::Error> {
    let rows = super::seals::seals_after(db, after, limit).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.seq, r.event?)))
        .collect())
}

//! Writes to the append-only `audit_events` table.

use sqlx::PgExecutor;

use crate::audit::AuditEvent;

pub async fn insert_audit_event(
    db: impl PgExecutor<'_>,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO audit_events
            (request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
             token, transaction_id, masked_data, amount_minor, currency, details, forwarded_for)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        "#,
        event.request_id,
        event.actor_id,
        event.actor_kind,
        event.action,
        event.outcome(),
        event.error_code,
        event.client_addr,
        event.token,
        event.transaction_id,
        event.masked_data,
        event.amount_minor,
        event.currency,
        event.details,
        event.forwarded_for,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Events as a JSON array of rows, for statements that insert them with
/// `jsonb_to_recordset` in the same statement as the change they record (one round trip).
pub fn events_json(events: &[&AuditEvent]) -> serde_json::Value {
    events
        .iter()
        .map(|e| {
            serde_json::json!({
                "request_id": e.request_id,
                "actor_id": e.actor_id,
                "actor_kind": e.actor_kind,
                "action": e.action,
                "outcome": e.outcome(),
                "error_code": e.error_code,
                "client_addr": e.client_addr,
                "token": e.token,
                "transaction_id": e.transaction_id,
                "masked_data": e.masked_data,
                "amount_minor": e.amount_minor,
                "currency": e.currency,
                "details": e.details,
                "forwarded_for": e.forwarded_for,
            })
        })
        .collect()
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

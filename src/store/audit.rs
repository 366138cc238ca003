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
             token, transaction_id, masked_data, amount_minor, currency, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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
    )
    .execute(db)
    .await?;
    Ok(())
}

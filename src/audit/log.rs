//! The audit log as the rest of payvault uses it: recording an event on its own, and reading
//! events, which is itself audited (PCI DSS 10.2.1.3).

use sqlx::PgPool;

use super::AuditEvent;
use crate::store;
pub use crate::store::audit::{AuditFilter, AuditRow};

/// Handle on the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
}

impl AuditLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Writes one event on its own (a refusal, a read, an operator action).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), sqlx::Error> {
        store::audit::insert_audit_event(&self.pool, event).await
    }

    /// Events matching `filter` with id above `after`, oldest first, at most `limit`. The read
    /// is recorded as `reader` (an `audit_read` event of whoever asked), with the filter and
    /// how many events it returned.
    pub async fn read(
        &self,
        reader: AuditEvent,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, sqlx::Error> {
        let rows = store::audit::list_audit_events(&self.pool, filter, after, limit).await?;
        let mut event = reader;
        let read = serde_json::json!({
            "filter": super::filter_json(filter),
            "cursor": after,
            "returned": rows.len(),
        });
        if let (Some(details), serde_json::Value::Object(read)) =
            (event.details.as_object_mut(), read)
        {
            details.extend(read);
        }
        self.record(&event).await?;
        Ok(rows)
    }
}

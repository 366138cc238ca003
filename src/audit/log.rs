//! The audit log as the rest of payvault uses it: recording an event on its own, and reading
//! events, which is itself audited (PCI DSS 10.2.1.3).

use std::sync::Arc;

use sqlx::PgPool;

use super::AuditEvent;
use crate::store;
pub use crate::store::audit::{AuditFilter, AuditRow, ListError};
use crate::store::audit_mac::EventSigner;

/// Handle on the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
    signer: Arc<EventSigner>,
}

impl AuditLog {
    /// The log as written by `signer` (the process's writer: see `store::audit_mac`).
    pub fn new(pool: PgPool, signer: Arc<EventSigner>) -> Self {
        Self { pool, signer }
    }

    pub fn signer(&self) -> &Arc<EventSigner> {
        &self.signer
    }

    /// Writes one event on its own (a refusal, a read, an operator action).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), sqlx::Error> {
        self.signer.record(&self.pool, event).await
    }

    /// How long the oldest queued event has waited to be sealed (zero when none waits).
    pub async fn seal_lag(&self) -> Result<std::time::Duration, sqlx::Error> {
        let (_, oldest) = store::seals::pending(&self.pool).await?;
        let lag = oldest.map_or(chrono::Duration::zero(), |t| chrono::Utc::now() - t);
        metrics::gauge!("payvault_audit_seal_lag_seconds")
            .set(lag.num_milliseconds().max(0) as f64 / 1000.0);
        Ok(lag.to_std().unwrap_or_default())
    }

    /// Before a CLI command exits: records its voided counter values and seals what it wrote
    /// (with whatever else is queued), so a command leaves nothing unsealed behind.
    pub async fn seal_before_exit(&self) -> Result<u64, crate::audit::seal::SealError> {
        self.signer.flush_voids(&self.pool).await?;
        let keys = self.signer.keys().map_err(store::audit::sealed_error)?;
        crate::audit::seal::seal_pending(&self.pool, keys).await
    }

    /// Events matching `filter` after the cursor event `after`, at most `limit`, in time order
    /// for a time range and id order otherwise (see [`store::audit::list_audit_events`]). The
    /// read is recorded as `reader` (an `audit_read` event of whoever asked), with the filter
    /// and how many events it returned; a refused cursor reads nothing and records nothing,
    /// as a cursor that does not parse.
    pub async fn read(
        &self,
        reader: AuditEvent,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, ListError> {
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

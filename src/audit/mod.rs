//! Audit events (PCI DSS 10.2): who did what, to which resource, when, from where, and with what
//! outcome. Card data appears only masked. Events are written in the same transaction as the
//! operation they record (see `store::vault`), so an operation whose event cannot be written
//! does not happen. [`seal`] makes the log tamper-evident.

pub mod checkpoint;
pub mod integrity;
pub mod log;
pub mod seal;
mod verify;

pub use log::AuditLog;

pub use crate::domain::audit::{AuditEvent, Origin};

use uuid::Uuid;

use crate::auth::Principal;

// The constructor that needs a `Principal` lives here rather than beside the type in
// `domain::audit`, so that the domain does not depend on `auth` (which writes audit events).
impl AuditEvent {
    /// An event by an authenticated caller.
    pub fn by(principal: &Principal, origin: &Origin, action: &'static str) -> Self {
        Self {
            actor_id: Some(principal.id),
            actor_kind: principal.kind.as_str(),
            tenant_id: Some(principal.tenant_id),
            ..Self::new(origin, "anonymous", action)
        }
    }
}

/// An audit event as the API, the CLI and exports show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEventView {
    pub id: i64,
    pub occurred_at: String,
    pub actor_id: Option<Uuid>,
    /// `connector`, `api`, `operator`, `system` or `anonymous`.
    pub actor_kind: String,
    pub action: String,
    /// `success` or `failure`.
    pub outcome: String,
    pub error_code: Option<String>,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub request_id: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    /// At most BIN and last 4.
    pub masked_data: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The tenant the event belongs to (the default tenant's for the deployment's own events).
    pub tenant_id: Uuid,
}

impl From<&crate::store::audit::AuditRow> for AuditEventView {
    fn from(row: &crate::store::audit::AuditRow) -> Self {
        Self {
            id: row.id,
            occurred_at: row
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor_id: row.actor_id,
            actor_kind: row.actor_kind.clone(),
            action: row.action.clone(),
            outcome: row.outcome.clone(),
            error_code: row.error_code.clone(),
            client_addr: row.client_addr.clone(),
            forwarded_for: row.forwarded_for.clone(),
            request_id: row.request_id.clone(),
            token: row.token.clone(),
            transaction_id: row.transaction_id.clone(),
            masked_data: row.masked_data.clone(),
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
            details: serde_json::from_str(&row.details).unwrap_or(serde_json::Value::Null),
            tenant_id: row.tenant_id,
        }
    }
}

/// An event as JSON (the CLI and exports).
pub fn event_json(row: &crate::store::audit::AuditRow) -> serde_json::Value {
    serde_json::to_value(AuditEventView::from(row)).unwrap_or(serde_json::Value::Null)
}

/// Parses a date (`2026-01-01`, midnight UTC) or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{s}` is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

/// The filters of an audit query, as they are recorded in the audit event of the read.
pub fn filter_json(f: &crate::store::audit::AuditFilter) -> serde_json::Value {
    serde_json::json!({
        "since": f.since, "until": f.until, "action": f.action, "actor": f.actor,
        "token": f.token, "transaction_id": f.transaction_id, "outcome": f.outcome,
        "tenant": f.tenant,
    })
}

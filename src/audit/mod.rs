//! Audit events (PCI DSS 10.2): who did what, to which resource, when, from where, and with what
//! outcome. Card data appears only masked. Events are written in the same transaction as the
//! operation they record (see `store::vault`), so an operation whose event cannot be written
//! does not happen. [`seal`] makes the log tamper-evident.

pub mod log;
pub mod seal;

pub use log::AuditLog;

use uuid::Uuid;

use crate::auth::Principal;

/// Where a request came from; carried into every audit event it causes.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    /// The client behind a trusted proxy (`X-Forwarded-For`), only when the peer is one.
    pub forwarded_for: Option<String>,
}

/// One audit event. `error_code: None` means success.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub request_id: Option<String>,
    pub actor_id: Option<Uuid>,
    /// `connector`, `api`, `operator` (the CLI) or `anonymous` (failed authentication).
    pub actor_kind: &'static str,
    pub action: &'static str,
    pub error_code: Option<String>,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    pub masked_data: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// An event by an authenticated caller.
    pub fn by(principal: &Principal, origin: &Origin, action: &'static str) -> Self {
        Self {
            actor_id: Some(principal.id),
            actor_kind: principal.kind.as_str(),
            ..Self::new(origin, "anonymous", action)
        }
    }

    pub fn new(origin: &Origin, actor_kind: &'static str, action: &'static str) -> Self {
        Self {
            request_id: origin.request_id.clone(),
            actor_id: None,
            actor_kind,
            action,
            error_code: None,
            client_addr: origin.client_addr.clone(),
            forwarded_for: origin.forwarded_for.clone(),
            token: None,
            transaction_id: None,
            masked_data: None,
            amount_minor: None,
            currency: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// An event of payvault itself (service start and stop).
    pub fn system(action: &'static str, details: serde_json::Value) -> Self {
        let mut event = Self::new(&Origin::default(), "system", action);
        event.details = details;
        event
    }

    /// An event of the operator running the CLI.
    pub fn operator(action: &'static str) -> Self {
        let mut event = Self::new(&Origin::default(), "operator", action);
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default();
        event.details = serde_json::json!({ "os_user": user, "via": "cli" });
        event
    }

    pub fn failed(mut self, code: impl Into<String>) -> Self {
        self.error_code = Some(code.into());
        self
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn outcome(&self) -> &'static str {
        if self.error_code.is_some() {
            "failure"
        } else {
            "success"
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
    })
}

//! An audit event as written (PCI DSS 10.2): who did what, to which resource, when, from where,
//! and with what outcome. Plain data, so that the store can write it without depending on the
//! audit module above it; `crate::audit` adds the constructor for an authenticated caller and
//! everything that reads and seals the log.

use std::sync::OnceLock;

use uuid::Uuid;

/// The operator named for this process's CLI events, if any.
static DECLARED_OPERATOR: OnceLock<String> = OnceLock::new();

/// Names the person behind this process's CLI events (`--operator`, `PAYVAULT_OPERATOR`), for
/// teams whose operators share an OS account or run payvault from automation. Recorded as
/// declared: nothing checks it. Set once, at start; later calls are ignored.
pub fn declare_operator(name: String) {
    let _ = DECLARED_OPERATOR.set(name);
}

/// The operator declared for this process, if any (`payvault export` requires one).
pub fn declared_operator() -> Option<&'static str> {
    DECLARED_OPERATOR.get().map(String::as_str)
}

/// Checks an operator name for [`declare_operator`]: 1 to 64 printable characters, and no run
/// of 12 or more digits (it is written to the audit log, where a card number must never go).
pub fn check_operator_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let longest_digit_run = name
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if longest_digit_run >= 12 {
        return Err("must not contain a run of 12 or more digits");
    }
    Ok(())
}

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
    /// The tenant the event belongs to; `None`: the default tenant (the deployment's own
    /// events: start and stop, failed logins, operator actions not about one tenant).
    pub tenant_id: Option<Uuid>,
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
    pub fn new(origin: &Origin, actor_kind: &'static str, action: &'static str) -> Self {
        Self {
            request_id: origin.request_id.clone(),
            actor_id: None,
            actor_kind,
            tenant_id: None,
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

    /// An event of the operator running the CLI. Who that is, is what the machine says, not
    /// authenticated: `os_user` is `$USER` (or `$LOGNAME`) as the process received it, and
    /// `operator` is the name given with `--operator` / `PAYVAULT_OPERATOR` (see
    /// [`declare_operator`]), when one was. The database role, which PostgreSQL does
    /// authenticate, is what access control rests on.
    pub fn operator(action: &'static str) -> Self {
        let mut event = Self::new(&Origin::default(), "operator", action);
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default();
        event.details = serde_json::json!({ "os_user": user, "via": "cli" });
        if let Some(operator) = DECLARED_OPERATOR.get() {
            event.details["operator"] = operator.as_str().into();
        }
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

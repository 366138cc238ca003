//! The merchant API (`/v1/...`): JSON in, JSON out, errors as
//! `{"error": {"code": "...", "message": "..."}}` with a stable `code` (see `http::error`).
//! One file per resource; each handler parses, authorizes, calls one domain operation and
//! renders its result.

pub mod audit;
pub mod charges;
pub mod tokens;

use serde_json::Value;

use crate::domain::InvalidInput;

/// A JSON scalar as text: `"10.00"` and `10.00` both read as "10.00"; `""` counts as absent.
fn text(body: &Value, field: &'static str) -> Result<Option<String>, InvalidInput> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(InvalidInput::InvalidFieldType(field)),
    }
}

/// Audits a request refused before it reached a domain operation (it failed validation), then
/// returns the refusal. The request fails as a whole if the event cannot be written (PCI DSS
/// 10: no unlogged access).
async fn refuse<T>(
    app: &super::AppState,
    caller: &super::Caller,
    action: &'static str,
    err: ApiError,
) -> Result<T, ApiError> {
    let event =
        crate::audit::AuditEvent::by(&caller.principal, &caller.origin, action).failed(err.code());
    app.audit
        .record(&event)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Err(err)
}

use super::ApiError;

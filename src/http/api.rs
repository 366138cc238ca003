//! The merchant API (`/v1/...`): JSON in, JSON out, errors as
//! `{"error": {"code": "...", "message": "..."}}` with a stable `code`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{Denied, CHALLENGE};
use super::AppState;
use crate::audit::{AuditEvent, Origin};
use crate::auth::{Principal, Scope};
use crate::charge::{ChargeError, ChargeRequest, Source};
use crate::domain::{Amount, InvalidInput, Token, TransactionId};

/// An error answer of the merchant API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn invalid(invalid: &InvalidInput) -> Self {
        Self::new(StatusCode::BAD_REQUEST, invalid.code(), invalid.to_string())
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "payvault could not complete the request; retrying with the same Idempotency-Key is safe",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, CHALLENGE);
        }
        response
    }
}

/// Writes an audit event on its own (a read, or a refusal); the request fails if it cannot be
/// written.
async fn audit(app: &AppState, event: &AuditEvent) -> Result<(), ApiError> {
    app.vault
        .record_event(event)
        .await
        .map_err(|_| ApiError::internal())
}

/// Authenticates and checks `scope`, auditing a refusal.
async fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    origin: &Origin,
    scope: Scope,
    action: &'static str,
) -> Result<Arc<Principal>, ApiError> {
    let principal = super::auth::authenticate(app, headers, origin)
        .await
        .map_err(|d| match d {
            Denied::Unauthorized => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or missing credentials",
            ),
            Denied::Internal => ApiError::internal(),
        })?;
    if !principal.has_scope(scope) {
        let event = AuditEvent::by(&principal, origin, action).failed("forbidden");
        audit(app, &event).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this credential lacks the `{scope}` scope"),
        ));
    }
    Ok(principal)
}

/// A JSON scalar as text: `"10.00"` and `10.00` both read as "10.00".
fn text(body: &Value, field: &'static str) -> Result<Option<String>, InvalidInput> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(InvalidInput::InvalidFieldType(field.to_owned())),
    }
}

#[utoipa::path(
    post, path = "/v1/tokens/{token}/charges", tag = "merchant",
    params(("token" = String, Path), ("Idempotency-Key" = String, Header, description = "1-255 printable ASCII characters; a retry with the same key gets the same answer")),
    request_body = ChargeTokenRequest,
    responses(
        (status = 200, description = "Approved", body = ChargeView),
        (status = 402, description = "Declined", body = ChargeView),
        (status = 502, description = "Processor failure: outcome unknown", body = ChargeView),
        (status = 504, description = "Processor timeout: outcome unknown", body = ChargeView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody),
    ),
    security(("basic" = []), ("bearer" = []))
)]
/// `POST /v1/tokens/{token}/charges`: charges a stored token (recurring billing, no CVV).
/// Requires the `tokens:charge` scope and an `Idempotency-Key` header.
pub async fn charge_token(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let origin = super::origin(&app, &headers, peer);
    let principal = authorize(&app, &headers, &origin, Scope::TokensCharge, "charge").await?;

    let refuse = |invalid: InvalidInput| {
        let app = app.clone();
        let principal = principal.clone();
        let origin = origin.clone();
        async move {
            let event = AuditEvent::by(&principal, &origin, "charge").failed(invalid.code());
            audit(&app, &event).await?;
            Err::<Response, _>(ApiError::invalid(&invalid))
        }
    };
    let key = match headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(TransactionId::parse))
    {
        Some(Ok(Ok(key))) => key,
        None => {
            let e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "send an Idempotency-Key header (1 to 255 printable ASCII characters)",
            );
            return Err(e);
        }
        Some(_) => return refuse(InvalidInput::InvalidTransactionId).await,
    };
    let Some(token) = Token::parse(&token) else {
        return refuse(InvalidInput::TokenFormat).await;
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return refuse(InvalidInput::NotAnObject).await,
    };
    let parsed = (|| {
        let amount = text(&body, "amount")?.ok_or(InvalidInput::MissingField("amount"))?;
        let currency = text(&body, "currency")?.ok_or(InvalidInput::MissingField("currency"))?;
        Ok::<_, InvalidInput>((
            Amount::parse(&amount, &currency)?,
            text(&body, "description")?,
        ))
    })();
    let (amount, description) = match parsed {
        Ok(p) => p,
        Err(invalid) => return refuse(invalid).await,
    };
    let req = ChargeRequest {
        key: key.as_str().to_owned(),
        source: Source::Token(token.clone()),
        amount,
        save_card: false,
        token_expires_at: None,
        description,
        parameters: Default::default(),
    };
    // Run to completion even if the client hangs up (see the connector endpoint).
    let (charger, who, from) = (app.charger.clone(), principal.clone(), origin.clone());
    let task = tokio::spawn(async move { charger.charge(&who, &from, &req, started).await });
    let result = task.await.map_err(|e| {
        tracing::error!(error = %e, "request task failed");
        ApiError::internal()
    })?;
    let charged = result.map_err(|e| {
        let status = match &e {
            ChargeError::Invalid(_) => StatusCode::BAD_REQUEST,
            ChargeError::UnknownToken => StatusCode::NOT_FOUND,
            ChargeError::TokenDeleted | ChargeError::TokenExpired => StatusCode::GONE,
            ChargeError::Duplicate | ChargeError::InProgress => StatusCode::CONFLICT,
            ChargeError::Database(_) | ChargeError::Crypto(_) => {
                tracing::error!(error = %super::error_chain(&e), "token charge failed");
                return ApiError::internal();
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;

    let o = charged.outcome;
    let (status, state, error) = match (&o.charge_id, &o.error_code) {
        (Some(_), None) => (StatusCode::OK, "succeeded", None),
        (_, code) => {
            let code = code
                .clone()
                .unwrap_or_else(|| "processor_bad_response".into());
            let unknown = code.starts_with("processor_");
            let status = match code.as_str() {
                "processor_timeout" => StatusCode::GATEWAY_TIMEOUT,
                _ if unknown => StatusCode::BAD_GATEWAY,
                _ => StatusCode::PAYMENT_REQUIRED,
            };
            let message = o.error_message.clone().unwrap_or_default();
            (
                status,
                if unknown { "unknown" } else { "declined" },
                Some(ErrorDetail { code, message }),
            )
        }
    };
    let view = ChargeView {
        charge_id: o.charge_id.filter(|_| error.is_none()),
        status: state,
        error,
        token: token.as_str().to_owned(),
        amount: amount.to_decimal(),
        currency: amount.currency(),
        parameters: o.parameters,
    };
    Ok((status, Json(view)).into_response())
}

/// A charge on a stored token, as the merchant API answers it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ChargeView {
    /// The processor's charge id, when approved.
    charge_id: Option<String>,
    /// `succeeded`, `declined`, or `unknown` (the processor's answer was lost: retry with the
    /// same Idempotency-Key).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
    token: String,
    amount: String,
    currency: &'static str,
    #[schema(value_type = Object)]
    parameters: serde_json::Map<String, Value>,
}

/// Body of `POST /v1/tokens/{token}/charges` (for the OpenAPI document: the handler reads the
/// same fields leniently, accepting numbers for `amount`).
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct ChargeTokenRequest {
    /// Decimal in major units, e.g. `19.99` (a JSON number is accepted too).
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Forwarded to the processor.
    pub description: Option<String>,
}

/// `{"error": {"code", "message"}}`: every merchant API error.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    code: String,
    /// For humans; never contains card data.
    message: String,
}

/// Query string of `GET /v1/audit/events`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    action: Option<String>,
    actor: Option<String>,
    token: Option<String>,
    transaction_id: Option<String>,
    outcome: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `GET /v1/audit/events`: audit events in id order, filtered, with cursor pagination. Requires
/// `audit:read`. The read itself is audited (PCI DSS 10.2.1.3).
pub async fn audit_events(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let origin = super::origin(&app, &headers, peer);
    let principal = authorize(&app, &headers, &origin, Scope::AuditRead, "audit_read").await?;
    let bad = |code: &str, message: String| ApiError::new(StatusCode::BAD_REQUEST, code, message);
    let axum::extract::Query(q) =
        query.map_err(|_| bad("invalid_query", "the query string could not be read".into()))?;
    let time = |v: &Option<String>, name: &str| {
        v.as_deref()
            .map(crate::audit::parse_time)
            .transpose()
            .map_err(|e| bad("invalid_query", format!("{name}: {e}")))
    };
    let filter = crate::store::audit::AuditFilter {
        since: time(&q.since, "since")?,
        until: time(&q.until, "until")?,
        action: q.action,
        actor: q.actor,
        token: q.token,
        transaction_id: q.transaction_id,
        outcome: match q.outcome.as_deref() {
            None | Some("success") | Some("failure") => q.outcome,
            Some(_) => {
                return Err(bad(
                    "invalid_query",
                    "outcome must be success or failure".into(),
                ))
            }
        },
    };
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(bad("invalid_query", "limit must be 1 to 1000".into())),
    };
    let after = match q.cursor.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return Err(bad(
                "invalid_cursor",
                "cursor must be a next_cursor from an earlier page".into(),
            ))
        }
    };
    let rows = crate::store::audit::list_audit_events(app.vault.pool(), &filter, after, limit)
        .await
        .map_err(|_| ApiError::internal())?;
    let mut event = AuditEvent::by(&principal, &origin, "audit_read");
    event.details = json!({ "filter": crate::audit::filter_json(&filter), "cursor": after, "returned": rows.len() });
    audit(&app, &event).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let events = rows
        .iter()
        .map(crate::audit::AuditEventView::from)
        .collect();
    Ok(Json(AuditPage {
        events,
        next_cursor: next,
    })
    .into_response())
}

/// A token's metadata as the merchant API shows it: never the card.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenView {
    token: String,
    /// `active`, `expired` or `deleted`.
    status: &'static str,
    /// `card` or `bank_account`.
    kind: String,
    brand: Option<String>,
    /// Leading digits (at most 6).
    bin: Option<String>,
    /// Trailing digits (at most 4).
    last4: String,
    exp_month: Option<i16>,
    exp_year: Option<i16>,
    /// Hex HMAC-SHA256 under a key derived from the master key: equal for the same card.
    fingerprint: String,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn token_json(m: &crate::store::vault::TokenMetadata) -> TokenView {
    let status = match (m.deleted_at, m.expires_at) {
        (Some(_), _) => "deleted",
        (None, Some(at)) if at <= chrono::Utc::now() => "expired",
        _ => "active",
    };
    TokenView {
        token: m.token.clone(),
        status,
        kind: m.kind.clone(),
        brand: m.brand.clone(),
        bin: m.bin.clone(),
        last4: m.last4.clone(),
        exp_month: m.exp_month,
        exp_year: m.exp_year,
        fingerprint: m.fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        created_at: m.created_at,
        expires_at: m.expires_at,
        deleted_at: m.deleted_at,
    }
}

#[utoipa::path(
    get, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path)),
    responses((status = 200, body = TokenView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `GET /v1/tokens/{token}`: brand, BIN/last 4, expiry, fingerprint, lifecycle. Requires
/// `tokens:read`; every read is audited.
pub async fn get_token(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let origin = super::origin(&app, &headers, peer);
    let principal = authorize(&app, &headers, &origin, Scope::TokensRead, "token_read").await?;
    let mut event = AuditEvent::by(&principal, &origin, "token_read");
    let meta = match Token::parse(&token) {
        Some(t) => crate::store::vault::find_token_metadata(app.vault.pool(), t.as_str())
            .await
            .map_err(|_| ApiError::internal())?,
        None => None,
    };
    let Some(meta) = meta else {
        event = event.failed("unknown_token");
        audit(&app, &event).await?;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            "no such token",
        ));
    };
    event.token = Some(meta.token.clone());
    audit(&app, &event).await?;
    Ok(Json(token_json(&meta)).into_response())
}

#[utoipa::path(
    delete, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path)),
    responses((status = 200, body = TokenView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `DELETE /v1/tokens/{token}`: crypto-shreds the entry (its wrapped data key is destroyed, so
/// the card is unrecoverable at once); the metadata and audit trail remain. Idempotent.
/// Requires `tokens:delete`.
pub async fn delete_token(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let origin = super::origin(&app, &headers, peer);
    let principal = authorize(&app, &headers, &origin, Scope::TokensDelete, "token_delete").await?;
    let mut event = AuditEvent::by(&principal, &origin, "token_delete");
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unknown_token", "no such token");
    let Some(token) = Token::parse(&token) else {
        audit(&app, &event.failed("unknown_token")).await?;
        return Err(not_found());
    };
    event.token = Some(token.as_str().to_owned());
    // The shredding and its audit event commit together.
    let mut tx = app
        .vault
        .pool()
        .begin()
        .await
        .map_err(|_| ApiError::internal())?;
    let shredded = crate::store::vault::shred_entry(&mut *tx, token.as_str())
        .await
        .map_err(|_| ApiError::internal())?;
    let meta = crate::store::vault::find_token_metadata(&mut *tx, token.as_str())
        .await
        .map_err(|_| ApiError::internal())?;
    let Some(meta) = meta else {
        drop(tx);
        audit(&app, &event.failed("unknown_token")).await?;
        return Err(not_found());
    };
    event.details = json!({ "shredded": shredded, "already_deleted": !shredded });
    crate::store::audit::insert_audit_event(&mut *tx, &event)
        .await
        .map_err(|_| ApiError::internal())?;
    tx.commit().await.map_err(|_| ApiError::internal())?;
    Ok(Json(token_json(&meta)).into_response())
}

/// A page of audit events, oldest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    events: Vec<crate::audit::AuditEventView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// Body of `PATCH /v1/tokens/{token}`: exactly one of the fields.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiryChange {
    /// An RFC 3339 time, or `null` for "never".
    #[serde(default, deserialize_with = "some")]
    expires_at: Option<Option<String>>,
    /// Expire this many days from now (1 to 3650).
    ttl_days: Option<u32>,
    /// `true`: expire when the card does (after its expiry month).
    expires_with_card: Option<bool>,
}

/// Distinguishes a field set to `null` (`Some(None)`) from an absent one (`None`).
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

#[utoipa::path(
    patch, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path)),
    request_body = ExpiryChange,
    responses((status = 200, body = TokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `PATCH /v1/tokens/{token}`: sets when a token expires. Requires `tokens:delete` (an expiry
/// is a deferred deletion); audited.
pub async fn update_token(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let origin = super::origin(&app, &headers, peer);
    let principal = authorize(&app, &headers, &origin, Scope::TokensDelete, "token_update").await?;
    let mut event = AuditEvent::by(&principal, &origin, "token_update");
    let refuse = |event: AuditEvent, status: StatusCode, code: &'static str, message: String| {
        let app = app.clone();
        async move {
            audit(&app, &event.failed(code)).await?;
            Err::<Response, _>(ApiError::new(status, code, message))
        }
    };
    let Some(token) = Token::parse(&token) else {
        return refuse(
            event,
            StatusCode::NOT_FOUND,
            "unknown_token",
            "no such token".into(),
        )
        .await;
    };
    event.token = Some(token.as_str().to_owned());
    let change: ExpiryChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(_) => {
            let msg = "send one of expires_at (RFC 3339 or null), ttl_days (1-3650) or expires_with_card (true)";
            return refuse(
                event,
                StatusCode::BAD_REQUEST,
                "invalid_token_expiry",
                msg.into(),
            )
            .await;
        }
    };
    let meta = crate::store::vault::find_token_metadata(app.vault.pool(), token.as_str())
        .await
        .map_err(|_| ApiError::internal())?;
    let Some(meta) = meta else {
        return refuse(
            event,
            StatusCode::NOT_FOUND,
            "unknown_token",
            "no such token".into(),
        )
        .await;
    };
    if meta.deleted_at.is_some() {
        return refuse(
            event,
            StatusCode::GONE,
            "token_deleted",
            "the token was deleted".into(),
        )
        .await;
    }
    let now = chrono::Utc::now();
    let card_end = match (meta.exp_month, meta.exp_year) {
        (Some(m), Some(y)) => {
            crate::domain::Expiry::from_stored(m as u8, y as u16).map(|e| e.end())
        }
        _ => None,
    };
    let expires_at = match (change.expires_at, change.ttl_days, change.expires_with_card) {
        (Some(None), None, None) => Ok(None),
        (Some(Some(at)), None, None) => chrono::DateTime::parse_from_rfc3339(&at)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|_| "expires_at must be an RFC 3339 time"),
        (None, Some(days), None) if (1..=3650).contains(&days) => {
            Ok(Some(now + chrono::Duration::days(i64::from(days))))
        }
        (None, Some(_), None) => Err("ttl_days must be 1 to 3650"),
        (None, None, Some(true)) => card_end
            .map(Some)
            .ok_or("expires_with_card applies to cards only"),
        _ => Err("send exactly one of expires_at, ttl_days or expires_with_card (true)"),
    };
    let expires_at = match expires_at {
        Ok(e) => e,
        Err(msg) => {
            return refuse(
                event,
                StatusCode::BAD_REQUEST,
                "invalid_token_expiry",
                msg.into(),
            )
            .await
        }
    };
    event.details = json!({ "expires_at": expires_at, "previous": meta.expires_at });
    let mut tx = app
        .vault
        .pool()
        .begin()
        .await
        .map_err(|_| ApiError::internal())?;
    crate::store::vault::set_expiry(&mut *tx, token.as_str(), expires_at)
        .await
        .map_err(|_| ApiError::internal())?;
    crate::store::audit::insert_audit_event(&mut *tx, &event)
        .await
        .map_err(|_| ApiError::internal())?;
    let meta = crate::store::vault::find_token_metadata(&mut *tx, token.as_str())
        .await
        .map_err(|_| ApiError::internal())?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await.map_err(|_| ApiError::internal())?;
    Ok(Json(token_json(&meta)).into_response())
}

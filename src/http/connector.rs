//! The Twilio Generic Pay Connector endpoint: `POST /` (method in the body) and the legacy
//! `POST /tokenize` and `POST /charge` (method from the path).

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use super::error::{ApiError, Kind};
use super::openapi::{
    ChargeReply, ConnectorCharge, ConnectorReply, ConnectorTokenize, TokenizeReply,
};
use super::twilio::{self, IdKey, Method, Reply};
use super::{AppState, Caller};
use crate::audit::AuditEvent;
use crate::auth::Scope;
use crate::charge::Source;
use crate::domain::{InvalidInput, TransactionId};

/// The Twilio Generic Pay Connector endpoint.
#[utoipa::path(
    post, path = "/", tag = "connector",
    request_body(content = ConnectorTokenize, description = "Twilio's JSON, a tokenize or a charge by `method`; Content-Type is ignored"),
    responses(
        (status = 200, description = "Tokenized, charged, or refused with `error_code` (Twilio reads only a 200's body): every validation error, decline and payvault failure answers 200", body = ConnectorReply,
            links(
                ("GetToken" = (operation_id = "get_token", parameters(("token" = "$response.body#/token_id")))),
                ("UpdateToken" = (operation_id = "update_token", parameters(("token" = "$response.body#/token_id")))),
                ("DeleteToken" = (operation_id = "delete_token", parameters(("token" = "$response.body#/token_id")))),
                ("ChargeToken" = (operation_id = "charge_token", parameters(("token" = "$response.body#/token_id")))),
            )),
        (status = 401, description = "Missing or invalid credentials (`unauthorized`), with a `WWW-Authenticate` challenge", body = ConnectorReply),
        (status = 403, description = "The credential lacks the `connector` scope (`forbidden`)", body = ConnectorReply),
    ),
    security(("basic" = []), ("bearer" = []))
)]
pub async fn root(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Response {
    connector(app, None, caller, body).await
}

/// Legacy private-beta path: the method is `tokenize`.
#[utoipa::path(post, path = "/tokenize", tag = "connector",
    request_body(content = ConnectorTokenize, description = "Twilio's JSON; Content-Type is ignored"),
    responses(
        (status = 200, description = "Tokenized, or refused with `error_code` (Twilio reads only a 200's body)", body = TokenizeReply,
            links(
                ("GetToken" = (operation_id = "get_token", parameters(("token" = "$response.body#/token_id")))),
                ("UpdateToken" = (operation_id = "update_token", parameters(("token" = "$response.body#/token_id")))),
                ("DeleteToken" = (operation_id = "delete_token", parameters(("token" = "$response.body#/token_id")))),
                ("ChargeToken" = (operation_id = "charge_token", parameters(("token" = "$response.body#/token_id")))),
            )),
        (status = 401, description = "Missing or invalid credentials (`unauthorized`)", body = ConnectorReply),
        (status = 403, description = "The credential lacks the `connector` scope (`forbidden`)", body = TokenizeReply),
    ),
    security(("basic" = []), ("bearer" = [])))]
pub async fn legacy_tokenize(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Response {
    connector(app, Some(Method::Tokenize), caller, body).await
}

/// Legacy private-beta path: the method is `charge`.
#[utoipa::path(post, path = "/charge", tag = "connector",
    request_body(content = ConnectorCharge, description = "Twilio's JSON; Content-Type is ignored"),
    responses(
        (status = 200, description = "Charged, or refused or declined with `error_code` (Twilio reads only a 200's body)", body = ChargeReply,
            links(
                ("GetSavedToken" = (operation_id = "get_token", parameters(("token" = "$response.body#/parameters/token_id")))),
                ("ChargeSavedToken" = (operation_id = "charge_token", parameters(("token" = "$response.body#/parameters/token_id")))),
            )),
        (status = 401, description = "Missing or invalid credentials (`unauthorized`)", body = ConnectorReply),
        (status = 403, description = "The credential lacks the `connector` scope (`forbidden`)", body = ChargeReply),
    ),
    security(("basic" = []), ("bearer" = [])))]
pub async fn legacy_charge(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Response {
    connector(app, Some(Method::Charge), caller, body).await
}

async fn connector(
    app: AppState,
    path_method: Option<Method>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Response {
    let key = path_method.map_or(IdKey::Both, IdKey::from);
    let caller = match caller {
        Ok(c) => c,
        // Before authentication the method is not known: both id keys, as Twilio's docs show.
        Err(e) => return e.into_connector_response(IdKey::Both),
    };
    if let Err(e) = caller.require(&app, Scope::Connector, "connector").await {
        return e.into_connector_response(key);
    }

    // The body holds card data: it lives in a zeroizing buffer and is wiped when the task ends.
    let reply = match read_body(body, app.max_body_bytes).await {
        // Run to completion even if Twilio hangs up at its 10 s timeout (hyper drops a handler
        // whose client disconnects): its retry must find the outcome recorded, not an attempt
        // cut off between the processor's approval and our bookkeeping.
        Ok(buf) => {
            let (app, caller) = (app.clone(), caller.clone());
            tokio::spawn(async move { handle(&app, &caller, path_method, &buf).await })
                .await
                .unwrap_or_else(|e| ApiError::from(e).into_reply(key))
        }
        Err(invalid) => refuse(&app, &caller, "connector", None, key, invalid.into()).await,
    };
    reply.into_response()
}

/// Reads the body into a buffer allocated once at the size limit, so it never reallocates and
/// leaves a copy behind; the buffer is zeroized on drop. hyper's own read buffers are outside
/// our control and are not wiped (see README, "Memory hygiene").
async fn read_body(mut body: Body, limit: usize) -> Result<Zeroizing<Vec<u8>>, InvalidInput> {
    let mut buf = Zeroizing::new(Vec::with_capacity(limit));
    while let Some(frame) = body.frame().await {
        // The transport's error (a reset or timed-out connection) names no body content.
        let frame = frame.map_err(|e| {
            tracing::debug!(error = %e, "the request body could not be read");
            InvalidInput::BodyUnreadable
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(InvalidInput::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Parses and validates the request, then runs the one domain operation it asks for.
async fn handle(
    app: &AppState,
    caller: &Caller,
    path_method: Option<Method>,
    body: &[u8],
) -> Reply {
    let default_key = path_method.map_or(IdKey::Both, IdKey::from);
    let request = match twilio::parse(body) {
        Ok(r) => r,
        Err(invalid) => {
            return refuse(app, caller, "connector", None, default_key, invalid.into()).await
        }
    };
    let txn = request.transaction_id().ok();
    let method = match request.method(path_method) {
        Ok(m) => m,
        Err(invalid) => {
            return refuse(app, caller, "connector", txn, default_key, invalid.into()).await
        }
    };
    let key = IdKey::from(method);
    let action = method.as_str();
    let now = chrono::Utc::now();
    match method {
        Method::Tokenize => match request.into_tokenize(now, app.expiry) {
            Err(invalid) => refuse(app, caller, action, txn, key, invalid.into()).await,
            Ok(req) => match app
                .vault
                .tokenize(&caller.principal, &caller.origin, &req)
                .await
            {
                Ok(t) => {
                    tracing::info!(method = action, replayed = t.replayed, "tokenized");
                    Reply::ok(key, &t.token)
                }
                // The vault has audited the refusal.
                Err(e) => ApiError::from(e).into_reply(key),
            },
        },
        Method::Charge => {
            let started = std::time::Instant::now();
            let req = match request.into_charge(now, app.expiry) {
                Ok(r) => r,
                Err(invalid) => return refuse(app, caller, action, txn, key, invalid.into()).await,
            };
            // Charging a stored token is a merchant-backend privilege, not a connector's.
            if matches!(req.source, Source::Token(_))
                && !caller.principal.has_scope(Scope::TokensCharge)
            {
                let forbidden = ApiError::new(
                    Kind::Forbidden,
                    "forbidden",
                    "charging a stored token needs the `tokens:charge` scope",
                );
                return refuse(app, caller, action, txn, key, forbidden).await;
            }
            match app
                .charger
                .charge(&caller.principal, &caller.origin, &req, started)
                .await
            {
                Ok(charged) => {
                    let o = charged.outcome;
                    tracing::info!(
                        method = action,
                        replayed = charged.replayed,
                        error_code = o.error_code.as_deref(),
                        "charge answered"
                    );
                    match (&o.charge_id, &o.error_code) {
                        (Some(id), None) => Reply::ok(key, id),
                        (_, code) => Reply::error(
                            key,
                            code.as_deref().unwrap_or("processor_bad_response"),
                            o.error_message
                                .as_deref()
                                .unwrap_or("the payment processor declined the charge"),
                        ),
                    }
                    .with_parameters(o.parameters)
                }
                Err(e) => ApiError::from(e).into_reply(key),
            }
        }
    }
}

/// Audits a request refused before it reached the vault, then answers it in Twilio's shape
/// (HTTP 200). If the audit event cannot be written the request fails as a whole (PCI DSS 10:
/// no unlogged access).
async fn refuse(
    app: &AppState,
    caller: &Caller,
    action: &'static str,
    txn: Option<TransactionId>,
    key: IdKey,
    err: ApiError,
) -> Reply {
    let mut event = AuditEvent::by(&caller.principal, &caller.origin, action).failed(err.code());
    event.transaction_id = txn.map(|t| t.as_str().to_owned());
    if let Err(e) = app.audit.record(&event).await {
        return ApiError::internal(&e).into_reply(key);
    }
    err.into_reply(key)
}

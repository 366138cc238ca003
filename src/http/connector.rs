//! The Twilio Generic Pay Connector endpoint: `POST /` (method in the body) and the legacy
//! `POST /tokenize` and `POST /charge` (method from the path).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use super::auth::{Denied, CHALLENGE};
use super::twilio::{self, IdKey, Method, Reply, ReplyDoc, WireRequest};
use super::AppState;
use crate::audit::{AuditEvent, Origin};
use crate::auth::{Principal, Scope};
use crate::charge::{ChargeError, Source};
use crate::domain::{InvalidInput, TransactionId};

/// The Twilio Generic Pay Connector endpoint.
#[utoipa::path(
    post, path = "/", tag = "connector",
    request_body(content = WireRequest, description = "Twilio's JSON; Content-Type is ignored"),
    responses(
        (status = 200, description = "Approved, tokenized, or refused with `error_code` (Twilio reads only 200s)", body = ReplyDoc),
        (status = 401, description = "Missing or invalid credentials", body = ReplyDoc),
        (status = 403, description = "The credential lacks the `connector` scope", body = ReplyDoc),
    ),
    security(("basic" = []))
)]
pub async fn root(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    connector(app, None, peer, headers, body).await
}

/// Legacy private-beta path: the method is `tokenize`.
#[utoipa::path(post, path = "/tokenize", tag = "connector", request_body = WireRequest,
    responses((status = 200, body = ReplyDoc), (status = 401, body = ReplyDoc)), security(("basic" = [])))]
pub async fn legacy_tokenize(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    connector(app, Some(Method::Tokenize), peer, headers, body).await
}

/// Legacy private-beta path: the method is `charge`.
#[utoipa::path(post, path = "/charge", tag = "connector", request_body = WireRequest,
    responses((status = 200, body = ReplyDoc), (status = 401, body = ReplyDoc)), security(("basic" = [])))]
pub async fn legacy_charge(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    connector(app, Some(Method::Charge), peer, headers, body).await
}

/// Answer when payvault itself failed. HTTP 200 like every other refusal, because Twilio reads
/// only a 200's body and would otherwise tell the caller "malformed response" instead of passing
/// `internal_error` on. Tokenize is atomic and charges are idempotent, so a retry with the same
/// transaction id is safe.
fn internal_error(key: IdKey) -> Reply {
    Reply::error(
        key,
        "internal_error",
        "payvault could not complete the request; retrying with the same transaction_id is safe",
    )
}

async fn connector(
    app: AppState,
    path_method: Option<Method>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let origin = super::origin(&app, &headers, peer);
    let key = path_method.map_or(IdKey::Both, IdKey::from);

    let principal = match authenticate(&app, &headers, &origin).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    if !principal.has_scope(Scope::Connector) {
        let event = AuditEvent::by(&principal, &origin, "connector");
        let msg = "this credential lacks the `connector` scope";
        let reply = refuse(&app, event, key, "forbidden", msg).await;
        return reply.with_status(StatusCode::FORBIDDEN).into_response();
    }

    // The body holds card data: it lives in a zeroizing buffer and is wiped when the task ends.
    let reply = match read_body(body, app.max_body_bytes).await {
        // Run to completion even if Twilio hangs up at its 10 s timeout (hyper drops a handler
        // whose client disconnects): its retry must find the outcome recorded, not an attempt
        // cut off between the processor's approval and our bookkeeping.
        Ok(buf) => {
            let (app, principal, origin) = (app.clone(), principal.clone(), origin.clone());
            let task =
                tokio::spawn(
                    async move { handle(&app, &principal, &origin, path_method, &buf).await },
                );
            task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "request task failed");
                internal_error(key)
            })
        }
        Err(invalid) => reject(&app, &principal, &origin, key, None, None, invalid).await,
    };
    reply.into_response()
}

/// Authenticates a connector request; failures answer in Twilio's shape.
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    origin: &Origin,
) -> Result<Arc<Principal>, Response> {
    super::auth::authenticate(app, headers, origin)
        .await
        .map_err(|denied| match denied {
            Denied::Unauthorized => {
                let mut response = Reply::error(
                    IdKey::Both,
                    "unauthorized",
                    "invalid or missing credentials",
                )
                .with_status(StatusCode::UNAUTHORIZED)
                .into_response();
                response.headers_mut().insert(WWW_AUTHENTICATE, CHALLENGE);
                response
            }
            Denied::Internal => internal_error(IdKey::Both).into_response(),
        })
}

/// Reads the body into a buffer allocated once at the size limit, so it never reallocates and
/// leaves a copy behind; the buffer is zeroized on drop. hyper's own read buffers are outside
/// our control and are not wiped (see README, "Memory hygiene").
async fn read_body(mut body: Body, limit: usize) -> Result<Zeroizing<Vec<u8>>, InvalidInput> {
    let mut buf = Zeroizing::new(Vec::with_capacity(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| InvalidInput::BodyUnreadable)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(InvalidInput::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn handle(
    app: &AppState,
    principal: &Principal,
    origin: &Origin,
    path_method: Option<Method>,
    body: &[u8],
) -> Reply {
    let default_key = path_method.map_or(IdKey::Both, IdKey::from);
    let request = match twilio::parse(body) {
        Ok(r) => r,
        Err(invalid) => {
            return reject(app, principal, origin, default_key, None, None, invalid).await
        }
    };
    let txn = request.transaction_id().ok();
    let method = match request.method(path_method) {
        Ok(m) => m,
        Err(invalid) => {
            return reject(app, principal, origin, default_key, None, txn, invalid).await
        }
    };
    let key = IdKey::from(method);
    match method {
        Method::Tokenize => {
            let req = match request.into_tokenize(chrono::Utc::now(), app.expiry) {
                Ok(r) => r,
                Err(invalid) => {
                    return reject(app, principal, origin, key, Some(method), txn, invalid).await
                }
            };
            match app.vault.tokenize(principal, origin, &req).await {
                Ok(t) => {
                    tracing::info!(method = "tokenize", replayed = t.replayed, "tokenized");
                    Reply::ok(key, &t.token)
                }
                Err(e) if e.code() == "internal_error" => {
                    tracing::error!(error = %super::error_chain(&e), "tokenize failed");
                    internal_error(key)
                }
                Err(e) => {
                    tracing::info!(
                        method = "tokenize",
                        error_code = e.code(),
                        "tokenize refused"
                    );
                    Reply::error(key, e.code(), &e.to_string())
                }
            }
        }
        Method::Charge => {
            let started = std::time::Instant::now();
            let req = match request.into_charge(chrono::Utc::now(), app.expiry) {
                Ok(r) => r,
                Err(invalid) => {
                    return reject(app, principal, origin, key, Some(method), txn, invalid).await
                }
            };
            // Charging a stored token is a merchant-backend privilege, not a connector's.
            if matches!(req.source, Source::Token(_)) && !principal.has_scope(Scope::TokensCharge) {
                let mut event = AuditEvent::by(principal, origin, "charge");
                event.transaction_id = txn.map(|t| t.as_str().to_owned());
                let msg = "charging a stored token needs the `tokens:charge` scope";
                return refuse(app, event, key, "forbidden", msg).await;
            }
            match app.charger.charge(principal, origin, &req, started).await {
                Ok(charged) => {
                    let o = charged.outcome;
                    tracing::info!(
                        method = "charge",
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
                Err(e @ (ChargeError::Database(_) | ChargeError::Crypto(_))) => {
                    tracing::error!(error = %super::error_chain(&e), "charge failed");
                    internal_error(key)
                }
                Err(e) => {
                    tracing::info!(method = "charge", error_code = e.code(), "charge refused");
                    Reply::error(key, e.code(), &e.to_string())
                }
            }
        }
    }
}

/// Answers a request that failed validation, after auditing it. Messages come from
/// [`InvalidInput`], which never quotes a value.
async fn reject(
    app: &AppState,
    principal: &Principal,
    origin: &Origin,
    key: IdKey,
    method: Option<Method>,
    txn: Option<TransactionId>,
    invalid: InvalidInput,
) -> Reply {
    let mut event = AuditEvent::by(
        principal,
        origin,
        method.map_or("connector", Method::as_str),
    );
    event.transaction_id = txn.map(|t| t.as_str().to_owned());
    refuse(app, event, key, invalid.code(), &invalid.to_string()).await
}

/// Audits a refused request and answers it in Twilio's shape. If the audit event cannot be
/// written the request fails as a whole (PCI DSS 10: no unlogged access).
async fn refuse(app: &AppState, event: AuditEvent, key: IdKey, code: &str, message: &str) -> Reply {
    let event = event.failed(code);
    if let Err(e) = app.vault.record_event(&event).await {
        tracing::error!(error = %super::error_chain(&e), "audit write failed");
        return internal_error(key);
    }
    tracing::info!(action = event.action, error_code = code, "request refused");
    Reply::error(key, code, message)
}

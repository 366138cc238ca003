//! HTTP: routing, the middleware stack, extractors and response formats. Everything that knows
//! about axum lives here.

mod api;
mod auth;
mod connector;
pub mod sandbox;
pub mod twilio;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::Authenticator;
use crate::charge::Charger;
use crate::vault::Vault;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub vault: Vault,
    pub charger: Charger,
    pub auth: Arc<Authenticator>,
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", post(connector::root))
        .route("/tokenize", post(connector::legacy_tokenize))
        .route("/charge", post(connector::legacy_charge))
        .route("/v1/tokens/{token}/charges", post(api::charge_token))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                // Credentials print as "Sensitive" in any debug output of the headers.
                .layer(SetSensitiveRequestHeadersLayer::new([
                    AUTHORIZATION,
                    PROXY_AUTHORIZATION,
                    COOKIE,
                ]))
                .layer(axum::middleware::map_request(assign_request_id))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            // Path only: a query string could carry anything.
                            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
                            tracing::info_span!(
                                "request",
                                method = %req.method(),
                                path = req.uri().path(),
                                request_id = id.unwrap_or(""),
                            )
                        })
                        .on_request(())
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// Gives every request a fresh id, replacing any the client sent: a client-chosen id would end
/// up in logs and audit events unchecked.
async fn assign_request_id(mut req: Request) -> Request {
    let id = uuid::Uuid::new_v4().to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, value);
    }
    req
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An error and its causes, each by its `Display` (which for our types never holds card data).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

//! HTTP: routing, the middleware stack, extractors and response formats. Everything that knows
//! about axum lives here.

mod api;
mod auth;
mod connector;
mod error;
mod openapi;
pub mod ops;
pub mod sandbox;
pub mod serve;
pub mod tls;
pub mod twilio;
mod unseal;

pub use auth::Caller;
pub use error::{ApiError, Kind};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{AuditLog, Origin};
use crate::auth::Authenticator;
use crate::charge::Charger;
use crate::domain::ExpiryPolicy;
use crate::vault::Vault;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub vault: Vault,
    pub charger: Charger,
    pub audit: AuditLog,
    pub auth: Arc<Authenticator>,
    pub max_body_bytes: usize,
    pub trusted_proxies: Arc<TrustedProxies>,
    pub auth_failures: Arc<crate::auth::FailureAudit>,
    pub expiry: ExpiryPolicy,
    /// The sealing lag bound `/readyz` reports against (`PAYVAULT_AUDIT_MAX_UNSEALED_SECS`).
    pub audit_max_unsealed: std::time::Duration,
    /// The key provider the master keys were unwrapped with, if any: `/readyz` reports whether
    /// it is still reachable (requests do not need it).
    pub key_provider: Option<crate::custody::KeyProvider>,
    /// Present on an instance configured for split custodians (`PAYVAULT_KEY_PROVIDER=shares`):
    /// takes the shares `POST /unseal` receives.
    pub unsealer: Option<Arc<crate::shares::unseal::Unsealer>>,
}

/// Failed logins audited as events of their own per second per instance; the rest are counted
/// in their source's aggregate event.
pub const AUTH_FAILURE_AUDITS_PER_SECOND: u32 = 20;

/// Proxies whose `X-Forwarded-For` header is believed (`PAYVAULT_TRUSTED_PROXIES`): addresses or
/// CIDR ranges. Empty by default: the header is then ignored, since any client can send it.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, prefix) = item.split_once('/').unwrap_or((item, ""));
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{item}` is not an IP address or CIDR range"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = if prefix.is_empty() {
                max
            } else {
                prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or(format!("`{item}` has a bad prefix length"))?
            };
            nets.push((addr, prefix));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)), 32),
                    None => (u128::from(v6), 128),
                },
            }
        };
        let (ip, width) = bits(ip);
        self.0.iter().any(|(net, prefix)| {
            let (net, net_width) = bits(*net);
            if net_width != width {
                return false;
            }
            let shift = u32::from(width - (*prefix).min(width));
            shift >= u32::from(width) || (ip >> shift) == (net >> shift)
        })
    }
}

/// Where a request came from. The forwarded client address is taken from `X-Forwarded-For`
/// only when the peer is a trusted proxy: the right-most address that is not itself one.
pub(crate) fn origin(app: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Origin {
    let forwarded_for = if app.trusted_proxies.contains(peer.ip()) {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .find(|ip| !app.trusted_proxies.contains(*ip))
            .map(|ip| ip.to_string())
    } else {
        None
    };
    Origin {
        request_id: request_id(headers),
        client_addr: Some(peer.ip().to_string()),
        forwarded_for,
    }
}

/// The client's address for throttling: the forwarded one when the peer is a trusted proxy.
pub(crate) fn source_ip(origin: &Origin, peer: SocketAddr) -> IpAddr {
    origin
        .forwarded_for
        .as_deref()
        .and_then(|f| f.parse().ok())
        .unwrap_or(peer.ip())
}

/// The public router, `/metrics` included.
pub fn router(state: AppState) -> Router {
    router_with(state, true)
}

/// Every public route but `/metrics`, each documented by its handler's `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(connector::root))
        .routes(routes!(connector::legacy_tokenize))
        .routes(routes!(connector::legacy_charge))
        .routes(routes!(
            api::tokens::get_token,
            api::tokens::delete_token,
            api::tokens::update_token
        ))
        .routes(routes!(api::charges::charge_token))
        .routes(routes!(api::audit::audit_events))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
}

/// The public router; `/metrics` only if `with_metrics` (not when an admin listener serves it).
pub fn router_with(state: AppState, with_metrics: bool) -> Router {
    let mut api = api_routes();
    if with_metrics {
        api = api.routes(routes!(ops::metrics));
    }
    let (mut routes, openapi) = api.split_for_parts();
    // Custodians' shares go to the admin listener when there is one (the same condition as
    // `/metrics`), else here.
    if with_metrics && state.unsealer.is_some() {
        routes = routes.route("/unseal", post(unseal::unseal));
    }
    layered(with_openapi(routes, openapi), state)
}

/// The admin listener's router (`PAYVAULT_ADMIN_LISTEN`): `/metrics`, `/unseal` (split
/// custodians), and `/openapi.json` documenting both listeners.
pub fn admin_router(state: AppState) -> Router {
    let (_, openapi) = api_routes().routes(routes!(ops::metrics)).split_for_parts();
    let mut routes = Router::new().route("/metrics", get(ops::metrics));
    if state.unsealer.is_some() {
        routes = routes.route("/unseal", post(unseal::unseal));
    }
    layered(with_openapi(routes, openapi), state)
}

fn with_openapi(routes: Router<AppState>, openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    let openapi = Arc::new(openapi::finish(openapi));
    routes.route(
        "/openapi.json",
        get(move || async move { axum::Json(openapi.as_ref().clone()) }),
    )
}

/// The middleware stack every listener's routes get.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route_layer(axum::middleware::from_fn(ops::record_request))
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
                            // The route template, never the raw path (`/v1/tokens/tok_...`
                            // names a token) nor the query string (which could carry anything).
                            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
                            let route = req
                                .extensions()
                                .get::<MatchedPath>()
                                .map_or("unmatched", MatchedPath::as_str);
                            tracing::info_span!(
                                "request",
                                method = %ops::method_label(req.method()),
                                route,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_match_addresses_and_ranges() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.5, fd00::/8").unwrap();
        for ip in ["10.1.2.3", "192.168.1.5", "fd12::1", "::ffff:10.0.0.1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.6", "fe80::1", "127.0.0.1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}

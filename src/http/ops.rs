//! Operator endpoints: `/healthz` (alive), `/readyz` (can serve), `/metrics` (Prometheus), and
//! the request metrics middleware.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

use super::AppState;
use crate::vault::SchemaState;

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .map_or_else(
                |_| PrometheusBuilder::new().build_recorder(),
                PrometheusBuilder::build_recorder,
            );
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then ours simply stays empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A method as a label: the standard ones by name, anything else as `other`, so a client
/// inventing methods cannot grow the metrics or the logs without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
    }
}

/// Records every request by route template (never the raw path: tokens are in paths), method
/// and status class.
pub async fn record_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("payvault_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("payvault_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let pool = app.vault.pool_stats();
    metrics::gauge!("payvault_db_pool_connections").set(f64::from(pool.size));
    metrics::gauge!("payvault_db_pool_idle_connections").set(pool.idle as f64);
    metrics::gauge!("payvault_sealed").set(if app.vault.is_sealed() { 1.0 } else { 0.0 });
    if let Ok(keys) = app.vault.keys() {
        for version in keys.versions() {
            metrics::gauge!("payvault_master_key_loaded", "version" => version.to_string())
                .set(1.0);
        }
        metrics::gauge!("payvault_master_key_current_version")
            .set(f64::from(keys.current_version()));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics_handle().render(),
    )
}

/// Ready when the database answers, every migration this build knows is applied, and master
/// keys are loaded (a sealed instance, split custodians, is `not_ready` until unsealed). A load
/// balancer should send traffic only while this answers 200. Also reports the audit sealing
/// lag; over `PAYVAULT_AUDIT_MAX_UNSEALED_SECS` the status is `degraded` (still 200).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready: database, migrations and keys"), (status = 503, description = "Not ready (database, migrations, or sealed)")))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let keys = app.vault.keys().ok();
    let versions: Vec<i32> = keys.map(|k| k.versions().collect()).unwrap_or_default();
    // A probe wants a prompt answer: an unreachable database is "not ready" after 2 s, not
    // after the pool's whole acquire timeout.
    let (mut status, db, migrations) = match app.vault.schema_state(Duration::from_secs(2)).await {
        SchemaState::Current => (StatusCode::OK, "ok", "ok"),
        SchemaState::Pending => (StatusCode::SERVICE_UNAVAILABLE, "ok", "pending"),
        SchemaState::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "unreachable", "unknown"),
    };
    // Sealing lag: the age of the oldest queued event. Over the bound the instance still
    // serves (refusing traffic would not seal anything) but reports itself degraded.
    let lag = match status {
        StatusCode::OK => app.audit.seal_lag().await.ok(),
        _ => None,
    };
    if keys.is_none() {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let lagging = lag.is_some_and(|l| l > app.audit_max_unsealed);
    let state = match (status == StatusCode::OK, lagging) {
        (false, _) => "not_ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let mut body = json!({
        "status": state,
        "sealed": keys.is_none(),
        "database": db,
        "migrations": migrations,
        "key_versions": versions,
        "current_key_version": keys.map(|k| k.current_version()),
        "audit_sealing": match (lag, lagging) {
            (None, _) => "unknown",
            (Some(_), true) => "lagging",
            (Some(_), false) => "ok",
        },
        "audit_seal_lag_seconds": lag.map(|l| l.as_secs_f64()),
        "audit_max_unsealed_seconds": app.audit_max_unsealed.as_secs(),
    });
    if keys.is_none() {
        sealed(&app, &mut body).await;
    }
    if let Some(provider) = &app.key_provider {
        body["key_provider"] = provider_status(provider, keys.is_none()).await;
    }
    (status, Json(body)).into_response()
}

/// What `/readyz` says of a sealed instance: how far unsealing has got (never a share), and
/// how many audit events wait for the keys.
async fn sealed(app: &AppState, body: &mut Value) {
    body["reason"] = "sealed: the master keys are loaded once enough custodians have submitted their shares (payvault unseal)".into();
    let held = app.vault.signer().held_events().await;
    body["audit_events_held"] = held.held.into();
    body["audit_events_dropped"] = held.dropped.into();
    if let Some(unsealer) = &app.unsealer {
        body["unseal"] = json!({
            "set_id": unsealer.set().set_id,
            "submitted": unsealer.submitted().await,
            "threshold": unsealer.set().threshold,
        });
    }
}

/// The key provider's `/readyz` entry. The master keys are in memory already: a lost provider
/// does not stop requests (nor the readiness a load balancer acts on), but it is reported, and
/// blocks the next start. Sealed, there is nothing to check yet.
async fn provider_status(provider: &crate::custody::KeyProvider, sealed: bool) -> Value {
    if sealed {
        return json!({ "name": provider.name(), "status": "sealed" });
    }
    let reachable = match tokio::time::timeout(Duration::from_secs(2), provider.check()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the key provider is unreachable; the loaded master keys keep serving, but a restart would fail");
            false
        }
        Err(_) => {
            tracing::warn!(provider = provider.name(), "the key provider did not answer within 2 s; the loaded master keys keep serving, but a restart would fail");
            false
        }
    };
    metrics::gauge!("payvault_key_provider_up").set(if reachable { 1.0 } else { 0.0 });
    json!({
        "name": provider.name(),
        "status": if reachable { "ok" } else { "unreachable" },
    })
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

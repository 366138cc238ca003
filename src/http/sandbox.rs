//! `payvault sandbox`: the fake processor served over HTTP, speaking the same Generic Pay
//! Connector JSON the `generic` profile sends. Outcomes are documented in
//! [`crate::processor::sandbox`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::twilio::{self, IdKey, Reply};
use crate::charge::Source;
use crate::processor::sandbox::{decide, Sandbox};
use crate::processor::ProcessorError;

pub fn router(sandbox: Arc<Sandbox>) -> Router {
    Router::new()
        .route("/", post(charge))
        .route("/charge", post(charge))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(sandbox)
}

async fn charge(State(sandbox): State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = chrono::Utc::now();
    let req = match twilio::parse(&body).and_then(|r| r.into_charge(now, Default::default())) {
        Ok(r) => r,
        Err(invalid) => {
            return Reply::error(IdKey::Charge, invalid.code(), &invalid.to_string())
                .into_response()
        }
    };
    let Source::Payment(method) = &req.source else {
        return Reply::error(
            IdKey::Charge,
            "invalid_token",
            "the sandbox charges cards and bank accounts, not tokens",
        )
        .into_response();
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&req.key)
        .to_owned();
    match sandbox.answer(&key, decide(method, &req.amount)).await {
        Ok(reply) => match (reply.charge_id, reply.error_code) {
            (Some(id), None) => Reply::ok(IdKey::Charge, &id).into_response(),
            (_, code) => Reply::error(
                IdKey::Charge,
                code.as_deref().unwrap_or("card_declined"),
                reply.error_message.as_deref().unwrap_or("declined"),
            )
            .into_response(),
        },
        Err(ProcessorError::ServerError(_)) | Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "processing_error" })),
        )
            .into_response(),
    }
}

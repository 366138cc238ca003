//! `POST /unseal`: a custodian's share for an instance that started sealed
//! (`PAYVAULT_KEY_PROVIDER=shares`). Served on the admin listener (`PAYVAULT_ADMIN_LISTEN`) when
//! there is one, else on the public listener. Body: `{"custodian": "...", "share": "pvshare..."}`
//! (what `payvault unseal` sends); answer: the progress, `{"status": "pending"|"unsealed",
//! "submitted", "threshold", "set_id"}`, or an `{"error": {"code", "message"}}` that never
//! quotes the share.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::error::{ApiError, Kind};
use super::AppState;
use crate::shares::unseal::SubmitError;
use crate::shares::ShareRejection;

#[derive(serde::Deserialize)]
struct Submission {
    custodian: String,
    share: String,
}

pub async fn unseal(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(unsealer) = app.unsealer.clone() else {
        return Err(ApiError::new(
            Kind::NotFound,
            "unseal_not_configured",
            "this instance does not use split custodians (PAYVAULT_KEY_PROVIDER is not shares)",
        ));
    };
    // The body holds a share: wiped once parsed (axum's copy in `body` is dropped with it).
    let body = Zeroizing::new(body.to_vec());
    let submission: Submission = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            Kind::BadRequest,
            "malformed_json",
            "the body must be a JSON object with string fields `custodian` and `share`",
        )
    })?;
    let share = Zeroizing::new(submission.share);
    let origin = super::origin(&app, &headers, peer);
    let progress = unsealer
        .submit(&submission.custodian, &share, &origin)
        .await
        .map_err(refusal)?;
    Ok(Json(json!({
        "status": if progress.unsealed { "unsealed" } else { "pending" },
        "submitted": progress.submitted,
        "threshold": progress.threshold,
        "set_id": unsealer.set().set_id,
    })))
}

fn refusal(e: SubmitError) -> ApiError {
    let kind = match &e {
        SubmitError::InvalidCustodian(_)
        | SubmitError::Rejected(
            ShareRejection::Text(_)
            | ShareRejection::WrongSet { .. }
            | ShareRejection::NotVerified { .. },
        ) => Kind::BadRequest,
        SubmitError::AlreadyUnsealed
        | SubmitError::DuplicateCustodian(_)
        | SubmitError::DuplicateShare(_)
        | SubmitError::Rejected(ShareRejection::WrongRoot(_))
        | SubmitError::OpenFailed(_) => Kind::Conflict,
        SubmitError::Throttled(wait) => {
            return ApiError::new(Kind::TooManyRequests, e.code(), e.to_string())
                .with_retry_after(*wait)
        }
        SubmitError::Audit(_) => return ApiError::internal(&e),
    };
    ApiError::new(kind, e.code(), e.to_string())
}

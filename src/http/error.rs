//! The one HTTP error model. Every failure becomes an [`ApiError`]: a [`Kind`] (which decides
//! the merchant API's status), a stable machine-readable code and a message that never holds
//! card data. Domain errors convert with `From`, so each mapping is written once; the Twilio
//! connector renders the same classification in its own shape ([`ApiError::into_reply`]).
//!
//! Internal failures answer opaquely (`internal_error`). Their cause travels inside the error
//! and is logged exactly once, when the error is rendered, inside the request's span (so with
//! its request id).

use std::borrow::Cow;

use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{Denied, CHALLENGE};
use super::twilio::{IdKey, Reply};
use crate::charge::ChargeError;
use crate::domain::InvalidInput;
use crate::vault::{TokenError, TokenizeError};

/// What kind of failure, independent of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Gone,
    Conflict,
    /// Too many failed attempts: refused before any work, with `Retry-After`.
    TooManyRequests,
    /// The instance cannot serve this yet (sealed): 503.
    Unavailable,
    /// payvault's own failure: answered opaquely, cause logged.
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Gone => StatusCode::GONE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed request, renderable as the merchant API's JSON error or as a Twilio reply.
#[derive(Debug)]
pub struct ApiError {
    kind: Kind,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    /// For internal errors: the cause, logged when the error is rendered, never sent.
    cause: Option<String>,
    /// Whole seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

const INTERNAL_MESSAGE: &str =
    "payvault could not complete the request; retrying with the same Idempotency-Key is safe";
/// Tokenize is atomic and charges are idempotent, so Twilio's retry with the same transaction
/// id is safe.
const CONNECTOR_INTERNAL_MESSAGE: &str =
    "payvault could not complete the request; retrying with the same transaction_id is safe";

impl ApiError {
    pub fn new(
        kind: Kind,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            cause: None,
            retry_after: None,
        }
    }

    /// payvault's own failure; `cause` is logged once, never shown to the caller.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            cause: Some(error_chain(cause)),
            ..Self::new(Kind::Internal, "internal_error", INTERNAL_MESSAGE)
        }
    }

    /// Like [`ApiError::internal`] for a failure described in words.
    pub fn internal_msg(cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(Kind::Internal, "internal_error", INTERNAL_MESSAGE)
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            Kind::Unauthorized,
            "unauthorized",
            "invalid or missing credentials",
        )
    }

    /// Too many failed logins: 429 with `Retry-After` (at least one second).
    pub fn throttled(retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(
                Kind::TooManyRequests,
                "too_many_attempts",
                "too many failed logins from this address; retry after the Retry-After seconds",
            )
        }
    }

    /// The instance is sealed: no master key until custodians unseal it (`payvault unseal`).
    pub fn sealed() -> Self {
        Self::new(
            Kind::Unavailable,
            "vault_sealed",
            "the vault is sealed: this instance serves once enough custodians have unsealed it (payvault unseal); retry later",
        )
    }

    /// Seconds for `Retry-After`.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// Logs an internal error's cause (once: rendering consumes the error).
    fn log(&self) {
        match (&self.cause, self.kind) {
            (Some(cause), _) => tracing::error!(error = %cause, "request failed"),
            (None, Kind::Internal) => tracing::error!("request failed"),
            (None, _) => tracing::info!(error_code = %self.code, "request refused"),
        }
    }

    /// The answer in Twilio's shape, HTTP 200: Twilio reads only a 200's body, and passes its
    /// `error_code` on to the merchant as a `ConnectorError`.
    pub fn into_reply(self, key: IdKey) -> Reply {
        self.log();
        let message = match self.kind {
            Kind::Internal if self.code == "internal_error" => CONNECTOR_INTERNAL_MESSAGE,
            _ => &self.message,
        };
        Reply::error(key, &self.code, message)
    }

    /// A refusal of the connector request as a whole, before any work: in Twilio's shape, with
    /// 401 (and a challenge) for bad credentials and 403 for a missing scope.
    pub fn into_connector_response(self, key: IdKey) -> Response {
        let kind = self.kind;
        let retry_after = self.retry_after;
        let mut response = match kind {
            Kind::Unauthorized | Kind::Forbidden | Kind::TooManyRequests => {
                self.into_reply(key).with_status(kind.status())
            }
            _ => self.into_reply(key),
        }
        .into_response();
        set_retry_after(&mut response, retry_after);
        if kind == Kind::Unauthorized {
            response.headers_mut().insert(WWW_AUTHENTICATE, CHALLENGE);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.kind.status();
        let retry_after = self.retry_after;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into_owned(),
                message: self.message.into_owned(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        set_retry_after(&mut response, retry_after);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, CHALLENGE);
        }
        response
    }
}

fn set_retry_after(response: &mut Response, secs: Option<u64>) {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// `{"error": {"code", "message"}}`: every merchant API error.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    /// For humans; never contains card data.
    pub message: String,
}

impl From<InvalidInput> for ApiError {
    fn from(invalid: InvalidInput) -> Self {
        // Messages come from `InvalidInput`, which never quotes a value.
        Self::new(Kind::BadRequest, invalid.code(), invalid.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthorized => Self::unauthorized(),
            Denied::Throttled(retry_after) => Self::throttled(retry_after),
            Denied::Internal => Self::internal_msg("the credential store could not be reached"),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let kind = match &e {
            TokenError::Unknown => Kind::NotFound,
            TokenError::Deleted => Kind::Gone,
            TokenError::Invalid(invalid) => return invalid.clone().into(),
            TokenError::NotApplicable(_) => Kind::Conflict,
            TokenError::Database(_) => return Self::internal(&e),
        };
        Self::new(kind, e.code(), e.to_string())
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        let kind = match &e {
            TokenizeError::DuplicateTransaction | TokenizeError::AnswerPurged => Kind::Conflict,
            TokenizeError::Database(_) | TokenizeError::Crypto(_) => return Self::internal(&e),
            TokenizeError::Sealed(_) => return Self::sealed(),
        };
        Self::new(kind, e.code(), e.to_string())
    }
}

impl From<ChargeError> for ApiError {
    fn from(e: ChargeError) -> Self {
        let kind = match &e {
            ChargeError::Invalid(_) => Kind::BadRequest,
            ChargeError::UnknownToken => Kind::NotFound,
            ChargeError::TokenDeleted | ChargeError::TokenExpired => Kind::Gone,
            ChargeError::Duplicate | ChargeError::AnswerPurged | ChargeError::InProgress => {
                Kind::Conflict
            }
            // payvault's own failure (its database was altered), but a specific one: answered
            // with its code, and logged as an error for the operator.
            ChargeError::EntryIntegrity => {
                return Self {
                    cause: Some(e.to_string()),
                    ..Self::new(Kind::Internal, e.code(), e.to_string())
                }
            }
            ChargeError::NoStoredCredential(_) => Kind::Conflict,
            ChargeError::Database(_) | ChargeError::Crypto(_) => return Self::internal(&e),
            ChargeError::Sealed(_) => return Self::sealed(),
        };
        Self::new(kind, e.code(), e.to_string())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(&e)
    }
}

/// An error and its causes, each by its `Display` (which for our types never holds card data).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_opaque() {
        let err = ApiError::internal_msg("connection refused to 10.0.0.5");
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn domain_errors_map_to_statuses_once() {
        assert_eq!(ApiError::from(TokenError::Unknown).kind(), Kind::NotFound);
        assert_eq!(ApiError::from(TokenError::Deleted).kind(), Kind::Gone);
        assert_eq!(
            ApiError::from(ChargeError::InProgress).kind(),
            Kind::Conflict
        );
        assert_eq!(
            ApiError::from(ChargeError::TokenExpired).code(),
            "token_expired"
        );
        let invalid = ApiError::from(InvalidInput::MissingField("amount"));
        assert_eq!(
            (invalid.kind(), invalid.code()),
            (Kind::BadRequest, "missing_field")
        );
    }
}

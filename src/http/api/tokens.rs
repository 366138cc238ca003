//! `/v1/tokens/{token}`: a stored token's metadata, deletion and expiry. Never the card.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use crate::auth::Scope;
use crate::domain::{InvalidInput, TokenExpiry};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{AppState, Caller};
use crate::vault::{TokenInfo, TokenStatus};

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
    /// Whether a network transaction id from the card's first approved charge is stored, for
    /// merchant-initiated charges of the token (the id itself is never shown).
    has_network_transaction_id: bool,
}

impl From<TokenInfo> for TokenView {
    fn from(info: TokenInfo) -> Self {
        let m = info.metadata;
        Self {
            token: m.token,
            status: info.status.as_str(),
            kind: m.kind,
            brand: m.brand,
            bin: m.bin,
            last4: m.last4,
            exp_month: m.exp_month,
            exp_year: m.exp_year,
            fingerprint: m.fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
            created_at: m.created_at,
            expires_at: m.expires_at,
            deleted_at: m.deleted_at,
            has_network_transaction_id: m.has_network_transaction_id,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path, pattern = "^tok_[A-Za-z0-9_-]{22}$", description = "A token (`tok_` and 22 characters); any other string answers 404 `unknown_token`")),
    responses((status = 200, description = "An active or expired token", body = TokenView),
        (status = 410, description = "A deleted (crypto-shredded) token: its remaining metadata, `status: deleted`", body = TokenView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the scope is missing", body = ErrorBody), (status = 404, description = "`unknown_token`: no such token, or another tenant's (answered exactly alike, never revealing that it exists)", body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `GET /v1/tokens/{token}`: brand, BIN/last 4, expiry, fingerprint, lifecycle. Requires
/// `tokens:read`; every read is audited. A deleted token answers 410 Gone with what remains
/// of it: the card is gone, and a client following a DELETE must not read 200.
pub async fn get_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    caller
        .require(&app, Scope::TokensRead, "token_read")
        .await?;
    let info = app
        .vault
        .token_info(&caller.principal, &caller.origin, &token)
        .await?;
    let status = match info.status {
        TokenStatus::Deleted => StatusCode::GONE,
        _ => StatusCode::OK,
    };
    Ok((status, Json(info.into())))
}

#[utoipa::path(
    delete, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path, pattern = "^tok_[A-Za-z0-9_-]{22}$", description = "A token (`tok_` and 22 characters); any other string answers 404 `unknown_token`")),
    responses((status = 200, body = TokenView), (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the scope is missing", body = ErrorBody), (status = 404, description = "`unknown_token`: no such token, or another tenant's (answered exactly alike, never revealing that it exists)", body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `DELETE /v1/tokens/{token}`: crypto-shreds the entry (its wrapped data key and ciphertext
/// are cleared; copies in backups stay decryptable until its master key version is retired);
/// the metadata and audit trail remain. Idempotent. Requires `tokens:delete`.
pub async fn delete_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    caller
        .require(&app, Scope::TokensDelete, "token_delete")
        .await?;
    let info = app
        .vault
        .delete_token(&caller.principal, &caller.origin, &token)
        .await?;
    Ok(Json(info.into()))
}

/// Body of `PATCH /v1/tokens/{token}`: exactly one of the fields (published as a `oneOf` by
/// `http::openapi::finish`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiryChange {
    /// An RFC 3339 time, or `null` for "never".
    #[serde(default, deserialize_with = "some")]
    expires_at: Option<Option<String>>,
    /// Expire this many days from now (1 to 3650).
    #[serde(default, deserialize_with = "whole_number")]
    ttl_days: Option<u32>,
    /// `true`: expire when the card does (after its expiry month).
    expires_with_card: Option<bool>,
}

/// A whole number of days, also written `30.0`: JSON Schema counts `30.0` as an integer.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n: Option<f64> = serde::Deserialize::deserialize(d)?;
    n.map(|n| {
        if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) {
            Ok(n as u32)
        } else {
            Err(serde::de::Error::custom("not a whole number of days"))
        }
    })
    .transpose()
}

/// Distinguishes a field set to `null` (`Some(None)`) from an absent one (`None`).
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

impl ExpiryChange {
    /// The body as a [`TokenExpiry`].
    fn parse(body: &[u8]) -> Result<TokenExpiry, InvalidInput> {
        let change: Self = serde_json::from_slice(body).map_err(|_| {
            InvalidInput::TokenExpiry(
                "send one of expires_at (RFC 3339 or null), ttl_days (1-3650) or expires_with_card (true)",
            )
        })?;
        match (change.expires_at, change.ttl_days, change.expires_with_card) {
            (Some(None), None, None) => Ok(TokenExpiry::Never),
            (Some(Some(at)), None, None) => chrono::DateTime::parse_from_rfc3339(&at)
                .map(|t| TokenExpiry::At(t.with_timezone(&chrono::Utc)))
                .map_err(|_| InvalidInput::TokenExpiry("expires_at must be an RFC 3339 time")),
            (None, Some(days), None) => TokenExpiry::after_days(days, "ttl_days must be 1 to 3650"),
            (None, None, Some(true)) => Ok(TokenExpiry::WithCard),
            _ => Err(InvalidInput::TokenExpiry(
                "send exactly one of expires_at, ttl_days or expires_with_card (true)",
            )),
        }
    }
}

#[utoipa::path(
    patch, path = "/v1/tokens/{token}", tag = "merchant", params(("token" = String, Path, pattern = "^tok_[A-Za-z0-9_-]{22}$", description = "A token (`tok_` and 22 characters); any other string answers 404 `unknown_token`")),
    request_body = ExpiryChange,
    responses((status = 200, body = TokenView), (status = 400, description = "`invalid_token_expiry`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`: the scope is missing", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token, or another tenant's (answered exactly alike, never revealing that it exists)", body = ErrorBody),
        (status = 409, description = "`invalid_token_expiry`: `expires_with_card` on a bank-account token", body = ErrorBody),
        (status = 410, description = "`token_deleted`", body = ErrorBody)),
    security(("basic" = []), ("bearer" = []))
)]
/// `PATCH /v1/tokens/{token}`: sets when a token expires. Requires `tokens:delete` (an expiry
/// is a deferred deletion); audited.
pub async fn update_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<TokenView>, ApiError> {
    caller
        .require(&app, Scope::TokensDelete, "token_update")
        .await?;
    let info = app
        .vault
        .set_token_expiry(
            &caller.principal,
            &caller.origin,
            &token,
            ExpiryChange::parse(&body),
        )
        .await?;
    Ok(Json(info.into()))
}

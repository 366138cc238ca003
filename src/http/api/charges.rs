//! `POST /v1/tokens/{token}/charges`: charging a stored token from the merchant's backend.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{refuse, text};
use crate::auth::Scope;
use crate::charge::{recurring, ChargeError, ChargeRequest, Source, STORED_CREDENTIAL_PARAMETER};
use crate::domain::{Amount, InvalidInput, Token, TransactionId};
use crate::http::error::{ApiError, ErrorBody, ErrorDetail, Kind};
use crate::http::{AppState, Caller};

#[utoipa::path(
    post, path = "/v1/tokens/{token}/charges", tag = "merchant",
    params(
        ("token" = String, Path, pattern = "^tok_[A-Za-z0-9_-]{22}$", description = "A token (`tok_` and 22 characters); any other string answers 404 `unknown_token`"),
        ("Idempotency-Key" = String, Header, pattern = "^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|(?!.*(?:[0-9][.-]*){12}[0-9])[!-~]{1,255})$", description = "1-255 printable ASCII characters, no spaces, and (unless it is a UUID) never 13 or more digits in a row, even with dots or dashes between them (what a card number looks like); a retry with the same key gets the same answer"),
    ),
    request_body = ChargeTokenRequest,
    responses(
        (status = 200, description = "Approved", body = ChargeView,
            links(("GetChargedToken" = (operation_id = "get_token", parameters(("token" = "$response.body#/token")))))),
        (status = 402, description = "Declined: `error` holds the processor's code", body = ChargeView),
        (status = 502, description = "Processor failure: outcome unknown, retry with the same Idempotency-Key", body = ChargeView),
        (status = 504, description = "Processor timeout: outcome unknown, retry with the same Idempotency-Key", body = ChargeView),
        (status = 400, description = "Invalid input: `missing_idempotency_key`, `invalid_idempotency_key`, `malformed_json`, `missing_field`, `invalid_field_type`, `invalid_amount`, `amount_not_positive`, `amount_too_precise`, `amount_too_large`, `unknown_currency`, `invalid_stored_credential`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the `tokens:charge` scope is missing", body = ErrorBody),
        (status = 404, description = "`unknown_token`: no such token, or another tenant's (answered exactly alike, never revealing that it exists)", body = ErrorBody),
        (status = 409, description = "`duplicate_transaction` (the key was used for a different charge) or `transaction_in_progress`", body = ErrorBody),
        (status = 410, description = "`token_deleted` or `token_expired`", body = ErrorBody),
    ),
    security(("basic" = []), ("bearer" = []))
)]
/// `POST /v1/tokens/{token}/charges`: charges a stored token, merchant-initiated (no CVV).
/// Requires the `tokens:charge` scope and an `Idempotency-Key` header.
pub async fn charge_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    caller.require(&app, Scope::TokensCharge, "charge").await?;
    // A malformed token is as unknown as a well-formed one nobody issued: 404, as on
    // GET/PATCH/DELETE of the same path.
    let Some(token) = Token::parse(&token) else {
        return refuse(&app, &caller, "charge", ChargeError::UnknownToken.into()).await;
    };
    let key = match headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(TransactionId::parse))
    {
        // Stricter than the connector (whose `transaction_id` Twilio chooses): any 13 digits in
        // a row, so that the documented pattern is exactly what is accepted.
        Some(Ok(Ok(key))) if crate::domain::has_long_digit_run(key.as_str()) => {
            let invalid = InvalidInput::CardNumberInTransactionId;
            return refuse(&app, &caller, "charge", v1_error(invalid)).await;
        }
        Some(Ok(Ok(key))) => key,
        None => {
            return Err(ApiError::new(
                Kind::BadRequest,
                "missing_idempotency_key",
                "send an Idempotency-Key header (1 to 255 printable ASCII characters)",
            ))
        }
        Some(Ok(Err(invalid))) => return refuse(&app, &caller, "charge", v1_error(invalid)).await,
        Some(Err(_)) => {
            let invalid = InvalidInput::InvalidTransactionId;
            return refuse(&app, &caller, "charge", v1_error(invalid)).await;
        }
    };
    let req = match parse(&token, key, &body) {
        Ok(req) => req,
        Err(invalid) => return refuse(&app, &caller, "charge", v1_error(invalid)).await,
    };
    let amount = req.amount;
    // Run to completion even if the client hangs up (see the connector endpoint).
    let (charger, who, from) = (
        app.charger.clone(),
        caller.principal.clone(),
        caller.origin.clone(),
    );
    let charged =
        tokio::spawn(async move { charger.charge(&who, &from, &req, started).await }).await??;
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

/// The charge a request asks for: the token from the path, amount, currency and description
/// from the body (numbers accepted for `amount`).
fn parse(token: &Token, key: TransactionId, body: &[u8]) -> Result<ChargeRequest, InvalidInput> {
    let body: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err(InvalidInput::NotAnObject),
    };
    let amount = text(&body, "amount")?.ok_or(InvalidInput::MissingField("amount"))?;
    let currency = text(&body, "currency")?.ok_or(InvalidInput::MissingField("currency"))?;
    // `recurring` | `unscheduled` (the default): the kind of merchant-initiated charge.
    let mut parameters = std::collections::BTreeMap::new();
    match body.get(STORED_CREDENTIAL_PARAMETER) {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) => {
            parameters.insert(STORED_CREDENTIAL_PARAMETER.to_owned(), kind.clone());
            recurring(&parameters)?;
        }
        Some(_) => return Err(InvalidInput::StoredCredential),
    }
    let req = ChargeRequest {
        key: key.as_str().to_owned(),
        source: Source::Token(token.clone()),
        amount: Amount::parse(&amount, &currency)?,
        save_card: false,
        token_expires_at: None,
        description: text(&body, "description")?,
        parameters,
    };
    Ok(req)
}

/// `InvalidInput` speaks the connector's names; on `/v1` the same rules are about the
/// `Idempotency-Key` header and the `currency` field.
fn v1_error(invalid: InvalidInput) -> ApiError {
    match invalid {
        InvalidInput::InvalidTransactionId => ApiError::new(
            Kind::BadRequest,
            "invalid_idempotency_key",
            "header `Idempotency-Key` must be 1 to 255 printable ASCII characters",
        ),
        InvalidInput::CardNumberInTransactionId => ApiError::new(
            Kind::BadRequest,
            invalid.code(),
            "header `Idempotency-Key` holds 13 or more digits in a row, as a card number does; use an id that does not, such as a UUID",
        ),
        InvalidInput::UnknownCurrency => ApiError::new(
            Kind::BadRequest,
            invalid.code(),
            "field `currency` is not a payable ISO 4217 currency",
        ),
        other => other.into(),
    }
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
/// same fields leniently, accepting numbers for `amount`). Its published schema is the one
/// `http::openapi::finish` writes, which ties the amount's decimals to the currency.
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct ChargeTokenRequest {
    /// Decimal in major units, e.g. `19.99` (a JSON number is accepted too).
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Forwarded to the processor.
    pub description: Option<String>,
    /// `recurring` (a series at fixed intervals) or `unscheduled` (the default): the charge is
    /// merchant-initiated on the stored credential, citing the network transaction id of the
    /// token's first charge when one was returned. Never sent with a CVV.
    pub stored_credential: Option<String>,
}

//! Twilio's Generic Pay Connector wire format (see shared/docs/twilio-contract.md).
//!
//! Parsing is deliberately lenient where Twilio is inconsistent (Content-Type ignored, numbers
//! accepted where strings are expected, `description` of any shape, unknown keys ignored, empty
//! strings treated as absent) and strict where it matters (every value is validated into a
//! domain type before use).
//!
//! Error messages never quote a value: serde's own messages can echo the input (a card number
//! sent as a JSON number, say), so they are never shown; we report the field path instead.

use std::collections::BTreeMap;
use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::charge::{ChargeRequest, Source};
use crate::domain::{
    AccountNumber, BankAccount, Card, CardNumber, Cvv, Expiry, ExpiryPolicy, InvalidInput,
    PaymentMethod, PostalCode, RoutingNumber, SecretText, TokenExpiry, TransactionId,
};
use crate::domain::{Amount, Token};
use crate::vault::TokenizeRequest;

/// The `<Parameter>` name that asks a charge to also vault the card.
pub const SAVE_CARD_PARAMETER: &str = "save_card";
/// `<Parameter>`: the token expires this many days after it is created (1 to 3650).
pub const TOKEN_TTL_PARAMETER: &str = "token_ttl_days";
/// `<Parameter>` set to `true`: the token expires with the card (after its expiry month).
pub const EXPIRES_WITH_CARD_PARAMETER: &str = "token_expires_with_card";

/// The expiry a request asks for with `<Parameter>`s, if any.
fn requested_expiry(
    params: &BTreeMap<String, String>,
) -> Result<Option<TokenExpiry>, InvalidInput> {
    if params
        .get(EXPIRES_WITH_CARD_PARAMETER)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(Some(TokenExpiry::WithCard));
    }
    const BAD_TTL: &str =
        "parameter `token_ttl_days` must be a whole number of days from 1 to 3650";
    params
        .get(TOKEN_TTL_PARAMETER)
        .map(|v| {
            let days = v
                .trim()
                .parse::<u32>()
                .map_err(|_| InvalidInput::TokenExpiry(BAD_TTL))?;
            TokenExpiry::after_days(days, BAD_TTL)
        })
        .transpose()
}

/// When a token for `method` expires: the request's parameters, else the deployment default.
fn expires_at(
    policy: ExpiryPolicy,
    params: &BTreeMap<String, String>,
    method: &PaymentMethod,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, InvalidInput> {
    let card_end = match method {
        PaymentMethod::Card(c) => Some(c.expiry.end()),
        PaymentMethod::Bank(_) => None,
    };
    policy
        .or_default(requested_expiry(params)?)
        .resolve(now, card_end)
}

/// The operation a connector request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Tokenize,
    Charge,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tokenize => "tokenize",
            Method::Charge => "charge",
        }
    }
}

/// A connector request as it arrives. Card and bank numbers go straight into zeroizing
/// [`SecretText`]; nothing else here is sensitive.
///
/// Its OpenAPI schema is generated from this struct, so the documented fields are the parsed ones.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"method": "tokenize", "transaction_id": "72500aba-328c-445c-a12e-da5700e10b17",
    "cardnumber": "4111111111111111", "cvv": "123", "expiry_month": "08", "expiry_year": "27",
    "postal_code": "94111", "description": "pizza", "parameters": {"order_id": "A-1"}}))]
pub struct WireRequest {
    /// `tokenize` or `charge`; absent on the legacy `/tokenize` and `/charge` paths.
    #[schema(value_type = Option<String>)]
    method: Option<Text>,
    /// Twilio's idempotency key: a retry with the same id gets the same answer.
    #[schema(value_type = String)]
    transaction_id: Option<Text>,
    /// Card number, 12-19 digits (Luhn-checked).
    #[schema(value_type = Option<String>)]
    cardnumber: Option<Secret>,
    /// 3 or 4 digits; forwarded on a charge, never stored.
    #[schema(value_type = Option<String>)]
    cvv: Option<Secret>,
    #[schema(value_type = Option<String>)]
    expiry_month: Option<Text>,
    /// Two or four digits.
    #[schema(value_type = Option<String>)]
    expiry_year: Option<Text>,
    #[schema(value_type = Option<String>)]
    postal_code: Option<Text>,
    /// Bank account number, 4-17 digits (ACH).
    #[schema(value_type = Option<String>)]
    bankaccountnumber: Option<Secret>,
    /// 9-digit ABA routing number.
    #[schema(value_type = Option<String>)]
    routingnumber: Option<Text>,
    /// Charges: decimal in major units, e.g. `10.00`.
    #[schema(value_type = Option<String>)]
    amount: Option<Text>,
    /// Charges: ISO 4217, any case.
    #[schema(value_type = Option<String>)]
    currency_code: Option<Text>,
    /// A stored token to charge instead of card data (payvault's extension of the format;
    /// needs the `tokens:charge` scope).
    #[schema(value_type = Option<String>)]
    token: Option<Text>,
    /// Free text, or an object/null when unset: only a string is kept (forwarded to the
    /// processor, never stored).
    #[schema(value_type = Option<Object>)]
    description: Option<Value>,
    /// `<Parameter>` values. payvault reads `save_card`, `token_ttl_days` and
    /// `token_expires_with_card`; all are forwarded to the processor on a charge.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    parameters: Option<BTreeMap<String, Option<Text>>>,
}

impl fmt::Debug for WireRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireRequest")
            .field("method", &self.method)
            .field("transaction_id", &self.transaction_id)
            .finish_non_exhaustive()
    }
}

/// Parses a request body. The body buffer is the caller's to zeroize.
pub fn parse(body: &[u8]) -> Result<WireRequest, InvalidInput> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: WireRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = top_level_field(err.path());
        classify(err.into_inner(), field)
    })?;
    de.end().map_err(|e| classify(e, None))?;
    Ok(req)
}

/// The fields of [`WireRequest`], for naming the one a type error is in.
const WIRE_FIELDS: [&str; 14] = [
    "method",
    "transaction_id",
    "cardnumber",
    "cvv",
    "expiry_month",
    "expiry_year",
    "postal_code",
    "bankaccountnumber",
    "routingnumber",
    "amount",
    "currency_code",
    "token",
    "description",
    "parameters",
];

/// The top-level field a deserialization error is in, as one of [`WIRE_FIELDS`]. Only the
/// top level: a path below it holds keys the caller chose (`parameters.<key>`), which may be
/// a card number (a `<Parameter>` named after the PAN, say) and must not be echoed.
fn top_level_field(path: &serde_path_to_error::Path) -> Option<&'static str> {
    match path.iter().next()? {
        serde_path_to_error::Segment::Map { key } => {
            WIRE_FIELDS.iter().copied().find(|f| *f == key.as_str())
        }
        _ => None,
    }
}

fn classify(err: serde_json::Error, field: Option<&'static str>) -> InvalidInput {
    match (err.classify(), field) {
        (serde_json::error::Category::Data, Some(field)) => InvalidInput::InvalidFieldType(field),
        (serde_json::error::Category::Data, _) => InvalidInput::NotAnObject,
        _ => InvalidInput::MalformedJson {
            line: err.line(),
            column: err.column(),
        },
    }
}

impl WireRequest {
    /// The requested operation: the `method` field, or the legacy path (`/tokenize`,
    /// `/charge`), which must agree when both are present.
    pub fn method(&self, from_path: Option<Method>) -> Result<Method, InvalidInput> {
        let named = match present(&self.method).map(|m| m.trim().to_ascii_lowercase()) {
            None => None,
            Some(m) if m == "tokenize" => Some(Method::Tokenize),
            Some(m) if m == "charge" => Some(Method::Charge),
            Some(_) => return Err(InvalidInput::UnknownMethod),
        };
        match (named, from_path) {
            (Some(n), Some(p)) if n != p => Err(InvalidInput::MethodPathMismatch),
            (Some(m), _) | (None, Some(m)) => Ok(m),
            (None, None) => Err(InvalidInput::MissingField("method")),
        }
    }

    /// The transaction id, if present and well-formed (audit events record it even when the
    /// rest of the request is invalid).
    pub fn transaction_id(&self) -> Result<TransactionId, InvalidInput> {
        TransactionId::parse(required(&self.transaction_id, "transaction_id")?)
    }

    /// `<Parameter>` values; `null` ones are dropped.
    fn take_parameters(&mut self) -> BTreeMap<String, String> {
        self.parameters
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?.0)))
            .collect()
    }

    /// Validates a tokenize request.
    pub fn into_tokenize(
        mut self,
        now: DateTime<Utc>,
        policy: ExpiryPolicy,
    ) -> Result<TokenizeRequest, InvalidInput> {
        let transaction_id = self.transaction_id()?;
        let parameters = self.take_parameters();
        let method = self.into_payment_method(now.date_naive())?;
        let expires_at = expires_at(policy, &parameters, &method, now)?;
        Ok(TokenizeRequest {
            expires_at,
            transaction_id,
            method,
        })
    }

    /// Validates a charge request: card, bank account or stored token, plus amount and currency.
    pub fn into_charge(
        mut self,
        now: DateTime<Utc>,
        policy: ExpiryPolicy,
    ) -> Result<ChargeRequest, InvalidInput> {
        let today = now.date_naive();
        let key = self.transaction_id()?.as_str().to_owned();
        let amount = Amount::parse(
            required(&self.amount, "amount")?,
            required(&self.currency_code, "currency_code")?,
        )?;
        let parameters = self.take_parameters();
        // `<Parameter name="save_card" value="true">` also vaults the card.
        let save_card = parameters
            .get(SAVE_CARD_PARAMETER)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let description = self
            .description
            .take()
            .and_then(|d| d.as_str().map(str::to_owned));
        let source = match present(&self.token).map(str::to_owned) {
            Some(token) => {
                if self.cardnumber.is_some() || self.bankaccountnumber.is_some() {
                    return Err(InvalidInput::TokenWithCardData);
                }
                Source::Token(Token::parse(&token).ok_or(InvalidInput::TokenFormat)?)
            }
            None => Source::Payment(self.into_payment_method(today)?),
        };
        let token_expires_at = match &source {
            Source::Payment(method) if save_card => expires_at(policy, &parameters, method, now)?,
            _ => None,
        };
        Ok(ChargeRequest {
            key,
            source,
            amount,
            save_card,
            token_expires_at,
            description,
            parameters,
        })
    }

    /// Card or bank account, decided by which fields are present.
    fn into_payment_method(self, today: NaiveDate) -> Result<PaymentMethod, InvalidInput> {
        match (secret(self.cardnumber), secret(self.bankaccountnumber)) {
            (Some(_), Some(_)) => Err(InvalidInput::AmbiguousPaymentMethod),
            (None, None) => Err(InvalidInput::MissingPaymentMethod),
            (Some(pan), None) => {
                let number = CardNumber::parse(pan)?;
                let month = required(&self.expiry_month, "expiry_month")?;
                let year = required(&self.expiry_year, "expiry_year")?;
                let expiry = Expiry::parse(month, year, today)?;
                let cvv = secret(self.cvv).map(Cvv::parse).transpose()?;
                let postal_code = present(&self.postal_code)
                    .map(PostalCode::parse)
                    .transpose()?;
                Ok(PaymentMethod::Card(Card {
                    number,
                    expiry,
                    cvv,
                    postal_code,
                }))
            }
            (None, Some(account)) => {
                let routing =
                    RoutingNumber::parse(required(&self.routingnumber, "routingnumber")?)?;
                let account = AccountNumber::parse(account)?;
                Ok(PaymentMethod::Bank(BankAccount { routing, account }))
            }
        }
    }
}

/// A text field's value; an empty string counts as absent (Twilio sends `""` for data it did
/// not collect).
fn present(field: &Option<Text>) -> Option<&str> {
    field
        .as_ref()
        .map(|t| t.0.as_str())
        .filter(|s| !s.is_empty())
}

fn required<'a>(field: &'a Option<Text>, name: &'static str) -> Result<&'a str, InvalidInput> {
    present(field).ok_or(InvalidInput::MissingField(name))
}

fn secret(field: Option<Secret>) -> Option<SecretText> {
    field.map(|s| s.0).filter(|s| !s.expose().is_empty())
}

/// A scalar field, kept as text. Numbers are accepted and turned into their decimal text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text(String);

/// A scalar field holding card or bank data.
struct Secret(SecretText);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor { lenient: true }).map(Text)
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Card and account numbers: strings or integers only (a float would round the digits).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor { lenient: false })
            .map(|s| Secret(SecretText::new(s)))
    }
}

/// Reads a JSON scalar as text. `lenient` also accepts fractions (`"amount": 10.5`) and
/// booleans (`<Parameter>` values), for fields that are not card data.
struct ScalarVisitor {
    lenient: bool,
}

impl Visitor<'_> for ScalarVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        if self.lenient && v.is_finite() {
            Ok(v.to_string())
        } else {
            Err(E::invalid_type(de::Unexpected::Other("a fraction"), &self))
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        if self.lenient {
            Ok(v.to_string())
        } else {
            Err(E::invalid_type(de::Unexpected::Other("a boolean"), &self))
        }
    }
}

/// Which id key a reply carries: `token_id`, `charge_id`, or both when the method is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKey {
    Token,
    Charge,
    Both,
}

impl From<Method> for IdKey {
    fn from(m: Method) -> Self {
        match m {
            Method::Tokenize => IdKey::Token,
            Method::Charge => IdKey::Charge,
        }
    }
}

/// A reply in Twilio's shape: the id key is always present (`null` on error) next to
/// `error_code` and `error_message`.
#[derive(Debug)]
pub struct Reply {
    status: StatusCode,
    body: Map<String, Value>,
}

impl Reply {
    pub fn ok(key: IdKey, id: &str) -> Self {
        Self::build(StatusCode::OK, key, Some(id), None)
    }

    /// A refusal Twilio should pass to the merchant as `ConnectorError`. Twilio reads the body
    /// only of a 200, so business errors (validation, duplicates, declines) answer 200.
    pub fn error(key: IdKey, code: &str, message: &str) -> Self {
        Self::build(StatusCode::OK, key, None, Some((code, message)))
    }

    /// Extra results for the merchant's action URL (Twilio prefixes them `PayConnector_`).
    pub fn with_parameters(mut self, parameters: Map<String, Value>) -> Self {
        if !parameters.is_empty() {
            self.body
                .insert("parameters".into(), Value::Object(parameters));
        }
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn build(
        status: StatusCode,
        key: IdKey,
        id: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Self {
        let mut body = Map::new();
        let id = id.map_or(Value::Null, Value::from);
        if matches!(key, IdKey::Charge | IdKey::Both) {
            body.insert("charge_id".into(), id.clone());
        }
        if matches!(key, IdKey::Token | IdKey::Both) {
            body.insert("token_id".into(), id);
        }
        body.insert(
            "error_code".into(),
            error.map_or(Value::Null, |e| e.0.into()),
        );
        body.insert(
            "error_message".into(),
            error.map_or(Value::Null, |e| e.1.into()),
        );
        Self { status, body }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.status, Json(Value::Object(self.body))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        let bodies: [&[u8]; 4] = [
            br#"4111111111111111"#,
            br#"{"cardnumber": 4111111111111111.5}"#,
            br#"{"cardnumber": ["4111111111111111"]}"#,
            br#"{"cardnumber": "4111111111111111""#,
        ];
        for body in bodies {
            let err = parse(body).unwrap_err();
            assert!(!err.to_string().contains("4111"), "{err}");
        }
        assert!(parse(br#"{"amount": 10.5, "parameters": {"a": null, "b": true}}"#).is_ok());
        assert_eq!(
            parse(br#"{"cardnumber": true}"#).unwrap_err(),
            InvalidInput::InvalidFieldType("cardnumber")
        );
        assert_eq!(
            parse(br#"{"parameters": {"a": {"b": 1}}}"#).unwrap_err(),
            InvalidInput::InvalidFieldType("parameters")
        );
        // A caller-chosen key is never named: it may be a card number.
        let err = parse(br#"{"parameters": {"4111111111111111": [1]}}"#).unwrap_err();
        assert_eq!(err, InvalidInput::InvalidFieldType("parameters"));
        assert!(!err.to_string().contains("4111"), "{err}");
        assert_eq!(parse(b"[1]").unwrap_err(), InvalidInput::NotAnObject);
        assert!(matches!(
            parse(b"{} x").unwrap_err(),
            InvalidInput::MalformedJson { .. }
        ));
    }

    #[test]
    fn numbers_empty_strings_and_odd_descriptions_are_tolerated() {
        let req = parse(
            br#"{"method":"tokenize","transaction_id":"t1","cardnumber":4111111111111111,
                "expiry_month":8,"expiry_year":"2027","cvv":"","postal_code":"",
                "description":{},"parameters":{"n":"1"},"token_type":"reusable"}"#,
        )
        .unwrap();
        assert_eq!(req.method(None).unwrap(), Method::Tokenize);
        let now = today().and_hms_opt(12, 0, 0).unwrap().and_utc();
        let tok = req.into_tokenize(now, ExpiryPolicy::default()).unwrap();
        assert_eq!(tok.expires_at, None);
        let PaymentMethod::Card(card) = tok.method else {
            panic!("expected a card")
        };
        assert!(card.cvv.is_none() && card.postal_code.is_none());
        assert_eq!(card.expiry.month(), 8);
    }

    #[test]
    fn method_from_field_or_path() {
        let req = |m: &str| parse(format!(r#"{{"method":"{m}"}}"#).as_bytes()).unwrap();
        let bare = parse(b"{}").unwrap();
        assert_eq!(bare.method(Some(Method::Charge)).unwrap(), Method::Charge);
        assert_eq!(
            bare.method(None).unwrap_err(),
            InvalidInput::MissingField("method")
        );
        assert_eq!(req("Tokenize").method(None).unwrap(), Method::Tokenize);
        assert_eq!(
            req("refund").method(None).unwrap_err(),
            InvalidInput::UnknownMethod
        );
        assert_eq!(
            req("charge").method(Some(Method::Tokenize)).unwrap_err(),
            InvalidInput::MethodPathMismatch
        );
    }

    #[test]
    fn reply_shape_always_has_the_id_key() {
        let body = |r: Reply| Value::Object(r.body).to_string();
        assert_eq!(
            body(Reply::ok(IdKey::Token, "tok_x")),
            r#"{"error_code":null,"error_message":null,"token_id":"tok_x"}"#
        );
        assert_eq!(
            body(Reply::error(IdKey::Both, "unknown_method", "m")),
            r#"{"charge_id":null,"error_code":"unknown_method","error_message":"m","token_id":null}"#
        );
    }
}

//! The OpenAPI document served at `/openapi.json`. Its paths come from the handlers' own
//! `#[utoipa::path]` attributes, registered by the same `routes!` calls that route requests, so
//! it cannot drift from the router. This module holds its frame ([`ApiDoc`]), the schemas that
//! describe the connector's wire format by method, and [`finish`], which adds what utoipa's
//! model cannot say (empty query values, amount precision by currency, one-of bodies).

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::domain::amount::{payable_currencies, MAX_AMOUNT};

/// The document's frame.
#[derive(OpenApi)]
#[openapi(
    info(title = "payvault", description = "Card and bank-account tokenization vault for Twilio <Pay>: the Generic Pay Connector endpoint and the merchant API."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "connector", description = "Twilio Generic Pay Connector (`connector` scope). Every answer Twilio should pass on to the `<Pay>` action URL, refusals and declines included, is HTTP 200 with `error_code` set: Twilio reads only a 200's body."),
        (name = "merchant", description = "Merchant API: stored tokens of the caller's tenant (scoped API keys); another tenant's token answers exactly as an unknown one, 404 `unknown_token`"),
        (name = "audit", description = "The audit log (`audit:read`): the caller's tenant's events, every tenant's with `audit:all`"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`<username>.<secret>` of a credential"))
                    .build(),
            ),
        );
    }
}

// The connector's requests and answers by method: documentation of what `twilio::parse` reads
// (every property here is one of `WireRequest`'s, which a test checks) and `twilio::Reply` writes.
// Values are shown as Twilio sends them, strings; payvault also accepts numbers and treats an
// empty string or `null` as absent.

/// `method`: `tokenize`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum TokenizeMethod {
    #[schema(rename = "tokenize")]
    Tokenize,
}

/// `method`: `charge`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum ChargeMethod {
    #[schema(rename = "charge")]
    Charge,
}

/// A tokenize request: card fields or bank fields.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"method": "tokenize", "transaction_id": "72500aba-328c-445c-a12e-da5700e10b17",
    "cardnumber": "4111111111111111", "cvv": "123", "expiry_month": "08", "expiry_year": "35",
    "postal_code": "94111", "description": "pizza", "parameters": {"order_id": "A-1"}}))]
pub struct ConnectorTokenize {
    /// Required on `/`; on `/tokenize` it may be absent, and must not say otherwise.
    method: Option<TokenizeMethod>,
    /// Twilio's idempotency key, scoped to the credential.
    #[schema(pattern = "^[!-~]{1,255}$")]
    transaction_id: String,
    /// 12-19 digits, Luhn-checked.
    #[schema(pattern = "^[0-9]{12,19}$")]
    cardnumber: Option<String>,
    /// 3 or 4 digits; never stored.
    #[schema(pattern = "^[0-9]{3,4}$")]
    cvv: Option<String>,
    /// Required with `cardnumber`.
    #[schema(pattern = "^(0?[1-9]|1[0-2])$")]
    expiry_month: Option<String>,
    /// Required with `cardnumber`: 2 or 4 digits.
    #[schema(pattern = "^([0-9]{2}|[0-9]{4})$")]
    expiry_year: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9 -]{1,10}$")]
    postal_code: Option<String>,
    /// ACH account number, 4-17 digits.
    #[schema(pattern = "^[0-9]{4,17}$")]
    bankaccountnumber: Option<String>,
    /// Required with `bankaccountnumber`: 9-digit ABA routing number.
    #[schema(pattern = "^[0-9]{9}$")]
    routingnumber: Option<String>,
    /// Free text; an object or `null` counts as absent.
    #[schema(value_type = Option<Object>)]
    description: Option<Value>,
    /// `<Parameter>` values: payvault reads `token_ttl_days` (1-3650) and
    /// `token_expires_with_card` (`true`).
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    parameters: Option<Value>,
}

/// A charge request: card fields, bank fields, or a stored `token` (which needs the
/// `tokens:charge` scope), plus `amount` and `currency_code`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"method": "charge", "transaction_id": "0f6c1a52-8b0e-4d2a-9a51-3c1d2f7e9b10",
    "cardnumber": "4111111111111111", "cvv": "123", "expiry_month": "08", "expiry_year": "35",
    "amount": "10.00", "currency_code": "USD", "parameters": {"save_card": "true"}}))]
pub struct ConnectorCharge {
    /// Required on `/`; on `/charge` it may be absent, and must not say otherwise.
    method: Option<ChargeMethod>,
    #[schema(pattern = "^[!-~]{1,255}$")]
    transaction_id: String,
    /// Decimal in major units, at most 1,000,000, with no more decimals than the currency has.
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)?$")]
    amount: String,
    /// ISO 4217, any case.
    #[schema(pattern = "^[A-Za-z]{3}$")]
    currency_code: String,
    /// A stored token to charge instead of card or bank fields.
    #[schema(pattern = "^tok_[A-Za-z0-9_-]{22}$")]
    token: Option<String>,
    #[schema(pattern = "^[0-9]{12,19}$")]
    cardnumber: Option<String>,
    #[schema(pattern = "^[0-9]{3,4}$")]
    cvv: Option<String>,
    #[schema(pattern = "^(0?[1-9]|1[0-2])$")]
    expiry_month: Option<String>,
    #[schema(pattern = "^([0-9]{2}|[0-9]{4})$")]
    expiry_year: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9 -]{1,10}$")]
    postal_code: Option<String>,
    #[schema(pattern = "^[0-9]{4,17}$")]
    bankaccountnumber: Option<String>,
    #[schema(pattern = "^[0-9]{9}$")]
    routingnumber: Option<String>,
    #[schema(value_type = Option<Object>)]
    description: Option<Value>,
    /// `<Parameter>` values, forwarded to the processor. payvault reads `save_card` (`true`:
    /// also vault the card), `token_ttl_days`, `token_expires_with_card` and
    /// `stored_credential` (`recurring` | `unscheduled`).
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    parameters: Option<Value>,
}

/// The answer to a tokenize: `token_id` on success; `null` and `error_code` on a refusal.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TokenizeReply {
    #[schema(pattern = "^tok_[A-Za-z0-9_-]{22}$")]
    token_id: Option<String>,
    /// `null` on success; otherwise a stable code (see the README's table).
    error_code: Option<String>,
    error_message: Option<String>,
}

/// The answer to a charge: `charge_id` on approval; `null` and `error_code` (payvault's, or
/// the processor's decline code) otherwise.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ChargeReply {
    charge_id: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    /// Extra results for the `<Pay>` action URL (`PayConnector_<name>`): `token_id` when
    /// `save_card` vaulted the card, and the processor's own parameters.
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
}

/// The answer on `/`: a [`TokenizeReply`] or a [`ChargeReply`] by method; both id keys when the
/// method is not known (the request was refused before it was read).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ConnectorReply {
    #[schema(pattern = "^tok_[A-Za-z0-9_-]{22}$")]
    token_id: Option<String>,
    charge_id: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
}

/// The served document: utoipa's, finished with what its model cannot express.
pub fn finish(openapi: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(openapi).unwrap_or_else(|_| json!({}));
    required(&mut doc, "ConnectorReply", &["error_code", "error_message"]);
    required(
        &mut doc,
        "TokenizeReply",
        &["token_id", "error_code", "error_message"],
    );
    required(
        &mut doc,
        "ChargeReply",
        &["charge_id", "error_code", "error_message"],
    );
    // `/` takes either request; `method` says which.
    if let Some(body) = doc.pointer_mut("/paths/~1/post/requestBody/content/application~1json") {
        body["schema"] = json!({"oneOf": [
            {"allOf": [{"$ref": "#/components/schemas/ConnectorTokenize"}, {"required": ["method"]}]},
            {"allOf": [{"$ref": "#/components/schemas/ConnectorCharge"}, {"required": ["method"]}]},
        ]});
    }
    // `?limit=` is no `limit` (as on the connector): OpenAPI says so with `allowEmptyValue`.
    if let Some(Value::Array(params)) = doc.pointer_mut("/paths/~1v1~1audit~1events/get/parameters")
    {
        for p in params.iter_mut().filter(|p| p["in"] == "query") {
            p["allowEmptyValue"] = Value::Bool(true);
        }
    }
    fix_links(&mut doc);
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        schemas["ChargeTokenRequest"] = charge_token_request();
        schemas["ExpiryChange"] = expiry_change();
    }
    doc
}

/// utoipa 5.5 writes a Link's fields in snake case (`operation_id`); OpenAPI says
/// `operationId`, `operationRef`, `requestBody`.
fn fix_links(doc: &mut Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| r.get_mut("links").and_then(Value::as_object_mut))
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(from) {
                link.insert(to.to_owned(), v);
            }
        }
    }
}

fn required(doc: &mut Value, schema: &str, fields: &[&str]) {
    if let Some(s) = doc.pointer_mut(&format!("/components/schemas/{schema}")) {
        s["required"] = json!(fields);
    }
}

/// `POST /v1/tokens/{token}/charges`: the amount's precision depends on the currency (JPY 0
/// decimals, USD 2, KWD 3), so each exponent gets an `if currency in [...] then amount ...`.
fn charge_token_request() -> Value {
    let currencies = payable_currencies();
    let mut exponents: Vec<u32> = currencies.iter().map(|(_, e)| *e).collect();
    exponents.sort_unstable();
    exponents.dedup();
    let by_exponent: Vec<Value> = exponents
        .iter()
        .map(|&e| {
            let codes: Vec<&str> = currencies
                .iter()
                .filter(|(_, x)| *x == e)
                .map(|(c, _)| *c)
                .collect();
            json!({
                "if": {"properties": {"currency": {"enum": codes}}, "required": ["currency"]},
                "then": {"properties": {"amount": {"pattern": amount_pattern(e)}}},
            })
        })
        .collect();
    let all: Vec<&str> = currencies.iter().map(|(c, _)| *c).collect();
    let widest = exponents.last().copied().unwrap_or(0);
    json!({
        "type": "object",
        "required": ["amount", "currency"],
        "properties": {
            "amount": {
                "type": "string",
                "description": format!("Decimal in major units, greater than 0 and at most {MAX_AMOUNT}, with no more decimals than the currency has (trailing zeros aside), e.g. `19.99`."),
                "pattern": amount_pattern(widest),
            },
            "currency": {"type": "string", "enum": all, "description": "ISO 4217 code of a payable currency."},
            "description": {"type": ["string", "null"], "description": "Forwarded to the processor."},
            "stored_credential": {
                "type": ["string", "null"],
                "enum": ["recurring", "unscheduled", null],
                "description": "`recurring` (a series at fixed intervals) or `unscheduled` (the default): the charge is merchant-initiated on the stored credential, citing the network transaction id of the token's first charge when one was returned. Never sent with a CVV.",
            },
        },
        "allOf": by_exponent,
    })
}

/// A positive decimal of at most [`MAX_AMOUNT`] with at most `exponent` significant decimals,
/// as `Amount::parse` accepts it (leading zeros and trailing decimal zeros allowed).
fn amount_pattern(exponent: u32) -> String {
    let max_digits = MAX_AMOUNT.to_string().len() - 1;
    let zero_frac = r"(\.0+)?";
    let frac = if exponent == 0 {
        zero_frac.to_owned()
    } else {
        format!(r"(\.[0-9]{{1,{exponent}}}0*)?")
    };
    let mut alternatives = vec![
        format!("0*[1-9][0-9]{{0,{}}}{frac}", max_digits - 1),
        format!("0*{MAX_AMOUNT}{zero_frac}"),
    ];
    // Below 1: `0.` then a non-zero digit within the currency's decimals.
    for zeros in 0..exponent {
        let rest = exponent - 1 - zeros;
        alternatives.push(format!(r"0+\.0{{{zeros}}}[1-9][0-9]{{0,{rest}}}0*"));
    }
    format!("^({})$", alternatives.join("|"))
}

/// `PATCH /v1/tokens/{token}`: exactly one of three fields.
fn expiry_change() -> Value {
    json!({
        "description": "Exactly one of `expires_at`, `ttl_days` or `expires_with_card`.",
        "oneOf": [
            {"type": "object", "additionalProperties": false, "required": ["expires_at"],
             "properties": {"expires_at": {"type": ["string", "null"], "format": "date-time",
                "description": "An RFC 3339 time, or `null` for never."}}},
            {"type": "object", "additionalProperties": false, "required": ["ttl_days"],
             "properties": {"ttl_days": {"type": "integer", "minimum": 1, "maximum": 3650,
                "description": "Expire this many days from now."}}},
            {"type": "object", "additionalProperties": false, "required": ["expires_with_card"],
             "properties": {"expires_with_card": {"type": "boolean", "enum": [true],
                "description": "Expire when the card does (after its expiry month)."}}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Amount;

    /// The documented amount pattern accepts exactly what `Amount::parse` accepts.
    #[test]
    fn amount_patterns_match_the_parser() {
        let samples = [
            "1",
            "10",
            "10.0",
            "10.00",
            "10.000",
            "10.5",
            "10.05",
            "10.005",
            "10.0050",
            "0.01",
            "0.1",
            "0.001",
            "0.0001",
            "00.10",
            "007",
            "0",
            "0.0",
            "0.00",
            ".5",
            "5.",
            "1000000",
            "1000000.00",
            "1000000.01",
            "1000001",
            "999999.99",
            "9999999",
            "-1",
            "1e3",
            "1,00",
            "",
            "0.000",
        ];
        let mut one_per_exponent = payable_currencies();
        one_per_exponent.dedup_by_key(|(_, e)| *e);
        one_per_exponent.sort_by_key(|(_, e)| *e);
        one_per_exponent.dedup_by_key(|(_, e)| *e);
        assert!(one_per_exponent.len() >= 3, "{one_per_exponent:?}");
        for (currency, exponent) in one_per_exponent {
            let pattern = amount_pattern(exponent);
            for s in samples {
                let documented = matches(&pattern, s);
                let parsed = Amount::parse(s, currency).is_ok();
                assert_eq!(documented, parsed, "{s} {currency}: pattern {pattern}");
            }
        }
    }

    /// The connector's documented request fields are ones the parser reads.
    #[test]
    fn connector_schemas_name_only_fields_the_parser_reads() {
        use utoipa::PartialSchema;
        let names = |schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
            let v = serde_json::to_value(schema).unwrap();
            let props = v["properties"].as_object().unwrap().clone();
            props.keys().cloned().collect::<Vec<_>>()
        };
        let parsed = names(crate::http::twilio::WireRequest::schema());
        for documented in [ConnectorTokenize::schema(), ConnectorCharge::schema()] {
            for field in names(documented) {
                assert!(
                    parsed.contains(&field),
                    "{field} is not read by twilio::parse"
                );
            }
        }
    }

    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(s)
    }
}

//! Fake Adyen Checkout API `/payments` (`processors.md` §5).
//!
//! Checks, on `POST /v71/payments` (and `/v68/payments`, the version PRISM uses) (§5.1):
//! - `X-API-Key` equal to [`API_KEY`]; missing or wrong is a 401 `ServiceError` (§5.1, §5.6).
//!   The spec's HTTP Basic alternative for a web-service user is not configured in the fake;
//! - `Content-Type: application/json` and a JSON object body (§5.1);
//! - required `amount`, `merchantAccount` (must be [`MERCHANT_ACCOUNT`], the MOTO account),
//!   `paymentMethod`, `reference` (≤ 80), `returnUrl` (§5.2, AD-SPEC `PaymentRequest.required`);
//! - `amount.value` an integer in minor units and `amount.currency` an ISO code (§5.2);
//! - card (`paymentMethod.type = "scheme"`): Luhn-valid `number`, `expiryMonth` `"MM"`,
//!   `expiryYear` `"YYYY"` (strings) not expired, `cvc` 3–4 digits when present (§5.2);
//! - `shopperInteraction` in the enum (Ecommerce, ContAuth, Moto, POS) and `"Moto"` on a keyed
//!   customer-initiated card sale (§5.2; requiring it is the fake's check);
//! - `recurringProcessingModel` in the enum (CardOnFile, Subscription, UnscheduledCardOnFile)
//!   when sent; an MIT (`shopperInteraction = "ContAuth"`) needs it, a non-empty
//!   `paymentMethod.networkPaymentReference`, and no `cvc` (§5.4). PRISM's "brand is mandatory"
//!   is not a vendor statement, so `brand` is not required (lenient);
//! - ACH (`paymentMethod.type = "ach"`, §5.3): `bankAccountNumber`, nine-digit `bankLocationId`
//!   (no checksum: the documented decline trigger 121000348 fails the ABA checksum),
//!   `ownerName`, `bankAccountType` in the enum when sent, USD only. SEC/TEL is
//!   **unconfirmed** (no field in `AchDetails`), so nothing is required for it;
//! - `Idempotency-Key` (§5.5): at most 64 characters; a processed request's answer is replayed
//!   for the same key without re-executing, and the key is echoed in the response header.
//!
//! Answers (§5.6): 200 with `resultCode` `Authorised`/`Refused`, `pspReference` (16 characters),
//! `additionalData.networkTxReference` on approval; 401/403/422/500 `ServiceError{status,
//! errorCode, message, errorType}`. The `errorCode` numbers are Adyen's public ones, not
//! processors.md's. Declines (§5.7): `holderName = "DECLINED"`,
//! `additionalData.RequestedTestAcquirerResponseCode` (2 refused, 6 expired card), ACH routing
//! 121000348.

use std::collections::BTreeMap;

use axum::routing::post;
use serde_json::{json, Value};

use super::{
    dotted, entry, expired, exponent, flatten_json, luhn_ok, month2, year4, Cx, Fake, Idem,
    Incoming, Processor, Reply, Sale,
};

pub const PATH: &str = "/v71/payments";
pub const API_KEY: &str = "AQEfakeAdyenKey0123";
pub const MERCHANT_ACCOUNT: &str = "PayvaultMOTO";
/// ACH routing number that refuses (§5.7).
pub const DECLINE_ROUTING: &str = "121000348";

pub struct Adyen;

/// Starts the fake; the endpoint is `{base_url}/v71/payments`.
pub async fn start() -> Fake {
    Fake::start(Adyen, |r| {
        r.route(PATH, post(entry))
            .route("/v68/payments", post(entry))
    })
    .await
}

fn service_error(status: u16, code: &str, message: &str, kind: &str) -> Reply {
    Reply::json(
        status,
        &json!({"status": status, "errorCode": code, "message": message, "errorType": kind}),
    )
}

fn validation(code: &str, message: &str) -> Reply {
    service_error(422, code, message, "validation")
}

fn required(field: &str) -> Reply {
    validation("702", &format!("Required field '{field}' is not provided."))
}

impl Processor for Adyen {
    fn idempotency(&self) -> Idem {
        Idem::Adyen
    }

    fn fields(&self, req: &Incoming) -> BTreeMap<String, String> {
        serde_json::from_slice::<Value>(&req.body)
            .map(|v| flatten_json(&v))
            .unwrap_or_default()
    }

    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply {
        match check(req, cx) {
            Ok(r) | Err(r) => r,
        }
    }

    fn rejection(&self) -> Reply {
        // §5.6: a 422 `ServiceError` (validation).
        service_error(422, "137", "Invalid amount specified", "validation")
    }

    fn server_error(&self) -> Reply {
        service_error(500, "000", "An internal error occurred", "internal")
    }
}

fn check(req: &Incoming, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
    if req.header("x-api-key") != Some(API_KEY) {
        return Err(service_error(
            401,
            "000",
            "HTTP Status Response - Unauthorized",
            "security",
        ));
    }
    if let Some(key) = req.header("idempotency-key") {
        if key.len() > 64 {
            return Err(validation(
                "704",
                "Idempotency-Key must be at most 64 characters.",
            ));
        }
    }
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(service_error(
            415,
            "000",
            &format!("HTTP Status Response - Unsupported Media Type ({content_type:?}); use application/json"),
            "validation",
        ));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            service_error(
                400,
                "702",
                "Unexpected input: the body is not a JSON object",
                "validation",
            )
        })?;
    let s = |ptr: &str| body.pointer(ptr).and_then(Value::as_str);

    for field in [
        "amount",
        "merchantAccount",
        "paymentMethod",
        "reference",
        "returnUrl",
    ] {
        if body.get(field).is_none_or_null() {
            return Err(required(field));
        }
    }
    if s("/merchantAccount") != Some(MERCHANT_ACCOUNT) {
        return Err(service_error(
            403,
            "901",
            "Invalid Merchant Account",
            "security",
        ));
    }
    let reference = s("/reference").unwrap_or("");
    if reference.chars().count() > 80 {
        return Err(validation(
            "702",
            "Field 'reference' exceeds 80 characters.",
        ));
    }
    let value = body
        .pointer("/amount/value")
        .and_then(Value::as_i64)
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            validation(
                "137",
                "Invalid amount specified: amount.value must be a positive integer in minor units.",
            )
        })?;
    let currency = s("/amount/currency").unwrap_or("");
    if currency.len() != 3 || exponent(currency).is_none() {
        return Err(validation("138", "Unsupported currency specified"));
    }
    let interaction = s("/shopperInteraction");
    if !matches!(
        interaction,
        None | Some("Ecommerce" | "ContAuth" | "Moto" | "POS")
    ) {
        return Err(validation("702", &format!("Invalid shopperInteraction {interaction:?}: expected one of Ecommerce, ContAuth, Moto, POS.")));
    }
    let model = s("/recurringProcessingModel");
    if !matches!(
        model,
        None | Some("CardOnFile" | "Subscription" | "UnscheduledCardOnFile")
    ) {
        return Err(validation("702", &format!("Invalid recurringProcessingModel {model:?}: expected one of CardOnFile, Subscription, UnscheduledCardOnFile.")));
    }
    let mit = interaction == Some("ContAuth");

    let pm = &body["paymentMethod"];
    let pm_s = |k: &str| pm.get(k).and_then(Value::as_str);
    let mut pan = String::new();
    let mut refused: Option<(&str, &str)> = None;
    match pm_s("type") {
        Some("scheme") => {
            pan = pm_s("number")
                .ok_or_else(|| required("paymentMethod.number"))?
                .to_owned();
            if !luhn_ok(&pan) {
                return Err(validation("101", "Invalid card number"));
            }
            let month = pm_s("expiryMonth").ok_or_else(|| required("paymentMethod.expiryMonth"))?;
            let year = pm_s("expiryYear").ok_or_else(|| required("paymentMethod.expiryYear"))?;
            let (Some(month), Some(year)) = (month2(month), year4(year)) else {
                return Err(validation(
                    "129",
                    "Expiry Date Invalid: expiryMonth must be \"MM\" and expiryYear \"YYYY\".",
                ));
            };
            if expired(month, year) {
                return Err(validation(
                    "129",
                    "Expiry Date Invalid: the card has expired.",
                ));
            }
            if let Some(cvc) = pm.get("cvc") {
                let cvc = cvc.as_str().unwrap_or("");
                if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(validation("103", "CVC is not the right length"));
                }
            }
            if mit {
                if model.is_none() {
                    return Err(required("recurringProcessingModel"));
                }
                if pm_s("networkPaymentReference").unwrap_or("").is_empty() {
                    return Err(required("paymentMethod.networkPaymentReference"));
                }
                if pm.get("cvc").is_some() {
                    // The fake's check: §5.4 sends the card without cvc on an MIT.
                    return Err(validation(
                        "702",
                        "paymentMethod.cvc must not be sent with shopperInteraction ContAuth.",
                    ));
                }
            } else if interaction != Some("Moto") {
                return Err(validation("702", "shopperInteraction must be \"Moto\" for a keyed mail/telephone-order sale on the MOTO merchant account (fake's check)."));
            }
            if pm_s("holderName") == Some("DECLINED") {
                refused = Some(("Refused", "2"));
            }
        }
        Some("ach") => {
            let account = pm_s("bankAccountNumber")
                .ok_or_else(|| required("paymentMethod.bankAccountNumber"))?;
            if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(validation("161", "Invalid bank account number"));
            }
            let routing =
                pm_s("bankLocationId").ok_or_else(|| required("paymentMethod.bankLocationId"))?;
            if routing.len() != 9 || !routing.bytes().all(|b| b.is_ascii_digit()) {
                return Err(validation(
                    "162",
                    "Invalid bankLocationId: a routing number has nine digits",
                ));
            }
            if pm_s("ownerName").unwrap_or("").is_empty() {
                return Err(required("paymentMethod.ownerName"));
            }
            let account_type = pm_s("bankAccountType");
            if !matches!(
                account_type,
                None | Some(
                    "balance"
                        | "checking"
                        | "deposit"
                        | "general"
                        | "other"
                        | "payment"
                        | "savings"
                )
            ) {
                return Err(validation(
                    "702",
                    &format!("Invalid bankAccountType {account_type:?}"),
                ));
            }
            if currency != "USD" {
                return Err(validation(
                    "138",
                    "Unsupported currency specified: ACH is USD only",
                ));
            }
            if routing == DECLINE_ROUTING {
                refused = Some(("Refused", "2"));
            }
        }
        other => {
            return Err(validation(
                "702",
                &format!("Unsupported paymentMethod.type {other:?}"),
            ));
        }
    }
    match s("/additionalData/RequestedTestAcquirerResponseCode") {
        Some("2") => refused = Some(("Refused", "2")),
        Some("6") => refused = Some(("Expired Card", "6")),
        _ => {}
    }
    cx.validated = true;
    let n = cx.next_number();
    let psp = format!("{:016}", 7_914_775_000_000_000_u64 + n);
    if cx.echo_pan && !pan.is_empty() {
        return Ok(Reply::json(
            200,
            &json!({"pspReference": psp, "resultCode": "Refused",
            "refusalReason": format!("Refused: card {}", dotted(&pan)), "refusalReasonCode": "2"}),
        ));
    }
    let ntid = format!("{:015}", 500_000_000_000_000_u64 + n);
    cx.sale(Sale {
        id: psp.clone(),
        approved: refused.is_none(),
        amount: value.to_string(),
        network_transaction_id: (refused.is_none() && !pan.is_empty()).then(|| ntid.clone()),
        merchant_initiated: mit,
    });
    if let Some((reason, code)) = refused {
        return Ok(Reply::json(
            200,
            &json!({"pspReference": psp, "resultCode": "Refused",
            "refusalReason": reason, "refusalReasonCode": code, "merchantReference": reference}),
        ));
    }
    let mut additional = json!({"authCode": format!("{:05}", 50_000 + n % 50_000)});
    if !pan.is_empty() {
        additional["networkTxReference"] = json!(ntid);
        additional["cvcResult"] = json!(if pm.get("cvc").is_some() {
            "1 Matches"
        } else {
            "0 Unknown"
        });
    }
    Ok(Reply::json(
        200,
        &json!({
            "pspReference": psp, "resultCode": "Authorised", "merchantReference": reference,
            "amount": {"value": value, "currency": currency}, "additionalData": additional,
        }),
    ))
}

trait NullExt {
    fn is_none_or_null(&self) -> bool;
}

impl NullExt for Option<&Value> {
    fn is_none_or_null(&self) -> bool {
        matches!(self, None | Some(Value::Null))
    }
}

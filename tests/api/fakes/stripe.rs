//! Fake Stripe PaymentIntents API with raw card data (`processors.md` §4).
//!
//! Checks, on `POST /v1/payment_intents` (§4.1):
//! - `Authorization: Bearer <key>` (or HTTP Basic with the key as user, as AM sends) equal to
//!   [`SECRET_KEY`]; missing or wrong is 401 (§4.1, §4.6);
//! - `Content-Type: application/x-www-form-urlencoded` with bracket keys (§4.1);
//! - `amount` a positive integer in minor units, `currency` an ISO code (§4.2);
//! - card (`payment_method_data[type]=card`): Luhn-valid `[card][number]`, `[exp_month]`
//!   1–12 and `[exp_year]` separately and not expired, `[cvc]` 3–4 digits when present (§4.2);
//! - MOTO `payment_method_options[card][moto]=true` on a keyed customer-initiated card sale, only
//!   with `confirm=true` (§4.2; requiring it is the fake's check: Stripe would accept the sale as
//!   e-commerce);
//! - MIT with an external NTID (§4.4): `payment_method_options[card][mit_exemption][network_transaction_id]`
//!   non-empty and no `[cvc]` (the field is gated/**unconfirmed**, so any non-empty NTID passes);
//! - bank (`payment_method_data[type]=us_bank_account`, §4.3): ABA-valid `[routing_number]`,
//!   numeric `[account_number]`, `[account_holder_type]` individual|company, `[account_type]`
//!   checking|savings when sent. Stripe's SEC/TEL request is **unconfirmed**, so nothing is
//!   required for it; the intent answers `processing`;
//! - `Idempotency-Key` (§4.5): at most 255 characters; the first answer (including a 5xx) is
//!   replayed for the same key; different parameters under the key are a 400
//!   `idempotency_error`; a twin while the first is in flight is a 409.
//!
//! Without `confirm=true` the intent is created `requires_confirmation` and nothing is charged,
//! as Stripe does. With `expand[]=latest_charge` (or `expand[0]=`) `latest_charge` is the charge
//! object carrying `payment_method_details.card.network_transaction_id`; otherwise its id (§4.2).
//!
//! Declines (§4.7, HTTP 402 `card_error`): 4000000000000002 generic, 4000000000009995
//! insufficient funds, 4000000000000127 incorrect CVC, 4000000000000069 expired,
//! 4000000000000119 processing error.

use std::collections::BTreeMap;

use axum::routing::post;
use base64::Engine;
use serde_json::{json, Value};

use super::{
    aba_ok, dotted, entry, expired, exponent, luhn_ok, parse_form, Cx, Fake, Idem, Incoming,
    Processor, Reply, Sale,
};

pub const PATH: &str = "/v1/payment_intents";
pub const SECRET_KEY: &str = "sk_test_fake51Hz0pQ";

const CARD: &str = "payment_method_data[card]";
const BANK: &str = "payment_method_data[us_bank_account]";
const NTID: &str = "payment_method_options[card][mit_exemption][network_transaction_id]";

pub struct Stripe;

/// Starts the fake; the endpoint is `{base_url}/v1/payment_intents`.
pub async fn start() -> Fake {
    Fake::start(Stripe, |r| r.route(PATH, post(entry))).await
}

fn error(status: u16, error: Value) -> Reply {
    Reply::json(status, &json!({ "error": error }))
}

fn invalid(param: &str, code: &str, message: &str) -> Reply {
    error(
        400,
        json!({"type": "invalid_request_error", "code": code, "param": param, "message": message}),
    )
}

fn missing(param: &str) -> Reply {
    invalid(
        param,
        "parameter_missing",
        &format!("Missing required param: {param}."),
    )
}

/// 402 `card_error` with a declined intent (§4.6).
fn card_error(code: &str, decline_code: Option<&str>, message: &str, pi: &str, ch: &str) -> Reply {
    let mut e = json!({
        "type": "card_error",
        "code": code,
        "message": message,
        "charge": ch,
        "payment_intent": {"id": pi, "object": "payment_intent", "status": "requires_payment_method"},
    });
    if let Some(d) = decline_code {
        e["decline_code"] = json!(d);
    }
    error(402, e)
}

/// The key a request authenticates with: Bearer, or Basic with the key as user.
fn api_key(req: &Incoming) -> Option<String> {
    let header = req.header("authorization")?;
    if let Some(key) = header.strip_prefix("Bearer ") {
        return Some(key.trim().to_owned());
    }
    let basic = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    Some(decoded.split(':').next().unwrap_or("").to_owned())
}

impl Processor for Stripe {
    fn idempotency(&self) -> Idem {
        Idem::Stripe
    }

    fn fields(&self, req: &Incoming) -> BTreeMap<String, String> {
        parse_form(&req.body)
    }

    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply {
        match check(req, cx) {
            Ok(r) | Err(r) => r,
        }
    }

    fn idempotency_mismatch(&self, key: &str) -> Reply {
        error(
            400,
            json!({"type": "idempotency_error", "message": format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request.")}),
        )
    }

    fn idempotency_in_flight(&self) -> Reply {
        error(
            409,
            json!({"type": "idempotency_error", "code": "idempotency_key_in_use",
                   "message": "There is currently another in-progress request using this Idempotent Key. Please try again later."}),
        )
    }

    fn rejection(&self) -> Reply {
        // §4.6: HTTP 400, an `invalid_request_error`.
        error(
            400,
            json!({"type": "invalid_request_error", "code": "parameter_invalid_integer",
                   "param": "amount", "message": "Invalid integer: 12.5"}),
        )
    }

    fn server_error(&self) -> Reply {
        error(
            500,
            json!({"type": "api_error", "message": "An unknown error occurred. Please try again."}),
        )
    }
}

fn check(req: &Incoming, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
    match api_key(req) {
        None => {
            return Err(error(
                401,
                json!({"type": "invalid_request_error",
            "message": "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."}),
            ))
        }
        Some(k) if k != SECRET_KEY => {
            let tail: String = k
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(error(
                401,
                json!({"type": "invalid_request_error",
                "message": format!("Invalid API Key provided: sk_****{tail}")}),
            ));
        }
        Some(_) => {}
    }
    if let Some(key) = req.header("idempotency-key") {
        if key.len() > 255 {
            return Err(invalid(
                "Idempotency-Key",
                "idempotency_key_too_long",
                "Idempotency keys can be at most 255 characters long.",
            ));
        }
    }
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(invalid(
            "",
            "parameter_missing",
            &format!("Invalid request: Stripe expects form-encoded parameters (application/x-www-form-urlencoded), got {content_type:?}."),
        ));
    }
    let f = parse_form(&req.body);
    let get = |k: &str| f.get(k).map(String::as_str);

    let amount_text = get("amount").ok_or_else(|| missing("amount"))?;
    let amount: i64 = amount_text.parse().ok().filter(|a| *a > 0).ok_or_else(|| {
        invalid(
            "amount",
            "parameter_invalid_integer",
            &format!("Invalid integer: {amount_text}"),
        )
    })?;
    let currency = get("currency").ok_or_else(|| missing("currency"))?;
    if currency.len() != 3 || exponent(currency).is_none() {
        return Err(invalid(
            "currency",
            "parameter_invalid_string",
            &format!("Invalid currency: {currency}."),
        ));
    }
    let confirm = get("confirm") == Some("true");
    let moto = get("payment_method_options[card][moto]");
    if moto.is_some() && !confirm {
        return Err(invalid(
            "payment_method_options[card][moto]",
            "parameter_invalid_string",
            "payment_method_options[card][moto] can only be used with confirm=true.",
        ));
    }
    let ntid = get(NTID);
    let mit = ntid.is_some();

    let kind =
        get("payment_method_data[type]").ok_or_else(|| missing("payment_method_data[type]"))?;
    let n = cx.next_number();
    let pi = format!("pi_fake{n:010}");
    let ch = format!("ch_fake{n:010}");
    let mut pan = String::new();
    match kind {
        "card" => {
            pan = get(&format!("{CARD}[number]"))
                .ok_or_else(|| missing(&format!("{CARD}[number]")))?
                .to_owned();
            if !luhn_ok(&pan) {
                return Err(card_error(
                    "incorrect_number",
                    None,
                    "Your card number is incorrect.",
                    &pi,
                    &ch,
                ));
            }
            let month = get(&format!("{CARD}[exp_month]"))
                .ok_or_else(|| missing(&format!("{CARD}[exp_month]")))?;
            let year = get(&format!("{CARD}[exp_year]"))
                .ok_or_else(|| missing(&format!("{CARD}[exp_year]")))?;
            let month: u32 = month
                .parse()
                .ok()
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(|| {
                    card_error(
                        "invalid_expiry_month",
                        None,
                        "Your card's expiration month is invalid.",
                        &pi,
                        &ch,
                    )
                })?;
            let year: i32 = match year.len() {
                2 => year.parse::<i32>().ok().map(|y| 2000 + y),
                4 => year.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| {
                card_error(
                    "invalid_expiry_year",
                    None,
                    "Your card's expiration year is invalid.",
                    &pi,
                    &ch,
                )
            })?;
            if expired(month, year) {
                return Err(card_error(
                    "invalid_expiry_year",
                    None,
                    "Your card's expiration year is invalid.",
                    &pi,
                    &ch,
                ));
            }
            let cvc = get(&format!("{CARD}[cvc]"));
            if let Some(cvc) = cvc {
                if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(card_error(
                        "invalid_cvc",
                        None,
                        "Your card's security code is invalid.",
                        &pi,
                        &ch,
                    ));
                }
            }
            if mit {
                if ntid == Some("") {
                    return Err(invalid(
                        NTID,
                        "parameter_invalid_empty",
                        &format!("You passed an empty string for '{NTID}'."),
                    ));
                }
                if cvc.is_some() {
                    // The fake's check: §4.4 sends the card again without cvc on an MIT.
                    return Err(invalid(
                        &format!("{CARD}[cvc]"),
                        "parameter_unknown",
                        "A merchant-initiated payment (mit_exemption) must not carry a cvc.",
                    ));
                }
            } else if confirm && moto != Some("true") {
                return Err(invalid(
                    "payment_method_options[card][moto]",
                    "parameter_missing",
                    "A keyed mail/telephone-order sale needs payment_method_options[card][moto]=true (fake's check).",
                ));
            }
        }
        "us_bank_account" => {
            let routing = get(&format!("{BANK}[routing_number]"))
                .ok_or_else(|| missing(&format!("{BANK}[routing_number]")))?;
            if !aba_ok(routing) {
                return Err(invalid(
                    &format!("{BANK}[routing_number]"),
                    "routing_number_invalid",
                    "Invalid routing number.",
                ));
            }
            let account = get(&format!("{BANK}[account_number]"))
                .ok_or_else(|| missing(&format!("{BANK}[account_number]")))?;
            if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    &format!("{BANK}[account_number]"),
                    "account_number_invalid",
                    "Invalid account number.",
                ));
            }
            let holder = get(&format!("{BANK}[account_holder_type]"));
            if !matches!(holder, Some("individual" | "company")) {
                return Err(invalid(
                    &format!("{BANK}[account_holder_type]"),
                    "parameter_invalid_string",
                    "account_holder_type must be one of individual, company.",
                ));
            }
            if !matches!(
                get(&format!("{BANK}[account_type]")),
                None | Some("checking" | "savings")
            ) {
                return Err(invalid(
                    &format!("{BANK}[account_type]"),
                    "parameter_invalid_string",
                    "account_type must be one of checking, savings.",
                ));
            }
        }
        other => {
            return Err(invalid(
                "payment_method_data[type]",
                "parameter_invalid_string",
                &format!("Invalid payment_method_data[type]: {other}"),
            ))
        }
    }
    cx.validated = true;
    let mut intent = json!({
        "id": pi, "object": "payment_intent", "amount": amount, "currency": currency.to_ascii_lowercase(),
        "capture_method": get("capture_method").unwrap_or("automatic"), "confirmation_method": "automatic",
    });
    if let Some(order) = get("metadata[order_id]") {
        intent["metadata"] = json!({"order_id": order});
    }
    if !confirm {
        intent["status"] = json!("requires_confirmation");
        intent["latest_charge"] = Value::Null;
        return Ok(Reply::json(200, &intent));
    }
    if cx.echo_pan && !pan.is_empty() {
        return Ok(card_error(
            "card_declined",
            Some("generic_decline"),
            &format!("Your card {} was declined.", dotted(&pan)),
            &pi,
            &ch,
        ));
    }
    let decline = match pan.as_str() {
        "4000000000000002" => Some((
            "card_declined",
            Some("generic_decline"),
            "Your card was declined.",
        )),
        "4000000000009995" => Some((
            "card_declined",
            Some("insufficient_funds"),
            "Your card has insufficient funds.",
        )),
        "4000000000000127" => Some((
            "incorrect_cvc",
            None,
            "Your card's security code is incorrect.",
        )),
        "4000000000000069" => Some(("expired_card", None, "Your card has expired.")),
        "4000000000000119" => Some((
            "processing_error",
            None,
            "An error occurred while processing your card. Try again in a little bit.",
        )),
        _ => None,
    };
    let network_transaction_id = format!("{:015}", 300_000_000_000_000_u64 + n);
    cx.sale(Sale {
        id: pi.clone(),
        approved: decline.is_none(),
        amount: amount_text.to_owned(),
        network_transaction_id: (decline.is_none() && kind == "card")
            .then(|| network_transaction_id.clone()),
        merchant_initiated: mit,
    });
    if let Some((code, decline_code, message)) = decline {
        return Ok(card_error(code, decline_code, message, &pi, &ch));
    }
    let expanded = f
        .iter()
        .any(|(k, v)| (k == "expand[]" || k.starts_with("expand[")) && v == "latest_charge");
    let (status, details) = if kind == "card" {
        (
            "succeeded",
            json!({"type": "card", "card": {"last4": &pan[pan.len() - 4..], "exp_month": get(&format!("{CARD}[exp_month]")),
                   "network_transaction_id": network_transaction_id}}),
        )
    } else {
        ("processing", json!({"type": "us_bank_account"}))
    };
    intent["status"] = json!(status);
    intent["latest_charge"] = if expanded {
        json!({"id": ch, "object": "charge", "status": if kind == "card" { "succeeded" } else { "pending" },
               "payment_method_details": details})
    } else {
        json!(ch)
    };
    Ok(Reply::json(200, &intent))
}

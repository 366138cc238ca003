//! Fake Checkout.com `/payments` (`processors.md` §6).
//!
//! Checks, on `POST /payments` (§6.1):
//! - `Authorization: Bearer <key>` equal to [`SECRET_KEY`]; otherwise 401 with an empty body
//!   (§6.1; the body of a 401 is not in processors.md);
//! - `Content-Type: application/json` and a JSON object body (§6.1);
//! - `amount` a positive integer in minor units, `currency` an ISO code, `processing_channel_id`
//!   `pc_` + 26 characters (§6.1, §6.2);
//! - card (`source.type = "card"`): Luhn-valid `number`, `expiry_month` 1–12 and `expiry_year`
//!   four digits (integers in the SDK; PRISM sends strings, so numeric strings pass: lenient),
//!   not expired (`card_expired`, §6.6), `cvv` 3–4 digits when present (§6.2);
//! - `payment_type` in the enum (Regular, Recurring, MOTO, Installment, PayLater, Unscheduled),
//!   and `"MOTO"` on a keyed customer-initiated card sale (§6.2; requiring it is the fake's
//!   check). A first phone CIT that stores the card may instead say `Recurring`, `Unscheduled`
//!   or `Installment`: how those combine with MOTO is **unconfirmed** (§6.4), so they pass;
//! - MIT (`merchant_initiated: true`, §6.4): `payment_type` not Regular (Recurring, Unscheduled or
//!   Installment), a non-empty `previous_payment_id`, no `cvv`, and `source.stored: true`
//!   (CKO-COF asks for it on card details stored on the merchant's side);
//! - ACH (`source.type = "ach"`, §6.3): `account_type` savings|checking|cash, `country` US,
//!   `account_number` 4–17 digits, `bank_code` 8–9 digits, `account_holder.type`
//!   individual|corporate. SEC/TEL is **unconfirmed** (no SDK field), so nothing is required;
//! - `Cko-Idempotency-Key` (§6.5): a 2xx answer is replayed for the same key without executing
//!   again; 4xx/5xx answers are not kept, so a retry executes.
//!
//! Answers (§6.6): 201 with `id` (`pay_…`), `action_id`, `approved`, `status`
//! (`Authorized`/`Declined`), `response_code`, `response_summary` and `scheme_id` on approval
//! (the 201/202 split is **unconfirmed**; the fake always answers 201); 422
//! `{"request_id","error_type":"request_invalid","error_codes":[…]}` for invalid requests (error
//! code names other than `card_expired` are Checkout.com's public ones, not processors.md's).
//! Declines (§6.7) by the amount's last two minor digits: 05, 12, 14, 51, 62, 63, 33; 9998.

use std::collections::BTreeMap;

use axum::routing::post;
use serde_json::{json, Value};

use super::{
    aba_ok, dotted, entry, expired, exponent, flatten_json, luhn_ok, str_or_num, Cx, Fake, Idem,
    Incoming, Processor, Reply, Sale,
};

pub const PATH: &str = "/payments";
pub const SECRET_KEY: &str = "sk_sbox_fakecheckout0123456789";
pub const PROCESSING_CHANNEL_ID: &str = "pc_abcdefghijklmnopqrstuvwxyz";

pub struct Checkout;

/// Starts the fake; the endpoint is `{base_url}/payments`.
pub async fn start() -> Fake {
    Fake::start(Checkout, |r| r.route(PATH, post(entry))).await
}

fn invalid(cx: &Cx<'_>, codes: &[&str]) -> Reply {
    Reply::json(
        422,
        &json!({"request_id": format!("req_{:08}", cx.next_number()), "error_type": "request_invalid", "error_codes": codes}),
    )
}

/// The trigger table of §6.7.
fn trigger(minor: i64) -> Option<(&'static str, &'static str)> {
    if minor == 9998 {
        return Some(("20068", "Response received too late / timeout"));
    }
    match minor % 100 {
        5 => Some(("20005", "Declined - Do Not Honour")),
        12 => Some(("20012", "Invalid Payment")),
        14 => Some(("20014", "Invalid Card Number")),
        51 => Some(("20051", "Insufficient Funds")),
        62 => Some(("20062", "Restricted Card")),
        63 => Some(("20063", "Security Violation")),
        33 => Some(("30033", "Expired Card - Pick Up")),
        _ => None,
    }
}

impl Processor for Checkout {
    fn idempotency(&self) -> Idem {
        Idem::Checkout
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
        // §6.6: HTTP 422 `request_invalid` with `error_codes`.
        Reply::json(
            422,
            &json!({"request_id": "req_fake_rejection", "error_type": "request_invalid",
                    "error_codes": ["amount_invalid"]}),
        )
    }

    fn server_error(&self) -> Reply {
        Reply::text(502, "application/json", "")
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn check(req: &Incoming, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
    let expected = format!("Bearer {SECRET_KEY}");
    if req.header("authorization") != Some(expected.as_str()) {
        return Err(Reply::text(401, "application/json", ""));
    }
    let content_type = req.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(invalid(cx, &["request_body_malformed"]));
    }
    let Some(body) = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .filter(Value::is_object)
    else {
        return Err(invalid(cx, &["request_body_malformed"]));
    };
    let s = |ptr: &str| body.pointer(ptr).and_then(Value::as_str);

    let minor = body
        .get("amount")
        .and_then(Value::as_i64)
        .filter(|a| *a > 0)
        .ok_or_else(|| {
            invalid(
                cx,
                &[if body.get("amount").is_some() {
                    "amount_invalid"
                } else {
                    "amount_required"
                }],
            )
        })?;
    let currency = s("/currency").ok_or_else(|| invalid(cx, &["currency_required"]))?;
    if currency.len() != 3 || exponent(currency).is_none() {
        return Err(invalid(cx, &["currency_invalid"]));
    }
    match s("/processing_channel_id") {
        None => return Err(invalid(cx, &["processing_channel_id_required"])),
        Some(pc) if pc != PROCESSING_CHANNEL_ID => {
            return Err(invalid(cx, &["processing_channel_id_invalid"]))
        }
        Some(_) => {}
    }
    let payment_type = s("/payment_type").unwrap_or("Regular");
    if ![
        "Regular",
        "Recurring",
        "MOTO",
        "Installment",
        "PayLater",
        "Unscheduled",
    ]
    .contains(&payment_type)
    {
        return Err(invalid(cx, &["payment_type_invalid"]));
    }
    let mit = body.get("merchant_initiated") == Some(&json!(true));
    if mit {
        if !["Recurring", "Unscheduled", "Installment"].contains(&payment_type) {
            return Err(invalid(cx, &["payment_type_invalid"]));
        }
        if s("/previous_payment_id").unwrap_or("").is_empty() {
            return Err(invalid(cx, &["previous_payment_id_required"]));
        }
    }

    let source = body
        .get("source")
        .ok_or_else(|| invalid(cx, &["source_required"]))?;
    let mut pan = String::new();
    match s("/source/type") {
        Some("card") => {
            pan = s("/source/number").unwrap_or("").to_owned();
            if pan.is_empty() {
                return Err(invalid(cx, &["card_number_required"]));
            }
            if !luhn_ok(&pan) {
                return Err(invalid(cx, &["card_number_invalid"]));
            }
            let month = str_or_num(source.get("expiry_month"))
                .and_then(|m| m.parse::<u32>().ok())
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(|| invalid(cx, &["card_expiry_month_invalid"]))?;
            let year = str_or_num(source.get("expiry_year"))
                .filter(|y| y.len() == 4)
                .and_then(|y| y.parse::<i32>().ok())
                .ok_or_else(|| invalid(cx, &["card_expiry_year_invalid"]))?;
            if expired(month, year) {
                return Err(invalid(cx, &["card_expired"]));
            }
            if let Some(cvv) = source.get("cvv") {
                let cvv = cvv.as_str().unwrap_or("");
                if !(3..=4).contains(&cvv.len()) || !digits(cvv) {
                    return Err(invalid(cx, &["cvv_invalid"]));
                }
            }
            if mit {
                if source.get("cvv").is_some() {
                    // The fake's check: §6.4 sends the card without cvv on an MIT.
                    return Err(invalid(cx, &["cvv_invalid"]));
                }
                if source.get("stored") != Some(&json!(true)) {
                    return Err(invalid(cx, &["source_stored_required"]));
                }
            } else if !["MOTO", "Recurring", "Unscheduled", "Installment"].contains(&payment_type) {
                // Regular or PayLater: a keyed phone sale must not pass as e-commerce.
                return Err(invalid(cx, &["payment_type_invalid"]));
            }
        }
        Some("ach") => {
            if !matches!(
                s("/source/account_type"),
                Some("savings" | "checking" | "cash")
            ) {
                return Err(invalid(cx, &["account_type_invalid"]));
            }
            if s("/source/country") != Some("US") {
                return Err(invalid(cx, &["country_invalid"]));
            }
            let account = s("/source/account_number").unwrap_or("");
            if !(4..=17).contains(&account.len()) || !digits(account) {
                return Err(invalid(cx, &["account_number_invalid"]));
            }
            let bank_code = s("/source/bank_code").unwrap_or("");
            if !(8..=9).contains(&bank_code.len())
                || !digits(bank_code)
                || (bank_code.len() == 9 && !aba_ok(bank_code))
            {
                return Err(invalid(cx, &["bank_code_invalid"]));
            }
            if !matches!(
                s("/source/account_holder/type"),
                Some("individual" | "corporate")
            ) {
                return Err(invalid(cx, &["account_holder_type_invalid"]));
            }
        }
        Some(_) => return Err(invalid(cx, &["source_type_invalid"])),
        None => return Err(invalid(cx, &["source_type_required"])),
    }
    cx.validated = true;
    let n = cx.next_number();
    let id = format!("pay_fake{n:018}");
    let reference = body.get("reference").cloned().unwrap_or(Value::Null);
    if cx.echo_pan && !pan.is_empty() {
        return Ok(Reply::json(
            201,
            &json!({"id": id, "amount": minor, "currency": currency,
            "reference": reference, "approved": false, "status": "Declined", "response_code": "20014",
            "response_summary": format!("Invalid Card Number {}", dotted(&pan))}),
        ));
    }
    let decline = trigger(minor);
    let scheme_id = format!("{:015}", 96_091_887_000_000_u64 + n);
    cx.sale(Sale {
        id: id.clone(),
        approved: decline.is_none(),
        amount: minor.to_string(),
        network_transaction_id: (decline.is_none() && !pan.is_empty()).then(|| scheme_id.clone()),
        merchant_initiated: mit,
    });
    let action_id = format!("act_fake{n:018}");
    Ok(match decline {
        Some((code, summary)) => Reply::json(
            201,
            &json!({"id": id, "action_id": action_id,
            "amount": minor, "currency": currency, "reference": reference, "approved": false,
            "status": "Declined", "response_code": code, "response_summary": summary}),
        ),
        None => {
            let mut ok = json!({"id": id, "action_id": action_id, "amount": minor, "currency": currency,
                "reference": reference, "approved": true, "status": if pan.is_empty() { "Pending" } else { "Authorized" },
                "auth_code": format!("{:06}", 127_000 + n % 800_000),
                "response_code": "10000", "response_summary": "Approved"});
            if !pan.is_empty() {
                ok["scheme_id"] = json!(scheme_id);
            }
            Reply::json(201, &ok)
        }
    })
}

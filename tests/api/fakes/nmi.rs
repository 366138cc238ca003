//! Fake NMI Payment API (`processors.md` §3).
//!
//! Checks, on `POST /api/transact.php` (§3.1):
//! - `Content-Type: application/x-www-form-urlencoded` (charset parameter allowed) (§3.1);
//! - `security_key` form field equal to [`SECURITY_KEY`] (§3.1);
//! - `type` `sale` or `auth` (§3.2);
//! - `amount` `x.xx` major units, no more decimals than the `currency` exponent (§3.2);
//! - card (`payment=creditcard`, the default): Luhn-valid `ccnumber`, `ccexp` `MMYY` not
//!   expired, `cvv` 3–4 digits when present (§3.2);
//! - check (`payment=check`, §3.3): `checkname`, ABA-valid `checkaba`, numeric `checkaccount`,
//!   `account_holder_type` business|personal, `account_type` checking|savings, `sec_code`
//!   in PPD|WEB|TEL|CCD and, as the fake's own check, `TEL` (payvault's ACH is by phone);
//! - stored credentials (§3.4): `initiated_by` customer|merchant, `stored_credential_indicator`
//!   stored|used, `billing_method` recurring|installment; on an MIT (`initiated_by=merchant`)
//!   `stored_credential_indicator=used`, an `initial_transaction_id` that is one of this fake's
//!   own `transactionid`s (NMI's anchor is its own id, §3.4), the same `billing_method` as the
//!   initial transaction when that one stored the credential (§3.4 scope rule), and no `cvv`;
//! - duplicates (§3.5): with `dup_seconds` > 0, a second sale of the same card/account and
//!   amount inside the window answers `response=3&response_code=300` "Duplicate transaction".
//!   NMI's default window is not in processors.md, so without `dup_seconds` the fake does not
//!   check (lenient).
//!
//! MOTO marking: **unconfirmed** in processors.md (§3.2), so the fake requires none and accepts
//! (and records) an `industry` field.
//!
//! `POST /api/query.php` (§3.5 recovery; NMI's Query API documentation): form fields
//! `security_key` (a wrong one answers `<nm_response><error_response>…</error_response>`), and
//! the filters `order_id` and `transaction_id`, at least one of them (the real API lists
//! everything without a filter; the fake refuses so that an unfiltered lookup fails a test).
//! The answer is `text/xml`: `<nm_response>` holding one `<transaction>` per match (none when
//! nothing matches), each with `transaction_id`, `transaction_type` (`cc`/`ck`), `condition`
//! (`pendingsettlement` for an approved sale, `failed` for a declined one), `order_id`,
//! `authorization_code`, `cc_number` (masked as NMI masks it, `4xxxxxxxxxxx1111`), `currency`,
//! and an `<action>` with `amount`, `action_type` `sale`, `date`, `success` 1/0,
//! `response_text` and `response_code`, as the sale answered. NMI's other transaction fields
//! (name, address, AVS, batch ids...) are left out.
//!
//! Answers (§3.6): HTTP 200 with a query-string body: `response` 1/2/3, `responsetext`,
//! `authcode`, `transactionid`, `avsresponse`, `cvvresponse`, `orderid`, `type`,
//! `response_code` (100 approved, 200 decline, 223 expired card, 300 gateway reject).
//! Declines (§3.7): amount below 1.00.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::routing::post;

use super::{
    aba_ok, dotted, entry, expired, exponent, luhn_ok, major_to_minor, mask_pan, month2,
    parse_form, Cx, Fake, Incoming, Processor, Reply, Sale,
};

pub const TRANSACT_PATH: &str = "/api/transact.php";
pub const QUERY_PATH: &str = "/api/query.php";
pub const SECURITY_KEY: &str = "fake-nmi-security-key";
/// Sandbox ACH account and routing number (§3.3).
pub const TEST_ACCOUNT: &str = "24413815";
pub const TEST_ROUTING: &str = "490000018";

struct Txn {
    id: String,
    order_id: String,
    amount: String,
    currency: String,
    approved: bool,
    /// `cc` or `ck`, and the masked card (`4xxxxxxxxxxx1111`) or account.
    kind: &'static str,
    masked: String,
    authcode: String,
    when: String,
    /// Card BIN+last4 or account last4 plus amount, for the duplicate check (no PAN kept).
    dup_key: String,
    at: Instant,
    stored_billing_method: Option<Option<String>>,
}

#[derive(Default)]
pub struct Nmi {
    txns: Mutex<Vec<Txn>>,
}

/// Starts the fake; endpoints `{base_url}/api/transact.php` and `{base_url}/api/query.php`.
pub async fn start() -> Fake {
    Fake::start(Nmi::default(), |r| {
        r.route(TRANSACT_PATH, post(entry))
            .route(QUERY_PATH, post(entry))
    })
    .await
}

fn answer(pairs: &[(&str, &str)]) -> Reply {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Reply::text(200, "text/html; charset=UTF-8", s.finish())
}

/// `response=3`: a gateway reject naming the problem (§3.5, §3.6).
fn reject(text: &str, order_id: &str) -> Reply {
    answer(&[
        ("response", "3"),
        ("responsetext", text),
        ("authcode", ""),
        ("transactionid", ""),
        ("avsresponse", ""),
        ("cvvresponse", ""),
        ("orderid", order_id),
        ("type", ""),
        ("response_code", "300"),
    ])
}

impl Processor for Nmi {
    fn fields(&self, req: &Incoming) -> BTreeMap<String, String> {
        parse_form(&req.body)
    }

    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply {
        let content_type = req.header("content-type").unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            // The gateway reads only form fields; another encoding reaches it without a key.
            return reject("Authentication Failed", "");
        }
        let form = parse_form(&req.body);
        if form.get("security_key").map(String::as_str) != Some(SECURITY_KEY) {
            return if req.path == QUERY_PATH {
                xml("<error_response>Authentication Failed</error_response>")
            } else {
                reject("Authentication Failed", "")
            };
        }
        if req.path == QUERY_PATH {
            return self.query(&form);
        }
        match self.sale(&form, cx) {
            Ok(r) | Err(r) => r,
        }
    }

    fn rejection(&self) -> Reply {
        // §3.6: response=3, response_code 300: rejected by the gateway.
        reject("Invalid amount REFID:3159327751", "")
    }

    fn server_error(&self) -> Reply {
        Reply::text(
            500,
            "text/html",
            "<html><body>500 Internal Server Error</body></html>",
        )
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn xml(inner: &str) -> Reply {
    Reply::text(
        200,
        "text/xml; charset=UTF-8",
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<nm_response>{inner}</nm_response>"),
    )
}

impl Nmi {
    fn query(&self, form: &BTreeMap<String, String>) -> Reply {
        let order_id = form.get("order_id");
        let transaction_id = form.get("transaction_id");
        if order_id.is_none() && transaction_id.is_none() {
            return xml("<error_response>order_id or transaction_id is required</error_response>");
        }
        let txns = self.txns.lock().unwrap();
        let found: String = txns
            .iter()
            .filter(|t| order_id.is_none_or(|o| *o == t.order_id))
            .filter(|t| transaction_id.is_none_or(|i| *i == t.id))
            .map(|t| {
                let (condition, success, text, code) = if t.approved {
                    ("pendingsettlement", "1", "SUCCESS", "100")
                } else {
                    ("failed", "0", "DECLINE", "200")
                };
                format!(
                    "<transaction><transaction_id>{id}</transaction_id>\
                     <transaction_type>{kind}</transaction_type><condition>{condition}</condition>\
                     <order_id>{order}</order_id><authorization_code>{auth}</authorization_code>\
                     <cc_number>{masked}</cc_number><currency>{currency}</currency>\
                     <action><amount>{amount}</amount><action_type>sale</action_type>\
                     <date>{when}</date><success>{success}</success><source>api</source>\
                     <response_text>{text}</response_text><response_code>{code}</response_code>\
                     </action></transaction>",
                    id = t.id,
                    kind = t.kind,
                    order = xml_escape(&t.order_id),
                    auth = t.authcode,
                    masked = t.masked,
                    currency = xml_escape(&t.currency),
                    amount = xml_escape(&t.amount),
                    when = t.when,
                )
            })
            .collect();
        xml(&found)
    }

    fn sale(&self, f: &BTreeMap<String, String>, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let order_id = get("orderid");
        let kind = get("type");
        if kind != "sale" && kind != "auth" {
            return Err(reject(
                &format!("Invalid Transaction Type {kind:?} REFID:1"),
                order_id,
            ));
        }
        let currency = f.get("currency").map(String::as_str).unwrap_or("USD");
        let exp = exponent(currency)
            .ok_or_else(|| reject(&format!("Invalid currency {currency:?}"), order_id))?;
        let amount = get("amount");
        let minor = major_to_minor(amount, exp)
            .map_err(|e| reject(&format!("Invalid amount: {e}"), order_id))?;

        let initiated_by = f.get("initiated_by").map(String::as_str);
        let indicator = f.get("stored_credential_indicator").map(String::as_str);
        let billing_method = f.get("billing_method").cloned();
        if !matches!(initiated_by, None | Some("customer" | "merchant")) {
            return Err(reject(
                "initiated_by must be customer or merchant",
                order_id,
            ));
        }
        if !matches!(indicator, None | Some("stored" | "used")) {
            return Err(reject(
                "stored_credential_indicator must be stored or used",
                order_id,
            ));
        }
        if !matches!(
            billing_method.as_deref(),
            None | Some("recurring" | "installment")
        ) {
            return Err(reject(
                "billing_method must be recurring or installment",
                order_id,
            ));
        }
        let mit = initiated_by == Some("merchant");
        if mit {
            if indicator != Some("used") {
                return Err(reject(
                    "stored_credential_indicator=used is required when initiated_by=merchant",
                    order_id,
                ));
            }
            let initial = get("initial_transaction_id");
            let txns = self.txns.lock().unwrap();
            let Some(first) = txns.iter().find(|t| t.id == initial) else {
                return Err(reject(
                    &format!(
                        "initial_transaction_id {initial:?} is not a transaction of this gateway"
                    ),
                    order_id,
                ));
            };
            if let Some(stored_with) = &first.stored_billing_method {
                if *stored_with != billing_method {
                    return Err(reject(
                        "initial_transaction_id belongs to a different billing_method (recurring/installment/unscheduled)",
                        order_id,
                    ));
                }
            }
            if f.contains_key("cvv") {
                // Not an NMI rule in processors.md; the fake rejects CVV on an MIT so a profile
                // that sends one fails (§3.4 MIT example carries none).
                return Err(reject(
                    "cvv must not be sent on a merchant-initiated transaction",
                    order_id,
                ));
            }
        } else if f.contains_key("initial_transaction_id") {
            return Err(reject(
                "initial_transaction_id is only sent on merchant-initiated transactions",
                order_id,
            ));
        }

        let payment = f.get("payment").map(String::as_str).unwrap_or("creditcard");
        let (dup_key, pan) = match payment {
            "creditcard" => {
                let pan = get("ccnumber");
                if !luhn_ok(pan) {
                    return Err(reject("Invalid Credit Card Number REFID:1", order_id));
                }
                let ccexp = get("ccexp");
                let valid = ccexp.len() == 4 && ccexp.bytes().all(|b| b.is_ascii_digit());
                let month = valid.then(|| month2(&ccexp[..2])).flatten();
                let Some(month) = month else {
                    return Err(reject(
                        &format!("Invalid Credit Card Expiration Date {ccexp:?}, expected MMYY"),
                        order_id,
                    ));
                };
                let year = 2000 + ccexp[2..].parse::<i32>().unwrap_or(0);
                if expired(month, year) {
                    return Err(answer(&[
                        ("response", "2"),
                        ("responsetext", "Expired card"),
                        ("authcode", ""),
                        ("transactionid", ""),
                        ("avsresponse", ""),
                        ("cvvresponse", ""),
                        ("orderid", order_id),
                        ("type", kind),
                        ("response_code", "223"),
                    ]));
                }
                if let Some(cvv) = f.get("cvv") {
                    if !(3..=4).contains(&cvv.len()) || !cvv.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(reject("Invalid CVV", order_id));
                    }
                }
                (format!("{}|{minor}", mask_pan(pan)), pan.to_owned())
            }
            "check" => {
                if get("checkname").is_empty() {
                    return Err(reject("checkname is required", order_id));
                }
                if !aba_ok(get("checkaba")) {
                    return Err(reject("Invalid ABA number", order_id));
                }
                let account = get("checkaccount");
                if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(reject("Invalid checking account number", order_id));
                }
                if !matches!(get("account_holder_type"), "business" | "personal") {
                    return Err(reject(
                        "account_holder_type must be business or personal",
                        order_id,
                    ));
                }
                if !matches!(get("account_type"), "checking" | "savings") {
                    return Err(reject("account_type must be checking or savings", order_id));
                }
                match get("sec_code") {
                    "TEL" => {}
                    "PPD" | "WEB" | "CCD" => {
                        return Err(reject(
                            "sec_code must be TEL for an ACH debit by phone (fake's check)",
                            order_id,
                        ))
                    }
                    other => return Err(reject(&format!("Invalid SEC code {other:?}"), order_id)),
                }
                let tail = &account[account.len().saturating_sub(4)..];
                (
                    format!("ach…{tail}|{}|{minor}", get("checkaba")),
                    String::new(),
                )
            }
            other => return Err(reject(&format!("Invalid payment type {other:?}"), order_id)),
        };
        cx.validated = true;

        if let Some(window) = f.get("dup_seconds") {
            let window: u64 = window
                .parse()
                .ok()
                .filter(|w| *w <= 7_862_400)
                .ok_or_else(|| reject("dup_seconds must be 0 to 7862400", order_id))?;
            let txns = self.txns.lock().unwrap();
            if let Some(first) = txns.iter().rev().find(|t| t.dup_key == dup_key) {
                if window > 0 && first.at.elapsed() < Duration::from_secs(window) {
                    return Ok(reject(
                        &format!("Duplicate transaction REFID:{}", first.id),
                        order_id,
                    ));
                }
            }
        }

        if cx.echo_pan && !pan.is_empty() {
            return Ok(answer(&[
                ("response", "2"),
                ("responsetext", &format!("DECLINE card {}", dotted(&pan))),
                ("authcode", ""),
                ("transactionid", ""),
                ("avsresponse", "N"),
                ("cvvresponse", "N"),
                ("orderid", order_id),
                ("type", kind),
                ("response_code", "200"),
            ]));
        }

        let n = cx.next_number();
        let id = format!("{}", 2_762_700_000_u64 + n);
        let approved = minor >= 10_i64.pow(exp);
        let authcode = format!("{:06}", 100_000 + n);
        let (kind, masked) = if pan.is_empty() {
            let account = get("checkaccount");
            (
                "ck",
                format!("xxxx{}", &account[account.len().saturating_sub(4)..]),
            )
        } else {
            (
                "cc",
                format!(
                    "{}{}{}",
                    &pan[..1],
                    "x".repeat(pan.len() - 5),
                    &pan[pan.len() - 4..]
                ),
            )
        };
        self.txns.lock().unwrap().push(Txn {
            id: id.clone(),
            order_id: order_id.to_owned(),
            amount: amount.to_owned(),
            currency: currency.to_owned(),
            approved,
            kind,
            masked,
            authcode: if approved {
                authcode.clone()
            } else {
                String::new()
            },
            when: chrono::Utc::now().format("%Y%m%d%H%M%S").to_string(),
            dup_key,
            at: Instant::now(),
            stored_billing_method: (indicator == Some("stored")).then(|| billing_method.clone()),
        });
        cx.sale(Sale {
            id: id.clone(),
            approved,
            amount: amount.to_owned(),
            network_transaction_id: None,
            merchant_initiated: mit,
        });
        let cvvresponse = if f.contains_key("cvv") { "M" } else { "" };
        Ok(if approved {
            answer(&[
                ("response", "1"),
                ("responsetext", "SUCCESS"),
                ("authcode", &authcode),
                ("transactionid", &id),
                ("avsresponse", "N"),
                ("cvvresponse", cvvresponse),
                ("orderid", order_id),
                ("type", ""),
                ("response_code", "100"),
            ])
        } else {
            answer(&[
                ("response", "2"),
                ("responsetext", "DECLINE"),
                ("authcode", ""),
                ("transactionid", &id),
                ("avsresponse", "N"),
                ("cvvresponse", cvvresponse),
                ("orderid", order_id),
                ("type", ""),
                ("response_code", "200"),
            ])
        })
    }
}

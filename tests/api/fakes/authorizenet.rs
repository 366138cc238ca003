//! Fake Authorize.net JSON API (`processors.md` §2).
//!
//! Checks, on `POST /xml/v1/request.api` (§2.1):
//! - `Content-Type: application/json` (charset parameter allowed) and a JSON body with a
//!   `createTransactionRequest` envelope (§2.1);
//! - `merchantAuthentication{name,transactionKey}` present and matching [`LOGIN`] /
//!   [`TRANSACTION_KEY`] (§2.1);
//! - element order, which Authorize.net enforces because the JSON is translated to XML (§2.2
//!   "Element order", §8): the envelope, `transactionRequest`, `merchantAuthentication`,
//!   `creditCard`, `bankAccount`, `order`, `billTo`, `processingOptions` and
//!   `subsequentAuthInformation`; a misplaced or unknown element is `E00003`;
//! - `refId` and `order.invoiceNumber` at most 20 characters, `nameOnAccount` at most 22 (§8);
//! - `transactionType` `authCaptureTransaction` (or `authOnlyTransaction`) (§2.2);
//! - `amount` a major-unit decimal (string or number) with no more decimals than the currency's
//!   exponent (§2.2; `currencyCode` optional, USD when absent);
//! - card: Luhn-valid `cardNumber`, `expirationDate` in one of the three documented formats
//!   (`YYYY-MM`, `MMYY`, `MM/YYYY`, §2.2) and not expired, `cardCode` 3–4 digits when present;
//! - MOTO marking `retail.marketType = "1"` on a keyed customer-initiated card sale (§2.2);
//! - eCheck: `accountType` in the schema enum, ABA-valid `routingNumber`, numeric
//!   `accountNumber`, `echeckType = "TEL"` (§2.3);
//! - MIT (`processingOptions.isSubsequentAuth` true): `subsequentAuthInformation.originalNetworkTransId`
//!   present, no `cardCode`, `reason` in the schema enum when sent (§2.4);
//! - duplicate window (§2.5): a second identical sale within `duplicateWindow` (default 120 s)
//!   answers reason 11, carrying the original transaction's id, auth code, AVS and CVV results
//!   when `duplicateWindow` was sent explicitly.
//!
//! Answers (§2.6): HTTP 200 always, body prefixed with a UTF-8 BOM (as the real API may),
//! `messages.resultCode` Ok/Error, `transactionResponse.responseCode` 1/2/3, `transId`,
//! `networkTransId`. Declines (§2.7): `billTo.zip = 46282` (third-party trigger, kept because
//! the document lists it) and eCheck amounts over 100.00.
//!
//! Two checks are the fake's, not Authorize.net's: the MOTO and TEL markings. The real API
//! accepts a sale without them and classifies it differently; payvault only sends MOTO/TEL
//! sales, so a profile that forgets them must fail its tests.
//!
//! Reason codes 5, 6, 7, 8, 9, 10, 78 and `E00007` come from Authorize.net's public response-code
//! list rather than processors.md, which names only 2, 6, 11, 13, `E00003`, `E00027`, `I00001`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::routing::post;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

use super::{
    aba_ok, dotted, entry, expired, exponent, flatten_json, luhn_ok, major_to_minor, str_or_num,
    Cx, Fake, Incoming, Processor, Reply, Sale,
};

pub const PATH: &str = "/xml/v1/request.api";
pub const LOGIN: &str = "fake-an-login";
pub const TRANSACTION_KEY: &str = "fake-an-transaction-key";

const BOM: &[u8] = b"\xEF\xBB\xBF";
const NS: &str = "AnetApi/xml/v1/schema/AnetApiSchema.xsd";

const ENVELOPE_ORDER: &[&str] = &[
    "merchantAuthentication",
    "clientId",
    "refId",
    "transactionRequest",
];
const AUTH_ORDER: &[&str] = &[
    "name",
    "transactionKey",
    "sessionToken",
    "password",
    "impersonationAuthentication",
    "fingerPrint",
    "clientKey",
    "accessToken",
    "mobileDeviceId",
];
const TXN_ORDER: &[&str] = &[
    "transactionType",
    "amount",
    "currencyCode",
    "payment",
    "profile",
    "solution",
    "callId",
    "terminalNumber",
    "authCode",
    "refTransId",
    "splitTenderId",
    "order",
    "lineItems",
    "tax",
    "duty",
    "shipping",
    "taxExempt",
    "poNumber",
    "customer",
    "billTo",
    "shipTo",
    "customerIP",
    "cardholderAuthentication",
    "retail",
    "employeeId",
    "transactionSettings",
    "userFields",
    "surcharge",
    "merchantDescriptor",
    "subMerchant",
    "tip",
    "processingOptions",
    "subsequentAuthInformation",
    "otherTax",
    "shipFrom",
    "authorizationIndicatorType",
];
const CARD_ORDER: &[&str] = &[
    "cardNumber",
    "expirationDate",
    "cardCode",
    "isPaymentToken",
    "cryptogram",
    "tokenRequestorName",
    "tokenRequestorId",
    "tokenRequestorEci",
];
const BANK_ORDER: &[&str] = &[
    "accountType",
    "routingNumber",
    "accountNumber",
    "nameOnAccount",
    "echeckType",
    "bankName",
    "checkNumber",
];
const ORDER_ORDER: &[&str] = &["invoiceNumber", "description"];
const BILL_TO_ORDER: &[&str] = &[
    "firstName",
    "lastName",
    "company",
    "address",
    "city",
    "state",
    "zip",
    "country",
    "phoneNumber",
    "faxNumber",
    "email",
];
const PROCESSING_ORDER: &[&str] = &[
    "isFirstRecurringPayment",
    "isFirstSubsequentAuth",
    "isSubsequentAuth",
    "isStoredCredentials",
];
const SUBSEQUENT_ORDER: &[&str] = &["originalNetworkTransId", "originalAuthAmount", "reason"];

/// Approving sandbox cards (§2.7); other Luhn-valid cards approve too (the sandbox's answer for
/// them is unconfirmed).
pub const TEST_CARDS: &[&str] = &[
    "4007000000027",
    "4012888818888",
    "4111111111111111",
    "5424000000000015",
    "2223000010309703",
    "370000000000002",
    "6011000000000012",
];
/// `billTo.zip` that declines (§2.7, ZIPTRIG).
pub const DECLINE_ZIP: &str = "46282";

struct Executed {
    at: Instant,
    trans_id: String,
    auth_code: String,
    approved: bool,
    cvv: bool,
}

#[derive(Default)]
pub struct AuthorizeNet {
    executed: Mutex<HashMap<String, Executed>>,
}

/// Starts the fake; the endpoint is `{base_url}/xml/v1/request.api`.
pub async fn start() -> Fake {
    Fake::start(AuthorizeNet::default(), |r| r.route(PATH, post(entry))).await
}

/// A JSON value that keeps object member order, for the element-order check.
enum Node {
    Leaf,
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Node>()? {
                    members.push((k, v));
                }
                Ok(Node::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl Node {
    fn child(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// E00003 text for an element out of schema order or unknown, as the XML validator words it.
fn check_order(parent: &str, node: Option<&Node>, schema: &[&str]) -> Result<(), String> {
    let Some(Node::Object(members)) = node else {
        return Ok(());
    };
    let mut at = 0;
    for (key, _) in members {
        match schema.iter().position(|s| s == key) {
            Some(p) if p >= at => at = p,
            _ => {
                return Err(format!(
                    "The element '{parent}' in namespace '{NS}' has invalid child element '{key}' in namespace '{NS}'. List of possible elements expected: '{}' in namespace '{NS}'.",
                    schema[at..].join(", ")
                ))
            }
        }
    }
    Ok(())
}

fn check_all_orders(root: &Node) -> Result<(), String> {
    let env = root.child("createTransactionRequest");
    check_order("createTransactionRequest", env, ENVELOPE_ORDER)?;
    let env = env.expect("checked by caller");
    check_order(
        "merchantAuthentication",
        env.child("merchantAuthentication"),
        AUTH_ORDER,
    )?;
    let txn = env.child("transactionRequest");
    check_order("transactionRequest", txn, TXN_ORDER)?;
    let Some(txn) = txn else { return Ok(()) };
    let payment = txn.child("payment");
    check_order(
        "creditCard",
        payment.and_then(|p| p.child("creditCard")),
        CARD_ORDER,
    )?;
    check_order(
        "bankAccount",
        payment.and_then(|p| p.child("bankAccount")),
        BANK_ORDER,
    )?;
    check_order("order", txn.child("order"), ORDER_ORDER)?;
    check_order("billTo", txn.child("billTo"), BILL_TO_ORDER)?;
    check_order(
        "processingOptions",
        txn.child("processingOptions"),
        PROCESSING_ORDER,
    )?;
    check_order(
        "subsequentAuthInformation",
        txn.child("subsequentAuthInformation"),
        SUBSEQUENT_ORDER,
    )
}

fn with_bom(body: &Value) -> Reply {
    let mut bytes = BOM.to_vec();
    bytes.extend(serde_json::to_vec(body).expect("json"));
    Reply::text(200, "application/json; charset=utf-8", bytes)
}

/// An API-level error: no `transactionResponse`, `messages.resultCode = Error` (§2.6).
fn api_error(ref_id: &Value, code: &str, text: &str) -> Reply {
    with_bom(&json!({
        "refId": ref_id,
        "messages": {"resultCode": "Error", "message": [{"code": code, "text": text}]},
    }))
}

/// A transaction-level error or decline: responseCode 2/3 with `errors[]` (§2.6).
fn txn_error(ref_id: &Value, response_code: &str, code: &str, text: &str, extra: Value) -> Reply {
    let mut tr = json!({
        "responseCode": response_code,
        "authCode": "",
        "avsResultCode": "P",
        "cvvResultCode": "",
        "transId": "0",
        "errors": [{"errorCode": code, "errorText": text}],
    });
    if let (Value::Object(tr), Value::Object(extra)) = (&mut tr, extra) {
        tr.extend(extra);
    }
    with_bom(&json!({
        "transactionResponse": tr,
        "refId": ref_id,
        "messages": {"resultCode": "Error", "message": [{"code": "E00027", "text": "The transaction was unsuccessful."}]},
    }))
}

fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "true")
}

/// `YYYY-MM`, `MMYY` or `MM/YYYY` (§2.2) as (month, 4-digit year).
fn parse_expiry(s: &str) -> Option<(u32, i32)> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| s[r].bytes().all(|c| c.is_ascii_digit());
    let (m, y) = match b.len() {
        7 if b[4] == b'-' && digits(0..4) && digits(5..7) => (&s[5..7], s[0..4].parse().ok()?),
        7 if b[2] == b'/' && digits(0..2) && digits(3..7) => (&s[0..2], s[3..7].parse().ok()?),
        4 if digits(0..4) => (&s[0..2], 2000 + s[2..4].parse::<i32>().ok()?),
        _ => return None,
    };
    Some((super::month2(m)?, y))
}

impl Processor for AuthorizeNet {
    fn fields(&self, req: &Incoming) -> BTreeMap<String, String> {
        serde_json::from_slice::<Value>(&req.body)
            .map(|v| flatten_json(&v))
            .unwrap_or_default()
    }

    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply {
        match self.check(req, cx) {
            Ok(reply) | Err(reply) => reply,
        }
    }

    fn rejection(&self) -> Reply {
        // §2.6: HTTP 200, an API-level error without a transactionResponse (the request does
        // not validate against the XSD).
        api_error(
            &Value::Null,
            "E00003",
            "The 'AnetApi/xml/v1/schema/AnetApiSchema.xsd:amount' element is invalid - The value '' is invalid according to its datatype 'Decimal'.",
        )
    }

    fn server_error(&self) -> Reply {
        // Outage answers are not in processors.md (§2.6: non-2xx "unconfirmed"); a plain 503.
        Reply::text(
            503,
            "text/html",
            "<html><body>Service Unavailable</body></html>",
        )
    }
}

impl AuthorizeNet {
    fn check(&self, req: &Incoming, cx: &mut Cx<'_>) -> Result<Reply, Reply> {
        let null = Value::Null;
        let content_type = req.header("content-type").unwrap_or("");
        if !content_type.starts_with("application/json") {
            // The real answer to another content type is unconfirmed; E00003 names it.
            return Err(api_error(
                &null,
                "E00003",
                &format!("Content-Type {content_type:?} is not supported; use application/json."),
            ));
        }
        let body = req.body.strip_prefix(BOM).unwrap_or(&req.body);
        let (Ok(root), Ok(value)) = (
            serde_json::from_slice::<Node>(body),
            serde_json::from_slice::<Value>(body),
        ) else {
            return Err(api_error(
                &null,
                "E00003",
                "The request body is not valid JSON.",
            ));
        };
        let Some(env) = value.get("createTransactionRequest") else {
            return Err(api_error(
                &null,
                "E00003",
                "The root element 'createTransactionRequest' is missing.",
            ));
        };
        let ref_id = env.get("refId").cloned().unwrap_or(Value::Null);
        check_all_orders(&root).map_err(|e| api_error(&ref_id, "E00003", &e))?;
        if let Some(Value::String(r)) = env.get("refId") {
            if r.chars().count() > 20 {
                return Err(api_error(&ref_id, "E00003", "The 'AnetApi/xml/v1/schema/AnetApiSchema.xsd:refId' element is invalid - The value is invalid according to its datatype - The actual length is greater than the MaxLength value."));
            }
        }

        // Authentication (§2.1).
        let auth = env.get("merchantAuthentication");
        let name = auth.and_then(|a| a.get("name")).and_then(Value::as_str);
        let key = auth
            .and_then(|a| a.get("transactionKey"))
            .and_then(Value::as_str);
        match (name, key) {
            (None, _) | (_, None) => {
                return Err(api_error(
                    &ref_id,
                    "E00003",
                    "The element 'merchantAuthentication' is missing or incomplete: 'name' and 'transactionKey' are required.",
                ))
            }
            (Some(n), Some(k)) if n != LOGIN || k != TRANSACTION_KEY => {
                return Err(api_error(
                    &ref_id,
                    "E00007",
                    "User authentication failed due to invalid authentication values.",
                ))
            }
            _ => {}
        }

        let Some(txn) = env.get("transactionRequest") else {
            return Err(api_error(
                &ref_id,
                "E00003",
                "The element 'createTransactionRequest' has incomplete content. List of possible elements expected: 'transactionRequest'.",
            ));
        };
        match txn.get("transactionType").and_then(Value::as_str) {
            Some("authCaptureTransaction" | "authOnlyTransaction") => {}
            other => {
                return Err(api_error(
                    &ref_id,
                    "E00003",
                    &format!("The 'transactionType' element is invalid - The value {other:?} is invalid according to its datatype 'TransactionTypeEnum'."),
                ))
            }
        }
        let currency = txn
            .get("currencyCode")
            .and_then(Value::as_str)
            .unwrap_or("USD");
        let Some(exp) = exponent(currency) else {
            return Err(txn_error(
                &ref_id,
                "3",
                "39",
                "The supplied currency code is either invalid, not supported, not allowed for this merchant or doesn't have an exchange rate.",
                json!({}),
            ));
        };
        let amount = str_or_num(txn.get("amount")).unwrap_or_default();
        let minor = major_to_minor(&amount, exp)
            .map_err(|_| txn_error(&ref_id, "3", "5", "A valid amount is required.", json!({})))?;
        if let Some(Value::String(inv)) = txn.pointer("/order/invoiceNumber") {
            if inv.chars().count() > 20 {
                return Err(api_error(&ref_id, "E00003", "The 'AnetApi/xml/v1/schema/AnetApiSchema.xsd:invoiceNumber' element is invalid - The actual length is greater than the MaxLength value."));
            }
        }

        let mit = truthy(txn.pointer("/processingOptions/isSubsequentAuth"));
        let card = txn.pointer("/payment/creditCard");
        let bank = txn.pointer("/payment/bankAccount");
        let masked: String;
        let mut pan = String::new();
        let mut cvv = false;
        match (card, bank) {
            (Some(card), None) => {
                pan = card
                    .get("cardNumber")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if !luhn_ok(&pan) {
                    return Err(txn_error(
                        &ref_id,
                        "3",
                        "6",
                        "The credit card number is invalid.",
                        json!({}),
                    ));
                }
                masked = format!("XXXX{}", &pan[pan.len() - 4..]);
                let expiry = card
                    .get("expirationDate")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some((m, y)) = parse_expiry(expiry) else {
                    return Err(txn_error(
                        &ref_id,
                        "3",
                        "7",
                        "Credit card expiration date is invalid.",
                        json!({"accountNumber": masked}),
                    ));
                };
                if expired(m, y) {
                    return Err(txn_error(
                        &ref_id,
                        "3",
                        "8",
                        "The credit card has expired.",
                        json!({"accountNumber": masked}),
                    ));
                }
                if let Some(code) = card.get("cardCode") {
                    let code = code.as_str().unwrap_or("");
                    if mit {
                        // §2.4: an MIT carries the card without cardCode. Whether Authorize.net
                        // rejects one is unconfirmed; the fake rejects so a profile that leaks
                        // the CVV into an MIT fails.
                        return Err(api_error(
                            &ref_id,
                            "E00003",
                            "cardCode must not be sent on a merchant-initiated (isSubsequentAuth) transaction.",
                        ));
                    }
                    if !(3..=4).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(txn_error(
                            &ref_id,
                            "3",
                            "78",
                            "The Card Code (CVV2/CVC2/CID) is invalid.",
                            json!({"accountNumber": masked}),
                        ));
                    }
                    cvv = true;
                }
                if !mit && txn.pointer("/retail/marketType") != Some(&json!("1")) {
                    return Err(api_error(
                        &ref_id,
                        "E00003",
                        "retail.marketType must be \"1\" (MOTO) on a keyed mail/telephone-order sale (fake's check, see module doc).",
                    ));
                }
            }
            (None, Some(bank)) => {
                let s = |k: &str| bank.get(k).and_then(Value::as_str).unwrap_or("");
                if !["checking", "savings", "businessChecking"].contains(&s("accountType")) {
                    return Err(api_error(&ref_id, "E00003", &format!("The 'accountType' element is invalid - The value {:?} is invalid according to its datatype 'BankAccountTypeEnum'.", s("accountType"))));
                }
                if !aba_ok(s("routingNumber")) {
                    return Err(txn_error(
                        &ref_id,
                        "3",
                        "9",
                        "The ABA code is invalid",
                        json!({}),
                    ));
                }
                let account = s("accountNumber");
                if account.is_empty()
                    || account.len() > 17
                    || !account.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(txn_error(
                        &ref_id,
                        "3",
                        "10",
                        "The account number is invalid",
                        json!({}),
                    ));
                }
                masked = format!("XXXX{}", &account[account.len().saturating_sub(4)..]);
                let holder = s("nameOnAccount");
                if holder.is_empty() || holder.chars().count() > 22 {
                    return Err(api_error(&ref_id, "E00003", "The 'nameOnAccount' element is invalid - it is required and at most 22 characters."));
                }
                if s("echeckType") != "TEL" {
                    return Err(api_error(
                        &ref_id,
                        "E00003",
                        &format!("echeckType must be \"TEL\" for an ACH debit by phone, got {:?} (fake's check, see module doc).", s("echeckType")),
                    ));
                }
            }
            _ => return Err(api_error(
                &ref_id,
                "E00003",
                "The element 'payment' must contain exactly one of 'creditCard' or 'bankAccount'.",
            )),
        }
        if mit {
            let ntid = txn
                .pointer("/subsequentAuthInformation/originalNetworkTransId")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ntid.is_empty() {
                return Err(api_error(
                    &ref_id,
                    "E00003",
                    "subsequentAuthInformation.originalNetworkTransId is required when processingOptions.isSubsequentAuth is true.",
                ));
            }
            if let Some(reason) = txn.pointer("/subsequentAuthInformation/reason") {
                let ok = ["resubmission", "delayedCharge", "reauthorization", "noShow"]
                    .iter()
                    .any(|r| reason == &json!(r));
                if !ok {
                    return Err(api_error(&ref_id, "E00003", &format!("The 'reason' element is invalid - The value {reason} is invalid according to its datatype 'merchantInitTransReasonEnum'.")));
                }
            }
        }

        // Duplicate window (§2.5).
        let settings = txn
            .pointer("/transactionSettings/setting")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let explicit_window = settings
            .iter()
            .find(|s| s.get("settingName") == Some(&json!("duplicateWindow")))
            .map(|s| str_or_num(s.get("settingValue")).unwrap_or_default());
        let window = match &explicit_window {
            None => 120,
            Some(w) => match w.parse::<u64>() {
                Ok(w) if w <= 28800 => w,
                _ => {
                    return Err(api_error(
                        &ref_id,
                        "E00003",
                        "duplicateWindow must be between 0 and 28800 seconds.",
                    ))
                }
            },
        };
        cx.validated = true;
        let fingerprint = duplicate_fingerprint(txn, &minor.to_string());
        {
            let executed = self.executed.lock().unwrap();
            if let Some(first) = executed.get(&fingerprint) {
                if window > 0 && first.at.elapsed() < Duration::from_secs(window) {
                    let extra = if explicit_window.is_some() {
                        json!({"transId": first.trans_id, "authCode": if first.approved { first.auth_code.as_str() } else { "" },
                               "avsResultCode": "Y", "cvvResultCode": if first.cvv { "M" } else { "" }, "accountNumber": masked})
                    } else {
                        json!({"accountNumber": masked})
                    };
                    return Ok(txn_error(
                        &ref_id,
                        "3",
                        "11",
                        "A duplicate transaction has been submitted.",
                        extra,
                    ));
                }
            }
        }

        if cx.echo_pan && !pan.is_empty() {
            return Ok(txn_error(
                &ref_id,
                "2",
                "2",
                &format!(
                    "This transaction has been declined for card {}.",
                    dotted(&pan)
                ),
                json!({"accountNumber": masked}),
            ));
        }

        // Execute.
        let n = cx.next_number();
        let trans_id = format!("{}", 60_000_000_000_u64 + n);
        let auth_code = format!("A{n:05}");
        let declined = txn.pointer("/billTo/zip") == Some(&json!(DECLINE_ZIP))
            || (bank.is_some() && minor > 100 * 10_i64.pow(exp));
        let network_trans_id = format!("{:012}NNNH", 100_000_000_000_u64 + n);
        self.executed.lock().unwrap().insert(
            fingerprint,
            Executed {
                at: Instant::now(),
                trans_id: trans_id.clone(),
                auth_code: auth_code.clone(),
                approved: !declined,
                cvv,
            },
        );
        cx.sale(Sale {
            id: trans_id.clone(),
            approved: !declined,
            amount: amount.clone(),
            network_transaction_id: (!declined && card.is_some()).then(|| network_trans_id.clone()),
            merchant_initiated: mit,
        });
        let account_type = if bank.is_some() {
            "eCheck"
        } else {
            brand(&pan)
        };
        if declined {
            return Ok(txn_error(
                &ref_id,
                "2",
                "2",
                "This transaction has been declined.",
                json!({"transId": trans_id, "accountNumber": masked, "accountType": account_type}),
            ));
        }
        let mut tr = json!({
            "responseCode": "1",
            "authCode": auth_code,
            "avsResultCode": "Y",
            "cvvResultCode": if cvv { "M" } else { "" },
            "transId": trans_id,
            "accountNumber": masked,
            "accountType": account_type,
            "messages": [{"code": "1", "description": "This transaction has been approved."}],
        });
        if card.is_some() {
            tr["networkTransId"] = json!(network_trans_id);
        }
        Ok(with_bom(&json!({
            "transactionResponse": tr,
            "refId": ref_id,
            "messages": {"resultCode": "Ok", "message": [{"code": "I00001", "text": "Successful."}]},
        })))
    }
}

fn brand(pan: &str) -> &'static str {
    match pan.as_bytes().first() {
        Some(b'4') => "Visa",
        Some(b'5' | b'2') => "MasterCard",
        Some(b'3') => "AmericanExpress",
        Some(b'6') => "Discover",
        _ => "Unknown",
    }
}

/// The fields AN-DUP lists as the duplicate match (§2.5), the login being fixed in the fake;
/// hashed, so the fake keeps no PAN.
fn duplicate_fingerprint(txn: &Value, minor: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let p = |path: &str| txn.pointer(path).map(|v| v.to_string()).unwrap_or_default();
    let joined = [
        p("/transactionType"),
        minor.to_owned(),
        p("/payment/creditCard/cardNumber"),
        p("/payment/creditCard/expirationDate"),
        p("/payment/bankAccount/routingNumber"),
        p("/payment/bankAccount/accountNumber"),
        p("/poNumber"),
        p("/order/invoiceNumber"),
        p("/customer/id"),
        p("/billTo/firstName"),
        p("/billTo/lastName"),
        p("/billTo/company"),
        p("/billTo/address"),
        p("/billTo/city"),
        p("/billTo/state"),
        p("/billTo/zip"),
        p("/billTo/country"),
    ]
    .join("|");
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(joined))
}

//! Fake payment processors: one loopback HTTP server per processor, written from that processor's
//! section of `docs/processors.md` (the shared API-facts document), that checks requests the way the
//! processor would and answers in its documented shapes.
//!
//! What they share lives here:
//! - [`Fake`], the handle a test holds: the base URL, controllable faults ([`Fault`]) and the
//!   [`Record`] of what the fake executed;
//! - the request pipeline ([`entry`]): faults, idempotency-key replay ([`Idem`]), recording with
//!   card data masked to BIN+last4, then the processor's own [`Processor::handle`];
//! - small checks every processor needs (Luhn, ABA routing checksum, amounts per currency
//!   exponent, expiry dates) and flattening of JSON or form bodies into `path = value` fields.
//!
//! A fake never stores a PAN, a CVV or a bank account number: the record keeps BIN+last4, `***`
//! and last4 respectively.
//!
//! Use: `let fake = fakes::stripe::start().await;` then point the profile at `fake.base_url`
//! (each module's `PATH` constants name its endpoints and its `pub const`s the credentials the
//! fake accepts); `fake.fault_next(Fault::Delay(..))` for one bad answer; afterwards
//! `assert!(fake.sales_executed() <= 1)`, `fake.record().idempotency_keys`,
//! `fake.last_fields()["…"]`. `fake_selftest` shows a correct request for each processor.

// The fakes are a library for the processor-profile tests; the self-tests use most of it, the
// profile tests the rest.
#![allow(dead_code)]

pub mod adyen;
pub mod authorizenet;
pub mod checkout;
pub mod cybersource;
pub mod nmi;
pub mod stripe;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A fault a test asks a fake to produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer the processor's 5xx without executing anything.
    ServerError,
    /// Execute the request, then hold the answer for this long (a `tokio::time::sleep` inside the
    /// handler, so a caller with a shorter timeout gives up while the sale is already done).
    Delay(Duration),
    /// Hold the request this long before executing it (the processor is slow to start; the sale
    /// still runs after a caller gave up, and an idempotency key stays in flight meanwhile).
    Hang(Duration),
    /// Execute the request, then answer the first half of the real body (cut mid-token).
    Malformed,
    /// Execute the request, then answer the real body padded to at least this many bytes (still
    /// well-formed, so only a size limit stops a reader).
    Oversize(usize),
    /// Decline in the processor's documented shape with the PAN, written with dots
    /// (`4111.1111.1111.1111`), inside the message field. Nothing is executed.
    EchoPan,
    /// Like [`Fault::EchoPan`], with the PAN written as given (`4111 1111-1111.1111`, ...) in
    /// the message, and also as the value of the answer's top-level (or dotted, for JSON) field
    /// `field`, where the profile under test reads a parameter it passes back to Twilio.
    EchoPanAs {
        written: String,
        field: Option<&'static str>,
    },
    /// Refuse the request in the processor's documented shape for an invalid request
    /// ([`Processor::rejection`]). Nothing is executed.
    Reject,
    /// Execute the request, then stream the real body followed by padding, chunked (no
    /// Content-Length), up to this many bytes in all: only a reader that stops at its limit
    /// while streaming gets away without buffering it. [`Fake::flood`] tells how much was taken.
    Flood(usize),
}

/// An executed sale (approved or declined by the "issuer").
#[derive(Clone, Debug)]
pub struct Sale {
    /// The processor's charge id as answered.
    pub id: String,
    pub approved: bool,
    /// The amount as the request gave it (minor units or a major-unit decimal, per processor).
    pub amount: String,
    /// The network transaction id answered, where the processor answers one.
    pub network_transaction_id: Option<String>,
    /// True when the request was a merchant-initiated follow-up.
    pub merchant_initiated: bool,
}

/// One request as the fake saw it, card data masked.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    /// Flattened body: JSON paths joined with `.`, form keys as sent. PANs are BIN+last4
    /// (`411111…1111`), CVVs `***`, bank account numbers `…last4`.
    pub fields: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub status: u16,
}

/// What a fake executed and saw.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub sales: Vec<Sale>,
    pub idempotency_keys: Vec<String>,
    pub requests: Vec<Seen>,
    /// Answers replayed from the idempotency store instead of executing.
    pub replays: usize,
    /// Charge ids of executed sales since undone (a CyberSource timeout void or reversal).
    pub undone: Vec<String>,
}

impl Record {
    /// Approved sales that stand (not undone): what a cardholder is charged for.
    pub fn standing_sales(&self) -> Vec<&Sale> {
        self.sales
            .iter()
            .filter(|s| s.approved && !self.undone.contains(&s.id))
            .collect()
    }
}

/// An answer before faults are applied.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            content_type: "application/json",
            body: serde_json::to_vec(body).expect("json"),
            headers: Vec::new(),
        }
    }
    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// How a processor treats an idempotency key header.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Idem {
    /// No key (Authorize.net, NMI, CyberSource).
    None,
    /// Stripe §4.5: `Idempotency-Key`; the first answer (including 5xx) is stored once execution
    /// starts; validation failures are not stored; different parameters under the same key are an
    /// error (the fake compares the exact body bytes, so a reordered but equal body counts as
    /// different: stricter than Stripe); a concurrent request with an in-flight key is a 409.
    Stripe,
    /// Adyen §5.5: `Idempotency-Key`; a processed request's answer is replayed, the key echoed.
    Adyen,
    /// Checkout.com §6.5: `Cko-Idempotency-Key`; only successfully processed (2xx) answers are
    /// replayed; 4xx/5xx are retried.
    Checkout,
}

impl Idem {
    fn header(self) -> Option<&'static str> {
        match self {
            Idem::None => None,
            Idem::Stripe | Idem::Adyen => Some("idempotency-key"),
            Idem::Checkout => Some("cko-idempotency-key"),
        }
    }
}

/// A request as the pipeline hands it to a processor.
pub struct Incoming {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Per-request context a processor writes to.
pub struct Cx<'a> {
    /// Answer the decline shape with the dotted PAN in the message, execute nothing.
    pub echo_pan: bool,
    /// Set by the processor once the request passed validation (Stripe stores only those).
    pub validated: bool,
    pub record: &'a mut Record,
    ids: &'a AtomicU64,
}

impl Cx<'_> {
    /// A fresh number, unique within the fake, for transaction ids.
    pub fn next_number(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
    pub fn sale(&mut self, sale: Sale) {
        self.record.sales.push(sale);
    }
}

/// A processor's request checks and answers.
pub trait Processor: Send + Sync + 'static {
    fn idempotency(&self) -> Idem {
        Idem::None
    }
    /// The request body flattened into fields (unmasked; the pipeline masks).
    fn fields(&self, req: &Incoming) -> BTreeMap<String, String>;
    /// Checks and answers one request.
    fn handle(&self, req: &Incoming, cx: &mut Cx<'_>) -> Reply;
    /// The processor's 5xx answer.
    fn server_error(&self) -> Reply;
    /// The processor's documented answer to a request it refuses as invalid (nothing executed).
    fn rejection(&self) -> Reply;
    /// The answer to a known idempotency key with different parameters (Stripe only).
    fn idempotency_mismatch(&self, key: &str) -> Reply {
        Reply::json(
            400,
            &serde_json::json!({"error": format!("idempotency key {key} reused")}),
        )
    }
    /// The answer to a key whose first request is still executing (Stripe only).
    fn idempotency_in_flight(&self) -> Reply {
        Reply::json(
            409,
            &serde_json::json!({"error": "idempotency key in flight"}),
        )
    }
}

#[derive(Clone)]
enum Slot {
    InFlight,
    Done { fingerprint: Vec<u8>, reply: Reply },
}

#[derive(Default)]
struct Shared {
    record: Record,
    next_faults: VecDeque<Fault>,
    fault: Option<Fault>,
    idem: HashMap<String, Slot>,
    /// The last [`Fault::Flood`] answer's progress.
    flood: Option<Arc<crate::helpers::Flood>>,
}

pub struct Core {
    processor: Box<dyn Processor>,
    shared: Mutex<Shared>,
    ids: AtomicU64,
}

/// A running fake processor.
#[derive(Clone)]
pub struct Fake {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base_url: String,
    core: Arc<Core>,
}

impl Fake {
    /// Serves `routes` (whose handlers are [`entry`]) for `processor` on a loopback port, on the
    /// calling test's runtime.
    pub async fn start(
        processor: impl Processor,
        routes: impl FnOnce(axum::Router<Arc<Core>>) -> axum::Router<Arc<Core>>,
    ) -> Self {
        let core = Arc::new(Core {
            processor: Box::new(processor),
            shared: Mutex::default(),
            ids: AtomicU64::new(1),
        });
        let app = routes(axum::Router::new()).with_state(core.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, core }
    }

    /// Produce `fault` on the next request only (queued after earlier one-shot faults).
    pub fn fault_next(&self, fault: Fault) {
        self.shared().next_faults.push_back(fault);
    }
    /// Produce `fault` on every request from now on (`None` to stop); one-shot faults go first.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared().fault = fault;
    }
    pub fn record(&self) -> Record {
        self.shared().record.clone()
    }
    /// Sales executed, approved or declined: what "at most one sale" is about.
    pub fn sales_executed(&self) -> usize {
        self.shared().record.sales.len()
    }
    pub fn approved_sales(&self) -> usize {
        self.shared()
            .record
            .sales
            .iter()
            .filter(|s| s.approved)
            .count()
    }
    /// The last request's masked fields.
    pub fn last_fields(&self) -> BTreeMap<String, String> {
        self.shared()
            .record
            .requests
            .last()
            .map(|s| s.fields.clone())
            .unwrap_or_default()
    }
    /// The last [`Fault::Flood`] answer's progress, if one was made.
    pub fn flood(&self) -> Option<Arc<crate::helpers::Flood>> {
        self.shared().flood.clone()
    }
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.core.shared.lock().unwrap()
    }
}

/// The handler every fake route uses.
pub async fn entry(
    State(core): State<Arc<Core>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Incoming {
        path: uri.path().to_owned(),
        headers,
        body,
    };
    let policy = core.processor.idempotency();
    let key = policy
        .header()
        .and_then(|h| req.header(h))
        .map(str::to_owned);
    let fingerprint = req.body.to_vec();

    // Idempotency: replay, conflict, or wait for an in-flight twin.
    if let Some(key) = &key {
        loop {
            let slot = {
                let mut shared = core.shared.lock().unwrap();
                shared.record.idempotency_keys.push(key.clone());
                let slot = shared.idem.get(key).cloned();
                if slot.is_none() {
                    shared.idem.insert(key.clone(), Slot::InFlight);
                }
                slot
            };
            match slot {
                None => break,
                Some(Slot::Done {
                    fingerprint: first,
                    reply,
                }) => {
                    if policy == Idem::Stripe && first != fingerprint {
                        return finish(
                            &core,
                            &req,
                            Some(key),
                            core.processor.idempotency_mismatch(key),
                        );
                    }
                    core.shared.lock().unwrap().record.replays += 1;
                    return finish(&core, &req, Some(key), with_key_echo(policy, key, reply));
                }
                Some(Slot::InFlight) if policy == Idem::Stripe => {
                    return finish(
                        &core,
                        &req,
                        Some(key),
                        core.processor.idempotency_in_flight(),
                    );
                }
                Some(Slot::InFlight) => {
                    // Adyen/Checkout: behaviour for concurrent twins is unconfirmed (§5.5, §6.5:
                    // "only one processed"); the fake lets the twin wait and then replays.
                    core.shared.lock().unwrap().record.idempotency_keys.pop();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    let fault = {
        let mut shared = core.shared.lock().unwrap();
        shared.next_faults.pop_front().or(shared.fault.clone())
    };
    if let Some(Fault::Hang(d)) = fault {
        tokio::time::sleep(d).await;
    }
    let (reply, validated) = if fault == Some(Fault::ServerError) {
        (core.processor.server_error(), true)
    } else if fault == Some(Fault::Reject) {
        (core.processor.rejection(), false)
    } else {
        let mut shared = core.shared.lock().unwrap();
        let mut cx = Cx {
            echo_pan: matches!(fault, Some(Fault::EchoPan | Fault::EchoPanAs { .. })),
            validated: false,
            record: &mut shared.record,
            ids: &core.ids,
        };
        let reply = core.processor.handle(&req, &mut cx);
        (reply, cx.validated)
    };

    if let Some(key) = &key {
        let store = match policy {
            Idem::Stripe => validated,
            Idem::Adyen => validated && reply.status.is_success(),
            Idem::Checkout => reply.status.is_success(),
            Idem::None => false,
        };
        let mut shared = core.shared.lock().unwrap();
        if store {
            shared.idem.insert(
                key.clone(),
                Slot::Done {
                    fingerprint,
                    reply: reply.clone(),
                },
            );
        } else {
            shared.idem.remove(key);
        }
    }

    let reply = match fault {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            reply
        }
        Some(Fault::Malformed) => {
            let half = reply.body.len() / 2;
            Reply {
                body: reply.body[..half].to_vec(),
                ..reply
            }
        }
        Some(Fault::Oversize(n)) => pad(reply, n),
        Some(Fault::EchoPanAs { written, field }) => echo_as(reply, &written, field),
        Some(Fault::Flood(total)) => {
            let response = finish(
                &core,
                &req,
                key.as_deref(),
                Reply {
                    body: Vec::new(),
                    ..reply.clone()
                },
            );
            let flood = Arc::new(crate::helpers::Flood::default());
            core.shared.lock().unwrap().flood = Some(flood.clone());
            let (mut parts, _) = response.into_parts();
            let (prefix, filler) = if reply.content_type.starts_with("application/json") {
                (reply.body, b' ')
            } else {
                let mut body = reply.body;
                body.extend_from_slice(b"&padding=");
                (body, b'a')
            };
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            return Response::from_parts(parts, flood.body(prefix, filler, total));
        }
        _ => reply,
    };
    finish(
        &core,
        &req,
        key.as_deref(),
        with_key_echo(policy, key.as_deref().unwrap_or(""), reply),
    )
}

/// Adyen echoes the key in a response header (§5.5).
fn with_key_echo(policy: Idem, key: &str, mut reply: Reply) -> Reply {
    if policy == Idem::Adyen && !key.is_empty() {
        reply
            .headers
            .push(("idempotency-key".to_owned(), key.to_owned()));
    }
    reply
}

/// The dotted PAN of an [`Fault::EchoPan`] answer rewritten as `written`, and `written` set as
/// the value of `field`.
fn echo_as(mut reply: Reply, written: &str, field: Option<&str>) -> Reply {
    let digits: String = written.chars().filter(char::is_ascii_digit).collect();
    let form = !reply.content_type.starts_with("application/json");
    let encoded: String = if form {
        form_urlencoded::byte_serialize(written.as_bytes()).collect()
    } else {
        written.to_owned()
    };
    let text = String::from_utf8_lossy(&reply.body).replace(&dotted(&digits), &encoded);
    reply.body = text.into_bytes();
    let Some(field) = field else { return reply };
    if form {
        reply
            .body
            .extend_from_slice(format!("&{field}={encoded}").as_bytes());
        // The field may already be there: a later duplicate wins when parsed, as in the profile.
        return reply;
    }
    let bom = reply.body.starts_with(b"\xEF\xBB\xBF");
    let json = if bom {
        &reply.body[3..]
    } else {
        &reply.body[..]
    };
    let mut value: Value = serde_json::from_slice(json).expect("a JSON answer");
    let mut at = &mut value;
    let mut keys = field.split('.').peekable();
    while let Some(key) = keys.next() {
        let object = at.as_object_mut().expect("an object on the way");
        if keys.peek().is_none() {
            object.insert(key.to_owned(), Value::String(written.to_owned()));
            break;
        }
        at = object.entry(key).or_insert_with(|| serde_json::json!({}));
    }
    let mut body = if bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    body.extend(serde_json::to_vec(&value).expect("json"));
    reply.body = body;
    reply
}

fn pad(mut reply: Reply, n: usize) -> Reply {
    let filler: &[u8] = if reply.content_type.starts_with("application/json") {
        b" "
    } else {
        b"a"
    };
    if !reply.content_type.starts_with("application/json") {
        reply.body.extend_from_slice(b"&padding=");
    }
    while reply.body.len() < n {
        reply.body.extend_from_slice(filler);
    }
    reply
}

fn finish(core: &Core, req: &Incoming, key: Option<&str>, reply: Reply) -> Response {
    let fields = mask_fields(core.processor.fields(req));
    core.shared.lock().unwrap().record.requests.push(Seen {
        path: req.path.clone(),
        fields,
        idempotency_key: key.map(str::to_owned),
        status: reply.status.as_u16(),
    });
    let Reply {
        status,
        content_type,
        body,
        headers,
    } = reply;
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Body parsing and masking

/// Flattens JSON into `a.b.0.c = value` fields (strings unquoted, other scalars as JSON).
pub fn flatten_json(value: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&join(k), v, out)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&join(&i.to_string()), v, out)),
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Parses a form-urlencoded body; a repeated key keeps its last value.
pub fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Masks card data in flattened fields: PAN fields to BIN+last4, CVVs to `***`, bank account
/// numbers to `…last4`, body credentials to `***`, and any other value that looks like a PAN (13–19 digits passing Luhn).
pub fn mask_fields(fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
    const PAN: &[&str] = &[
        "cardNumber",
        "ccnumber",
        "[card][number]",
        "card.number",
        "paymentMethod.number",
        "source.number",
    ];
    const CVV: &[&str] = &["cardCode", "cvv", "cvc", "[cvc]", "securityCode"];
    // Credentials sent in the body are no business of the record either.
    const SECRET: &[&str] = &["security_key", "transactionKey"];
    const ACCOUNT: &[&str] = &[
        "accountNumber",
        "checkaccount",
        "bankAccountNumber",
        "account_number",
        "[account_number]",
        "account.number",
    ];
    fields
        .into_iter()
        .map(|(k, v)| {
            let v = if PAN.iter().any(|s| k.ends_with(s)) || looks_like_pan(&v) {
                mask_pan(&v)
            } else if CVV.iter().any(|s| k.ends_with(s)) || SECRET.iter().any(|s| k.ends_with(s)) {
                "***".to_owned()
            } else if ACCOUNT.iter().any(|s| k.ends_with(s)) {
                format!("…{}", last(&v, 4))
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

fn last(s: &str, n: usize) -> &str {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    if chars.len() <= n {
        s
    } else {
        &s[chars[chars.len() - n].0..]
    }
}

fn looks_like_pan(v: &str) -> bool {
    (13..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) && luhn_ok(v)
}

/// BIN+last4 (`411111…1111`); short or non-numeric values keep only their last 4.
pub fn mask_pan(pan: &str) -> String {
    if pan.len() >= 12 && pan.is_ascii() {
        format!("{}…{}", &pan[..6], &pan[pan.len() - 4..])
    } else {
        format!("…{}", last(pan, 4))
    }
}

/// The PAN in groups of four joined by dots, the way some processors echo it in messages.
pub fn dotted(pan: &str) -> String {
    pan.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the processors

pub fn luhn_ok(pan: &str) -> bool {
    if !(12..=19).contains(&pan.len()) || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = pan
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 {
                    d - 9
                } else {
                    d
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A US ABA routing number: nine digits with the 3-7-1 checksum.
pub fn aba_ok(routing: &str) -> bool {
    if routing.len() != 9 || !routing.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = routing
        .bytes()
        .zip([3, 7, 1].iter().cycle())
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    sum.is_multiple_of(10)
}

/// The number of minor-unit digits of an ISO 4217 currency (`USD` 2, `JPY` 0, `BHD` 3).
pub fn exponent(currency: &str) -> Option<u32> {
    let currency = iso_currency::Currency::from_code(&currency.to_ascii_uppercase())?;
    Some(currency.exponent().map_or(0, u32::from))
}

/// A major-unit decimal amount (`25`, `25.5`, `25.00`) with at most the currency's exponent of
/// decimals and more than zero, as minor units.
pub fn major_to_minor(amount: &str, exponent: u32) -> Result<i64, String> {
    let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(frac)
        || (amount.contains('.') && frac.is_empty())
    {
        return Err(format!("amount {amount:?} is not a decimal number"));
    }
    if frac.len() > exponent as usize {
        return Err(format!(
            "amount {amount:?} has more than {exponent} decimals for its currency"
        ));
    }
    let mut minor: i64 = whole.parse().map_err(|_| "amount too large".to_owned())?;
    for _ in 0..exponent {
        minor = minor.checked_mul(10).ok_or("amount too large")?;
    }
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().map_err(|e| e.to_string())? * 10_i64.pow(exponent - frac.len() as u32)
    };
    let minor = minor + frac_value;
    if minor <= 0 {
        return Err(format!("amount {amount:?} must be greater than zero"));
    }
    Ok(minor)
}

/// True when month/year (4-digit year) is before the current month.
pub fn expired(month: u32, year: i32) -> bool {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    (year, month) < (now.year(), now.month())
}

/// Parses a two-digit month `01`–`12` (leading zero required).
pub fn month2(s: &str) -> Option<u32> {
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
        .filter(|m| (1..=12).contains(m))
}

/// Parses a four-digit year.
pub fn year4(s: &str) -> Option<i32> {
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A value as a JSON string or number rendered as a string (several processors accept both).
pub fn str_or_num(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

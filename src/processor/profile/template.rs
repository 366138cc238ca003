//! What a profile's request templates see, and where their output goes.
//!
//! Card and bank data enter the template context only as opaque objects. Printed directly
//! (`{{ card }}`, `{{ card.number }}`, `{{ card.number | tojson }}`, `~` concatenation...) they
//! render masked; the clear value is reachable only through a formatting filter (`pan`, `cvv`,
//! `account`, `routing`, `exp(...)`, `last4`, `bin`), each of which yields a JSON string literal.
//! That literal is written straight into the request buffer by the environment's formatter, and
//! the buffer zeroizes every copy it leaves behind when it grows and when it is dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, Value};
use minijinja::{Error, ErrorKind, Output, State};
use zeroize::{Zeroize, Zeroizing};

use crate::domain::{Amount, PaymentMethod};
use crate::processor::{Initiator, ProcessorRequest};

/// Whether a rendering is for sending or for showing (`payvault processor render`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Send,
    /// Card data, bank data and secret settings come out masked.
    Masked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pan,
    Cvv,
    Account,
    Routing,
}

impl Kind {
    fn filter(self) -> &'static str {
        match self {
            Kind::Pan => "pan",
            Kind::Cvv => "cvv",
            Kind::Account => "account",
            Kind::Routing => "routing",
        }
    }
}

/// A card or bank number in the context. Renders as its masked form; filters reach the rest.
struct Sensitive {
    kind: Kind,
    clear: Zeroizing<String>,
    masked: String,
    /// Leading digits safe to show (`bin`), empty where there are none.
    bin: String,
    last4: String,
    mode: Mode,
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.kind, self.masked)
    }
}

impl Object for Sensitive {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

/// A card's expiry: only `exp(...)` formats it.
#[derive(Debug)]
struct ExpiryValue {
    month: u8,
    year: u16,
}

impl Object for ExpiryValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**/**")
    }
}

/// `card`: number, cvv, expiry, postal_code, brand. Prints as its masked number.
#[derive(Debug)]
struct CardValue {
    fields: BTreeMap<&'static str, Value>,
    masked: String,
}

impl Object for CardValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.fields.get(key.as_str()?).cloned()
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

/// A filter's output: a JSON string literal (quotes included) holding card or bank data. The
/// formatter writes it into the request buffer without an intermediate copy.
struct Formatted(Zeroizing<String>);

impl fmt::Debug for Formatted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Formatted(..)")
    }
}

impl Object for Formatted {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` as a JSON string literal, in a zeroizing buffer sized so it never reallocates.
fn json_literal(text: &str) -> Value {
    let mut out = Zeroizing::new(String::with_capacity(2 + 6 * text.len()));
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    Value::from_object(Formatted(out))
}

/// The environment's formatter: filter output goes straight to the buffer, everything else
/// through the default (auto-escaping) formatter.
pub(crate) fn formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    if let Some(f) = value.downcast_object_ref::<Formatted>() {
        return out.write_str(&f.0).map_err(Error::from);
    }
    minijinja::escape_formatter(out, state, value)
}

/// `{{ fail("message") }}`: stops rendering, for a profile that cannot serve a request (a
/// payment method it does not support, a setting the chosen environment needs).
pub(crate) fn fail(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn misuse(filter: &str, expected: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("`{filter}` applies to {expected}"),
    )
}

fn sensitive<'v>(value: &'v Value, kind: Kind, expected: &str) -> Result<&'v Sensitive, Error> {
    value
        .downcast_object_ref::<Sensitive>()
        .filter(|s| s.kind == kind)
        .ok_or_else(|| misuse(kind.filter(), expected))
}

fn clear_or_masked(s: &Sensitive) -> Value {
    match s.mode {
        Mode::Send => json_literal(&s.clear),
        Mode::Masked => json_literal(&s.masked),
    }
}

/// `card.number | pan`: the full card number.
pub(crate) fn pan(value: &Value) -> Result<Value, Error> {
    sensitive(value, Kind::Pan, "card.number").map(clear_or_masked)
}

/// `card.cvv | cvv`: the security code (check `{% if card.cvv %}` first: it may be absent).
pub(crate) fn cvv(value: &Value) -> Result<Value, Error> {
    sensitive(value, Kind::Cvv, "card.cvv").map(clear_or_masked)
}

/// `bank.account | account`: the bank account number.
pub(crate) fn account(value: &Value) -> Result<Value, Error> {
    sensitive(value, Kind::Account, "bank.account").map(clear_or_masked)
}

/// `bank.routing | routing`: the ABA routing number.
pub(crate) fn routing(value: &Value) -> Result<Value, Error> {
    sensitive(value, Kind::Routing, "bank.routing").map(clear_or_masked)
}

/// `card.number | last4` or `bank.account | last4`.
pub(crate) fn last4(value: &Value) -> Result<Value, Error> {
    match value.downcast_object_ref::<Sensitive>() {
        Some(s) if matches!(s.kind, Kind::Pan | Kind::Account) => Ok(json_literal(&s.last4)),
        _ => Err(misuse("last4", "card.number or bank.account")),
    }
}

/// `card.number | bin`: the leading digits that may be shown.
pub(crate) fn bin(value: &Value) -> Result<Value, Error> {
    sensitive(value, Kind::Pan, "card.number").map(|s| json_literal(&s.bin))
}

/// `card.expiry | exp("MM")`: `MM`, `YY`, `YYYY`, `MMYY`, `MM/YY`, `YYYY-MM`.
pub(crate) fn exp(value: &Value, format: &str) -> Result<Value, Error> {
    let e = value
        .downcast_object_ref::<ExpiryValue>()
        .ok_or_else(|| misuse("exp", "card.expiry"))?;
    let (m, y) = (e.month, e.year);
    let text = match format {
        "MM" => format!("{m:02}"),
        "YY" => format!("{:02}", y % 100),
        "YYYY" => format!("{y:04}"),
        "MMYY" => format!("{m:02}{:02}", y % 100),
        "MM/YY" => format!("{m:02}/{:02}", y % 100),
        "YYYY-MM" => format!("{y:04}-{m:02}"),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("exp(\"{other}\"): use MM, YY, YYYY, MMYY, MM/YY or YYYY-MM"),
            ))
        }
    };
    Ok(json_literal(&text))
}

/// `amount`: `minor` (integer minor units), `major` (decimal string with the currency's ISO 4217
/// digits), `currency` (upper case), `exponent`.
fn amount_value(amount: &Amount) -> Value {
    let mut m = BTreeMap::new();
    m.insert("minor", Value::from(amount.minor_units()));
    m.insert("major", Value::from(amount.to_decimal()));
    m.insert("currency", Value::from(amount.currency()));
    m.insert("exponent", Value::from(amount.exponent()));
    Value::from(m)
}

fn method_values(method: &PaymentMethod, holder: Option<&str>, mode: Mode) -> (Value, Value) {
    match method {
        PaymentMethod::Card(c) => {
            let number = Sensitive {
                kind: Kind::Pan,
                clear: Zeroizing::new(c.number.digits().to_owned()),
                masked: c.number.masked(),
                bin: c.number.bin().to_owned(),
                last4: c.number.last4().to_owned(),
                mode,
            };
            let cvv = c.cvv.as_ref().map_or(Value::from(()), |v| {
                Value::from_object(Sensitive {
                    kind: Kind::Cvv,
                    clear: Zeroizing::new(v.digits().to_owned()),
                    masked: "***".into(),
                    bin: String::new(),
                    last4: String::new(),
                    mode,
                })
            });
            let mut fields = BTreeMap::new();
            let masked = format!("card {}", c.number.masked());
            fields.insert("number", Value::from_object(number));
            fields.insert("cvv", cvv);
            fields.insert(
                "expiry",
                Value::from_object(ExpiryValue {
                    month: c.expiry.month(),
                    year: c.expiry.year(),
                }),
            );
            fields.insert(
                "postal_code",
                c.postal_code
                    .as_ref()
                    .map_or(Value::from(()), |p| Value::from(p.as_str())),
            );
            fields.insert("brand", Value::from(c.number.brand().as_str()));
            fields.insert("holder_name", Value::from(holder));
            (
                Value::from_object(CardValue { fields, masked }),
                Value::from(()),
            )
        }
        PaymentMethod::Bank(b) => {
            let masked = b.account.masked();
            let account = Sensitive {
                kind: Kind::Account,
                clear: Zeroizing::new(b.account.digits().to_owned()),
                masked: masked.clone(),
                bin: String::new(),
                last4: b.account.last4().to_owned(),
                mode,
            };
            let routing = Sensitive {
                kind: Kind::Routing,
                clear: Zeroizing::new(b.routing.as_str().to_owned()),
                masked: b.routing.as_str().to_owned(),
                bin: String::new(),
                last4: String::new(),
                mode,
            };
            let mut fields = BTreeMap::new();
            fields.insert("account", Value::from_object(account));
            fields.insert("routing", Value::from_object(routing));
            fields.insert("holder_name", Value::from(holder));
            (
                Value::from(()),
                Value::from_object(CardValue {
                    fields,
                    masked: format!("bank_account {masked}"),
                }),
            )
        }
    }
}

/// The context of a request template. `settings` holds the profile's settings (secret ones
/// already masked in [`Mode::Masked`]).
pub(crate) fn request_context(req: &ProcessorRequest<'_>, settings: Value, mode: Mode) -> Value {
    let holder = req.parameters.get("AVSName").map(String::as_str);
    let (card, bank) = method_values(req.method, holder, mode);
    let mut ctx = BTreeMap::new();
    ctx.insert(
        "method",
        Value::from(match req.method {
            PaymentMethod::Card(_) => "card",
            PaymentMethod::Bank(_) => "bank",
        }),
    );
    ctx.insert("card", card);
    ctx.insert("bank", bank);
    ctx.insert("amount", amount_value(req.amount));
    ctx.insert("transaction_id", Value::from(req.transaction_id));
    ctx.insert("idempotency_key", Value::from(req.idempotency_key));
    ctx.insert("description", Value::from(req.description));
    let parameters: BTreeMap<String, Value> = req
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    ctx.insert("parameters", Value::from(parameters));
    ctx.insert("settings", settings);
    let (initiator, moto, ntid, recurring) = match &req.initiator {
        Initiator::CustomerMoto => ("customer", true, None, false),
        Initiator::Merchant {
            network_transaction_id,
            recurring,
        } => (
            "merchant",
            false,
            network_transaction_id.as_deref(),
            *recurring,
        ),
    };
    ctx.insert("initiator", Value::from(initiator));
    ctx.insert("moto", Value::from(moto));
    ctx.insert("recurring", Value::from(recurring));
    ctx.insert("previous_network_transaction_id", Value::from(ntid));
    Value::from(ctx)
}

/// A growable byte buffer that never leaves an unzeroized copy: when it must grow it copies
/// into a larger zeroizing buffer and the old one is wiped as it drops.
pub(crate) struct SecureBuf(Zeroizing<Vec<u8>>);

impl SecureBuf {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(n)))
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let needed = self.0.len() + bytes.len();
        if needed > self.0.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(2 * self.0.capacity())));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger;
        }
        self.0.extend_from_slice(bytes);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::io::Write for SecureBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A parsed request body whose strings are wiped when it drops.
pub(crate) struct WipedJson(pub(crate) serde_json::Value);

impl Drop for WipedJson {
    fn drop(&mut self) {
        fn wipe(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => s.zeroize(),
                serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
                serde_json::Value::Object(o) => o.values_mut().for_each(wipe),
                _ => {}
            }
        }
        wipe(&mut self.0);
    }
}

fn form_escape(out: &mut SecureBuf, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(&[b]),
            b' ' => out.push(b"+"),
            _ => out.push(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

/// Flattens a JSON object into `application/x-www-form-urlencoded`, Stripe style: nested keys as
/// `a[b][c]`, array items as `a[0]`; `null` and empty containers are left out.
pub(crate) fn form_encode(body: &serde_json::Value) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    fn walk(out: &mut SecureBuf, key: &str, v: &serde_json::Value) {
        let scalar = |out: &mut SecureBuf, text: &[u8]| {
            if out.len() > 0 {
                out.push(b"&");
            }
            form_escape(out, key.as_bytes());
            out.push(b"=");
            form_escape(out, text);
        };
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) => scalar(out, if *b { b"true" } else { b"false" }),
            serde_json::Value::Number(n) => scalar(out, n.to_string().as_bytes()),
            serde_json::Value::String(s) => scalar(out, s.as_bytes()),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(out, &format!("{key}[{i}]"), item);
                }
            }
            serde_json::Value::Object(fields) => {
                for (k, item) in fields {
                    walk(out, &format!("{key}[{k}]"), item);
                }
            }
        }
    }
    let serde_json::Value::Object(fields) = body else {
        return Err("a form body template must render a JSON object");
    };
    let mut out = SecureBuf::with_capacity(1024);
    for (k, v) in fields {
        walk(&mut out, k, v);
    }
    Ok(out.into_inner())
}

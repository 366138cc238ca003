//! Reading a processor's answer with a profile's `[operations.*.reply]` expressions.

use std::collections::BTreeMap;

use minijinja::value::Value;
use serde_json::{Map, Value as Json};

use super::{ReplyFormat, ReplySpec};
use crate::processor::{scrub_with, ProcessorError, ProcessorReply, AUTH_FAILED, REJECTED};

/// `body` without a leading UTF-8 byte order mark (Authorize.net sends one).
pub(crate) fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// The answer as JSON: parsed JSON, a query string (`a=b&c=d`) as an object of strings, or XML
/// as `super::xml` maps it.
pub(crate) fn parse_body(format: ReplyFormat, body: &[u8]) -> Result<Json, ProcessorError> {
    let body = strip_bom(body);
    match format {
        ReplyFormat::Json => {
            serde_json::from_slice(body).map_err(|_| ProcessorError::BadResponse("not JSON"))
        }
        ReplyFormat::Form => {
            let text =
                std::str::from_utf8(body).map_err(|_| ProcessorError::BadResponse("not UTF-8"))?;
            let fields: Map<String, Json> = form_urlencoded::parse(text.trim().as_bytes())
                .map(|(k, v)| (k.into_owned(), Json::String(v.into_owned())))
                .collect();
            if fields.is_empty() {
                return Err(ProcessorError::BadResponse("not a query string"));
            }
            Ok(Json::Object(fields))
        }
        ReplyFormat::Xml => {
            let text =
                std::str::from_utf8(body).map_err(|_| ProcessorError::BadResponse("not UTF-8"))?;
            super::xml::to_json(text)
        }
    }
}

pub(crate) fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .unwrap_or_else(|| Value::from(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(to_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// The context reply expressions see: `reply` (the body) and `http.status`.
pub(crate) fn reply_context(status: u16, body: &Json) -> Value {
    let mut http = BTreeMap::new();
    http.insert("status", Value::from(status));
    let mut ctx = BTreeMap::new();
    ctx.insert("reply", to_value(body));
    ctx.insert("http", Value::from(http));
    Value::from(ctx)
}

/// An expression's value as text: `none`, undefined, `false` and empty strings are no value.
pub(crate) fn text(v: &Value) -> Option<String> {
    if v.is_undefined()
        || v.is_none()
        || (v.kind() == minijinja::value::ValueKind::Bool && !v.is_true())
    {
        return None;
    }
    let s = v.to_string();
    (!s.is_empty()).then_some(s)
}

/// The value at a dotted path (`latest_charge.id`) of the body.
pub(crate) fn at_path<'a>(body: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(body, |v, key| match v {
        Json::Object(o) => o.get(key),
        Json::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Reads the answer. `known` holds this request's own PAN, CVV and account number: any text
/// taken from the answer is scrubbed of them (and of anything card-like) before it goes on.
pub(crate) fn read(
    spec: &ReplySpec,
    env: &minijinja::Environment<'static>,
    status: u16,
    body: &[u8],
    known: &[&str],
) -> Result<ProcessorReply, ProcessorError> {
    read_parsed(spec, env, status, parse_body(spec.format, body), known)
}

/// Like [`read`], for an answer already parsed (a lookup's record of the earlier attempt).
pub(crate) fn read_value(
    spec: &ReplySpec,
    env: &minijinja::Environment<'static>,
    status: u16,
    json: &Json,
    known: &[&str],
) -> Result<ProcessorReply, ProcessorError> {
    read_parsed(spec, env, status, Ok(json.clone()), known)
}

fn read_parsed(
    spec: &ReplySpec,
    env: &minijinja::Environment<'static>,
    status: u16,
    parsed: Result<Json, ProcessorError>,
    known: &[&str],
) -> Result<ProcessorReply, ProcessorError> {
    // A refusal is often told by the status alone, with an empty or non-JSON body (Checkout.com's
    // 401): those two expressions see an empty `reply` when the body cannot be parsed.
    let empty = Json::Object(Map::new());
    let ctx = reply_context(status, parsed.as_ref().unwrap_or(&empty));
    let eval = |source: &str| -> Result<Value, ProcessorError> {
        env.compile_expression(source)
            .and_then(|e| e.eval(ctx.clone()))
            .map_err(|_| ProcessorError::BadResponse("a reply expression failed"))
    };
    let optional = |source: &Option<String>| -> Result<Option<String>, ProcessorError> {
        match source {
            Some(s) => Ok(text(&eval(s)?)),
            None => Ok(None),
        }
    };
    for (source, refusal) in [
        (&spec.auth_failed, Refusal::AuthFailed),
        (&spec.rejected, Refusal::Rejected),
    ] {
        if eval(source)?.is_true() {
            // The processor's own words, if the profile can read them, scrubbed and kept short.
            let said = optional(&spec.decline_message)
                .ok()
                .flatten()
                .map(|m| scrub_with(&m, known, true));
            return Ok(refusal.reply(status, said));
        }
    }
    let json = parsed?;
    // Ids are often numbers or short codes: only a full card or account number is redacted there
    // (a 3-digit CVV would otherwise cut `ch_123`), as the charge flow does.
    let long_known: Vec<&str> = known.iter().copied().filter(|k| k.len() >= 8).collect();
    let approved = eval(&spec.approved)?.is_true();
    let (charge_id, error_code) = if approved {
        let id = text(&eval(&spec.charge_id)?)
            .ok_or(ProcessorError::BadResponse("approved without a charge id"))?;
        (Some(scrub_with(&id, &long_known, false)), None)
    } else {
        let code = text(&eval(&spec.decline_code)?).ok_or(ProcessorError::BadResponse(
            "neither an approval nor a readable decline",
        ))?;
        (None, Some(scrub_with(&code, known, true)))
    };
    let error_message = if approved {
        None
    } else {
        optional(&spec.decline_message)?.map(|m| scrub_with(&m, known, true))
    };
    let network_transaction_id =
        optional(&spec.network_transaction_id)?.map(|t| scrub_with(&t, &long_known, false));
    let mut parameters = Map::new();
    let mut pass = |name: &str, value: Option<&Json>| {
        let value = match value {
            None | Some(Json::Null) => return,
            Some(Json::String(s)) => s.clone(),
            Some(Json::Object(_) | Json::Array(_)) => return,
            Some(other) => other.to_string(),
        };
        parameters.insert(
            scrub_with(name, known, true),
            Json::String(scrub_with(&value, known, true)),
        );
    };
    for path in &spec.parameters {
        match path.strip_suffix(".*") {
            Some(object) => {
                if let Some(Json::Object(members)) = at_path(&json, object) {
                    for (name, value) in members {
                        pass(name, Some(value));
                    }
                }
            }
            None => pass(&path.replace('.', "_"), at_path(&json, path)),
        }
    }
    Ok(ProcessorReply {
        charge_id,
        error_code,
        error_message,
        parameters,
        network_transaction_id,
    })
}

/// A definite refusal that is not a card decline: nothing was charged, and a retry would be
/// refused the same way, so it is final (never an unknown outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `processor_auth_failed`: payvault's processor credentials were refused.
    AuthFailed,
    /// `processor_rejected`: the processor refused the request itself.
    Rejected,
}

/// Longest piece of the processor's own message kept in a refusal's `error_message`.
const MAX_SAID: usize = 200;

impl Refusal {
    fn reply(self, status: u16, said: Option<String>) -> ProcessorReply {
        let (code, what) = match self {
            Refusal::AuthFailed => (
                AUTH_FAILED,
                "The payment processor refused payvault's credentials; check the processor settings",
            ),
            Refusal::Rejected => (REJECTED, "The payment processor rejected the request"),
        };
        let mut message = format!("{what} (HTTP {status})");
        if let Some(said) = said.filter(|s| !s.trim().is_empty()) {
            let cut: String = said.chars().take(MAX_SAID).collect();
            message.push_str(": ");
            message.push_str(cut.trim());
        }
        message.push_str(". Nothing was charged.");
        ProcessorReply {
            charge_id: None,
            error_code: Some(code.into()),
            error_message: Some(message),
            parameters: Map::new(),
            network_transaction_id: None,
        }
    }
}

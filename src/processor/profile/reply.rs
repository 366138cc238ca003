//! Reading a processor's answer with a profile's `[operations.*.reply]` expressions.

use std::collections::BTreeMap;

use minijinja::value::Value;
use serde_json::{Map, Value as Json};

use super::{ReplyFormat, ReplySpec};
use crate::processor::{scrub_with, ProcessorError, ProcessorReply};

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
    let json = parse_body(spec.format, body)?;
    read_value(spec, env, status, &json, known)
}

/// Like [`read`], for an answer already parsed (a lookup's record of the earlier attempt).
pub(crate) fn read_value(
    spec: &ReplySpec,
    env: &minijinja::Environment<'static>,
    status: u16,
    json: &Json,
    known: &[&str],
) -> Result<ProcessorReply, ProcessorError> {
    let ctx = reply_context(status, json);
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
    let approved = eval(&spec.approved)?.is_true();
    let (charge_id, error_code) = if approved {
        let id = text(&eval(&spec.charge_id)?)
            .ok_or(ProcessorError::BadResponse("approved without a charge id"))?;
        (Some(scrub_with(&id, known, false)), None)
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
        optional(&spec.network_transaction_id)?.map(|t| scrub_with(&t, known, false));
    let mut parameters = Map::new();
    for path in &spec.parameters {
        let value = match at_path(json, path) {
            None | Some(Json::Null) => continue,
            Some(Json::String(s)) => s.clone(),
            Some(Json::Object(_) | Json::Array(_)) => continue,
            Some(other) => other.to_string(),
        };
        parameters.insert(
            path.replace('.', "_"),
            Json::String(scrub_with(&value, known, true)),
        );
    }
    Ok(ProcessorReply {
        charge_id,
        error_code,
        error_message,
        parameters,
        network_transaction_id,
    })
}

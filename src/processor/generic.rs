//! The `generic` adapter: POSTs the Generic Pay Connector JSON to the merchant's processor or
//! gateway and reads `{charge_id, error_code, error_message, parameters}` back (and an optional
//! `network_transaction_id`). A merchant-initiated charge of a stored token adds `initiator`
//! (`merchant`), `stored_credential` (`recurring` | `unscheduled`) and, when stored,
//! `network_transaction_id`; it never carries a CVV.

use std::time::Duration;

use crate::domain::SecretText;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Serialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::{
    scrub, scrub_value, BoxFuture, Initiator, Processor, ProcessorError, ProcessorReply,
    ProcessorRequest,
};
use crate::domain::PaymentMethod;

/// Largest processor answer read; anything bigger is a bad response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How payvault authenticates to the processor.
#[derive(Debug)]
pub enum ProcessorAuth {
    None,
    Basic {
        username: String,
        password: SecretText,
    },
    Bearer(SecretText),
    /// A named header such as `X-Api-Key`.
    Header {
        name: HeaderName,
        value: SecretText,
    },
}

#[derive(Debug)]
pub struct GenericConfig {
    pub url: reqwest::Url,
    pub auth: ProcessorAuth,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct GenericProcessor {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: ProcessorAuth,
}

impl GenericProcessor {
    pub fn new(cfg: GenericConfig) -> Result<Self, reqwest::Error> {
        // TLS certificates are always verified (PCI DSS 4.2.1). Redirects are not followed:
        // card data goes to the configured URL and nowhere else.
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payvault/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: cfg.url,
            auth: cfg.auth,
        })
    }
}

/// The outbound body: Twilio's own charge request format.
#[derive(Serialize)]
struct Outbound<'a> {
    method: &'static str,
    transaction_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cardnumber: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cvv: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_month: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry_year: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postal_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bankaccountnumber: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routingnumber: Option<&'a str>,
    amount: String,
    currency_code: &'a str,
    description: Option<&'a str>,
    parameters: &'a std::collections::BTreeMap<String, String>,
    /// Only on a merchant-initiated charge of a stored token (a customer's MOTO charge keeps
    /// Twilio's own format): `merchant`.
    #[serde(skip_serializing_if = "Option::is_none")]
    initiator: Option<&'static str>,
    /// `recurring` or `unscheduled`, with `initiator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_credential: Option<&'static str>,
    /// The network transaction id of the stored credential's first charge, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    network_transaction_id: Option<&'a str>,
}

/// Serializes the request into a zeroizing buffer sized up front so it never reallocates.
pub(crate) fn encode(req: &ProcessorRequest<'_>) -> Zeroizing<Vec<u8>> {
    let mut body = Outbound {
        method: "charge",
        transaction_id: req.transaction_id,
        cardnumber: None,
        cvv: None,
        expiry_month: None,
        expiry_year: None,
        postal_code: None,
        bankaccountnumber: None,
        routingnumber: None,
        amount: req.amount.to_decimal(),
        currency_code: req.amount.currency(),
        description: req.description,
        parameters: req.parameters,
        initiator: None,
        stored_credential: None,
        network_transaction_id: None,
    };
    if let Initiator::Merchant {
        network_transaction_id,
        recurring,
    } = &req.initiator
    {
        body.initiator = Some("merchant");
        body.stored_credential = Some(if *recurring {
            "recurring"
        } else {
            "unscheduled"
        });
        body.network_transaction_id = network_transaction_id.as_deref();
    }
    match req.method {
        PaymentMethod::Card(c) => {
            body.cardnumber = Some(c.number.digits());
            // Never a CVV on a merchant-initiated charge.
            body.cvv = c
                .cvv
                .as_ref()
                .filter(|_| req.initiator == Initiator::CustomerMoto)
                .map(|v| v.digits());
            body.expiry_month = Some(format!("{:02}", c.expiry.month()));
            body.expiry_year = Some(format!("{:02}", c.expiry.year() % 100));
            body.postal_code = c.postal_code.as_ref().map(|p| p.as_str());
        }
        PaymentMethod::Bank(b) => {
            body.bankaccountnumber = Some(b.account.digits());
            body.routingnumber = Some(b.routing.as_str());
        }
    }
    // JSON escaping at most sextuples a character; size for the worst case of the free text.
    let free_text = req.description.map_or(0, str::len)
        + req
            .parameters
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + req.transaction_id.len()
        + match &req.initiator {
            Initiator::Merchant {
                network_transaction_id: Some(n),
                ..
            } => n.len(),
            _ => 0,
        };
    let mut out = Zeroizing::new(Vec::with_capacity(512 + 6 * free_text));
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &body);
    out
}

/// Reads a processor's answer. Text it sends back is scrubbed of anything that looks like a
/// card or account number before it goes anywhere.
pub(crate) fn parse_reply(body: &[u8]) -> Result<ProcessorReply, ProcessorError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| ProcessorError::BadResponse("not JSON"))?;
    let Value::Object(obj) = value else {
        return Err(ProcessorError::BadResponse("not a JSON object"));
    };
    let text = |key: &'static str| -> Result<Option<String>, ProcessorError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ProcessorError::BadResponse("a field is not a string")),
        }
    };
    if !obj.contains_key("charge_id") {
        return Err(ProcessorError::BadResponse("no charge_id key"));
    }
    let charge_id = text("charge_id")?;
    let error_code = text("error_code")?.map(|c| scrub(&c));
    let error_message = text("error_message")?.map(|m| scrub(&m));
    if charge_id.is_none() && error_code.is_none() {
        return Err(ProcessorError::BadResponse(
            "neither charge_id nor error_code",
        ));
    }
    let parameters = match obj.get("parameters") {
        Some(Value::Object(p)) => match scrub_value(Value::Object(p.clone())) {
            Value::Object(p) => p,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    // Optional: the card network's transaction id, kept with a vaulted card for later
    // merchant-initiated charges.
    let network_transaction_id = text("network_transaction_id")?;
    Ok(ProcessorReply {
        // A decline wins over a stray charge id.
        charge_id: charge_id.filter(|_| error_code.is_none()),
        error_code,
        error_message,
        parameters,
        network_transaction_id,
    })
}

fn classify(err: &reqwest::Error) -> ProcessorError {
    if err.is_timeout() {
        ProcessorError::Timeout
    } else if err.is_connect() {
        ProcessorError::Unreachable
    } else {
        // The connection broke after the request may have been sent.
        ProcessorError::BadResponse("connection failed during the exchange")
    }
}

fn sensitive(value: &SecretText) -> Result<HeaderValue, ProcessorError> {
    let mut v = HeaderValue::from_str(value.expose()).map_err(|_| {
        ProcessorError::BadResponse("processor credential is not a valid header value")
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Processor for GenericProcessor {
    fn charge<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>> {
        Box::pin(async move {
            // The body holds card data; the buffer is zeroized when the HTTP client drops it.
            let body = Bytes::from_owner(encode(req));
            let mut request = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", req.idempotency_key)
                .timeout(req.timeout)
                .body(body);
            request = match &self.auth {
                ProcessorAuth::None => request,
                ProcessorAuth::Basic { username, password } => {
                    request.basic_auth(username, Some(password.expose()))
                }
                ProcessorAuth::Bearer(token) => request.bearer_auth(token.expose()),
                ProcessorAuth::Header { name, value } => {
                    request.header(name.clone(), sensitive(value)?)
                }
            };
            let response = request.send().await.map_err(|e| classify(&e))?;
            let status = response.status();
            if status.is_server_error() {
                return Err(ProcessorError::ServerError(status.as_u16()));
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
            {
                return Err(ProcessorError::BadResponse("answer too large"));
            }
            let bytes = response.bytes().await.map_err(|e| classify(&e))?;
            if bytes.len() > MAX_RESPONSE_BYTES {
                return Err(ProcessorError::BadResponse("answer too large"));
            }
            parse_reply(&bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_approvals_and_declines() {
        let ok =
            parse_reply(br#"{"charge_id":"ch_1","error_code":null,"error_message":null}"#).unwrap();
        assert!(ok.approved());
        let declined = parse_reply(
            br#"{"charge_id":null,"error_code":"card_declined","error_message":"declined 4111111111111111","parameters":{"x":"1"}}"#,
        )
        .unwrap();
        assert!(!declined.approved());
        assert_eq!(
            declined.error_message.as_deref(),
            Some("declined [redacted]")
        );
        assert_eq!(declined.parameters["x"], "1");
    }

    #[test]
    fn rejects_answers_without_the_required_keys() {
        for (body, why) in [
            (&b"<html>"[..], "not JSON"),
            (b"[]", "not a JSON object"),
            (b"{}", "no charge_id key"),
            (br#"{"charge_id":null}"#, "neither charge_id nor error_code"),
            (br#"{"charge_id":42}"#, "a field is not a string"),
        ] {
            assert_eq!(
                parse_reply(body).unwrap_err(),
                ProcessorError::BadResponse(why)
            );
        }
    }
}

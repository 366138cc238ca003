//! Outbound payment processor adapters, behind one trait.
//!
//! - [`profile::ProfileProcessor`] sends whatever a declarative profile (TOML, minijinja
//!   templates) describes: the built-in `stripe`, `checkout`, ..., `generic` (Twilio's Generic
//!   Pay Connector JSON forwarded to `PAYVAULT_PROCESSOR_URL`, so any gateway that already
//!   speaks that format works behind payvault), or a merchant's own file.
//! - [`sandbox::Sandbox`] is a built-in fake processor with deterministic outcomes, used
//!   in-process or served on its own by `payvault sandbox`.

pub mod profile;
pub mod sandbox;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value};

use crate::domain::{Amount, PaymentMethod};

pub use profile::IdempotencyStrategy;

/// What payvault asks the processor to do. Holds card data: it lives for one call.
#[derive(Debug)]
pub struct ProcessorRequest<'a> {
    pub transaction_id: &'a str,
    /// Sent as the `Idempotency-Key` header: the same for every attempt of one transaction, so a
    /// processor that honours it never charges twice.
    pub idempotency_key: &'a str,
    pub method: &'a PaymentMethod,
    pub amount: &'a Amount,
    pub description: Option<&'a str>,
    pub parameters: &'a BTreeMap<String, String>,
    /// Total time allowed for this call; past it the outcome is unknown.
    pub timeout: std::time::Duration,
    /// Who initiates the charge and on which stored credential.
    pub initiator: Initiator,
}

/// Who initiates a charge: a caller on the phone keying a card (customer-initiated MOTO), or the
/// merchant charging a stored token (merchant-initiated, on the stored credential).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Initiator {
    /// The cardholder gives the card over the phone: mail/telephone order.
    #[default]
    CustomerMoto,
    /// The merchant charges a stored credential without the cardholder (no CVV), citing the
    /// network transaction id of the first charge when it has one.
    Merchant {
        network_transaction_id: Option<String>,
        recurring: bool,
    },
}

/// The processor's definitive answer: approved (`charge_id`) or declined (`error_code`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorReply {
    pub charge_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub parameters: Map<String, Value>,
    /// The card network's transaction id for this charge (Visa TID, Mastercard trace id...),
    /// when the processor returns one: the anchor of later merchant-initiated charges.
    pub network_transaction_id: Option<String>,
}

/// `error_code` of a charge whose processor refused payvault's credentials (HTTP 401/403, or
/// what the profile declares): a definite failure, nothing charged.
pub const AUTH_FAILED: &str = "processor_auth_failed";
/// `error_code` of a charge whose processor refused the request itself (invalid, rate-limited:
/// what the profile declares), not a card decline: a definite failure, nothing charged.
pub const REJECTED: &str = "processor_rejected";

impl ProcessorReply {
    pub fn approved(&self) -> bool {
        self.charge_id.is_some() && self.error_code.is_none()
    }
}

/// The call failed without a definitive answer. Except for `Unreachable` the processor may have
/// charged; a retry re-sends with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("the payment processor refused the connection or could not be reached")]
    Unreachable,
    #[error("the payment processor did not answer in time; the outcome is unknown")]
    Timeout,
    #[error("the payment processor answered with HTTP {0}; the outcome is unknown")]
    ServerError(u16),
    #[error(
        "the payment processor's answer could not be understood ({0}); the outcome is unknown"
    )]
    BadResponse(&'static str),
    #[error("no payment processor is configured (set PAYVAULT_PROCESSOR_URL or PAYVAULT_PROCESSOR=sandbox)")]
    NotConfigured,
    /// An earlier attempt's outcome is unknown and this processor can neither look it up nor
    /// undo it: nothing was sent, the outcome stays unknown.
    #[error(
        "the payment processor cannot look up or undo the earlier attempt; the outcome is unknown"
    )]
    RecoveryUnavailable,
}

impl ProcessorError {
    /// Stable `error_code` for each failure kind.
    pub fn code(&self) -> &'static str {
        match self {
            ProcessorError::Unreachable => "processor_unreachable",
            ProcessorError::Timeout => "processor_timeout",
            ProcessorError::ServerError(_) => "processor_error",
            ProcessorError::BadResponse(_) => "processor_bad_response",
            ProcessorError::NotConfigured => "processor_not_configured",
            ProcessorError::RecoveryUnavailable => "processor_outcome_unknown",
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payment processor.
pub trait Processor: Send + Sync + std::fmt::Debug {
    /// Charges once, within `req.timeout`.
    fn charge<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>>;

    /// How a re-send after an unknown outcome (timeout, 5xx, unreadable answer, an attempt
    /// abandoned by a crashed instance) is made safe. The default is an idempotency key the
    /// processor honours (`Idempotency-Key`, sent on every attempt), as the sandbox does; a profile answers from its declared strategy.
    fn resend_safety(&self) -> IdempotencyStrategy {
        IdempotencyStrategy::Header
    }

    /// For [`IdempotencyStrategy::Lookup`]: what became of an earlier attempt of `req` (same
    /// transaction id and idempotency key), asked before anything is re-sent. The default
    /// cannot look anything up, so the outcome stays unknown.
    fn lookup<'a>(
        &'a self,
        _req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Lookup, ProcessorError>> {
        Box::pin(async { Ok(Lookup::Unsupported) })
    }

    /// For [`IdempotencyStrategy::Reversal`]: undoes an earlier attempt of `req` whose outcome
    /// is unknown (a timeout reversal/void), so that it can be re-sent. The default cannot, so
    /// the outcome stays unknown.
    fn reverse<'a>(
        &'a self,
        _req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Reversal, ProcessorError>> {
        Box::pin(async { Ok(Reversal::Unsupported) })
    }

    /// For `lookup`/`reversal`: how long after an attempt was sent the processor may be asked
    /// about it (a timeout reversal must not overtake the attempt it undoes). A retry sooner is
    /// answered as unknown without calling the processor.
    fn recovery_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// The name of the processor (profile) this is, stored with the network transaction ids it
    /// issues: a stored credential is cited only to the processor that issued it.
    fn name(&self) -> &str {
        "generic"
    }

    /// Whether a merchant-initiated charge may be sent without a network transaction id of this
    /// processor's (a token whose first charge went through another processor). When not, such
    /// a charge is refused before anything is sent.
    fn merchant_initiated_without_network_transaction_id(&self) -> bool {
        true
    }
}

/// What a processor knows of an earlier attempt ([`Processor::lookup`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// It was processed: its definitive answer.
    Found(ProcessorReply),
    /// The processor has no such transaction: nothing was charged, a re-send is safe.
    NotFound,
    /// This processor cannot look attempts up.
    Unsupported,
}

/// The reference (`idempotency_key`) of attempt `number` of a charge whose first attempt had
/// `first`, for a processor that undoes attempts ([`IdempotencyStrategy::Reversal`]): each
/// attempt carries its own, so that undoing one can never touch a later re-send (CyberSource
/// also wants a merchant transaction id unique per request).
pub fn attempt_reference(first: &str, number: i32) -> String {
    if number <= 1 {
        first.to_owned()
    } else {
        format!("{first}-{number}")
    }
}

/// Whether an earlier attempt was undone ([`Processor::reverse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reversal {
    /// Reversed (or voided): nothing stands charged, a re-send is safe.
    Reversed,
    /// This processor cannot reverse attempts.
    Unsupported,
}

impl IdempotencyStrategy {
    /// Whether the charge flow may re-send an attempt whose outcome is unknown. `header` and
    /// `duplicate_window` make the same request with the same key harmless; with `none` a
    /// re-send could charge twice, and `lookup`/`reversal` need a query or an undo first that
    /// only [`Processor::lookup`] / [`Processor::reverse`] can make safe (see `recovers_first`).
    pub fn allows_resend(self) -> bool {
        matches!(
            self,
            IdempotencyStrategy::Header | IdempotencyStrategy::DuplicateWindow
        )
    }

    /// Whether a retry first asks the processor about the earlier attempt ([`Processor::lookup`])
    /// or undoes it ([`Processor::reverse`]), and re-sends only if that makes it safe.
    pub fn recovers_first(self) -> bool {
        matches!(
            self,
            IdempotencyStrategy::Lookup | IdempotencyStrategy::Reversal
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdempotencyStrategy::Header => "header",
            IdempotencyStrategy::DuplicateWindow => "duplicate_window",
            IdempotencyStrategy::Lookup => "lookup",
            IdempotencyStrategy::Reversal => "reversal",
            IdempotencyStrategy::None => "none",
        }
    }
}

/// Used when no processor is configured: every charge fails clearly, tokenize still works.
#[derive(Debug)]
pub struct Unconfigured;

impl Processor for Unconfigured {
    fn charge<'a>(
        &'a self,
        _req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>> {
        Box::pin(async { Err(ProcessorError::NotConfigured) })
    }
}

/// Replaces every run of 12 or more digits (single spaces or dashes between digits allowed)
/// with `[redacted]`, and any Luhn-valid 13-19 digit sequence written with other separators
/// (dots, slashes, underscores, commas, tabs, runs of up to three of them, mixed:
/// `4111.1111.1111.1111`, `4111 - 1111 ...`, `4111 .1111-1111/1111`). Applied to
/// whatever text a processor sends back before it reaches Twilio, a log or the database, in
/// case the processor echoes a card or account number.
pub fn scrub(text: &str) -> String {
    scrub_with(text, &[], true)
}

/// Separators that may stand between the digits of one number: how people and systems write
/// card numbers (`4111 1111`, `4111-1111`, `4111.1111`, `4111/1111`, `4111_1111`, `4111,1111`,
/// tabs). A run of up to three of them joins two digit groups.
fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'-' | b'.' | b'/' | b'_' | b',')
}

/// Like [`scrub`], and also redacts digit groups equal to one of `known` (the request's own
/// PAN, CVV and account number), or containing one of at least 8 digits. With `long_runs`
/// false only `known` values are redacted (for charge ids, which may be long numbers).
pub fn scrub_with(text: &str, known: &[&str], long_runs: bool) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        // A group: digits, with runs of up to three separators between them. `plain` stays
        // true while every separator is a single space or dash (the historical grammar).
        let start = i;
        let mut digits = String::new();
        let mut end = i;
        let mut plain = true;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                digits.push(b[i] as char);
                i += 1;
                end = i;
                continue;
            }
            let run = b[i..]
                .iter()
                .take(4)
                .take_while(|&&c| is_separator(c))
                .count();
            if run == 0 || run > 3 || !b.get(i + run).is_some_and(u8::is_ascii_digit) {
                break;
            }
            if run > 1 || b[i] == b'.' {
                plain = false;
            }
            i += run;
        }
        let secret = known
            .iter()
            .any(|k| !k.is_empty() && (digits == *k || (k.len() >= 8 && digits.contains(k))));
        let card_like = if plain {
            digits.len() >= 12
        } else {
            (13..=19).contains(&digits.len()) && luhn_valid(&digits)
        };
        if secret || (long_runs && card_like) {
            out.push_str("[redacted]");
        } else {
            out.push_str(&text[start..end]);
        }
        i = end;
    }
    out
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            match (i % 2 == 1, d * 2) {
                (true, doubled) if doubled > 9 => doubled - 9,
                (true, doubled) => doubled,
                (false, _) => d,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// [`scrub`] applied to every string in a JSON value.
pub fn scrub_value(v: Value) -> Value {
    scrub_value_with(v, &[])
}

/// [`scrub_with`] (long runs included) applied to every string, key and number in a JSON value.
pub fn scrub_value_with(v: Value, known: &[&str]) -> Value {
    match v {
        Value::String(s) => Value::String(scrub_with(&s, known, true)),
        Value::Number(n) => {
            let text = n.to_string();
            if scrub_with(&text, known, true) == text {
                Value::Number(n)
            } else {
                Value::String("[redacted]".into())
            }
        }
        Value::Array(a) => {
            Value::Array(a.into_iter().map(|v| scrub_value_with(v, known)).collect())
        }
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (scrub_with(&k, known, true), scrub_value_with(v, known)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_long_digit_runs_only() {
        assert_eq!(
            scrub("card 4111111111111111 declined"),
            "card [redacted] declined"
        );
        assert_eq!(scrub("4111111111111111"), "[redacted]");
        assert_eq!(scrub("order 12345, zip 94111"), "order 12345, zip 94111");
        assert_eq!(scrub("card 4111 1111 1111 1111."), "card [redacted].");
        assert_eq!(scrub("card 4111-1111-1111-1111"), "card [redacted]");
        assert_eq!(scrub("dates 2026-11-23"), "dates 2026-11-23");
        let known = ["12345678", "737"];
        assert_eq!(
            scrub_with("acct 12345678, cvv 737, ref 7370", &known, true),
            "acct [redacted], cvv [redacted], ref 7370"
        );
        assert_eq!(scrub_with("x0012345678", &known, false), "x[redacted]");
        assert_eq!(
            scrub_with("ch_987654321098765", &known, false),
            "ch_987654321098765"
        );
        // Any separators, as long as the digits make a Luhn-valid card number.
        assert_eq!(scrub("pan 4111.1111.1111.1111 seen"), "pan [redacted] seen");
        assert_eq!(scrub("pan 4111 - 1111 - 1111 - 1111"), "pan [redacted]");
        assert_eq!(scrub("amex 3782.822463.10005."), "amex [redacted].");
        for written in [
            "4111 .1111- 1111.1111",
            "4111/1111/1111/1111",
            "4111_1111_1111_1111",
            "4111,1111,1111,1111",
            "4111\t1111\t1111\t1111",
            "5555 - 5555 - 5555 - 4444",
        ] {
            assert_eq!(
                scrub(&format!("card {written}!")),
                "card [redacted]!",
                "{written}"
            );
        }
        assert_eq!(
            scrub("on 2026/11/30, 1,000,000 USD"),
            "on 2026/11/30, 1,000,000 USD"
        );
        // This request's own values, however written, and only whole.
        let known = ["4111111111111111", "0729"];
        assert_eq!(
            scrub_with("pan 4111_1111 1111.1111 cvv 0 7 2 9", &known, false),
            "pan [redacted] cvv [redacted]"
        );
        assert_eq!(
            scrub("v 1.2.3.4.5.6.7.8.9.10.11"),
            "v 1.2.3.4.5.6.7.8.9.10.11"
        );
        assert_eq!(scrub("ip 192.168.100.200"), "ip 192.168.100.200");
        assert_eq!(
            scrub("not luhn 4111.1111.1111.1112"),
            "not luhn 4111.1111.1111.1112"
        );
        let v = serde_json::json!({"a": "x 5555555555554444", "b": 4111111111111111u64, "c": 42});
        assert_eq!(
            scrub_value(v),
            serde_json::json!({"a": "x [redacted]", "b": "[redacted]", "c": 42})
        );
    }
}

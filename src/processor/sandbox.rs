//! The sandbox: a fake payment processor with deterministic outcomes, for demos and tests.
//! Used in-process (`PAYVAULT_PROCESSOR=sandbox`) or served on its own by `payvault sandbox`,
//! which the `generic` profile can then call like a real gateway.
//!
//! Outcomes are chosen by card number (like other processors' test cards) or, since Twilio's
//! TEST mode only lets its own test cards through, by the last two digits of the amount in
//! minor units (`10.02` declines, `10.00` approves):
//!
//! | card number | amount ends in | outcome |
//! |---|---|---|
//! | 4000000000000002 | `.02` | declined: `card_declined` |
//! | 4000000000009995 | `.51` | declined: `insufficient_funds` |
//! | 4000000000000069 | `.54` | declined: `expired_card` |
//! | 4000000000000119 | `.05` | processing error: HTTP 500 |
//! | 4000000000000259 | `.12` | slow: answers after 12 s, approved |
//! | 4000000000000341 | `.99` | never answers (payvault's timeout fires) |
//! | anything else | anything else | approved |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use serde_json::Map;

use super::{BoxFuture, Processor, ProcessorError, ProcessorReply, ProcessorRequest};
use crate::domain::{Amount, PaymentMethod};

/// What the sandbox does with a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approve,
    Decline(&'static str, &'static str),
    /// Answers HTTP 500.
    ProcessingError,
    /// Approves after the sandbox's slow delay.
    Slow,
    /// Never answers.
    Hang,
}

pub fn decide(method: &PaymentMethod, amount: &Amount) -> Outcome {
    let by_card = match method {
        PaymentMethod::Card(c) => match c.number.digits() {
            "4000000000000002" => Some(2),
            "4000000000009995" => Some(51),
            "4000000000000069" => Some(54),
            "4000000000000119" => Some(5),
            "4000000000000259" => Some(12),
            "4000000000000341" => Some(99),
            _ => None,
        },
        PaymentMethod::Bank(_) => None,
    };
    match by_card.unwrap_or(amount.minor_units() % 100) {
        2 => Outcome::Decline("card_declined", "The card was declined."),
        51 => Outcome::Decline("insufficient_funds", "The card has insufficient funds."),
        54 => Outcome::Decline("expired_card", "The card has expired."),
        5 => Outcome::ProcessingError,
        12 => Outcome::Slow,
        99 => Outcome::Hang,
        _ => Outcome::Approve,
    }
}

/// The in-process sandbox. Honours idempotency keys like a real processor: the same key gets
/// the same charge id.
#[derive(Debug)]
pub struct Sandbox {
    slow: Duration,
    charges: Mutex<HashMap<String, ProcessorReply>>,
}

impl Sandbox {
    /// `slow` is how long the slow case takes (12 s by default).
    pub fn new(slow: Duration) -> Self {
        Self {
            slow,
            charges: Mutex::new(HashMap::new()),
        }
    }

    /// The sandbox's answer to a charge, after any delay its outcome calls for.
    pub async fn answer(
        &self,
        idempotency_key: &str,
        outcome: Outcome,
    ) -> Result<ProcessorReply, ProcessorError> {
        match outcome {
            Outcome::Hang => std::future::pending().await,
            Outcome::Slow => tokio::time::sleep(self.slow).await,
            _ => {}
        }
        match outcome {
            Outcome::ProcessingError => Err(ProcessorError::ServerError(500)),
            Outcome::Decline(code, message) => Ok(ProcessorReply {
                charge_id: None,
                error_code: Some(code.to_owned()),
                error_message: Some(message.to_owned()),
                parameters: Map::new(),
                network_transaction_id: None,
            }),
            _ => {
                let mut charges = self
                    .charges
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let reply = charges
                    .entry(idempotency_key.to_owned())
                    .or_insert_with(|| {
                        let mut id = [0u8; 12];
                        OsRng.fill_bytes(&mut id);
                        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                        ProcessorReply {
                            charge_id: Some(format!("ch_sandbox_{hex}")),
                            error_code: None,
                            error_message: None,
                            parameters: Map::new(),
                            network_transaction_id: None,
                        }
                    });
                Ok(reply.clone())
            }
        }
    }
}

impl Processor for Sandbox {
    fn charge<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>> {
        Box::pin(async move {
            let outcome = decide(req.method, req.amount);
            // The call's timeout applies here as the profile engine applies it.
            tokio::time::timeout(req.timeout, self.answer(req.idempotency_key, outcome))
                .await
                .unwrap_or(Err(ProcessorError::Timeout))
        })
    }

    fn name(&self) -> &str {
        "sandbox"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Card, CardNumber, Expiry};

    fn card(pan: &str) -> PaymentMethod {
        PaymentMethod::Card(Card {
            number: CardNumber::parse(pan.into()).unwrap_or_else(|e| panic!("{pan}: {e}")),
            expiry: Expiry::from_stored(8, 2035).unwrap(),
            cvv: None,
            postal_code: None,
        })
    }

    #[test]
    fn documented_cards_and_amounts_choose_their_outcome() {
        let usd = |a: &str| Amount::parse(a, "USD").unwrap();
        let cases = [
            (
                "4000000000000002",
                Outcome::Decline("card_declined", "The card was declined."),
            ),
            (
                "4000000000009995",
                Outcome::Decline("insufficient_funds", "The card has insufficient funds."),
            ),
            (
                "4000000000000069",
                Outcome::Decline("expired_card", "The card has expired."),
            ),
            ("4000000000000119", Outcome::ProcessingError),
            ("4000000000000259", Outcome::Slow),
            ("4000000000000341", Outcome::Hang),
            ("4111111111111111", Outcome::Approve),
        ];
        for (pan, outcome) in cases {
            assert_eq!(decide(&card(pan), &usd("10.00")), outcome, "{pan}");
        }
        let visa = card("4111111111111111");
        assert_eq!(decide(&visa, &usd("3.02")), cases[0].1);
        assert_eq!(decide(&visa, &usd("3.99")), Outcome::Hang);
        assert_eq!(decide(&visa, &usd("3.12")), Outcome::Slow);
        assert_eq!(
            decide(&visa, &Amount::parse("1002", "JPY").unwrap()),
            cases[0].1
        );
    }

    #[tokio::test]
    async fn same_idempotency_key_same_charge_id() {
        let sandbox = Sandbox::new(Duration::ZERO);
        let a = sandbox.answer("k", Outcome::Approve).await.unwrap();
        let b = sandbox.answer("k", Outcome::Approve).await.unwrap();
        let c = sandbox.answer("other", Outcome::Approve).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a.charge_id, c.charge_id);
    }
}

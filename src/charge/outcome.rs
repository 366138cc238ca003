//! Step 3: the processor call and its outcome, recorded (or, for a retry of a finished charge,
//! replayed from the record).

use std::time::Instant;

use serde_json::{Map, Value};

use super::claim::Attempt;
use super::{ChargeError, ChargeOutcome, ChargeRequest, Charged, Charger, Source};
use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::crypto::CryptoError;
use crate::domain::PaymentMethod;
use crate::processor::{
    attempt_reference, scrub_value_with, scrub_with, IdempotencyStrategy, Initiator, Lookup,
    Processor, ProcessorError, ProcessorReply, ProcessorRequest, Reversal, AUTH_FAILED, REJECTED,
};
use crate::store;
use crate::store::audit::AuditBatch;
use crate::store::charges::{ChargeRecord, ChargeState, FinishedCharge};

/// The processor's answer to one attempt.
pub(super) struct ProcessorResult {
    result: Result<ProcessorReply, ProcessorError>,
    latency_ms: u64,
}

impl Charger {
    /// Sends the attempt to the processor, timed and counted.
    pub(super) async fn call_processor(
        &self,
        req: &ChargeRequest,
        method: &PaymentMethod,
        attempt: &Attempt,
        initiator: Initiator,
    ) -> ProcessorResult {
        let params = req.parameters.clone();
        // With `reversal` every attempt has its own reference, so undoing the earlier ones can
        // never touch this one; the other strategies re-send under the first attempt's.
        let reference = match attempt.recover {
            Some(IdempotencyStrategy::Reversal) => {
                attempt_reference(&attempt.processor_key, attempt.number)
            }
            _ => attempt.processor_key.clone(),
        };
        let call = ProcessorRequest {
            transaction_id: &req.key,
            idempotency_key: &reference,
            method,
            amount: &req.amount,
            description: req.description.as_deref(),
            parameters: &params,
            timeout: attempt.timeout,
            initiator,
        };
        let call_started = Instant::now();
        // A lookup or reversals and the sale after them share the attempt's time, so that the
        // attempt ends within its lease and no other instance takes over while a request of
        // this one may still be on its way.
        let deadline = call_started + attempt.timeout;
        let result = match attempt.recover {
            None => self.processor.charge(&call).await,
            // Ask what became of the earlier attempt; re-send only if the processor never saw it.
            Some(IdempotencyStrategy::Lookup) => match self.processor.lookup(&call).await {
                Ok(Lookup::Found(reply)) => Ok(reply),
                Ok(Lookup::NotFound) => self.charge_by(&call, deadline).await,
                Ok(Lookup::Unsupported) => Err(ProcessorError::RecoveryUnavailable),
                Err(e) => Err(e),
            },
            // Undo every earlier attempt (each may have reached the processor, or not); re-send
            // only once each is confirmed undone.
            Some(_) => match self.reverse_earlier(&call, attempt, deadline).await {
                Ok(()) => self.charge_by(&call, deadline).await,
                Err(e) => Err(e),
            },
        };
        let latency_ms = call_started.elapsed().as_millis() as u64;
        let kind = match &result {
            Ok(r) if r.approved() => "approved",
            // Refusals of payvault's credentials or request: worth an alert of their own.
            Ok(r) if r.error_code.as_deref() == Some(AUTH_FAILED) => AUTH_FAILED,
            Ok(r) if r.error_code.as_deref() == Some(REJECTED) => REJECTED,
            Ok(_) => "declined",
            Err(e) => e.code(),
        };
        metrics::counter!("payvault_processor_calls_total", "outcome" => kind).increment(1);
        metrics::histogram!("payvault_processor_call_duration_seconds", "outcome" => kind)
            .record(call_started.elapsed().as_secs_f64());
        ProcessorResult { result, latency_ms }
    }

    /// Reverses attempts 1 to `attempt.number - 1` of `call`, each by its own reference, stopping
    /// at the first that is not confirmed.
    async fn reverse_earlier(
        &self,
        call: &ProcessorRequest<'_>,
        attempt: &Attempt,
        deadline: Instant,
    ) -> Result<(), ProcessorError> {
        for number in 1..attempt.number {
            let reference = attempt_reference(&attempt.processor_key, number);
            let earlier = ProcessorRequest {
                idempotency_key: &reference,
                initiator: call.initiator.clone(),
                timeout: time_left(deadline)?,
                ..*call
            };
            match self.processor.reverse(&earlier).await? {
                Reversal::Reversed => {}
                Reversal::Unsupported => return Err(ProcessorError::RecoveryUnavailable),
            }
        }
        Ok(())
    }

    /// Sends the sale of `call` with what is left of the attempt's time.
    async fn charge_by(
        &self,
        call: &ProcessorRequest<'_>,
        deadline: Instant,
    ) -> Result<ProcessorReply, ProcessorError> {
        let call = ProcessorRequest {
            timeout: time_left(deadline)?,
            initiator: call.initiator.clone(),
            ..*call
        };
        self.processor.charge(&call).await
    }

    /// Records the attempt's outcome, its audit event, and (for `save_card`) the new vault
    /// entry, in one transaction; with them the network transaction id of an approved charge,
    /// stored with its token once (`ntid_stored`: the charged token already has one).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_outcome(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        method: &PaymentMethod,
        attempt: &Attempt,
        processed: ProcessorResult,
        mut event: AuditEvent,
        ntid_stored: bool,
    ) -> Result<Charged, ChargeError> {
        let ntid = network_transaction_id(&processed.result, method);
        let (state, mut outcome) = outcome_of(processed.result);
        scrub_card_data(&mut outcome, method);
        let resend = self.processor.resend_safety();
        if state == ChargeState::Unknown && attempt.recover.is_some() {
            // The earlier attempt could not be looked up or undone (or its re-send was lost too):
            // still unknown, and said so as a retry of a held charge is.
            outcome.error_code = Some(OUTCOME_UNKNOWN.into());
        }
        if state == ChargeState::Unknown {
            let label = if resend.allows_resend() {
                "allowed"
            } else if resend.recovers_first() {
                if let Some(m) = &mut outcome.error_message {
                    m.push_str(UNKNOWN_RECOVER);
                }
                "recover"
            } else {
                if let Some(m) = &mut outcome.error_message {
                    m.push_str(UNKNOWN_HELD);
                }
                "never"
            };
            metrics::counter!("payvault_charges_unknown_total", "resend" => label).increment(1);
        }

        // Only `save_card` needs a transaction (a vault entry beside the outcome); otherwise the
        // outcome and its audit event are one statement.
        let mut tx = None;
        let mut saved = None;
        let mut ntid_saved = false;
        match &req.source {
            Source::Token(t) => {
                outcome.token_id = Some(t.as_str().to_owned());
                // The first charge of a tokenized card that returns one anchors later ones.
                if let (Some(ntid), false) = (&ntid, ntid_stored) {
                    let tx = tx.insert(self.pool.begin().await?);
                    ntid_saved = store::vault::set_network_transaction_id(
                        &mut **tx,
                        who.tenant_id,
                        t.as_str(),
                        ntid,
                        self.processor.name(),
                    )
                    .await?;
                }
            }
            Source::Payment(m) if req.save_card && outcome.approved() => {
                let tx = tx.insert(self.pool.begin().await?);
                let token = self
                    .vault
                    .insert_entry(tx, who, m, req.token_expires_at)
                    .await?;
                if let Some(ntid) = &ntid {
                    ntid_saved = store::vault::set_network_transaction_id(
                        &mut **tx,
                        who.tenant_id,
                        &token,
                        ntid,
                        self.processor.name(),
                    )
                    .await?;
                }
                // Ours are added without clobbering the processor's parameters.
                let key = if outcome.parameters.contains_key("token_id") {
                    "payvault_token_id"
                } else {
                    "token_id"
                };
                outcome
                    .parameters
                    .insert(key.to_owned(), Value::String(token.clone()));
                outcome.token_id = Some(token.clone());
                saved = Some(token);
            }
            Source::Payment(_) => {}
        }
        let unrecorded = event.clone();
        event.details = serde_json::json!({
            "attempt": attempt.number,
            "state": state,
            "charge_id": outcome.charge_id,
            "processor_latency_ms": processed.latency_ms,
            "kind": method.kind(),
            "saved_token": saved,
            // Whether a network transaction id was stored with the token: never the id.
            "network_transaction_id_stored": ntid_saved,
        });
        if let Some(token) = &outcome.token_id {
            event.token = Some(token.clone());
        }
        if let Some(code) = &outcome.error_code {
            event = event.failed(code.clone());
        }
        let stored = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        let finish = FinishedCharge {
            credential_id: who.id,
            key: &req.key,
            attempt: attempt.number,
            state,
            outcome: &stored,
            token: saved.as_deref(),
        };
        let events = AuditBatch::one(self.vault.signer(), &event)?;
        let finished = match tx {
            Some(mut tx) => {
                let finished = store::charges::finish_charge(&mut *tx, &finish, &events).await?;
                if finished {
                    tx.commit().await?;
                }
                // Otherwise the transaction rolls back when dropped.
                finished
            }
            None => store::charges::finish_charge(&self.pool, &finish, &events).await?,
        };
        if !finished {
            // This attempt outlived its lease and another took over: that one's outcome stands.
            return match store::charges::find_charge_record(&self.pool, who.id, &req.key).await? {
                Some(rec) if rec.state.is_final() => self.replay(rec, unrecorded).await,
                _ => Err(ChargeError::InProgress),
            };
        }
        tracing::info!(
            state = ?state,
            attempt = attempt.number,
            latency_ms = processed.latency_ms,
            error_code = outcome.error_code.as_deref(),
            "charge recorded"
        );
        Ok(Charged {
            outcome,
            replayed: false,
        })
    }

    /// Answers a retry of a charge whose outcome is unknown and which the processor cannot
    /// safely be asked again: the processor is not called, the charge waits for
    /// reconciliation. Audited as a replay.
    pub(super) async fn answer_unknown(
        &self,
        earlier: ChargeOutcome,
        mut event: AuditEvent,
    ) -> Result<Charged, ChargeError> {
        let outcome = ChargeOutcome {
            charge_id: None,
            error_code: Some(OUTCOME_UNKNOWN.into()),
            error_message: Some(unknown_message(&*self.processor)),
            parameters: Map::new(),
            token_id: earlier.token_id,
        };
        event.details = serde_json::json!({
            "replayed": true,
            "held_for_reconciliation": true,
            "earlier_error_code": earlier.error_code,
        });
        event = event.failed(OUTCOME_UNKNOWN);
        self.vault.record_event(&event).await?;
        Ok(Charged {
            outcome,
            replayed: true,
        })
    }

    /// Answers from a finished record, auditing the replay.
    pub(super) async fn replay(
        &self,
        rec: ChargeRecord,
        mut event: AuditEvent,
    ) -> Result<Charged, ChargeError> {
        // A final record without an outcome had it purged after the retention period.
        let outcome: ChargeOutcome =
            rec.outcome.ok_or(ChargeError::AnswerPurged).and_then(|o| {
                serde_json::from_value(o).map_err(|_| ChargeError::Crypto(CryptoError::Malformed))
            })?;
        event.details = serde_json::json!({ "replayed": true, "charge_id": outcome.charge_id });
        if let Some(code) = &outcome.error_code {
            event = event.failed(code.clone());
        }
        self.vault.record_event(&event).await?;
        Ok(Charged {
            outcome,
            replayed: true,
        })
    }
}

/// The time left before `deadline`; none left is a timeout before anything more is sent.
fn time_left(deadline: Instant) -> Result<std::time::Duration, ProcessorError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ProcessorError::Timeout)
    } else {
        Ok(left)
    }
}

/// Why a retry of a charge whose outcome is unknown is not sent to the processor.
fn unknown_message(processor: &dyn Processor) -> String {
    let strategy = processor.resend_safety();
    if strategy.recovers_first() {
        let op = match strategy {
            IdempotencyStrategy::Lookup => "looks it up",
            _ => "undoes it",
        };
        return format!(
            "an earlier attempt of this charge got no definitive answer from the payment \
             processor; payvault {op} with the processor before sending anything, no sooner \
             than {} s after that attempt: retry later, or check the charge with the processor",
            processor.recovery_delay().as_secs()
        );
    }
    format!(
        "an earlier attempt of this charge got no definitive answer from the payment processor, \
         which cannot safely be asked again (idempotency: {}); payvault does not re-send it: \
         check the charge with the processor before charging again",
        strategy.as_str()
    )
}

/// The answer to a retry of a charge whose outcome is unknown and is not re-sent.
pub const OUTCOME_UNKNOWN: &str = "processor_outcome_unknown";

/// Added to the message of an unknown outcome that will not be re-sent.
const UNKNOWN_HELD: &str = "; this processor cannot safely be asked again, so payvault will not \
     re-send it: the charge is held for reconciliation";

/// Added to the message of an unknown outcome that a retry looks up or reverses first.
const UNKNOWN_RECOVER: &str =
    "; payvault will not re-send it before the processor says what became \
     of it (lookup) or has undone it (reversal): until then it is held for reconciliation";

/// The network transaction id of an approved charge, if the processor returned a plausible one
/// (not containing this request's card or account number).
fn network_transaction_id(
    result: &Result<ProcessorReply, ProcessorError>,
    method: &PaymentMethod,
) -> Option<String> {
    let ntid = match result {
        Ok(reply) if reply.approved() => reply.network_transaction_id.as_deref()?.trim(),
        _ => return None,
    };
    let known = method.secret_digits();
    let long_known: Vec<&str> = known.iter().copied().filter(|k| k.len() >= 8).collect();
    let plausible = (1..=255).contains(&ntid.len())
        && ntid.chars().all(|c| c.is_ascii_graphic())
        && scrub_with(ntid, &long_known, false) == ntid;
    plausible.then(|| ntid.to_owned())
}

/// The record's new state and the answer a retry will get back.
fn outcome_of(result: Result<ProcessorReply, ProcessorError>) -> (ChargeState, ChargeOutcome) {
    match result {
        Ok(reply) if reply.approved() => (
            ChargeState::Succeeded,
            ChargeOutcome {
                charge_id: reply.charge_id,
                error_code: None,
                error_message: None,
                parameters: reply.parameters,
                token_id: None,
            },
        ),
        Ok(reply) => (
            ChargeState::Failed,
            ChargeOutcome {
                charge_id: None,
                error_code: reply.error_code,
                error_message: reply.error_message,
                parameters: reply.parameters,
                token_id: None,
            },
        ),
        Err(e) => (
            ChargeState::Unknown,
            ChargeOutcome {
                charge_id: None,
                error_code: Some(e.code().to_owned()),
                error_message: Some(e.to_string()),
                parameters: Map::new(),
                token_id: None,
            },
        ),
    }
}

/// Whatever the processor sent back must not carry this request's card data.
fn scrub_card_data(outcome: &mut ChargeOutcome, method: &PaymentMethod) {
    let known = method.secret_digits();
    // Charge ids are often numbers: only a full card or account number is redacted there.
    let long_known: Vec<&str> = known.iter().copied().filter(|k| k.len() >= 8).collect();
    outcome.charge_id = outcome
        .charge_id
        .take()
        .map(|c| scrub_with(&c, &long_known, false));
    outcome.error_code = outcome
        .error_code
        .take()
        .map(|c| scrub_with(&c, &known, true));
    outcome.error_message = outcome
        .error_message
        .take()
        .map(|m| scrub_with(&m, &known, true));
    outcome.parameters = match scrub_value_with(
        Value::Object(std::mem::take(&mut outcome.parameters)),
        &known,
    ) {
        Value::Object(p) => p,
        _ => Map::new(),
    };
}

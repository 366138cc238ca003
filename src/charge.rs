//! The charge flow: forward a card (or a card resolved from a token) to the processor exactly
//! once per (credential, idempotency key), across any number of payvault instances.
//!
//! State machine of a charge's idempotency record (all transitions in Postgres):
//!
//! ```text
//!   (none) --claim--> in_flight --processor approved--> succeeded   (final, replayed)
//!                         |      --processor declined--> failed      (final, replayed)
//!                         |      --timeout / 5xx / bad answer / unreachable--> unknown
//!                         +-- lease expired (instance died) --+
//!   unknown | expired in_flight --retry takes over--> in_flight (same processor key)
//! ```
//!
//! - A retry of a final record gets the stored outcome: the same `charge_id`, byte for byte.
//! - A retry while another attempt is in flight waits for it, polling the record, for at most
//!   `wait` (below Twilio's 10 s), and never calls the processor itself.
//! - A retry of an `unknown` outcome re-sends with the same processor idempotency key, fixed at
//!   the first attempt, so a processor that honours it cannot charge twice.
//! - The same key with a different payload is refused as a duplicate.
//!
//! Every attempt and every outcome is audited in the transaction that records it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::audit::{AuditEvent, Origin};
use crate::auth::Principal;
use crate::crypto::CryptoError;
use crate::domain::{Amount, Expiry, InvalidInput, PaymentMethod, Token};
use crate::processor::{
    scrub_value_with, scrub_with, Processor, ProcessorError, ProcessorReply, ProcessorRequest,
};
use crate::store;
use crate::store::charges::NewCharge;
use crate::store::vault::StoredEntry;
use crate::vault::Vault;

/// Where the money comes from.
#[derive(Debug)]
pub enum Source {
    /// Card or bank data in the request.
    Payment(PaymentMethod),
    /// A stored token (recurring billing: no CVV).
    Token(Token),
}

/// A validated charge request.
#[derive(Debug)]
pub struct ChargeRequest {
    /// Twilio's `transaction_id`, or the merchant's `Idempotency-Key`.
    pub key: String,
    pub source: Source,
    pub amount: Amount,
    /// Also vault the card and return its token (`<Parameter name="save_card" value="true">`).
    pub save_card: bool,
    /// Expiry of the token `save_card` creates.
    pub token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub description: Option<String>,
    pub parameters: BTreeMap<String, String>,
}

/// A charge's result as stored for replay and rendered by each interface. Never card data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeOutcome {
    pub charge_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The token of a card vaulted by this charge, or the token charged.
    pub token_id: Option<String>,
}

impl ChargeOutcome {
    pub fn approved(&self) -> bool {
        self.charge_id.is_some() && self.error_code.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Charged {
    pub outcome: ChargeOutcome,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("{0}")]
    Invalid(InvalidInput),
    #[error("no such token")]
    UnknownToken,
    #[error("the token was deleted")]
    TokenDeleted,
    #[error("the token has expired")]
    TokenExpired,
    #[error("this idempotency key was already used for a different request")]
    Duplicate,
    #[error("an earlier attempt with this idempotency key is still in progress; retry shortly")]
    InProgress,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("key error")]
    Crypto(#[from] CryptoError),
}

impl ChargeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChargeError::Invalid(i) => i.code(),
            ChargeError::UnknownToken => "unknown_token",
            ChargeError::TokenDeleted => "token_deleted",
            ChargeError::TokenExpired => "token_expired",
            ChargeError::Duplicate => "duplicate_transaction",
            ChargeError::InProgress => "transaction_in_progress",
            ChargeError::Database(_) | ChargeError::Crypto(_) => "internal_error",
        }
    }
}

/// Charges through a processor.
#[derive(Debug, Clone)]
pub struct Charger {
    pub vault: Vault,
    pub processor: Arc<dyn Processor>,
    /// How long a retry waits for an in-flight attempt before answering `transaction_in_progress`.
    pub wait: Duration,
    /// How long an in-flight attempt is presumed alive: the processor timeout plus a margin.
    pub lease: Duration,
    /// Total time allowed for a first attempt's processor call.
    pub processor_timeout: Duration,
}

/// The least time a re-sent attempt gets, however little is left of the caller's wait.
const MIN_RESEND_TIMEOUT: Duration = Duration::from_secs(1);

const POLL_START: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(200);

impl Charger {
    pub async fn charge(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &ChargeRequest,
        started: Instant,
    ) -> Result<Charged, ChargeError> {
        let base_event = self.base_event(who, origin, req);
        let result = self.charge_inner(who, req, started, &base_event).await;
        if let Err(e) = &result {
            if !matches!(e, ChargeError::Database(_)) {
                let event = base_event.clone().failed(e.code());
                store::audit::insert_audit_event(self.vault.pool(), &event).await?;
            }
        }
        result
    }

    fn base_event(&self, who: &Principal, origin: &Origin, req: &ChargeRequest) -> AuditEvent {
        let mut event = AuditEvent::by(who, origin, "charge");
        event.transaction_id = Some(req.key.clone());
        event.amount_minor = Some(req.amount.minor_units());
        event.currency = Some(req.amount.currency().to_owned());
        match &req.source {
            Source::Payment(m) => event.masked_data = Some(m.masked()),
            Source::Token(t) => event.token = Some(t.as_str().to_owned()),
        }
        event
    }

    async fn charge_inner(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        started: Instant,
        base_event: &AuditEvent,
    ) -> Result<Charged, ChargeError> {
        let keys = self.vault.keys();
        let mac_version = keys.current_version();
        let mac_input = self.mac_input(req);
        let request_mac = keys.request_mac(mac_version, &[b"charge", &mac_input])?;
        let processor_key = self.processor_key(who, req)?;

        // Resolve a token before claiming: an unknown or expired token is refused without
        // taking the key. A retry of a finished token charge is answered from its record even
        // if the token has been deleted or has expired since.
        // The connection that resolved the token also makes the first claim: one checkout.
        let mut conn = Some(self.vault.pool().acquire().await?);
        let resolved;
        let method = match &req.source {
            Source::Payment(m) => m,
            Source::Token(token) => {
                let db = conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)?;
                resolved = match self.resolve(db, token).await {
                    Ok(method) => method,
                    Err(
                        e @ (ChargeError::UnknownToken
                        | ChargeError::TokenDeleted
                        | ChargeError::TokenExpired
                        | ChargeError::Invalid(_)),
                    ) => {
                        let db = conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)?;
                        let rec = store::charges::find_charge_record(db, who.id, &req.key).await?;
                        // One connection at a time, even with a pool of one.
                        drop(conn.take());
                        return match rec {
                            Some(rec)
                                if matches!(rec.state.as_str(), "succeeded" | "failed")
                                    && self.same_request(&rec, &mac_input)? =>
                            {
                                self.replay(rec, base_event.clone()).await
                            }
                            _ => Err(e),
                        };
                    }
                    Err(e) => return Err(e),
                };
                &resolved
            }
        };
        let mut event = base_event.clone();
        if event.masked_data.is_none() {
            event.masked_data = Some(method.masked());
        }

        let (attempt, processor_key, timeout) = loop {
            let mut db = match conn.take() {
                Some(c) => c,
                None => self.vault.pool().acquire().await?,
            };
            let claimed = self
                .claim(
                    &mut db,
                    who,
                    req,
                    &request_mac,
                    mac_version,
                    &processor_key,
                    &event,
                )
                .await?;
            // Never held while waiting for another attempt or calling the processor.
            drop(db);
            if let Some(attempt) = claimed {
                break (attempt, processor_key.clone(), self.processor_timeout);
            }
            let Some(rec) =
                store::charges::find_charge_record(self.vault.pool(), who.id, &req.key).await?
            else {
                continue; // The claim we lost to was rolled back: try again.
            };
            if !self.same_request(&rec, &mac_input)? {
                return Err(ChargeError::Duplicate);
            }
            match rec.state.as_str() {
                "succeeded" | "failed" => return self.replay(rec, event).await,
                "unknown" => {}
                _ if rec.lease_expired => {}
                _ => {
                    // In flight elsewhere: wait for it rather than calling the processor again.
                    if started.elapsed() >= self.wait {
                        return Err(ChargeError::InProgress);
                    }
                    self.wait_for_change(who, &req.key, rec.attempts, started)
                        .await?;
                    continue;
                }
            }
            // Take over, auditing the new attempt in the same transaction.
            let mut tx = self.vault.pool().begin().await?;
            let taken = store::charges::take_over_charge(
                &mut *tx,
                who.id,
                &req.key,
                rec.attempts,
                self.lease,
            )
            .await?;
            if let Some(attempt) = taken {
                let mut retry = event.clone();
                retry.action = "charge_attempt";
                retry.details =
                    serde_json::json!({ "attempt": attempt, "resumed_from": rec.state });
                store::audit::insert_audit_event(&mut *tx, &retry).await?;
                tx.commit().await?;
                // A re-send must finish within this caller's window, or its answer would reach
                // no one and the next retry would find it still in flight. The processor
                // deduplicates on the key, so a short re-send is safe.
                let remaining = self
                    .wait
                    .saturating_sub(started.elapsed())
                    .max(MIN_RESEND_TIMEOUT);
                let key = rec.processor_key.unwrap_or_else(|| processor_key.clone());
                break (attempt, key, remaining.min(self.processor_timeout));
            }
            tx.rollback().await?;
        };

        let params = req.parameters.clone();
        let call = ProcessorRequest {
            transaction_id: &req.key,
            idempotency_key: &processor_key,
            method,
            amount: &req.amount,
            description: req.description.as_deref(),
            parameters: &params,
            timeout,
            initiator: Default::default(),
        };
        let call_started = Instant::now();
        let result = self.processor.charge(&call).await;
        let latency_ms = call_started.elapsed().as_millis() as u64;
        let kind = match &result {
            Ok(r) if r.approved() => "approved",
            Ok(_) => "declined",
            Err(e) => e.code(),
        };
        metrics::counter!("payvault_processor_calls_total", "outcome" => kind).increment(1);
        metrics::histogram!("payvault_processor_call_duration_seconds", "outcome" => kind)
            .record(call_started.elapsed().as_secs_f64());
        self.record(who, req, method, attempt, result, latency_ms, event)
            .await
    }

    fn same_request(
        &self,
        rec: &store::charges::ChargeRecord,
        mac_input: &[u8],
    ) -> Result<bool, ChargeError> {
        if rec.operation != "charge" {
            return Ok(false);
        }
        let mac = self
            .vault
            .keys()
            .request_mac(rec.mac_key_version, &[b"charge", mac_input])?;
        Ok(bool::from(mac.ct_eq(rec.request_mac.as_slice())))
    }

    /// Answers from a finished record, auditing the replay.
    async fn replay(
        &self,
        rec: store::charges::ChargeRecord,
        mut event: AuditEvent,
    ) -> Result<Charged, ChargeError> {
        let outcome: ChargeOutcome = rec
            .outcome
            .and_then(|o| serde_json::from_value(o).ok())
            .ok_or(ChargeError::Crypto(CryptoError::Malformed))?;
        event.details = serde_json::json!({ "replayed": true, "charge_id": outcome.charge_id });
        if let Some(code) = &outcome.error_code {
            event = event.failed(code.clone());
        }
        store::audit::insert_audit_event(self.vault.pool(), &event).await?;
        Ok(Charged {
            outcome,
            replayed: true,
        })
    }

    /// Inserts the claim and the attempt's audit event together. `Some(1)` when claimed.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        db: &mut sqlx::PgConnection,
        who: &Principal,
        req: &ChargeRequest,
        request_mac: &[u8],
        mac_version: i32,
        processor_key: &str,
        event: &AuditEvent,
    ) -> Result<Option<i32>, ChargeError> {
        let mut resolve = None;
        if let Source::Token(token) = &req.source {
            let mut e = event.clone();
            e.action = "token_resolve";
            e.token = Some(token.as_str().to_owned());
            resolve = Some(e);
        }
        let mut attempt = event.clone();
        attempt.action = "charge_attempt";
        attempt.details = serde_json::json!({ "attempt": 1 });
        let events: Vec<&AuditEvent> = resolve.iter().chain([&attempt]).collect();
        // The claim and its audit events are one statement: one round trip, one commit.
        let claimed = store::charges::claim_new_charge(
            db,
            &NewCharge {
                credential_id: who.id,
                key: &req.key,
                request_mac,
                mac_key_version: mac_version,
                processor_key,
                lease: self.lease,
            },
            &store::audit::events_json(&events),
        )
        .await?;
        Ok(claimed.then_some(1))
    }

    /// Polls the record until its attempt counter or state moves, or the wait runs out.
    async fn wait_for_change(
        &self,
        who: &Principal,
        key: &str,
        attempts: i32,
        started: Instant,
    ) -> Result<(), ChargeError> {
        let mut delay = POLL_START;
        while started.elapsed() < self.wait {
            tokio::time::sleep(delay.min(self.wait.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(POLL_MAX);
            let rec = store::charges::find_charge_record(self.vault.pool(), who.id, key).await?;
            match rec {
                Some(r) if r.state == "in_flight" && r.attempts == attempts && !r.lease_expired => {
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Records the attempt's outcome, its audit event, and (for `save_card`) the new vault
    /// entry, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        method: &PaymentMethod,
        attempt: i32,
        result: Result<ProcessorReply, ProcessorError>,
        latency_ms: u64,
        mut event: AuditEvent,
    ) -> Result<Charged, ChargeError> {
        let (state, mut outcome) = match result {
            Ok(reply) if reply.approved() => (
                "succeeded",
                ChargeOutcome {
                    charge_id: reply.charge_id,
                    error_code: None,
                    error_message: None,
                    parameters: reply.parameters,
                    token_id: None,
                },
            ),
            Ok(reply) => (
                "failed",
                ChargeOutcome {
                    charge_id: None,
                    error_code: reply.error_code,
                    error_message: reply.error_message,
                    parameters: reply.parameters,
                    token_id: None,
                },
            ),
            Err(e) => (
                "unknown",
                ChargeOutcome {
                    charge_id: None,
                    error_code: Some(e.code().to_owned()),
                    error_message: Some(e.to_string()),
                    parameters: Map::new(),
                    token_id: None,
                },
            ),
        };

        // Whatever the processor sent back must not carry this request's card data.
        let known = method.secret_digits();
        // Charge ids are often numbers: only a full card or account number is redacted there.
        let long_known: Vec<&str> = known.iter().copied().filter(|k| k.len() >= 8).collect();
        outcome.charge_id = outcome
            .charge_id
            .map(|c| scrub_with(&c, &long_known, false));
        outcome.error_code = outcome.error_code.map(|c| scrub_with(&c, &known, true));
        outcome.error_message = outcome.error_message.map(|m| scrub_with(&m, &known, true));
        outcome.parameters = match scrub_value_with(
            Value::Object(std::mem::take(&mut outcome.parameters)),
            &known,
        ) {
            Value::Object(p) => p,
            _ => Map::new(),
        };

        // Only `save_card` needs a transaction (a vault entry beside the outcome); otherwise the
        // outcome and its audit event are one statement.
        let mut tx = None;
        let mut saved = None;
        match &req.source {
            Source::Token(t) => outcome.token_id = Some(t.as_str().to_owned()),
            Source::Payment(m) if req.save_card && outcome.approved() => {
                let tx = tx.insert(self.vault.pool().begin().await?);
                let token = self
                    .vault
                    .insert_entry(tx, who, m, req.token_expires_at)
                    .await?;
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
            "attempt": attempt,
            "state": state,
            "charge_id": outcome.charge_id,
            "processor_latency_ms": latency_ms,
            "kind": method.kind(),
            "saved_token": saved,
        });
        if let Some(token) = &outcome.token_id {
            event.token = Some(token.clone());
        }
        if let Some(code) = &outcome.error_code {
            event = event.failed(code.clone());
        }
        let stored = serde_json::to_value(&outcome).unwrap_or(Value::Null);
        let events = store::audit::events_json(&[&event]);
        let mut conn;
        let db: &mut sqlx::PgConnection = match &mut tx {
            Some(tx) => tx,
            None => {
                conn = self.vault.pool().acquire().await?;
                &mut conn
            }
        };
        let finished = store::charges::finish_charge(
            db,
            who.id,
            &req.key,
            attempt,
            state,
            &stored,
            saved.as_deref(),
            &events,
        )
        .await?;
        if let (true, Some(tx)) = (finished, tx) {
            tx.commit().await?;
        }
        if !finished {
            // This attempt outlived its lease and another took over: that one's outcome stands.
            // (An open transaction rolls back when dropped.)
            return match store::charges::find_charge_record(self.vault.pool(), who.id, &req.key)
                .await?
            {
                Some(rec) if matches!(rec.state.as_str(), "succeeded" | "failed") => {
                    self.replay(rec, unrecorded).await
                }
                _ => Err(ChargeError::InProgress),
            };
        }
        tracing::info!(
            state,
            attempt,
            latency_ms,
            error_code = outcome.error_code.as_deref(),
            "charge recorded"
        );
        Ok(Charged {
            outcome,
            replayed: false,
        })
    }

    /// Decrypts a stored token's card or bank account, in memory only, for one outbound call.
    async fn resolve(
        &self,
        db: &mut sqlx::PgConnection,
        token: &Token,
    ) -> Result<PaymentMethod, ChargeError> {
        let entry = store::vault::find_entry(db, token.as_str())
            .await?
            .ok_or(ChargeError::UnknownToken)?;
        let (sealed, exp_month, exp_year) = match entry {
            StoredEntry::Active {
                sealed,
                exp_month,
                exp_year,
                ..
            } => (sealed, exp_month, exp_year),
            StoredEntry::Deleted => return Err(ChargeError::TokenDeleted),
            StoredEntry::Expired => return Err(ChargeError::TokenExpired),
        };
        let plain = self.vault.keys().open(token.as_str(), &sealed)?;
        let expiry = match (exp_month, exp_year) {
            (Some(m), Some(y)) => {
                Expiry::from_stored(u8::try_from(m).unwrap_or(0), u16::try_from(y).unwrap_or(0))
            }
            _ => None,
        };
        let method = PaymentMethod::from_secret_payload(&plain, expiry)
            .ok_or(ChargeError::Crypto(CryptoError::Malformed))?;
        if let PaymentMethod::Card(c) = &method {
            if c.expiry.is_expired(chrono::Utc::now().date_naive()) {
                return Err(ChargeError::Invalid(InvalidInput::StoredCardExpired));
            }
        }
        Ok(method)
    }

    /// What makes two charge requests "the same" for idempotency. Not the CVV.
    fn mac_input(&self, req: &ChargeRequest) -> zeroize::Zeroizing<Vec<u8>> {
        let mut input = match &req.source {
            Source::Payment(m) => m.request_mac_input(),
            Source::Token(t) => {
                zeroize::Zeroizing::new(format!("token:{}", t.as_str()).into_bytes())
            }
        };
        input.extend_from_slice(&req.amount.minor_units().to_be_bytes());
        input.extend_from_slice(req.amount.currency().as_bytes());
        input.push(u8::from(req.save_card));
        input
    }

    /// The processor's idempotency key: derived from (credential, key) under the request-MAC
    /// key, so it is stable across retries and instances and reveals nothing. Stored with the
    /// claim, so a later key rotation cannot change it.
    fn processor_key(&self, who: &Principal, req: &ChargeRequest) -> Result<String, ChargeError> {
        let keys = self.vault.keys();
        let mac = keys.request_mac(
            keys.current_version(),
            &[
                b"processor-idempotency-key",
                who.id.as_bytes(),
                req.key.as_bytes(),
            ],
        )?;
        Ok(format!(
            "pv_{}",
            mac[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }
}

//! Step 2: the right to call the processor. The first attempt claims the key; a later one
//! replays a finished charge, waits for one in flight elsewhere, or takes over one whose outcome
//! is unknown or whose instance died. The attempt holding the key renews its short lease while
//! it calls the processor ([`Charger::holding_lease`]), so a dead holder's lease lapses within
//! seconds.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};

use super::{ChargeError, ChargeOutcome, ChargeRequest, Charger, RequestIdentity, Source};
use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::crypto::CryptoError;
use crate::processor::IdempotencyStrategy;
use crate::store;
use crate::store::audit::AuditBatch;
use crate::store::charges::{ChargeRecord, ChargeState, NewCharge, TakeOver};

/// The least time a re-sent attempt gets, however little is left of the caller's wait.
const MIN_RESEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest heartbeat, so that a zero interval (never configured so) cannot spin.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

const POLL_START: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(200);

/// This caller's attempt: it holds the lease and calls the processor.
pub(super) struct Attempt {
    pub number: i32,
    /// The key fixed at the first attempt, re-sent on every attempt.
    pub processor_key: String,
    /// Time allowed for the processor call.
    pub timeout: Duration,
    /// For a take-over with a processor that looks up or reverses an earlier attempt first
    /// (`lookup` or `reversal`): that strategy.
    pub recover: Option<IdempotencyStrategy>,
}

pub(super) enum Claim {
    Attempt(Attempt),
    /// An earlier attempt of the same request finished: answer from its record.
    Finished(ChargeRecord),
    /// An earlier attempt's outcome is unknown and the processor cannot safely be asked again:
    /// answered as unknown, never re-sent (the stored outcome of that attempt).
    Unresolved(ChargeOutcome),
}

impl Charger {
    /// Claims the key, or finds where an earlier attempt with it stands. `conn` makes the first
    /// claim and is released right after it: no connection is held while waiting for another
    /// attempt or calling the processor.
    pub(super) async fn claim(
        &self,
        conn: PoolConnection<Postgres>,
        who: &Principal,
        req: &ChargeRequest,
        id: &RequestIdentity,
        event: &AuditEvent,
        started: Instant,
    ) -> Result<Claim, ChargeError> {
        let mut conn = Some(conn);
        loop {
            let mut db = match conn.take() {
                Some(c) => c,
                None => self.pool.acquire().await?,
            };
            let claimed = self.claim_first(&mut db, who, req, id, event).await?;
            drop(db);
            if claimed {
                return Ok(Claim::Attempt(Attempt {
                    number: 1,
                    processor_key: id.processor_key.clone(),
                    timeout: self.processor_timeout,
                    recover: None,
                }));
            }
            let Some(rec) =
                store::charges::find_charge_record(&self.pool, who.id, &req.key).await?
            else {
                continue; // The claim we lost to was rolled back: try again.
            };
            if !self.same_request(&rec, &id.mac_input)? {
                return Err(ChargeError::Duplicate);
            }
            match rec.state {
                ChargeState::Succeeded | ChargeState::Failed => return Ok(Claim::Finished(rec)),
                ChargeState::Unknown => {}
                ChargeState::InFlight if rec.lease_expired => {}
                ChargeState::InFlight => {
                    // In flight elsewhere: wait for it rather than calling the processor again.
                    if started.elapsed() >= self.wait {
                        return Err(ChargeError::InProgress);
                    }
                    self.wait_for_change(who, &req.key, rec.attempts, started)
                        .await?;
                    continue;
                }
            }
            let strategy = self.processor.resend_safety();
            if !strategy.allows_resend() && !strategy.recovers_first() {
                // Without a key the processor honours, a re-send could charge twice.
                if let Some(outcome) = self.hold_unknown(who, req, rec, event).await? {
                    return Ok(Claim::Unresolved(outcome));
                }
                continue;
            }
            if strategy.recovers_first() && self.too_soon_to_recover(who, req).await? {
                // Asking the processor now could overtake the attempt asked about.
                if let Some(outcome) = self.hold_unknown(who, req, rec, event).await? {
                    return Ok(Claim::Unresolved(outcome));
                }
                continue;
            }
            if let Some(attempt) = self.take_over(who, req, id, rec, event, started).await? {
                return Ok(Claim::Attempt(attempt));
            }
        }
    }

    /// For a processor a re-send is not safe with: the unknown outcome stands. An attempt
    /// abandoned in flight (its instance died) is marked unknown first, audited in the same
    /// statement. `None` when another caller moved the record first.
    async fn hold_unknown(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        rec: ChargeRecord,
        event: &AuditEvent,
    ) -> Result<Option<ChargeOutcome>, ChargeError> {
        if rec.state == ChargeState::Unknown {
            let outcome = rec
                .outcome
                .and_then(|o| serde_json::from_value(o).ok())
                .ok_or(ChargeError::Crypto(CryptoError::Malformed))?;
            return Ok(Some(outcome));
        }
        let outcome = ChargeOutcome {
            charge_id: None,
            error_code: Some("processor_attempt_abandoned".into()),
            error_message: Some(
                "the payvault instance making this attempt stopped before the processor answered"
                    .into(),
            ),
            parameters: Default::default(),
            token_id: match &req.source {
                Source::Token(t) => Some(t.as_str().to_owned()),
                Source::Payment(_) => None,
            },
        };
        let mut abandoned = event.clone().failed("processor_attempt_abandoned");
        abandoned.details = serde_json::json!({
            "attempt": rec.attempts,
            "state": ChargeState::Unknown,
            "resend": self.processor.resend_safety().as_str(),
        });
        let stored = serde_json::to_value(&outcome).unwrap_or(serde_json::Value::Null);
        let done = store::charges::abandon_charge(
            &self.pool,
            who.id,
            &req.key,
            rec.attempts,
            &stored,
            &AuditBatch::one(self.vault.signer(), &abandoned)?,
        )
        .await?;
        if !done {
            return Ok(None);
        }
        metrics::counter!("payvault_charges_unknown_total", "resend" => "never").increment(1);
        Ok(Some(outcome))
    }

    /// Whether the processor's recovery delay ([`crate::processor::Processor::recovery_delay`])
    /// has not yet passed since the earlier attempt was sent.
    async fn too_soon_to_recover(
        &self,
        who: &Principal,
        req: &ChargeRequest,
    ) -> Result<bool, ChargeError> {
        let delay = self.processor.recovery_delay();
        if delay.is_zero() {
            return Ok(false);
        }
        let age = store::charges::charge_record_age(&self.pool, who.id, &req.key).await?;
        Ok(age.is_some_and(|age| age < delay))
    }

    /// Inserts the claim of a first attempt and its audit events (the token's resolution, the
    /// attempt) together: one statement, one round trip, one commit. `true` when claimed.
    async fn claim_first(
        &self,
        db: &mut PgConnection,
        who: &Principal,
        req: &ChargeRequest,
        id: &RequestIdentity,
        event: &AuditEvent,
    ) -> Result<bool, ChargeError> {
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
        let claim = NewCharge {
            credential_id: who.id,
            tenant_id: who.tenant_id,
            key: &req.key,
            request_mac: &id.request_mac,
            mac_key_version: id.mac_version,
            processor_key: &id.processor_key,
            lease: self.lease,
        };
        let batch = AuditBatch::new(self.vault.signer(), &events)?;
        let claimed = store::charges::claim_new_charge(db, &claim, &batch).await?;
        drop(batch);
        Ok(claimed)
    }

    /// Takes over an unknown or abandoned attempt, auditing the new attempt in the same
    /// statement. `None` when another caller took it over first.
    async fn take_over(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        id: &RequestIdentity,
        rec: ChargeRecord,
        event: &AuditEvent,
        started: Instant,
    ) -> Result<Option<Attempt>, ChargeError> {
        let take = TakeOver {
            credential_id: who.id,
            key: &req.key,
            seen_attempts: rec.attempts,
            lease: self.lease,
        };
        let mut retry = event.clone();
        retry.action = "charge_attempt";
        retry.details = serde_json::json!({ "attempt": take.attempt(), "resumed_from": rec.state });
        let taken = store::charges::take_over_charge(
            &self.pool,
            &take,
            &AuditBatch::one(self.vault.signer(), &retry)?,
        )
        .await?;
        let Some(number) = taken else {
            return Ok(None);
        };
        // A re-send must finish within this caller's window, or its answer would reach no one
        // and the next retry would find it still in flight. The processor deduplicates on the
        // key, so a short re-send is safe.
        let remaining = self
            .wait
            .saturating_sub(started.elapsed())
            .max(MIN_RESEND_TIMEOUT);
        Ok(Some(Attempt {
            number,
            processor_key: rec
                .processor_key
                .unwrap_or_else(|| id.processor_key.clone()),
            timeout: remaining.min(self.processor_timeout),
            recover: Some(self.processor.resend_safety()).filter(|s| s.recovers_first()),
        }))
    }

    /// Runs `work` (this attempt's processor call) while renewing the attempt's lease every
    /// `heartbeat`, and stops renewing when it ends: the lease outlives its holder by at most
    /// `lease`, so when this instance dies mid-call, a retry on another instance takes over
    /// within a few seconds instead of waiting out the processor timeout. Dropping the returned
    /// future (the attempt is abandoned) stops the renewals too.
    pub(super) async fn holding_lease<F: Future>(
        &self,
        who: &Principal,
        key: &str,
        attempt: &Attempt,
        work: F,
    ) -> F::Output {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => out,
            () = self.renew_lease(who, key, attempt.number) => work.await,
        }
    }

    /// Renews the lease of attempt `number` every `heartbeat`; returns only when the attempt
    /// has lost it (another attempt took over after it lapsed). A failed renewal (database
    /// unreachable) is retried at the next beat: the lease lapses only if every renewal within
    /// `lease` fails, and then the guarded write in `record_outcome` keeps this attempt's late
    /// outcome from replacing the newer attempt's.
    async fn renew_lease(&self, who: &Principal, key: &str, number: i32) {
        let every = self.heartbeat.max(MIN_HEARTBEAT);
        let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beats.tick().await;
            match store::charges::renew_charge_lease(&self.pool, who.id, key, number, self.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        attempt = number,
                        "charge lease lost to a newer attempt; this attempt's outcome will not replace it"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt = number, error = %e, "cannot renew the charge lease")
                }
            }
        }
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
            let rec = store::charges::find_charge_record(&self.pool, who.id, key).await?;
            match rec {
                Some(r)
                    if r.state == ChargeState::InFlight
                        && r.attempts == attempts
                        && !r.lease_expired => {}
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}

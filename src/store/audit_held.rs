//! Audit events of a sealed instance (split custodians): without master keys no event can be
//! MAC'd, so standalone events (refusals, `unseal_submit`, service start and stop, failed-login
//! aggregates) are held in memory, each with the time it occurred, and written MAC'd, in order,
//! as soon as the instance is unsealed ([`EventSigner::release`]). The queue is bounded
//! ([`HELD_CAPACITY`]): beyond it events are counted (logged at WARN) and recorded as one
//! `audit_events_dropped` event at unseal. An instance that stops sealed loses what it holds
//! and logs how many. Events inside an operation's transaction are never held: those
//! operations are refused `vault_sealed` before they write anything.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::audit::{insert_audit_events, now_micros, AuditBatch};
use super::audit_mac::EventSigner;
use crate::domain::AuditEvent;

/// Events held at most while sealed.
pub const HELD_CAPACITY: usize = 10_000;

/// Events written per statement when released.
const RELEASE_BATCH: usize = 500;

/// What a sealed instance holds: the events, and what did not fit.
#[derive(Debug, Default)]
pub struct Held {
    events: VecDeque<(AuditEvent, DateTime<Utc>)>,
    dropped: u64,
    dropped_by_action: BTreeMap<&'static str, u64>,
    first_dropped_at: Option<DateTime<Utc>>,
    last_dropped_at: Option<DateTime<Utc>>,
}

impl Held {
    fn hold(&mut self, event: &AuditEvent, essential: bool) {
        let now = now_micros();
        if essential || self.events.len() < HELD_CAPACITY {
            self.events.push_back((event.clone(), now));
            metrics::gauge!("payvault_audit_events_held").set(self.events.len() as f64);
            return;
        }
        metrics::counter!("payvault_audit_events_dropped_total").increment(1);
        if self.dropped == 0 {
            tracing::warn!(
                capacity = HELD_CAPACITY,
                "sealed: the queue of audit events waiting for the master keys is full; further events are only counted (recorded as one audit_events_dropped event at unseal)"
            );
        }
        self.dropped += 1;
        *self.dropped_by_action.entry(event.action).or_default() += 1;
        self.first_dropped_at.get_or_insert(now);
        self.last_dropped_at = Some(now);
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dropped == 0
    }

    /// The summary of what did not fit, if anything.
    fn dropped_event(&self) -> Option<AuditEvent> {
        (self.dropped > 0).then(|| {
            AuditEvent::system(
                "audit_events_dropped",
                serde_json::json!({
                    "reason": "sealed_queue_full",
                    "capacity": HELD_CAPACITY,
                    "dropped": self.dropped,
                    "by_action": self.dropped_by_action,
                    "first_at": self.first_dropped_at,
                    "last_at": self.last_dropped_at,
                }),
            )
        })
    }

    fn clear_dropped(&mut self) {
        self.dropped = 0;
        self.dropped_by_action.clear();
        self.first_dropped_at = None;
        self.last_dropped_at = None;
    }
}

/// Events held while sealed, and those counted for not fitting (lost, if the instance stops
/// before it is unsealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub held: usize,
    pub dropped: u64,
}

impl EventSigner {
    /// Writes one standalone event (not inside an operation's transaction); while sealed, holds
    /// it (or counts it, when the queue is full) and returns `Ok`.
    pub async fn record(&self, pool: &PgPool, event: &AuditEvent) -> Result<(), sqlx::Error> {
        self.record_all(pool, std::slice::from_ref(event), false)
            .await
    }

    /// [`EventSigner::record`] for an event that must not be dropped while sealed (a
    /// custodian's share that takes effect: at most a threshold's worth per unsealing).
    pub async fn record_essential(
        &self,
        pool: &PgPool,
        event: &AuditEvent,
    ) -> Result<(), sqlx::Error> {
        self.record_all(pool, std::slice::from_ref(event), true)
            .await
    }

    /// Writes standalone events in one statement, after whatever is still held; while sealed,
    /// holds them.
    pub async fn record_all(
        &self,
        pool: &PgPool,
        events: &[AuditEvent],
        essential: bool,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let mut held = self.held.lock().await;
        if self.key_state().is_sealed() {
            for event in events {
                held.hold(event, essential);
            }
            return Ok(());
        }
        if !held.is_empty() {
            // Unsealed a moment ago: what was held goes first.
            self.write_held(pool, &mut held).await?;
        }
        drop(held);
        let refs: Vec<&AuditEvent> = events.iter().collect();
        let batch = AuditBatch::new(self, &refs).map_err(super::audit::sealed_error)?;
        insert_audit_events(pool, &batch).await
    }

    /// Once unsealed: writes the held events, MAC'd, in order, then the summary of those that
    /// did not fit. Returns how many were written; on an error what is left stays held (the
    /// next call, or the next standalone event, writes it).
    pub async fn release(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let mut held = self.held.lock().await;
        if self.key_state().is_sealed() {
            return Ok(0);
        }
        self.write_held(pool, &mut held).await
    }

    async fn write_held(&self, pool: &PgPool, held: &mut Held) -> Result<usize, sqlx::Error> {
        let mut written = 0;
        while !held.events.is_empty() {
            let n = held.events.len().min(RELEASE_BATCH);
            let batch = AuditBatch::at(self, held.events.range(..n).map(|(e, at)| (e, *at)))
                .map_err(super::audit::sealed_error)?;
            insert_audit_events(pool, &batch).await?;
            drop(batch);
            held.events.drain(..n);
            metrics::gauge!("payvault_audit_events_held").set(held.events.len() as f64);
            written += n;
        }
        if let Some(summary) = held.dropped_event() {
            tracing::warn!(
                dropped = held.dropped,
                "audit events that did not fit the sealed queue are recorded as one audit_events_dropped event"
            );
            let batch = AuditBatch::one(self, &summary).map_err(super::audit::sealed_error)?;
            insert_audit_events(pool, &batch).await?;
            held.clear_dropped();
            written += 1;
        }
        if written > 0 {
            tracing::info!(
                events = written,
                "audit events held while sealed are written"
            );
        }
        Ok(written)
    }

    /// How many events are held, and how many did not fit.
    pub async fn held_events(&self) -> Lost {
        let held = self.held.lock().await;
        Lost {
            held: held.events.len(),
            dropped: held.dropped,
        }
    }

    /// At stop: what is still held (and dropped) is lost; says how much, never what.
    pub async fn abandon_held(&self) -> Lost {
        let mut held = self.held.lock().await;
        let lost = Lost {
            held: held.events.len(),
            dropped: held.dropped,
        };
        held.events.clear();
        held.clear_dropped();
        metrics::gauge!("payvault_audit_events_held").set(0.0);
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_capacity_events_are_counted_and_essential_ones_kept() {
        let mut held = Held::default();
        let event = AuditEvent::system("vault_sealed_test", serde_json::json!({}));
        for _ in 0..HELD_CAPACITY + 3 {
            held.hold(&event, false);
        }
        held.hold(&event, true);
        assert_eq!(held.events.len(), HELD_CAPACITY + 1);
        assert_eq!(held.dropped, 3);
        let summary = held.dropped_event().unwrap();
        assert_eq!(summary.action, "audit_events_dropped");
        assert_eq!(summary.details["dropped"], 3);
        assert_eq!(summary.details["by_action"]["vault_sealed_test"], 3);
        held.clear_dropped();
        assert!(held.dropped_event().is_none());
    }
}

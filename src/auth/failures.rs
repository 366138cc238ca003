//! Audit events for failed logins, kept per source (PCI DSS 10.2.1.4: invalid access attempts).
//!
//! The first failure of a source in an interval is written at once, as its own `authenticate`
//! event (up to a global rate per second). Further failures from the same source in that
//! interval are counted, and at the end of the interval one aggregate event per source says how
//! many there were, how many were throttled, and which payvault-shaped usernames they named. So
//! a flood from one address costs one row per interval, and never hides another address's
//! failures. At most [`CAPACITY`] sources are tracked per interval; failures from further sources
//! are counted in one `sources_untracked` event, so nothing goes unrecorded.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::{AuditEvent, Origin};

/// Sources tracked per interval.
pub const CAPACITY: usize = 4096;
/// Usernames remembered per source and interval.
const USERNAMES: usize = 8;

/// Why an attempt failed, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Missing, malformed, unknown, wrong or revoked credentials.
    Unauthorized,
    /// Refused by the throttle, without verification.
    Throttled,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Throttled => "too_many_attempts",
        }
    }
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    /// Failures not yet written (the first of the interval was written at once, unless the
    /// global rate was exceeded).
    unwritten: u64,
    throttled: u64,
    usernames: BTreeSet<String>,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

#[derive(Debug)]
struct State {
    /// Start of the current second, and events written in it.
    second: (Instant, u32),
    sources: HashMap<IpAddr, Pending>,
    untracked: u64,
}

/// Per-source aggregation of failed-login audit events.
#[derive(Debug)]
pub struct FailureAudit {
    per_second: u32,
    state: Mutex<State>,
}

impl FailureAudit {
    /// At most `per_second` failures are written as events of their own each second.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new(State {
                second: (Instant::now(), 0),
                sources: HashMap::new(),
                untracked: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters hold no invariant a panicking writer could break.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a failure from `source`; returns the event to write now if this is the source's
    /// first in the interval (and the global rate allows), `None` if it was only counted.
    pub fn failed(
        &self,
        source: IpAddr,
        origin: &Origin,
        failure: Failure,
        username: Option<&str>,
        details: serde_json::Value,
    ) -> Option<AuditEvent> {
        let now = Utc::now();
        let mut state = self.lock();
        let throttled = u64::from(failure == Failure::Throttled);
        if let Some(pending) = state.sources.get_mut(&source) {
            pending.unwritten += 1;
            pending.throttled += throttled;
            pending.last_at = now;
            if let Some(u) = username {
                if pending.usernames.len() < USERNAMES {
                    pending.usernames.insert(u.to_owned());
                }
            }
            return None;
        }
        if state.sources.len() >= CAPACITY {
            state.untracked += 1;
            return None;
        }
        let (second, written) = &mut state.second;
        if second.elapsed() >= Duration::from_secs(1) {
            *second = Instant::now();
            *written = 0;
        }
        let write_now = *written < self.per_second;
        if write_now {
            *written += 1;
        }
        state.sources.insert(
            source,
            Pending {
                origin: origin.clone(),
                unwritten: u64::from(!write_now),
                throttled: if write_now { 0 } else { throttled },
                usernames: username.into_iter().map(str::to_owned).collect(),
                first_at: now,
                last_at: now,
            },
        );
        write_now.then(|| {
            let mut event =
                AuditEvent::new(origin, "anonymous", "authenticate").failed(failure.code());
            event.details = details;
            event
        })
    }

    /// The aggregate events of the interval that ends now; starts a new one.
    pub fn drain(&self) -> Vec<AuditEvent> {
        let (sources, untracked) = {
            let mut state = self.lock();
            (
                std::mem::take(&mut state.sources),
                std::mem::take(&mut state.untracked),
            )
        };
        let mut events: Vec<AuditEvent> = sources
            .into_values()
            .filter(|p| p.unwritten > 0)
            .map(|p| {
                let mut event = AuditEvent::new(&p.origin, "anonymous", "authenticate").failed(
                    if p.throttled == p.unwritten {
                        Failure::Throttled.code()
                    } else {
                        Failure::Unauthorized.code()
                    },
                );
                // The request id is that of the source's first failure, which the aggregate
                // does not describe alone.
                event.request_id = None;
                event.details = serde_json::json!({
                    "aggregated": true,
                    "failures": p.unwritten,
                    "throttled": p.throttled,
                    "usernames": p.usernames,
                    "first_at": p.first_at,
                    "last_at": p.last_at,
                });
                event
            })
            .collect();
        if untracked > 0 {
            let mut event = AuditEvent::new(&Origin::default(), "anonymous", "authenticate")
                .failed(Failure::Unauthorized.code());
            event.details = serde_json::json!({
                "aggregated": true,
                "sources_untracked": true,
                "failures": untracked,
            });
            events.push(event);
        }
        events
    }

    /// Writes the interval's aggregate events.
    pub async fn flush(
        &self,
        pool: &PgPool,
        signer: &crate::store::audit_mac::EventSigner,
    ) -> Result<(), sqlx::Error> {
        let events = self.drain();
        if events.is_empty() {
            return Ok(());
        }
        // Sealed, they are held and written at unseal (see store::audit_held).
        signer.record_all(pool, &events, false).await
    }

    /// Flushes every `interval` until the process ends.
    pub async fn run(
        self: std::sync::Arc<Self>,
        pool: PgPool,
        signer: std::sync::Arc<crate::store::audit_mac::EventSigner>,
        interval: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.flush(&pool, &signer).await {
                // The counts are lost with this batch; say so where operators look.
                tracing::error!(error = %e, "could not write the failed-login audit aggregate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(ip: &str) -> (IpAddr, Origin) {
        (
            ip.parse().unwrap(),
            Origin {
                request_id: Some("r".into()),
                client_addr: Some(ip.into()),
                forwarded_for: None,
            },
        )
    }

    #[test]
    fn a_flood_from_one_source_does_not_hide_another() {
        let audit = FailureAudit::new(20);
        let (a, oa) = origin("10.0.0.1");
        let (b, ob) = origin("10.0.0.2");
        let details = serde_json::json!({});
        assert!(audit
            .failed(a, &oa, Failure::Unauthorized, None, details.clone())
            .is_some());
        for _ in 0..999 {
            assert!(audit
                .failed(a, &oa, Failure::Throttled, Some("pvc_x"), details.clone())
                .is_none());
        }
        let first_b = audit.failed(b, &ob, Failure::Unauthorized, None, details.clone());
        assert_eq!(first_b.unwrap().client_addr.as_deref(), Some("10.0.0.2"));
        let events = audit.drain();
        assert_eq!(events.len(), 1, "b had one failure, written already");
        assert_eq!(events[0].client_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(events[0].details["failures"], 999);
        assert_eq!(events[0].details["throttled"], 999);
        assert_eq!(events[0].error_code.as_deref(), Some("too_many_attempts"));
        assert!(audit.drain().is_empty());
        // A new interval: the source's first failure is written at once again.
        assert!(audit
            .failed(a, &oa, Failure::Unauthorized, None, details)
            .is_some());
    }

    #[test]
    fn past_the_global_rate_first_failures_are_aggregated_not_lost() {
        let audit = FailureAudit::new(1);
        let (a, oa) = origin("10.0.0.1");
        let (b, ob) = origin("10.0.0.2");
        let details = serde_json::json!({});
        assert!(audit
            .failed(a, &oa, Failure::Unauthorized, None, details.clone())
            .is_some());
        assert!(audit
            .failed(b, &ob, Failure::Unauthorized, None, details)
            .is_none());
        let events = audit.drain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].client_addr.as_deref(), Some("10.0.0.2"));
        assert_eq!(events[0].details["failures"], 1);
    }

    #[test]
    fn sources_beyond_capacity_are_counted_together() {
        let audit = FailureAudit::new(0);
        let details = serde_json::json!({});
        for i in 0..(CAPACITY as u32 + 5) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            audit.failed(
                ip,
                &Origin::default(),
                Failure::Unauthorized,
                None,
                details.clone(),
            );
        }
        let events = audit.drain();
        assert_eq!(events.len(), CAPACITY + 1);
        let untracked = events.last().unwrap();
        assert_eq!(untracked.details["failures"], 5);
        assert_eq!(untracked.details["sources_untracked"], true);
    }
}

//! Failed-login throttling, checked before any Argon2 work.
//!
//! Failures are counted per source address (an IPv6 address by its /64, which one host usually
//! owns whole) and per known username, in fixed windows. A source or username past its budget is
//! refused without a database lookup or a verification until its window ends. Both maps have a
//! fixed capacity: when full, expired entries go first, then the entry whose window is oldest,
//! so random addresses or usernames cannot grow memory (the worst they do is let an evicted
//! source start a fresh budget, and the verification queue still bounds the CPU they cost).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failed verifications a source may cause per window before it is refused.
pub const SOURCE_FAILURES: u32 = 10;
/// Failed verifications one username may suffer per window (from sources that have already
/// failed) before such sources are refused for it.
pub const USERNAME_FAILURES: u32 = 20;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most sources and usernames remembered at once (each map).
const CAPACITY: usize = 4096;

/// A source address as counted: IPv4 whole, IPv6 by its /64 prefix.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// A fixed-capacity map of failure counts per key.
#[derive(Debug)]
struct Counts<K> {
    map: HashMap<K, Window>,
    limit: u32,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(limit: u32) -> Self {
        Self {
            map: HashMap::new(),
            limit,
        }
    }

    fn live(&self, key: &K, now: Instant) -> Option<Window> {
        self.map
            .get(key)
            .copied()
            .filter(|w| now.duration_since(w.started) < WINDOW)
    }

    /// How long `key` stays refused, if it is.
    fn refused_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let w = self.live(key, now)?;
        (w.failures >= self.limit).then(|| WINDOW.saturating_sub(now.duration_since(w.started)))
    }

    fn failures(&self, key: &K, now: Instant) -> u32 {
        self.live(key, now).map_or(0, |w| w.failures)
    }

    fn record(&mut self, key: &K, now: Instant) {
        if let Some(w) = self.map.get_mut(key) {
            if now.duration_since(w.started) >= WINDOW {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
            return;
        }
        if self.map.len() >= CAPACITY {
            self.map
                .retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        if self.map.len() >= CAPACITY {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(
            key.clone(),
            Window {
                started: now,
                failures: 1,
            },
        );
    }
}

/// Per-source and per-username failure counts.
#[derive(Debug)]
pub struct Throttle {
    sources: Mutex<Counts<IpAddr>>,
    usernames: Mutex<Counts<String>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(SOURCE_FAILURES, USERNAME_FAILURES)
    }
}

impl Throttle {
    pub fn new(per_source: u32, per_username: u32) -> Self {
        Self {
            sources: Mutex::new(Counts::new(per_source)),
            usernames: Mutex::new(Counts::new(per_username)),
        }
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Counts<IpAddr>> {
        // Counters hold no invariant a panicking writer could break.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usernames(&self) -> std::sync::MutexGuard<'_, Counts<String>> {
        self.usernames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(retry_after)` if an unverified attempt from `source` for `username` must be refused
    /// now. A username past its budget refuses only sources that have failed themselves in this
    /// window: a flood against one credential cannot lock its rightful owner out from a clean
    /// address.
    pub fn refused(&self, source: IpAddr, username: &str) -> Option<Duration> {
        let now = Instant::now();
        let source = source_key(source);
        let sources = self.sources();
        if let Some(wait) = sources.refused_for(&source, now) {
            return Some(wait);
        }
        if sources.failures(&source, now) == 0 {
            return None;
        }
        drop(sources);
        self.usernames().refused_for(&username.to_owned(), now)
    }

    /// True if `source` has no failure in the current window: its verifications go first.
    pub fn is_clean(&self, source: IpAddr) -> bool {
        self.sources().failures(&source_key(source), Instant::now()) == 0
    }

    /// Counts a failed attempt; `username` only when it names a credential that exists (random
    /// usernames are not remembered).
    pub fn record_failure(&self, source: IpAddr, username: Option<&str>) {
        let now = Instant::now();
        self.sources().record(&source_key(source), now);
        if let Some(username) = username {
            self.usernames().record(&username.to_owned(), now);
        }
    }

    /// Sources and usernames currently remembered (for tests of the bound).
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources().map.len(), self.usernames().map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_past_its_budget_is_refused_and_others_are_not() {
        let t = Throttle::new(3, 100);
        for _ in 0..3 {
            assert!(t.refused(ip("10.0.0.1"), "pvc_x").is_none());
            t.record_failure(ip("10.0.0.1"), None);
        }
        let wait = t.refused(ip("10.0.0.1"), "pvc_x").unwrap();
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(t.refused(ip("10.0.0.2"), "pvc_x").is_none());
        assert!(!t.is_clean(ip("10.0.0.1")) && t.is_clean(ip("10.0.0.2")));
    }

    #[test]
    fn a_username_past_its_budget_refuses_only_failing_sources() {
        let t = Throttle::new(100, 2);
        t.record_failure(ip("10.0.0.1"), Some("pvc_x"));
        t.record_failure(ip("10.0.0.1"), Some("pvc_x"));
        assert!(t.refused(ip("10.0.0.1"), "pvc_x").is_some());
        assert!(t.refused(ip("10.0.0.1"), "pvc_y").is_none());
        assert!(
            t.refused(ip("10.0.0.9"), "pvc_x").is_none(),
            "a clean source"
        );
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let t = Throttle::new(1, 100);
        t.record_failure(ip("2001:db8:1:2::1"), None);
        assert!(t.refused(ip("2001:db8:1:2::ffff"), "u").is_some());
        assert!(t.refused(ip("2001:db8:1:3::1"), "u").is_none());
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn memory_stays_bounded_under_random_sources_and_usernames() {
        let t = Throttle::new(1, 1);
        for i in 0..(CAPACITY as u32 * 3) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(addr, Some(&format!("pvc_{i}")));
        }
        let (sources, usernames) = t.tracked();
        assert!(sources <= CAPACITY && usernames <= CAPACITY);
        // The newest entries are the ones kept.
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + CAPACITY as u32 * 3 - 1,
        ));
        assert!(t.refused(newest, "z").is_some());
    }
}

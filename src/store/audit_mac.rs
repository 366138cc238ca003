//! Audit events authenticated at the source. Every event is written with a MAC that payvault
//! computes before the INSERT, over every column but the database-assigned id, plus the
//! writer's identity: `writer_id` (one per process start or CLI invocation) and `writer_seq`
//! (that writer's counter, from 1). Without the master key nobody can write an event that
//! verifies, and a missing counter value reveals an event deleted before it was sealed.
//!
//! ```text
//! mac = HMAC-SHA256(E_v, "payvault-audit-event-v2" | writer_id | writer_seq | v | occurred_at
//!                        | tenant_id | every other column, each length-prefixed, NULL distinct
//!                        from any value)
//! ```
//!
//! `E_v` is derived from master key version `v`'s audit seal key ([`KeyRing::event_mac`]).
//! `details` is covered in a canonical JSON form (object keys sorted, integral numbers as
//! integers), which survives the database's `jsonb` normalisation unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::crypto::{CryptoError, KeyRing, KeyState, Sealed};

const DOMAIN: &[u8] = b"payvault-audit-event-v2";
const VOID_DOMAIN: &[u8] = b"payvault-audit-void-v1";

/// The columns an event MAC covers, borrowed from an event being written or a row read back.
#[derive(Debug)]
pub struct MacFields<'a> {
    pub writer_id: Uuid,
    pub writer_seq: i64,
    pub key_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub request_id: Option<&'a str>,
    pub actor_id: Option<Uuid>,
    pub actor_kind: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub error_code: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    pub token: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub masked_data: Option<&'a str>,
    pub amount_minor: Option<i64>,
    pub currency: Option<&'a str>,
    pub details: &'a serde_json::Value,
    /// Stored for every event (the default tenant's when the event names none).
    pub tenant_id: Uuid,
}

impl MacFields<'_> {
    /// The event's MAC; fails only when `key_version` is not loaded.
    pub fn mac(&self, keys: &KeyRing) -> Result<[u8; 32], CryptoError> {
        let writer = self.writer_id.into_bytes();
        let seq = self.writer_seq.to_be_bytes();
        let version = self.key_version.to_be_bytes();
        let at = self.occurred_at.timestamp_micros().to_be_bytes();
        let actor = self.actor_id.map(Uuid::into_bytes);
        let amount = self.amount_minor.map(i64::to_be_bytes);
        let details = canonical_json(self.details);
        let tenant = self.tenant_id.into_bytes();
        let mut parts: Vec<&[u8]> = vec![DOMAIN, &writer, &seq, &version, &at, &tenant];
        // Each optional column is a presence marker and then its value, so NULL and "" differ.
        let optional: [Option<&[u8]>; 10] = [
            self.request_id.map(str::as_bytes),
            actor.as_ref().map(|a| a.as_slice()),
            self.error_code.map(str::as_bytes),
            self.client_addr.map(str::as_bytes),
            self.forwarded_for.map(str::as_bytes),
            self.token.map(str::as_bytes),
            self.transaction_id.map(str::as_bytes),
            self.masked_data.map(str::as_bytes),
            amount.as_ref().map(|a| a.as_slice()),
            self.currency.map(str::as_bytes),
        ];
        for value in optional {
            match value {
                Some(v) => {
                    parts.push(b"\x01");
                    parts.push(v);
                }
                None => parts.push(b"\x00"),
            }
        }
        parts.push(self.actor_kind.as_bytes());
        parts.push(self.action.as_bytes());
        parts.push(self.outcome.as_bytes());
        parts.push(details.as_bytes());
        keys.event_mac(self.key_version, &parts)
    }
}

/// The MAC of a voided writer counter range.
pub fn void_mac(
    keys: &KeyRing,
    version: i32,
    writer_id: Uuid,
    first: i64,
    last: i64,
) -> Result<[u8; 32], CryptoError> {
    keys.event_mac(
        version,
        &[
            VOID_DOMAIN,
            &writer_id.into_bytes(),
            &first.to_be_bytes(),
            &last.to_be_bytes(),
        ],
    )
}

/// JSON with object keys sorted and every integral number written as an integer: the same text
/// for a value as payvault built it and as read back from `jsonb`.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.push_str(&(f as i64).to_string())
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// One writer of audit events: a process (`serve`) or a CLI invocation. Hands out the writer
/// counter and MACs each event with the master keys of its [`KeyState`]. Counter values
/// allocated to a batch that was not written are remembered as voids and recorded by
/// [`EventSigner::flush_voids`]. While the instance is sealed (split custodians) standalone
/// events are held in memory and written once it is unsealed (see `store::audit_held`).
pub struct EventSigner {
    keys: Arc<KeyState>,
    writer_id: Uuid,
    next: AtomicU64,
    voids: Mutex<Vec<(i64, i64)>>,
    pub(super) held: tokio::sync::Mutex<super::audit_held::Held>,
}

impl std::fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSigner")
            .field("writer_id", &self.writer_id)
            .field("next", &self.next)
            .field("sealed", &self.keys.is_sealed())
            .finish_non_exhaustive()
    }
}

impl EventSigner {
    /// A new writer (a fresh random id, counter from 1) signing with `keys`' current version.
    pub fn new(keys: Arc<KeyRing>) -> Self {
        Self::with_key_state(KeyState::unsealed(keys))
    }

    /// A new writer whose keys may come later (an instance that starts sealed).
    pub fn with_key_state(keys: Arc<KeyState>) -> Self {
        Self {
            keys,
            writer_id: Uuid::new_v4(),
            next: AtomicU64::new(1),
            voids: Mutex::new(Vec::new()),
            held: tokio::sync::Mutex::new(super::audit_held::Held::default()),
        }
    }

    pub fn writer_id(&self) -> Uuid {
        self.writer_id
    }

    /// The master keys, or [`Sealed`] until the instance is unsealed.
    pub fn keys(&self) -> Result<&Arc<KeyRing>, Sealed> {
        self.keys.get()
    }

    pub fn key_state(&self) -> &Arc<KeyState> {
        &self.keys
    }

    /// The next `n` counter values, as the first one.
    pub(crate) fn allocate(&self, n: usize) -> i64 {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        i64::try_from(first).unwrap_or(i64::MAX)
    }

    /// The counter values handed out so far, as the last one.
    pub fn last_seq(&self) -> i64 {
        i64::try_from(self.next.load(Ordering::Relaxed)).unwrap_or(i64::MAX) - 1
    }

    /// Remembers `first..=last` as allocated but never written.
    pub(crate) fn void(&self, first: i64, last: i64) {
        if let Ok(mut voids) = self.voids.lock() {
            voids.push((first, last));
        }
    }

    /// Records the remembered voids (MAC'd), so verify does not take them for deletions.
    /// Sealed, there are none: counter values are allocated only with the keys.
    pub async fn flush_voids(&self, db: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
        let Ok(keys) = self.keys() else {
            return Ok(0);
        };
        let pending: Vec<(i64, i64)> = match self.voids.lock() {
            Ok(mut voids) => std::mem::take(&mut *voids),
            Err(_) => return Ok(0),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let version = keys.current_version();
        let mut macs = Vec::with_capacity(pending.len());
        for &(first, last) in &pending {
            match void_mac(keys, version, self.writer_id, first, last) {
                Ok(mac) => macs.push(mac.to_vec()),
                Err(_) => return Ok(0),
            }
        }
        let firsts: Vec<i64> = pending.iter().map(|v| v.0).collect();
        let lasts: Vec<i64> = pending.iter().map(|v| v.1).collect();
        let written =
            super::seals::insert_voids(db, self.writer_id, &firsts, &lasts, version, &macs).await;
        if written.is_err() {
            if let Ok(mut voids) = self.voids.lock() {
                voids.extend(pending.iter().copied());
            }
        }
        written.map(|()| pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn fields<'a>(details: &'a serde_json::Value) -> MacFields<'a> {
        MacFields {
            writer_id: Uuid::from_u128(7),
            writer_seq: 1,
            key_version: 1,
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            request_id: Some("0f8fad5b-d9cb-469f-a165-70867728950e"),
            actor_id: Some(Uuid::from_u128(9)),
            actor_kind: "connector",
            action: "tokenize",
            outcome: "success",
            error_code: None,
            client_addr: Some("203.0.113.9"),
            forwarded_for: None,
            token: Some("tok_Vb3k8yJc0Q2m1xW9aZr4Tg"),
            transaction_id: Some("CA1234567890abcdef"),
            masked_data: Some("visa 411111******1111"),
            amount_minor: None,
            currency: None,
            details,
            tenant_id: Uuid::from_u128(11),
        }
    }

    #[test]
    fn canonical_json_is_what_jsonb_gives_back() {
        let built = serde_json::json!({ "z": 1, "a": { "y": [2.0, 0.5], "b": "é\"" } });
        // What Postgres prints for it: keys reordered, spacing added, 2.0 kept as written.
        let stored: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": "é\"", "y": [2.0, 0.5]}, "z": 1}"#).unwrap();
        assert_eq!(canonical_json(&built), canonical_json(&stored));
        assert_eq!(
            canonical_json(&built),
            r#"{"a":{"b":"é\"","y":[2,0.5]},"z":1}"#
        );
    }

    #[test]
    fn null_and_empty_differ_and_every_field_counts() {
        let keys = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let details = serde_json::json!({});
        let base = fields(&details).mac(&keys).unwrap();
        let mut empty = fields(&details);
        empty.error_code = Some("");
        assert_ne!(empty.mac(&keys).unwrap(), base);
        let mut later = fields(&details);
        later.writer_seq = 2;
        assert_ne!(later.mac(&keys).unwrap(), base);
        // Moving a value from one column to the next changes the MAC.
        let mut shifted = fields(&details);
        shifted.client_addr = None;
        shifted.forwarded_for = Some("203.0.113.9");
        assert_ne!(shifted.mac(&keys).unwrap(), base);
        // The tenant counts: moving an event to another tenant breaks its MAC.
        let mut moved = fields(&details);
        moved.tenant_id = Uuid::from_u128(12);
        assert_ne!(moved.mac(&keys).unwrap(), base);
        assert!(fields(&details).mac(&keys).is_ok_and(|m| m == base));
    }

    #[test]
    fn a_retired_versions_audit_only_key_still_verifies_its_events() {
        let old = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let details = serde_json::json!({ "a": 1 });
        let mac = fields(&details).mac(&old).unwrap();
        let audit_key = old.audit_key(1).unwrap();
        let retired = KeyRing::from_keys(vec![
            MasterKey::generate(2),
            MasterKey::parse_list(audit_key.as_str()).unwrap().remove(0),
        ])
        .unwrap();
        assert_eq!(fields(&details).mac(&retired).unwrap(), mac);
        let other = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        assert_ne!(fields(&details).mac(&other).unwrap(), mac);
    }

    /// The cost of authenticating an event, to compare with a tokenize (~280 µs a request):
    /// `cargo test --release --lib audit_mac::tests::mac_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, not a check"]
    fn mac_cost() {
        let keys = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let details = serde_json::json!({ "kind": "card", "brand": "visa", "replayed": false });
        let n = 200_000u32;
        let started = std::time::Instant::now();
        let mut last = [0u8; 32];
        for i in 0..n {
            let mut f = fields(&details);
            f.writer_seq = i64::from(i);
            last = f.mac(&keys).unwrap();
        }
        let per = started.elapsed() / n;
        println!("event MAC: {per:?} per event ({:02x})", last[0]);
    }
}

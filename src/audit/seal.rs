//! Tamper evidence for the audit log (PCI DSS 10.3.2-10.3.4).
//!
//! Events are inserted unsealed, in the transaction of the operation they record, and queued.
//! A sealer (every payvault instance runs one; a Postgres advisory lock lets one at a time work)
//! appends them to a hash chain:
//!
//! ```text
//! seal(n) = HMAC-SHA256(K_v, "payvault-audit-v1" | n | seal(n-1) | event_n)
//! ```
//!
//! where `K_v` is derived from master key version `v` (never stored in the database) and
//! `event_n` is every column of the event, length-prefixed. Request handling never waits for the
//! sealer, so sealing adds no lock to the request path.
//!
//! Someone with full write access to Postgres but not the master key cannot modify, delete,
//! insert or reorder sealed events without `verify` finding the first place it happened: they
//! cannot compute a seal. Deleting the *newest* events together with their seals leaves a
//! shorter, valid chain; that is caught by comparing with a checkpoint ([`checkpoint`]) kept
//! off-box.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::crypto::{CryptoError, KeyRing};
use crate::store;
use crate::store::audit::AuditRow;
use crate::store::seals::{Anchor, SealedRow};

const DOMAIN: &[u8] = b"payvault-audit-v1";
/// Events sealed per transaction: a batch costs a handful of statements whatever its size, so
/// bigger batches amortise them; 10,000 keeps a batch's transaction well under a second
/// (docs/benchmarks.md, "sealing throughput").
pub const SEAL_BATCH: i64 = 10_000;
/// How long an event may stay unsealed before verify treats it as inserted behind our back.
pub const SEAL_GRACE: Duration = Duration::from_secs(60);

fn opt(s: &Option<String>) -> &[u8] {
    s.as_deref().map_or(b"\x00", str::as_bytes)
}

/// The seal of `event` at `seq`, following `prev`.
pub fn seal_of(
    keys: &KeyRing,
    version: i32,
    seq: i64,
    prev: &[u8],
    e: &AuditRow,
) -> Result<[u8; 32], CryptoError> {
    let actor = e.actor_id.map(|a| a.to_string());
    let amount = e.amount_minor.map(|a| a.to_string());
    keys.seal_mac(
        version,
        &[
            DOMAIN,
            &seq.to_be_bytes(),
            prev,
            &e.id.to_be_bytes(),
            &e.occurred_at.timestamp_micros().to_be_bytes(),
            opt(&e.request_id),
            opt(&actor),
            e.actor_kind.as_bytes(),
            e.action.as_bytes(),
            e.outcome.as_bytes(),
            opt(&e.error_code),
            opt(&e.client_addr),
            opt(&e.forwarded_for),
            opt(&e.token),
            opt(&e.transaction_id),
            opt(&e.masked_data),
            opt(&amount),
            opt(&e.currency),
            e.details.as_bytes(),
        ],
    )
}

fn anchor_signature(
    keys: &KeyRing,
    version: i32,
    seq: i64,
    mac: &[u8],
) -> Result<[u8; 32], CryptoError> {
    keys.seal_mac(version, &[DOMAIN, b"anchor", &seq.to_be_bytes(), mac])
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

/// Seals every queued event, in batches of [`SEAL_BATCH`]. Returns how many were sealed (0 if
/// another instance holds the sealing lock). A queued event whose own MAC does not verify (or
/// is missing), and a queue row naming a missing or already-sealed event, are never chained:
/// each is recorded in `audit_anomalies` (which `verify` reports) and the rest of the batch is
/// sealed.
pub async fn seal_pending(pool: &PgPool, keys: &KeyRing) -> Result<u64, SealError> {
    seal_pending_in_batches(pool, keys, SEAL_BATCH).await
}

/// [`seal_pending`] with `batch` events per transaction (`payvault audit seal --batch`).
pub async fn seal_pending_in_batches(
    pool: &PgPool,
    keys: &KeyRing,
    batch: i64,
) -> Result<u64, SealError> {
    seal(pool, keys, batch, Drain::UntilEmpty).await
}

/// One pass of the background sealer: seals in batches of `batch` ([`SEAL_BATCH`] there) and
/// stops after the
/// first batch that is not full, so what was queued when the pass began is sealed (a long
/// backlog in full batches) and what writers queue meanwhile waits for the next pass. Under a
/// steady load the sealer then seals a few large batches per tick instead of chasing the
/// writers in small ones: each batch is a transaction with its own commit and half a dozen
/// statements, and chasing cost a charge by token about a fifth of its throughput
/// (docs/benchmarks.md, "sealing passes").
pub async fn seal_one_pass(pool: &PgPool, keys: &KeyRing, batch: i64) -> Result<u64, SealError> {
    seal(pool, keys, batch, Drain::OnePass).await
}

/// Where a call to [`seal`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// When the queue is found empty: everything queued before the call, and whatever is
    /// queued while it runs (commands before they exit, an instance that stops).
    UntilEmpty,
    /// After the first batch that is not full ([`seal_one_pass`]).
    OnePass,
}

async fn seal(pool: &PgPool, keys: &KeyRing, batch: i64, drain: Drain) -> Result<u64, SealError> {
    let batch = batch.max(1);
    let mut total = 0;
    let epoch = store::audit_checks::mac_epoch(pool).await?;
    let version = keys.current_version();
    // Each batch starts above the last one's highest id, so it does not pass over the queue
    // entries the batches before it deleted; once that finds nothing, one more look from the
    // start takes events committed late with lower ids (a pass leaves those to the next pass,
    // which starts from the start).
    let mut after = 0;
    loop {
        let mut tx = pool.begin().await?;
        if !store::seals::try_lock_sealing(&mut *tx).await? {
            return Ok(total);
        }
        let queued = store::seals::dequeue_for_sealing(&mut tx, batch, after).await?;
        let Some(last) = queued.last() else {
            tx.commit().await?;
            if after == 0 || drain == Drain::OnePass {
                return Ok(total);
            }
            after = 0;
            continue;
        };
        after = last.event_id;
        let caught_up = (queued.len() as i64) < batch;
        let (mut set_aside, mut kinds) = (Vec::new(), Vec::new());
        // Bad queue rows first, then the events whose own MAC fails, in id order each.
        for q in &queued {
            if q.already_sealed {
                set_aside.push(q.event_id);
                kinds.push("already_sealed".to_owned());
            } else if q.event.is_none() {
                set_aside.push(q.event_id);
                kinds.push("missing_event".to_owned());
            }
        }
        let mut chain = Vec::with_capacity(queued.len());
        for q in &queued {
            let Some(e) = q.event.as_ref().filter(|_| !q.already_sealed) else {
                continue;
            };
            // Events written before event MACs existed are covered by the chain alone.
            if e.id < epoch {
                chain.push(e);
                continue;
            }
            match e.mac_valid(keys) {
                Ok(true) => chain.push(e),
                Ok(false) => {
                    set_aside.push(e.id);
                    kinds.push(if e.mac.is_none() { "no_mac" } else { "bad_mac" }.to_owned());
                }
                // Just written by an instance with a newer master key: leave the batch (rolled
                // back, so still queued) to an instance that has it, for a while (a time in the
                // future, beyond clock skew, does not count as just written).
                Err(CryptoError::UnknownKeyVersion(v))
                    if v > keys.current_version() && recent(e.occurred_at) =>
                {
                    tracing::warn!(
                        event = e.id,
                        key_version = v,
                        "cannot seal: an audit event is MAC'd under a master key version not loaded here; an instance with it will seal"
                    );
                    tx.rollback().await?;
                    return Ok(total);
                }
                // An older version that is not loaded, or a newer one for too long: set aside,
                // so a made-up version number cannot stop sealing.
                Err(CryptoError::UnknownKeyVersion(_)) => {
                    set_aside.push(e.id);
                    kinds.push("unknown_key_version".to_owned());
                }
                Err(err) => return Err(err.into()),
            }
        }
        if !set_aside.is_empty() {
            tracing::error!(
                events = ?set_aside,
                kinds = ?kinds,
                "audit events set aside instead of sealed (forged, modified or a bad queue row): run `payvault audit verify`"
            );
            metrics::counter!("payvault_audit_anomalies_total").increment(set_aside.len() as u64);
            store::seals::record_anomalies(&mut *tx, &set_aside, &kinds).await?;
        }
        if !chain.is_empty() {
            let tip = store::seals::chain_tip(&mut *tx).await?;
            let (mut seq, mut prev) = match tip {
                Some(t) => (t.seq, t.mac),
                None => (0, vec![0u8; 32]),
            };
            let mut seqs = Vec::with_capacity(chain.len());
            let mut chained = Vec::with_capacity(chain.len());
            let mut macs: Vec<Vec<u8>> = Vec::with_capacity(chain.len());
            for e in &chain {
                seq += 1;
                let mac = seal_of(keys, version, seq, &prev, e)?;
                seqs.push(seq);
                chained.push(e.id);
                prev.clear();
                prev.extend_from_slice(&mac);
                macs.push(mac.to_vec());
            }
            store::seals::insert_seals(&mut *tx, &seqs, &chained, version, &macs).await?;
        }
        tx.commit().await?;
        total += chain.len() as u64;
        if caught_up && drain == Drain::OnePass {
            return Ok(total);
        }
    }
}

/// Whether `at` is within [`SEAL_GRACE`] of now, either way.
fn recent(at: DateTime<Utc>) -> bool {
    let grace = chrono::Duration::from_std(SEAL_GRACE).unwrap_or_default();
    let age = Utc::now() - at;
    -grace < age && age < grace
}

/// Runs the sealer until the process ends.
pub async fn run_sealer(
    pool: PgPool,
    signer: std::sync::Arc<store::audit_mac::EventSigner>,
    every: Duration,
) {
    // Sealed (split custodians), it starts once unsealed.
    let keys = signer.key_state().wait().await;
    loop {
        if let Err(e) = signer.flush_voids(&pool).await {
            tracing::warn!(error = %e, "could not record voided audit counter values; will retry");
        }
        match seal_one_pass(&pool, &keys, SEAL_BATCH).await {
            Ok(n) if n > 0 => tracing::debug!(sealed = n, "audit events sealed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit sealing failed; will retry"),
        }
        if let Ok((pending, oldest)) = store::seals::pending(&pool).await {
            let lag = oldest.map_or(0.0, |t| {
                (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
            });
            metrics::gauge!("payvault_audit_unsealed_events").set(pending as f64);
            metrics::gauge!("payvault_audit_seal_lag_seconds").set(lag);
        }
        tokio::time::sleep(every).await;
    }
}

/// A signed statement that the chain reached `seq` with seal `mac`. Keep it off-box: it proves
/// later that nothing up to `seq` was deleted from the end of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub event_id: i64,
    pub sealed_at: DateTime<Utc>,
    /// Hex of the seal at `seq` (an HMAC: only the master key holder can produce it).
    pub mac: String,
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Sealed events checked.
    pub verified: u64,
    /// The newest sealed event that verified.
    pub last: Option<Checkpoint>,
    /// Events queued for sealing (recent, normal while the service runs).
    pub pending: i64,
    /// The first problem in the chain, if it was tampered with.
    pub problem: Option<Problem>,
    /// Everything else found wrong: events failing their own MAC (sealed or not), counter gaps,
    /// what the sealer set aside, bad queue rows, sealing lag over the bound.
    pub findings: Vec<super::integrity::Finding>,
}

impl Report {
    /// Nothing was found wrong.
    pub fn intact(&self) -> bool {
        self.problem.is_none() && self.findings.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub seq: Option<i64>,
    pub event_id: Option<i64>,
    pub what: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.problem, &self.last) {
            (Some(p), _) => {
                write!(f, "TAMPERED: {}", p.what)?;
                if let Some(seq) = p.seq {
                    write!(f, " (chain position {seq}")?;
                    if let Some(id) = p.event_id {
                        write!(f, ", event {id}")?;
                    }
                    write!(f, ")")?;
                }
                write!(f, "; {} events verified before it", self.verified)
            }
            (None, Some(last)) => write!(
                f,
                "{} events verified, chain intact up to event {} sealed at {} ({} awaiting sealing)",
                self.verified,
                last.event_id,
                last.sealed_at.to_rfc3339(),
                self.pending
            ),
            (None, None) => write!(f, "no sealed events yet ({} awaiting sealing)", self.pending),
        }?;
        for finding in &self.findings {
            write!(f, "\nTAMPERED: {}", finding.what)?;
        }
        Ok(())
    }
}

pub use super::verify::verify;

pub(super) fn anchor_valid(keys: &KeyRing, a: &Anchor) -> Result<bool, CryptoError> {
    let expected = match anchor_signature(keys, a.key_version, a.seq, &a.mac) {
        Ok(sig) => sig,
        Err(CryptoError::UnknownKeyVersion(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(subtle::ConstantTimeEq::ct_eq(&expected[..], a.signature.as_slice()).into())
}

/// `None` if the seal matches its event and predecessor, else what is wrong.
pub(super) fn check_row(
    keys: &KeyRing,
    row: &SealedRow,
    prev: &[u8],
) -> Result<Option<String>, CryptoError> {
    let Some(event) = &row.event else {
        return Ok(Some(format!("event {} was deleted", row.event_id)));
    };
    let expected = match seal_of(keys, row.key_version, row.seq, prev, event) {
        Ok(mac) => mac,
        Err(CryptoError::UnknownKeyVersion(v)) => {
            return Ok(Some(format!(
                "sealed with master key version {v}, which is not loaded"
            )))
        }
        Err(e) => return Err(e),
    };
    let ok: bool = subtle::ConstantTimeEq::ct_eq(&expected[..], row.mac.as_slice()).into();
    Ok((!ok).then(|| {
        format!(
            "event {} was modified, or the chain was reordered or re-computed without the key",
            row.event_id
        )
    }))
}

/// Whether master key version `version` made the newest seal it is recorded as having made:
/// `None` when it sealed nothing that can be checked on its own (its predecessor is gone).
/// Used once per version, before its check value is recorded (see `app::keys`).
pub async fn key_made_newest_seal(
    pool: &PgPool,
    keys: &KeyRing,
    version: i32,
) -> Result<Option<bool>, SealError> {
    let Some(seq) = store::keys::newest_seal_of_version(pool, version).await? else {
        return Ok(None);
    };
    let prev = if seq == 1 {
        vec![0u8; 32]
    } else {
        match store::seals::seals_after(pool, seq - 2, 1).await?.pop() {
            Some(p) if p.seq == seq - 1 => p.mac,
            _ => match store::seals::anchor_before(pool, seq).await? {
                Some(a) if a.seq == seq - 1 => a.mac,
                _ => return Ok(None),
            },
        }
    };
    let Some(row) = store::seals::seals_after(pool, seq - 1, 1).await?.pop() else {
        return Ok(None);
    };
    if row.event.is_none() {
        return Ok(None);
    }
    Ok(Some(check_row(keys, &row, &prev)?.is_none()))
}

/// The newest seal as a checkpoint.
pub async fn checkpoint(pool: &PgPool) -> Result<Option<Checkpoint>, SealError> {
    let row = store::seals::newest_seal(pool).await?;
    Ok(row.map(|r| Checkpoint {
        seq: r.seq,
        event_id: r.event_id,
        sealed_at: r.sealed_at,
        mac: hex(&r.mac),
    }))
}

/// Deletes sealed events that occurred before `before`, leaving a signed anchor so the rest of
/// the chain still verifies. Returns the number of events deleted.
pub async fn prune(pool: &PgPool, keys: &KeyRing, before: DateTime<Utc>) -> Result<u64, SealError> {
    let mut tx = pool.begin().await?;
    // Hold the sealing lock so the chain tip does not move under us.
    while !store::seals::try_lock_sealing(&mut *tx).await? {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(upto) = store::seals::prunable_prefix(&mut *tx, before).await? else {
        tx.commit().await?;
        return Ok(0);
    };
    let last = store::seals::seals_after(&mut *tx, upto - 1, 1).await?;
    let Some(last) = last.into_iter().next() else {
        tx.commit().await?;
        return Ok(0);
    };
    let version = keys.current_version();
    let anchor = Anchor {
        seq: last.seq,
        mac: last.mac.clone(),
        key_version: version,
        signature: anchor_signature(keys, version, last.seq, &last.mac)?.to_vec(),
    };
    let deleted = store::seals::prune_prefix(&mut *tx, &anchor).await?;
    tx.commit().await?;
    Ok(deleted)
}

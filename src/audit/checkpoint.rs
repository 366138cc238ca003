//! Signed checkpoints of the seal chain, published where a database administrator cannot
//! rewrite them (PCI DSS 10.3.3, 10.3.4).
//!
//! The seal chain (see [`super::seal`]) proves that nothing inside the sealed history changed,
//! but someone who deletes the newest events with their seals, or every event and seal (the
//! sealer then starts a fresh chain), leaves a chain that is consistent on its own. A checkpoint
//! states "the chain reached position `seq` with chain MAC `mac`", signed with a MAC under the
//! audit seal key (derived from the master key, never in the database), so only payvault can
//! make one. Every instance publishes one every `PAYVAULT_AUDIT_CHECKPOINT_SECS`, and once more
//! when it stops:
//!
//! - to the JSON log stream: an INFO line with target [`LOG_TARGET`];
//! - to `PAYVAULT_AUDIT_CHECKPOINT_FILE`, when set: one JSON line per checkpoint, appended
//!   (`O_APPEND`, created `0600`), for a log shipper to carry off the box.
//!
//! `payvault audit verify --checkpoint-file FILE` reads such a file (or a JSON log holding the
//! checkpoint lines), drops lines whose signature does not verify, and checks every remaining
//! checkpoint against the chain ([`check`]): a chain that ends before a checkpoint's position was
//! truncated; a position whose chain MAC differs from the checkpoint's was reset or rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::seal::{self, Problem, SealError};
use crate::crypto::{CryptoError, KeyRing};
use crate::store;

/// The `tracing` target of the checkpoint log lines.
pub const LOG_TARGET: &str = "payvault::audit::checkpoint";
const DOMAIN: &[u8] = b"payvault-audit-checkpoint-v1";

/// A signed statement that the seal chain reached `seq` with chain MAC `mac`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// Chain position of the newest sealed event.
    pub seq: i64,
    /// The event sealed at `seq`.
    pub event_id: i64,
    /// Hex of the chain MAC (seal) at `seq`.
    pub mac: String,
    pub sealed_at: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
    /// The master key version whose audit seal key signed this checkpoint.
    pub key_version: i32,
    /// Hex of HMAC-SHA256 over all the fields above under that key.
    pub signature: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signature_of(
    keys: &KeyRing,
    key_version: i32,
    seq: i64,
    event_id: i64,
    mac: &str,
    sealed_at: DateTime<Utc>,
    published_at: DateTime<Utc>,
) -> Result<[u8; 32], CryptoError> {
    keys.seal_mac(
        key_version,
        &[
            DOMAIN,
            &seq.to_be_bytes(),
            &event_id.to_be_bytes(),
            mac.as_bytes(),
            &sealed_at.timestamp_micros().to_be_bytes(),
            &published_at.timestamp_micros().to_be_bytes(),
            &key_version.to_be_bytes(),
        ],
    )
}

impl SignedCheckpoint {
    /// Signs the chain position `at` under the current key version.
    pub fn sign(
        keys: &KeyRing,
        at: &seal::Checkpoint,
        published_at: DateTime<Utc>,
    ) -> Result<Self, CryptoError> {
        let key_version = keys.current_version();
        // Microseconds, as the line holds them.
        let micros = |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros());
        let sealed_at = micros(at.sealed_at).unwrap_or(at.sealed_at);
        let published_at = micros(published_at).unwrap_or(published_at);
        let signature = signature_of(
            keys,
            key_version,
            at.seq,
            at.event_id,
            &at.mac,
            sealed_at,
            published_at,
        )?;
        Ok(Self {
            seq: at.seq,
            event_id: at.event_id,
            mac: at.mac.clone(),
            sealed_at,
            published_at,
            key_version,
            signature: hex(&signature),
        })
    }

    /// `Err` with the reason when the signature does not verify under the loaded keys.
    pub fn check_signature(&self, keys: &KeyRing) -> Result<(), String> {
        let expected = match signature_of(
            keys,
            self.key_version,
            self.seq,
            self.event_id,
            &self.mac,
            self.sealed_at,
            self.published_at,
        ) {
            Ok(sig) => hex(&sig),
            Err(CryptoError::UnknownKeyVersion(v)) => {
                return Err(format!(
                    "signed with master key version {v}, which is not loaded"
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), self.signature.as_bytes()).into();
        if ok {
            Ok(())
        } else {
            Err("the signature does not verify (forged or altered)".into())
        }
    }

    /// The line written to the checkpoint file.
    pub fn to_line(&self) -> String {
        serde_json::json!({
            "seq": self.seq,
            "event_id": self.event_id,
            "mac": self.mac,
            "sealed_at": self.sealed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "published_at": self.published_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "key_version": self.key_version,
            "signature": self.signature,
        })
        .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Seal(#[from] SealError),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot append to the audit checkpoint file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Opens `path` for appending, creating it `0600`.
fn open_append(path: &Path) -> Result<std::fs::File, PublishError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| PublishError::File {
            path: path.display().to_string(),
            source,
        })
}

/// Appends `line` in one write (with `O_APPEND`, lines of concurrent writers do not interleave)
/// and syncs it to disk.
fn append_line(path: &Path, line: &str) -> Result<(), PublishError> {
    let mut file = open_append(path)?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|source| PublishError::File {
            path: path.display().to_string(),
            source,
        })
}

/// Whether the file is empty or ends with a newline.
fn ends_a_line(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    if f.seek(SeekFrom::End(0))? == 0 {
        return Ok(true);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Publishes checkpoints to the log stream and, when configured, the checkpoint file.
#[derive(Debug)]
pub struct Publisher {
    file: Option<PathBuf>,
    last: Option<SignedCheckpoint>,
}

impl Publisher {
    /// Checks that the file (if any) can be appended to, so a wrong path stops `serve` at start.
    /// A line left cut short by a crash is ended, so the next checkpoint starts a line of its own.
    pub fn new(file: Option<PathBuf>) -> Result<Self, PublishError> {
        if let Some(path) = &file {
            let failed = |source| PublishError::File {
                path: path.display().to_string(),
                source,
            };
            let mut f = open_append(path)?;
            if !ends_a_line(path).map_err(failed)? {
                f.write_all(b"\n").map_err(failed)?;
            }
        }
        Ok(Self { file, last: None })
    }

    /// Signs and publishes the newest chain position (nothing while nothing is sealed), and
    /// logs an error when the chain no longer reaches the last position this instance published.
    pub async fn publish(
        &mut self,
        pool: &PgPool,
        keys: &KeyRing,
    ) -> Result<Option<SignedCheckpoint>, PublishError> {
        let tip = seal::checkpoint(pool).await?;
        if let Some(last) = &self.last {
            let at = store::checkpoints::macs_at(pool, &[last.seq]).await?;
            let pruned = at.is_empty()
                && store::checkpoints::extent(pool)
                    .await?
                    .1
                    .is_some_and(|p| p > last.seq);
            if !pruned && !at.iter().any(|p| hex(&p.mac) == last.mac) {
                tracing::error!(
                    target: LOG_TARGET,
                    seq = last.seq,
                    chain_end = tip.as_ref().map_or(0, |t| t.seq),
                    "the audit chain no longer reaches the last checkpoint: truncated or reset (run `payvault audit verify --checkpoint-file`)"
                );
            }
        }
        let Some(tip) = tip else {
            return Ok(None);
        };
        let cp = SignedCheckpoint::sign(keys, &tip, Utc::now())?;
        let sealed_at = cp.sealed_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let published_at = cp.published_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        tracing::info!(
            target: LOG_TARGET,
            seq = cp.seq,
            event_id = cp.event_id,
            mac = %cp.mac,
            sealed_at = %sealed_at,
            published_at = %published_at,
            key_version = cp.key_version,
            signature = %cp.signature,
            "audit checkpoint"
        );
        if let Some(path) = self.file.clone() {
            let line = format!("{}\n", cp.to_line());
            // Reopened for each line, so a log rotation that renames the file is followed; written
            // and synced off the async threads.
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || append_line(&path, &line))
                .await
                .map_err(|e| PublishError::File {
                    path: shown,
                    source: std::io::Error::other(e),
                })??;
        }
        metrics::gauge!("payvault_audit_checkpoint_seq").set(cp.seq as f64);
        self.last = Some(cp.clone());
        Ok(Some(cp))
    }
}

/// Publishes a checkpoint every `every` until the task is aborted.
pub async fn run(
    pool: PgPool,
    keys: Arc<KeyRing>,
    publisher: Arc<Mutex<Publisher>>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = publisher.lock().await.publish(&pool, &keys).await {
            tracing::warn!(target: LOG_TARGET, error = %e, "could not publish an audit checkpoint; will retry");
        }
    }
}

/// What a checkpoint file holds.
#[derive(Debug, Default)]
pub struct CheckpointFile {
    /// Checkpoints whose signature verifies, in file order.
    pub valid: Vec<SignedCheckpoint>,
    /// Lines ignored: (line number, why).
    pub ignored: Vec<(usize, String)>,
}

/// Reads checkpoint lines: those of a checkpoint file, or payvault's JSON log lines with target
/// [`LOG_TARGET`] (other lines of such a log are skipped). A last line cut short by a crash
/// (no newline, not JSON) is skipped silently; any other line that is not a checkpoint, or whose
/// signature does not verify, is listed in `ignored`.
pub fn parse(text: &str, keys: &KeyRing) -> CheckpointFile {
    let mut out = CheckpointFile::default();
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if torn_tail && number == lines.len() => continue,
            Err(_) => {
                out.ignored.push((number, "not JSON".into()));
                continue;
            }
        };
        // A payvault JSON log line: the checkpoint is in its fields.
        let value = match value.get("fields") {
            Some(fields) if value["target"] == LOG_TARGET => fields.clone(),
            Some(_) => continue,
            None => value,
        };
        let cp: SignedCheckpoint = match serde_json::from_value(value) {
            Ok(cp) => cp,
            Err(e) => {
                out.ignored
                    .push((number, format!("not a payvault checkpoint ({e})")));
                continue;
            }
        };
        match cp.check_signature(keys) {
            Ok(()) => out.valid.push(cp),
            Err(why) => out.ignored.push((number, why)),
        }
    }
    out
}

/// Checks the chain against every checkpoint in `checkpoints` (signatures already verified):
/// the first problem, at the lowest position, or `None` when the chain still reaches each
/// checkpoint unchanged. Positions before the newest prune anchor were deleted by an audited
/// prune and are skipped (the anchor's own position is compared).
pub async fn check(
    pool: &PgPool,
    checkpoints: &[SignedCheckpoint],
) -> Result<Option<Problem>, sqlx::Error> {
    let mut by_seq: Vec<&SignedCheckpoint> = checkpoints.iter().collect();
    by_seq.sort_by_key(|c| c.seq);
    by_seq.dedup_by(|a, b| a.seq == b.seq && a.mac == b.mac && a.event_id == b.event_id);
    let mut seqs: Vec<i64> = by_seq.iter().map(|c| c.seq).collect();
    seqs.dedup();
    let found = store::checkpoints::macs_at(pool, &seqs).await?;
    let (end, pruned) = store::checkpoints::extent(pool).await?;
    let end = end.unwrap_or(0);
    let mut newest: Option<&SignedCheckpoint> = None;
    let mut at_seq: std::collections::HashMap<i64, Vec<&store::checkpoints::PositionMac>> =
        std::collections::HashMap::new();
    for p in &found {
        at_seq.entry(p.seq).or_default().push(p);
    }
    for cp in by_seq {
        let at = at_seq.get(&cp.seq).map_or(&[][..], Vec::as_slice);
        let published = cp.published_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        if at.is_empty() {
            if cp.seq > end {
                // Sorted by position: the last one seen vouches for the most.
                newest = Some(cp);
                continue;
            }
            if pruned.is_some_and(|p| cp.seq < p) {
                continue;
            }
            return Ok(Some(Problem {
                seq: Some(cp.seq),
                event_id: Some(cp.event_id),
                what: format!(
                    "the seal at chain position {} that the checkpoint published at {published} vouches for is missing",
                    cp.seq
                ),
            }));
        }
        let same = at
            .iter()
            .any(|p| hex(&p.mac) == cp.mac && p.event_id.is_none_or(|id| id == cp.event_id));
        if !same {
            let now = at.iter().find_map(|p| p.event_id);
            return Ok(Some(Problem {
                seq: Some(cp.seq),
                event_id: now,
                what: format!(
                    "the chain was reset or rewritten: the event at chain position {} has a different chain MAC than the checkpoint published at {published} vouches for (event {} then)",
                    cp.seq, cp.event_id
                ),
            }));
        }
    }
    Ok(newest.map(|cp| Problem {
        seq: Some(cp.seq),
        event_id: Some(cp.event_id),
        what: format!(
            "the newest events were deleted: the checkpoint published at {} vouches for chain position {} but the chain ends at {end}",
            cp.published_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            cp.seq
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeyRing {
        KeyRing::parse(&crate::crypto::MasterKey::generate(1).encode()).unwrap()
    }

    fn signed(keys: &KeyRing) -> SignedCheckpoint {
        let at = seal::Checkpoint {
            seq: 7,
            event_id: 9,
            sealed_at: Utc::now(),
            mac: "ab".repeat(32),
        };
        SignedCheckpoint::sign(keys, &at, Utc::now()).unwrap()
    }

    #[test]
    fn a_line_round_trips_and_any_change_breaks_its_signature() {
        let keys = keys();
        let cp = signed(&keys);
        let parsed = parse(&format!("{}\n", cp.to_line()), &keys);
        assert_eq!(parsed.valid.len(), 1, "{:?}", parsed.ignored);
        assert!(parsed.ignored.is_empty());
        for forged in [
            SignedCheckpoint {
                seq: 8,
                ..cp.clone()
            },
            SignedCheckpoint {
                mac: "cd".repeat(32),
                ..cp.clone()
            },
            SignedCheckpoint {
                published_at: cp.published_at + chrono::Duration::seconds(1),
                ..cp.clone()
            },
        ] {
            assert!(forged.check_signature(&keys).is_err());
        }
        // Another deployment's key does not verify it either.
        assert!(cp.check_signature(&self::keys()).is_err());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_other_bad_lines_are_reported() {
        let keys = keys();
        let line = signed(&keys).to_line();
        let text = format!("{line}\nnot json\n{line}\n{}", &line[..20]);
        let parsed = parse(&text, &keys);
        assert_eq!(parsed.valid.len(), 2);
        assert_eq!(parsed.ignored, vec![(2, "not JSON".to_string())]);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_ended_at_the_next_start() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("payvault-cp-unit-{}", uuid::Uuid::new_v4()));
        Publisher::new(Some(path.clone())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\"").unwrap();
        Publisher::new(Some(path.clone())).unwrap();
        Publisher::new(Some(path.clone())).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"seq\":1}\n{\"seq\"\n"
        );
        std::fs::remove_file(path).unwrap();
        let missing_dir = std::env::temp_dir().join("payvault-no-such-dir/x");
        let e = Publisher::new(Some(missing_dir)).unwrap_err().to_string();
        assert!(
            e.contains("cannot append to the audit checkpoint file"),
            "{e}"
        );
    }

    #[test]
    fn json_log_lines_carry_checkpoints() {
        let keys = keys();
        let cp = signed(&keys);
        let fields: serde_json::Value = serde_json::from_str(&cp.to_line()).unwrap();
        let log = format!(
            "{}\n{}\n",
            serde_json::json!({"target": "payvault::http", "fields": {"message": "x"}}),
            serde_json::json!({"target": LOG_TARGET, "fields": fields}),
        );
        let parsed = parse(&log, &keys);
        assert_eq!(parsed.valid, vec![cp]);
        assert!(parsed.ignored.is_empty());
    }
}

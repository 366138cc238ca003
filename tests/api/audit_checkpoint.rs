//! Signed audit checkpoints that `payvault serve` publishes by itself (issue 14, item 3): an
//! append-only file and the JSON log stream, and `payvault audit verify --checkpoint-file`
//! finding a truncated tail and a reset chain with them. Full-process tests of the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{free_port, wait_until_serving, Child};
use crate::helpers::TestDb;
use payvault::audit::AuditEvent;
use serde_json::Value;

/// A running `payvault serve` publishing a checkpoint every second to `file` and, as JSON log
/// lines, to `log` (its stderr).
struct Served {
    child: Child,
    db: TestDb,
    key: String,
    file: PathBuf,
    log: PathBuf,
    /// The test's own audit event writer, with the server's key.
    signer: payvault::store::audit_mac::EventSigner,
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("payvault-{name}-{}", uuid::Uuid::new_v4()))
}

async fn serve() -> Served {
    let db = TestDb::new().await;
    let key = payvault::crypto::MasterKey::generate(1)
        .encode()
        .as_str()
        .to_owned();
    let (file, log) = (temp("checkpoints"), temp("log"));
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", &key)
        .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYVAULT_PROCESSOR", "sandbox")
        .env("PAYVAULT_ENV", "development")
        .env("PAYVAULT_LOG_FORMAT", "json")
        .env("PAYVAULT_AUDIT_SEAL_INTERVAL_MS", "50")
        .env("PAYVAULT_AUDIT_CHECKPOINT_SECS", "1")
        .env("PAYVAULT_AUDIT_CHECKPOINT_FILE", &file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = Child(child);
    wait_until_serving(&format!("http://127.0.0.1:{port}")).await;
    let ring = payvault::crypto::KeyRing::parse(&key).unwrap();
    Served {
        child,
        db,
        signer: payvault::store::audit_mac::EventSigner::new(std::sync::Arc::new(ring)),
        key,
        file,
        log,
    }
}

impl Served {
    /// Audit events as payvault writes them (the running server seals them).
    async fn write_events(&self, n: usize) {
        for i in 0..n {
            let event = AuditEvent::system("test_event", serde_json::json!({ "i": i }));
            payvault::store::audit::insert_audit_event(&self.db.pool, &self.signer, &event)
                .await
                .unwrap();
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, Option<i64>>(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// Waits until every event is sealed and the file holds a checkpoint of the chain's end,
    /// which it returns.
    async fn checkpointed(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let unsealed = self.scalar("SELECT count(*) FROM audit_unsealed").await;
            let end = self.scalar("SELECT max(seq) FROM audit_seals").await;
            if let Some(cp) = lines(&self.file).into_iter().last() {
                if unsealed == 0 && cp["seq"] == end {
                    return cp;
                }
            }
            assert!(Instant::now() < deadline, "no checkpoint of the chain end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `payvault audit verify` with `args`.
    fn verify(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(["audit", "verify"])
            .args(args)
            .env("DATABASE_URL", self.db.url())
            .env("PAYVAULT_MASTER_KEY", &self.key)
            .output()
            .unwrap()
    }

    fn verify_file(&self, path: &Path) -> Output {
        self.verify(&["--checkpoint-file", path.to_str().unwrap()])
    }

    /// SIGTERM, and waits for a clean exit.
    async fn stop(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(Instant::now() < deadline, "payvault serve ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `sql` as a database superuser with the append-only triggers bypassed.
    async fn as_dba(&self, sql: &str) {
        sqlx::raw_sql(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; {sql} COMMIT;"
        ))
        .execute(&self.db.pool)
        .await
        .unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_truncated_tail_is_found_with_the_automatic_checkpoint_file_and_log() {
    let mut served = serve().await;
    served.write_events(12).await;
    let cp = served.checkpointed().await;
    let (ok, err) = text(&served.verify_file(&served.file));
    assert!(
        ok.contains("chain intact") && ok.contains("consistent with"),
        "{ok}{err}"
    );
    served.stop().await;

    // The file is append-only for its owner alone, one signed JSON line per checkpoint.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&served.file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let published = lines(&served.file);
    assert!(published.len() >= 2, "{published:?}");
    for line in &published {
        for field in [
            "seq",
            "event_id",
            "mac",
            "sealed_at",
            "published_at",
            "key_version",
        ] {
            assert!(!line[field].is_null(), "{field} in {line}");
        }
        assert_eq!(line["signature"].as_str().unwrap().len(), 64, "{line}");
    }
    // The stop published a last checkpoint, covering the `service_stop` event.
    let end = served.scalar("SELECT max(seq) FROM audit_seals").await;
    let last = published.last().unwrap().clone();
    assert_eq!(last["seq"], end);
    assert!(end > cp["seq"].as_i64().unwrap());

    // The same checkpoints went to the JSON log stream.
    let log = std::fs::read_to_string(&served.log).unwrap();
    let logged: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "payvault::audit::checkpoint")
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["signature"] == last["signature"]),
        "{log}"
    );
    assert!(!log.contains(&served.key[7..]), "no master key in the log");

    // A database administrator deletes the newest sealed events with their seals.
    let cut = end - 3;
    served
        .as_dba(&format!(
            "DELETE FROM audit_events WHERE id IN (SELECT event_id FROM audit_seals WHERE seq > {cut});
             DELETE FROM audit_seals WHERE seq > {cut};"
        ))
        .await;
    // The checkpoints find it (the first command after the deletion sees the chain as left).
    let out = served.verify_file(&served.file);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("TAMPERED: the newest events were deleted")
            && stdout.contains(&format!("chain position {end}"))
            && stdout.contains(&format!("the chain ends at {cut}")),
        "{stdout}"
    );
    // So do those of the JSON log stream.
    let out = served.verify_file(&served.log);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("TAMPERED:") && stdout.contains("chain position"),
        "{stdout}"
    );
    // The shorter chain is consistent on its own: only the checkpoints show the deletion.
    let out = served.verify(&[]);
    assert!(out.status.success(), "{:?}", text(&out));

    // A forged line (a later position, the old signature) is reported and ignored, and so is
    // a line signed with another master key; a torn last line (a crash mid-write) is skipped.
    let mut forged = last.clone();
    forged["seq"] = (end + 5).into();
    let foreign_key =
        payvault::crypto::KeyRing::parse(&payvault::crypto::MasterKey::generate(1).encode())
            .unwrap();
    let foreign = payvault::audit::checkpoint::SignedCheckpoint::sign(
        &foreign_key,
        &payvault::audit::seal::Checkpoint {
            seq: end + 9,
            event_id: 1,
            sealed_at: chrono::Utc::now(),
            mac: "00".repeat(32),
        },
        chrono::Utc::now(),
    )
    .unwrap();
    let torn = &last.to_string()[..30];
    let tampered_file = temp("forged");
    std::fs::write(
        &tampered_file,
        format!(
            "{}{forged}\n{}\n{torn}",
            std::fs::read_to_string(&served.file).unwrap(),
            foreign.to_line()
        ),
    )
    .unwrap();
    let out = served.verify_file(&tampered_file);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let n = published.len();
    assert!(
        stderr.contains(&format!(
            "line {} ignored: the signature does not verify",
            n + 1
        )) && stderr.contains(&format!(
            "line {} ignored: the signature does not verify",
            n + 2
        )) && !stderr.contains(&format!("line {}", n + 3)),
        "{stderr}"
    );
    assert!(
        stdout.starts_with("TAMPERED:")
            && stdout.contains("chain position")
            && !stdout.contains(&format!("chain position {}", end + 5))
            && !stdout.contains(&format!("chain position {}", end + 9)),
        "the forged positions are not believed: {stdout}"
    );
    // A file of forged lines alone vouches for nothing.
    std::fs::write(&tampered_file, format!("{forged}\n")).unwrap();
    let out = served.verify_file(&tampered_file);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out)
            .1
            .contains("holds no checkpoint signed with a loaded master key version"),
        "{:?}",
        text(&out)
    );
    std::fs::remove_file(tampered_file).unwrap();
}

#[tokio::test]
async fn a_reset_chain_is_found_by_the_running_server_and_by_verify() {
    let mut served = serve().await;
    served.write_events(5).await;
    let cp = served.checkpointed().await;
    let before = lines(&served.file);
    let first = before
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .min()
        .unwrap();
    let old_end = cp["seq"].as_i64().unwrap();

    // A database administrator deletes every event and seal; payvault seals afresh from 1.
    served
        .as_dba("DELETE FROM audit_unsealed; DELETE FROM audit_seals; DELETE FROM audit_events;")
        .await;
    served.write_events(old_end as usize + 2).await;
    // The running server notices at its next checkpoint.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&served.log).unwrap();
        if log.lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|l| {
                l["level"] == "ERROR"
                    && l["target"] == "payvault::audit::checkpoint"
                    && l["fields"]["seq"] == old_end
            })
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error logged for the reset: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.checkpointed().await;
    served.stop().await;

    // The new chain is consistent on its own, but its writers' counters are not: the deleted
    // events are missing from them. And it is not consistent with the checkpoints published
    // before.
    let out = served.verify(&[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("are missing: deleted before they were sealed"),
        "{stdout}"
    );
    let out = served.verify_file(&served.file);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("TAMPERED: the chain was reset or rewritten")
            && stdout.contains(&format!("chain position {first}")),
        "{stdout}"
    );
}

#[tokio::test]
async fn checkpoints_of_positions_removed_by_an_audited_prune_still_agree() {
    use payvault::audit::checkpoint::{self, SignedCheckpoint};
    use payvault::audit::seal;
    let db = TestDb::new().await;
    let keys = crate::helpers::test_keys();
    sqlx::raw_sql(
        "INSERT INTO audit_events (actor_kind, action, outcome, occurred_at)
         SELECT 'system', 'test_event', 'success', now() - interval '800 days' + g * interval '1 day'
         FROM generate_series(1, 30) g;
         -- Written before events carried their own MAC: the seal chain alone covers them.
         UPDATE audit_mac_epoch SET first_id = (SELECT max(id) + 1 FROM audit_events);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    seal::seal_pending(&db.pool, &keys).await.unwrap();
    // Checkpoints at positions 10, 20 and 30 (the tip), as the sealer would have published them.
    let at = |seq: i64| {
        let pool = db.pool.clone();
        let keys = keys.clone();
        async move {
            let (event_id, mac, sealed_at): (i64, Vec<u8>, chrono::DateTime<chrono::Utc>) =
                sqlx::query_as("SELECT event_id, mac, sealed_at FROM audit_seals WHERE seq = $1")
                    .bind(seq)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect();
            let position = seal::Checkpoint {
                seq,
                event_id,
                sealed_at,
                mac,
            };
            SignedCheckpoint::sign(&keys, &position, chrono::Utc::now()).unwrap()
        }
    };
    let published = vec![at(10).await, at(20).await, at(30).await];
    assert!(checkpoint::check(&db.pool, &published)
        .await
        .unwrap()
        .is_none());
    // A prune of the first 25 events leaves an anchor at 25; the checkpoints before it are not
    // reported, and the others still agree.
    let cutoff = chrono::Utc::now() - chrono::Duration::days(800 - 25) + chrono::Duration::hours(1);
    assert_eq!(seal::prune(&db.pool, &keys, cutoff).await.unwrap(), 25);
    assert!(checkpoint::check(&db.pool, &published)
        .await
        .unwrap()
        .is_none());
    // A checkpoint whose position is the anchor is compared with the anchor.
    let mut wrong = published[2].clone();
    wrong.seq = 25;
    let p = checkpoint::check(&db.pool, &[wrong])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.seq, Some(25));
    assert!(p.what.contains("reset or rewritten"), "{}", p.what);
}

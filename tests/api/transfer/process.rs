//! `payvault import` and `export` as processes: killed half-way and run again; refusals before
//! anything is read.

use std::process::Command;

use super::support::*;
use crate::helpers::{TestDb, MAX_UNSEALED};
use payvault::transfer::{Format, Preset};

#[tokio::test]
async fn a_killed_import_process_resumes_without_duplicates() {
    let db = TestDb::new().await;
    let dir = TempDir::new();
    let n = 30_000;
    std::fs::write(
        dir.path("big.csv"),
        cards(Preset::Generic, Format::Csv, n, None, 100_000),
    )
    .unwrap();
    let key = payvault::crypto::MasterKey::generate(1).encode();
    let ring = std::sync::Arc::new(payvault::crypto::KeyRing::parse(key.as_str()).unwrap());
    credential(&db, &ring).await;
    let run = |result: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.args([
            "--operator",
            "test-op",
            "import",
            "--source",
            "big",
            "--credential",
            "importer",
            "--batch",
            "500",
        ])
        .arg(dir.path("big.csv"))
        .arg("--result")
        .arg(dir.path(result))
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", key.as_str())
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env_remove("PAYVAULT_DEDUP");
        cmd
    };
    let mut child = run("r1").spawn().unwrap();
    // Kill it once some batches are committed, well before the end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let done = count(&db.pool, "SELECT count(*) FROM import_sources").await;
        if done >= 1_000 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it was killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the import made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The server finishes (or rolls back) what the dead process had in flight: wait for that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(
        &db.pool,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
    )
    .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed import's transaction never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let committed = count(&db.pool, "SELECT count(*) FROM import_sources").await;
    assert!(committed < n as i64, "killed before the end ({committed})");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM vault_entries").await,
        committed
    );

    let out = run("r2").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM vault_entries").await,
        n as i64
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM import_sources").await,
        n as i64
    );
    let lines = read_result(&dir.path("r2"));
    let already = lines
        .iter()
        .filter(|l| l["status"] == "already_imported")
        .count() as i64;
    assert_eq!(already, committed);
    // The second run sealed before it exited (the dead run's events with its own), and the
    // events of both runs verify under the master key.
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM audit_unsealed").await,
        0
    );
    let report = payvault::audit::seal::verify(&db.pool, &ring, None, MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE action IN ('import_started', 'import_finished')"
        )
        .await,
        3,
        "two starts, one finish (the killed run never finished)"
    );
}

#[test]
fn export_refuses_without_confirmation_or_operator() {
    let dir = TempDir::new();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(args)
            .env_remove("PAYVAULT_OPERATOR")
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .output()
            .unwrap()
    };
    let out = dir.path("x.pgp");
    let out = out.to_str().unwrap();
    let no_confirm = run(&[
        "--operator",
        "op",
        "export",
        "--all",
        "--recipient-key",
        "k",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&no_confirm.stderr);
    assert!(
        !no_confirm.status.success() && err.contains("--i-understand-this-exports-card-data"),
        "{err}"
    );
    let no_operator = run(&[
        "export",
        "--all",
        "--recipient-key",
        "k",
        "--out",
        out,
        "--i-understand-this-exports-card-data",
    ]);
    let err = String::from_utf8_lossy(&no_operator.stderr);
    assert!(
        !no_operator.status.success() && err.contains("--operator"),
        "{err}"
    );
    assert!(!dir.path("x.pgp").exists());
}

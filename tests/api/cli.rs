//! The `payvault` binary as an operator runs it: key generation, credential management, and
//! `serve` from start to SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{self, card_tokenize, new_txn, TestDb};
use payvault::crypto::KeyRing;
use serde_json::Value;

fn payvault(db: Option<&TestDb>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE");
    if let Some(db) = db {
        cmd.env("DATABASE_URL", db.url());
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn keys_generate_prints_a_fresh_usable_key_on_its_last_line() {
    let a = stdout(&payvault(None, &["keys", "generate"]));
    let b = stdout(&payvault(None, &["keys", "generate"]));
    let (ka, kb) = (a.lines().last().unwrap(), b.lines().last().unwrap());
    assert!(
        ka.starts_with("pvmk.1.") && ka.len() == "pvmk.1.".len() + 43,
        "{ka}"
    );
    assert_ne!(ka, kb);
    assert_eq!(KeyRing::parse(ka).unwrap().current_version(), 1);
    let v3 = stdout(&payvault(None, &["keys", "generate", "--version", "3"]));
    assert!(v3.lines().last().unwrap().starts_with("pvmk.3."));
}

#[tokio::test]
async fn credentials_create_list_revoke() {
    let db = TestDb::new().await;
    let created = create_connector(&db);
    let username = created["username"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(username.starts_with("pvc_"));
    assert!(secret.starts_with("pvs_"));
    assert_eq!(created["scopes"], serde_json::json!(["connector"]));

    let text = stdout(&payvault(
        Some(&db),
        &[
            "credentials",
            "create",
            "--name",
            "billing",
            "--kind",
            "api",
            "--scopes",
            "tokens:read,tokens:charge",
        ],
    ));
    assert!(
        text.contains("secret:   pvs_") && text.contains("tokens:read,tokens:charge"),
        "{text}"
    );

    let list = stdout(&payvault(Some(&db), &["credentials", "list"]));
    assert!(
        list.contains(username) && list.contains("billing"),
        "{list}"
    );
    assert!(!list.contains(secret), "list never shows secrets");
    let stored: String =
        sqlx::query_scalar("SELECT secret_hash FROM credentials WHERE username = $1")
            .bind(username)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(secret));

    let dup = payvault(
        Some(&db),
        &[
            "credentials",
            "create",
            "--name",
            "twilio",
            "--kind",
            "connector",
        ],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let no_scopes = payvault(
        Some(&db),
        &["credentials", "create", "--name", "x", "--kind", "api"],
    );
    assert!(String::from_utf8_lossy(&no_scopes.stderr).contains("--scopes"));
    let bad_scope = payvault(
        Some(&db),
        &[
            "credentials",
            "create",
            "--name",
            "x",
            "--kind",
            "api",
            "--scopes",
            "all",
        ],
    );
    assert!(String::from_utf8_lossy(&bad_scope.stderr).contains("unknown scope `all`"));

    stdout(&payvault(Some(&db), &["credentials", "revoke", "twilio"]));
    let list = stdout(&payvault(
        Some(&db),
        &["credentials", "list", "--format", "json"],
    ));
    assert!(
        !list.contains(username),
        "revoked credentials are hidden by default"
    );
    let all = stdout(&payvault(
        Some(&db),
        &["credentials", "list", "--all", "--format", "json"],
    ));
    assert!(all.contains(username));
    let again = payvault(Some(&db), &["credentials", "revoke", "twilio"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active credential"));

    let events: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_events ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        events,
        [
            "credential_create",
            "credential_create",
            "credential_list",
            "credential_revoke",
            "credential_list",
            "credential_list"
        ]
    );
}

#[test]
fn missing_configuration_is_reported_clearly() {
    let out = payvault(None, &["credentials", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL is required"));
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["serve"])
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .env("PAYVAULT_MASTER_KEY", "pvmk.1.not-a-key-4111111111111111")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PAYVAULT_MASTER_KEY"), "{err}");
    assert!(
        !err.contains("4111111111111111"),
        "the key text is never echoed: {err}"
    );
}

#[tokio::test]
async fn serve_migrates_answers_twilio_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let key = fresh_key();
    let key_file = std::env::temp_dir().join(format!("payvault-key-{}", uuid::Uuid::new_v4()));
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let created = create_connector(&db);

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY_FILE", &key_file)
        .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYVAULT_PROCESSOR", "sandbox")
        .env("PAYVAULT_ENV", "development")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "payvault serve did not come up");
        assert!(
            child.try_wait().unwrap().is_none(),
            "payvault serve exited early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credentials = (
        created["username"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    let resp = helpers::connector_post(
        &base,
        credentials,
        &card_tokenize(&new_txn(), "4111111111111111"),
    )
    .await;
    assert!(
        resp["token_id"].as_str().unwrap().starts_with("tok_"),
        "{resp}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "payvault serve ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("payvault listening") && stderr.contains("payvault stopped"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("4111111111111111")
            && !stderr.contains(created["secret"].as_str().unwrap())
    );
    assert!(
        !stderr.contains(&key[7..]),
        "the master key never reaches the log"
    );
    let lifecycle: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE actor_kind = 'system' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(lifecycle, ["service_start", "service_stop"]);
    let unsealed: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_unsealed")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(unsealed, 0, "a stopping instance seals what it wrote");
    std::fs::remove_file(key_file).unwrap();
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn payvault_sandbox_serves_the_generic_format() {
    let port = free_port();
    let _sandbox = Child(
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args([
                "sandbox",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--slow-ms",
                "100",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "payvault sandbox did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opts = helpers::Options::generic(
        &format!("http://127.0.0.1:{port}/charge"),
        Duration::from_secs(2),
    );
    let app = helpers::spawn_app_opts(
        std::sync::Arc::new(TestDb::new().await),
        helpers::test_keys(),
        opts,
    )
    .await;
    let cases = [
        ("10.00", None),
        ("10.12", None),
        ("10.02", Some("card_declined")),
        ("10.51", Some("insufficient_funds")),
        ("10.05", Some("processor_error")),
    ];
    for (amount, code) in cases {
        let (_, body) = app
            .post(
                "/",
                &helpers::card_charge(&new_txn(), "4111111111111111", amount),
            )
            .await;
        match code {
            None => assert!(
                body["charge_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("ch_sandbox_"),
                "{body}"
            ),
            Some(code) => assert_eq!(body["error_code"], code, "{body}"),
        }
    }
    // The sandbox honours Idempotency-Key like a real processor.
    let send = |key: &str| {
        client
            .post(format!("http://127.0.0.1:{port}/"))
            .header("idempotency-key", key)
            .body(helpers::card_charge("t1", "4111111111111111", "1.00").to_string())
            .send()
    };
    let a: Value = send("k").await.unwrap().json().await.unwrap();
    let b: Value = send("k").await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn audit_list_verify_checkpoint_and_export() {
    let key = payvault::crypto::MasterKey::generate(1).encode();
    let keys = std::sync::Arc::new(KeyRing::parse(&key).unwrap());
    let db = std::sync::Arc::new(TestDb::new().await);
    let app = helpers::spawn_app_with(db.clone(), keys.clone()).await;
    for pan in ["4111111111111111", "5555555555554444"] {
        let mut body = helpers::card_tokenize(&new_txn(), pan);
        body["cvv"] = "0729".into();
        app.post("/", &body).await;
        app.post("/", &helpers::card_charge(&new_txn(), pan, "10.02"))
            .await;
    }
    helpers::seal_all(&db.pool, &keys).await;
    let audit = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("audit")
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_KEY", key.as_str());
        cmd.output().unwrap()
    };

    let table = stdout(&audit(&["list", "--action", "charge", "--format", "table"]));
    assert!(
        table.contains("card_declined")
            && table.contains("10.02 USD")
            && table.contains("555555******4444"),
        "{table}"
    );
    let json_lines = stdout(&audit(&[
        "list",
        "--since",
        "2020-01-01",
        "--outcome",
        "failure",
        "--format",
        "json",
    ]));
    let events: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().all(|e| e["outcome"] == "failure"));
    assert_eq!(events.iter().filter(|e| e["action"] == "charge").count(), 2);
    let csv = stdout(&audit(&["list", "--action", "tokenize", "--format", "csv"]));
    assert_eq!(csv.lines().count(), 3, "header and two rows: {csv}");
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with(r#""id","occurred_at","actor_kind""#));

    let verified = stdout(&audit(&["verify"]));
    assert!(
        verified.contains("events verified, chain intact up to event"),
        "{verified}"
    );
    let checkpoint = stdout(&audit(&["checkpoint"]));
    let cp_file = std::env::temp_dir().join(format!("payvault-cp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&cp_file, &checkpoint).unwrap();
    let verified = stdout(&audit(&[
        "verify",
        "--checkpoint",
        cp_file.to_str().unwrap(),
    ]));
    assert!(verified.contains("chain intact"), "{verified}");

    let export = audit(&["export"]);
    let lines = stdout(&export);
    let exported: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(exported.len() >= 7, "{lines}");
    assert!(exported
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    let resume_from = exported[3]["seq"].as_i64().unwrap().to_string();
    let rest: Vec<Value> = stdout(&audit(&["export", "--after", &resume_from]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rest[..exported.len() - 4],
        exported[4..],
        "export resumes after a cursor"
    );
    for secret in ["4111111111111111", "5555555555554444"] {
        assert!(
            !lines.contains(secret)
                && !table.contains(secret)
                && !csv.contains(secret)
                && !json_lines.contains(secret)
        );
    }
    assert!(
        !helpers::contains_word(&helpers::strip_uuids(&lines), "0729"),
        "no CVV in the export"
    );

    // Tampering: verify fails with exit code 1 and names the place.
    sqlx::raw_sql(
        "BEGIN; SET LOCAL session_replication_role = replica;
         UPDATE audit_events SET masked_data = 'visa 411111******9999' WHERE action = 'tokenize';
         COMMIT;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = audit(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("TAMPERED:") && text.contains("was modified"),
        "{text}"
    );

    // Every read of the log above was itself audited.
    let reads = app
        .count("SELECT count(*) FROM audit_events WHERE actor_kind = 'operator' AND action IN ('audit_read', 'audit_verify', 'audit_checkpoint', 'audit_export')")
        .await;
    assert_eq!(reads, 9);
    std::fs::remove_file(cp_file).unwrap();
}

#[tokio::test]
async fn audit_prune_refuses_to_cut_into_the_retention_period() {
    let db = TestDb::new().await;
    let key = payvault::crypto::MasterKey::generate(1).encode();
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["audit", "prune", "--before", "2026-01-01"])
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", key.as_str())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention period"));
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["audit", "prune", "--before", "2020-01-01"])
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", key.as_str())
        .env("PAYVAULT_AUDIT_RETENTION_DAYS", "30")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 365"));
    let ok = stdout(
        &Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(["audit", "prune", "--before", "2020-01-01"])
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_KEY", key.as_str())
            .output()
            .unwrap(),
    );
    assert!(ok.contains("pruned 0 audit events"), "{ok}");
    let pruned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'audit_prune'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pruned, 1, "pruning is itself audited");
}

#[tokio::test]
async fn a_master_key_derived_from_a_passphrase() {
    let db = TestDb::new().await;
    let generated = stdout(&payvault(None, &["keys", "generate-passphrase"]));
    let pass = generated.lines().last().unwrap();
    assert!(pass.starts_with("pvpp-"), "{pass}");
    let run = |args: &[&str], passphrase: &str| {
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_PASSPHRASE", passphrase)
            .env_remove("PAYVAULT_MASTER_KEY")
            .output()
            .unwrap()
    };
    // Salt, cost and check value sit in the database: a guessable passphrase is refused.
    for weak in ["too short", "correct horse battery staple 42"] {
        let out = run(&["keys", "passphrase-init"], weak);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("too weak") && !err.contains(weak),
            "{err}"
        );
    }
    stdout(&run(&["keys", "passphrase-init"], pass));
    let again = run(&["keys", "passphrase-init"], pass);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has passphrase parameters"));
    let (salt, m): (Vec<u8>, i32) =
        sqlx::query_as("SELECT salt, m_cost_kib FROM master_key_kdf WHERE version = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((salt.len(), m), (16, 65536));

    // The right passphrase opens the vault (here: verifying an empty audit log needs the key)...
    let ok = run(&["audit", "verify"], pass);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // ...a wrong one is refused up front, without echoing it.
    let wrong = run(&["audit", "verify"], "incorrect horse battery staple");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("PAYVAULT_MASTER_PASSPHRASE is wrong") && !err.contains("incorrect horse"),
        "{err}"
    );

    // Keys derived from the same passphrase and parameters are the same key.
    let k1 = payvault::crypto::MasterKey::from_passphrase(1, pass, &salt, 8, 1, 1).unwrap();
    let k2 = payvault::crypto::MasterKey::from_passphrase(1, pass, &salt, 8, 1, 1).unwrap();
    assert_eq!(k1.check_mac(), k2.check_mac());
    let k3 =
        payvault::crypto::MasterKey::from_passphrase(1, "another passphrase!!", &salt, 8, 1, 1)
            .unwrap();
    assert_ne!(k1.check_mac(), k3.check_mac());
}

#[tokio::test]
async fn sigterm_during_a_slow_charge_lets_it_finish_and_logs_json() {
    let db = TestDb::new().await;
    let key = fresh_key();
    let created = create_connector(&db);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", &key)
        .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYVAULT_PROCESSOR", "sandbox")
        .env("PAYVAULT_ENV", "development")
        .env("PAYVAULT_SANDBOX_SLOW_MS", "1500")
        .env("PAYVAULT_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&base).await;
    // The sandbox's slow case (amount ending in .12) is in flight when SIGTERM arrives.
    let charge = client
        .post(format!("{base}/"))
        .basic_auth(
            created["username"].as_str().unwrap(),
            created["secret"].as_str(),
        )
        .body(helpers::card_charge(&new_txn(), "4111111111111111", "10.12").to_string())
        .send();
    let pid = child.id().to_string();
    let term = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_events WHERE action = 'charge_attempt'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if started > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the charge never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    };
    let (answer, ()) = tokio::join!(charge, term);
    let answer: Value = answer.unwrap().json().await.unwrap();
    assert!(
        answer["charge_id"]
            .as_str()
            .unwrap()
            .starts_with("ch_sandbox_"),
        "{answer}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let state: String =
        sqlx::query_scalar("SELECT state FROM idempotency_records WHERE operation = 'charge'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(state, "succeeded", "the charge was recorded before exit");

    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "payvault stopped"));
    assert!(
        lines.iter().any(|l| l["span"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())),
        "request lines carry the request id"
    );
    assert!(!stderr.contains("4111111111111111"));
}

#[tokio::test]
async fn commands_on_an_unmigrated_database_say_to_migrate() {
    let db = TestDb::new().await;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = payvault(
        Some(&db),
        &[
            "credentials",
            "create",
            "--name",
            "twilio",
            "--kind",
            "connector",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run `payvault migrate` first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&payvault(Some(&db), &["migrate"]));
    stdout(&payvault(
        Some(&db),
        &[
            "credentials",
            "create",
            "--name",
            "twilio",
            "--kind",
            "connector",
        ],
    ));
}

/// A new master key, as `payvault keys generate` prints it.
fn fresh_key() -> String {
    stdout(&payvault(None, &["keys", "generate"]))
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// A connector credential created with the CLI, as its JSON output.
fn create_connector(db: &TestDb) -> Value {
    let args = [
        "credentials",
        "create",
        "--name",
        "twilio",
        "--kind",
        "connector",
        "--format",
        "json",
    ];
    serde_json::from_str(&stdout(&payvault(Some(db), &args))).unwrap()
}

/// Polls `base`/healthz until payvault answers, with a deadline.
pub(crate) async fn wait_until_serving(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "payvault serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn production_refuses_development_keys_sandbox_and_plain_http() {
    let dev_key = stdout(&payvault(None, &["keys", "generate", "--development"]))
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(dev_key.starts_with("pvdev.1."), "{dev_key}");
    let serve = |key: &str, processor: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("serve")
            .env("PAYVAULT_ENV", "production")
            // Never reached: the refusal comes before any connection.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            // Any free port: these tests run in parallel and must not race for 8080.
            .env("PAYVAULT_LISTEN", "127.0.0.1:0")
            .env("PAYVAULT_MASTER_KEY", key)
            // The plain variable is accepted here: this test is about other settings.
            .env("PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY", "true")
            .env_remove("PAYVAULT_PROCESSOR")
            .env_remove("PAYVAULT_PROCESSOR_URL");
        for (name, value) in processor {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&dev_key, &[("PAYVAULT_PROCESSOR", "sandbox")]);
    assert!(
        err.contains("PAYVAULT_ENV=production refuses to start")
            && err.contains("development master key")
            && err.contains("PAYVAULT_PROCESSOR=sandbox"),
        "{err}"
    );
    assert!(!err.contains(&dev_key[8..]), "the key is never printed");
    let err = serve(
        &fresh_key(),
        &[("PAYVAULT_PROCESSOR_URL", "http://processor.example/charge")],
    );
    assert!(err.contains("must be https"), "{err}");
    // A production key and an https processor pass the checks and fail only on the database.
    let err = serve(
        &fresh_key(),
        &[("PAYVAULT_PROCESSOR_URL", "https://processor.example/charge")],
    );
    assert!(
        !err.contains("refuses") && err.contains("cannot connect to the database"),
        "{err}"
    );
}

#[test]
fn production_refuses_a_misspelt_processor_setting_naming_it_without_its_value() {
    let secret = "sk_live_misspelt9Qz7wX";
    let serve = |env: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("serve")
            .env("PAYVAULT_ENV", env)
            // Never reached: the refusal comes before any connection.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            // Any free port: these tests run in parallel and must not race for 8080.
            .env("PAYVAULT_LISTEN", "127.0.0.1:0")
            .env("PAYVAULT_MASTER_KEY", fresh_key())
            .env_remove("PAYVAULT_PROCESSOR_PROFILE")
            .env_remove("PAYVAULT_PROCESSOR_URL")
            .env_remove("PAYVAULT_PROCESSOR_ENVIRONMENT")
            .env("PAYVAULT_PROCESSOR", "stripe")
            // The profile's setting is spelt right once (so the profile resolves)...
            .env("PAYVAULT_PROCESSOR_SECRET_KEY", "sk_live_correct0000")
            // ...and wrong once: production must not start with a setting silently ignored.
            .env("PAYVAULT_PROCESSOR_SECRET_KY", secret);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let err = serve("production");
    assert!(
        err.contains("PAYVAULT_ENV=production refuses to start")
            && err.contains("PAYVAULT_PROCESSOR_SECRET_KY is set but not read"),
        "{err}"
    );
    assert!(!err.contains(secret), "the value is never printed: {err}");
    assert!(!err.contains("sk_live_correct0000"), "{err}");
    // Development only warns (by name) and goes on to fail on the database.
    let err = serve("development");
    assert!(
        !err.contains("refuses")
            && err.contains("PAYVAULT_PROCESSOR_SECRET_KY")
            && err.contains("cannot connect to the database"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");
}

#[tokio::test]
async fn a_development_connector_credential_from_the_environment_works_across_restarts() {
    let db = TestDb::new().await;
    let key = fresh_key();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let credential = "twilio-dev:dev-only-password-1234";
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payvault"))
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_KEY", &key)
            .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PAYVAULT_DEV_CONNECTOR_CREDENTIAL", credential)
            .env("PAYVAULT_ENV", "development")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_serving(&base).await;
        let answer = helpers::connector_post(
            &base,
            ("twilio-dev", "dev-only-password-1234"),
            &card_tokenize(&new_txn(), "4111111111111111"),
        )
        .await;
        assert!(answer["token_id"].is_string(), "round {round}: {answer}");
        // The container health check: /readyz on PAYVAULT_LISTEN's port.
        let healthcheck = || {
            Command::new(env!("CARGO_BIN_EXE_payvault"))
                .arg("healthcheck")
                .env("PAYVAULT_LISTEN", format!("0.0.0.0:{port}"))
                .env_remove("PAYVAULT_TLS_CERT")
                .output()
                .unwrap()
        };
        let ok = healthcheck();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
        let down = healthcheck();
        assert!(
            !down.status.success(),
            "healthcheck fails once payvault is gone"
        );
        assert!(String::from_utf8_lossy(&down.stderr).contains("did not answer"));
    }
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE username = 'twilio-dev' AND revoked_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(created, 1, "created once, found again on restart");
}

/// Names of the `PAYVAULT_*` variables (and `DATABASE_URL`) quoted as string literals in `src/`.
fn variables_read_by_the_source() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices('"') {
                    let rest = &text[i + 1..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    let closed = rest[name.len()..].starts_with('"');
                    if closed && (name.starts_with("PAYVAULT_") || name == "DATABASE_URL") {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names
}

#[test]
fn the_readme_configuration_table_lists_exactly_the_variables_payvault_reads() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let table: std::collections::BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l[3..].split('`').next().map(str::to_owned))
        .filter(|n| n.starts_with("PAYVAULT_") || n == "DATABASE_URL")
        .collect();
    let read = variables_read_by_the_source();
    assert!(read.len() > 30, "the scan found the variables: {read:?}");
    let undocumented: Vec<_> = read.difference(&table).collect();
    let stale: Vec<_> = table.difference(&read).collect();
    assert!(
        undocumented.is_empty(),
        "not in the README table: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "in the README table but never read: {stale:?}"
    );
}

#[test]
fn the_compose_files_sample_master_key_is_a_development_key() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/master_key");
    let text = std::fs::read_to_string(path).unwrap();
    let keys = payvault::crypto::MasterKey::parse_list(text.trim()).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].is_development(),
        "production must refuse the public sample key"
    );
}

#[test]
fn bad_serve_settings_are_named_without_echoing_secrets() {
    let serve = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("serve")
            // Never reached: configuration is checked before any connection.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            // Any free port: these tests run in parallel and must not race for 8080.
            .env("PAYVAULT_LISTEN", "127.0.0.1:0")
            .env("PAYVAULT_MASTER_KEY", fresh_key())
            // The plain variable is accepted here: this test is about other settings.
            .env("PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY", "true")
            .env_remove("PAYVAULT_ENV");
        for (name, value) in vars {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&[("PAYVAULT_ENV", "staging")]);
    assert!(
        err.contains("PAYVAULT_ENV") && err.contains("development, production"),
        "{err}"
    );
    let err = serve(&[("PAYVAULT_TLS_CERT", "/etc/ssl/cert.pem")]);
    assert!(err.contains("PAYVAULT_TLS_KEY"), "{err}");
    let err = serve(&[
        ("PAYVAULT_TLS_CERT", "/nonexistent/cert.pem"),
        ("PAYVAULT_TLS_KEY", "/nonexistent/key.pem"),
    ]);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    for (value, reason) in [
        (
            "secret-without-a-username-part",
            "must be username:password",
        ),
        ("twilio-dev:SHORTSECRET", "at least 16 characters"),
        (":a-long-enough-password-here", "the username is empty"),
    ] {
        let err = serve(&[("PAYVAULT_DEV_CONNECTOR_CREDENTIAL", value)]);
        assert!(err.contains(reason), "{err}");
        let secret = value.rsplit(':').next().unwrap();
        assert!(!err.contains(secret), "the value is never echoed: {err}");
    }
}

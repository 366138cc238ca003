//! Start-up safety, as an operator meets it with the `payvault` binary: a wrong master key is
//! refused naming its version (also when its check value is recorded for the first time, from
//! the data it protects), production is the default, secret files are checked, and database
//! errors say what is wrong.

use std::process::{Command, Output};
use std::sync::Arc;

use crate::helpers::{self, card_tokenize, new_txn, spawn_app_with, TestDb};
use payvault::audit::AuditEvent;
use payvault::crypto::{KeyRing, MasterKey};

pub(crate) fn key_text(version: i32) -> String {
    MasterKey::generate(version).encode().to_string()
}

/// Runs `payvault args` with the given variables and none inherited that could change it.
pub(crate) fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    cmd.args(args);
    for name in [
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "PAYVAULT_ENV",
        "PAYVAULT_MASTER_KEY",
        "PAYVAULT_MASTER_KEY_FILE",
        "PAYVAULT_MASTER_PASSPHRASE",
        "PAYVAULT_PROCESSOR",
        "PAYVAULT_PROCESSOR_URL",
        "PAYVAULT_PROCESSOR_PROFILE",
    ] {
        cmd.env_remove(name);
    }
    // Any free port: tests run in parallel and must not race for 8080.
    cmd.env("PAYVAULT_LISTEN", "127.0.0.1:0");
    // Keys in plain variables are accepted (production would refuse them): these tests are
    // about other settings; `custody` tests the refusal.
    cmd.env_remove("PAYVAULT_KEY_PROVIDER")
        .env("PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY", "true");
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_wrong_key(out: &Output, version: i32, key: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("wrong key") && err.contains(&format!("master key version {version} ")),
        "{err}"
    );
    assert!(!err.contains("TAMPERED"), "{err}");
    assert!(!err.contains(&key[7..]), "the key is never printed: {err}");
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start_naming_its_version() {
    let db = TestDb::new().await;
    let (right, wrong) = (key_text(1), key_text(1));
    // The first command that loads version 1 records its check value...
    let ok = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &right)],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM master_key_checks WHERE version = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1);

    // ...so `audit verify` with another key says "wrong key", not TAMPERED...
    let verify = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &wrong)],
    );
    assert_wrong_key(&verify, 1, &wrong);
    // ...`serve` does not start (and writes nothing: no audit event, no seal)...
    let events_before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let serve = run(
        &["serve"],
        &[
            ("DATABASE_URL", &db.url()),
            ("PAYVAULT_MASTER_KEY", &wrong),
            ("PAYVAULT_ENV", "development"),
        ],
    );
    assert_wrong_key(&serve, 1, &wrong);
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        events_before, events_after,
        "a refused start leaves no trace"
    );
    // ...and a ring with a new right version 2 still names the wrong version 1.
    let ring = format!("{},{wrong}", key_text(2));
    let rotate = run(
        &["keys", "rotate"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &ring)],
    );
    assert_wrong_key(&rotate, 1, &wrong);
}

#[tokio::test]
async fn the_first_check_value_of_a_version_in_use_is_proved_by_its_entries() {
    let db = Arc::new(TestDb::new().await);
    let (right, wrong) = (key_text(1), key_text(1));
    let app = spawn_app_with(db.clone(), Arc::new(KeyRing::parse(&right).unwrap())).await;
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert!(body["token_id"].is_string(), "{body}");
    drop(app);
    // As if the data predated check values (the first start with this code).
    sqlx::query("DELETE FROM master_key_checks")
        .execute(&db.pool)
        .await
        .unwrap();

    let verify = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &wrong)],
    );
    assert_wrong_key(&verify, 1, &wrong);
    assert!(
        stderr(&verify).contains("does not decrypt"),
        "{}",
        stderr(&verify)
    );
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM master_key_checks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(none, 0, "a wrong key is never recorded as the right one");

    let ok = run(
        &["keys", "status"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &right)],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &right)],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT check_mac FROM master_key_checks WHERE version = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let ring = KeyRing::parse(&right).unwrap();
    assert_eq!(stored, ring.check_value(1).unwrap().to_vec());
}

#[tokio::test]
async fn the_first_check_value_of_a_version_that_only_sealed_is_proved_by_its_seals() {
    let db = TestDb::new().await;
    let (right, wrong) = (key_text(1), key_text(1));
    let ring = KeyRing::parse(&right).unwrap();
    for action in ["first", "second"] {
        payvault::store::audit::insert_audit_event(&db.pool, &AuditEvent::operator(action))
            .await
            .unwrap();
    }
    helpers::seal_all(&db.pool, &ring).await;

    let verify = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &wrong)],
    );
    assert_wrong_key(&verify, 1, &wrong);
    assert!(
        stderr(&verify).contains("audit seals"),
        "{}",
        stderr(&verify)
    );
    let ok = run(
        &["audit", "verify"],
        &[("DATABASE_URL", &db.url()), ("PAYVAULT_MASTER_KEY", &right)],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn production_is_the_default_and_development_must_be_said() {
    let key = key_text(1);
    let dev_key = MasterKey::generate_development(1).encode().to_string();
    let vars = |env: Option<&'static str>| {
        let mut v = vec![
            (
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none".to_owned(),
            ),
            ("PAYVAULT_MASTER_KEY", dev_key.clone()),
            ("PAYVAULT_PROCESSOR", "sandbox".to_owned()),
            ("PAYVAULT_PROCESSOR_URL", String::new()),
        ];
        if let Some(env) = env {
            v.push(("PAYVAULT_ENV", env.to_owned()));
        }
        v
    };
    let serve = |env| {
        let v = vars(env);
        let refs: Vec<(&str, &str)> = v.iter().map(|(n, x)| (*n, x.as_str())).collect();
        stderr(&run(&["serve"], &refs))
    };
    let unset = serve(None);
    assert!(
        unset.contains("PAYVAULT_ENV=production refuses to start")
            && unset.contains("development master key")
            && unset.contains("PAYVAULT_PROCESSOR=sandbox"),
        "{unset}"
    );
    let development = serve(Some("development"));
    assert!(
        !development.contains("refuses") && development.contains("connection refused"),
        "{development}"
    );
    // A production key and no processor start under the default.
    let out = run(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("PAYVAULT_MASTER_KEY", &key),
        ],
    );
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn database_errors_say_what_is_wrong_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://payvault:s3cr3t-password@127.0.0.1:{port}/payvault");
    for args in [&["serve"][..], &["migrate"], &["credentials", "list"]] {
        let started = std::time::Instant::now();
        let out = run(
            args,
            &[
                ("DATABASE_URL", &url),
                ("PAYVAULT_MASTER_KEY", &key_text(1)),
            ],
        );
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("connection refused at 127.0.0.1:{port}"))
                && !err.contains("timed out")
                && !err.contains("s3cr3t"),
            "{args:?}: {err}"
        );
        // Not after the pool's retries (its acquire timeout): a refused connection is final.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    let out = run(
        &["migrate"],
        &[("DATABASE_URL", "mysql://root:s3cr3t@127.0.0.1/payvault")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("unsupported database URL scheme `mysql`") && !err.contains("s3cr3t"),
        "{err}"
    );
}

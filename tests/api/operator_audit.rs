//! Operator access through the CLI (issue 14, item 5): `keys rotate` and `audit export` are on
//! record before they touch card data or events, even when they then fail; `credentials list` is
//! audited; the operator named with `--operator` / `PAYVAULT_OPERATOR` is recorded beside the OS
//! user.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use crate::helpers::{self, card_tokenize, new_txn, spawn_app_with, TestDb};
use payvault::crypto::{KeyRing, MasterKey};
use serde_json::Value;

fn payvault(db: &TestDb, keys: &str, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    for name in [
        "DATABASE_URL_FILE",
        "PAYVAULT_MASTER_KEY_FILE",
        "PAYVAULT_MASTER_PASSPHRASE",
        "PAYVAULT_OPERATOR",
    ] {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", keys)
        .env("USER", "ops-shared");
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

async fn events(db: &TestDb, actions: &[&str]) -> Vec<(String, Value)> {
    sqlx::query_as::<_, (String, sqlx::types::Json<Value>)>(
        "SELECT action, details FROM audit_events WHERE action = ANY($1) ORDER BY id",
    )
    .bind(actions)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(a, d)| (a, d.0))
    .collect()
}

#[tokio::test]
async fn keys_rotate_is_on_record_before_it_re_encrypts_an_entry() {
    let (v1, v2) = (
        MasterKey::generate(1).encode().to_string(),
        MasterKey::generate(2).encode().to_string(),
    );
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_with(db.clone(), Arc::new(KeyRing::parse(&v1).unwrap())).await;
    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "{body}");
    drop(app);
    // Every re-encryption fails, as a crash or a lost connection half-way would.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON vault_entries FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let both = format!("{v1},{v2}");
    let out = run(&mut payvault(
        &db,
        &both,
        &["keys", "rotate", "--operator", "alice"],
        &[],
    ));
    assert!(!out.status.success());
    let recorded = events(&db, &["key_rotate", "key_rotate_done"]).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (action, details) = &recorded[0];
    assert_eq!(action, "key_rotate");
    assert_eq!(details["to_version"], 2);
    assert_eq!(details["pending"], 1);
    assert_eq!(details["operator"], "alice");
    assert_eq!(details["os_user"], "ops-shared");

    // Once it can, it finishes, and says so.
    sqlx::raw_sql("DROP TRIGGER refuse ON vault_entries")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = run(&mut payvault(&db, &both, &["keys", "rotate"], &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = events(&db, &["key_rotate", "key_rotate_done"]).await;
    let actions: Vec<&str> = recorded.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["key_rotate", "key_rotate", "key_rotate_done"]);
    assert_eq!(recorded[2].1["rotated"], 1);
}

#[tokio::test]
async fn audit_export_is_on_record_before_it_reads_an_event() {
    let key = MasterKey::generate(1).encode().to_string();
    let keys = Arc::new(KeyRing::parse(&key).unwrap());
    let db = TestDb::new().await;
    payvault::store::audit::insert_audit_event(
        &db.pool,
        &helpers::signer_for(&keys),
        &payvault::audit::AuditEvent::operator("something"),
    )
    .await
    .unwrap();
    helpers::seal_all(&db.pool, &keys).await;
    // An export whose output cannot be written (a full disk) fails after reading events: it is
    // on record all the same.
    let out = payvault(
        &db,
        &key,
        &["audit", "export"],
        &[("PAYVAULT_OPERATOR", "bob")],
    )
    .stdout(Stdio::from(std::fs::File::create("/dev/full").unwrap()))
    .output()
    .unwrap();
    assert!(!out.status.success());
    let recorded = events(&db, &["audit_export", "audit_export_done"]).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "audit_export");
    assert_eq!(recorded[0].1["after"], 0);
    assert_eq!(recorded[0].1["operator"], "bob");

    let out = run(&mut payvault(&db, &key, &["audit", "export"], &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let recorded = events(&db, &["audit_export", "audit_export_done"]).await;
    let actions: Vec<&str> = recorded.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["audit_export", "audit_export", "audit_export_done"]
    );
    assert_eq!(recorded[2].1["exported"], 1);
}

#[tokio::test]
async fn credentials_list_is_audited_with_the_declared_operator() {
    let key = MasterKey::generate(1).encode().to_string();
    let db = TestDb::new().await;
    let out = run(&mut payvault(
        &db,
        &key,
        &["credentials", "list", "--all"],
        &[("PAYVAULT_OPERATOR", "carol@example.com")],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&mut payvault(&db, &key, &["credentials", "list"], &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = events(&db, &["credential_list"]).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0].1["operator"], "carol@example.com");
    assert_eq!(recorded[0].1["include_revoked"], true);
    assert_eq!(recorded[0].1["os_user"], "ops-shared");
    // Without a declared operator, only what the OS says.
    assert!(recorded[1].1.get("operator").is_none(), "{:?}", recorded[1]);
    assert_eq!(recorded[1].1["os_user"], "ops-shared");

    // A name that could be a card number is refused, without repeating it, and nothing runs.
    let out = run(&mut payvault(
        &db,
        &key,
        &["--operator", "4111111111111111", "credentials", "list"],
        &[],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--operator") && err.contains("12 or more digits"),
        "{err}"
    );
    assert!(!err.contains("4111111111111111"), "{err}");
    assert_eq!(events(&db, &["credential_list"]).await.len(), 2);
}

//! Least-privilege database roles (issue 14, item 4): the runtime role cannot rewrite, truncate
//! or stop the audit log, yet runs the whole service; production refuses to serve as a superuser
//! or as the owner of the audit tables.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{
    self, admin_url, card_charge, card_tokenize, new_txn, spawn_app_opts, test_keys, Options,
    RuntimeRole, TestDb,
};
use payvault::audit::{seal, AuditEvent};
use payvault::config::{Environment, ProcessorConfig};
use payvault::crypto::MasterKey;
use payvault::store::audit::AuditBatch;
use sqlx::{Connection, PgConnection, PgPool};

/// Runs `sql` as the runtime role and asserts that PostgreSQL refused it for lack of privilege,
/// not because a trigger objected (a trigger binds no one who may disable it).
async fn assert_refused(pool: &PgPool, sql: &str) {
    let err = sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .expect_err(&format!("the runtime role could run: {sql}"));
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!(db.code().as_deref(), Some("42501"), "{sql}: {err}");
    let message = db.message();
    assert!(
        message.contains("permission denied") || message.contains("must be owner"),
        "{sql}: refused by something other than privileges: {message}"
    );
}

#[tokio::test]
async fn the_runtime_role_cannot_update_delete_truncate_or_disable_triggers_on_audit_tables() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let role = RuntimeRole::new(&db).await;
    let rt = role.pool().await;
    let signer = helpers::signer_for(&keys);
    // It writes and seals events, through payvault's functions...
    for action in ["first", "second"] {
        payvault::store::audit::insert_audit_event(&rt, &signer, &AuditEvent::operator(action))
            .await
            .unwrap();
    }
    assert_eq!(seal::seal_pending(&rt, &keys).await.unwrap(), 2);
    payvault::store::audit::insert_audit_event(&rt, &signer, &AuditEvent::operator("unsealed"))
        .await
        .unwrap();
    let before: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM audit_seals), (SELECT count(*) FROM audit_unsealed)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(before, (3, 2, 1));

    // ...and can change nothing there by any other way.
    for (table, column) in [
        ("audit_events", "action"),
        ("audit_seals", "mac"),
        ("audit_anchors", "mac"),
        ("audit_unsealed", "event_id"),
    ] {
        assert_refused(&rt, &format!("UPDATE {table} SET {column} = {column}")).await;
        assert_refused(&rt, &format!("DELETE FROM {table}")).await;
        assert_refused(&rt, &format!("TRUNCATE {table}")).await;
        assert_refused(&rt, &format!("ALTER TABLE {table} DISABLE TRIGGER ALL")).await;
        assert_refused(&rt, &format!("ALTER TABLE {table} DISABLE TRIGGER USER")).await;
        assert_refused(&rt, &format!("DROP TABLE {table}")).await;
    }
    // Not even with the prune switch the append-only trigger honours.
    assert_refused(
        &rt,
        "SELECT set_config('payvault.audit_prune', 'on', false); DELETE FROM audit_events",
    )
    .await;
    // No row straight into the tables: no forged seal, no poisoned queue, no event around the
    // function that writes them.
    assert_refused(
        &rt,
        "INSERT INTO audit_seals (seq, event_id, key_version, mac) VALUES (99, 1, 1, '\\x00')",
    )
    .await;
    assert_refused(&rt, "INSERT INTO audit_unsealed (event_id) VALUES (1)").await;
    assert_refused(
        &rt,
        "INSERT INTO audit_events (actor_kind, action, outcome) VALUES ('system', 'forged', 'success')",
    )
    .await;
    // Triggers stay on: replication mode is for superusers, and the functions are the owner's.
    assert_refused(&rt, "SET session_replication_role = replica").await;
    assert_refused(&rt, "ALTER FUNCTION audit_events_append_only() RENAME TO x").await;
    assert_refused(
        &rt,
        &format!("SELECT payvault_grant_runtime('{}')", role.name),
    )
    .await;

    let after: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM audit_seals), (SELECT count(*) FROM audit_unsealed)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(after, before);
    seal::seal_pending(&rt, &keys).await.unwrap();
    let report = seal::verify(&rt, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    rt.close().await;
}

/// `payvault_grant_runtime` as restated last (20261225000001): the union of every migration's
/// grants (the tables of `tenants` and `key_share_sets` included).
#[tokio::test]
async fn the_runtime_grants_are_the_union_of_every_migration() {
    let db = TestDb::new().await;
    let role = RuntimeRole::new(&db).await;
    for (table, allowed) in [
        (
            "vault_entries",
            &["SELECT", "INSERT", "UPDATE", "DELETE"][..],
        ),
        ("import_sources", &["SELECT", "INSERT"]),
        ("tenants", &["SELECT", "INSERT", "UPDATE"]),
        ("master_key_wraps", &["SELECT"]),
        ("key_share_sets", &["SELECT"]),
        ("audit_events", &["SELECT"]),
        ("audit_mac_epoch", &["SELECT"]),
        ("_sqlx_migrations", &["SELECT"]),
    ] {
        for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
            let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
                .bind(&role.name)
                .bind(table)
                .bind(privilege)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(has, allowed.contains(&privilege), "{privilege} on {table}");
        }
    }

    // The audit MAC migration's two functions (which 20261220000001's restatement left out)
    // work as the runtime role: voided counter values, and the sealer's anomaly record.
    let keys = test_keys();
    let signer = helpers::signer_for(&keys);
    let never_written = AuditEvent::operator("never_written");
    drop(AuditBatch::one(&signer, &never_written));
    let rt = role.pool().await;
    assert_eq!(signer.flush_voids(&rt).await.unwrap(), 1);
    sqlx::query("SELECT payvault_record_audit_anomalies('{}'::bigint[], '{}'::text[])")
        .execute(&rt)
        .await
        .unwrap();
    // Only the owner grants.
    assert_refused(&rt, "SELECT payvault_grant_runtime(current_user)").await;
    rt.close().await;
}

#[tokio::test]
async fn the_service_runs_fully_as_the_runtime_role() {
    let db = Arc::new(TestDb::new().await);
    let keys = test_keys();
    let role = RuntimeRole::new(&db).await;
    let opts = Options {
        database_url: Some(role.url()),
        ..Options::default()
    };
    let app = spawn_app_opts(db.clone(), keys.clone(), opts).await;
    // The server's own connections are the runtime role's.
    let user: String = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND usename <> current_user",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(user, role.name);

    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token_id"].as_str().is_some(), "{body}");
    let (status, body) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "10.00"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["charge_id"].as_str().is_some(), "{body}");

    // The server's sealer (as the runtime role) seals everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count("SELECT count(*) FROM audit_unsealed").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the runtime role's sealer did not seal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sealed = app.count("SELECT count(*) FROM audit_seals").await;
    assert!(sealed >= 3, "{sealed} seals");

    // Retention prune, as the runtime role: the chain still verifies from its anchor.
    let rt = role.pool().await;
    let deleted = seal::prune(&rt, &keys, chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert!(deleted >= 3, "{deleted} events pruned");
    assert_eq!(app.count("SELECT count(*) FROM audit_anchors").await, 1);
    helpers::seal_all(&rt, &keys).await;
    let report = seal::verify(&rt, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    rt.close().await;
}

#[tokio::test]
async fn production_serves_as_the_runtime_role() {
    let db = Arc::new(TestDb::new().await);
    let role = RuntimeRole::new(&db).await;
    let opts = Options {
        database_url: Some(role.url()),
        processor: ProcessorConfig::None,
        tune: Some(Box::new(|c| c.environment = Environment::Production)),
        ..Options::default()
    };
    let app = spawn_app_opts(db.clone(), test_keys(), opts).await;
    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token_id"].as_str().is_some(), "{body}");
}

/// `payvault serve` under production against `url`; it must exit at once.
fn serve_in_production(url: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    for name in [
        "DATABASE_URL_FILE",
        "PAYVAULT_MASTER_KEY_FILE",
        "PAYVAULT_PROCESSOR",
    ] {
        cmd.env_remove(name);
    }
    cmd.args(["serve", "--no-migrate"])
        .env("DATABASE_URL", url)
        .env("PAYVAULT_ENV", "production")
        .env("PAYVAULT_LISTEN", "127.0.0.1:0")
        .env(
            "PAYVAULT_MASTER_KEY",
            MasterKey::generate(1).encode().as_str(),
        )
        // The plain variable is accepted here: this test is about the database role.
        .env("PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY", "true")
        .output()
        .unwrap()
}

/// A database owned by an ordinary (not superuser) role, migrated by `payvault migrate` as that
/// role, which also creates the runtime role; all dropped afterwards.
struct OwnedDb {
    db: String,
    owner: String,
    runtime: String,
}

impl OwnedDb {
    fn url(&self, user: &str) -> String {
        let mut url = reqwest::Url::parse(&admin_url()).unwrap();
        url.set_path(&format!("/{}", self.db));
        url.set_username(user).unwrap();
        url.set_password(Some("owner-test-password")).unwrap();
        url.to_string()
    }
}

impl Drop for OwnedDb {
    fn drop(&mut self) {
        let (db, owner, runtime) = (self.db.clone(), self.owner.clone(), self.runtime.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    for sql in [
                        format!(r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#),
                        format!(r#"DROP ROLE IF EXISTS "{runtime}""#),
                        format!(r#"DROP ROLE IF EXISTS "{owner}""#),
                    ] {
                        let _ = sqlx::query(&sql).execute(&mut admin).await;
                    }
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn production_refuses_to_serve_as_a_superuser_or_as_the_owner_of_the_audit_tables() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let owned = OwnedDb {
        db: format!("payvault_test_owned_{id}"),
        owner: format!("payvault_owner_{id}"),
        runtime: format!("payvault_rt_{id}"),
    };
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    for sql in [
        format!(
            r#"CREATE ROLE "{}" LOGIN CREATEROLE PASSWORD 'owner-test-password'"#,
            owned.owner
        ),
        format!(r#"CREATE DATABASE "{}" OWNER "{}""#, owned.db, owned.owner),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    // The owner migrates and creates the runtime role (an audit event, MAC'd with the key).
    let key = MasterKey::generate(1).encode();
    let migrated = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["migrate", "--runtime-role", &owned.runtime])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("PAYVAULT_MASTER_KEY", key.as_str())
        .env("DATABASE_URL", owned.url(&owned.owner))
        .env("PAYVAULT_RUNTIME_PASSWORD", "owner-test-password")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(
        out.contains(&format!("runtime role {} created", owned.runtime)),
        "{out}"
    );

    // A superuser.
    let superuser = serve_in_production(&owned.url("postgres"));
    let err = String::from_utf8_lossy(&superuser.stderr);
    assert!(!superuser.status.success());
    assert!(
        err.contains("PAYVAULT_ENV=production refuses to start")
            && err.contains("a superuser")
            && err.contains("--runtime-role"),
        "{err}"
    );
    // The owner of the audit tables.
    let owner = serve_in_production(&owned.url(&owned.owner));
    let err = String::from_utf8_lossy(&owner.stderr);
    assert!(!owner.status.success());
    assert!(
        err.contains("PAYVAULT_ENV=production refuses to start")
            && err.contains("owns the audit tables")
            && err.contains(&owned.owner)
            && err.contains("--runtime-role"),
        "{err}"
    );
    // The runtime role it created passes the check (and then serves: see
    // production_serves_as_the_runtime_role); it owns nothing.
    let rt = PgPool::connect(&owned.url(&owned.runtime)).await.unwrap();
    let role = payvault::store::roles::session_role(&rt).await.unwrap();
    assert!(role.production_refusals().is_empty(), "{role:?}");
    assert_eq!(role.audit_owner.as_deref(), Some(owned.owner.as_str()));
    let owns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&rt)
    .await
    .unwrap();
    assert_eq!(owns, 0);
    rt.close().await;
    // Granting a role that owns the tables is refused.
    let grant = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["migrate", "--runtime-role", &owned.owner])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("PAYVAULT_MASTER_KEY", key.as_str())
        .env("DATABASE_URL", owned.url(&owned.owner))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&grant.stderr);
    assert!(!grant.status.success());
    assert!(err.contains("owns the payvault tables"), "{err}");
}

#[tokio::test]
async fn the_scram_verifier_is_the_one_postgres_computes() {
    let db = TestDb::new().await;
    let name = format!(
        "payvault_scram_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{name}\" PASSWORD 'correct horse'"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&name)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP ROLE \"{name}\""))
        .execute(&mut *conn)
        .await
        .unwrap();
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let (head, _) = stored.split_once('$').unwrap().1.split_once('$').unwrap();
    let (iterations, salt) = head.split_once(':').unwrap();
    use base64::prelude::{Engine, BASE64_STANDARD};
    let salt = BASE64_STANDARD.decode(salt).unwrap();
    let ours = payvault::store::roles::scram_sha256_verifier(
        "correct horse",
        &salt,
        iterations.parse().unwrap(),
    );
    assert_eq!(ours, stored);
    let other = payvault::store::roles::scram_sha256_verifier(
        "correct horsf",
        &salt,
        iterations.parse().unwrap(),
    );
    assert_ne!(other, stored);
}

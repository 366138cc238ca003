//! Security properties: nothing sensitive at rest or in logs, tamper detection, authentication,
//! and the audit trail that every request leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{
    self, assert_no_leaks, bank_tokenize, captured_logs, card_tokenize, new_txn, spawn_app,
    spawn_app_with, TestDb,
};
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{CryptoError, KeyRing, MasterKey};
use payvault::vault::{TokenizeError, Vault};
use serde_json::{json, Value};

const PANS: [&str; 8] = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "30569309025904",
    "3566002020360505",
    "6200000000000005",
    "6771798021000008",
];
const ACCOUNTS: [&str; 2] = ["12345678", "123456789"];
// Leading zeros: no number our code prints (latencies, counts) can look like these.
const CVVS: [&str; 2] = ["0729", "086"];

#[tokio::test]
async fn no_card_or_bank_number_anywhere_in_the_database_or_logs() {
    let app = spawn_app().await;
    for (i, pan) in PANS.iter().enumerate() {
        let mut body = card_tokenize(&new_txn(), pan);
        body["cvv"] = json!(CVVS[i % 2]);
        let (_, resp) = app
            .post(if i % 2 == 0 { "/" } else { "/tokenize" }, &body)
            .await;
        assert!(resp["token_id"].is_string(), "{resp}");
        // An idempotent retry and a rejected request with the same card.
        app.post("/", &body).await;
        let mut bad = body.clone();
        bad["expiry_month"] = json!("13");
        app.post("/", &bad).await;
    }
    for acct in ACCOUNTS {
        let (_, resp) = app.post("/", &bank_tokenize(&new_txn(), acct)).await;
        assert!(resp["token_id"].is_string(), "{resp}");
    }
    // Invalid requests carrying card data: a Luhn failure and a charge (not yet supported).
    let (_, resp) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111112"))
        .await;
    assert_eq!(resp["error_code"], "invalid_card_number_checksum");
    let mut charge = card_tokenize(&new_txn(), "4111111111111111");
    charge["method"] = json!("charge");
    app.post("/", &charge).await;
    // Failed authentication with a card number as the password.
    app.client
        .post(app.url("/"))
        .basic_auth(&app.connector.row.username, Some("4111111111111111"))
        .body(card_tokenize(&new_txn(), "4111111111111111").to_string())
        .send()
        .await
        .unwrap();

    let logs = captured_logs();
    assert!(logs.contains("tokenized"), "the scan saw logs");
    let mut long: Vec<&str> = PANS.iter().chain(ACCOUNTS.iter()).copied().collect();
    long.push("4111111111111112");
    assert_no_leaks(app.pool(), &long, &CVVS, &logs).await;

    // Not even encrypted: every ciphertext decrypts to the PAN or bank data alone.
    let vault = Vault::new(app.pool().clone(), app.keys.clone());
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token FROM vault_entries")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(tokens.len(), PANS.len() + ACCOUNTS.len());
    for token in tokens {
        let plain = vault.open_entry(&token).await.unwrap().unwrap();
        let plain = String::from_utf8_lossy(&plain[2..]).into_owned();
        // Exactly the PAN, or routing + account number: nothing else, so no CVV.
        assert!(
            PANS.contains(&plain.as_str())
                || ACCOUNTS.iter().any(|a| plain == format!("121000358{a}")),
            "{plain}"
        );
    }
}

async fn tampering_fixture() -> (helpers::TestApp, Vault, String, String) {
    let app = spawn_app().await;
    let (_, a) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let (_, b) = app
        .post("/", &card_tokenize(&new_txn(), "5555555555554444"))
        .await;
    let vault = Vault::new(app.pool().clone(), app.keys.clone());
    let (a, b) = (
        a["token_id"].as_str().unwrap().to_owned(),
        b["token_id"].as_str().unwrap().to_owned(),
    );
    assert!(vault.open_entry(&a).await.unwrap().is_some());
    (app, vault, a, b)
}

fn is_auth_failure(r: Result<Option<zeroize::Zeroizing<Vec<u8>>>, TokenizeError>) -> bool {
    matches!(r, Err(TokenizeError::Crypto(CryptoError::Authentication)))
}

#[tokio::test]
async fn a_changed_ciphertext_byte_fails_to_decrypt() {
    let (app, vault, a, _) = tampering_fixture().await;
    sqlx::query("UPDATE vault_entries SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1) WHERE token = $1")
        .bind(&a)
        .execute(app.pool())
        .await
        .unwrap();
    assert!(is_auth_failure(vault.open_entry(&a).await));
    sqlx::query("UPDATE vault_entries SET wrapped_key = set_byte(wrapped_key, 13, get_byte(wrapped_key, 13) # 1) WHERE token = $1")
        .bind(&a)
        .execute(app.pool())
        .await
        .unwrap();
    assert!(is_auth_failure(vault.open_entry(&a).await));
}

#[tokio::test]
async fn ciphertexts_swapped_between_rows_fail_to_decrypt() {
    let (app, vault, a, b) = tampering_fixture().await;
    sqlx::query(
        "UPDATE vault_entries v SET ciphertext = o.ciphertext, wrapped_key = o.wrapped_key
         FROM vault_entries o WHERE v.token = $1 AND o.token = $2",
    )
    .bind(&a)
    .bind(&b)
    .execute(app.pool())
    .await
    .unwrap();
    assert!(is_auth_failure(vault.open_entry(&a).await));
    assert!(
        vault.open_entry(&b).await.unwrap().is_some(),
        "the untouched row still decrypts"
    );
}

#[tokio::test]
async fn wrong_key_version_or_wrong_master_key_fails_to_decrypt() {
    let db = Arc::new(TestDb::new().await);
    let v1 = MasterKey::generate(1).encode();
    let v2 = MasterKey::generate(2).encode();
    let ring = Arc::new(KeyRing::parse(&format!("{},{}", v1.as_str(), v2.as_str())).unwrap());
    let app = spawn_app_with(db.clone(), ring.clone()).await;
    let (_, a) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let a = a["token_id"].as_str().unwrap().to_owned();
    let vault = Vault::new(app.pool().clone(), ring);
    assert!(vault.open_entry(&a).await.unwrap().is_some());
    assert_eq!(
        app.count("SELECT max(key_version)::bigint FROM vault_entries")
            .await,
        2
    );

    // Relabelled as version 1: the associated data no longer matches.
    sqlx::query("UPDATE vault_entries SET key_version = 1")
        .execute(app.pool())
        .await
        .unwrap();
    assert!(is_auth_failure(vault.open_entry(&a).await));
    // A version that is not loaded at all.
    sqlx::query("UPDATE vault_entries SET key_version = 9")
        .execute(app.pool())
        .await
        .unwrap();
    assert!(matches!(
        vault.open_entry(&a).await,
        Err(TokenizeError::Crypto(CryptoError::UnknownKeyVersion(9)))
    ));
    // Right version number, different master key.
    sqlx::query("UPDATE vault_entries SET key_version = 2")
        .execute(app.pool())
        .await
        .unwrap();
    let impostor = Vault::new(
        app.pool().clone(),
        Arc::new(KeyRing::from_keys(vec![MasterKey::generate(2)]).unwrap()),
    );
    assert!(is_auth_failure(impostor.open_entry(&a).await));
}

async fn send_with_auth(
    app: &helpers::TestApp,
    auth: Option<(&str, &str)>,
    raw_header: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/"))
        .body(card_tokenize(&new_txn(), "4111111111111111").to_string());
    if let Some((user, pass)) = auth {
        req = req.basic_auth(user, Some(pass));
    }
    if let Some(h) = raw_header {
        req = req.header("authorization", h);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn authentication_failures_are_401_and_indistinguishable() {
    let app =
        crate::abuse::app_with(|c| c.auth_failure_audit_interval = Duration::from_secs(1)).await;
    let user = app.connector.row.username.clone();
    let revoked = app
        .create_credential("old", CredentialKind::Connector, None)
        .await;
    payvault::auth::admin::revoke_credential(app.pool(), &app.signer, "old")
        .await
        .unwrap();

    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("missing header", None, None),
        ("wrong password", Some((&user, "pvs_wrong")), None),
        (
            "unknown user",
            Some(("pvc_00000000000000000000", "pvs_wrong")),
            None,
        ),
        (
            "revoked credential",
            Some((&revoked.row.username, revoked.secret.expose())),
            None,
        ),
        ("malformed header", None, Some("Basic not-base64!")),
        ("bearer instead of basic", None, Some("Bearer pvs_abc")),
    ];
    let mut bodies = Vec::new();
    for (name, auth, raw) in cases {
        let resp = send_with_auth(&app, auth, raw).await;
        assert_eq!(resp.status(), 401, "{name}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Basic realm="payvault", charset="UTF-8""#,
            "{name}"
        );
        bodies.push(resp.json::<Value>().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "same answer for every failure: {bodies:?}"
    );
    assert_eq!(bodies[0]["error_code"], "unauthorized");
    assert_eq!(bodies[0]["token_id"], Value::Null);
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 0);
    // All six from one address: the first as an event of its own, the rest in that address's
    // aggregate for the interval (see `auth::failures`).
    crate::abuse::wait_for_audited_failures(&app, "127.0.0.1", 6).await;
    let logged_user: Option<String> = sqlx::query_scalar(
        "SELECT $1 FROM audit_events WHERE action = 'authenticate' AND actor_kind = 'anonymous'
           AND (details->>'username' = $1 OR details->'usernames' ? $1) LIMIT 1",
    )
    .bind(&user)
    .fetch_optional(app.pool())
    .await
    .unwrap();
    assert_eq!(
        logged_user.as_deref(),
        Some(user.as_str()),
        "payvault-shaped usernames are recorded"
    );
}

#[tokio::test]
async fn revocation_takes_effect_on_a_running_server_without_waiting_for_the_cache() {
    let app = spawn_app().await;
    let (status, _) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "the credential works and is now cached");
    payvault::auth::admin::revoke_credential(app.pool(), &app.signer, &app.connector.row.username)
        .await
        .unwrap();
    // The cache TTL is 60 s; the NOTIFY must clear it well before then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app
            .post_raw(
                "/",
                card_tokenize(&new_txn(), "4111111111111111").to_string(),
            )
            .await;
        if resp.status() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoked credential still accepted after 10 s"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_credential_without_the_connector_scope_is_forbidden() {
    let app = spawn_app().await;
    let api = app
        .create_credential(
            "billing",
            CredentialKind::Api,
            Some(vec![Scope::TokensRead]),
        )
        .await;
    let resp = send_with_auth(&app, Some((&api.row.username, api.secret.expose())), None).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_code"], "forbidden");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE error_code = 'forbidden'")
            .await,
        1
    );
}

#[tokio::test]
async fn every_request_leaves_one_audit_event_with_who_what_when_where() {
    let app = spawn_app().await;
    let txn = new_txn();
    let resp = app
        .post_raw("/", card_tokenize(&txn, "4111111111111111").to_string())
        .await;
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let token = resp.json::<Value>().await.unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();

    #[derive(sqlx::FromRow)]
    struct Event {
        actor_id: Option<uuid::Uuid>,
        actor_kind: String,
        action: String,
        outcome: String,
        error_code: Option<String>,
        client_addr: Option<String>,
        token: Option<String>,
        transaction_id: Option<String>,
        masked_data: Option<String>,
    }
    let row: Event = sqlx::query_as(
        "SELECT actor_id, actor_kind, action, outcome, error_code, client_addr, token, transaction_id, masked_data
         FROM audit_events WHERE request_id = $1",
    )
    .bind(&request_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(row.actor_id, Some(app.connector.row.id));
    assert_eq!(
        (
            row.actor_kind.as_str(),
            row.action.as_str(),
            row.outcome.as_str()
        ),
        ("connector", "tokenize", "success")
    );
    assert_eq!(row.error_code, None);
    assert_eq!(row.client_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(row.token.as_deref(), Some(token.as_str()));
    assert_eq!(row.transaction_id.as_deref(), Some(txn.as_str()));
    assert_eq!(row.masked_data.as_deref(), Some("visa 411111******1111"));

    // A rejected request is recorded too, with its error code.
    let mut bad = card_tokenize(&new_txn(), "4111111111111111");
    bad["cvv"] = json!("1");
    let resp = app.post_raw("/", bad.to_string()).await;
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (outcome, code): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error_code FROM audit_events WHERE request_id = $1")
            .bind(&request_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(
        (outcome.as_str(), code.as_deref()),
        ("failure", Some("invalid_cvv"))
    );
}

#[tokio::test]
async fn a_client_supplied_request_id_is_replaced() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/"))
        .basic_auth(
            &app.connector.row.username,
            Some(app.connector.secret.expose()),
        )
        .header("x-request-id", "4111111111111111")
        .body(card_tokenize(&new_txn(), "4111111111111111").to_string())
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "4111111111111111");
    assert!(uuid::Uuid::parse_str(id).is_ok());
}

#[tokio::test]
async fn the_audit_table_refuses_update_and_delete() {
    let app = spawn_app().await;
    app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    for sql in [
        "UPDATE audit_events SET outcome = 'failure', error_code = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let err = sqlx::query(sql).execute(app.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert!(app.count("SELECT count(*) FROM audit_events").await >= 1);
}

#[tokio::test]
async fn a_tokenize_whose_audit_event_cannot_be_written_does_not_happen() {
    let app = spawn_app().await;
    // Inject a failure into audit writes only.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected audit failure'; END $$;
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION fail_audit();",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "Twilio reads only a 200's body");
    assert_eq!(body["error_code"], "internal_error");
    assert_eq!(body["token_id"], Value::Null);
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records").await,
        0
    );
}

// --- Secret files (`*_FILE`): mode and owner checked where every one is read. ---------------

/// A file holding `content`, with `mode`.
fn secret_file(content: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("pv-secret-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, format!("{content}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn secret_files_readable_by_others_are_refused_in_production_and_warned_about_otherwise() {
    use crate::startup::{key_text, run, stderr};
    let key = key_text(1);
    let open = secret_file(&key, 0o644);
    let private = secret_file(&key, 0o600);
    let unreachable_db = ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
    let serve = |file: &std::path::PathBuf, env: Option<&str>| {
        let mut vars = vec![
            unreachable_db,
            ("PAYVAULT_MASTER_KEY_FILE", file.to_str().unwrap()),
        ];
        if let Some(env) = env {
            vars.push(("PAYVAULT_ENV", env));
        }
        run(&["serve"], &vars)
    };
    // Production (the default): refused before anything connects, naming variable and path.
    for env in [None, Some("production")] {
        let out = serve(&open, env);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("PAYVAULT_MASTER_KEY_FILE")
                && err.contains(open.to_str().unwrap())
                && err.contains("accessible to group or others")
                && !err.contains("connection refused"),
            "{err}"
        );
        assert!(!err.contains(&key[7..]), "{err}");
    }
    // Development: a warning, then the start goes on (to the unreachable database).
    let err = stderr(&serve(&open, Some("development")));
    assert!(
        err.contains("accessible to group or others") && err.contains("connection refused"),
        "{err}"
    );
    // A private file passes in production.
    let err = stderr(&serve(&private, None));
    assert!(
        !err.contains("accessible to group or others") && err.contains("connection refused"),
        "{err}"
    );
    // Processor secrets come through the same check.
    let out = run(
        &["serve"],
        &[
            unreachable_db,
            ("PAYVAULT_MASTER_KEY", &key),
            ("PAYVAULT_PROCESSOR", "stripe"),
            ("PAYVAULT_PROCESSOR_SECRET_KEY_FILE", open.to_str().unwrap()),
        ],
    );
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("PAYVAULT_PROCESSOR_SECRET_KEY_FILE")
            && err.contains("accessible to group or others"),
        "{err}"
    );
    // So does the database URL (a password inside).
    let url_file = secret_file("postgres://payvault:hunter2hunter2@127.0.0.1:1/x", 0o640);
    let out = run(
        &["credentials", "list"],
        &[("DATABASE_URL_FILE", url_file.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("DATABASE_URL_FILE") && !err.contains("hunter2"),
        "{err}"
    );
    // A private file that belongs to someone else (only root can make one to test with).
    if rustix::process::geteuid().is_root() {
        let foreign = secret_file(&key, 0o600);
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
        let err = stderr(&serve(&foreign, None));
        assert!(
            err.contains("belongs to uid 65534") && !err.contains("connection refused"),
            "{err}"
        );
        std::fs::remove_file(foreign).unwrap();
    }
    for f in [open, private, url_file] {
        std::fs::remove_file(f).unwrap();
    }
}

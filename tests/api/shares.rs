//! Split custodians (issue 16, item 2): `keys split` makes K-of-N shares of a root that wraps
//! the master keys; an instance with `PAYVAULT_KEY_PROVIDER=shares` starts sealed, refuses card
//! operations with `vault_sealed`, and serves once K custodians have each submitted a share
//! (`payvault unseal`, `POST /unseal`), each submission audited by name, never by share.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use payvault::app::KeySource;
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::custody::{KeyProvider, SharesProvider};
use payvault::shares::Share;
use serde_json::{json, Value};

use crate::helpers::{
    captured_logs, card_charge, card_tokenize, new_txn, start_app, Options, TestApp, TestDb,
};

/// Runs `payvault args` against `db`, `stdin` on its standard input.
pub(crate) fn payvault(db: &TestDb, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    cmd.args(args);
    for name in [
        "PAYVAULT_KEY_PROVIDER",
        "PAYVAULT_MASTER_KEY",
        "PAYVAULT_MASTER_KEY_FILE",
        "PAYVAULT_MASTER_PASSPHRASE",
        "PAYVAULT_MASTER_PASSPHRASE_FILE",
        "PAYVAULT_ADMIN_LISTEN",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("DATABASE_URL", db.url())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `keys split --generate`: the shares it printed, in index order.
pub(crate) fn split(db: &TestDb, count: u8, threshold: u8) -> Vec<String> {
    let out = payvault(
        db,
        &[],
        &[
            "keys",
            "split",
            "--shares",
            &count.to_string(),
            "--threshold",
            &threshold.to_string(),
            "--generate",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let shares: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("pvshare."))
        .map(str::to_owned)
        .collect();
    assert_eq!(shares.len(), usize::from(count), "{}", text(&out));
    shares
}

/// The master keys as the test rebuilds them from `shares` (to check and to scan for).
pub(crate) async fn ring_from(
    db: &TestDb,
    shares: &[String],
) -> (Arc<KeyRing>, [u8; 32], Vec<[u8; 32]>) {
    let set = payvault::store::shares::find_share_set(&db.pool, None)
        .await
        .unwrap()
        .unwrap();
    let parsed: Vec<Share> = shares.iter().map(|s| Share::parse(s).unwrap()).collect();
    let refs: Vec<&Share> = parsed.iter().collect();
    let root = set.combine(&refs).unwrap();
    let mut keys = Vec::new();
    let mut clear = Vec::new();
    for wrap in payvault::store::keys::find_key_wraps(&db.pool)
        .await
        .unwrap()
    {
        assert_eq!(wrap.provider, "shares");
        let key = payvault::shares::unwrap(&root, wrap.version, &wrap.wrapped).unwrap();
        clear.push(*key);
        keys.push(MasterKey::from_bytes(wrap.version, key));
    }
    (Arc::new(KeyRing::from_keys(keys).unwrap()), *root, clear)
}

/// Starts an instance configured for shares: sealed.
pub(crate) async fn start_sealed(db: &Arc<TestDb>, ring: &Arc<KeyRing>) -> TestApp {
    let source = KeySource::Provider {
        provider: KeyProvider::Shares(Arc::new(SharesProvider::new(None))),
        audit_keys: Vec::new(),
    };
    start_app(db.clone(), source, ring.clone(), Options::default())
        .await
        .unwrap()
}

pub(crate) async fn submit(app: &TestApp, custodian: &str, share: &str) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/unseal"))
        .body(json!({"custodian": custodian, "share": share}).to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

pub(crate) async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// `payvault unseal` against `app`, the share on standard input (off the async threads: the
/// server runs on this test's runtime).
async fn unseal_cli(app: &TestApp, custodian: &str, share: &str) -> Output {
    let (db, url, custodian, share) = (
        app.db.clone(),
        app.url(""),
        custodian.to_owned(),
        format!("{share}\n"),
    );
    tokio::task::spawn_blocking(move || {
        payvault(
            &db,
            &[],
            &["unseal", "--url", &url, "--custodian", &custodian],
            &share,
        )
    })
    .await
    .unwrap()
}

/// One character of the share's data changed: its checksum no longer matches.
fn mistyped(share: &str) -> String {
    let mut s = share.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == 'A' { 'B' } else { 'A' });
    s
}

#[tokio::test]
async fn a_sealed_instance_refuses_card_operations_until_k_custodians_unseal_it() {
    let db = Arc::new(TestDb::new().await);
    let shares = split(&db, 3, 2);
    let (ring, root, clear_keys) = ring_from(&db, &shares[..2]).await;
    let app = start_sealed(&db, &ring).await;

    // Alive, not ready, and every card operation refused in its own format.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["sealed"], true, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().starts_with("sealed"),
        "{ready}"
    );
    assert_eq!(ready["unseal"]["submitted"], 0, "{ready}");
    assert_eq!(ready["unseal"]["threshold"], 2, "{ready}");

    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200, "Twilio reads only a 200's body: {body}");
    assert_eq!(body["error_code"], "vault_sealed", "{body}");
    assert!(body["token_id"].is_null(), "{body}");
    let (_, body) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "5.00"))
        .await;
    assert_eq!(body["error_code"], "vault_sealed", "{body}");
    assert!(body.get("charge_id").is_some_and(Value::is_null), "{body}");

    let api = app
        .create_credential(
            "backend",
            CredentialKind::Api,
            Some(vec![Scope::TokensRead, Scope::TokensCharge]),
        )
        .await;
    let token = "tok_AAAAAAAAAAAAAAAAAAAAAA";
    let resp = app
        .client
        .post(app.url(&format!("/v1/tokens/{token}/charges")))
        .basic_auth(&api.row.username, Some(api.secret.expose()))
        .header("idempotency-key", new_txn())
        .body(json!({"amount": "1.00", "currency": "USD"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "vault_sealed", "{body}");

    // Bad submissions: a typo, a well-formed share that is not one of the set's, an unknown
    // custodian name shape. Each refused by its own code, none counted.
    let (status, body) = submit(&app, "alice", &mistyped(&shares[0])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_share")),
        "{body}"
    );
    let genuine = Share::parse(&shares[0]).unwrap();
    let forged = Share {
        set_id: genuine.set_id.clone(),
        index: 1,
        bytes: zeroize::Zeroizing::new([42u8; 32]),
    }
    .encode();
    let (status, body) = submit(&app, "alice", &forged).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("share_not_verified")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(forged.rsplit('.').next().unwrap()),
        "the refusal quotes the share: {message}"
    );

    // Custodian 1 through the CLI (share on stdin), then the repeats.
    let out = unseal_cli(&app, "alice", &shares[0]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("share accepted: 1 of 2"),
        "{}",
        text(&out)
    );
    let (status, ready) = readyz(&app).await;
    assert_eq!(
        (status, &ready["unseal"]["submitted"]),
        (503, &json!(1)),
        "{ready}"
    );
    let (status, body) = submit(&app, "bob", &shares[0]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("duplicate_share")),
        "{body}"
    );
    let (status, body) = submit(&app, "Alice", &shares[1]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("duplicate_custodian")),
        "{body}"
    );
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(
        body["error_code"], "vault_sealed",
        "still sealed with 1 of 2: {body}"
    );

    // Custodian 2: unsealed, and everything serves without a restart.
    let (status, body) = submit(&app, "bob", &shares[2]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "unsealed", "{body}");
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["key_versions"], json!([1]), "{ready}");
    assert_eq!(ready["key_provider"]["name"], "shares", "{ready}");
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let token = body["token_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let resp = app
        .client
        .post(app.url(&format!("/v1/tokens/{token}/charges")))
        .basic_auth(&api.row.username, Some(api.secret.expose()))
        .header("idempotency-key", new_txn())
        .body(json!({"amount": "1.00", "currency": "USD"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (status, body) = submit(&app, "carol", &shares[1]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_unsealed")),
        "{body}"
    );

    // Every submission audited with the custodian's name and outcome, never the share.
    let rows: Vec<(String, Option<String>, Value)> = sqlx::query_as(
        "SELECT actor_kind, error_code, details FROM audit_events WHERE action = 'unseal_submit' ORDER BY id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let seen: Vec<(Option<&str>, Option<&str>, &str)> = rows
        .iter()
        .map(|(kind, code, d)| {
            assert_eq!(kind, "custodian");
            (
                d["custodian"].as_str(),
                code.as_deref(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("alice"), Some("invalid_share"), "rejected"),
            (Some("alice"), Some("share_not_verified"), "rejected"),
            (Some("alice"), None, "accepted"),
            (Some("bob"), Some("duplicate_share"), "rejected"),
            (Some("Alice"), Some("duplicate_custodian"), "rejected"),
            (Some("bob"), None, "unsealed"),
            (Some("carol"), Some("already_unsealed"), "rejected"),
        ]
    );
    assert_eq!(rows[5].2["submitted"], 2);
    let sealed_refusals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE error_code = 'vault_sealed'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(sealed_refusals, 4, "each sealed refusal is audited");

    // No share, root or master key in the database dump or the logs.
    drop(app);
    let dump = pg_dump(&db);
    assert!(dump.contains("key_share_sets"), "the dump has the table");
    let logs = captured_logs();
    let mut secrets: Vec<String> = Vec::new();
    for share in shares.iter().chain([&forged.to_string()]) {
        secrets.push(share.rsplit('.').next().unwrap().to_owned());
        let raw = Share::parse(share).unwrap();
        secrets.push(hex(&raw.bytes[..]));
    }
    for key in clear_keys.iter().chain([&root]) {
        secrets.push(hex(key));
        secrets.push(URL_SAFE_NO_PAD.encode(key));
    }
    for secret in &secrets {
        assert!(!dump.contains(secret.as_str()), "key material in pg_dump");
        assert!(!logs.contains(secret.as_str()), "key material in the logs");
    }
}

#[tokio::test]
async fn shares_that_do_not_rebuild_the_recorded_root_are_all_discarded() {
    let db = Arc::new(TestDb::new().await);
    let shares = split(&db, 2, 2);
    let (ring, _, _) = ring_from(&db, &shares).await;
    // The recorded check value no longer matches (as if the set's record were of another root):
    // both shares verify, but together they do not give the recorded root.
    sqlx::query("UPDATE key_share_sets SET root_check = sha256(root_check)")
        .execute(&db.pool)
        .await
        .unwrap();
    let app = start_sealed(&db, &ring).await;
    let (status, _) = submit(&app, "alice", &shares[0]).await;
    assert_eq!(status, 200);
    let (status, body) = submit(&app, "bob", &shares[1]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("unseal_failed")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("discarded"),
        "{body}"
    );
    let (status, ready) = readyz(&app).await;
    assert_eq!(
        (status, &ready["unseal"]["submitted"]),
        (503, &json!(0)),
        "{ready}"
    );
}

/// Rotation with the shares provider: `keys wrap --generate` (K shares on its standard input)
/// makes version 2, wrapped; instances load it at their next unseal; `keys rotate` re-encrypts.
#[tokio::test]
async fn rotation_with_shares_makes_a_new_wrapped_version() {
    let db = Arc::new(TestDb::new().await);
    let shares = split(&db, 3, 2);
    let (ring, _, _) = ring_from(&db, &shares[1..]).await;
    let app = start_sealed(&db, &ring).await;
    for (who, share) in [("alice", &shares[0]), ("bob", &shares[1])] {
        let (status, body) = submit(&app, who, share).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let token = body["token_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();

    let env = [("PAYVAULT_KEY_PROVIDER", "shares")];
    let two = format!("{}\n{}\n", shares[2], shares[0]);
    let out = payvault(&db, &env, &["keys", "wrap", "--generate"], &two);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("wrapped master key version(s) [2]"),
        "{}",
        text(&out)
    );
    // Too few or wrong shares on stdin: refused, nothing wrapped.
    let out = payvault(
        &db,
        &env,
        &["keys", "wrap", "--generate"],
        &format!("{}\n", shares[0]),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let out = payvault(
        &db,
        &env,
        &["keys", "wrap", "--generate"],
        &format!("{}\n{}\n", mistyped(&shares[0]), shares[1]),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum"), "{}", text(&out));

    // The next start (sealed again) loads version 2 once unsealed; rotate moves the entry to it.
    drop(app);
    let (ring, _, _) = ring_from(&db, &shares[..2]).await;
    let app = start_sealed(&db, &ring).await;
    for (who, share) in [("carol", &shares[2]), ("bob", &shares[1])] {
        let (status, body) = submit(&app, who, share).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, ready) = readyz(&app).await;
    assert_eq!(ready["current_key_version"], 2, "{ready}");
    let out = payvault(&db, &env, &["keys", "rotate"], &two);
    assert!(out.status.success(), "{}", text(&out));
    let versions: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT key_version FROM vault_entries")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, [2]);
    let charger = app
        .create_credential(
            "charger",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let body = json!({"method": "charge", "transaction_id": new_txn(), "token": token,
        "amount": "4.00", "currency_code": "USD"});
    let (_, answer) = app.post_as(&charger, "/", &body).await;
    assert!(answer["charge_id"].is_string(), "{answer}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pg_dump(db: &TestDb) -> String {
    let out = Command::new("pg_dump").arg(db.url()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// With an admin listener, `/unseal` is served there and not on the public listener; refused
/// submissions are throttled (429 with `Retry-After`) after ten in a minute.
#[tokio::test]
async fn unseal_goes_to_the_admin_listener_and_refusals_are_throttled() {
    let db = Arc::new(TestDb::new().await);
    let shares = split(&db, 2, 2);
    let (ring, _, _) = ring_from(&db, &shares).await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let source = KeySource::Provider {
        provider: KeyProvider::Shares(Arc::new(SharesProvider::new(None))),
        audit_keys: Vec::new(),
    };
    let opts = Options {
        tune: Some(Box::new(move |cfg| cfg.admin_listen = Some(admin))),
        ..Options::default()
    };
    let app = start_app(db.clone(), source, ring, opts).await.unwrap();
    let public = app
        .client
        .post(app.url("/unseal"))
        .body(json!({"custodian": "alice", "share": shares[0]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        public.status(),
        404,
        "/unseal is not on the public listener"
    );

    let post = |custodian: &str, share: &str| {
        app.client
            .post(format!("http://{admin}/unseal"))
            .body(json!({"custodian": custodian, "share": share}).to_string())
            .send()
    };
    for _ in 0..10 {
        let resp = post("mallory", &mistyped(&shares[0])).await.unwrap();
        assert_eq!(resp.status(), 400);
    }
    let resp = post("alice", &shares[0]).await.unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts", "{body}");
    let (status, ready) = readyz(&app).await;
    assert_eq!(
        (status, &ready["unseal"]["submitted"]),
        (503, &json!(0)),
        "{ready}"
    );
}

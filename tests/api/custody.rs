//! Key providers (issue 16, items 1, 3, 4): master keys wrapped by a real SoftHSM2 token and a
//! real OpenBao transit key, unwrapped once at start; start-up refusals that name the provider
//! and setting; serving on after the provider is lost; rotation; no key material in the
//! database dump or the logs.

use std::process::{Command, Output};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use payvault::app::KeySource;
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::custody::{CustodyError, KeyProvider};
use serde_json::{json, Value};

use crate::helpers::{
    self, captured_logs, card_charge, card_tokenize, new_txn, start_app, Bao, HsmToken, Options,
    RuntimeRole, TestApp, TestDb,
};

/// Runs `payvault args` against `db` with `env` (a provider's settings, keys).
fn payvault(db: &TestDb, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
    cmd.args(args);
    for name in [
        "PAYVAULT_KEY_PROVIDER",
        "PAYVAULT_MASTER_KEY",
        "PAYVAULT_MASTER_KEY_FILE",
        "PAYVAULT_MASTER_PASSPHRASE",
        "PAYVAULT_MASTER_PASSPHRASE_FILE",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("DATABASE_URL", db.url()).envs(env.iter().cloned());
    cmd.output().unwrap()
}

fn succeeded(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "failed: {text}");
    text
}

fn provider_source(provider: &KeyProvider) -> KeySource {
    KeySource::Provider {
        provider: provider.clone(),
        audit_keys: Vec::new(),
    }
}

/// Starts a server whose keys the provider unwraps (the test's own ring loaded the same way).
async fn start_with(db: &Arc<TestDb>, provider: &KeyProvider) -> Result<TestApp, String> {
    let ring = provider_source(provider)
        .load(&db.pool)
        .await
        .map_err(|e| format!("{e:#}"))?;
    start_app(
        db.clone(),
        provider_source(provider),
        ring,
        Options::default(),
    )
    .await
}

async fn tokenize(app: &TestApp, pan: &str) -> String {
    let (status, body) = app.post("/", &card_tokenize(&new_txn(), pan)).await;
    assert_eq!(status, 200, "{body}");
    body["token_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

/// Charges a stored token through the connector (decrypting its entry).
async fn charge_token(app: &TestApp, token: &str) {
    let charger = app
        .create_credential(
            &format!("charger-{}", new_txn()),
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let body = json!({"method": "charge", "transaction_id": new_txn(), "token": token,
        "amount": "4.00", "currency_code": "USD"});
    let (status, answer) = app.post_as(&charger, "/", &body).await;
    assert_eq!(status, 200);
    assert!(answer["error_code"].is_null(), "{answer}");
    assert!(answer["charge_id"].is_string(), "{answer}");
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The clear master keys of every wrapped version, as the test sees them (for leak scans).
async fn clear_keys(db: &TestDb, provider: &KeyProvider) -> Vec<[u8; 32]> {
    let mut keys = Vec::new();
    for wrap in payvault::store::keys::find_key_wraps(&db.pool)
        .await
        .unwrap()
    {
        keys.push(*provider.unwrap(wrap.version, &wrap.wrapped).await.unwrap());
    }
    keys
}

/// `pg_dump` of the whole database, data included.
fn pg_dump(db: &TestDb) -> String {
    let out = Command::new("pg_dump").arg(db.url()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_no_key_material(keys: &[[u8; 32]], secrets: &[&str], dump: &str, logs: &str) {
    assert!(dump.contains("master_key_wraps"), "the dump has the table");
    for key in keys {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let text = URL_SAFE_NO_PAD.encode(key);
        for (what, form) in [("hex", &hex), ("base64url", &text)] {
            assert!(
                !dump.contains(form.as_str()),
                "a master key ({what}) is in pg_dump"
            );
            assert!(
                !logs.contains(form.as_str()),
                "a master key ({what}) is in the logs"
            );
        }
    }
    for secret in secrets {
        assert!(!dump.contains(secret), "a provider secret is in pg_dump");
        assert!(!logs.contains(secret), "a provider secret is in the logs");
    }
}

/// The whole life of a vault under `provider`: a version made wrapped (`keys wrap --generate`),
/// tokenize and charge, restart and decrypt, a second wrapped version and `keys rotate` to it,
/// restart and charge again; then no key material in `pg_dump` or the logs.
async fn lifecycle(provider: KeyProvider, env: Vec<(String, String)>, secret: &str) {
    let db = Arc::new(TestDb::new().await);
    let out = succeeded(&payvault(&db, &env, &["keys", "wrap", "--generate"]));
    assert!(out.contains("wrapped master key version(s) [1]"), "{out}");
    let wraps = payvault::store::keys::find_key_wraps(&db.pool)
        .await
        .unwrap();
    assert_eq!(wraps.len(), 1);
    assert_eq!(wraps[0].provider, provider.name());

    let app = start_with(&db, &provider).await.unwrap();
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["key_provider"]["name"], provider.name(), "{ready}");
    assert_eq!(ready["key_provider"]["status"], "ok", "{ready}");
    let token = tokenize(&app, "4111111111111111").await;
    let (_, charged) = app
        .post("/", &card_charge(&new_txn(), "5555555555554444", "12.00"))
        .await;
    assert!(charged["charge_id"].is_string(), "{charged}");
    drop(app);

    // A restart unwraps the same key: the old entry decrypts.
    let app = start_with(&db, &provider).await.unwrap();
    charge_token(&app, &token).await;
    drop(app);

    // Rotation: a new version, made wrapped; instances restart with it; `keys rotate` moves
    // the entries to it.
    let out = succeeded(&payvault(&db, &env, &["keys", "wrap", "--generate"]));
    assert!(out.contains("wrapped master key version(s) [2]"), "{out}");
    let app = start_with(&db, &provider).await.unwrap();
    assert_eq!(readyz(&app).await.1["current_key_version"], 2);
    let out = succeeded(&payvault(&db, &env, &["keys", "rotate"]));
    assert!(
        out.contains("rotated 1 entries to master key version 2"),
        "{out}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault_entries WHERE key_version <> 2")
            .await,
        0
    );
    charge_token(&app, &token).await;
    drop(app);
    let app = start_with(&db, &provider).await.unwrap();
    charge_token(&app, &token).await;

    let keys = clear_keys(&db, &provider).await;
    assert_eq!(keys.len(), 2);
    assert_no_key_material(&keys, &[secret], &pg_dump(&db), &captured_logs());
}

#[tokio::test]
async fn pkcs11_keys_tokenize_charge_survive_restarts_and_rotate() {
    let hsm = HsmToken::new(true).await;
    lifecycle(hsm.provider(), hsm.env(), &hsm.pin).await;
}

#[tokio::test]
async fn transit_keys_tokenize_charge_survive_restarts_and_rotate() {
    let bao = Bao::start().await;
    lifecycle(bao.provider(), bao.env(), &bao.token).await;
}

/// An existing vault on `PAYVAULT_MASTER_KEY` moves to a provider with `keys wrap`: the
/// entries are not re-encrypted, and the provider's keys open them.
#[tokio::test]
async fn keys_wrap_moves_an_env_key_vault_to_a_provider_without_reencrypting() {
    let hsm = HsmToken::new(true).await;
    let db = Arc::new(TestDb::new().await);
    let key = MasterKey::generate(1).encode();
    let ring = Arc::new(KeyRing::parse(&key).unwrap());
    let app = helpers::spawn_app_with(db.clone(), ring).await;
    let token = tokenize(&app, "4111111111111111").await;
    drop(app);
    let before: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM vault_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Without the provider, there is nothing to wrap with.
    let plain = vec![("PAYVAULT_MASTER_KEY".to_owned(), key.to_string())];
    let out = payvault(&db, &plain, &["keys", "wrap"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYVAULT_KEY_PROVIDER"));

    let mut env = hsm.env();
    env.extend(plain.clone());
    let out = succeeded(&payvault(&db, &env, &["keys", "wrap"]));
    assert!(out.contains("wrapped master key version(s) [1]"), "{out}");
    // Again: already there, with the same key; nothing changes.
    let out = succeeded(&payvault(&db, &env, &["keys", "wrap"]));
    assert!(out.contains("already wrapped, with the same key"), "{out}");
    // A provider with the environment's master keys still set is ambiguous: refused.
    let mut both = env.clone();
    both.push(("PAYVAULT_ENV".into(), "development".into()));
    both.push(("PAYVAULT_LISTEN".into(), "127.0.0.1:0".into()));
    let out = payvault(&db, &both, &["serve", "--no-migrate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may hold only audit-only keys"), "{err}");
    let app = start_with(&db, &hsm.provider()).await.unwrap();
    charge_token(&app, &token).await;
    let after: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM vault_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "not re-encrypted");
    let stored = clear_keys(&db, &hsm.provider()).await;
    assert_eq!(
        URL_SAFE_NO_PAD.encode(stored[0]),
        key.rsplit('.').next().unwrap()
    );
}

#[tokio::test]
async fn pkcs11_start_up_errors_name_the_setting() {
    let hsm = HsmToken::new(true).await;
    let db = Arc::new(TestDb::new().await);
    // No wrapped key yet.
    let err = start_with(&db, &hsm.provider()).await.err().unwrap();
    assert!(
        err.contains("PAYVAULT_KEY_PROVIDER=pkcs11") && err.contains("payvault keys wrap"),
        "{err}"
    );
    succeeded(&payvault(&db, &hsm.env(), &["keys", "wrap", "--generate"]));

    let wrong_pin = KeyProvider::Pkcs11(Arc::new(payvault::custody::Pkcs11Provider::new(
        hsm.config_with_pin("root", "not-the-pin"),
    )));
    let err = start_with(&db, &wrong_pin).await.err().unwrap();
    assert!(
        err.contains("PAYVAULT_PKCS11_PIN") && err.contains("wrong PIN"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pin") && !err.contains(&hsm.pin),
        "{err}"
    );

    let no_key = KeyProvider::Pkcs11(Arc::new(payvault::custody::Pkcs11Provider::new(
        hsm.config("missing"),
    )));
    let err = start_with(&db, &no_key).await.err().unwrap();
    assert!(
        err.contains("PAYVAULT_PKCS11_KEY_LABEL") && err.contains("no AES key labelled 'missing'"),
        "{err}"
    );

    // Another token's key does not unwrap this vault's keys: refused, never a fallback.
    let other = HsmToken::new(true).await;
    let err = start_with(&db, &other.provider()).await.err().unwrap();
    assert!(err.contains("does not unwrap"), "{err}");
    // And through `serve` itself: the provider and setting are named on stderr.
    let mut env = hsm.env();
    env.retain(|(k, _)| k != "PAYVAULT_PKCS11_PIN");
    env.push(("PAYVAULT_PKCS11_PIN".into(), "0000".into()));
    env.push(("PAYVAULT_ENV".into(), "development".into()));
    env.push(("PAYVAULT_LISTEN".into(), "127.0.0.1:0".into()));
    let out = payvault(&db, &env, &["serve", "--no-migrate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key provider pkcs11") && err.contains("PAYVAULT_PKCS11_PIN"),
        "{err}"
    );
}

/// A wrap is bound to its version: copied onto another version, it does not unwrap.
#[tokio::test]
async fn a_wrapped_key_does_not_unwrap_as_another_version() {
    let hsm = HsmToken::new(true).await;
    let bao = Bao::start().await;
    for provider in [hsm.provider(), bao.provider()] {
        let key = [7u8; 32];
        let wrapped = provider.wrap(3, &key).await.unwrap();
        assert_eq!(*provider.unwrap(3, &wrapped).await.unwrap(), key);
        let err = provider.unwrap(4, &wrapped).await.unwrap_err();
        assert!(
            matches!(err, CustodyError::BadWrap { version: 4, .. }),
            "{err}"
        );
        let mut altered = wrapped.clone();
        let last = altered.len() - 3;
        altered[last] ^= 1;
        assert!(provider.unwrap(3, &altered).await.is_err());
    }
}

#[tokio::test]
async fn transit_refuses_to_start_without_openbao_and_serves_on_after_losing_it() {
    let mut bao = Bao::start().await;
    let db = Arc::new(TestDb::new().await);
    succeeded(&payvault(&db, &bao.env(), &["keys", "wrap", "--generate"]));
    let app = start_with(&db, &bao.provider()).await.unwrap();
    tokenize(&app, "4111111111111111").await;

    bao.stop();
    // Keys are in memory: requests go on; /readyz stays ready and reports the provider.
    let token = tokenize(&app, "5555555555554444").await;
    charge_token(&app, &token).await;
    let (status, ready) = readyz(&app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["key_provider"]["status"], "unreachable", "{ready}");
    drop(app);

    // A start without it fails, naming provider and setting.
    let err = start_app(
        db.clone(),
        provider_source(&bao.provider()),
        helpers::test_keys(),
        Options::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.contains("key provider transit") && err.contains("PAYVAULT_TRANSIT_ADDR"),
        "{err}"
    );
    assert!(!err.contains(&bao.token), "{err}");
}

#[tokio::test]
async fn transit_start_up_errors_name_the_setting() {
    let bao = Bao::start().await;
    let db = Arc::new(TestDb::new().await);
    succeeded(&payvault(&db, &bao.env(), &["keys", "wrap", "--generate"]));
    let mut config = bao.config();
    config.token = "not-the-token".into();
    let provider = KeyProvider::Transit(Arc::new(
        payvault::custody::TransitProvider::new(config).unwrap(),
    ));
    let err = start_with(&db, &provider).await.err().unwrap();
    assert!(err.contains("PAYVAULT_TRANSIT_TOKEN"), "{err}");
    let mut config = bao.config();
    config.key = "missing".into();
    let provider = KeyProvider::Transit(Arc::new(
        payvault::custody::TransitProvider::new(config).unwrap(),
    ));
    let err = start_with(&db, &provider).await.err().unwrap();
    assert!(err.contains("PAYVAULT_TRANSIT_KEY"), "{err}");
}

/// The runtime role reads the wraps and cannot change them (`keys wrap` runs as the owner).
#[tokio::test]
async fn the_runtime_role_only_reads_the_wrapped_keys() {
    let db = TestDb::new().await;
    let role = RuntimeRole::new(&db).await;
    let privileges: (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege($1, 'master_key_wraps', 'SELECT'),
                has_table_privilege($1, 'master_key_wraps', 'INSERT'),
                has_table_privilege($1, 'master_key_wraps', 'UPDATE'),
                has_table_privilege($1, 'master_key_wraps', 'DELETE')",
    )
    .bind(&role.name)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(privileges, (true, false, false, false));
}

/// Production refuses a master key in a plain environment variable unless told to accept it.
#[test]
fn production_refuses_a_plain_environment_master_key_unless_overridden() {
    let key = MasterKey::generate(1).encode();
    let serve = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("serve")
            .env_remove("PAYVAULT_KEY_PROVIDER")
            .env_remove("PAYVAULT_MASTER_KEY_FILE")
            .env("PAYVAULT_ENV", "production")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("PAYVAULT_LISTEN", "127.0.0.1:0")
            .env("PAYVAULT_MASTER_KEY", key.as_str())
            .envs(extra.iter().copied());
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&[]);
    assert!(
        err.contains("refuses to start")
            && err.contains(
                "PAYVAULT_MASTER_KEY holds the master key material in a plain environment variable"
            ),
        "{err}"
    );
    assert!(!err.contains(&key[7..]), "{err}");
    // The documented override: a warning, and the start goes on (to the unreachable database).
    let err = serve(&[("PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY", "true")]);
    assert!(!err.contains("refuses to start"), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
}

/// Production refuses a transit server over plain HTTP off loopback (token and keys in clear),
/// before anything is contacted; the token is never printed.
#[test]
fn production_refuses_plain_http_transit_off_loopback() {
    let serve = |addr: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
            .arg("serve")
            .env_remove("PAYVAULT_MASTER_KEY")
            .env_remove("PAYVAULT_MASTER_KEY_FILE")
            .env_remove("PAYVAULT_MASTER_PASSPHRASE")
            .env("PAYVAULT_ENV", "production")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("PAYVAULT_LISTEN", "127.0.0.1:0")
            .env("PAYVAULT_KEY_PROVIDER", "transit")
            .env("PAYVAULT_TRANSIT_ADDR", addr)
            .env("PAYVAULT_TRANSIT_KEY", "payvault-root")
            .env("PAYVAULT_TRANSIT_TOKEN", "s.never-printed-token")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve("http://bao.example:8200");
    assert!(
        err.contains("refuses to start") && err.contains("PAYVAULT_TRANSIT_ADDR is plain http://"),
        "{err}"
    );
    assert!(!err.contains("never-printed"), "{err}");
    // Loopback is allowed (a local agent or proxy): the start goes on to the database.
    let err = serve("http://127.0.0.1:8200");
    assert!(!err.contains("refuses to start"), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
}

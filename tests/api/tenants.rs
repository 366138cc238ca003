//! Tenants: isolation of every token operation (another tenant's token answers exactly like an
//! unknown one), the tenant bound into each entry's associated data, per-tenant fingerprints and
//! dedup, per-tenant audit reads, disabled tenants, and the migration of single-tenant data.

use std::sync::Arc;

use payvault::auth::admin::{self, CreatedCredential};
use payvault::auth::{tenants, CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::domain::{SecretText, Token, DEFAULT_TENANT};
use payvault::vault::Vault;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    card_tokenize, new_txn, spawn_app, spawn_app_opts, spawn_app_with, Options, TestApp, TestDb,
};

const PAN: &str = "4111111111111111";

/// A tenant with a connector credential (that may also charge stored tokens) and an API
/// credential with every token and audit scope.
struct Tenant {
    id: Uuid,
    connector: CreatedCredential,
    api: CreatedCredential,
}

async fn tenant(app: &TestApp, name: &str) -> Tenant {
    let row = tenants::create_tenant(app.pool(), &app.signer, name)
        .await
        .unwrap();
    let connector = admin::create_credential_in(
        app.pool(),
        &app.signer,
        row.id,
        &format!("{name}-twilio"),
        CredentialKind::Connector,
        Some(vec![Scope::Connector, Scope::TokensCharge]),
    )
    .await
    .unwrap();
    let api = admin::create_credential_in(
        app.pool(),
        &app.signer,
        row.id,
        &format!("{name}-backend"),
        CredentialKind::Api,
        Some(vec![
            Scope::TokensRead,
            Scope::TokensCharge,
            Scope::TokensDelete,
            Scope::AuditRead,
        ]),
    )
    .await
    .unwrap();
    Tenant {
        id: row.id,
        connector,
        api,
    }
}

async fn send(
    app: &TestApp,
    cred: &CreatedCredential,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .basic_auth(&cred.row.username, Some(cred.secret.expose()))
        .header("idempotency-key", new_txn());
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn tokenize(app: &TestApp, cred: &CreatedCredential) -> String {
    let (_, body) = app
        .post_as(cred, "/", &card_tokenize(&new_txn(), PAN))
        .await;
    body["token_id"].as_str().expect("a token").to_owned()
}

fn root_charge(token: &str) -> Value {
    json!({"method": "charge", "transaction_id": new_txn(), "token": token,
           "amount": "10.00", "currency_code": "USD"})
}

/// Every token operation of `who` on `token`: the answers, in order.
async fn every_operation(app: &TestApp, who: &Tenant, token: &str) -> Vec<(u16, Value)> {
    let path = format!("/v1/tokens/{token}");
    let charge = json!({"amount": "10.00", "currency": "USD"});
    vec![
        send(app, &who.api, Method::GET, &path, None).await,
        send(
            app,
            &who.api,
            Method::POST,
            &format!("{path}/charges"),
            Some(charge),
        )
        .await,
        send(
            app,
            &who.api,
            Method::PATCH,
            &path,
            Some(json!({"ttl_days": 30})),
        )
        .await,
        send(app, &who.api, Method::DELETE, &path, None).await,
        app.post_as(&who.connector, "/", &root_charge(token)).await,
        app.post_as(&who.connector, "/charge", &root_charge(token))
            .await,
    ]
}

async fn audit_page(app: &TestApp, cred: &CreatedCredential, query: &str) -> Vec<Value> {
    let (status, page) = send(
        app,
        cred,
        Method::GET,
        &format!("/v1/audit/events?limit=1000{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn another_tenants_token_answers_exactly_like_an_unknown_token() {
    let app = spawn_app().await;
    let a = tenant(&app, "brand-a").await;
    let b = tenant(&app, "brand-b").await;
    let token = tokenize(&app, &a.connector).await;
    let unknown = Token::generate().into_string();

    let theirs = every_operation(&app, &b, &token).await;
    let nobodys = every_operation(&app, &b, &unknown).await;
    assert_eq!(theirs, nobodys, "another tenant's token is told apart");
    for (status, body) in &theirs[..4] {
        assert_eq!(
            (*status, body["error"]["code"].as_str()),
            (404, Some("unknown_token")),
            "{body}"
        );
    }
    for (status, body) in &theirs[4..] {
        assert_eq!(
            (*status, &body["error_code"]),
            (200, &json!("unknown_token"))
        );
    }

    // Nothing happened to the token: its tenant still reads it unchanged, and charges it.
    let (status, view) = send(
        &app,
        &a.api,
        Method::GET,
        &format!("/v1/tokens/{token}"),
        None,
    )
    .await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("active")),
        "{view}"
    );
    assert!(view["expires_at"].is_null(), "{view}");
    let (_, charged) = app.post_as(&a.connector, "/", &root_charge(&token)).await;
    assert!(charged["charge_id"].is_string(), "{charged}");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE operation = 'charge'")
            .await,
        1,
        "only the owner's charge was claimed"
    );

    // The refusals are audited in the caller's tenant.
    let refused = app
        .count(&format!(
            "SELECT count(*) FROM audit_events WHERE tenant_id = '{}'
             AND error_code = 'unknown_token'",
            b.id
        ))
        .await;
    assert_eq!(refused, 12, "six refusals each for the two tokens");
}

#[tokio::test]
async fn the_audit_log_shows_each_tenant_its_own_events_and_an_operator_scope_all() {
    let app = spawn_app().await;
    let a = tenant(&app, "brand-a").await;
    let b = tenant(&app, "brand-b").await;
    let token = tokenize(&app, &a.connector).await;
    let ours = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["action"] == "tokenize" && e["token"] == json!(token))
            .count()
    };
    assert_eq!(ours(&audit_page(&app, &a.api, "").await), 1);
    let query = format!("&token={token}");
    assert!(audit_page(&app, &b.api, &query).await.is_empty());
    assert_eq!(ours(&audit_page(&app, &b.api, "").await), 0);
    // Every event B sees is B's own doing, or an operator's on B (its creation, its credentials).
    let b_actors = [b.connector.row.id, b.api.row.id].map(|id| json!(id));
    for event in audit_page(&app, &b.api, "").await {
        assert!(
            b_actors.contains(&event["actor_id"]) || event["actor_kind"] == "operator",
            "{event}"
        );
    }

    // The default tenant's audit:read sees the deployment's events, not another tenant's...
    let reader = app
        .create_credential("auditor", CredentialKind::Api, Some(vec![Scope::AuditRead]))
        .await;
    assert_eq!(ours(&audit_page(&app, &reader, "").await), 0);
    // ...and audit:all sees every tenant's.
    let operator = app
        .create_credential(
            "operator",
            CredentialKind::Api,
            Some(vec![Scope::AuditRead, Scope::AuditAll]),
        )
        .await;
    // Only the default tenant's credentials may hold it.
    let widened = admin::create_credential_in(
        app.pool(),
        &app.signer,
        b.id,
        "b-auditor",
        CredentialKind::Api,
        Some(vec![Scope::AuditRead, Scope::AuditAll]),
    )
    .await;
    assert!(matches!(
        widened,
        Err(admin::AdminError::AuditAllOutsideDefaultTenant)
    ));
    let all = audit_page(&app, &operator, "").await;
    assert_eq!(ours(&all), 1);
    assert!(all.iter().any(|e| e["actor_id"] == json!(b.api.row.id)));
}

#[tokio::test]
async fn a_ciphertext_moved_into_another_tenants_row_fails_to_decrypt() {
    let app = spawn_app().await;
    let a = tenant(&app, "brand-a").await;
    let b = tenant(&app, "brand-b").await;
    let (token_a, token_b) = (
        tokenize(&app, &a.connector).await,
        tokenize(&app, &b.connector).await,
    );
    let integrity = |reply: &Value| reply["error_code"] == "token_integrity_failed";

    // A's ciphertext and wrapped key copied into B's row.
    sqlx::query(
        "UPDATE vault_entries SET (wrapped_key, ciphertext) =
             (SELECT wrapped_key, ciphertext FROM vault_entries WHERE token = $1)
         WHERE token = $2",
    )
    .bind(&token_a)
    .bind(&token_b)
    .execute(app.pool())
    .await
    .unwrap();
    let (_, reply) = app.post_as(&b.connector, "/", &root_charge(&token_b)).await;
    assert!(integrity(&reply), "{reply}");

    // A's whole row moved into B's tenant: the tenant in its associated data is A's.
    sqlx::query("UPDATE vault_entries SET tenant_id = $1 WHERE token = $2")
        .bind(b.id)
        .bind(&token_a)
        .execute(app.pool())
        .await
        .unwrap();
    let (_, reply) = app.post_as(&b.connector, "/", &root_charge(&token_a)).await;
    assert!(integrity(&reply), "{reply}");
    let (_, reply) = app.post_as(&a.connector, "/", &root_charge(&token_a)).await;
    assert_eq!(reply["error_code"], "unknown_token", "{reply}");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE operation = 'charge'")
            .await,
        0,
        "nothing reached the processor"
    );
}

#[tokio::test]
async fn the_same_card_has_unrelated_fingerprints_and_dedup_stays_in_its_tenant() {
    let db = Arc::new(TestDb::new().await);
    let opts = Options {
        dedup: true,
        ..Default::default()
    };
    let app = spawn_app_opts(db, crate::helpers::test_keys(), opts).await;
    let a = tenant(&app, "brand-a").await;
    let b = tenant(&app, "brand-b").await;
    let a1 = tokenize(&app, &a.connector).await;
    let a2 = tokenize(&app, &a.connector).await;
    let b1 = tokenize(&app, &b.connector).await;
    let b2 = tokenize(&app, &b.connector).await;
    let (_, default) = app.post("/", &card_tokenize(&new_txn(), PAN)).await;
    let d = default["token_id"].as_str().unwrap().to_owned();
    assert_eq!(a1, a2, "dedup within a tenant");
    assert_eq!(b1, b2, "dedup within a tenant");
    assert!(
        a1 != b1 && a1 != d && b1 != d,
        "dedup never crosses tenants"
    );
    let fingerprints: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT DISTINCT fingerprint FROM vault_entries WHERE token = ANY($1)")
            .bind(vec![a1.clone(), b1.clone(), d.clone()])
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(
        fingerprints.len(),
        3,
        "one card, three unrelated fingerprints"
    );
    // The API shows each tenant its own fingerprint only.
    let (_, view_a) = send(&app, &a.api, Method::GET, &format!("/v1/tokens/{a1}"), None).await;
    let (_, view_b) = send(&app, &b.api, Method::GET, &format!("/v1/tokens/{b1}"), None).await;
    assert!(view_a["fingerprint"].is_string(), "{view_a}");
    assert_ne!(view_a["fingerprint"], view_b["fingerprint"]);
}

#[tokio::test]
async fn a_disabled_tenants_credentials_are_refused_and_the_default_tenant_stays() {
    let app = spawn_app().await;
    let a = tenant(&app, "brand-a").await;
    let token = tokenize(&app, &a.connector).await;
    tenants::disable_tenant(app.pool(), &app.signer, "brand-a")
        .await
        .unwrap();
    // Cached verifications are dropped by the change notification; poll until it lands.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let resp = app
            .client
            .get(app.url(&format!("/v1/tokens/{token}")))
            .basic_auth(&a.api.row.username, Some(a.api.secret.expose()))
            .send()
            .await
            .unwrap();
        if resp.status() == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still accepted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(matches!(
        tenants::disable_tenant(app.pool(), &app.signer, "default").await,
        Err(tenants::TenantError::DefaultTenant)
    ));
    assert!(admin::create_credential_in(
        app.pool(),
        &app.signer,
        a.id,
        "late",
        CredentialKind::Api,
        None
    )
    .await
    .is_err());
    let (_, ok) = app.post("/", &card_tokenize(&new_txn(), PAN)).await;
    assert!(
        ok["token_id"].is_string(),
        "the default tenant is untouched: {ok}"
    );
}

#[tokio::test]
async fn single_tenant_data_migrates_into_the_default_tenant_and_keeps_working() {
    let master = MasterKey::generate(1).encode();
    let keys = Arc::new(KeyRing::parse(&master).unwrap());
    // Vault a card as payvault does now, then rewrite its wrapped key in AAD v2, as every entry
    // was written before tenants.
    let source = spawn_app_with(Arc::new(TestDb::new().await), keys.clone()).await;
    let txn = new_txn();
    let (_, first) = source.post("/", &card_tokenize(&txn, PAN)).await;
    let token = first["token_id"].as_str().unwrap().to_owned();
    rewrap_as_v2(source.pool(), &master, &token).await;
    let old = CreatedCredential {
        row: source.connector.row.clone(),
        secret: SecretText::from(source.connector.secret.expose()),
    };

    // A database at the last migration before tenants, holding that entry, its credential,
    // its idempotency record and audit events.
    let db = Arc::new(TestDb::unmigrated().await);
    migrate_before(&db.pool, "20261224").await;
    for table in [
        "credentials",
        "vault_entries",
        "idempotency_records",
        "audit_events",
    ] {
        copy_rows(source.pool(), &db.pool, table).await;
    }
    drop(source);
    // So that the old connector may charge stored tokens too.
    sqlx::query("UPDATE credentials SET scopes = '{connector,tokens:charge}'")
        .execute(&db.pool)
        .await
        .unwrap();
    payvault::store::migrate(&db.pool).await.unwrap();
    let app = spawn_app_opts(
        db.clone(),
        keys.clone(),
        Options {
            dedup: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM vault_entries WHERE tenant_id = '{DEFAULT_TENANT}'
             AND aad_version = 2"
        ))
        .await,
        1
    );
    // The old credential (moved over with its secret's hash) works: an identical retry of the
    // old transaction gets the old token, dedup finds it under the old fingerprint, and it
    // charges.
    let (_, retried) = app.post_as(&old, "/", &card_tokenize(&txn, PAN)).await;
    assert_eq!(retried["token_id"], json!(token), "{retried}");
    let (_, again) = app
        .post_as(&old, "/", &card_tokenize(&new_txn(), PAN))
        .await;
    assert_eq!(again["token_id"], json!(token), "{again}");
    let (_, charged) = app.post_as(&old, "/", &root_charge(&token)).await;
    assert!(charged["charge_id"].is_string(), "{charged}");
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE tenant_id IS DISTINCT FROM '00000000-0000-0000-0000-000000000001'")
            .await,
        0,
        "old and new events belong to the default tenant"
    );

    // A v2 entry moved into another tenant's row does not open there.
    let b = tenant(&app, "brand-b").await;
    sqlx::query("UPDATE vault_entries SET tenant_id = $1 WHERE token = $2")
        .bind(b.id)
        .bind(&token)
        .execute(app.pool())
        .await
        .unwrap();
    let (_, reply) = app.post_as(&b.connector, "/", &root_charge(&token)).await;
    assert_eq!(reply["error_code"], "token_integrity_failed", "{reply}");
    sqlx::query("UPDATE vault_entries SET tenant_id = $1 WHERE token = $2")
        .bind(DEFAULT_TENANT)
        .bind(&token)
        .execute(app.pool())
        .await
        .unwrap();

    // `keys rotate` re-binds it as v3, bound to the default tenant; it still charges.
    let vault = Vault::new(app.pool().clone(), keys);
    assert_eq!(vault.rotate_batch(100).await.unwrap(), 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM vault_entries WHERE token = '{token}' AND aad_version = 3"
        ))
        .await,
        1
    );
    let (_, charged) = app.post_as(&old, "/", &root_charge(&token)).await;
    assert!(charged["charge_id"].is_string(), "{charged}");
}

/// Applies the migrations whose names sort before `prefix`, as an older payvault did.
async fn migrate_before(pool: &sqlx::PgPool, prefix: &str) {
    let dir = std::env::temp_dir().join(format!("payvault-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for file in std::fs::read_dir(all).unwrap() {
        let file = file.unwrap();
        if file.file_name().to_string_lossy().as_ref() < prefix {
            std::fs::copy(file.path(), dir.join(file.file_name())).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    migrator.run(pool).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Copies every row of `table` into the same table of an older schema (columns it lacks, such
/// as `tenant_id`, are left behind).
async fn copy_rows(from: &sqlx::PgPool, to: &sqlx::PgPool, table: &str) {
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::text FROM {table} t ORDER BY 1"
    ))
    .fetch_all(from)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "{table}");
    let overriding = if table == "audit_events" {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    for row in rows {
        sqlx::query(&format!(
            "INSERT INTO {table} {overriding} SELECT (json_populate_record(NULL::{table}, $1::json)).*"
        ))
        .bind(row)
        .execute(to)
        .await
        .unwrap();
    }
    if table == "audit_events" {
        sqlx::query("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), max(id)) FROM audit_events")
            .execute(to)
            .await
            .unwrap();
    }
}

/// Rewrites a default-tenant entry's wrapped key in AAD v2 (no tenant), as payvault wrote every
/// entry before tenants, with the key-wrapping key derived as `crypto::keyring` documents.
async fn rewrap_as_v2(pool: &sqlx::PgPool, master: &str, token: &str) {
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(master.rsplit('.').next().unwrap())
        .unwrap();
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"payvault master key v1"), &bytes);
    let mut okm = [0u8; 32];
    hk.expand(b"payvault/kek", &mut okm).unwrap();
    let kek = Aes256Gcm::new(&okm.into());
    let (wrapped, month, year): (Vec<u8>, i16, i16) = sqlx::query_as(
        "SELECT wrapped_key, exp_month, exp_year FROM vault_entries WHERE token = $1",
    )
    .bind(token)
    .fetch_one(pool)
    .await
    .unwrap();
    let v3 = format!("payvault/dek/v3|{token}|1|card|{month}|{year}|{DEFAULT_TENANT}");
    let v2 = format!("payvault/dek/v2|{token}|1|card|{month}|{year}");
    let (nonce, msg) = wrapped.split_at(12);
    let nonce = Nonce::from_slice(nonce);
    let data_key = kek
        .decrypt(
            nonce,
            Payload {
                msg,
                aad: v3.as_bytes(),
            },
        )
        .unwrap();
    let mut rewrapped = nonce.to_vec();
    let aad = v2.as_bytes();
    rewrapped.extend(
        kek.encrypt(
            nonce,
            Payload {
                msg: &data_key,
                aad,
            },
        )
        .unwrap(),
    );
    sqlx::query("UPDATE vault_entries SET wrapped_key = $2, aad_version = 2 WHERE token = $1")
        .bind(token)
        .bind(rewrapped)
        .execute(pool)
        .await
        .unwrap();
}

//! Security regression tests for leaks (issue 13): card numbers in caller-chosen keys and ids,
//! tokens in logs, clear columns the ciphertext does not authenticate, spreadsheet formulas in
//! the CSV export, and idempotency answers kept past any retry.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{
    self, assert_no_leaks, captured_logs, card_charge, card_tokenize, new_txn, spawn_app,
    spawn_app_with, TestApp, TestDb,
};
use payvault::auth::admin::CreatedCredential;
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::vault::Vault;
use serde_json::{json, Value};

const PAN: &str = "4111111111111111";

/// An API credential with every token scope.
async fn api_credential(app: &TestApp) -> CreatedCredential {
    let name = format!("api-{}", &new_txn()[..8]);
    app.create_credential(
        &name,
        CredentialKind::Api,
        Some(vec![
            Scope::TokensRead,
            Scope::TokensCharge,
            Scope::TokensDelete,
        ]),
    )
    .await
}

/// A merchant API request; returns status and parsed body.
async fn api(
    app: &TestApp,
    cred: &CreatedCredential,
    method: reqwest::Method,
    path: &str,
    idempotency_key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .basic_auth(&cred.row.username, Some(cred.secret.expose()))
        .header("idempotency-key", idempotency_key);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn tokenize(app: &TestApp) -> String {
    let (_, resp) = app.post("/", &card_tokenize(&new_txn(), PAN)).await;
    resp["token_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_card_number_used_as_a_parameter_key_is_never_echoed() {
    let app = spawn_app().await;
    for params in [
        json!({ PAN: {"nested": 1} }),
        json!({ PAN: [PAN] }),
        json!({ "order_id": "A-1", PAN: {"a": {"b": PAN}} }),
    ] {
        let mut body = card_tokenize(&new_txn(), "5555555555554444");
        body["parameters"] = params;
        let (status, resp) = app.post("/", &body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["error_code"], "invalid_field_type", "{resp}");
        assert_eq!(
            resp["error_message"], "field `parameters` must be a string",
            "only the top-level field is named"
        );
        assert!(!resp.to_string().contains("4111"), "{resp}");
    }
    let logs = captured_logs();
    assert_no_leaks(app.pool(), &[PAN, "5555555555554444"], &[], &logs).await;
}

#[tokio::test]
async fn request_logs_never_name_a_token_for_any_token_route() {
    let app = spawn_app().await;
    let cred = api_credential(&app).await;
    let token = tokenize(&app).await;
    let path = format!("/v1/tokens/{token}");
    let get = reqwest::Method::GET;
    let (status, _) = api(&app, &cred, get.clone(), &path, &new_txn(), None).await;
    assert_eq!(status, 200);
    let (status, _) = api(
        &app,
        &cred,
        reqwest::Method::PATCH,
        &path,
        &new_txn(),
        Some(json!({"ttl_days": 30})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, charged) = api(
        &app,
        &cred,
        reqwest::Method::POST,
        &format!("{path}/charges"),
        &new_txn(),
        Some(json!({"amount": "10.00", "currency": "USD"})),
    )
    .await;
    assert_eq!(status, 200, "{charged}");
    let (status, _) = api(
        &app,
        &cred,
        reqwest::Method::DELETE,
        &path,
        &new_txn(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Refused requests too: a deleted token, an unknown one, and a path no route matches.
    let (status, _) = api(&app, &cred, get.clone(), &path, &new_txn(), None).await;
    assert_eq!(
        status, 410,
        "a deleted token answers 410 Gone with its metadata"
    );
    let unknown = "tok_AAAAAAAAAAAAAAAAAAAAAA";
    let (status, _) = api(
        &app,
        &cred,
        reqwest::Method::POST,
        &format!("/v1/tokens/{unknown}/charges"),
        &new_txn(),
        Some(json!({"amount": "10.00", "currency": "USD"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = api(
        &app,
        &cred,
        get,
        &format!("{path}/no-such-route"),
        &new_txn(),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let logs = captured_logs();
    for route in ["/v1/tokens/{token}", "/v1/tokens/{token}/charges"] {
        assert!(logs.contains(route), "the request span names {route}");
    }
    for id in [token.as_str(), unknown] {
        assert!(
            !logs.contains(id),
            "a token id from a request path reached the logs"
        );
    }
}

/// The data key's wrapping key, derived from the master key as `crypto::keyring` does
/// (HKDF-SHA256, documented in `crypto`), so a test can write an entry the way payvault did
/// before AAD v2.
fn kek(master: &str) -> aes_gcm::Aes256Gcm {
    use aes_gcm::KeyInit;
    use base64::Engine;
    let raw = master.rsplit('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .unwrap();
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"payvault master key v1"), &bytes);
    let mut okm = [0u8; 32];
    hk.expand(b"payvault/kek", &mut okm).unwrap();
    aes_gcm::Aes256Gcm::new(&okm.into())
}

/// Rewrites a v3 entry's wrapped key in the AAD v1 format (token and key version only), as
/// payvault wrote every entry before AAD v2, and labels the row v1.
async fn downgrade_to_v1(app: &TestApp, master: &str, token: &str) {
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::Nonce;
    let (wrapped, kind, month, year): (Vec<u8>, String, Option<i16>, Option<i16>) = sqlx::query_as(
        "SELECT wrapped_key, kind, exp_month, exp_year FROM vault_entries WHERE token = $1",
    )
    .bind(token)
    .fetch_one(app.pool())
    .await
    .unwrap();
    let num = |n: Option<i16>| n.map_or("-".to_owned(), |n| n.to_string());
    let kek = kek(master);
    let v3 = format!(
        "payvault/dek/v3|{token}|1|{kind}|{}|{}|{}",
        num(month),
        num(year),
        payvault::domain::DEFAULT_TENANT
    );
    let (nonce, msg) = wrapped.split_at(12);
    let data_key = kek
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg,
                aad: v3.as_bytes(),
            },
        )
        .unwrap();
    let v1 = format!("payvault/dek/v1|{token}|1");
    let mut rewrapped = nonce.to_vec();
    rewrapped.extend(
        kek.encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &data_key,
                aad: v1.as_bytes(),
            },
        )
        .unwrap(),
    );
    sqlx::query("UPDATE vault_entries SET wrapped_key = $2, aad_version = 1 WHERE token = $1")
        .bind(token)
        .bind(rewrapped)
        .execute(app.pool())
        .await
        .unwrap();
}

async fn charge_token(app: &TestApp, cred: &CreatedCredential, token: &str) -> (u16, Value) {
    api(
        app,
        cred,
        reqwest::Method::POST,
        &format!("/v1/tokens/{token}/charges"),
        &new_txn(),
        Some(json!({"amount": "10.00", "currency": "USD"})),
    )
    .await
}

#[tokio::test]
async fn an_edited_expiry_or_kind_column_fails_the_charge_and_old_entries_still_open() {
    let master = MasterKey::generate(1).encode();
    let keys = Arc::new(KeyRing::parse(&master).unwrap());
    let app = spawn_app_with(Arc::new(TestDb::new().await), keys.clone()).await;
    let cred = api_credential(&app).await;

    // Each column edit: an expiry pushed out (a card past its date made chargeable again), a
    // month changed, and a card relabelled as a bank account.
    let edits = [
        "UPDATE vault_entries SET exp_year = exp_year + 1 WHERE token = $1",
        "UPDATE vault_entries SET exp_month = exp_month % 12 + 1 WHERE token = $1",
        "UPDATE vault_entries SET kind = 'bank_account', brand = NULL, bin = NULL,
             exp_month = NULL, exp_year = NULL WHERE token = $1",
    ];
    for edit in edits {
        let token = tokenize(&app).await;
        sqlx::query(edit)
            .bind(&token)
            .execute(app.pool())
            .await
            .unwrap();
        let (status, body) = charge_token(&app, &cred, &token).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (500, Some("token_integrity_failed")),
            "{edit}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("integrity"),
            "{body}"
        );
        let audited = app
            .count(&format!(
                "SELECT count(*) FROM audit_events WHERE action = 'charge' AND token = '{token}'
                 AND outcome = 'failure' AND error_code = 'token_integrity_failed'"
            ))
            .await;
        assert_eq!(audited, 1, "{edit}: the refusal is audited");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE operation = 'charge'")
            .await,
        0,
        "no charge was attempted"
    );
    // The Twilio connector says the same (a stored-token charge needs `tokens:charge`).
    let twilio = app
        .create_credential(
            "twilio-charge",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let token = tokenize(&app).await;
    sqlx::query(edits[0])
        .bind(&token)
        .execute(app.pool())
        .await
        .unwrap();
    let (_, reply) = app
        .post_as(
            &twilio,
            "/",
            &json!({"method": "charge", "transaction_id": new_txn(), "token": token,
                    "amount": "10.00", "currency_code": "USD"}),
        )
        .await;
    assert_eq!(reply["error_code"], "token_integrity_failed", "{reply}");

    // An entry written in the v1 format (before kind and expiry were bound) still charges...
    let old = tokenize(&app).await;
    downgrade_to_v1(&app, &master, &old).await;
    let (status, body) = charge_token(&app, &cred, &old).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["charge_id"].is_string(), "{body}");
    // ...and `keys rotate` re-seals it as v3, after which its columns are bound too.
    let vault = Vault::new(app.pool().clone(), keys.clone());
    assert_eq!(vault.rotate_batch(100).await.unwrap(), 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM vault_entries WHERE token = '{old}' AND aad_version = 3"
        ))
        .await,
        1
    );
    let (status, _) = charge_token(&app, &cred, &old).await;
    assert_eq!(status, 200, "the re-sealed entry charges");
    sqlx::query(edits[0])
        .bind(&old)
        .execute(app.pool())
        .await
        .unwrap();
    let (status, body) = charge_token(&app, &cred, &old).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("token_integrity_failed"))
    );
}

#[tokio::test]
async fn an_id_holding_a_card_number_is_refused_before_anything_keeps_it() {
    let app = spawn_app().await;
    let cred = api_credential(&app).await;
    let token = tokenize(&app).await;
    let ids = [
        "4111111111111111",
        "order-5555555555554444",
        "4012.8888.8888.1881",
        "6011-1111-1111-1117",
    ];
    for (i, id) in ids.iter().enumerate() {
        let body = if i % 2 == 0 {
            card_tokenize(id, "378282246310005")
        } else {
            card_charge(id, "378282246310005", "10.00")
        };
        let (status, reply) = app.post("/", &body).await;
        assert_eq!(status, 200);
        assert_eq!(reply["error_code"], "card_number_in_transaction_id", "{id}");
        let message = reply["error_message"].as_str().unwrap();
        assert!(message.contains("transaction_id"), "{message}");
        assert!(
            !message.chars().any(|c| c.is_ascii_digit()),
            "the id is not echoed: {message}"
        );
    }
    // The merchant API's Idempotency-Key, likewise.
    let (status, body) = api(
        &app,
        &cred,
        reqwest::Method::POST,
        &format!("/v1/tokens/{token}/charges"),
        "3530111333300000",
        Some(json!({"amount": "10.00", "currency": "USD"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("card_number_in_transaction_id")),
        "{body}"
    );
    // The merchant API refuses any 13 digits in a row there, Luhn-valid or not (its documented
    // pattern), but never a UUID.
    for (key, refused) in [
        ("1234567890123", true),
        ("inv-2026.1130.0000.1", true),
        ("12345678-1234-4123-8123-123456789012", false),
    ] {
        let (status, body) = api(
            &app,
            &cred,
            reqwest::Method::POST,
            &format!("/v1/tokens/{token}/charges"),
            key,
            Some(json!({"amount": "10.00", "currency": "USD"})),
        )
        .await;
        let code = body["error"]["code"].as_str();
        if refused {
            assert_eq!(
                (status, code),
                (400, Some("card_number_in_transaction_id")),
                "{key}: {body}"
            );
            assert!(!body.to_string().contains(key), "not echoed: {body}");
        } else {
            assert_eq!(status, 200, "{key}: {body}");
        }
    }
    // A UUID (what Twilio sends) is accepted, even one whose groups would join into a
    // Luhn-valid run.
    let (_, reply) = app
        .post(
            "/",
            &card_tokenize("abcd4111-1111-1111-1111-abcdefabcdef", "378282246310005"),
        )
        .await;
    assert!(reply["token_id"].is_string(), "{reply}");

    // Each refusal is audited, without the id.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_events WHERE error_code = 'card_number_in_transaction_id'
             AND transaction_id IS NULL"
        )
        .await,
        7
    );
    let mut secrets = ids.to_vec();
    secrets.extend(["5555555555554444", "4012888888881881", "6011111111111117"]);
    secrets.extend(["3530111333300000", "378282246310005", PAN]);
    assert_no_leaks(app.pool(), &secrets, &[], &captured_logs()).await;
}

#[tokio::test]
async fn the_csv_export_neutralises_formula_cells() {
    let master = MasterKey::generate(1).encode();
    let keys = Arc::new(KeyRing::parse(&master).unwrap());
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_with(db.clone(), keys).await;
    let hostile = [
        r#"=HYPERLINK("http://evil.example","x")"#,
        "+1+1",
        "-2+3",
        "@SUM(1;2)",
        "a;=1+1",
    ];
    for id in hostile {
        let (_, reply) = app.post("/", &card_tokenize(id, PAN)).await;
        assert!(reply["token_id"].is_string(), "{id}: {reply}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args([
            "audit", "list", "--action", "tokenize", "--format", "csv", "--limit", "50",
        ])
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", master.as_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "transaction_id")
        .unwrap();
    let ids: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[column].to_owned())
        .collect();
    assert_eq!(ids.len(), hostile.len(), "{text}");
    for id in hostile {
        let shown = if id.starts_with(['=', '+', '-', '@']) {
            format!("'{id}")
        } else {
            id.to_owned()
        };
        assert!(ids.contains(&shown), "{id} is shown as {shown}: {ids:?}");
    }
    // Every cell is quoted, so a `;` cannot split one in a locale that separates with `;`.
    for line in text.lines() {
        assert!(line.starts_with('"') && line.ends_with('"'), "{line}");
    }
    assert!(
        text.contains(r#""'=HYPERLINK(""http://evil.example"",""x"")""#),
        "{text}"
    );
}

#[tokio::test]
async fn idempotency_answers_are_purged_after_the_retention_period() {
    let db = Arc::new(TestDb::new().await);
    let keys = helpers::test_keys();
    let app = spawn_app_with(db.clone(), keys.clone()).await;
    let (old_tok, new_tok, old_charge, new_charge) = (new_txn(), new_txn(), new_txn(), new_txn());
    let mut answers = Vec::new();
    for (txn, body) in [
        (&old_tok, card_tokenize(&old_tok, PAN)),
        (&new_tok, card_tokenize(&new_tok, PAN)),
        (&old_charge, card_charge(&old_charge, PAN, "10.00")),
        (&new_charge, card_charge(&new_charge, PAN, "10.00")),
    ] {
        let (_, reply) = app.post("/", &body).await;
        assert!(reply["error_code"].is_null(), "{txn}: {reply}");
        answers.push((body, reply));
    }
    // Twice the default retention (24 h) ago.
    sqlx::query(
        "UPDATE idempotency_records SET updated_at = now() - interval '48 hours'
         WHERE idempotency_key = ANY($1)",
    )
    .bind(vec![old_tok.clone(), old_charge.clone()])
    .execute(app.pool())
    .await
    .unwrap();

    // The purge runs when an instance starts (and every few minutes after).
    let _second = spawn_app_with(db.clone(), keys).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .count("SELECT count(*) FROM idempotency_records WHERE purged_at IS NOT NULL")
        .await
        < 2
    {
        assert!(Instant::now() < deadline, "the purge did not run");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT idempotency_key, outcome IS NOT NULL OR token IS NOT NULL, purged_at IS NOT NULL,
                request_mac IS NOT NULL
         FROM idempotency_records",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    for (key, has_answer, purged, has_mac) in kept {
        let old = key == old_tok || key == old_charge;
        assert_eq!((has_answer, purged), (!old, old), "{key}");
        assert!(has_mac, "{key}: the record itself stays");
    }

    // A retry within the window gets the same answer; a later one is refused as a duplicate
    // and never run again.
    for (body, first) in &answers {
        let txn = body["transaction_id"].as_str().unwrap();
        let (_, again) = app.post("/", body).await;
        if txn == old_tok || txn == old_charge {
            assert_eq!(again["error_code"], "duplicate_transaction", "{again}");
            assert!(
                again["error_message"]
                    .as_str()
                    .unwrap()
                    .contains("longer ago than answers are kept"),
                "{again}"
            );
        } else {
            assert_eq!(&again, first);
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM vault_entries").await,
        2,
        "the late tokenize retry vaulted nothing"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM audit_events WHERE transaction_id = '{old_charge}'
             AND action = 'charge' AND error_code = 'duplicate_transaction'"
        ))
        .await,
        1,
        "the late charge retry is audited as refused"
    );
}

#[tokio::test]
async fn a_deduplicated_reissue_rebinds_the_new_expiry() {
    let keys = helpers::test_keys();
    let app = helpers::spawn_app_opts(
        Arc::new(TestDb::new().await),
        keys.clone(),
        helpers::Options {
            dedup: true,
            ..Default::default()
        },
    )
    .await;
    let (_, first) = app.post("/", &card_tokenize(&new_txn(), PAN)).await;
    let token = first["token_id"].as_str().unwrap().to_owned();
    let mut reissued = card_tokenize(&new_txn(), PAN);
    reissued["expiry_year"] = json!("39");
    reissued["expiry_month"] = json!("02");
    let (_, again) = app.post("/", &reissued).await;
    assert_eq!(again["token_id"], first["token_id"], "{again}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM vault_entries WHERE token = '{token}'
             AND exp_month = 2 AND exp_year = 2039 AND aad_version = 3"
        ))
        .await,
        1
    );
    // The entry opens under its new columns, and no longer under the old ones.
    let vault = Vault::new(app.pool().clone(), keys);
    assert!(vault.open_entry(&token).await.unwrap().is_some());
    sqlx::query("UPDATE vault_entries SET exp_month = 8, exp_year = 2035 WHERE token = $1")
        .bind(&token)
        .execute(app.pool())
        .await
        .unwrap();
    assert!(vault.open_entry(&token).await.is_err());
}

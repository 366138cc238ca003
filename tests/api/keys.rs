//! Master key rotation: re-encryption under load, resumption, and retirement.

use std::process::Command;
use std::sync::Arc;

use crate::helpers::{self, card_charge, card_tokenize, new_txn, spawn_app_with, TestDb};
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::vault::Vault;
use serde_json::{json, Value};

struct Keys {
    v1: String,
    v2: String,
}

impl Keys {
    fn new() -> Self {
        Self {
            v1: MasterKey::generate(1).encode().to_string(),
            v2: MasterKey::generate(2).encode().to_string(),
        }
    }
    fn ring(&self, texts: &[&str]) -> Arc<KeyRing> {
        Arc::new(KeyRing::parse(&texts.join(",")).unwrap())
    }
}

async fn versions(pool: &sqlx::PgPool) -> Vec<(i32, i64)> {
    payvault::store::vault::count_by_key_version(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn rotation_under_load_re_encrypts_everything_without_failing_a_request() {
    let keys = Keys::new();
    let db = Arc::new(TestDb::new().await);
    // Year one: everything under version 1.
    let old = spawn_app_with(db.clone(), keys.ring(&[&keys.v1])).await;
    let mut tokens = Vec::new();
    for pan in ["4111111111111111", "5555555555554444", "378282246310005"]
        .iter()
        .cycle()
        .take(60)
    {
        let (_, body) = old.post("/", &card_tokenize(&new_txn(), pan)).await;
        tokens.push(body["token_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(versions(&db.pool).await, [(1, 60)]);
    drop(old);

    // Version 2 is deployed (both loaded); rotation runs while traffic continues.
    let ring = keys.ring(&[&keys.v1, &keys.v2]);
    let app = spawn_app_with(db.clone(), ring.clone()).await;
    let backend = app
        .create_credential(
            "backend",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let vault = Vault::new(db.pool.clone(), ring.clone());
    let traffic: Vec<Value> = (0..60)
        .map(|i| {
            if i % 2 == 0 {
                card_tokenize(&new_txn(), "6011111111111117")
            } else {
                json!({"method": "charge", "transaction_id": new_txn(), "token": tokens[i % tokens.len()],
                       "amount": "1.00", "currency_code": "USD"})
            }
        })
        .collect();
    let load = helpers::join_all(traffic.iter().map(|b| app.post_as(&backend, "/", b)));
    let rotate = async {
        let mut rotated = 0;
        loop {
            let n = vault.rotate_batch(7).await.unwrap();
            if n == 0 {
                break rotated;
            }
            rotated += n;
            tokio::task::yield_now().await;
        }
    };
    let (responses, rotated) = tokio::join!(load, rotate);
    assert_eq!(rotated, 60);
    for ((status, body), req) in responses.iter().zip(&traffic) {
        assert_eq!(*status, 200);
        let ok = body["token_id"]
            .as_str()
            .is_some_and(|t| t.starts_with("tok_"))
            || body["charge_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("ch_sandbox_"));
        assert!(ok, "{req} -> {body}");
    }
    assert_eq!(
        versions(&db.pool).await,
        [(2, 90)],
        "every live entry is under version 2"
    );

    // Every token still decrypts, with version 2 alone: the data really was re-encrypted.
    let only_v2 = Vault::new(db.pool.clone(), keys.ring(&[&keys.v2]));
    for token in &tokens {
        assert!(
            only_v2.open_entry(token).await.unwrap().is_some(),
            "{token}"
        );
    }
    // The fingerprint was recomputed under version 2: same card, same fingerprint as a new entry.
    let fps: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT DISTINCT fingerprint FROM vault_entries WHERE brand = 'discover' OR last4 = '1111'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(fps.len(), 2, "one fingerprint per card across versions");
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_and_retirement_waits_for_it() {
    let keys = Keys::new();
    let db = Arc::new(TestDb::new().await);
    let old = spawn_app_with(db.clone(), keys.ring(&[&keys.v1])).await;
    for _ in 0..12 {
        old.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
            .await;
    }
    old.post("/", &card_charge(&new_txn(), "4111111111111111", "1.00"))
        .await;
    drop(old);
    let vault = Vault::new(db.pool.clone(), keys.ring(&[&keys.v1, &keys.v2]));
    // Interrupted after one batch of five.
    assert_eq!(vault.rotate_batch(5).await.unwrap(), 5);
    assert_eq!(versions(&db.pool).await, [(1, 7), (2, 5)]);

    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_KEY", format!("{},{}", keys.v1, keys.v2))
            .output()
            .unwrap()
    };
    let refused = cli(&["keys", "retire", "1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("7 entries still use it"));

    // The CLI resumes where the batch stopped.
    let out = cli(&["keys", "rotate", "--batch", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rotated 7 entries to master key version 2")
    );
    assert_eq!(versions(&db.pool).await, [(2, 12)]);
    let status = String::from_utf8_lossy(&cli(&["keys", "status"]).stdout).into_owned();
    assert!(status.contains("2        12"), "{status}");

    let retired = cli(&["keys", "retire", "1"]);
    assert!(
        retired.status.success(),
        "{}",
        String::from_utf8_lossy(&retired.stderr)
    );
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, outcome FROM audit_events WHERE action IN ('key_rotate', 'key_retire') ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let actions: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, o)| (a.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("key_retire", "failure"),
            ("key_rotate", "success"),
            ("key_retire", "success")
        ]
    );
}

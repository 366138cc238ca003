//! Master key rotation: re-encryption under load, resumption, and retirement; what retirement
//! does for entries deleted earlier (crypto-shredding, backups included).

use std::process::Command;
use std::sync::Arc;

use crate::helpers::{self, card_charge, card_tokenize, new_txn, spawn_app_with, TestDb};
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{CryptoError, EntryBinding, KeyRing, MasterKey, SealedEntry};
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
    // Its stderr is a pipe here, as in a log: plain lines, no `\r` progress-bar redraws.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(!progress.contains('\r'), "{progress:?}");
    assert!(
        progress.lines().any(|l| l == "re-encrypted 7/7 entries"),
        "{progress:?}"
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

/// `DELETE /v1/tokens/{t}` empties the live row, but a backup taken before (like the old row
/// version in the heap until VACUUM, and the WAL) keeps the wrapped key and ciphertext, which the
/// master key version that wrapped them still opens. The README's procedure (a new version,
/// `keys rotate`, `keys retire` of the old one, keeping only its audit-only key) leaves nothing
/// that opens them, while the audit log sealed under the old version stays verifiable.
#[tokio::test]
async fn a_deleted_entry_in_a_backup_cannot_be_opened_once_its_key_version_is_retired() {
    let keys = Keys::new();
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_with(db.clone(), keys.ring(&[&keys.v1])).await;
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let token = body["token_id"].as_str().unwrap().to_owned();
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "5555555555554444"))
        .await;
    let kept = body["token_id"].as_str().unwrap().to_owned();

    // What a backup holds of the entry.
    #[allow(clippy::type_complexity)]
    let (key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year): (
        i32,
        i16,
        Vec<u8>,
        Vec<u8>,
        String,
        Option<i16>,
        Option<i16>,
    ) = sqlx::query_as(
        "SELECT key_version, aad_version, wrapped_key, ciphertext, kind, exp_month, exp_year \
         FROM vault_entries WHERE token = $1",
    )
    .bind(&token)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let binding = EntryBinding {
        tenant: payvault::domain::DEFAULT_TENANT,
        kind: &kind,
        exp_month,
        exp_year,
    };
    let backup = SealedEntry {
        key_version,
        aad_version,
        wrapped_key,
        ciphertext,
    };

    let deleter = app
        .create_credential(
            "deleter",
            CredentialKind::Api,
            Some(vec![Scope::TokensDelete]),
        )
        .await;
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/tokens/{token}")))
        .basic_auth(&deleter.row.username, Some(deleter.secret.expose()))
        .header("idempotency-key", new_txn())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let live: (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT wrapped_key, ciphertext FROM vault_entries WHERE token = $1")
            .bind(&token)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(live, (None, None), "the live row is emptied");
    // Deleting alone shreds nothing that was copied: version 1 still opens the backup.
    let opened = keys
        .ring(&[&keys.v1])
        .open(&token, &binding, &backup)
        .unwrap();
    assert!(opened.windows(16).any(|w| w == b"4111111111111111"));
    drop(app);
    // The audit log so far is sealed under version 1, as the running service seals it.
    payvault::audit::seal::seal_pending(&db.pool, &keys.ring(&[&keys.v1]))
        .await
        .unwrap();

    let cli = |ring: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_MASTER_KEY", ring)
            .env_remove("PAYVAULT_MASTER_KEY_FILE")
            .output()
            .unwrap()
    };
    let both = format!("{},{}", keys.v1, keys.v2);
    let rotated = cli(&both, &["keys", "rotate"]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let retired = cli(&both, &["keys", "retire", "1"]);
    let said = String::from_utf8_lossy(&retired.stdout).into_owned();
    assert!(
        retired.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&retired.stderr)
    );
    let audit_key = said.lines().last().unwrap().to_owned();
    assert!(audit_key.starts_with("pvaudit.1."), "{said}");

    // What is left once every copy of the version 1 master key is destroyed.
    let remaining = format!("{},{audit_key}", keys.v2);
    let ring = Arc::new(KeyRing::parse(&remaining).unwrap());
    assert!(matches!(
        ring.open(&token, &binding, &backup),
        Err(CryptoError::UnknownKeyVersion(1))
    ));
    // Not even the audit-only key passed off as version 1's master key opens it.
    let disguised = audit_key.replacen("pvaudit.", "pvmk.", 1);
    let disguised = KeyRing::parse(&format!("{},{disguised}", keys.v2)).unwrap();
    assert!(matches!(
        disguised.open(&token, &binding, &backup),
        Err(CryptoError::Authentication)
    ));
    // The live entry was re-encrypted and opens with what is left.
    let vault = Vault::new(db.pool.clone(), ring);
    assert!(vault.open_entry(&kept).await.unwrap().is_some());

    // The audit log, partly sealed under version 1, verifies with what is left, and needs the
    // audit-only key for it.
    let verified = cli(&remaining, &["audit", "verify"]);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let without = cli(&keys.v2, &["audit", "verify"]);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stdout).contains("version 1, which is not loaded"),
        "{}",
        String::from_utf8_lossy(&without.stdout)
    );
}

//! Helpers of the transfer tests: temporary directories, generated cards, OpenPGP keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::helpers::{signer_for, TestDb};
use payvault::audit::AuditLog;
use payvault::auth::{admin, CredentialKind};
use payvault::crypto::KeyRing;
use payvault::transfer::pgp::Recipient;
use payvault::transfer::{Format, ImportOptions, Preset};
use payvault::vault::Vault;
use pgp::composed::{
    EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
    SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::ser::Serialize as _;
use serde_json::Value;
use uuid::Uuid;

/// A temporary directory, removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("pvtransfer-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Every byte of every file in it, as text (lossy), for leak scans.
    pub fn all_text(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(&self.0).unwrap() {
            all.push_str(&String::from_utf8_lossy(
                &std::fs::read(entry.unwrap().path()).unwrap(),
            ));
        }
        all
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Luhn-valid 16-digit Visa number built from `n`.
pub fn pan(n: u64) -> String {
    let body = format!("4{:014}", n);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// `n` card rows in `preset`'s columns, in `format`; row `bad` (if any) fails the Luhn check.
/// Every row has a CVV column too, which import must ignore.
pub fn cards(preset: Preset, format: Format, n: u64, bad: Option<u64>, seed: u64) -> String {
    use payvault::transfer::layout::Field;
    let c = |f| preset.column(f);
    let mut out = String::new();
    if format == Format::Csv {
        out.push_str(&format!(
            "{},{},{},{},{},cvv\n",
            c(Field::SourceId),
            c(Field::Number),
            c(Field::ExpMonth),
            c(Field::ExpYear),
            c(Field::PostalCode)
        ));
    }
    for i in 0..n {
        let mut number = pan(seed + i);
        if bad == Some(i) {
            let last = number.pop().unwrap();
            number.push(if last == '9' {
                '0'
            } else {
                (last as u8 + 1) as char
            });
        }
        let id = format!("src_{seed}_{i}");
        match format {
            Format::Csv => out.push_str(&format!("{id},{number},8,2031,94111,737\n")),
            Format::Jsonl => out.push_str(&format!(
                "{}\n",
                serde_json::json!({
                    c(Field::SourceId): id, c(Field::Number): number, c(Field::ExpMonth): 8,
                    c(Field::ExpYear): "2031", c(Field::PostalCode): "94111", "cvv": "737"
                })
            )),
        }
    }
    out
}

pub fn read_result(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn options(
    input: PathBuf,
    result: PathBuf,
    preset: Preset,
    format: Format,
    created_by: Uuid,
) -> ImportOptions {
    ImportOptions {
        input,
        format,
        preset,
        source: "test-source".into(),
        created_by,
        // Test credentials are created in the default tenant.
        tenant_id: payvault::domain::DEFAULT_TENANT,
        decrypt: None,
        result,
        batch_size: 7,
        dedup: false,
        expires_at: None,
        network_transaction_issuer: None,
        audit_each_row: false,
        progress: false,
    }
}

/// The audit log as one import or export command writes it: a writer of its own.
pub fn audit_log(pool: &sqlx::PgPool, keys: &Arc<KeyRing>) -> AuditLog {
    AuditLog::new(pool.clone(), Arc::new(signer_for(keys)))
}

/// The connector credential `importer`, its creation audited under `keys`.
pub async fn credential(db: &TestDb, keys: &Arc<KeyRing>) -> Uuid {
    let signer = signer_for(keys);
    admin::create_credential(
        &db.pool,
        &signer,
        "importer",
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap()
    .row
    .id
}

/// An Ed25519 primary key with an X25519 (ECDH Curve25519) encryption subkey.
pub fn curve25519_key() -> SignedSecretKey {
    key_with(
        KeyType::Ed25519Legacy,
        KeyType::ECDH(ECCCurve::Curve25519Legacy),
    )
}

pub fn key_with(primary: KeyType, encryption: KeyType) -> SignedSecretKey {
    let mut sub = SubkeyParamsBuilder::default();
    sub.key_type(encryption)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(primary)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("Import Test <import@example.com>".into())
        .subkeys(vec![sub.build().unwrap()]);
    params
        .build()
        .unwrap()
        .generate(aes_gcm::aead::OsRng)
        .unwrap()
}

pub fn public(key: &SignedSecretKey) -> SignedPublicKey {
    SignedPublicKey::from(key.clone())
}

/// Encrypts `plain` to `key` with rPGP, as a source system's gpg would.
pub fn encrypt_to(key: &SignedSecretKey, plain: &str, out: &Path) {
    let recipient = Recipient::new(public(key)).unwrap();
    let file = std::fs::File::create(out).unwrap();
    recipient.encrypt(plain.as_bytes(), file).unwrap();
}

pub fn save_secret_key(key: &SignedSecretKey, path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    key.to_writer(&mut f).unwrap();
}

/// Every live entry's payload and expiry, by token.
pub async fn decrypted(
    pool: &sqlx::PgPool,
    keys: &Arc<KeyRing>,
) -> HashMap<String, (Vec<u8>, Option<i16>, Option<i16>)> {
    let vault = Vault::new(pool.clone(), keys.clone());
    let rows: Vec<(String, Option<i16>, Option<i16>)> = sqlx::query_as(
        "SELECT token, exp_month, exp_year FROM vault_entries WHERE deleted_at IS NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = HashMap::new();
    for (token, m, y) in rows {
        let plain = vault.open_entry(&token).await.unwrap().unwrap();
        out.insert(token, (plain.to_vec(), m, y));
    }
    out
}

pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

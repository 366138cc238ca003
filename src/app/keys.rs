//! Where the master key ring comes from: `PAYVAULT_MASTER_KEY` (or its `_FILE`), and a
//! passphrase-derived version whose salt, cost and check value live in the database.

use std::sync::Arc;

use crate::domain::SecretText;
use anyhow::Context;
use sqlx::PgPool;

use crate::config;
use crate::crypto::{KeyRing, MasterKey};
use crate::store;

/// Master keys as configured, before the passphrase (if any) is derived. Parsing happens at
/// once, so a malformed key fails before anything else starts.
pub enum KeySource {
    Configured {
        keys: Vec<MasterKey>,
        passphrase: Option<(SecretText, i32)>,
    },
    /// A ring already loaded (an embedding program or a test that shares it).
    Loaded(Arc<KeyRing>),
}

impl KeySource {
    /// `PAYVAULT_MASTER_KEY`/`_FILE` and `PAYVAULT_MASTER_PASSPHRASE`/`_FILE`; at least one is
    /// required.
    pub fn from_env() -> anyhow::Result<Self> {
        let keys = match config::secret_var("PAYVAULT_MASTER_KEY")? {
            Some(text) => MasterKey::parse_list(text.expose()).context("PAYVAULT_MASTER_KEY")?,
            None => Vec::new(),
        };
        let passphrase = config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?;
        if keys.is_empty() && passphrase.is_none() {
            anyhow::bail!("PAYVAULT_MASTER_KEY (or PAYVAULT_MASTER_KEY_FILE, or PAYVAULT_MASTER_PASSPHRASE) is required");
        }
        let version = config::parsed("PAYVAULT_MASTER_PASSPHRASE_VERSION", 1)?;
        Ok(Self::Configured {
            keys,
            passphrase: passphrase.map(|p| (p, version)),
        })
    }

    /// Keys given directly (`payvault dev`, tests).
    pub fn from_keys(keys: Vec<MasterKey>) -> Self {
        Self::Configured {
            keys,
            passphrase: None,
        }
    }

    /// Whether a development (`pvdev.`) key is among them.
    pub fn has_development_key(&self) -> bool {
        match self {
            Self::Configured { keys, .. } => keys.iter().any(MasterKey::is_development),
            Self::Loaded(ring) => ring.has_development_key(),
        }
    }

    /// The key ring: the configured keys plus the passphrase-derived one, checked against the
    /// stored check value so a wrong passphrase stops here.
    pub async fn load(self, pool: &PgPool) -> anyhow::Result<Arc<KeyRing>> {
        let (mut keys, passphrase) = match self {
            Self::Loaded(ring) => {
                check_versions(pool, &ring).await?;
                return Ok(ring);
            }
            Self::Configured { keys, passphrase } => (keys, passphrase),
        };
        if let Some((passphrase, version)) = passphrase {
            let kdf = store::keys::find_kdf(pool, version).await?.ok_or_else(|| {
                anyhow::anyhow!("no passphrase parameters for master key version {version}: run `payvault keys passphrase-init` once")
            })?;
            let (matches, key) = tokio::task::spawn_blocking(move || {
                MasterKey::from_passphrase(
                    version,
                    passphrase.expose(),
                    &kdf.salt,
                    u32::try_from(kdf.m_cost_kib).unwrap_or(0),
                    u32::try_from(kdf.t_cost).unwrap_or(0),
                    u32::try_from(kdf.p_cost).unwrap_or(0),
                )
                .map(|k| (k.check_mac().to_vec() == kdf.check_mac, k))
            })
            .await??;
            if !matches {
                anyhow::bail!(
                    "PAYVAULT_MASTER_PASSPHRASE is wrong for master key version {version}"
                );
            }
            keys.push(key);
        }
        let ring = Arc::new(KeyRing::from_keys(keys)?);
        check_versions(pool, &ring).await?;
        Ok(ring)
    }
}

/// A loaded master key that is not the key its version was first used with. Names the version,
/// never the key.
#[derive(Debug, thiserror::Error)]
#[error("wrong key: master key version {version} {evidence}; check PAYVAULT_MASTER_KEY (or its _FILE, or the passphrase) on this machine")]
pub struct WrongMasterKey {
    pub version: i32,
    evidence: &'static str,
}

const MISMATCH: &str = "does not match the check value recorded when it was first used";

/// Compares each loaded version with the check value recorded for it, and records the check
/// value of a version seen for the first time.
///
/// Backfill (a version that protected data before check values existed) is recorded only once
/// the key has proved itself on that data: it opens one of the version's live entries, or
/// reproduces the newest audit seal made under it. Otherwise a wrong key loaded at the first
/// start with this code would be written down as the right one. A version with no data to check
/// against is recorded as loaded: nothing depends on it yet, so whichever key first uses it
/// defines it (two instances starting a brand-new version with different keys: the first
/// insert wins, the other is refused).
async fn check_versions(pool: &PgPool, ring: &KeyRing) -> anyhow::Result<()> {
    let recorded: std::collections::BTreeMap<i32, Vec<u8>> = store::keys::find_key_checks(pool)
        .await
        .context("cannot read the master key check values")?
        .into_iter()
        .collect();
    // Every version is checked before any is recorded: a new version must not be written down
    // next to a wrong old one.
    let mut unrecorded = Vec::new();
    for version in ring.versions() {
        let check = ring.check_value(version)?;
        let wrong = |evidence| WrongMasterKey { version, evidence };
        if let Some(stored) = recorded.get(&version) {
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&check[..], stored.as_slice())) {
                return Err(wrong(MISMATCH).into());
            }
            continue;
        }
        if let Some(token) = store::keys::sample_entry_token(pool, version).await? {
            let entry = store::vault::find_sealed_entry(pool, &token).await?;
            if let Some(entry) = entry.filter(|e| e.sealed.key_version == version) {
                if ring.open(&token, &entry.binding(), &entry.sealed).is_err() {
                    return Err(wrong("does not decrypt the vault entries stored under it").into());
                }
            }
        } else if crate::audit::seal::key_made_newest_seal(pool, ring, version).await?
            == Some(false)
        {
            return Err(wrong("did not make the audit seals recorded under it").into());
        }
        unrecorded.push((version, check));
    }
    for (version, check) in unrecorded {
        if !store::keys::insert_key_check(pool, version, &check).await? {
            // Another instance recorded it meanwhile: compare with what it recorded.
            let stored = store::keys::find_key_checks(pool).await?;
            if !stored
                .iter()
                .any(|(v, mac)| *v == version && mac.as_slice() == check)
            {
                return Err(WrongMasterKey {
                    version,
                    evidence: MISMATCH,
                }
                .into());
            }
        }
        tracing::info!(
            version,
            "recorded the check value of master key version {version}"
        );
    }
    Ok(())
}

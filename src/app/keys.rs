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
            Self::Loaded(ring) => return Ok(ring),
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
        Ok(Arc::new(KeyRing::from_keys(keys)?))
    }
}

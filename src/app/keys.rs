//! Where the master key ring comes from: `PAYVAULT_MASTER_KEY` (or its `_FILE`), and a
//! passphrase-derived version whose salt, cost and check value live in the database; or, with
//! `PAYVAULT_KEY_PROVIDER`, the wrapped keys of `master_key_wraps` unwrapped by a key provider
//! (see [`crate::custody`]).

use std::sync::Arc;

use crate::domain::SecretText;
use anyhow::Context;
use sqlx::PgPool;

use crate::config;
use crate::crypto::{KeyRing, MasterKey};
use crate::custody::KeyProvider;
use crate::store;

/// Turns the production refusal of a master key (or passphrase) given in a plain environment
/// variable into a warning.
pub const ALLOW_PLAIN_VAR: &str = "PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY";

/// Master keys as configured, before the passphrase (if any) is derived. Parsing happens at
/// once, so a malformed key fails before anything else starts.
pub enum KeySource {
    Configured {
        keys: Vec<MasterKey>,
        passphrase: Option<(SecretText, i32)>,
        /// The plain environment variables (not `_FILE`) the key material came from.
        plain_vars: Vec<&'static str>,
    },
    /// The rows of `master_key_wraps`, unwrapped by a key provider at load. `audit_keys` are
    /// retired versions' audit-only keys (`pvaudit.`) from `PAYVAULT_MASTER_KEY`.
    Provider {
        provider: KeyProvider,
        audit_keys: Vec<MasterKey>,
    },
    /// A ring already loaded (an embedding program or a test that shares it).
    Loaded(Arc<KeyRing>),
}

impl KeySource {
    /// The key provider `PAYVAULT_KEY_PROVIDER` names, or else the environment's keys
    /// ([`Self::from_env_keys`]). With a provider, `PAYVAULT_MASTER_KEY` may hold audit-only
    /// keys (`pvaudit.`) and nothing else, and no passphrase is read: master keys come from one
    /// place only.
    pub fn from_env() -> anyhow::Result<Self> {
        let Some(provider) = KeyProvider::from_env()? else {
            return Self::from_env_keys();
        };
        let keys = match config::secret_var("PAYVAULT_MASTER_KEY")? {
            Some(text) => MasterKey::parse_list(text.expose()).context("PAYVAULT_MASTER_KEY")?,
            None => Vec::new(),
        };
        let name = provider.name();
        if keys.iter().any(|k| !k.is_audit_only()) {
            anyhow::bail!("PAYVAULT_KEY_PROVIDER={name} loads the master keys from the database, wrapped: PAYVAULT_MASTER_KEY (or its _FILE) may hold only audit-only keys (pvaudit.…). After `payvault keys wrap`, remove the master keys from it");
        }
        if config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?.is_some() {
            anyhow::bail!("PAYVAULT_KEY_PROVIDER={name} loads the master keys from the database, wrapped: unset PAYVAULT_MASTER_PASSPHRASE (or its _FILE) after `payvault keys wrap`");
        }
        Ok(Self::Provider {
            provider,
            audit_keys: keys,
        })
    }

    /// `PAYVAULT_MASTER_KEY`/`_FILE` and `PAYVAULT_MASTER_PASSPHRASE`/`_FILE`; at least one is
    /// required.
    pub fn from_env_keys() -> anyhow::Result<Self> {
        let keys = match config::secret_var("PAYVAULT_MASTER_KEY")? {
            Some(text) => MasterKey::parse_list(text.expose()).context("PAYVAULT_MASTER_KEY")?,
            None => Vec::new(),
        };
        let passphrase = config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?;
        if keys.is_empty() && passphrase.is_none() {
            anyhow::bail!("PAYVAULT_MASTER_KEY (or PAYVAULT_MASTER_KEY_FILE, or PAYVAULT_MASTER_PASSPHRASE) is required");
        }
        let version = config::parsed("PAYVAULT_MASTER_PASSPHRASE_VERSION", 1)?;
        let plain_vars = ["PAYVAULT_MASTER_KEY", "PAYVAULT_MASTER_PASSPHRASE"]
            .into_iter()
            .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
            .collect();
        Ok(Self::Configured {
            keys,
            passphrase: passphrase.map(|p| (p, version)),
            plain_vars,
        })
    }

    /// Keys given directly (`payvault dev`, tests).
    pub fn from_keys(keys: Vec<MasterKey>) -> Self {
        Self::Configured {
            keys,
            passphrase: None,
            plain_vars: Vec::new(),
        }
    }

    /// Whether a development (`pvdev.`) key is among them.
    pub fn has_development_key(&self) -> bool {
        match self {
            Self::Configured { keys, .. } => keys.iter().any(MasterKey::is_development),
            Self::Provider { .. } => false,
            Self::Loaded(ring) => ring.has_development_key(),
        }
    }

    /// The key provider, if the keys come from one.
    pub fn provider(&self) -> Option<&KeyProvider> {
        match self {
            Self::Provider { provider, .. } => Some(provider),
            _ => None,
        }
    }

    /// The plain environment variables (not `_FILE`, not a provider) that hold key material:
    /// visible in `/proc/<pid>/environ`, `docker inspect` and crash reports.
    pub fn plain_env_vars(&self) -> &[&'static str] {
        match self {
            Self::Configured { plain_vars, .. } => plain_vars,
            _ => &[],
        }
    }

    /// The key ring: the configured keys plus the passphrase-derived one, or the provider's
    /// unwrapped keys, checked against the stored check values so a wrong key stops here.
    pub async fn load(self, pool: &PgPool) -> anyhow::Result<Arc<KeyRing>> {
        if let Self::Loaded(ring) = self {
            check_versions(pool, &ring).await?;
            return Ok(ring);
        }
        let ring = Arc::new(KeyRing::from_keys(self.resolve(pool).await?)?);
        check_versions(pool, &ring).await?;
        Ok(ring)
    }

    /// The master keys themselves (for `payvault keys wrap`), checked as [`Self::load`] checks
    /// them. A ring already loaded has none to give.
    pub async fn load_keys(self, pool: &PgPool) -> anyhow::Result<Vec<MasterKey>> {
        let keys = self.resolve(pool).await?;
        let copies = keys.iter().map(MasterKey::duplicate).collect();
        check_versions(pool, &KeyRing::from_keys(copies)?).await?;
        Ok(keys)
    }

    /// The keys, with the passphrase derived or the wrapped keys unwrapped.
    async fn resolve(self, pool: &PgPool) -> anyhow::Result<Vec<MasterKey>> {
        let (mut keys, passphrase) = match self {
            Self::Loaded(_) => anyhow::bail!("the master keys were loaded elsewhere"),
            Self::Provider {
                provider,
                audit_keys,
            } => {
                let mut keys = load_wrapped(pool, &provider).await?;
                keys.extend(audit_keys);
                return Ok(keys);
            }
            Self::Configured {
                keys, passphrase, ..
            } => (keys, passphrase),
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
        Ok(keys)
    }
}

/// What production refuses about where the keys come from, and development warns about:
/// a master key or passphrase in a plain environment variable (unless
/// `PAYVAULT_ALLOW_PLAIN_ENV_MASTER_KEY=true`, which makes it a warning), and a transit server
/// reached over plain HTTP off loopback (its token and the key material would cross in clear).
pub fn production_refusals(
    keys: &KeySource,
    environment: config::Environment,
) -> anyhow::Result<Vec<String>> {
    let production = environment == config::Environment::Production;
    let allowed = config::parsed(ALLOW_PLAIN_VAR, false)?;
    let mut refusals = Vec::new();
    for name in keys.plain_env_vars() {
        let reason = format!("{name} holds the master key material in a plain environment variable (readable in /proc/<pid>/environ, `docker inspect`, crash reports): use {name}_FILE or a key provider (PAYVAULT_KEY_PROVIDER), or set {ALLOW_PLAIN_VAR}=true to accept it");
        if production && !allowed {
            refusals.push(reason);
        } else {
            tracing::warn!("{name} holds the master key material in a plain environment variable: prefer {name}_FILE or a key provider (PAYVAULT_KEY_PROVIDER)");
        }
    }
    if let Some(crate::custody::KeyProvider::Transit(transit)) = keys.provider() {
        if transit.plain_http_off_loopback() {
            let reason = "PAYVAULT_TRANSIT_ADDR is plain http:// to another host: the transit token and the master keys would cross the network in clear; use https://";
            if production {
                refusals.push(reason.to_owned());
            } else {
                tracing::warn!("{reason}");
            }
        }
    }
    Ok(refusals)
}

/// Unwraps every row of `master_key_wraps` with `provider`. Fails, naming the provider, when
/// there is none, when a row belongs to another provider, or when one does not unwrap: never a
/// fallback to other keys.
async fn load_wrapped(pool: &PgPool, provider: &KeyProvider) -> anyhow::Result<Vec<MasterKey>> {
    let name = provider.name();
    let wraps = store::keys::find_key_wraps(pool)
        .await
        .context("cannot read the wrapped master keys (master_key_wraps)")?;
    if wraps.is_empty() {
        anyhow::bail!("PAYVAULT_KEY_PROVIDER={name}: no wrapped master key in the database: run `payvault keys wrap` (to wrap the current PAYVAULT_MASTER_KEY) or `payvault keys wrap --generate` (a new vault) first");
    }
    let mut keys = Vec::with_capacity(wraps.len());
    for wrap in wraps {
        if wrap.provider != name {
            anyhow::bail!(
                "PAYVAULT_KEY_PROVIDER={name}, but master key version {} is wrapped by the {} provider: set PAYVAULT_KEY_PROVIDER={} (or re-wrap it)",
                wrap.version,
                wrap.provider,
                wrap.provider
            );
        }
        let key = provider
            .unwrap(wrap.version, &wrap.wrapped)
            .await
            .with_context(|| {
                format!(
                    "PAYVAULT_KEY_PROVIDER={name}: cannot unwrap master key version {} with {}",
                    wrap.version,
                    provider.describe()
                )
            })?;
        keys.push(MasterKey::from_bytes(wrap.version, key));
    }
    Ok(keys)
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

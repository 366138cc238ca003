//! Key custody: where the master keys live when they do not come from the environment.
//!
//! With `PAYVAULT_KEY_PROVIDER=pkcs11` or `transit`, each master key version is stored in
//! `master_key_wraps`, encrypted ("wrapped") by a root key that never leaves its device: an AES
//! key inside a PKCS#11 token (an HSM, SoftHSM2), or a HashiCorp Vault / OpenBao transit key.
//! `serve` unwraps every version once at start into zeroizing memory, so requests never wait for
//! the device; `payvault keys wrap` stores keys wrapped (from the environment's keys, or fresh).
//!
//! Every wrap binds its version (AES-GCM associated data, or inside the transit plaintext): a
//! wrapped key copied onto another version's row does not unwrap. `env` (the default) is the
//! environment's `PAYVAULT_MASTER_KEY` / passphrase, handled by [`crate::app::KeySource`].
//!
//! `shares` (split custodians) wraps the same way under a root that no device holds: K of N
//! custodians' shares rebuild it, and an instance configured for it starts sealed until they
//! submit them (see [`crate::shares`] and [`shares`]).

pub mod pkcs11;
pub mod shares;
pub mod transit;

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::config::{self, ConfigError};

pub use pkcs11::{Pkcs11Config, Pkcs11Provider};
pub use shares::SharesProvider;
pub use transit::{TransitConfig, TransitProvider};

/// The setting that selects a provider.
pub const PROVIDER_VAR: &str = "PAYVAULT_KEY_PROVIDER";

/// What `PAYVAULT_KEY_PROVIDER` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// `PAYVAULT_MASTER_KEY` (or `_FILE`) and the passphrase: today's behaviour.
    Env,
    Pkcs11,
    Transit,
    /// Split custodians: K of N shares rebuild the root (`payvault keys split`, `payvault unseal`).
    Shares,
}

impl ProviderKind {
    /// `PAYVAULT_KEY_PROVIDER`, `env` when unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        parse_kind(config::var(PROVIDER_VAR)?.as_deref())
    }
}

/// `PAYVAULT_KEY_PROVIDER`'s value; unset is `env`.
fn parse_kind(text: Option<&str>) -> Result<ProviderKind, ConfigError> {
    match text {
        None | Some("env") => Ok(ProviderKind::Env),
        Some("pkcs11") => Ok(ProviderKind::Pkcs11),
        Some("transit") => Ok(ProviderKind::Transit),
        Some("shares") => Ok(ProviderKind::Shares),
        Some(_) => Err(ConfigError::Invalid {
            name: PROVIDER_VAR,
            reason: "must be env, pkcs11, transit or shares".into(),
        }),
    }
}

/// A root key that wraps and unwraps master keys. Cheap to clone (shared inside).
#[derive(Clone)]
pub enum KeyProvider {
    Pkcs11(Arc<Pkcs11Provider>),
    Transit(Arc<TransitProvider>),
    Shares(Arc<SharesProvider>),
}

impl std::fmt::Debug for KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyProvider({})", self.describe())
    }
}

impl KeyProvider {
    /// The provider `PAYVAULT_KEY_PROVIDER` selects, with its settings; `None` for `env`.
    /// Nothing is contacted yet: settings are only parsed.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Ok(match ProviderKind::from_env()? {
            ProviderKind::Env => None,
            ProviderKind::Pkcs11 => Some(Self::Pkcs11(Arc::new(Pkcs11Provider::new(
                Pkcs11Config::from_env()?,
            )))),
            ProviderKind::Transit => Some(Self::Transit(Arc::new(TransitProvider::new(
                TransitConfig::from_env()?,
            )?))),
            ProviderKind::Shares => Some(Self::Shares(Arc::new(SharesProvider::from_env()?))),
        })
    }

    /// The provider's name as `PAYVAULT_KEY_PROVIDER` spells it, and as `master_key_wraps.provider`
    /// records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pkcs11(_) => "pkcs11",
            Self::Transit(_) => "transit",
            Self::Shares(_) => "shares",
        }
    }

    /// Where the root key is, for logs and errors: never a PIN or token.
    pub fn describe(&self) -> String {
        match self {
            Self::Pkcs11(p) => p.describe(),
            Self::Transit(p) => p.describe(),
            Self::Shares(p) => p.describe(),
        }
    }

    /// Encrypts master key `version` under the root key, binding the version.
    pub async fn wrap(&self, version: i32, key: &[u8; 32]) -> Result<Vec<u8>, CustodyError> {
        match self {
            Self::Pkcs11(p) => p.clone().wrap(version, key).await,
            Self::Transit(p) => p.wrap(version, key).await,
            Self::Shares(p) => p.wrap(version, key),
        }
    }

    /// Decrypts what [`Self::wrap`] made for `version`; a wrap of another version, or altered,
    /// is refused.
    pub async fn unwrap(
        &self,
        version: i32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CustodyError> {
        match self {
            Self::Pkcs11(p) => p.clone().unwrap(version, wrapped).await,
            Self::Transit(p) => p.unwrap(version, wrapped).await,
            Self::Shares(p) => p.unwrap(version, wrapped),
        }
    }

    /// Whether the root key is reachable and usable now (for `/readyz`).
    pub async fn check(&self) -> Result<(), CustodyError> {
        match self {
            Self::Pkcs11(p) => p.clone().check().await,
            Self::Transit(p) => p.check().await,
            Self::Shares(p) => p.check(),
        }
    }
}

/// Why a provider failed. Names the provider, the setting to look at and the reason; never a
/// key, PIN or token.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// The device or server cannot be reached (or its library loaded).
    #[error("key provider {provider}: cannot reach it ({setting}): {reason}")]
    Unreachable {
        provider: &'static str,
        setting: &'static str,
        reason: String,
    },
    /// It answered, but refused our credentials (PIN, token).
    #[error("key provider {provider}: access refused ({setting}): {reason}")]
    Refused {
        provider: &'static str,
        setting: &'static str,
        reason: String,
    },
    /// The root key (or token) named by the settings does not exist.
    #[error("key provider {provider}: {reason} ({setting})")]
    NotFound {
        provider: &'static str,
        setting: &'static str,
        reason: String,
    },
    /// A wrapped master key does not unwrap: altered, another version's, or another root key's.
    #[error("key provider {provider}: the wrapped master key version {version} does not unwrap under {root}: it was altered, belongs to another version, or was wrapped by another root key")]
    BadWrap {
        provider: &'static str,
        version: i32,
        root: String,
    },
    /// Anything else the provider reported.
    #[error("key provider {provider}: {reason}")]
    Failed {
        provider: &'static str,
        reason: String,
    },
}

/// The label every wrap binds, with the version: `payvault/master-key-wrap/v1 || version (BE)`.
pub(crate) fn binding(version: i32) -> [u8; 31] {
    const LABEL: &[u8; 27] = b"payvault/master-key-wrap/v1";
    let mut out = [0u8; 31];
    out[..27].copy_from_slice(LABEL);
    out[27..].copy_from_slice(&version.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_setting_is_parsed_strictly() {
        // `from_env` reads the process environment; the parse itself is what matters here.
        for (text, kind) in [("env", ProviderKind::Env), ("pkcs11", ProviderKind::Pkcs11)] {
            assert_eq!(parse_kind(Some(text)).unwrap(), kind);
        }
        assert_eq!(parse_kind(None).unwrap(), ProviderKind::Env);
        assert_eq!(parse_kind(Some("transit")).unwrap(), ProviderKind::Transit);
        assert_eq!(parse_kind(Some("shares")).unwrap(), ProviderKind::Shares);
        let err = parse_kind(Some("hsm")).unwrap_err().to_string();
        assert!(
            err.contains("PAYVAULT_KEY_PROVIDER") && err.contains("env, pkcs11, transit or shares"),
            "{err}"
        );
    }

    #[test]
    fn the_binding_differs_per_version() {
        assert_ne!(binding(1), binding(2));
        assert!(binding(7).starts_with(b"payvault/master-key-wrap/v1"));
        assert_eq!(&binding(7)[27..], &7i32.to_be_bytes());
    }
}

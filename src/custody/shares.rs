//! The `shares` key provider: the root that wraps the master keys is not stored anywhere; it is
//! rebuilt from K of the N custodians' shares (`payvault keys split`, see [`crate::shares`]).
//! A `serve` configured for it starts sealed and gets the root from `payvault unseal`; a CLI
//! command that needs the master keys reads K shares on its standard input.

use std::sync::OnceLock;

use zeroize::Zeroizing;

use super::CustodyError;
use crate::config::{self, ConfigError};

/// The setting that names the share set (default: the newest).
pub const SET_VAR: &str = "PAYVAULT_SHARE_SET";

pub struct SharesProvider {
    set_id: Option<String>,
    root: OnceLock<Zeroizing<[u8; 32]>>,
}

impl SharesProvider {
    /// `PAYVAULT_SHARE_SET`, if set.
    pub fn from_env() -> Result<Self, ConfigError> {
        let set_id = config::var(SET_VAR)?;
        if let Some(id) = &set_id {
            if !crate::shares::text::is_set_id(id) {
                return Err(ConfigError::Invalid {
                    name: SET_VAR,
                    reason:
                        "must be a share set id as `payvault keys split` prints it (hex digits)"
                            .into(),
                });
            }
        }
        Ok(Self::new(set_id))
    }

    pub fn new(set_id: Option<String>) -> Self {
        Self {
            set_id,
            root: OnceLock::new(),
        }
    }

    /// The configured set, or `None` for the newest.
    pub fn set_id(&self) -> Option<&str> {
        self.set_id.as_deref()
    }

    pub fn describe(&self) -> String {
        match &self.set_id {
            Some(id) => format!("the root secret of share set {id}"),
            None => "the root secret of the newest share set".into(),
        }
    }

    /// Hands over the rebuilt root (checked against its set's check value by the caller);
    /// `false` if one was already set.
    pub fn set_root(&self, root: Zeroizing<[u8; 32]>) -> bool {
        self.root.set(root).is_ok()
    }

    pub fn is_unsealed(&self) -> bool {
        self.root.get().is_some()
    }

    fn root(&self) -> Result<&[u8; 32], CustodyError> {
        self.root.get().map(|r| &**r).ok_or(CustodyError::Failed {
            provider: "shares",
            reason: "sealed: the root secret is rebuilt only from the custodians' shares (`payvault unseal`)".into(),
        })
    }

    pub fn wrap(&self, version: i32, key: &[u8; 32]) -> Result<Vec<u8>, CustodyError> {
        Ok(crate::shares::wrap(self.root()?, version, key))
    }

    pub fn unwrap(
        &self,
        version: i32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CustodyError> {
        crate::shares::unwrap(self.root()?, version, wrapped).map_err(|_| CustodyError::BadWrap {
            provider: "shares",
            version,
            root: self.describe(),
        })
    }

    /// Ready once unsealed.
    pub fn check(&self) -> Result<(), CustodyError> {
        self.root().map(|_| ())
    }
}

//! Credential kinds, scopes and secret generation.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::domain::SecretText;

/// Prefix of every secret payvault issues, so secret scanners can recognise a leaked one.
pub const SECRET_PREFIX: &str = "pvs_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A Twilio Generic Pay Connector: HTTP Basic on the connector endpoint.
    Connector,
    /// A merchant backend calling the `/v1` API.
    Api,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Connector => "connector",
            CredentialKind::Api => "api",
        }
    }

    fn username_prefix(self) -> &'static str {
        match self {
            CredentialKind::Connector => "pvc_",
            CredentialKind::Api => "pvk_",
        }
    }

    /// Scopes a credential of this kind gets when none are given.
    pub fn default_scopes(self) -> Vec<Scope> {
        match self {
            CredentialKind::Connector => vec![Scope::Connector],
            CredentialKind::Api => Vec::new(),
        }
    }
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connector" => Ok(Self::Connector),
            "api" => Ok(Self::Api),
            other => Err(format!(
                "unknown credential kind `{other}` (expected connector or api)"
            )),
        }
    }
}

/// What a credential may do. Every route names the one scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Call the Twilio connector endpoint (`POST /`, `/tokenize`, `/charge`).
    Connector,
    /// Read token metadata.
    TokensRead,
    /// Charge stored tokens.
    TokensCharge,
    /// Delete tokens.
    TokensDelete,
    /// Read the audit log (the caller's tenant's events).
    AuditRead,
    /// With `audit:read`, read every tenant's events: an operator-level scope.
    AuditAll,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Connector,
        Scope::TokensRead,
        Scope::TokensCharge,
        Scope::TokensDelete,
        Scope::AuditRead,
        Scope::AuditAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Connector => "connector",
            Scope::TokensRead => "tokens:read",
            Scope::TokensCharge => "tokens:charge",
            Scope::TokensDelete => "tokens:delete",
            Scope::AuditRead => "audit:read",
            Scope::AuditAll => "audit:all",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown scope `{0}` (known: connector, tokens:read, tokens:charge, tokens:delete, audit:read, audit:all)"
)]
pub struct ScopeParseError(pub String);

impl FromStr for Scope {
    type Err = ScopeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| ScopeParseError(s.to_owned()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: Uuid,
    /// The credential's tenant: every token operation is confined to it.
    pub tenant_id: Uuid,
    pub username: String,
    pub name: String,
    pub kind: CredentialKind,
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A freshly generated credential. The secret exists only here, to be shown once.
#[derive(Debug)]
pub struct NewCredential {
    pub id: Uuid,
    pub username: String,
    pub secret: SecretText,
    pub secret_hash: String,
}

impl NewCredential {
    /// Generates a username (`pvc_…` or `pvk_…`, 80 random bits) and a secret (`pvs_…`, 256
    /// random bits), and hashes the secret with Argon2id. CPU-heavy: call off the async runtime.
    pub fn generate(kind: CredentialKind) -> Self {
        let mut id_bytes = [0u8; 10];
        OsRng.fill_bytes(&mut id_bytes);
        let mut username = String::from(kind.username_prefix());
        for b in id_bytes {
            username.push_str(&format!("{b:02x}"));
        }

        let mut secret_bytes = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret_bytes.as_mut());
        let mut secret = String::with_capacity(SECRET_PREFIX.len() + 43);
        secret.push_str(SECRET_PREFIX);
        URL_SAFE_NO_PAD.encode_string(secret_bytes.as_ref(), &mut secret);
        let secret = SecretText::new(secret);
        let secret_hash = hash_secret(&secret);
        Self {
            id: Uuid::new_v4(),
            username,
            secret,
            secret_hash,
        }
    }
}

/// Argon2id PHC string of `secret` with a random salt and the crate's default (OWASP) cost.
pub fn hash_secret(secret: &SecretText) -> String {
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(secret.expose().as_bytes(), &salt) {
        Ok(hash) => hash.to_string(),
        // Only fails for out-of-range parameters, and the defaults are in range.
        Err(e) => unreachable!("argon2 with default parameters failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("tokens:write".parse::<Scope>().is_err());
    }

    #[test]
    fn generated_credentials_have_prefixes_and_hash() {
        let c = NewCredential::generate(CredentialKind::Connector);
        assert!(c.username.starts_with("pvc_") && c.username.len() == 24);
        assert!(c.secret.expose().starts_with("pvs_"));
        assert!(c.secret_hash.starts_with("$argon2id$"));
        assert!(!c.secret_hash.contains(c.secret.expose()));
        assert!(NewCredential::generate(CredentialKind::Api)
            .username
            .starts_with("pvk_"));
    }
}

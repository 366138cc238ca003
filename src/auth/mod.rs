//! Who may call payvault: credentials, scopes, and verification of presented secrets.
//!
//! Secrets are stored only as Argon2id hashes (PCI DSS 8.3.2). Verifying one costs tens of
//! milliseconds of CPU, so it runs on the blocking pool, a bounded number at a time, and a
//! successful verification is cached in memory (keyed by a per-process HMAC of the secret, never
//! the secret itself) so steady-state requests never pay for Argon2.

pub mod admin;
mod authenticator;
mod credential;
pub mod failures;
pub mod tenants;
pub mod throttle;
mod verifier;

pub use authenticator::{AuthError, Authenticator};
pub use credential::{
    hash_secret, CredentialKind, NewCredential, Principal, Scope, ScopeParseError,
};
pub use failures::{Failure, FailureAudit};
pub use throttle::{source_key, Throttle};

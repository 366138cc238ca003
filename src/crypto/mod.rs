//! Keys and cryptography: the master key ring, envelope encryption of vault entries, keyed
//! fingerprints and request MACs.
//!
//! Stored formats (documented here because they outlive any one release):
//! - master key: `pvmk.<version>.<base64url(32 random bytes)>`; a key ring is one or more of
//!   these separated by commas, the highest version being current for new entries.
//! - audit-only key: `pvaudit.<version>.<base64url(HKDF audit-seal key of that version)>`, what
//!   `payvault keys retire` leaves of a retired version: it verifies old audit seals, opens nothing.
//! - `vault_entries.wrapped_key`: `nonce(12) || AES-256-GCM(KEK_v, data key) || tag(16)` with
//!   associated data, by `vault_entries.aad_version`:
//!   - 3: `payvault/dek/v3|<token>|<version>|<kind>|<exp_month>|<exp_year>|<tenant uuid>`
//!     (hyphenated lower-case), so an entry moved into another tenant's row fails to open;
//!   - 2 (entries sealed before tenants):
//!     `payvault/dek/v2|<token>|<version>|<kind>|<exp_month>|<exp_year>` (`-` for an absent
//!     month or year), so the clear columns a stored-token charge uses are authenticated;
//!   - 1 (entries sealed before v2): `payvault/dek/v1|<token>|<version>`. `keys rotate`
//!     re-seals v1 and v2 entries as v3. Both bind no tenant, and every entry sealed before
//!     tenants existed belongs to the default tenant: they open only in its rows.
//! - `vault_entries.fingerprint`: HMAC-SHA256 under the fingerprint key for the default tenant,
//!   and under `HKDF-Expand(fingerprint key, "payvault/fingerprint/tenant/v1|<tenant uuid>")`
//!   for any other, so the same card has unrelated fingerprints in two tenants.
//! - `vault_entries.ciphertext`: `nonce(12) || AES-256-GCM(data key, payload) || tag(16)` with
//!   associated data `payvault/entry/v1|<token>|<version>`.
//!
//! The associated data binds each ciphertext to its row and key version: swapping ciphertexts
//! between rows, or relabelling the version, makes decryption fail.

mod envelope;
mod keyring;
pub mod passphrase;
mod state;

pub use envelope::{EntryBinding, SealedEntry, AAD_V1, AAD_V2, AAD_V3};
pub use keyring::{HmacSha256, KeyRing, KeyRingError, MasterKey};
pub use state::{KeyState, Sealed};

/// A decryption or key lookup failed. Deliberately carries no detail an attacker could use.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key version {0} is not loaded")]
    UnknownKeyVersion(i32),
    #[error("ciphertext failed authentication (tampered, misplaced or wrong key)")]
    Authentication,
    #[error("stored ciphertext is malformed")]
    Malformed,
}

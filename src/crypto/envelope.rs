//! Envelope encryption of vault entries: a fresh AES-256-GCM data key per entry, wrapped by the
//! current master key version. See the module docs of [`crate::crypto`] for the stored format.
//!
//! The clear columns an entry is used with (its kind and the card's expiry, which a stored-token
//! charge sends to the processor) are bound into the wrapped key's associated data (AAD format
//! v2): editing one in the database makes the entry fail to open. They are bound to the wrapped
//! key rather than to the payload so that changing them legitimately (a deduplicated tokenize
//! of a reissued card) re-wraps 32 bytes without ever decrypting the card.
//!
//! Not bound: `expires_at` (changed by `PATCH /v1/tokens/{token}`, enforced in SQL) and
//! `network_transaction_id` (set after the first approved charge). Both change after sealing
//! and neither changes which card is charged.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{CryptoError, KeyRing};
use crate::domain::DEFAULT_TENANT;

const NONCE_LEN: usize = 12;

/// The associated-data format of entries sealed before v2: token and key version only.
pub const AAD_V1: i16 = 1;
/// The wrapped key's associated data also binds the entry's kind and expiry.
pub const AAD_V2: i16 = 2;
/// The wrapped key's associated data binds the whole [`EntryBinding`], its tenant included:
/// the format of new entries.
pub const AAD_V3: i16 = 3;

/// What the database stores for one entry. None of it is readable without the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEntry {
    pub key_version: i32,
    /// [`AAD_V1`], [`AAD_V2`] or [`AAD_V3`] (`vault_entries.aad_version`). An entry relabelled
    /// with an older format fails to open: its associated data names its own.
    pub aad_version: i16,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The clear columns of a vault entry that its use depends on, authenticated with it (v2: kind
/// and expiry; v3: the tenant too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryBinding<'a> {
    /// The tenant whose row holds the entry (`vault_entries.tenant_id`).
    pub tenant: Uuid,
    /// `card` or `bank_account`.
    pub kind: &'a str,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
}

fn aad(purpose: &str, token: &str, version: i32) -> Vec<u8> {
    format!("payvault/{purpose}/v1|{token}|{version}").into_bytes()
}

/// The wrapped key's associated data in format `aad_version`.
fn dek_aad(aad_version: i16, token: &str, version: i32, b: &EntryBinding<'_>) -> Vec<u8> {
    if aad_version == AAD_V1 {
        return aad("dek", token, version);
    }
    let num = |n: Option<i16>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let (kind, month, year) = (b.kind, num(b.exp_month), num(b.exp_year));
    if aad_version == AAD_V2 {
        return format!("payvault/dek/v2|{token}|{version}|{kind}|{month}|{year}").into_bytes();
    }
    let tenant = b.tenant.hyphenated();
    format!("payvault/dek/v3|{token}|{version}|{kind}|{month}|{year}|{tenant}").into_bytes()
}

fn encrypt(cipher: &Aes256Gcm, msg: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(NONCE_LEN + msg.len() + 16);
    out.extend_from_slice(&nonce);
    // AES-GCM encryption only fails for messages over 64 GiB.
    match cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg, aad }) {
        Ok(ct) => out.extend_from_slice(&ct),
        Err(_) => unreachable!("AES-GCM encryption of a small message cannot fail"),
    }
    out
}

fn decrypt(
    cipher: &Aes256Gcm,
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (nonce, msg) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Authentication)
}

impl KeyRing {
    /// Encrypts `plaintext` for the entry `token` under a fresh data key, bound to `binding`.
    pub fn seal(&self, token: &str, binding: &EntryBinding<'_>, plaintext: &[u8]) -> SealedEntry {
        let version = self.current_version();
        let mut data_key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(data_key.as_mut());
        let cipher = Aes256Gcm::new(data_key.as_ref().into());
        SealedEntry {
            key_version: version,
            aad_version: AAD_V3,
            wrapped_key: encrypt(
                &self.current().kek,
                data_key.as_ref(),
                &dek_aad(AAD_V3, token, version, binding),
            ),
            ciphertext: encrypt(&cipher, plaintext, &aad("entry", token, version)),
        }
    }

    /// Decrypts the entry `token`. Fails if any byte, the token, the key version or (for a v2
    /// or v3 entry) any bound column differs from what was sealed. An entry sealed before v3
    /// binds no tenant, and only the default tenant can hold one: in any other tenant's row it
    /// fails to open.
    pub fn open(
        &self,
        token: &str,
        binding: &EntryBinding<'_>,
        entry: &SealedEntry,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let data_key = self.unwrap_data_key(token, binding, entry)?;
        let cipher = Aes256Gcm::new(data_key.as_slice().into());
        let version = entry.key_version;
        decrypt(&cipher, &entry.ciphertext, &aad("entry", token, version))
    }

    /// The entry re-bound to `new` columns (v3), its payload untouched: the data key is
    /// unwrapped under the `old` binding and wrapped again, under the same master key version.
    /// Fails, changing nothing, if the entry does not authenticate under `old`.
    pub fn rebind(
        &self,
        token: &str,
        old: &EntryBinding<'_>,
        new: &EntryBinding<'_>,
        entry: &SealedEntry,
    ) -> Result<SealedEntry, CryptoError> {
        let data_key = self.unwrap_data_key(token, old, entry)?;
        let version = entry.key_version;
        let kek = &self.get(version)?.kek;
        Ok(SealedEntry {
            key_version: version,
            aad_version: AAD_V3,
            wrapped_key: encrypt(kek, &data_key, &dek_aad(AAD_V3, token, version, new)),
            ciphertext: entry.ciphertext.clone(),
        })
    }

    fn unwrap_data_key(
        &self,
        token: &str,
        binding: &EntryBinding<'_>,
        entry: &SealedEntry,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if !matches!(entry.aad_version, AAD_V1 | AAD_V2 | AAD_V3) {
            return Err(CryptoError::Malformed);
        }
        // Pre-tenant entries were all written into the default tenant: one found in another
        // tenant's row was moved there.
        if entry.aad_version < AAD_V3 && binding.tenant != DEFAULT_TENANT {
            return Err(CryptoError::Authentication);
        }
        let version = entry.key_version;
        let kek = &self.get(version)?.kek;
        let aad = dek_aad(entry.aad_version, token, version, binding);
        let data_key = decrypt(kek, &entry.wrapped_key, &aad)?;
        if data_key.len() != 32 {
            return Err(CryptoError::Malformed);
        }
        Ok(data_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    const CARD: EntryBinding<'static> = EntryBinding {
        tenant: DEFAULT_TENANT,
        kind: "card",
        exp_month: Some(8),
        exp_year: Some(2030),
    };

    fn ring(versions: &[i32]) -> KeyRing {
        KeyRing::from_keys(versions.iter().map(|v| MasterKey::generate(*v)).collect()).unwrap()
    }

    #[test]
    fn round_trip() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", &CARD, b"4111111111111111");
        assert_eq!(sealed.key_version, 1);
        assert!(!sealed
            .ciphertext
            .windows(16)
            .any(|w| w == b"4111111111111111"));
        assert_eq!(
            ring.open("tok_a", &CARD, &sealed).unwrap().as_slice(),
            b"4111111111111111"
        );
    }

    #[test]
    fn any_flipped_byte_fails() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", &CARD, b"4111111111111111");
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert!(
                matches!(
                    ring.open("tok_a", &CARD, &bad),
                    Err(CryptoError::Authentication)
                ),
                "byte {i}"
            );
        }
        for i in 0..sealed.wrapped_key.len() {
            let mut bad = sealed.clone();
            bad.wrapped_key[i] ^= 0x80;
            assert!(
                matches!(
                    ring.open("tok_a", &CARD, &bad),
                    Err(CryptoError::Authentication)
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn ciphertext_is_bound_to_its_token() {
        let ring = ring(&[1]);
        let a = ring.seal("tok_a", &CARD, b"4111111111111111");
        let b = ring.seal("tok_b", &CARD, b"5555555555554444");
        assert!(ring.open("tok_b", &CARD, &a).is_err());
        // Swapping only the payload (keeping b's wrapped key) fails too.
        let swapped = SealedEntry {
            ciphertext: a.ciphertext.clone(),
            ..b.clone()
        };
        assert!(ring.open("tok_b", &CARD, &swapped).is_err());
    }

    #[test]
    fn wrong_or_unknown_key_version_fails() {
        let ring = ring(&[1, 2]);
        let sealed = ring.seal("tok_a", &CARD, b"secret");
        assert_eq!(sealed.key_version, 2);
        let relabelled = SealedEntry {
            key_version: 1,
            ..sealed.clone()
        };
        assert!(matches!(
            ring.open("tok_a", &CARD, &relabelled),
            Err(CryptoError::Authentication)
        ));
        let unknown = SealedEntry {
            key_version: 7,
            ..sealed
        };
        assert!(matches!(
            ring.open("tok_a", &CARD, &unknown),
            Err(CryptoError::UnknownKeyVersion(7))
        ));
    }

    #[test]
    fn truncated_ciphertext_is_malformed() {
        let ring = ring(&[1]);
        let mut sealed = ring.seal("tok_a", &CARD, b"secret");
        sealed.ciphertext.truncate(10);
        assert!(matches!(
            ring.open("tok_a", &CARD, &sealed),
            Err(CryptoError::Malformed)
        ));
    }

    /// Seals as payvault did before AAD v2 (token and key version only).
    fn seal_v1(ring: &KeyRing, token: &str, plaintext: &[u8]) -> SealedEntry {
        let version = ring.current_version();
        let data_key = [7u8; 32];
        let cipher = Aes256Gcm::new((&data_key).into());
        SealedEntry {
            key_version: version,
            aad_version: AAD_V1,
            wrapped_key: encrypt(
                &ring.current().kek,
                &data_key,
                format!("payvault/dek/v1|{token}|{version}").as_bytes(),
            ),
            ciphertext: encrypt(
                &cipher,
                plaintext,
                format!("payvault/entry/v1|{token}|{version}").as_bytes(),
            ),
        }
    }

    #[test]
    fn kind_and_expiry_are_bound_to_the_entry() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", &CARD, b"4111111111111111");
        assert_eq!(sealed.aad_version, AAD_V3);
        for edited in [
            EntryBinding {
                exp_year: Some(2031),
                ..CARD
            },
            EntryBinding {
                exp_month: Some(9),
                ..CARD
            },
            EntryBinding {
                exp_month: None,
                ..CARD
            },
            EntryBinding {
                kind: "bank_account",
                exp_month: None,
                exp_year: None,
                ..CARD
            },
            EntryBinding {
                tenant: Uuid::from_u128(2),
                ..CARD
            },
        ] {
            assert!(
                matches!(
                    ring.open("tok_a", &edited, &sealed),
                    Err(CryptoError::Authentication)
                ),
                "{edited:?}"
            );
        }
        // Relabelled as a v1 or v2 entry (whose AAD binds fewer columns), it fails too.
        for older in [AAD_V1, AAD_V2] {
            let downgraded = SealedEntry {
                aad_version: older,
                ..sealed.clone()
            };
            assert!(ring.open("tok_a", &CARD, &downgraded).is_err());
        }
        let unknown = SealedEntry {
            aad_version: 4,
            ..sealed
        };
        assert!(matches!(
            ring.open("tok_a", &CARD, &unknown),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn entries_sealed_in_the_v1_format_still_open() {
        let ring = ring(&[1]);
        let old = seal_v1(&ring, "tok_a", b"4111111111111111");
        assert_eq!(
            ring.open("tok_a", &CARD, &old).unwrap().as_slice(),
            b"4111111111111111"
        );
        assert!(ring.open("tok_b", &CARD, &old).is_err());
        // Re-binding upgrades it to v3, after which its columns are bound.
        let upgraded = ring.rebind("tok_a", &CARD, &CARD, &old).unwrap();
        assert_eq!(upgraded.aad_version, AAD_V3);
        assert_eq!(
            ring.open("tok_a", &CARD, &upgraded).unwrap().as_slice(),
            b"4111111111111111"
        );
        let edited = EntryBinding {
            exp_year: Some(2040),
            ..CARD
        };
        assert!(ring.open("tok_a", &edited, &upgraded).is_err());
    }

    #[test]
    fn rebinding_changes_the_bound_columns_and_nothing_else() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", &CARD, b"4111111111111111");
        let reissued = EntryBinding {
            exp_year: Some(2034),
            ..CARD
        };
        let rebound = ring.rebind("tok_a", &CARD, &reissued, &sealed).unwrap();
        assert_eq!(rebound.ciphertext, sealed.ciphertext);
        assert_eq!(
            ring.open("tok_a", &reissued, &rebound).unwrap().as_slice(),
            b"4111111111111111"
        );
        assert!(ring.open("tok_a", &CARD, &rebound).is_err());
        // Re-binding needs the entry to authenticate under the columns it claims to have.
        assert!(ring.rebind("tok_a", &reissued, &CARD, &sealed).is_err());
    }

    #[test]
    fn the_tenant_is_bound_and_older_formats_open_only_in_the_default_tenant() {
        let ring = ring(&[1]);
        let other = EntryBinding {
            tenant: Uuid::from_u128(0xabc),
            ..CARD
        };
        let sealed = ring.seal("tok_a", &other, b"4111111111111111");
        assert!(ring.open("tok_a", &other, &sealed).is_ok());
        assert!(matches!(
            ring.open("tok_a", &CARD, &sealed),
            Err(CryptoError::Authentication)
        ));
        // A v1 entry (no tenant in its AAD) opens in the default tenant's row only.
        let old = seal_v1(&ring, "tok_a", b"4111111111111111");
        assert!(ring.open("tok_a", &CARD, &old).is_ok());
        assert!(matches!(
            ring.open("tok_a", &other, &old),
            Err(CryptoError::Authentication)
        ));
        assert!(ring.rebind("tok_a", &other, &other, &old).is_err());
    }
}

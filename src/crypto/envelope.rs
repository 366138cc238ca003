//! Envelope encryption of vault entries: a fresh AES-256-GCM data key per entry, wrapped by the
//! current master key version. See the module docs of [`crate::crypto`] for the stored format.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use zeroize::Zeroizing;

use super::{CryptoError, KeyRing};

const NONCE_LEN: usize = 12;

/// What the database stores for one entry. None of it is readable without the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEntry {
    pub key_version: i32,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

fn aad(purpose: &str, token: &str, version: i32) -> Vec<u8> {
    format!("payvault/{purpose}/v1|{token}|{version}").into_bytes()
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
    /// Encrypts `plaintext` for the entry `token` under a fresh data key.
    pub fn seal(&self, token: &str, plaintext: &[u8]) -> SealedEntry {
        let version = self.current_version();
        let mut data_key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(data_key.as_mut());
        let cipher = Aes256Gcm::new(data_key.as_ref().into());
        SealedEntry {
            key_version: version,
            wrapped_key: encrypt(
                &self.current().kek,
                data_key.as_ref(),
                &aad("dek", token, version),
            ),
            ciphertext: encrypt(&cipher, plaintext, &aad("entry", token, version)),
        }
    }

    /// Decrypts the entry `token`. Fails if any byte, the token or the key version differs from
    /// what was sealed.
    pub fn open(
        &self,
        token: &str,
        entry: &SealedEntry,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let version = entry.key_version;
        let kek = &self.get(version)?.kek;
        let data_key = decrypt(kek, &entry.wrapped_key, &aad("dek", token, version))?;
        if data_key.len() != 32 {
            return Err(CryptoError::Malformed);
        }
        let cipher = Aes256Gcm::new(data_key.as_slice().into());
        decrypt(&cipher, &entry.ciphertext, &aad("entry", token, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn ring(versions: &[i32]) -> KeyRing {
        KeyRing::from_keys(versions.iter().map(|v| MasterKey::generate(*v)).collect()).unwrap()
    }

    #[test]
    fn round_trip() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", b"4111111111111111");
        assert_eq!(sealed.key_version, 1);
        assert!(!sealed
            .ciphertext
            .windows(16)
            .any(|w| w == b"4111111111111111"));
        assert_eq!(
            ring.open("tok_a", &sealed).unwrap().as_slice(),
            b"4111111111111111"
        );
    }

    #[test]
    fn any_flipped_byte_fails() {
        let ring = ring(&[1]);
        let sealed = ring.seal("tok_a", b"4111111111111111");
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert!(
                matches!(ring.open("tok_a", &bad), Err(CryptoError::Authentication)),
                "byte {i}"
            );
        }
        for i in 0..sealed.wrapped_key.len() {
            let mut bad = sealed.clone();
            bad.wrapped_key[i] ^= 0x80;
            assert!(
                matches!(ring.open("tok_a", &bad), Err(CryptoError::Authentication)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn ciphertext_is_bound_to_its_token() {
        let ring = ring(&[1]);
        let a = ring.seal("tok_a", b"4111111111111111");
        let b = ring.seal("tok_b", b"5555555555554444");
        assert!(ring.open("tok_b", &a).is_err());
        // Swapping only the payload (keeping b's wrapped key) fails too.
        let swapped = SealedEntry {
            ciphertext: a.ciphertext.clone(),
            ..b.clone()
        };
        assert!(ring.open("tok_b", &swapped).is_err());
    }

    #[test]
    fn wrong_or_unknown_key_version_fails() {
        let ring = ring(&[1, 2]);
        let sealed = ring.seal("tok_a", b"secret");
        assert_eq!(sealed.key_version, 2);
        let relabelled = SealedEntry {
            key_version: 1,
            ..sealed.clone()
        };
        assert!(matches!(
            ring.open("tok_a", &relabelled),
            Err(CryptoError::Authentication)
        ));
        let unknown = SealedEntry {
            key_version: 7,
            ..sealed
        };
        assert!(matches!(
            ring.open("tok_a", &unknown),
            Err(CryptoError::UnknownKeyVersion(7))
        ));
    }

    #[test]
    fn truncated_ciphertext_is_malformed() {
        let ring = ring(&[1]);
        let mut sealed = ring.seal("tok_a", b"secret");
        sealed.ciphertext.truncate(10);
        assert!(matches!(
            ring.open("tok_a", &sealed),
            Err(CryptoError::Malformed)
        ));
    }
}

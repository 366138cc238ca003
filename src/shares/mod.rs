//! Split custodians: a 32-byte root secret split into N shares with Shamir's scheme over
//! GF(256) (`vsss-rs`), any K of which rebuild it. The root wraps the master keys (AES-256-GCM,
//! the version bound into the associated data), so an instance configured for shares starts
//! sealed and opens only once K custodians have each submitted a share (see [`unseal`]).
//!
//! What the database holds of a split (`key_share_sets`) is public: the threshold and count,
//! the root's check value (an HMAC under the root, which proves a rebuilt root right), and each
//! share's verifier (a SHA-256 commitment, which lets a wrong share be refused when submitted).
//! Neither a share nor the root ever reaches the database or a log.

pub mod text;
pub mod unseal;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hmac::Mac;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, HmacSha256};
pub use text::{Share, ShareTextError};

/// The most shares a split can have (GF(256) has 255 non-zero points).
pub const MAX_SHARES: u8 = 255;

/// A split as the database records it: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSet {
    pub set_id: String,
    pub threshold: u8,
    pub shares: u8,
    /// HMAC-SHA256 of the set id under the root.
    pub root_check: [u8; 32],
    /// Share `i`'s verifier at position `i - 1`.
    pub verifiers: Vec<[u8; 32]>,
}

/// A fresh split: the set to record, the root (to wrap master keys with, then drop), and the
/// shares, to print once each.
pub struct Split {
    pub set: ShareSet,
    pub root: Zeroizing<[u8; 32]>,
    pub shares: Vec<Share>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("--threshold must be at least 2 (one share alone would open the vault)")]
    ThresholdTooLow,
    #[error("--threshold ({threshold}) cannot exceed --shares ({shares})")]
    ThresholdAboveShares { threshold: u8, shares: u8 },
    #[error("the secret could not be split")]
    Library,
}

/// Why a submitted share was refused. No variant quotes a share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareRejection {
    #[error(transparent)]
    Text(#[from] ShareTextError),
    #[error("the share belongs to share set {submitted}, but this instance is configured for set {expected}")]
    WrongSet { submitted: String, expected: String },
    #[error("share {index} is not a share of set {set_id}: it does not match the set's recorded verifier")]
    NotVerified { set_id: String, index: u8 },
    #[error("the shares submitted do not rebuild the root secret recorded for set {0}; every pending share was discarded, submit again")]
    WrongRoot(String),
}

impl ShareRejection {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Text(_) => "invalid_share",
            Self::WrongSet { .. } => "wrong_share_set",
            Self::NotVerified { .. } => "share_not_verified",
            Self::WrongRoot(_) => "unseal_failed",
        }
    }
}

/// Makes a random root and splits it into `count` shares, `threshold` of which rebuild it.
pub fn split(threshold: u8, count: u8) -> Result<Split, SplitError> {
    if threshold < 2 {
        return Err(SplitError::ThresholdTooLow);
    }
    if threshold > count {
        return Err(SplitError::ThresholdAboveShares {
            threshold,
            shares: count,
        });
    }
    let mut root = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(root.as_mut());
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    let set_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    // Each raw share is `[x, y_1 .. y_32]`; x runs 1..=count.
    let raw = Zeroizing::new(
        vsss_rs::Gf256::split_array(
            usize::from(threshold),
            usize::from(count),
            &root[..],
            getrandom::rand_core::UnwrapErr(getrandom::SysRng),
        )
        .map_err(|_| SplitError::Library)?,
    );
    let mut shares = Vec::with_capacity(raw.len());
    for share in raw.iter() {
        let (Some(&index), Ok(y)) = (share.first(), <[u8; 32]>::try_from(&share[1..])) else {
            return Err(SplitError::Library);
        };
        shares.push(Share {
            set_id: set_id.clone(),
            index,
            bytes: Zeroizing::new(y),
        });
    }
    let set = ShareSet {
        root_check: root_check(&set_id, &root),
        verifiers: shares.iter().map(verifier).collect(),
        set_id,
        threshold,
        shares: count,
    };
    Ok(Split { set, root, shares })
}

impl ShareSet {
    /// Checks that `share` is one of this set's, before it is kept.
    pub fn verify(&self, share: &Share) -> Result<(), ShareRejection> {
        if share.set_id != self.set_id {
            return Err(ShareRejection::WrongSet {
                submitted: share.set_id.clone(),
                expected: self.set_id.clone(),
            });
        }
        let not_verified = || ShareRejection::NotVerified {
            set_id: self.set_id.clone(),
            index: share.index,
        };
        let expected = self
            .verifiers
            .get(usize::from(share.index) - 1)
            .ok_or_else(not_verified)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &verifier(share)[..],
            &expected[..],
        )) {
            return Err(not_verified());
        }
        Ok(())
    }

    /// Rebuilds the root from `threshold` shares of distinct indexes, and checks it against the
    /// recorded check value.
    pub fn combine(&self, shares: &[&Share]) -> Result<Zeroizing<[u8; 32]>, ShareRejection> {
        let wrong = || ShareRejection::WrongRoot(self.set_id.clone());
        let raw: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(
            shares
                .iter()
                .map(|s| {
                    let mut v = Vec::with_capacity(33);
                    v.push(s.index);
                    v.extend_from_slice(&s.bytes[..]);
                    v
                })
                .collect(),
        );
        let secret = Zeroizing::new(vsss_rs::Gf256::combine_array(&raw[..]).map_err(|_| wrong())?);
        let root: [u8; 32] = secret[..].try_into().map_err(|_| wrong())?;
        let root = Zeroizing::new(root);
        let check = root_check(&self.set_id, &root);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &check[..],
            &self.root_check[..],
        )) {
            return Err(wrong());
        }
        Ok(root)
    }
}

/// The root's check value: HMAC-SHA256 under the root of the set id.
pub fn root_check(set_id: &str, root: &[u8; 32]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(root).unwrap_or_else(|_| unreachable!());
    mac.update(b"payvault root check v1\0");
    mac.update(set_id.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A share's verifier: a SHA-256 commitment to it. Public: the share has 256 bits of entropy.
pub fn verifier(share: &Share) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"payvault share verifier v1\0")
        .chain_update(share.set_id.as_bytes())
        .chain_update([0, share.index])
        .chain_update(&share.bytes[..])
        .finalize()
        .into()
}

const NONCE_LEN: usize = 12;

fn wrap_aad(version: i32) -> Vec<u8> {
    format!("payvault/master-key-wrap/v1|shares|{version}").into_bytes()
}

/// A master key wrapped under the root: `nonce(12) || AES-256-GCM(root, key) || tag(16)`, with
/// the version in the associated data (a wrap moved to another version fails to open).
pub fn wrap(root: &[u8; 32], version: i32, key: &[u8; 32]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(root.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let aad = wrap_aad(version);
    let mut out = nonce.to_vec();
    match cipher.encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: key,
            aad: &aad,
        },
    ) {
        Ok(ct) => out.extend_from_slice(&ct),
        Err(_) => unreachable!("AES-GCM encryption of 32 bytes cannot fail"),
    }
    out
}

/// Opens what [`wrap`] made for `version`.
pub fn unwrap(
    root: &[u8; 32],
    version: i32,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    if wrapped.len() != NONCE_LEN + 32 + 16 {
        return Err(CryptoError::Malformed);
    }
    let (nonce, msg) = wrapped.split_at(NONCE_LEN);
    let aad = wrap_aad(version);
    let plain = Zeroizing::new(
        Aes256Gcm::new(root.into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg, aad: &aad })
            .map_err(|_| CryptoError::Authentication)?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain[..]);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_shares_rebuild_the_root_and_fewer_do_not() {
        let split = split(3, 5).unwrap();
        assert_eq!(split.shares.len(), 5);
        let set = &split.set;
        for s in &split.shares {
            set.verify(s).unwrap();
        }
        let pick =
            |idx: &[usize]| -> Vec<&Share> { idx.iter().map(|i| &split.shares[*i]).collect() };
        for combo in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            assert_eq!(*set.combine(&pick(&combo)).unwrap(), *split.root);
        }
        // Two shares of a 3-of-5 split rebuild some other secret: the check value refuses it.
        assert_eq!(
            set.combine(&pick(&[0, 1])).unwrap_err().code(),
            "unseal_failed"
        );
    }

    #[test]
    fn a_share_from_another_split_or_altered_is_refused() {
        let a = split(2, 3).unwrap();
        let b = split(2, 3).unwrap();
        assert_eq!(
            a.set.verify(&b.shares[0]).unwrap_err().code(),
            "wrong_share_set"
        );
        // Same set id, other bytes (a forged share with a valid checksum).
        let forged = Share {
            set_id: a.set.set_id.clone(),
            index: 2,
            bytes: Zeroizing::new(*b.shares[1].bytes),
        };
        assert_eq!(
            a.set.verify(&forged).unwrap_err().code(),
            "share_not_verified"
        );
        let beyond = Share {
            index: 9,
            ..Share::parse(&a.shares[0].encode()).unwrap()
        };
        assert_eq!(
            a.set.verify(&beyond).unwrap_err().code(),
            "share_not_verified"
        );
        assert!(matches!(split(1, 3), Err(SplitError::ThresholdTooLow)));
        assert!(matches!(
            split(4, 3),
            Err(SplitError::ThresholdAboveShares { .. })
        ));
    }

    #[test]
    fn wraps_bind_the_version() {
        let root = [9u8; 32];
        let key = [5u8; 32];
        let wrapped = wrap(&root, 2, &key);
        assert_eq!(*unwrap(&root, 2, &wrapped).unwrap(), key);
        assert!(matches!(
            unwrap(&root, 3, &wrapped),
            Err(CryptoError::Authentication)
        ));
        assert!(unwrap(&[8u8; 32], 2, &wrapped).is_err());
    }
}

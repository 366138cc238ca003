//! The master key ring. Master keys come from the environment (`PAYVAULT_MASTER_KEY` or
//! `PAYVAULT_MASTER_KEY_FILE`), never from the database (PCI DSS 3.6.1).
//!
//! Each master key version is expanded with HKDF-SHA256 into independent keys, one per purpose,
//! so that the key wrapping data keys is never also used as a MAC key.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;
use crate::domain::DEFAULT_TENANT;

pub type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "pvmk";
/// The prefix of development keys (`payvault dev`, the compose file's sample key), which
/// `PAYVAULT_ENV=production` refuses.
const DEV_PREFIX: &str = "pvdev";
/// The prefix of audit-only keys (`payvault keys retire`): the audit-seal key of a retired
/// version, which verifies the audit events sealed under it and opens nothing.
const AUDIT_PREFIX: &str = "pvaudit";

/// 32 bytes of master key material with its version. Zeroized on drop, redacted in `Debug`.
pub struct MasterKey {
    version: i32,
    bytes: Zeroizing<[u8; 32]>,
    development: bool,
    /// `bytes` is the audit-seal key of a retired version, not a master key (`pvaudit.`).
    audit_only: bool,
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate(version: i32) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Self {
            version,
            bytes,
            development: false,
            audit_only: false,
        }
    }

    /// A fresh random key marked as a development key (text form `pvdev.<v>.<key>`), which a
    /// production instance refuses to load.
    pub fn generate_development(version: i32) -> Self {
        Self {
            development: true,
            ..Self::generate(version)
        }
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// Whether this is a development key (`pvdev.` prefix).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Whether this is a retired version's audit-only key (`pvaudit.` prefix).
    pub fn is_audit_only(&self) -> bool {
        self.audit_only
    }

    /// A master key unwrapped by a key provider (`crate::custody`).
    pub fn from_bytes(version: i32, bytes: Zeroizing<[u8; 32]>) -> Self {
        Self {
            version,
            bytes,
            development: false,
            audit_only: false,
        }
    }

    /// A second copy (zeroized on drop like the first).
    pub fn duplicate(&self) -> Self {
        Self {
            version: self.version,
            bytes: Zeroizing::new(*self.bytes),
            development: self.development,
            audit_only: self.audit_only,
        }
    }

    /// The key material, for a key provider to wrap. Never to be copied elsewhere.
    pub(crate) fn expose_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The text form accepted by `PAYVAULT_MASTER_KEY`. Returned zeroizing: it is the key.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(64));
        out.push_str(match (self.audit_only, self.development) {
            (true, _) => AUDIT_PREFIX,
            (false, true) => DEV_PREFIX,
            (false, false) => PREFIX,
        });
        out.push('.');
        out.push_str(&self.version.to_string());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(self.bytes.as_ref(), &mut out);
        out
    }

    /// Derives a master key from a passphrase with Argon2id (`m_cost_kib`, `t_cost`, `p_cost`,
    /// `salt`: public parameters, stored by `payvault keys passphrase-init`).
    pub fn from_passphrase(
        version: i32,
        passphrase: &str,
        salt: &[u8],
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
    ) -> Result<Self, KeyRingError> {
        let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32))
            .map_err(|_| KeyRingError::Passphrase)?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut bytes = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, bytes.as_mut())
            .map_err(|_| KeyRingError::Passphrase)?;
        Ok(Self {
            version,
            bytes,
            development: false,
            audit_only: false,
        })
    }

    /// A MAC that shows whether a passphrase derived this key, without revealing the key.
    pub fn check_mac(&self) -> [u8; 32] {
        let derived = DerivedKeys::derive(self);
        mac_parts(&derived.request_mac, &[b"payvault/passphrase-check"])
    }

    /// Parses comma-separated master keys (the `PAYVAULT_MASTER_KEY` format).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, KeyRingError> {
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    fn parse(text: &str) -> Result<Self, KeyRingError> {
        let mut parts = text.trim().splitn(3, '.');
        let (Some(prefix @ (PREFIX | DEV_PREFIX | AUDIT_PREFIX)), Some(version), Some(material)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyRingError::Format);
        };
        let version: i32 = version
            .parse()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or(KeyRingError::Format)?;
        let mut decoded = Zeroizing::new(Vec::with_capacity(33));
        URL_SAFE_NO_PAD
            .decode_vec(material, &mut decoded)
            .map_err(|_| KeyRingError::Format)?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        if decoded.len() != 32 {
            return Err(KeyRingError::Length);
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self {
            version,
            bytes,
            development: prefix == DEV_PREFIX,
            audit_only: prefix == AUDIT_PREFIX,
        })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.audit_only, self.development) {
            (true, _) => ", audit only",
            (false, true) => ", development",
            (false, false) => "",
        };
        write!(f, "MasterKey(v{}{kind}, [REDACTED])", self.version)
    }
}

/// Why a master key could not be loaded. Never includes the key text.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("master key is not in the form pvmk.<version>.<base64url key> (run `payvault keys generate`)")]
    Format,
    #[error("master key must decode to exactly 32 bytes")]
    Length,
    #[error("no master key given")]
    Empty,
    #[error("master key version {0} appears twice")]
    DuplicateVersion(i32),
    #[error("the passphrase parameters are invalid")]
    Passphrase,
}

/// Keys derived from one master key version, one per purpose.
pub(crate) struct DerivedKeys {
    /// Wraps per-entry data keys.
    pub(crate) kek: Aes256Gcm,
    /// Keyed fingerprint of card and account numbers, for dedup and lookup (the default
    /// tenant's; other tenants' keys are derived from `fingerprint_key`).
    pub(crate) fingerprint: HmacSha256,
    fingerprint_key: Zeroizing<[u8; 32]>,
    /// MAC over normalised requests, to recognise an idempotent retry.
    pub(crate) request_mac: HmacSha256,
    /// Keys the audit log's seal chain.
    pub(crate) audit_seal: HmacSha256,
    /// Keys each audit event's own MAC (derived from the seal key: see [`event_key`]).
    pub(crate) audit_event: HmacSha256,
    /// This version's check value (`master_key_checks`): a MAC of a fixed label under its own
    /// derived key, so publishing it reveals nothing about the other keys.
    pub(crate) check: [u8; 32],
    /// The same key's bytes, handed out by [`KeyRing::audit_key`] when the version is retired.
    audit_seal_key: Zeroizing<[u8; 32]>,
}

impl DerivedKeys {
    fn derive(master: &MasterKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"payvault master key v1"), master.bytes.as_ref());
        let expand = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
            if hk.expand(info, okm.as_mut()).is_err() {
                unreachable!("HKDF output length is valid");
            }
            okm
        };
        let kek = expand(b"payvault/kek");
        let fingerprint = expand(b"payvault/fingerprint");
        let request_mac = expand(b"payvault/request-mac");
        let audit_seal = expand(b"payvault/audit-seal");
        let check_key = expand(b"payvault/key-check");
        let version = master.version.to_be_bytes();
        let check = mac_parts(
            &new_hmac(check_key.as_ref()),
            &[b"payvault/key-check/v1", &version],
        );
        let audit_seal_mac = new_hmac(audit_seal.as_ref());
        Self {
            check,
            audit_event: event_key(&audit_seal_mac),
            audit_seal: audit_seal_mac,
            audit_seal_key: audit_seal,
            kek: Aes256Gcm::new(kek.as_ref().into()),
            fingerprint: new_hmac(fingerprint.as_ref()),
            fingerprint_key: fingerprint,
            request_mac: new_hmac(request_mac.as_ref()),
        }
    }
}

/// The per-event audit MAC key of a version, derived from its seal key by HMAC (a PRF), so a
/// retired version's audit-only key (`pvaudit.`, the seal key) still verifies its events' MACs.
fn event_key(seal: &HmacSha256) -> HmacSha256 {
    let mut key = mac_parts(seal, &[b"payvault/audit-event-key/v1"]);
    let hmac = new_hmac(&key);
    key.zeroize();
    hmac
}

fn new_hmac(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// All loaded master key versions; the highest is current for new entries.
pub struct KeyRing {
    current: i32,
    keys: BTreeMap<i32, DerivedKeys>,
    /// Seal keys of retired versions (`pvaudit.` keys): they verify old audit seals only.
    /// Each with its event MAC key.
    audit_only: BTreeMap<i32, (HmacSha256, HmacSha256)>,
    /// Whether any of the keys is a development key.
    development: bool,
}

impl KeyRing {
    /// Parses one or more comma-separated master keys.
    pub fn parse(text: &str) -> Result<Self, KeyRingError> {
        Self::from_keys(MasterKey::parse_list(text)?)
    }

    pub fn from_keys(keys: Vec<MasterKey>) -> Result<Self, KeyRingError> {
        let mut map = BTreeMap::new();
        let mut audit_only = BTreeMap::new();
        let development = keys.iter().any(MasterKey::is_development);
        for key in keys {
            let version = key.version;
            if map.contains_key(&version) || audit_only.contains_key(&version) {
                return Err(KeyRingError::DuplicateVersion(version));
            }
            if key.audit_only {
                let seal = new_hmac(key.bytes.as_ref());
                audit_only.insert(version, (event_key(&seal), seal));
            } else {
                map.insert(version, DerivedKeys::derive(&key));
            }
        }
        let current = *map.keys().next_back().ok_or(KeyRingError::Empty)?;
        Ok(Self {
            current,
            keys: map,
            audit_only,
            development,
        })
    }

    /// Whether a development (`pvdev.`) key is loaded, which production refuses.
    pub fn has_development_key(&self) -> bool {
        self.development
    }

    pub fn current_version(&self) -> i32 {
        self.current
    }

    /// The loaded master key versions (audit-only keys are not among them).
    pub fn versions(&self) -> impl Iterator<Item = i32> + '_ {
        self.keys.keys().copied()
    }

    pub(crate) fn current(&self) -> &DerivedKeys {
        &self.keys[&self.current]
    }

    pub(crate) fn get(&self, version: i32) -> Result<&DerivedKeys, CryptoError> {
        self.keys
            .get(&version)
            .ok_or(CryptoError::UnknownKeyVersion(version))
    }

    /// The check value of `version`: stored once per version, compared at every start, so a
    /// wrong key is refused before it decrypts or seals anything.
    pub fn check_value(&self, version: i32) -> Result<[u8; 32], CryptoError> {
        Ok(self.get(version)?.check)
    }

    /// HMAC-SHA256 fingerprint of `parts` (length-prefixed, so field boundaries are unambiguous)
    /// under `tenant`'s fingerprint key of the current version: the version's fingerprint key
    /// for the default tenant (so fingerprints from before tenants still match), and for any
    /// other tenant a key derived from it with HKDF-Expand and the tenant id, so the same card
    /// has unrelated fingerprints in two tenants.
    pub fn fingerprint(&self, tenant: Uuid, parts: &[&[u8]]) -> [u8; 32] {
        let keys = self.current();
        if tenant == DEFAULT_TENANT {
            return mac_parts(&keys.fingerprint, parts);
        }
        let mut info = b"payvault/fingerprint/tenant/v1|".to_vec();
        info.extend_from_slice(tenant.hyphenated().to_string().as_bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        // The fingerprint key is a full-length HKDF output, a valid PRK; 32 bytes of output
        // is far below the limit.
        let Ok(hk) = Hkdf::<Sha256>::from_prk(keys.fingerprint_key.as_ref()) else {
            unreachable!("a 32-byte PRK is long enough for HKDF-SHA256");
        };
        if hk.expand(&info, key.as_mut()).is_err() {
            unreachable!("HKDF output length is valid");
        }
        mac_parts(&new_hmac(key.as_ref()), parts)
    }

    /// MAC in the audit seal chain under the given version's seal key.
    /// A retired version's audit-only key serves here too.
    pub fn seal_mac(&self, version: i32, parts: &[&[u8]]) -> Result<[u8; 32], CryptoError> {
        let key = match self.keys.get(&version) {
            Some(derived) => &derived.audit_seal,
            None => {
                &self
                    .audit_only
                    .get(&version)
                    .ok_or(CryptoError::UnknownKeyVersion(version))?
                    .1
            }
        };
        Ok(mac_parts(key, parts))
    }

    /// An audit event's own MAC under the given version's event key (a retired version's
    /// audit-only key serves here too).
    pub fn event_mac(&self, version: i32, parts: &[&[u8]]) -> Result<[u8; 32], CryptoError> {
        let key = match self.keys.get(&version) {
            Some(derived) => &derived.audit_event,
            None => {
                &self
                    .audit_only
                    .get(&version)
                    .ok_or(CryptoError::UnknownKeyVersion(version))?
                    .0
            }
        };
        Ok(mac_parts(key, parts))
    }

    /// The audit-only key of master key `version` (`pvaudit.<version>.<key>`), if loaded: what
    /// to keep of a retired version so the audit events sealed under it stay verifiable. It
    /// is an HKDF output, from which neither the master key nor the key wrapping data keys can
    /// be computed, so it opens no vault entry.
    pub fn audit_key(&self, version: i32) -> Option<Zeroizing<String>> {
        let derived = self.keys.get(&version)?;
        let key = MasterKey {
            version,
            bytes: derived.audit_seal_key.clone(),
            development: false,
            audit_only: true,
        };
        Some(key.encode())
    }

    /// MAC of a normalised request under the given version's request-MAC key.
    pub fn request_mac(&self, version: i32, parts: &[&[u8]]) -> Result<[u8; 32], CryptoError> {
        Ok(mac_parts(&self.get(version)?.request_mac, parts))
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("audit_only", &self.audit_only.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn mac_parts(keyed: &HmacSha256, parts: &[&[u8]]) -> [u8; 32] {
    // Cloning a keyed HMAC reuses its precomputed pads instead of re-keying per call.
    let mut mac = keyed.clone();
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let mut out = mac.finalize().into_bytes();
    let bytes: [u8; 32] = out.into();
    out.zeroize();
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_its_text_form() {
        let key = MasterKey::generate(3);
        let text = key.encode();
        assert!(text.starts_with("pvmk.3."));
        let parsed = MasterKey::parse(&text).unwrap();
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.bytes.as_ref(), key.bytes.as_ref());
        assert_eq!(format!("{parsed:?}"), "MasterKey(v3, [REDACTED])");
        assert!(!parsed.is_development());
    }

    #[test]
    fn development_keys_keep_their_mark() {
        let key = MasterKey::generate_development(2);
        let text = key.encode();
        assert!(text.starts_with("pvdev.2."));
        let parsed = MasterKey::parse(&text).unwrap();
        assert!(parsed.is_development());
        assert_eq!(parsed.bytes.as_ref(), key.bytes.as_ref());
        assert_eq!(
            format!("{parsed:?}"),
            "MasterKey(v2, development, [REDACTED])"
        );
    }

    #[test]
    fn key_ring_takes_highest_version_as_current() {
        let text = format!(
            "{},{}",
            MasterKey::generate(1).encode().as_str(),
            MasterKey::generate(2).encode().as_str()
        );
        let ring = KeyRing::parse(&text).unwrap();
        assert_eq!(ring.current_version(), 2);
        assert_eq!(ring.versions().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn rejects_malformed_keys_without_echoing_them() {
        for bad in [
            "",
            "pvmk.1",
            "pvmk.0.AAAA",
            "xx.1.AAAA",
            "pvmk.1.!!!!",
            "pvmk.1.AAAA",
        ] {
            let err = KeyRing::parse(bad).unwrap_err().to_string();
            assert!(
                !bad.is_empty() && !err.contains(bad) || bad.is_empty(),
                "{err}"
            );
        }
        let k = MasterKey::generate(1).encode();
        let dup = format!("{},{}", k.as_str(), k.as_str());
        assert!(matches!(
            KeyRing::parse(&dup),
            Err(KeyRingError::DuplicateVersion(1))
        ));
    }

    #[test]
    fn check_value_depends_on_key_and_version_only() {
        let key = MasterKey::generate(1);
        let text = key.encode();
        let a = KeyRing::parse(&text).unwrap();
        let b = KeyRing::parse(&text).unwrap();
        assert_eq!(a.check_value(1).unwrap(), b.check_value(1).unwrap());
        let other = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        assert_ne!(a.check_value(1).unwrap(), other.check_value(1).unwrap());
        // The same bytes under another version number give another check value.
        let relabelled = KeyRing::parse(&text.replacen("pvmk.1.", "pvmk.2.", 1)).unwrap();
        assert_ne!(
            a.check_value(1).unwrap(),
            relabelled.check_value(2).unwrap()
        );
        assert!(a.check_value(2).is_err());
        // Not the passphrase check value, nor any other derived MAC.
        assert_ne!(a.check_value(1).unwrap(), key.check_mac());
    }

    #[test]
    fn an_audit_key_verifies_its_versions_seals_and_opens_nothing() {
        let v1 = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let card = crate::crypto::EntryBinding {
            tenant: DEFAULT_TENANT,
            kind: "card",
            exp_month: Some(8),
            exp_year: Some(2030),
        };
        let old_entry = v1.seal("tok_b", &card, b"4111111111111111");
        let seal = v1.seal_mac(1, &[b"event"]).unwrap();

        let audit = v1.audit_key(1).unwrap();
        assert!(audit.starts_with("pvaudit.1."));
        let parsed = MasterKey::parse(&audit).unwrap();
        assert_eq!(
            format!("{parsed:?}"),
            "MasterKey(v1, audit only, [REDACTED])"
        );
        assert_eq!(parsed.encode().as_str(), audit.as_str());

        // What remains after retiring version 1: version 2 and version 1's audit-only key.
        let remaining = KeyRing::parse(&format!(
            "{},{}",
            MasterKey::generate(2).encode().as_str(),
            audit.as_str()
        ))
        .unwrap();
        assert_eq!(remaining.seal_mac(1, &[b"event"]).unwrap(), seal);
        assert_eq!(remaining.current_version(), 2);
        assert_eq!(remaining.versions().collect::<Vec<_>>(), vec![2]);
        assert!(matches!(
            remaining.open("tok_b", &card, &old_entry),
            Err(CryptoError::UnknownKeyVersion(1))
        ));
        // Nor does it open anything passed off as the master key of its version.
        let disguised = KeyRing::parse(&audit.replacen("pvaudit.", "pvmk.", 1)).unwrap();
        assert!(matches!(
            disguised.open("tok_b", &card, &old_entry),
            Err(CryptoError::Authentication)
        ));
        // An audit-only key alone is no key ring, and a version cannot be loaded twice.
        assert!(matches!(KeyRing::parse(&audit), Err(KeyRingError::Empty)));
        let twice = format!(
            "{},{}",
            MasterKey::generate(1).encode().as_str(),
            audit.as_str()
        );
        assert!(matches!(
            KeyRing::parse(&twice),
            Err(KeyRingError::DuplicateVersion(1))
        ));
    }

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let a = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let b = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let pan: &[u8] = b"4111111111111111";
        let t = DEFAULT_TENANT;
        assert_eq!(
            a.fingerprint(t, &[b"card", pan]),
            a.fingerprint(t, &[b"card", pan])
        );
        assert_ne!(
            a.fingerprint(t, &[b"card", pan]),
            b.fingerprint(t, &[b"card", pan])
        );
        assert_ne!(
            a.fingerprint(t, &[b"ca", b"rd4111111111111111"]),
            a.fingerprint(t, &[b"card", pan])
        );
    }

    #[test]
    fn fingerprints_are_keyed_per_tenant() {
        let ring = KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap();
        let pan: &[u8] = b"4111111111111111";
        let (one, two) = (Uuid::from_u128(7), Uuid::from_u128(8));
        let default = ring.fingerprint(DEFAULT_TENANT, &[b"card", pan]);
        // The default tenant keeps the key fingerprints had before tenants.
        assert_eq!(
            default,
            mac_parts(&ring.current().fingerprint, &[b"card", pan])
        );
        assert_eq!(
            ring.fingerprint(one, &[b"card", pan]),
            ring.fingerprint(one, &[b"card", pan])
        );
        assert_ne!(ring.fingerprint(one, &[b"card", pan]), default);
        assert_ne!(
            ring.fingerprint(one, &[b"card", pan]),
            ring.fingerprint(two, &[b"card", pan])
        );
    }
}

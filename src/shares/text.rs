//! A share as a custodian holds it: `pvshare.1.<set>.<index>.<data>`, where `<data>` is the
//! share's 32 bytes and a 4-byte checksum, base64url without padding. The checksum (SHA-256 of
//! the set, index and bytes, truncated) catches a mistyped or truncated share before it is
//! submitted; the set names which split it belongs to, the index which custodian's it is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const PREFIX: &str = "pvshare";
const FORMAT_VERSION: &str = "1";
const CHECKSUM_LEN: usize = 4;

/// One custodian's share: which set, which index (1-255, the x coordinate), and the 32 bytes
/// (the y coordinates, one per byte of the root secret). Zeroized on drop, redacted in `Debug`.
pub struct Share {
    pub set_id: String,
    pub index: u8,
    pub bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("set_id", &self.set_id)
            .field("index", &self.index)
            .field("bytes", &"[redacted]")
            .finish()
    }
}

/// Why a share's text was refused. Never quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareTextError {
    #[error("not a payvault share: expected pvshare.1.<set>.<index>.<data> on one line")]
    Malformed,
    #[error("share format version {0} is not supported by this payvault (it reads version 1)")]
    UnsupportedVersion(String),
    #[error("the share's index is not a number from 1 to 255")]
    BadIndex,
    #[error("the share's data is not 48 base64url characters")]
    BadData,
    #[error("the share's checksum does not match: it was mistyped or cut short; copy it again")]
    Checksum,
}

impl Share {
    /// The share's text, to be shown once to its custodian.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut data = Zeroizing::new([0u8; 32 + CHECKSUM_LEN]);
        data[..32].copy_from_slice(&self.bytes[..]);
        data[32..].copy_from_slice(&checksum(&self.set_id, self.index, &self.bytes));
        let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(&data[..]));
        Zeroizing::new(format!(
            "{PREFIX}.{FORMAT_VERSION}.{}.{}.{}",
            self.set_id,
            self.index,
            encoded.as_str()
        ))
    }

    /// Parses a share's text (surrounding whitespace ignored) and checks its checksum.
    pub fn parse(text: &str) -> Result<Self, ShareTextError> {
        let mut parts = text.trim().split('.');
        let (Some(prefix), Some(version), Some(set_id), Some(index), Some(data), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ShareTextError::Malformed);
        };
        if prefix != PREFIX || !is_set_id(set_id) {
            return Err(ShareTextError::Malformed);
        }
        if version != FORMAT_VERSION {
            // A version is short and not secret; anything else is not a version.
            if version.len() <= 4 && version.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ShareTextError::UnsupportedVersion(version.to_owned()));
            }
            return Err(ShareTextError::Malformed);
        }
        let index: u8 = index
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or(ShareTextError::BadIndex)?;
        let decoded = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(data)
                .map_err(|_| ShareTextError::BadData)?,
        );
        if decoded.len() != 32 + CHECKSUM_LEN {
            return Err(ShareTextError::BadData);
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&decoded[..32]);
        let expected = checksum(set_id, index, &bytes);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &decoded[32..])) {
            return Err(ShareTextError::Checksum);
        }
        Ok(Self {
            set_id: set_id.to_owned(),
            index,
            bytes,
        })
    }
}

/// A set id: 1-32 lowercase hex digits (`keys split` makes 16).
pub fn is_set_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn checksum(set_id: &str, index: u8, bytes: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(b"payvault share checksum v1\0")
        .chain_update(set_id.as_bytes())
        .chain_update([0, index])
        .chain_update(bytes)
        .finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> Share {
        Share {
            set_id: "0123456789abcdef".into(),
            index: 3,
            bytes: Zeroizing::new([7u8; 32]),
        }
    }

    #[test]
    fn round_trips_and_catches_typos() {
        let text = share().encode();
        assert!(
            text.starts_with("pvshare.1.0123456789abcdef.3."),
            "{}",
            *text
        );
        let back = Share::parse(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!((back.set_id.as_str(), back.index), ("0123456789abcdef", 3));
        assert_eq!(*back.bytes, [7u8; 32]);

        // One character changed in the data, the index or the set: the checksum catches it.
        let mut typo = text.to_string();
        let last = typo.pop().unwrap();
        typo.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(Share::parse(&typo).unwrap_err(), ShareTextError::Checksum);
        let other_index = text.replace(".3.", ".4.");
        assert_eq!(
            Share::parse(&other_index).unwrap_err(),
            ShareTextError::Checksum
        );
        let other_set = text.replace("0123456789abcdef", "0123456789abcdee");
        assert_eq!(
            Share::parse(&other_set).unwrap_err(),
            ShareTextError::Checksum
        );
    }

    #[test]
    fn refuses_what_is_not_a_share_without_quoting_it() {
        let text = share().encode();
        let cut = &text[..text.len() - 3];
        assert_eq!(Share::parse(cut).unwrap_err(), ShareTextError::BadData);
        assert_eq!(
            Share::parse(&text.replace("pvshare.1.", "pvshare.2.")).unwrap_err(),
            ShareTextError::UnsupportedVersion("2".into())
        );
        assert_eq!(
            Share::parse(&text.replace(".3.", ".0.")).unwrap_err(),
            ShareTextError::BadIndex
        );
        for junk in ["", "hello", "pvmk.1.abc", "pvshare.1.XYZ.1.abc"] {
            assert_eq!(Share::parse(junk).unwrap_err(), ShareTextError::Malformed);
        }
        for err in [ShareTextError::Checksum, ShareTextError::BadData] {
            assert!(!err.to_string().contains(&text[30..]));
        }
        assert!(!format!("{:?}", share()).contains("7, 7"));
    }
}

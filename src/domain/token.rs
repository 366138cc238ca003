//! Vault tokens: opaque, random, unrelated to the card they stand for.

use std::fmt;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "tok_";
/// 128 random bits: unguessable, and no function of the card.
const RANDOM_BYTES: usize = 16;
const ENCODED_LEN: usize = PREFIX.len() + 22;

/// A vault token such as `tok_Vb3k8yJc0Q2m1xW9aZr4Tg`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    pub fn generate() -> Self {
        let mut bytes = [0u8; RANDOM_BYTES];
        OsRng.fill_bytes(&mut bytes);
        let mut s = String::with_capacity(ENCODED_LEN);
        s.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(bytes, &mut s);
        Self(s)
    }

    /// Accepts only strings of the exact shape `generate` produces.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(PREFIX)?;
        let ok = s.len() == ENCODED_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_unique_prefixed_and_parse() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("tok_"));
        assert_eq!(a.as_str().len(), ENCODED_LEN);
        assert_eq!(Token::parse(a.as_str()), Some(a));
        assert_eq!(Token::parse("tok_short"), None);
        assert_eq!(Token::parse("4111111111111111"), None);
    }
}

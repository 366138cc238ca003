//! A string that holds sensitive data: zeroized on drop, redacted in `Debug`, never `Serialize`.
//! The one secret-string type of the crate: card fields, credentials, keys' text forms, the
//! database URL and processor secrets all use it.
//!
//! Raw request fields that may carry a PAN, CVV or bank account number are read straight into
//! this type, so no plain `String` copy of them exists in our code. Validated domain types
//! ([`super::card::CardNumber`], ...) wrap it further.

use std::fmt;

use zeroize::Zeroizing;

/// Sensitive text. Deliberately implements neither `Display`, `Serialize` nor `Clone`.
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The clear value. Callers must not copy it into anything that is not itself zeroized.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText([REDACTED])")
    }
}

impl From<String> for SecretText {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretText {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretText::from("4111111111111111");
        assert_eq!(format!("{s:?}"), "SecretText([REDACTED])");
        assert_eq!(s.expose(), "4111111111111111");
    }
}

//! HTTP Basic authentication for connector credentials.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::domain::SecretText;

/// `WWW-Authenticate` challenge sent with every 401.
pub const CHALLENGE: HeaderValue =
    HeaderValue::from_static(r#"Basic realm="payvault", charset="UTF-8""#);

/// Username and secret from an `Authorization: Basic` header, or `None` when the header is
/// missing or malformed. The decoded buffer is zeroized.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, SecretText)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut decoded = Zeroizing::new(Vec::with_capacity(encoded.len()));
    STANDARD.decode_vec(encoded.trim(), &mut decoded).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, secret) = text.split_once(':')?;
    Some((user.to_owned(), SecretText::from(secret)))
}

/// A username worth recording in the audit log of a failed attempt: only one of the shape
/// payvault issues, since a misconfigured client may put a password in the username field.
pub fn loggable_username(user: &str) -> Option<&str> {
    let ok = (user.starts_with("pvc_") || user.starts_with("pvk_"))
        && user.len() == 24
        && user[4..].bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn parses_basic_credentials() {
        let (user, secret) = basic_credentials(&headers("Basic dXNlcjpwYTpzcw==")).unwrap();
        assert_eq!(user, "user");
        assert_eq!(secret.expose(), "pa:ss");
        assert!(basic_credentials(&headers("Bearer abc")).is_none());
        assert!(basic_credentials(&headers("Basic !!!")).is_none());
        assert!(basic_credentials(&headers("Basic dXNlcg==")).is_none());
        assert!(basic_credentials(&HeaderMap::new()).is_none());
    }

    #[test]
    fn only_payvault_shaped_usernames_are_logged() {
        assert!(loggable_username("pvc_0123456789abcdef0123").is_some());
        assert!(loggable_username("4111111111111111").is_none());
        assert!(loggable_username("pvc_secretpassword!!!!!").is_none());
    }
}

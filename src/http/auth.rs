//! Who is calling: HTTP Basic or Bearer credentials, checked (and every failure audited), and
//! the [`Caller`] extractor that hands a handler the authenticated principal and its origin.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::error::{ApiError, Kind};
use super::AppState;
use crate::audit::{AuditEvent, Origin};
use crate::auth::{source_key, AuthError, Failure, Principal, Scope};
use crate::domain::SecretText;

/// `WWW-Authenticate` challenge sent with every 401.
pub const CHALLENGE: HeaderValue =
    HeaderValue::from_static(r#"Basic realm="payvault", charset="UTF-8""#);

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Missing, malformed, unknown, wrong or revoked credentials: all answered alike.
    Unauthorized,
    /// Too many failed attempts: refused before verification; retry after this long.
    Throttled(std::time::Duration),
    /// The credential store could not be reached.
    Internal,
}

/// Authenticates the caller from `Authorization` (Basic `username:secret`, or Bearer
/// `username.secret`), auditing every failure per source (PCI DSS 10.2.1.4: invalid access
/// attempts; see `auth::failures` for how a flood is aggregated). `source` is the client's
/// address: the forwarded one behind a trusted proxy, else the peer.
pub async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    origin: &Origin,
    source: IpAddr,
) -> Result<Arc<Principal>, Denied> {
    let presented = presented_credentials(headers);
    let result = match &presented {
        Some((user, secret)) => app.auth.authenticate(user, secret, source).await,
        None => Err(AuthError::Invalid),
    };
    let (failure, denied) = match result {
        Ok(principal) => return Ok(principal),
        Err(AuthError::Invalid) => (Failure::Unauthorized, Denied::Unauthorized),
        Err(AuthError::Throttled { retry_after }) => {
            (Failure::Throttled, Denied::Throttled(retry_after))
        }
        Err(AuthError::Database(e)) => {
            tracing::error!(error = %super::error::error_chain(&e), "credential lookup failed");
            return Err(Denied::Internal);
        }
    };
    let username = presented.as_ref().and_then(|(u, _)| loggable_username(u));
    let details = serde_json::json!({
        "username": username,
        "header_present": headers.contains_key(AUTHORIZATION),
    });
    let Some(event) =
        app.auth_failures
            .failed(source_key(source), origin, failure, username, details)
    else {
        tracing::info!(
            error_code = failure.code(),
            "authentication failed (audited in this source's aggregate)"
        );
        return Err(denied);
    };
    if let Err(e) = app.vault.record_event(&event).await {
        tracing::error!(error = %super::error::error_chain(&e), "audit write failed");
        return Err(Denied::Internal);
    }
    tracing::info!(error_code = failure.code(), "authentication failed");
    Err(denied)
}

/// An authenticated caller: extracting it authenticates the request (answering 401, audited,
/// when that fails). Scopes are checked per operation with [`Caller::require`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub origin: Origin,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| ApiError::internal_msg("no peer address on the connection"))?;
        let origin = super::origin(app, &parts.headers, peer);
        let source = super::source_ip(&origin, peer);
        let principal = authenticate(app, &parts.headers, &origin, source).await?;
        Ok(Self { principal, origin })
    }
}

impl Caller {
    /// Checks that the credential holds `scope` (else 403) and that the instance is unsealed
    /// (else `vault_sealed`, 503); a refusal is audited as `action`.
    pub async fn require(
        &self,
        app: &AppState,
        scope: Scope,
        action: &'static str,
    ) -> Result<(), ApiError> {
        let refusal = if !self.principal.has_scope(scope) {
            ApiError::new(
                Kind::Forbidden,
                "forbidden",
                format!("this credential lacks the `{scope}` scope"),
            )
        } else if app.vault.is_sealed() {
            // Sealed (split custodians): no request that reaches the vault runs until unsealed.
            ApiError::sealed()
        } else {
            return Ok(());
        };
        let event = AuditEvent::by(&self.principal, &self.origin, action).failed(refusal.code());
        app.vault
            .record_event(&event)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        Err(refusal)
    }
}

/// Username and secret from `Authorization`, or `None` when missing or malformed.
fn presented_credentials(headers: &HeaderMap) -> Option<(String, SecretText)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let (user, secret) = rest.trim().split_once('.')?;
        return Some((user.to_owned(), SecretText::from(secret)));
    }
    basic_credentials(headers)
}

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
        let (user, secret) = presented_credentials(&headers("Bearer pvk_abc.pvs_x-y_z")).unwrap();
        assert_eq!((user.as_str(), secret.expose()), ("pvk_abc", "pvs_x-y_z"));
        assert!(presented_credentials(&headers("Bearer nodot")).is_none());
    }

    #[test]
    fn only_payvault_shaped_usernames_are_logged() {
        assert!(loggable_username("pvc_0123456789abcdef0123").is_some());
        assert!(loggable_username("4111111111111111").is_none());
        assert!(loggable_username("pvc_secretpassword!!!!!").is_none());
    }
}

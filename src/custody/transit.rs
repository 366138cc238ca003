//! `PAYVAULT_KEY_PROVIDER=transit`: master keys wrapped by a HashiCorp Vault or OpenBao transit
//! key (`POST /v1/<mount>/encrypt/<key>` and `/decrypt/<key>`).
//!
//! The transit plaintext is `version (4 bytes, big-endian) || master key (32)`; unwrapping
//! refuses a plaintext whose version is not the row's, so a wrapped key copied onto another
//! version does not load (transit's own AES-GCM makes the ciphertext tamper-evident). This works
//! with any transit key type that encrypts, without derived keys. The stored form is transit's
//! ciphertext text (`vault:v1:…`). The token travels only in the `X-Vault-Token` header, marked
//! sensitive; request and answer bodies holding key material sit in zeroizing buffers.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use zeroize::{Zeroize, Zeroizing};

use super::CustodyError;
use crate::config::{self, ConfigError};
use crate::domain::SecretText;

const NAME: &str = "transit";
const ADDR_VAR: &str = "PAYVAULT_TRANSIT_ADDR";
const KEY_VAR: &str = "PAYVAULT_TRANSIT_KEY";
const TOKEN_VAR: &str = "PAYVAULT_TRANSIT_TOKEN";
const MOUNT_VAR: &str = "PAYVAULT_TRANSIT_MOUNT";
/// The largest transit answer read.
const MAX_ANSWER: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The transit settings.
#[derive(Debug)]
pub struct TransitConfig {
    /// The server, e.g. `https://bao.internal:8200`.
    pub addr: reqwest::Url,
    /// The transit secrets engine's mount path (`transit`).
    pub mount: String,
    pub key: String,
    pub token: SecretText,
}

impl TransitConfig {
    /// `PAYVAULT_TRANSIT_ADDR`, `_KEY`, `_TOKEN` (or `_TOKEN_FILE`), all required, and
    /// `_MOUNT` (default `transit`).
    pub fn from_env() -> Result<Self, ConfigError> {
        let addr = config::var(ADDR_VAR)?.ok_or(ConfigError::Missing(ADDR_VAR))?;
        let addr = reqwest::Url::parse(&addr)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ConfigError::Invalid {
                name: ADDR_VAR,
                reason: "must be an http:// or https:// URL".into(),
            })?;
        let segment = |name: &'static str, value: String| {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
                || value.starts_with('/')
                || value.contains("..")
            {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "letters, digits, '-', '_', '.' and '/' only".into(),
                });
            }
            Ok(value)
        };
        Ok(Self {
            addr,
            mount: segment(
                MOUNT_VAR,
                config::var(MOUNT_VAR)?.unwrap_or_else(|| "transit".into()),
            )?
            .trim_end_matches('/')
            .to_owned(),
            key: segment(
                KEY_VAR,
                config::var(KEY_VAR)?.ok_or(ConfigError::Missing(KEY_VAR))?,
            )?,
            token: config::secret_var("PAYVAULT_TRANSIT_TOKEN")?.ok_or(ConfigError::Missing(
                "PAYVAULT_TRANSIT_TOKEN (or PAYVAULT_TRANSIT_TOKEN_FILE)",
            ))?,
        })
    }
}

/// A transit key on a Vault or OpenBao server.
pub struct TransitProvider {
    config: TransitConfig,
    client: reqwest::Client,
}

impl TransitProvider {
    pub fn new(config: TransitConfig) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Invalid {
                name: ADDR_VAR,
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { config, client })
    }

    /// Whether the server is reached over plain HTTP (production refuses it off loopback).
    pub fn plain_http_off_loopback(&self) -> bool {
        let loopback = match self.config.addr.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        self.config.addr.scheme() == "http" && !loopback
    }

    pub fn describe(&self) -> String {
        format!(
            "transit key '{}' at {} (mount '{}')",
            self.config.key,
            self.config.addr.as_str().trim_end_matches('/'),
            self.config.mount
        )
    }

    pub(super) async fn wrap(&self, version: i32, key: &[u8; 32]) -> Result<Vec<u8>, CustodyError> {
        let mut plain = Zeroizing::new(Vec::with_capacity(36));
        plain.extend_from_slice(&version.to_be_bytes());
        plain.extend_from_slice(key);
        let answer = self.encrypt(&plain).await?;
        Ok(answer.into_bytes())
    }

    pub(super) async fn unwrap(
        &self,
        version: i32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CustodyError> {
        let bad = || CustodyError::BadWrap {
            provider: NAME,
            version,
            root: self.describe(),
        };
        let ciphertext = std::str::from_utf8(wrapped).map_err(|_| bad())?;
        if !ciphertext.starts_with("vault:v") {
            return Err(bad());
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "ciphertext": ciphertext }))
                .map_err(|e| failed(e.to_string()))?,
        );
        let (status, answer) = self.exchange("decrypt", body).await?;
        // A ciphertext that does not decrypt (altered, another key's) is a 400; so is a missing
        // key, which `refusal` names.
        if status == StatusCode::BAD_REQUEST && !server_errors(&answer).contains("not found") {
            return Err(bad());
        }
        if !status.is_success() {
            return Err(self.refusal("decrypt", status, &answer));
        }
        let plain = field(&answer, "plaintext")?;
        let mut decoded = Zeroizing::new(Vec::with_capacity(36));
        STANDARD
            .decode_vec(plain.as_bytes(), &mut decoded)
            .map_err(|_| failed("the decrypt answer's plaintext is not base64".into()))?;
        if decoded.len() != 36 || decoded[..4] != version.to_be_bytes() {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&decoded[4..]);
        Ok(key)
    }

    /// Encrypts a fixed probe: proves the server answers, the token is valid and the key exists
    /// and encrypts, with no more rights than wrapping needs.
    pub(super) async fn check(&self) -> Result<(), CustodyError> {
        self.encrypt(b"payvault/readiness-probe").await.map(drop)
    }

    /// Transit's ciphertext text for `plain`.
    async fn encrypt(&self, plain: &[u8]) -> Result<String, CustodyError> {
        let mut encoded = Zeroizing::new(String::new());
        STANDARD.encode_string(plain, &mut encoded);
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "plaintext": encoded.as_str() }))
                .map_err(|e| failed(e.to_string()))?,
        );
        let answer = self.post("encrypt", body).await?;
        let ciphertext = field(&answer, "ciphertext")?;
        Ok(ciphertext.to_string())
    }

    /// POSTs `body` to `/v1/<mount>/<op>/<key>`; the answer's body if it succeeded.
    async fn post(
        &self,
        op: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        let (status, answer) = self.exchange(op, body).await?;
        if status.is_success() {
            return Ok(answer);
        }
        Err(self.refusal(op, status, &answer))
    }

    /// POSTs `body` to `/v1/<mount>/<op>/<key>`: the status and the answer's body, whatever
    /// the status; an error only when the server cannot be reached or the answer is cut.
    async fn exchange(
        &self,
        op: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), CustodyError> {
        let url = self
            .config
            .addr
            .join(&format!(
                "v1/{}/{op}/{}",
                self.config.mount, self.config.key
            ))
            .map_err(|e| failed(format!("{ADDR_VAR}: {e}")))?;
        let mut token = HeaderValue::from_str(self.config.token.expose()).map_err(|_| {
            CustodyError::Refused {
                provider: NAME,
                setting: TOKEN_VAR,
                reason: "the token holds characters a header cannot carry".into(),
            }
        })?;
        token.set_sensitive(true);
        let sent = self
            .client
            .post(url)
            .header("X-Vault-Token", token)
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from_owner(body))
            .send()
            .await;
        let mut response = sent.map_err(|e| CustodyError::Unreachable {
            provider: NAME,
            setting: ADDR_VAR,
            reason: format!(
                "{}: {}",
                self.config.addr.as_str().trim_end_matches('/'),
                describe_send_error(&e)
            ),
        })?;
        let status = response.status();
        let mut answer = Zeroizing::new(Vec::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if answer.len() + chunk.len() <= MAX_ANSWER => {
                    answer.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => return Err(failed("the answer is too large".into())),
                Ok(None) => break,
                Err(e) => {
                    return Err(CustodyError::Unreachable {
                        provider: NAME,
                        setting: ADDR_VAR,
                        reason: format!("the answer was cut: {}", describe_send_error(&e)),
                    })
                }
            }
        }
        Ok((status, answer))
    }

    /// The error for an answer that is not a success, naming the setting to look at.
    fn refusal(&self, op: &str, status: StatusCode, answer: &[u8]) -> CustodyError {
        let errors = server_errors(answer);
        match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => CustodyError::Refused {
                provider: NAME,
                setting: TOKEN_VAR,
                reason: format!(
                    "the server refused the token (HTTP {}){errors}",
                    status.as_u16()
                ),
            },
            _ if errors.contains("not found") || status == StatusCode::NOT_FOUND => {
                CustodyError::NotFound {
                    provider: NAME,
                    setting: KEY_VAR,
                    reason: format!(
                        "no transit key '{}' under mount '{}' (HTTP {}){errors}",
                        self.config.key,
                        self.config.mount,
                        status.as_u16()
                    ),
                }
            }
            StatusCode::SERVICE_UNAVAILABLE => CustodyError::Unreachable {
                provider: NAME,
                setting: ADDR_VAR,
                reason: format!("the server is sealed or unavailable (HTTP 503){errors}"),
            },
            _ => failed(format!("{op} answered HTTP {}{errors}", status.as_u16())),
        }
    }
}

/// `data.<name>` of a transit answer, zeroized when dropped.
fn field(answer: &[u8], name: &str) -> Result<Zeroizing<String>, CustodyError> {
    let mut value: serde_json::Value = serde_json::from_slice(answer)
        .map_err(|_| failed("the server's answer is not JSON".into()))?;
    let text = match value.pointer_mut(&format!("/data/{name}")) {
        Some(serde_json::Value::String(s)) => Zeroizing::new(std::mem::take(s)),
        _ => return Err(failed(format!("the server's answer has no data.{name}"))),
    };
    wipe(&mut value);
    Ok(text)
}

/// Zeroizes every string of a parsed answer.
fn wipe(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe),
        serde_json::Value::Object(map) => map.values_mut().for_each(wipe),
        _ => {}
    }
}

/// The server's `errors` list, for an error message (`: a; b`), at most 300 characters. Vault
/// and OpenBao never echo plaintext in them.
fn server_errors(answer: &[u8]) -> String {
    let parsed: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("errors")?.clone()).ok());
    match parsed {
        Some(errors) if !errors.is_empty() => {
            let text: String = errors.join("; ").chars().take(300).collect();
            format!(": {text}")
        }
        _ => String::new(),
    }
}

fn describe_send_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The innermost cause says why (connection refused, certificate, DNS); the URL is left out
    // (known already, and free of secrets anyway).
    let mut source: Option<&dyn Error> = e.source();
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    match last {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

fn failed(reason: String) -> CustodyError {
    CustodyError::Failed {
        provider: NAME,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(addr: &str) -> TransitProvider {
        TransitProvider::new(TransitConfig {
            addr: addr.parse().unwrap(),
            mount: "transit".into(),
            key: "k".into(),
            token: "secret-token".into(),
        })
        .unwrap()
    }

    #[test]
    fn plain_http_is_flagged_off_loopback_only() {
        assert!(provider("http://bao.internal:8200").plain_http_off_loopback());
        assert!(provider("http://10.0.0.5:8200").plain_http_off_loopback());
        assert!(!provider("https://bao.internal:8200").plain_http_off_loopback());
        assert!(!provider("http://127.0.0.1:8200").plain_http_off_loopback());
        assert!(!provider("http://[::1]:8200").plain_http_off_loopback());
        assert!(!provider("http://localhost:8200").plain_http_off_loopback());
    }

    #[test]
    fn describe_and_errors_name_no_token() {
        let p = provider("https://bao.internal:8200/");
        assert_eq!(
            p.describe(),
            "transit key 'k' at https://bao.internal:8200 (mount 'transit')"
        );
        let e = p.refusal(
            "encrypt",
            StatusCode::FORBIDDEN,
            br#"{"errors":["permission denied"]}"#,
        );
        let text = e.to_string();
        assert!(
            text.contains("PAYVAULT_TRANSIT_TOKEN") && text.contains("permission denied"),
            "{text}"
        );
        assert!(!text.contains("secret-token"), "{text}");
        let e = p.refusal(
            "decrypt",
            StatusCode::BAD_REQUEST,
            br#"{"errors":["encryption key not found"]}"#,
        );
        assert!(e.to_string().contains("PAYVAULT_TRANSIT_KEY"), "{e}");
    }

    #[test]
    fn answers_give_their_field_and_nothing_else() {
        let text = field(br#"{"data":{"ciphertext":"vault:v1:abc"}}"#, "ciphertext").unwrap();
        assert_eq!(text.as_str(), "vault:v1:abc");
        assert!(field(br#"{"data":{}}"#, "ciphertext").is_err());
        assert!(field(b"not json", "ciphertext").is_err());
    }
}

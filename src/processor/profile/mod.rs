//! Declarative processor profiles: a TOML file describes a processor's sale request (URL, auth,
//! headers, a minijinja body template) and how to read its answer, so a new processor needs a
//! file, not Rust. The format is documented in `docs/processor-profiles.md`; the built-in
//! profiles are the files under `src/processor/profiles/`.

mod format;
mod recovery;
mod reply;
mod signature;
mod template;
mod xml;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::SecretText;
use bytes::Bytes;
use minijinja::value::Value;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use zeroize::Zeroizing;

use super::{
    BoxFuture, Lookup, Processor, ProcessorError, ProcessorReply, ProcessorRequest, Reversal,
};
use crate::domain::PaymentMethod;
pub use template::Mode;
use template::SecureBuf;

pub use format::*;

/// Largest processor answer read; the read stops there.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

// ---- a configured profile ---------------------------------------------------------------------

/// Which of a profile's URLs to use (`PAYVAULT_PROCESSOR_ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorEnvironment {
    Test,
    Live,
}

/// A profile with its settings, environment and base URL: everything to build the processor.
#[derive(Debug)]
pub struct ProfileConfig {
    pub profile: Arc<Profile>,
    pub environment: ProcessorEnvironment,
    pub base_url: reqwest::Url,
    settings: BTreeMap<String, Option<SecretText>>,
}

impl ProfileConfig {
    /// Resolves every declared setting through `lookup` (by setting name), applies defaults,
    /// refuses a missing required one, and renders the base URL (`url_override` wins).
    pub fn resolve<E>(
        profile: Profile,
        environment: ProcessorEnvironment,
        url_override: Option<&str>,
        mut lookup: impl FnMut(&str, &SettingDecl) -> Result<Option<SecretText>, E>,
    ) -> Result<Self, E>
    where
        E: From<ProfileError>,
    {
        let mut settings = BTreeMap::new();
        for (name, decl) in &profile.settings {
            let value = lookup(name, decl)?.or_else(|| decl.default.clone().map(SecretText::from));
            if value.is_none() && decl.required {
                return Err(ProfileError::MissingSetting {
                    profile: profile.name.clone(),
                    variable: setting_variable(name),
                    description: decl.description.clone(),
                }
                .into());
            }
            settings.insert(name.clone(), value);
        }
        let url = match url_override {
            Some(url) => url.to_owned(),
            // A profile without `[urls]` (its templates were never added) has no URL of its own.
            None if profile.env.get_template("urls.test").is_err() => {
                return Err(ProfileError::MissingSetting {
                    profile: profile.name.clone(),
                    variable: "PAYVAULT_PROCESSOR_URL".into(),
                    description: "the profile has no URL of its own".into(),
                }
                .into());
            }
            None => {
                let name = match environment {
                    ProcessorEnvironment::Test => "urls.test",
                    ProcessorEnvironment::Live => "urls.live",
                };
                let values = settings_value(&profile, &settings, Mode::Send);
                render_plain(&profile, values, name)?.to_string()
            }
        };
        let invalid = |reason: String| ProfileError::Invalid {
            origin: profile.name.clone(),
            reason,
        };
        let base_url = reqwest::Url::parse(url.trim())
            .map_err(|e| invalid(format!("base URL `{url}`: {e}")))?;
        if !matches!(base_url.scheme(), "https" | "http") || base_url.host_str().is_none() {
            return Err(invalid(format!("base URL `{url}` must be http(s)://host")).into());
        }
        Ok(Self {
            profile: Arc::new(profile),
            environment,
            base_url,
            settings,
        })
    }

    /// Like [`Self::resolve`] with the settings given directly (tests, embedding programs).
    pub fn with_settings(
        profile: Profile,
        environment: ProcessorEnvironment,
        url_override: Option<&str>,
        settings: &[(&str, &str)],
    ) -> Result<Self, ProfileError> {
        Self::resolve(profile, environment, url_override, |name, _| {
            Ok::<_, ProfileError>(
                settings
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| SecretText::from(v.to_string())),
            )
        })
    }

    fn settings_value(&self, mode: Mode) -> Value {
        settings_value(&self.profile, &self.settings, mode)
    }

    fn render_plain(&self, name: &str, mode: Mode) -> Result<Zeroizing<String>, ProfileError> {
        render_plain(&self.profile, self.settings_value(mode), name)
    }
}

/// `settings` as templates see them; secret ones masked in [`Mode::Masked`].
fn settings_value(
    profile: &Profile,
    settings: &BTreeMap<String, Option<SecretText>>,
    mode: Mode,
) -> Value {
    let map: BTreeMap<String, Value> = settings
        .iter()
        .map(|(name, value)| {
            let secret = profile.settings.get(name).is_some_and(|d| d.secret);
            let v = match (value, mode) {
                (None, _) => Value::from(()),
                (Some(_), Mode::Masked) if secret => Value::from("********"),
                (Some(v), _) => Value::from(v.expose()),
            };
            (name.clone(), v)
        })
        .collect();
    Value::from(map)
}

/// Renders a template that sees only `settings` (URLs, auth values), trimmed.
fn render_plain(
    profile: &Profile,
    settings: Value,
    name: &str,
) -> Result<Zeroizing<String>, ProfileError> {
    let mut ctx = BTreeMap::new();
    ctx.insert("settings", settings);
    let invalid = |e: minijinja::Error| ProfileError::Invalid {
        origin: profile.name.clone(),
        reason: template_error(name, &e),
    };
    let template = profile.env.get_template(name).map_err(invalid)?;
    let mut out = SecureBuf::with_capacity(256);
    template
        .render_captured_to(Value::from(ctx), &mut out)
        .map_err(invalid)?;
    let bytes = out.into_inner();
    let text = std::str::from_utf8(&bytes).map_err(|_| ProfileError::Invalid {
        origin: profile.name.clone(),
        reason: format!("template {name} is not UTF-8"),
    })?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

// ---- the processor ----------------------------------------------------------------------------

/// Authentication with its values rendered once, at start.
#[derive(Debug)]
enum Auth {
    None,
    Basic {
        username: SecretText,
        password: SecretText,
    },
    Bearer(SecretText),
    Header {
        name: HeaderName,
        value: SecretText,
    },
    Cybersource(signature::CybersourceKey),
}

/// A request as it will be sent (or shown, masked). The body zeroizes when dropped.
pub struct BuiltRequest {
    pub method: reqwest::Method,
    pub url: reqwest::Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for BuiltRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One operation's request parts: the sale's, or a lookup's or reversal's.
struct OpRef<'a> {
    body: &'a str,
    method: &'a reqwest::Method,
    path: &'a str,
    encoding: Encoding,
    headers: &'a [HeaderName],
    header_template: &'a dyn Fn(&str) -> String,
    idempotency_header: Option<&'a HeaderName>,
}

/// Sends charges as a profile describes.
#[derive(Debug)]
pub struct ProfileProcessor {
    client: reqwest::Client,
    cfg: ProfileConfig,
    auth: Auth,
}

fn sensitive_header(value: &str) -> Result<HeaderValue, ProcessorError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ProcessorError::BadResponse("a profile header is not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// One auth scheme's values rendered from `settings`; `prefix` names its templates
/// (`auth`, `auth.choices.basic`).
fn auth_of(cfg: &ProfileConfig, decl: &AuthDecl, prefix: &str) -> Result<Auth, ProfileError> {
    let render = |field: &str| cfg.render_plain(&format!("{prefix}.{field}"), Mode::Send);
    let secret = |field: &str| -> Result<SecretText, ProfileError> {
        Ok(SecretText::from(render(field)?.to_string()))
    };
    let invalid = |reason: String| ProfileError::Invalid {
        origin: cfg.profile.name.clone(),
        reason,
    };
    Ok(match decl {
        AuthDecl::None => Auth::None,
        AuthDecl::Basic { .. } => Auth::Basic {
            username: secret("username")?,
            password: secret("password")?,
        },
        AuthDecl::Bearer { .. } => Auth::Bearer(secret("token")?),
        AuthDecl::Header { .. } => {
            let name = render("name")?;
            Auth::Header {
                name: HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(format!("{prefix}.name: `{}` is not a header name", *name))
                })?,
                value: secret("value")?,
            }
        }
        AuthDecl::CybersourceSignature { .. } => {
            let key = secret("secret")?;
            Auth::Cybersource(
                signature::CybersourceKey::new(
                    render("merchant_id")?.to_string(),
                    render("key_id")?.to_string(),
                    key.expose(),
                )
                .map_err(invalid)?,
            )
        }
        AuthDecl::Setting { .. } => {
            return Err(invalid(format!(
                "{prefix}: a choice cannot be chosen by a setting"
            )))
        }
    })
}

impl ProfileProcessor {
    pub fn new(
        cfg: ProfileConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProfileError> {
        let auth = match &cfg.profile.auth {
            AuthDecl::Setting { setting, choices } => {
                let chosen = cfg
                    .settings
                    .get(setting)
                    .and_then(|v| v.as_ref())
                    .map(|v| v.expose().trim().to_owned())
                    .unwrap_or_default();
                let decl = choices.get(&chosen).ok_or_else(|| ProfileError::Invalid {
                    origin: cfg.profile.name.clone(),
                    reason: format!(
                        "{}: `{chosen}` is not one of {}",
                        setting_variable(setting),
                        choices.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                })?;
                auth_of(&cfg, decl, &format!("auth.choices.{chosen}"))?
            }
            decl => auth_of(&cfg, decl, "auth")?,
        };
        // TLS certificates are always verified (PCI DSS 4.2.1). Redirects are not followed:
        // card data goes to the configured URL and nowhere else.
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProfileError::Invalid {
                origin: cfg.profile.name.clone(),
                reason: format!("cannot set up the HTTP client: {e}"),
            })?;
        Ok(Self { client, cfg, auth })
    }

    pub fn config(&self) -> &ProfileConfig {
        &self.cfg
    }

    /// The sale request for `req`: real values in [`Mode::Send`]; card data, secrets and auth
    /// masked in [`Mode::Masked`].
    pub fn build(&self, req: &ProcessorRequest<'_>, mode: Mode) -> Result<BuiltRequest, String> {
        let profile = &self.cfg.profile;
        let sale = OpRef {
            body: BODY,
            method: &profile.method,
            path: &profile.path,
            encoding: profile.encoding,
            headers: &profile.headers,
            header_template: &|name| header_template(name),
            idempotency_header: profile.idempotency_header.as_ref(),
        };
        self.build_op(req, mode, &sale)
    }

    fn build_op(
        &self,
        req: &ProcessorRequest<'_>,
        mode: Mode,
        op: &OpRef<'_>,
    ) -> Result<BuiltRequest, String> {
        let profile = &self.cfg.profile;
        let ctx = template::request_context(req, self.cfg.settings_value(mode), mode);
        let render = |name: &str, capacity: usize| -> Result<Zeroizing<Vec<u8>>, String> {
            let template = profile
                .env
                .get_template(name)
                .map_err(|e| template_error(name, &e))?;
            let mut out = SecureBuf::with_capacity(capacity);
            template
                .render_captured_to(ctx.clone(), &mut out)
                .map_err(|e| template_error(name, &e))?;
            Ok(out.into_inner())
        };
        let rendered = render(op.body, 4096)?;
        // The body template must render JSON; a form body is that JSON flattened.
        let parsed = template::WipedJson(
            serde_json::from_slice(&rendered)
                .map_err(|e| format!("template {} did not render JSON: {e}", op.body))?,
        );
        let (body, content_type) = match op.encoding {
            Encoding::Json => (rendered, "application/json"),
            Encoding::Form => (
                template::form_encode(&parsed.0).map_err(str::to_owned)?,
                "application/x-www-form-urlencoded",
            ),
        };
        drop(parsed);
        let url = if op.path.is_empty() {
            // The base URL is the endpoint itself.
            self.cfg.base_url.clone()
        } else {
            let url = format!(
                "{}{}",
                self.cfg.base_url.as_str().trim_end_matches('/'),
                op.path
            );
            reqwest::Url::parse(&url).map_err(|e| format!("URL `{url}`: {e}"))?
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let mut has_content_type = false;
        for name in op.headers {
            let value = render(&(op.header_template)(name.as_str()), 128)?;
            let value =
                std::str::from_utf8(&value).map_err(|_| format!("header {name} is not UTF-8"))?;
            has_content_type |= *name == CONTENT_TYPE;
            headers.push((
                name.clone(),
                sensitive_header(value.trim()).map_err(|e| format!("header {name}: {e}"))?,
            ));
        }
        if !has_content_type {
            headers.push((CONTENT_TYPE, HeaderValue::from_static(content_type)));
        }
        if let Some(h) = op.idempotency_header {
            headers.push((
                h.clone(),
                HeaderValue::from_str(req.idempotency_key)
                    .map_err(|_| "the idempotency key is not a header value".to_owned())?,
            ));
        }
        let masked = || HeaderValue::from_static("********");
        let secret = |s: &SecretText| match mode {
            Mode::Send => sensitive_header(s.expose()).map_err(|e| e.to_string()),
            Mode::Masked => Ok(masked()),
        };
        use base64::Engine as _;
        match &self.auth {
            Auth::None => {}
            Auth::Basic { username, password } => {
                let mut pair = Zeroizing::new(String::new());
                pair.push_str(username.expose());
                pair.push(':');
                pair.push_str(password.expose());
                let encoded = Zeroizing::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                ));
                let value = match mode {
                    Mode::Send => sensitive_header(&encoded).map_err(|e| e.to_string())?,
                    Mode::Masked => HeaderValue::from_static("Basic ********"),
                };
                headers.push((reqwest::header::AUTHORIZATION, value));
            }
            Auth::Bearer(token) => {
                let value = match mode {
                    Mode::Send => {
                        sensitive_header(&Zeroizing::new(format!("Bearer {}", token.expose())))
                            .map_err(|e| e.to_string())?
                    }
                    Mode::Masked => HeaderValue::from_static("Bearer ********"),
                };
                headers.push((reqwest::header::AUTHORIZATION, value));
            }
            Auth::Header { name, value } => headers.push((name.clone(), secret(value)?)),
            Auth::Cybersource(key) => {
                let host = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_owned(),
                };
                let target = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_owned(),
                };
                for (name, value) in signature::headers(
                    key,
                    op.method.as_str(),
                    &host,
                    &target,
                    &signature::http_date(),
                    &body,
                ) {
                    let value = if name == "signature" && mode == Mode::Masked {
                        HeaderValue::from_static("keyid=\"********\", algorithm=\"HmacSHA256\", headers=\"host date request-target digest v-c-merchant-id\", signature=\"********\"")
                    } else {
                        HeaderValue::from_str(&value).map_err(|_| format!("header {name}"))?
                    };
                    headers.push((HeaderName::from_static(name), value));
                }
            }
        }
        Ok(BuiltRequest {
            method: op.method.clone(),
            url,
            headers,
            body,
        })
    }

    /// Sends `req`; the HTTP status and the reply as read, or the failure.
    async fn exchange(
        &self,
        req: &ProcessorRequest<'_>,
    ) -> Result<(u16, Result<ProcessorReply, ProcessorError>), ProcessorError> {
        let built = match self.build(req, Mode::Send) {
            Ok(built) => built,
            Err(reason) => {
                // Nothing was sent: a definitive failure, not an unknown outcome.
                tracing::error!(profile = %self.cfg.profile.name, %reason, "the processor profile could not build the request");
                return Ok((
                    0,
                    Ok(ProcessorReply {
                        charge_id: None,
                        error_code: Some("processor_profile_error".into()),
                        error_message: Some(
                            "The processor profile could not build this request; nothing was sent."
                                .into(),
                        ),
                        parameters: serde_json::Map::new(),
                        network_transaction_id: None,
                    }),
                ));
            }
        };
        let (status, body) = self.send(built, req.timeout).await?;
        let (pan, cvv, account) = known_values(req.method);
        let known: Vec<&str> = [pan, cvv, account].into_iter().flatten().collect();
        let reply = reply::read(
            &self.cfg.profile.reply,
            &self.cfg.profile.reply_env,
            status,
            &body,
            &known,
        );
        if let Ok(ProcessorReply {
            error_code: Some(code),
            ..
        }) = &reply
        {
            if code == super::AUTH_FAILED || code == super::REJECTED {
                // A definite failure a person must act on (credentials, a profile or request the
                // processor does not accept): not an unknown outcome, never retried as one.
                tracing::warn!(
                    profile = %self.cfg.profile.name,
                    http_status = status,
                    error_code = %code,
                    "the payment processor refused the request"
                );
            }
        }
        Ok((status, reply))
    }

    /// Sends a built request within `timeout`; the status and the body, read while it streams
    /// up to the limit. A 5xx, a timeout or a broken exchange is a failure.
    async fn send(
        &self,
        built: BuiltRequest,
        timeout: Duration,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), ProcessorError> {
        let mut request = self
            .client
            .request(built.method, built.url)
            .timeout(timeout);
        for (name, value) in built.headers {
            request = request.header(name, value);
        }
        // The body holds card data; the buffer is zeroized when the HTTP client drops it.
        let request = request.body(Bytes::from_owner(built.body));
        let mut response = request.send().await.map_err(|e| classify(&e))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProcessorError::ServerError(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(ProcessorError::BadResponse("answer too large"));
        }
        // Read while it streams and stop at the limit; the answer may echo card data.
        let mut body = SecureBuf::with_capacity(8 * 1024);
        while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ProcessorError::BadResponse("answer too large"));
            }
            body.push(&chunk);
        }
        Ok((status.as_u16(), body.into_inner()))
    }

    /// Sends `req` and returns the HTTP status beside the reply (`payvault processor check`).
    pub async fn probe(
        &self,
        req: &ProcessorRequest<'_>,
    ) -> Result<(u16, Result<ProcessorReply, ProcessorError>), ProcessorError> {
        self.exchange(req).await
    }
}

fn known_values(method: &PaymentMethod) -> (Option<&str>, Option<&str>, Option<&str>) {
    match method {
        PaymentMethod::Card(c) => (
            Some(c.number.digits()),
            c.cvv.as_ref().map(|v| v.digits()),
            None,
        ),
        PaymentMethod::Bank(b) => (None, None, Some(b.account.digits())),
    }
}

fn classify(err: &reqwest::Error) -> ProcessorError {
    if err.is_timeout() {
        ProcessorError::Timeout
    } else if err.is_connect() {
        ProcessorError::Unreachable
    } else {
        // The connection broke after the request may have been sent.
        ProcessorError::BadResponse("connection failed during the exchange")
    }
}

impl Processor for ProfileProcessor {
    fn charge<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>> {
        Box::pin(async move { self.exchange(req).await.and_then(|(_, reply)| reply) })
    }

    fn resend_safety(&self) -> IdempotencyStrategy {
        self.cfg.profile.idempotency
    }

    fn lookup<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Lookup, ProcessorError>> {
        Box::pin(self.lookup_attempt(req))
    }

    fn reverse<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Reversal, ProcessorError>> {
        Box::pin(self.reverse_attempt(req))
    }

    fn recovery_delay(&self) -> Duration {
        let profile = &self.cfg.profile;
        match profile.idempotency {
            IdempotencyStrategy::Lookup => profile.lookup.as_ref().map(|op| op.not_before),
            IdempotencyStrategy::Reversal => profile.reversal.as_ref().map(|op| op.not_before),
            _ => None,
        }
        .unwrap_or_default()
    }

    fn name(&self) -> &str {
        &self.cfg.profile.name
    }

    fn merchant_initiated_without_network_transaction_id(&self) -> bool {
        self.cfg.profile.merchant_initiated_without_ntid
    }
}

#[cfg(test)]
mod tests;

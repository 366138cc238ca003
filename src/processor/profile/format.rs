//! The profile format: the TOML file's shape, its validation, and the compiled [`Profile`] whose
//! templates and reply expressions all compiled at load (errors name the template and line).

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use reqwest::header::HeaderName;
use serde::Deserialize;

use super::template;

/// The profiles compiled into the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("stripe", include_str!("../profiles/stripe.toml")),
    ("checkout", include_str!("../profiles/checkout.toml")),
    ("adyen", include_str!("../profiles/adyen.toml")),
    (
        "authorizenet",
        include_str!("../profiles/authorizenet.toml"),
    ),
    ("nmi", include_str!("../profiles/nmi.toml")),
    ("cybersource", include_str!("../profiles/cybersource.toml")),
    ("generic", include_str!("../profiles/generic.toml")),
];

/// Variable names a setting may not take: payvault reads them for other purposes.
pub(super) const RESERVED_SETTINGS: &[&str] = &[
    "url",
    "profile",
    "environment",
    "connect_timeout_ms",
    "timeout_ms",
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("processor profile {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("processor profile {profile}: {variable} is required ({description})")]
    MissingSetting {
        profile: String,
        variable: String,
        description: String,
    },
}

// ---- the file format --------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileFile {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    /// Absent: the profile has no URL of its own and `PAYVAULT_PROCESSOR_URL` is required.
    pub(super) urls: Option<Urls>,
    #[serde(default)]
    pub(super) settings: BTreeMap<String, SettingDecl>,
    #[serde(default)]
    pub(super) auth: AuthDecl,
    #[serde(default)]
    pub(super) idempotency: IdempotencyDecl,
    pub(super) operations: Operations,
    #[serde(default)]
    pub(super) test: TestDecl,
    #[serde(default)]
    pub(super) stored_credential: StoredCredentialDecl,
}

/// `[stored_credential]`: merchant-initiated charges of stored tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredCredentialDecl {
    /// Whether the sale template handles a merchant-initiated charge without a network
    /// transaction id from this processor (`previous_network_transaction_id` empty). When
    /// false, payvault refuses such a charge before sending anything, saying why.
    #[serde(default)]
    pub(super) without_network_transaction_id: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Urls {
    pub(super) test: String,
    pub(super) live: String,
}

/// A setting the merchant supplies as `PAYVAULT_PROCESSOR_<NAME>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingDecl {
    /// Also readable from `_FILE`; masked by `payvault processor render`.
    #[serde(default)]
    pub secret: bool,
    #[serde(default = "yes")]
    pub required: bool,
    pub default: Option<String>,
    #[serde(default)]
    pub description: String,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum AuthDecl {
    #[default]
    None,
    Basic {
        username: String,
        #[serde(default)]
        password: String,
    },
    Bearer {
        token: String,
    },
    Header {
        /// A template over `settings`, like the value; rendered and checked at start.
        name: String,
        value: String,
    },
    CybersourceSignature {
        merchant_id: String,
        key_id: String,
        secret: String,
    },
    /// One of `choices`, picked at start by the value of the setting `setting` (the `generic`
    /// profile's `PAYVAULT_PROCESSOR_AUTH`). A choice may not itself be a `setting` scheme.
    Setting {
        setting: String,
        choices: BTreeMap<String, AuthDecl>,
    },
}

/// How a re-send after an unknown outcome is made safe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyStrategy {
    /// The processor deduplicates on a header carrying payvault's idempotency key.
    Header,
    /// The processor rejects an identical request within a time window (Authorize.net, NMI).
    DuplicateWindow,
    /// The outcome must be looked up by reference before re-sending.
    Lookup,
    /// An unknown outcome is undone (timeout reversal/void) before re-sending (CyberSource).
    Reversal,
    /// Nothing makes a re-send safe.
    #[default]
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdempotencyDecl {
    #[serde(default)]
    pub(super) strategy: IdempotencyStrategy,
    pub(super) header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Operations {
    pub(super) sale: OperationDecl,
    /// For strategy `lookup`: asks what became of an earlier attempt, by payvault's reference.
    pub(super) lookup: Option<RecoveryDecl<LookupReplySpec>>,
    /// For strategy `reversal`: undoes an earlier attempt (a timeout reversal or void).
    pub(super) reversal: Option<RecoveryDecl<ReversalReplySpec>>,
}

/// `[operations.lookup]` / `[operations.reversal]`: a request like the sale's (its templates see
/// the same values, with `idempotency_key` the reference of the attempt concerned) and how to
/// read its answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecoveryDecl<R> {
    #[serde(default = "post")]
    pub(super) method: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) encoding: Encoding,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: String,
    /// How long after the earlier attempt was sent the processor may be asked (CyberSource asks
    /// for 60 s before a timeout reversal, so that it cannot overtake the attempt it undoes).
    /// A retry sooner is answered as unknown without calling the processor.
    #[serde(default)]
    pub(super) not_before_seconds: u64,
    pub(super) reply: R,
}

/// `[operations.lookup.reply]`. `found` and `not_found` read the whole answer; an answer that is
/// neither (an error, several matches, a format not understood) leaves the outcome unknown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LookupReplySpec {
    #[serde(default)]
    pub(super) format: ReplyFormat,
    /// True when the processor has exactly one transaction of the earlier attempt.
    pub(super) found: String,
    /// True when it has none: nothing was charged, so the sale may be sent.
    pub(super) not_found: String,
    /// Dotted path of the part of the answer describing that transaction, which
    /// `[operations.lookup.reply.attempt]` reads as `reply` (the whole answer when absent).
    pub(super) record: Option<String>,
    /// How to read the transaction found, as `[operations.sale.reply]` reads a sale's answer
    /// (its `format` is not used).
    pub(super) attempt: ReplySpec,
}

/// `[operations.reversal.reply]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReversalReplySpec {
    #[serde(default)]
    pub(super) format: ReplyFormat,
    /// True only when the processor confirms that nothing of the earlier attempt stands charged
    /// (reversed or voided). Anything else leaves the outcome unknown.
    pub(super) reversed: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Encoding {
    #[default]
    Json,
    Form,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OperationDecl {
    #[serde(default = "post")]
    pub(super) method: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) encoding: Encoding,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: String,
    pub(super) reply: ReplySpec,
}

pub(super) fn post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReplyFormat {
    #[default]
    Json,
    Form,
    /// XML (NMI's query API), read as `xml.rs` describes.
    Xml,
}

/// `[operations.*.reply]`: expressions over `reply` (the parsed body) and `http.status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplySpec {
    #[serde(default)]
    pub(super) format: ReplyFormat,
    pub(super) approved: String,
    pub(super) charge_id: String,
    pub(super) decline_code: String,
    pub(super) decline_message: Option<String>,
    pub(super) network_transaction_id: Option<String>,
    /// True when the processor refused payvault's credentials: `processor_auth_failed`, a
    /// definite failure. Default: HTTP 401 or 403.
    #[serde(default = "auth_failed_default")]
    pub(super) auth_failed: String,
    /// True when the processor refused the request itself (invalid, rate-limited...; nothing was
    /// charged, and it is not a card decline): `processor_rejected`, a definite failure.
    /// Default: never.
    #[serde(default = "never")]
    pub(super) rejected: String,
    /// Dotted paths of the answer passed back to Twilio as `parameters` (`a.b` as `a_b`); a path
    /// ending in `.*` passes each scalar member of that object under its own name.
    #[serde(default)]
    pub(super) parameters: Vec<String>,
}

fn auth_failed_default() -> String {
    "http.status in [401, 403]".into()
}

fn never() -> String {
    "false".into()
}

/// `[test]`: the processor's documented test card, used by `payvault processor render`/`check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestDecl {
    pub(super) card: Option<String>,
    pub(super) amount: Option<String>,
    pub(super) currency: Option<String>,
}

// ---- a compiled profile -----------------------------------------------------------------------

/// A parsed profile whose templates and expressions all compiled.
pub struct Profile {
    pub name: String,
    pub description: String,
    pub settings: BTreeMap<String, SettingDecl>,
    pub idempotency: IdempotencyStrategy,
    /// `[stored_credential] without_network_transaction_id`.
    pub merchant_initiated_without_ntid: bool,
    pub(super) idempotency_header: Option<HeaderName>,
    pub(super) auth: AuthDecl,
    pub(super) method: reqwest::Method,
    pub(super) path: String,
    pub(super) encoding: Encoding,
    pub(super) headers: Vec<HeaderName>,
    pub(super) reply: ReplySpec,
    pub(super) test: TestDecl,
    pub(super) lookup: Option<RecoveryOp<LookupReplySpec>>,
    pub(super) reversal: Option<RecoveryOp<ReversalReplySpec>>,
    /// Request templates (`urls.*`, `auth.*`, `operations.sale.*`).
    pub(super) env: Environment<'static>,
    /// Reply expressions: undefined lookups chain to undefined.
    pub(super) reply_env: Environment<'static>,
}

/// A compiled `[operations.lookup]` or `[operations.reversal]`; its templates are
/// `operations.<name>.body` and `operations.<name>.headers.<header>`.
pub(super) struct RecoveryOp<R> {
    pub(super) name: &'static str,
    pub(super) method: reqwest::Method,
    pub(super) path: String,
    pub(super) encoding: Encoding,
    pub(super) headers: Vec<HeaderName>,
    pub(super) not_before: std::time::Duration,
    pub(super) reply: R,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

pub(super) const BODY: &str = "operations.sale.body";

pub(super) fn header_template(name: &str) -> String {
    format!("operations.sale.headers.{name}")
}

impl Profile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Option<Result<Self, ProfileError>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::parse(text, &format!("`{n}` (built in)")))
    }

    /// Reads a profile file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ProfileError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Invalid {
            origin: origin.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and compiles a profile; `origin` names it in errors. A template or expression that
    /// does not compile is refused here, with its name and line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let file: ProfileFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for name in file.settings.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(format!(
                    "setting `{name}`: names are lower-case letters, digits and _"
                )));
            }
            if RESERVED_SETTINGS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "setting `{name}` would be read from a variable payvault uses for something else"
                )));
            }
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        // The body renders JSON: every printed value is JSON-encoded, so free text (a
        // description, a parameter) cannot break out of its string. URLs, headers and auth
        // values are plain text.
        env.set_auto_escape_callback(|name| {
            if name.starts_with("operations.") && name.ends_with(".body") {
                AutoEscape::Json
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(template::formatter);
        env.add_filter("pan", template::pan);
        env.add_filter("cvv", template::cvv);
        env.add_filter("account", template::account);
        env.add_filter("routing", template::routing);
        env.add_filter("last4", template::last4);
        env.add_filter("bin", template::bin);
        env.add_filter("exp", template::exp);
        env.add_function("fail", template::fail);
        let mut add = |name: String, source: &str| -> Result<(), ProfileError> {
            env.add_template_owned(name.clone(), source.to_owned())
                .map_err(|e| invalid(template_error(&name, &e)))
        };
        if let Some(urls) = &file.urls {
            add("urls.test".into(), &urls.test)?;
            add("urls.live".into(), &urls.live)?;
        }
        match &file.auth {
            AuthDecl::Setting { setting, choices } => {
                if !file.settings.contains_key(setting) {
                    return Err(invalid(format!(
                        "auth: setting `{setting}` is not declared in [settings]"
                    )));
                }
                for (choice, decl) in choices {
                    if matches!(decl, AuthDecl::Setting { .. }) {
                        return Err(invalid(format!(
                            "auth.choices.{choice}: a choice cannot itself be chosen by a setting"
                        )));
                    }
                    add_auth(&mut add, decl, &format!("auth.choices.{choice}"))?;
                }
            }
            decl => add_auth(&mut add, decl, "auth")?,
        }
        let sale = file.operations.sale;
        add(BODY.into(), &sale.body)?;
        let mut headers = Vec::new();
        for (name, value) in &sale.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(format!(
                    "operations.sale.headers: `{name}` is not a header name"
                ))
            })?;
            add(header_template(header.as_str()), value)?;
            headers.push(header);
        }
        let method = reqwest::Method::from_bytes(sale.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("operations.sale.method `{}`", sale.method)))?;
        // An empty path: the base URL is the endpoint itself (the `generic` profile).
        if !sale.path.is_empty() && !sale.path.starts_with('/') {
            return Err(invalid("operations.sale.path must start with /".into()));
        }
        let mut reply_env = Environment::new();
        reply_env.set_undefined_behavior(UndefinedBehavior::Chainable);
        let lookup = match file.operations.lookup {
            Some(decl) => {
                let op = compile_op("lookup", decl, &mut add, &invalid)?;
                let r = &op.reply;
                let mut expressions = vec![("found", &r.found), ("not_found", &r.not_found)];
                let a = &r.attempt;
                expressions.extend([
                    ("attempt.approved", &a.approved),
                    ("attempt.charge_id", &a.charge_id),
                    ("attempt.decline_code", &a.decline_code),
                ]);
                expressions.extend(
                    a.decline_message
                        .iter()
                        .map(|m| ("attempt.decline_message", m)),
                );
                expressions.extend(
                    a.network_transaction_id
                        .iter()
                        .map(|m| ("attempt.network_transaction_id", m)),
                );
                for (key, source) in expressions {
                    reply_env.compile_expression(source).map_err(|e| {
                        invalid(template_error(
                            &format!("operations.lookup.reply.{key}"),
                            &e,
                        ))
                    })?;
                }
                Some(op)
            }
            None => None,
        };
        let reversal = match file.operations.reversal {
            Some(decl) => {
                let op = compile_op("reversal", decl, &mut add, &invalid)?;
                reply_env
                    .compile_expression(&op.reply.reversed)
                    .map_err(|e| {
                        invalid(template_error("operations.reversal.reply.reversed", &e))
                    })?;
                Some(op)
            }
            None => None,
        };
        let strategy = file.idempotency.strategy;
        match (strategy, lookup.is_some(), reversal.is_some()) {
            (IdempotencyStrategy::Lookup, false, _) => {
                return Err(invalid(
                    "idempotency: strategy `lookup` needs [operations.lookup]".into(),
                ))
            }
            (IdempotencyStrategy::Reversal, _, false) => {
                return Err(invalid(
                    "idempotency: strategy `reversal` needs [operations.reversal]".into(),
                ))
            }
            (s, true, _) if s != IdempotencyStrategy::Lookup => {
                return Err(invalid(
                    "[operations.lookup] only goes with idempotency strategy `lookup`".into(),
                ))
            }
            (s, _, true) if s != IdempotencyStrategy::Reversal => {
                return Err(invalid(
                    "[operations.reversal] only goes with idempotency strategy `reversal`".into(),
                ))
            }
            _ => {}
        }
        let reply = sale.reply;
        let expressions = [
            ("approved", Some(&reply.approved)),
            ("charge_id", Some(&reply.charge_id)),
            ("decline_code", Some(&reply.decline_code)),
            ("decline_message", reply.decline_message.as_ref()),
            (
                "network_transaction_id",
                reply.network_transaction_id.as_ref(),
            ),
            ("auth_failed", Some(&reply.auth_failed)),
            ("rejected", Some(&reply.rejected)),
        ];
        for (key, source) in expressions {
            if let Some(source) = source {
                reply_env.compile_expression(source).map_err(|e| {
                    invalid(template_error(&format!("operations.sale.reply.{key}"), &e))
                })?;
            }
        }
        let idempotency_header = match (file.idempotency.strategy, &file.idempotency.header) {
            (IdempotencyStrategy::Header, Some(h)) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| invalid(format!("idempotency.header `{h}`")))?,
            ),
            (IdempotencyStrategy::Header, None) => {
                return Err(invalid(
                    "idempotency: strategy `header` needs `header`".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "idempotency: `header` only goes with strategy `header`".into(),
                ))
            }
            (_, None) => None,
        };
        Ok(Self {
            name: file.name,
            description: file.description,
            settings: file.settings,
            idempotency: file.idempotency.strategy,
            merchant_initiated_without_ntid: file.stored_credential.without_network_transaction_id,
            idempotency_header,
            auth: file.auth,
            method,
            path: sale.path,
            encoding: sale.encoding,
            headers,
            reply,
            test: file.test,
            lookup,
            reversal,
            env,
            reply_env,
        })
    }

    /// The documented test card of this processor, for `payvault processor render`/`check`.
    pub fn test_card(&self) -> &str {
        self.test.card.as_deref().unwrap_or("4111111111111111")
    }

    /// The test amount and currency (`10.00 USD` unless the profile says otherwise).
    pub fn test_amount(&self) -> (&str, &str) {
        (
            self.test.amount.as_deref().unwrap_or("10.00"),
            self.test.currency.as_deref().unwrap_or("USD"),
        )
    }
}

/// Compiles a recovery operation's templates (body and headers) into the environment.
fn compile_op<R>(
    name: &'static str,
    decl: RecoveryDecl<R>,
    add: &mut impl FnMut(String, &str) -> Result<(), ProfileError>,
    invalid: &impl Fn(String) -> ProfileError,
) -> Result<RecoveryOp<R>, ProfileError> {
    add(format!("operations.{name}.body"), &decl.body)?;
    let mut headers = Vec::new();
    for (header, value) in &decl.headers {
        let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            invalid(format!(
                "operations.{name}.headers: `{header}` is not a header name"
            ))
        })?;
        add(op_header_template(name, header.as_str()), value)?;
        headers.push(header);
    }
    let method = reqwest::Method::from_bytes(decl.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid(format!("operations.{name}.method `{}`", decl.method)))?;
    if !decl.path.starts_with('/') {
        return Err(invalid(format!("operations.{name}.path must start with /")));
    }
    Ok(RecoveryOp {
        name,
        method,
        path: decl.path,
        encoding: decl.encoding,
        headers,
        not_before: std::time::Duration::from_secs(decl.not_before_seconds),
        reply: decl.reply,
    })
}

pub(super) fn op_header_template(op: &str, name: &str) -> String {
    format!("operations.{op}.headers.{name}")
}

/// Compiles the templates of one auth scheme under `prefix` (`auth`, `auth.choices.basic`).
fn add_auth(
    add: &mut impl FnMut(String, &str) -> Result<(), ProfileError>,
    decl: &AuthDecl,
    prefix: &str,
) -> Result<(), ProfileError> {
    let fields: Vec<(&str, &String)> = match decl {
        AuthDecl::None | AuthDecl::Setting { .. } => Vec::new(),
        AuthDecl::Basic { username, password } => {
            vec![("username", username), ("password", password)]
        }
        AuthDecl::Bearer { token } => vec![("token", token)],
        AuthDecl::Header { name, value } => vec![("name", name), ("value", value)],
        AuthDecl::CybersourceSignature {
            merchant_id,
            key_id,
            secret,
        } => vec![
            ("merchant_id", merchant_id),
            ("key_id", key_id),
            ("secret", secret),
        ],
    };
    for (field, source) in fields {
        add(format!("{prefix}.{field}"), source)?;
    }
    Ok(())
}

/// `template operations.sale.body, line 3: syntax error: unexpected end of input`.
pub(super) fn template_error(name: &str, e: &minijinja::Error) -> String {
    let what = e
        .detail()
        .map_or_else(|| e.kind().to_string(), |d| format!("{}: {d}", e.kind()));
    match e.line() {
        Some(line) => format!("template {name}, line {line}: {what}"),
        None => format!("template {name}: {what}"),
    }
}

/// The variable a setting is read from: `secret_key` -> `PAYVAULT_PROCESSOR_SECRET_KEY`.
pub fn setting_variable(name: &str) -> String {
    format!("PAYVAULT_PROCESSOR_{}", name.to_ascii_uppercase())
}

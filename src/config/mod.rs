//! Configuration from the environment (12-factor). Every secret can also come from a file named
//! by the same variable with a `_FILE` suffix, for Docker secrets. The README's configuration
//! table lists every variable read here.

use std::time::Duration;

use crate::domain::SecretText;

mod processor;
mod serve;
mod tenant_processor;

use crate::processor::profile::ProfileError;
pub use processor::{
    profile_config, selected_profile, unknown_processor_variables, ProcessorConfig,
};
pub use serve::{checked_charge_lease, DevCredential, ServeConfig, TlsFiles};
pub use tenant_processor::{
    check_tenant_processor, production_refusal as tenant_processor_production_refusal,
    tenant_processor_config,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("set either {0} or {0}_FILE, not both")]
    Both(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A processor profile's setting (`PAYVAULT_PROCESSOR_<SETTING>`), named at run time.
    #[error("{name}: {reason}")]
    Setting { name: String, reason: String },
}

/// `PAYVAULT_DEDUP`: whether tokenizing (or importing) a card the credential already vaulted
/// returns the existing token.
pub fn dedup() -> Result<bool, ConfigError> {
    match var("PAYVAULT_DEDUP")?.as_deref() {
        None | Some("off") | Some("false") => Ok(false),
        Some("on") | Some("true") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            name: "PAYVAULT_DEDUP",
            reason: format!("`{other}` is not on or off"),
        }),
    }
}

/// `PAYVAULT_TOKEN_TTL_DAYS`: the default lifetime of new tokens, if they have one.
pub fn default_token_ttl_days() -> Result<Option<u32>, ConfigError> {
    Ok(match parsed::<u32>("PAYVAULT_TOKEN_TTL_DAYS", 0)? {
        0 => None,
        days => Some(days),
    })
}

/// Reads a plain variable; unset and empty are the same.
pub fn var(name: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Invalid {
            name,
            reason: "not valid UTF-8".into(),
        }),
    }
}

/// Reads a secret from `NAME` or from the file named by `NAME_FILE` (trailing newline removed).
pub fn secret_var(name: &'static str) -> Result<Option<SecretText>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let direct = var(name)?;
    let file = std::env::var(&file_var).ok().filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Both(name)),
        (Some(v), None) => Ok(Some(SecretText::from(v))),
        (None, Some(path)) => read_secret_file(&file_var, &path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads the secret file named by `file_var` (every `_FILE` setting comes through here). A file
/// that group or others can read or write, or that belongs to another user than payvault's (or
/// root), is refused under production and warned about otherwise: whoever can read the master
/// key can decrypt the vault. Read into a zeroizing buffer sized once; one trailing newline
/// sequence removed. Errors name the variable and path, never the content.
pub(crate) fn read_secret_file(file_var: &str, path: &str) -> Result<SecretText, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let fail = |reason: String| ConfigError::Setting {
        name: file_var.to_owned(),
        reason,
    };
    let mut file =
        std::fs::File::open(path).map_err(|e| fail(format!("cannot read {path}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read {path}: {e}")))?;
    let mut problems = Vec::new();
    if meta.mode() & 0o077 != 0 {
        problems.push(format!(
            "{path} is accessible to group or others (mode {:04o}): `chmod 600 {path}`",
            meta.mode() & 0o7777
        ));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        problems.push(format!(
            "{path} belongs to uid {}, neither payvault's user (uid {euid}) nor root",
            meta.uid()
        ));
    }
    if !problems.is_empty() {
        if environment()? == Environment::Production {
            return Err(fail(format!(
                "{} (refused under PAYVAULT_ENV=production)",
                problems.join("; ")
            )));
        }
        for problem in &problems {
            tracing::warn!("{file_var}: {problem} (refused under PAYVAULT_ENV=production)");
        }
    }
    // Sized once (plus room for std's end-of-file probe) so no reallocation leaves a copy behind.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(
        usize::try_from(meta.len()).unwrap_or(0).saturating_add(64),
    ));
    file.read_to_end(&mut buf)
        .map_err(|e| fail(format!("cannot read {path}: {e}")))?;
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(text) => Ok(SecretText::new(text)),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            Err(fail(format!("{path} is not valid UTF-8")))
        }
    }
}

pub(crate) fn parsed<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name)? {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

/// How long audit events are kept before `payvault audit prune` may delete them
/// (`PAYVAULT_AUDIT_RETENTION_DAYS`, at least 365: PCI DSS 10.5.1 asks for 12 months).
pub fn audit_retention_days() -> Result<i64, ConfigError> {
    let days: i64 = parsed("PAYVAULT_AUDIT_RETENTION_DAYS", 365)?;
    if days < 365 {
        return Err(ConfigError::Invalid {
            name: "PAYVAULT_AUDIT_RETENTION_DAYS",
            reason: "must be at least 365 (PCI DSS 10.5.1 requires 12 months of audit history)"
                .into(),
        });
    }
    Ok(days)
}

/// How long an audit event may stay unsealed before `audit verify` fails and `/readyz` reports
/// sealing as lagging (`PAYVAULT_AUDIT_MAX_UNSEALED_SECS`, 300 by default, at least 1).
pub fn audit_max_unsealed() -> Result<Duration, ConfigError> {
    let secs: u64 = parsed("PAYVAULT_AUDIT_MAX_UNSEALED_SECS", 300)?;
    if secs == 0 {
        return Err(ConfigError::Invalid {
            name: "PAYVAULT_AUDIT_MAX_UNSEALED_SECS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

/// How long the answer to a finished request is kept for its retries
/// (`PAYVAULT_IDEMPOTENCY_RETENTION_HOURS`, 24 by default, at least 1). Twilio retries a request
/// at most 5 times, 10 s apart, so about a minute; a merchant backend may retry later. Past it a
/// retry is refused as a duplicate, never run again.
pub fn idempotency_retention(default: Duration) -> Result<Duration, ConfigError> {
    let hours: u64 = parsed(
        "PAYVAULT_IDEMPOTENCY_RETENTION_HOURS",
        default.as_secs() / 3600,
    )?;
    if hours < 1 {
        return Err(ConfigError::Invalid {
            name: "PAYVAULT_IDEMPOTENCY_RETENTION_HOURS",
            reason: "must be at least 1 (Twilio retries for about a minute; keep a margin)".into(),
        });
    }
    Ok(Duration::from_secs(hours.saturating_mul(3600)))
}

/// The database URL (`DATABASE_URL` or `DATABASE_URL_FILE`).
pub fn database_url() -> Result<SecretText, ConfigError> {
    secret_var("DATABASE_URL")?.ok_or(ConfigError::Missing("DATABASE_URL"))
}

/// Where payvault runs (`PAYVAULT_ENV`). Production refuses development conveniences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// `PAYVAULT_ENV`: `production` (the default: a server nobody marked must not accept
/// development conveniences) or `development`, which must be said (`payvault dev`, the compose
/// file and the test harness do).
pub fn environment() -> Result<Environment, ConfigError> {
    Ok(environment_setting()?.unwrap_or(Environment::Production))
}

/// `PAYVAULT_ENV` as set, `None` when unset (`payvault dev` defaults it to development).
pub fn environment_setting() -> Result<Option<Environment>, ConfigError> {
    match var("PAYVAULT_ENV")?.as_deref() {
        None => Ok(None),
        Some("development") => Ok(Some(Environment::Development)),
        Some("production") => Ok(Some(Environment::Production)),
        Some(other) => Err(ConfigError::Invalid {
            name: "PAYVAULT_ENV",
            reason: format!("`{other}` is not one of development, production"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::processor::profile::{
        setting_variable, ProcessorEnvironment, Profile, ProfileConfig,
    };

    fn config(environment: Environment, processor: ProcessorConfig) -> ServeConfig {
        ServeConfig {
            environment,
            database_url: SecretText::from("postgres://localhost/x"),
            tls: None,
            dev_connector_credential: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024,
            auth_cache_ttl: Duration::from_secs(1),
            db_max_connections: 1,
            db_acquire_timeout: Duration::from_secs(1),
            processor,
            processor_connect_timeout: Duration::from_secs(1),
            processor_timeout: Duration::from_secs(1),
            idempotency_wait: Duration::from_secs(1),
            charge_lease: Duration::from_secs(5),
            charge_heartbeat: Duration::from_secs(1),
            sandbox_slow: Duration::from_secs(1),
            trusted_proxies: String::new(),
            seal_interval: Duration::from_secs(1),
            audit_max_unsealed: Duration::from_secs(300),
            default_token_ttl_days: None,
            dedup: false,
            shutdown_grace: Duration::from_secs(1),
            idempotency_retention: Duration::from_secs(3600),
            auth_failure_audit_interval: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 1,
            admin_listen: None,
            unknown_processor_variables: Vec::new(),
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_file: None,
        }
    }

    fn generic(url: &str) -> ProcessorConfig {
        let profile = Profile::builtin("generic").unwrap().unwrap();
        ProcessorConfig::Profile(
            ProfileConfig::with_settings(profile, ProcessorEnvironment::Test, Some(url), &[])
                .unwrap(),
        )
    }

    #[test]
    fn production_refuses_development_settings() {
        let prod = Environment::Production;
        assert!(config(prod, generic("https://pay.example"))
            .production_refusals(false)
            .is_empty());
        assert!(config(prod, ProcessorConfig::None)
            .production_refusals(false)
            .is_empty());
        let refusals = config(prod, ProcessorConfig::Sandbox).production_refusals(true);
        assert_eq!(refusals.len(), 2, "{refusals:?}");
        assert!(refusals[0].contains("development master key"));
        assert!(refusals[1].contains("sandbox"));
        let refusals = config(prod, generic("http://pay.example")).production_refusals(false);
        assert!(refusals[0].contains("https"), "{refusals:?}");
        let mut with_dev_credential = config(prod, ProcessorConfig::None);
        with_dev_credential.dev_connector_credential = Some(DevCredential {
            username: "a".into(),
            password: SecretText::from("b"),
        });
        assert_eq!(with_dev_credential.production_refusals(false).len(), 1);
    }

    #[test]
    fn the_charge_heartbeat_must_be_shorter_than_the_lease() {
        let ms = Duration::from_millis;
        let defaults = ServeConfig::new(SecretText::from("postgres://localhost/x"));
        assert!(checked_charge_lease(defaults.charge_lease, defaults.charge_heartbeat).is_ok());
        assert!(
            defaults.charge_lease < defaults.idempotency_wait,
            "a retry waiting on a dead attempt sees its lease expire within the wait"
        );
        assert_eq!(
            checked_charge_lease(ms(3000), ms(500)).unwrap(),
            (ms(3000), ms(500))
        );
        for (lease, heartbeat, named) in [
            (ms(1000), ms(1000), "PAYVAULT_CHARGE_HEARTBEAT_MS"),
            (ms(1000), ms(2000), "PAYVAULT_CHARGE_HEARTBEAT_MS"),
            (ms(1000), ms(0), "PAYVAULT_CHARGE_HEARTBEAT_MS"),
            (ms(0), ms(0), "PAYVAULT_CHARGE_LEASE_MS"),
        ] {
            let err = checked_charge_lease(lease, heartbeat)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(named), "{lease:?}/{heartbeat:?}: {err}");
        }
    }

    #[test]
    fn development_allows_everything() {
        let dev = Environment::Development;
        assert!(config(dev, ProcessorConfig::Sandbox)
            .production_refusals(true)
            .is_empty());
        assert!(config(dev, generic("http://sandbox:9090"))
            .production_refusals(false)
            .is_empty());
    }

    fn stripe() -> ProcessorConfig {
        let profile = Profile::builtin("stripe").unwrap().unwrap();
        ProcessorConfig::Profile(
            ProfileConfig::with_settings(
                profile,
                ProcessorEnvironment::Test,
                None,
                &[("secret_key", "sk_test_x")],
            )
            .unwrap(),
        )
    }

    /// `PAYVAULT_PROCESSOR_<SUFFIX>`, built so that the README check (which scans `src/` for
    /// quoted names) does not take test names for variables payvault reads.
    fn v(suffix: &str) -> String {
        setting_variable(suffix)
    }

    #[test]
    fn unknown_processor_variables_are_detected() {
        let names = [
            v("secret_key"),
            v("secret_key_file"),
            v("secret_ky"),
            v("url"),
            v("timeout_ms"),
            v("connect_timeout_ms"),
            v("environment"),
            v("profile"),
            v("url_file"),
            v("auth"),
            "PAYVAULT_PROCESSOR".to_owned(),
            "PAYVAULT_LISTEN".to_owned(),
            format!("{}S", "PAYVAULT_PROCESSOR"),
            "HOME".to_owned(),
        ];
        let names = || names.iter().map(String::as_str);
        // A profile: its settings (secret ones also `_FILE`) and payvault's own are known; the
        // generic profile's are not.
        assert_eq!(
            unknown_processor_variables(names(), &stripe()),
            [v("auth"), v("secret_ky"), v("url_file")]
        );
        // The generic profile: its own variables, the secret also from a file.
        let generic_names = [
            v("auth"),
            v("username"),
            v("secret"),
            v("secret_file"),
            v("header"),
            v("secret_key"),
        ];
        assert_eq!(
            unknown_processor_variables(
                generic_names.iter().map(String::as_str),
                &generic("https://pay.example")
            ),
            [v("secret_key")]
        );
        // No processor: every setting-like variable is unknown.
        assert_eq!(
            unknown_processor_variables(names(), &ProcessorConfig::None),
            [
                v("auth"),
                v("secret_key"),
                v("secret_key_file"),
                v("secret_ky"),
                v("url_file")
            ]
        );
        // A non-secret setting is not read from `_FILE`.
        let profile = Profile::builtin("authorizenet").unwrap().unwrap();
        let plain: Vec<String> = profile
            .settings
            .iter()
            .filter(|(_, d)| !d.secret)
            .map(|(n, _)| format!("{}_FILE", v(n)))
            .collect();
        assert!(!plain.is_empty());
        let settings: Vec<(String, String)> = profile
            .settings
            .keys()
            .map(|n| (n.clone(), "x".to_owned()))
            .collect();
        let settings: Vec<(&str, &str)> = settings
            .iter()
            .map(|(n, x)| (n.as_str(), x.as_str()))
            .collect();
        let cfg = ProcessorConfig::Profile(
            ProfileConfig::with_settings(profile, ProcessorEnvironment::Test, None, &settings)
                .unwrap(),
        );
        assert_eq!(
            unknown_processor_variables(plain.iter().map(String::as_str), &cfg),
            plain
        );
    }

    #[test]
    fn production_refuses_unknown_processor_variables_by_name_only() {
        let mut cfg = config(Environment::Production, stripe());
        cfg.unknown_processor_variables = vec![v("secret_ky")];
        let refusals = cfg.production_refusals(false);
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert!(refusals[0].starts_with(&v("secret_ky")), "{refusals:?}");
        assert!(
            refusals[0].contains(&v("secret_key")),
            "the hint names the setting: {refusals:?}"
        );
        assert!(!refusals[0].contains("sk_test_x"), "{refusals:?}");
        cfg.environment = Environment::Development;
        assert!(cfg.production_refusals(false).is_empty());
        assert_eq!(cfg.unknown_processor_variable_reasons().len(), 1);
    }
}

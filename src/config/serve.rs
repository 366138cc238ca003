//! The settings of `payvault serve`: the listener, TLS, timeouts, limits and the processor,
//! read once from the environment at start.

use std::net::SocketAddr;
use std::time::Duration;

use super::processor::{environment_names, processor_config, processor_settings_hint};
use super::{
    audit_max_unsealed, database_url, dedup, default_token_ttl_days, environment,
    idempotency_retention, parsed, secret_var, unknown_processor_variables, var, ConfigError,
    Environment, ProcessorConfig,
};
use crate::domain::SecretText;

/// The certificate chain and private key (PEM files) for inbound HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

fn tls_files() -> Result<Option<TlsFiles>, ConfigError> {
    match (var("PAYVAULT_TLS_CERT")?, var("PAYVAULT_TLS_KEY")?) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        })),
        (Some(_), None) => Err(ConfigError::Missing(
            "PAYVAULT_TLS_KEY (PAYVAULT_TLS_CERT is set)",
        )),
        (None, Some(_)) => Err(ConfigError::Missing(
            "PAYVAULT_TLS_CERT (PAYVAULT_TLS_KEY is set)",
        )),
    }
}

/// `username:password` from `PAYVAULT_DEV_CONNECTOR_CREDENTIAL` (or its `_FILE`).
#[derive(Debug)]
pub struct DevCredential {
    pub username: String,
    pub password: SecretText,
}

const DEV_CREDENTIAL: &str = "PAYVAULT_DEV_CONNECTOR_CREDENTIAL";

fn dev_credential() -> Result<Option<DevCredential>, ConfigError> {
    let Some(text) = secret_var("PAYVAULT_DEV_CONNECTOR_CREDENTIAL")? else {
        return Ok(None);
    };
    // Reasons never quote the value: it holds a password.
    let invalid = |reason: &str| ConfigError::Invalid {
        name: DEV_CREDENTIAL,
        reason: reason.into(),
    };
    let (username, password) = text
        .expose()
        .split_once(':')
        .ok_or_else(|| invalid("must be username:password"))?;
    if username.is_empty() {
        return Err(invalid("the username is empty"));
    }
    if password.chars().count() < 16 {
        return Err(invalid("the password must be at least 16 characters"));
    }
    Ok(Some(DevCredential {
        username: username.to_owned(),
        password: SecretText::from(password.to_owned()),
    }))
}

/// Checks a charge attempt's lease and heartbeat: both positive, the heartbeat shorter than the
/// lease (or a live attempt's lease would lapse between renewals and a retry could take over a
/// charge still with the processor).
pub fn checked_charge_lease(
    lease: Duration,
    heartbeat: Duration,
) -> Result<(Duration, Duration), ConfigError> {
    if lease.is_zero() {
        return Err(ConfigError::Invalid {
            name: "PAYVAULT_CHARGE_LEASE_MS",
            reason: "must be positive".into(),
        });
    }
    if heartbeat.is_zero() || heartbeat >= lease {
        return Err(ConfigError::Invalid {
            name: "PAYVAULT_CHARGE_HEARTBEAT_MS",
            reason: format!(
                "must be positive and shorter than PAYVAULT_CHARGE_LEASE_MS ({} ms)",
                lease.as_millis()
            ),
        });
    }
    Ok((lease, heartbeat))
}

/// Settings of `payvault serve`. `Debug` shows no secret: the URL and key ring redact themselves.
#[derive(Debug)]
pub struct ServeConfig {
    pub environment: Environment,
    pub database_url: SecretText,
    /// Inbound HTTPS; plain HTTP when `None` (TLS terminated by a proxy).
    pub tls: Option<TlsFiles>,
    /// A connector credential to create at start (`PAYVAULT_DEV_CONNECTOR_CREDENTIAL`,
    /// development only).
    pub dev_connector_credential: Option<DevCredential>,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub auth_cache_ttl: Duration,
    pub db_max_connections: u32,
    /// How long a request waits for a database connection (`PAYVAULT_DB_ACQUIRE_TIMEOUT_MS`).
    pub db_acquire_timeout: Duration,
    pub processor: ProcessorConfig,
    pub processor_connect_timeout: Duration,
    pub processor_timeout: Duration,
    pub idempotency_wait: Duration,
    /// How long a charge attempt's claim lasts without renewal (`PAYVAULT_CHARGE_LEASE_MS`).
    pub charge_lease: Duration,
    /// How often a live attempt renews it (`PAYVAULT_CHARGE_HEARTBEAT_MS`), shorter than the lease.
    pub charge_heartbeat: Duration,
    pub sandbox_slow: Duration,
    pub trusted_proxies: String,
    pub seal_interval: Duration,
    /// The sealing lag bound (`PAYVAULT_AUDIT_MAX_UNSEALED_SECS`, [`audit_max_unsealed`]).
    pub audit_max_unsealed: Duration,
    pub default_token_ttl_days: Option<u32>,
    pub dedup: bool,
    pub shutdown_grace: Duration,
    /// How long a finished request's answer is kept for its retries
    /// (`PAYVAULT_IDEMPOTENCY_RETENTION_HOURS`, [`idempotency_retention`]).
    pub idempotency_retention: Duration,
    /// Abuse resistance (issue 13): failed-login audit aggregation interval, connection limits,
    /// and the admin listener (`/metrics`, `/openapi.json`; off when `None`).
    pub auth_failure_audit_interval: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub admin_listen: Option<SocketAddr>,
    /// `PAYVAULT_PROCESSOR_*` variables set in the environment that the selected processor does
    /// not read (names only, never values): most likely a misspelt setting
    /// ([`unknown_processor_variables`]). Production refuses them; development warns.
    pub unknown_processor_variables: Vec<String>,
    /// Signed audit checkpoints (issue 14): how often each instance publishes one
    /// (`PAYVAULT_AUDIT_CHECKPOINT_SECS`) and the append-only file it also goes to
    /// (`PAYVAULT_AUDIT_CHECKPOINT_FILE`; the JSON log stream always gets it).
    pub checkpoint_interval: Duration,
    pub checkpoint_file: Option<std::path::PathBuf>,
}

impl ServeConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with_database(database_url()?)
    }

    /// The defaults: what `payvault serve` runs with when no variable says otherwise (the README's
    /// configuration table lists the same values). Tests and embedding programs start here.
    pub fn new(database_url: SecretText) -> Self {
        Self {
            environment: Environment::Production,
            database_url,
            tls: None,
            dev_connector_credential: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 16 * 1024,
            auth_cache_ttl: Duration::from_secs(60),
            db_max_connections: 16,
            db_acquire_timeout: crate::store::DEFAULT_ACQUIRE_TIMEOUT,
            processor: ProcessorConfig::None,
            processor_connect_timeout: Duration::from_millis(3_000),
            processor_timeout: Duration::from_millis(15_000),
            idempotency_wait: Duration::from_millis(9_000),
            charge_lease: Duration::from_millis(5_000),
            charge_heartbeat: Duration::from_millis(1_000),
            sandbox_slow: Duration::from_millis(12_000),
            trusted_proxies: String::new(),
            seal_interval: Duration::from_millis(200),
            audit_max_unsealed: Duration::from_secs(300),
            default_token_ttl_days: None,
            dedup: false,
            shutdown_grace: Duration::from_secs(30),
            idempotency_retention: Duration::from_secs(24 * 3600),
            auth_failure_audit_interval: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            admin_listen: None,
            unknown_processor_variables: Vec::new(),
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_file: None,
        }
    }

    /// Everything but the database URL from the environment (`payvault dev` has its own).
    pub fn from_env_with_database(database_url: SecretText) -> Result<Self, ConfigError> {
        let d = Self::new(database_url);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let processor = processor_config()?;
        let names = environment_names();
        let unknown_processor_variables =
            unknown_processor_variables(names.iter().map(String::as_str), &processor);
        let (charge_lease, charge_heartbeat) = checked_charge_lease(
            Duration::from_millis(parsed("PAYVAULT_CHARGE_LEASE_MS", millis(d.charge_lease))?),
            Duration::from_millis(parsed(
                "PAYVAULT_CHARGE_HEARTBEAT_MS",
                millis(d.charge_heartbeat),
            )?),
        )?;
        Ok(Self {
            charge_lease,
            charge_heartbeat,
            environment: environment()?,
            tls: tls_files()?,
            dev_connector_credential: dev_credential()?,
            listen: parsed("PAYVAULT_LISTEN", d.listen)?,
            max_body_bytes: parsed("PAYVAULT_MAX_BODY_BYTES", d.max_body_bytes)?,
            auth_cache_ttl: Duration::from_secs(parsed(
                "PAYVAULT_AUTH_CACHE_TTL_SECS",
                d.auth_cache_ttl.as_secs(),
            )?),
            db_max_connections: parsed("PAYVAULT_DB_MAX_CONNECTIONS", d.db_max_connections)?,
            db_acquire_timeout: Duration::from_millis(parsed(
                "PAYVAULT_DB_ACQUIRE_TIMEOUT_MS",
                millis(d.db_acquire_timeout),
            )?),
            processor,
            unknown_processor_variables,
            processor_connect_timeout: Duration::from_millis(parsed(
                "PAYVAULT_PROCESSOR_CONNECT_TIMEOUT_MS",
                millis(d.processor_connect_timeout),
            )?),
            processor_timeout: Duration::from_millis(parsed(
                "PAYVAULT_PROCESSOR_TIMEOUT_MS",
                millis(d.processor_timeout),
            )?),
            idempotency_wait: Duration::from_millis(parsed(
                "PAYVAULT_IDEMPOTENCY_WAIT_MS",
                millis(d.idempotency_wait),
            )?),
            sandbox_slow: Duration::from_millis(parsed(
                "PAYVAULT_SANDBOX_SLOW_MS",
                millis(d.sandbox_slow),
            )?),
            trusted_proxies: var("PAYVAULT_TRUSTED_PROXIES")?.unwrap_or_default(),
            seal_interval: Duration::from_millis(parsed(
                "PAYVAULT_AUDIT_SEAL_INTERVAL_MS",
                millis(d.seal_interval),
            )?),
            audit_max_unsealed: audit_max_unsealed()?,
            dedup: dedup()?,
            shutdown_grace: Duration::from_secs(parsed(
                "PAYVAULT_SHUTDOWN_GRACE_SECS",
                d.shutdown_grace.as_secs(),
            )?),
            idempotency_retention: idempotency_retention(d.idempotency_retention)?,
            auth_failure_audit_interval: Duration::from_secs(
                parsed(
                    "PAYVAULT_AUTH_FAILURE_AUDIT_SECS",
                    d.auth_failure_audit_interval.as_secs(),
                )?
                .max(1),
            ),
            header_read_timeout: Duration::from_secs(
                parsed(
                    "PAYVAULT_HEADER_READ_TIMEOUT_SECS",
                    d.header_read_timeout.as_secs(),
                )?
                .max(1),
            ),
            idle_timeout: Duration::from_secs(
                parsed("PAYVAULT_IDLE_TIMEOUT_SECS", d.idle_timeout.as_secs())?.max(1),
            ),
            max_connections: parsed("PAYVAULT_MAX_CONNECTIONS", d.max_connections)?.max(1),
            admin_listen: match var("PAYVAULT_ADMIN_LISTEN")? {
                None => None,
                Some(_) => Some(parsed("PAYVAULT_ADMIN_LISTEN", d.listen)?),
            },
            default_token_ttl_days: default_token_ttl_days()?,
            checkpoint_interval: Duration::from_secs(
                parsed(
                    "PAYVAULT_AUDIT_CHECKPOINT_SECS",
                    d.checkpoint_interval.as_secs(),
                )?
                .max(1),
            ),
            checkpoint_file: var("PAYVAULT_AUDIT_CHECKPOINT_FILE")?
                .filter(|p| !p.is_empty())
                .map(Into::into),
            ..d
        })
    }
}

impl ServeConfig {
    /// Under `PAYVAULT_ENV=production`, the reasons this configuration must not start: the
    /// sandbox processor, a plain-HTTP processor URL, development credentials, a development
    /// master key (`has_development_key`), or a `PAYVAULT_PROCESSOR_*` variable the processor does
    /// not read (named, never its value). Empty when it may start.
    pub fn production_refusals(&self, has_development_key: bool) -> Vec<String> {
        if self.environment != Environment::Production {
            return Vec::new();
        }
        let mut refusals: Vec<String> = Vec::new();
        if has_development_key {
            refusals.push("a development master key (pvdev.…) is loaded: generate a production key with `payvault keys generate`".into());
        }
        match &self.processor {
            ProcessorConfig::Sandbox => refusals
                .push("PAYVAULT_PROCESSOR=sandbox is a fake processor: configure a real one".into()),
            ProcessorConfig::Profile(p) if p.base_url.scheme() != "https" => refusals.push(
                "the processor profile's base URL (or PAYVAULT_PROCESSOR_URL) must be https: card data never crosses a network in clear".into(),
            ),
            _ => {}
        }
        if self.dev_connector_credential.is_some() {
            refusals.push("PAYVAULT_DEV_CONNECTOR_CREDENTIAL is for development: create credentials with `payvault credentials create`".into());
        }
        refusals.extend(self.unknown_processor_variable_reasons());
        refusals
    }

    /// One sentence per unknown `PAYVAULT_PROCESSOR_*` variable, naming it (never its value):
    /// a refusal in production, a warning in development.
    pub fn unknown_processor_variable_reasons(&self) -> Vec<String> {
        if self.unknown_processor_variables.is_empty() {
            return Vec::new();
        }
        let hint = processor_settings_hint(&self.processor);
        self.unknown_processor_variables
            .iter()
            .map(|name| {
                format!("{name} is set but not read by this processor configuration (a misspelt setting stays unset): {hint}")
            })
            .collect()
    }
}

//! The `payvault` command line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use crate::audit::AuditEvent;
use crate::auth::admin;
use crate::auth::{CredentialKind, Scope};
use crate::config::{self, ProcessorConfig, ServeConfig};
use crate::crypto::{KeyRing, MasterKey};
use crate::http::TrustedProxies;
use crate::processor::generic::{GenericConfig, GenericProcessor};
use crate::processor::sandbox::Sandbox;
use crate::processor::{Processor, Unconfigured};
use crate::startup::{shutdown_signal, Application, Settings};
use crate::store;

#[derive(Debug, Parser)]
#[command(
    name = "payvault",
    version,
    about = "Card and bank-account tokenization vault for Twilio <Pay>"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (applies pending migrations first unless --no-migrate).
    Serve {
        /// Do not apply pending migrations on start.
        #[arg(long, env = "PAYVAULT_NO_MIGRATE")]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage the credentials callers use.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Master key operations.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read, verify, export and prune the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Zero-configuration local mode: a private PostgreSQL cluster, development keys and
    /// credentials, and the sandbox processor, all kept in one directory. Never for real cards.
    Dev(crate::dev::DevArgs),
    /// Exit 0 if the local service answers /readyz (for container health checks).
    Healthcheck {
        /// URL to check (default: /readyz on PAYVAULT_LISTEN's port on 127.0.0.1, over HTTPS
        /// when PAYVAULT_TLS_CERT is set).
        #[arg(long)]
        url: Option<String>,
    },
    /// Run the built-in fake payment processor (for demos and tests; no money moves).
    Sandbox {
        /// Address to listen on.
        #[arg(
            long,
            env = "PAYVAULT_SANDBOX_LISTEN",
            default_value = "127.0.0.1:9090"
        )]
        listen: std::net::SocketAddr,
        /// How long the slow test case takes, in milliseconds.
        #[arg(long, env = "PAYVAULT_SANDBOX_SLOW_MS", default_value_t = 12_000)]
        slow_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Create a credential; prints its username and secret once.
    Create {
        /// A label for the credential, e.g. `twilio-prod`.
        #[arg(long)]
        name: String,
        /// `connector` (Twilio, HTTP Basic) or `api` (merchant backend).
        #[arg(long, value_parser = parse_kind)]
        kind: CredentialKind,
        /// Comma-separated scopes (default for connector: `connector`).
        #[arg(long, value_delimiter = ',', value_parser = parse_scope)]
        scopes: Option<Vec<Scope>>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List credentials (never their secrets).
    List {
        /// Include revoked credentials.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Revoke a credential by username or name; takes effect on running instances at once.
    Revoke { username_or_name: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh random master key, alone on the last line, in the form
    /// PAYVAULT_MASTER_KEY accepts.
    Generate {
        /// Version number of the new key.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        version: i32,
        /// Mark it a development key (`pvdev.`), which PAYVAULT_ENV=production refuses.
        #[arg(long)]
        development: bool,
    },
    /// Re-encrypt every entry under an older master key version with the current (highest)
    /// version in PAYVAULT_MASTER_KEY, in resumable batches, while the service keeps serving.
    /// Load the new version on every instance first.
    Rotate {
        /// Entries per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Store the salt and Argon2id cost for deriving master key VERSION from
    /// PAYVAULT_MASTER_PASSPHRASE (once; every instance then derives the same key).
    PassphraseInit {
        #[arg(long, default_value_t = 1)]
        version: i32,
    },
    /// Check that no entry still uses VERSION, so it can be removed from PAYVAULT_MASTER_KEY.
    Retire { version: i32 },
    /// How many entries each master key version protects.
    Status,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit events (oldest first), filtered.
    List {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Show events after this cursor (the id printed as the next cursor).
        #[arg(long, default_value_t = 0)]
        cursor: i64,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Verify the seal chain; exits 1 and names the first tampered place if it was altered.
    /// Needs PAYVAULT_MASTER_KEY.
    Verify {
        /// A checkpoint saved earlier by `payvault audit checkpoint`, to detect deletion of the
        /// newest events.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Print the newest seal as a checkpoint (JSON) to keep off-box.
    Checkpoint,
    /// Export sealed events as JSON lines, in chain order, resumable from a cursor.
    Export {
        /// Export events after this chain position (the `seq` of the last line already exported).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Delete sealed events older than the retention period, leaving the rest verifiable.
    /// Needs PAYVAULT_MASTER_KEY.
    Prune {
        /// Delete events that occurred before this date (YYYY-MM-DD or RFC 3339); it must be at
        /// least PAYVAULT_AUDIT_RETENTION_DAYS (default 365) ago.
        #[arg(long, value_parser = crate::audit::parse_time)]
        before: chrono::DateTime<chrono::Utc>,
    },
}

#[derive(Debug, Args)]
struct AuditFilterArgs {
    /// Events at or after this date/time (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_parser = crate::audit::parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events before this date/time.
    #[arg(long, value_parser = crate::audit::parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// e.g. tokenize, charge, charge_attempt, token_resolve, authenticate, credential_create.
    #[arg(long)]
    action: Option<String>,
    /// Credential id, username or name.
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    transaction_id: Option<String>,
    /// success or failure.
    #[arg(long, value_parser = ["success", "failure"])]
    outcome: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ListFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn parse_kind(s: &str) -> Result<CredentialKind, String> {
    s.parse()
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.trim()
        .parse()
        .map_err(|e: crate::auth::ScopeParseError| e.to_string())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { no_migrate } => serve(no_migrate).await,
        Command::Migrate => {
            let pool = store::connect(&config::database_url()?, 2)
                .await
                .context("cannot connect to the database")?;
            store::migrate(&pool).await.context("migration failed")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Credentials(cmd) => credentials(cmd).await,
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::Audit(cmd) => audit(cmd).await,
        Command::Sandbox { listen, slow_ms } => {
            let sandbox = Arc::new(Sandbox::new(Duration::from_millis(slow_ms)));
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::warn!(addr = %listener.local_addr()?, "payvault SANDBOX processor listening: no real money moves");
            axum::serve(listener, crate::http::sandbox::router(sandbox))
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { batch }) => rotate_keys(batch.max(1)).await,
        Command::Keys(KeysCommand::Retire { version }) => retire_key(version).await,
        Command::Keys(KeysCommand::PassphraseInit { version }) => passphrase_init(version).await,
        Command::Keys(KeysCommand::Status) => {
            let pool = cli_pool().await?;
            println!("{:<8} ENTRIES", "VERSION");
            for (version, n) in store::vault::count_by_key_version(&pool).await? {
                println!("{version:<8} {n}");
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Generate {
            version,
            development,
        }) => {
            let key = if development {
                println!("# DEVELOPMENT key: PAYVAULT_ENV=production refuses it.");
                MasterKey::generate_development(version)
            } else {
                MasterKey::generate(version)
            };
            println!("# New payvault master key (version {version}). Keep it in a secret manager, never in the database.");
            println!("# Set it as PAYVAULT_MASTER_KEY, or put it in a file named by PAYVAULT_MASTER_KEY_FILE.");
            println!("{}", key.encode().as_str());
            Ok(())
        }
    }
}

async fn serve(no_migrate: bool) -> anyhow::Result<()> {
    let cfg = ServeConfig::from_env()?;
    let env = env_keys()?;
    run_service(cfg, env, !no_migrate, |addr| {
        tracing::info!(%addr, "payvault listening");
    })
    .await
}

/// Refuses development settings in production, connects, migrates (if `migrate`), creates the
/// development connector credential if one is configured, and serves until SIGTERM or Ctrl-C.
/// `on_listening` is called once the port is bound.
pub(crate) async fn run_service(
    cfg: ServeConfig,
    env: EnvKeys,
    migrate: bool,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let refusals = cfg.production_refusals(env.keys.iter().any(MasterKey::is_development));
    if !refusals.is_empty() {
        anyhow::bail!(
            "PAYVAULT_ENV=production refuses to start:\n  - {}",
            refusals.join("\n  - ")
        );
    }
    let tls = match &cfg.tls {
        Some(files) => Some(crate::http::tls::acceptor(&files.cert, &files.key)?),
        None => None,
    };
    let pool = store::connect(&cfg.database_url, cfg.db_max_connections)
        .await
        .context("cannot connect to the database")?;
    if migrate {
        store::migrate(&pool).await.context("migration failed")?;
    }
    let keys = key_ring(&pool, env).await?;
    if let Some(credential) = &cfg.dev_connector_credential {
        ensure_dev_connector(&pool, credential).await?;
    }
    let processor: Arc<dyn Processor> = match cfg.processor {
        ProcessorConfig::None => Arc::new(Unconfigured),
        ProcessorConfig::Sandbox => {
            tracing::warn!("using the built-in SANDBOX processor: no real money moves");
            Arc::new(Sandbox::new(cfg.sandbox_slow))
        }
        ProcessorConfig::Generic { url, auth } => Arc::new(
            GenericProcessor::new(GenericConfig {
                url,
                auth,
                connect_timeout: cfg.processor_connect_timeout,
                timeout: cfg.processor_timeout,
            })
            .context("cannot set up the processor client")?,
        ),
    };
    let settings = Settings {
        listen: cfg.listen,
        max_body_bytes: cfg.max_body_bytes,
        auth_cache_ttl: cfg.auth_cache_ttl,
        processor,
        processor_timeout: cfg.processor_timeout,
        idempotency_wait: cfg.idempotency_wait,
        trusted_proxies: TrustedProxies::parse(&cfg.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("PAYVAULT_TRUSTED_PROXIES: {e}"))?,
        seal_interval: cfg.seal_interval,
        default_token_ttl_days: cfg.default_token_ttl_days,
        dedup: cfg.dedup,
        shutdown_grace: cfg.shutdown_grace,
        tls,
    };
    let versions: Vec<i32> = keys.versions().collect();
    let instance = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "listen": settings.listen.to_string(),
        "key_versions": versions,
    });
    // Start and stop of the service are audited (PCI DSS 10.2.1.6: start of audit logging).
    store::audit::insert_audit_event(
        &pool,
        &AuditEvent::system("service_start", instance.clone()),
    )
    .await
    .context("cannot write the audit log")?;
    let stop_pool = pool.clone();
    let keys = Arc::new(keys);
    let stop_keys = keys.clone();
    let app = Application::build(&settings, pool, keys.clone())
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(
        key_versions = ?versions,
        tls = settings.tls.is_some(),
        environment = ?cfg.environment,
        "payvault ready"
    );
    on_listening(app.local_addr()?);
    app.run(shutdown_signal()).await?;
    let stop = AuditEvent::system("service_stop", instance);
    if let Err(e) = store::audit::insert_audit_event(&stop_pool, &stop).await {
        tracing::warn!(error = %e, "could not audit the service stop");
    }
    if let Err(e) = crate::audit::seal::seal_pending(&stop_pool, &stop_keys).await {
        tracing::warn!(error = %e, "could not seal the last audit events; the next instance will");
    }
    tracing::info!("payvault stopped");
    Ok(())
}

/// `payvault healthcheck`: GET /readyz on this host; for `HEALTHCHECK` in images without curl.
async fn healthcheck(url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let listen: std::net::SocketAddr = config::parsed(
                "PAYVAULT_LISTEN",
                std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            )?;
            let scheme = if config::var("PAYVAULT_TLS_CERT")?.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://127.0.0.1:{}/readyz", listen.port())
        }
    };
    // Loopback: the certificate names the public host, not 127.0.0.1.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {body}");
    }
    println!("ok");
    Ok(())
}

async fn credentials(cmd: CredentialsCommand) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    match cmd {
        CredentialsCommand::Create {
            name,
            kind,
            scopes,
            format,
        } => {
            let created = admin::create_credential(&pool, &name, kind, scopes).await?;
            let row = &created.row;
            match format.format {
                Format::Json => {
                    let out = serde_json::json!({
                        "id": row.id,
                        "name": row.name,
                        "kind": row.kind,
                        "username": row.username,
                        // The one place a secret is ever printed: at creation, on request.
                        "secret": created.secret.expose(),
                        "scopes": row.scopes,
                        "created_at": row.created_at,
                    });
                    println!("{out}");
                }
                Format::Text => {
                    println!(
                        "Created {} credential `{}` ({})",
                        row.kind, row.name, row.id
                    );
                    println!("  username: {}", row.username);
                    println!("  secret:   {}", created.secret.expose());
                    if row.kind == "api" {
                        // The bearer form of the same credential, for `Authorization: Bearer ...`.
                        println!("  api key:  {}.{}", row.username, created.secret.expose());
                    }
                    println!("  scopes:   {}", row.scopes.join(","));
                    println!("Store the secret now: payvault keeps only its hash and cannot show it again.");
                }
            }
        }
        CredentialsCommand::List { all, format } => {
            let rows = admin::list_credentials(&pool, all).await?;
            match format.format {
                Format::Json => {
                    for row in rows {
                        let out = serde_json::json!({
                            "id": row.id, "name": row.name, "kind": row.kind,
                            "username": row.username, "scopes": row.scopes,
                            "created_at": row.created_at, "revoked_at": row.revoked_at,
                        });
                        println!("{out}");
                    }
                }
                Format::Text => {
                    println!(
                        "{:<26} {:<20} {:<10} {:<40} {:<25} REVOKED",
                        "USERNAME", "NAME", "KIND", "SCOPES", "CREATED"
                    );
                    for row in rows {
                        println!(
                            "{:<26} {:<20} {:<10} {:<40} {:<25} {}",
                            row.username,
                            row.name,
                            row.kind,
                            row.scopes.join(","),
                            row.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                            row.revoked_at.map_or("-".to_owned(), |t| t
                                .format("%Y-%m-%d %H:%M:%S UTC")
                                .to_string()),
                        );
                    }
                }
            }
        }
        CredentialsCommand::Revoke { username_or_name } => {
            let row = admin::revoke_credential(&pool, &username_or_name).await?;
            println!(
                "Revoked {} credential `{}` ({})",
                row.kind, row.name, row.username
            );
        }
    }
    Ok(())
}

/// `PAYVAULT_DEV_CONNECTOR_CREDENTIAL` (`username:password`): a connector credential for
/// development set-ups whose curl examples need a known password.
async fn ensure_dev_connector(
    pool: &sqlx::PgPool,
    credential: &config::DevCredential,
) -> anyhow::Result<()> {
    let created = admin::ensure_credential(
        pool,
        "dev-connector",
        CredentialKind::Connector,
        vec![Scope::Connector, Scope::TokensCharge],
        &credential.username,
        crate::domain::SecretText::new(credential.password.expose_secret().to_owned()),
    )
    .await
    .context("PAYVAULT_DEV_CONNECTOR_CREDENTIAL")?;
    if created {
        tracing::warn!("created the DEVELOPMENT connector credential `dev-connector`");
    }
    Ok(())
}

/// Master keys from the environment: `PAYVAULT_MASTER_KEY` parsed at once (so a malformed key
/// fails before anything else), and the passphrase, if any, still to be derived.
pub(crate) struct EnvKeys {
    pub(crate) keys: Vec<MasterKey>,
    pub(crate) passphrase: Option<(secrecy::SecretString, i32)>,
}

fn env_keys() -> anyhow::Result<EnvKeys> {
    let keys = match config::secret_var("PAYVAULT_MASTER_KEY")? {
        Some(text) => MasterKey::parse_list(text.expose_secret()).context("PAYVAULT_MASTER_KEY")?,
        None => Vec::new(),
    };
    let passphrase = config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?;
    if keys.is_empty() && passphrase.is_none() {
        anyhow::bail!("PAYVAULT_MASTER_KEY (or PAYVAULT_MASTER_KEY_FILE, or PAYVAULT_MASTER_PASSPHRASE) is required");
    }
    let version = config::parsed("PAYVAULT_MASTER_PASSPHRASE_VERSION", 1)?;
    Ok(EnvKeys {
        keys,
        passphrase: passphrase.map(|p| (p, version)),
    })
}

/// The key ring: the environment's keys plus the passphrase-derived one, checked against the
/// stored check value so a wrong passphrase stops here.
async fn key_ring(pool: &sqlx::PgPool, env: EnvKeys) -> anyhow::Result<KeyRing> {
    let mut keys = env.keys;
    if let Some((passphrase, version)) = env.passphrase {
        let kdf = store::keys::find_kdf(pool, version).await?.ok_or_else(|| {
            anyhow::anyhow!("no passphrase parameters for master key version {version}: run `payvault keys passphrase-init` once")
        })?;
        let key = tokio::task::spawn_blocking(move || {
            MasterKey::from_passphrase(
                version,
                passphrase.expose_secret(),
                &kdf.salt,
                u32::try_from(kdf.m_cost_kib).unwrap_or(0),
                u32::try_from(kdf.t_cost).unwrap_or(0),
                u32::try_from(kdf.p_cost).unwrap_or(0),
            )
            .map(|k| (k.check_mac().to_vec() == kdf.check_mac, k))
        })
        .await??;
        let (matches, key) = key;
        if !matches {
            anyhow::bail!("PAYVAULT_MASTER_PASSPHRASE is wrong for master key version {version}");
        }
        keys.push(key);
    }
    Ok(KeyRing::from_keys(keys)?)
}

async fn master_keys(pool: &sqlx::PgPool) -> anyhow::Result<KeyRing> {
    key_ring(pool, env_keys()?).await
}

/// `payvault keys passphrase-init`: random salt, Argon2id cost, and the check value.
async fn passphrase_init(version: i32) -> anyhow::Result<()> {
    let passphrase =
        config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?.ok_or(config::ConfigError::Missing(
            "PAYVAULT_MASTER_PASSPHRASE (or PAYVAULT_MASTER_PASSPHRASE_FILE)",
        ))?;
    if passphrase.expose_secret().chars().count() < 16 {
        anyhow::bail!("PAYVAULT_MASTER_PASSPHRASE must be at least 16 characters");
    }
    let pool = cli_pool().await?;
    let mut salt = vec![0u8; 16];
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, &mut salt);
    // Derived once per start, so it can cost far more than a login check: 64 MiB, 3 passes.
    let (m, t, p) = (64 * 1024, 3, 1);
    let salt_for_kdf = salt.clone();
    let key = tokio::task::spawn_blocking(move || {
        MasterKey::from_passphrase(version, passphrase.expose_secret(), &salt_for_kdf, m, t, p)
    })
    .await??;
    let params = store::keys::KdfParams {
        version,
        salt,
        m_cost_kib: m as i32,
        t_cost: t as i32,
        p_cost: p as i32,
        check_mac: key.check_mac().to_vec(),
    };
    if !store::keys::insert_kdf(&pool, &params).await? {
        anyhow::bail!(
            "master key version {version} already has passphrase parameters; they never change"
        );
    }
    let mut event = AuditEvent::operator("key_passphrase_init");
    event.details["version"] = version.into();
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("passphrase parameters stored for master key version {version}: set PAYVAULT_MASTER_PASSPHRASE on every instance");
    Ok(())
}

async fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    use crate::audit::seal;
    let pool = cli_pool().await?;
    // Every read of the audit log is itself audited (PCI DSS 10.2.1.3).
    let record = |action: &'static str, details: serde_json::Value| {
        let pool = pool.clone();
        async move {
            let mut event = AuditEvent::operator(action);
            if let (Some(obj), serde_json::Value::Object(extra)) =
                (event.details.as_object_mut(), details)
            {
                obj.extend(extra);
            }
            store::audit::insert_audit_event(&pool, &event)
                .await
                .context("cannot write the audit log")
        }
    };
    match cmd {
        AuditCommand::List {
            filter,
            cursor,
            limit,
            format,
        } => {
            let filter = store::audit::AuditFilter {
                since: filter.since,
                until: filter.until,
                action: filter.action,
                actor: filter.actor,
                token: filter.token,
                transaction_id: filter.transaction_id,
                outcome: filter.outcome,
            };
            let rows =
                store::audit::list_audit_events(&pool, &filter, cursor, limit.clamp(1, 100_000))
                    .await?;
            record(
                "audit_read",
                serde_json::json!({ "filter": crate::audit::filter_json(&filter), "cursor": cursor, "returned": rows.len() }),
            )
            .await?;
            print_events(&rows, format);
            if let (true, Some(last)) = (rows.len() as i64 == limit, rows.last()) {
                eprintln!("more events: continue with --cursor {}", last.id);
            }
        }
        AuditCommand::Verify { checkpoint } => {
            let keys = master_keys(&pool).await?;
            let checkpoint: Option<seal::Checkpoint> = match checkpoint {
                Some(path) => Some(
                    serde_json::from_str(
                        &std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    )
                    .context("the checkpoint file is not a payvault checkpoint")?,
                ),
                None => None,
            };
            let report = seal::verify(&pool, &keys, checkpoint.as_ref()).await?;
            record(
                "audit_verify",
                serde_json::json!({ "verified": report.verified, "intact": report.problem.is_none(), "with_checkpoint": checkpoint.is_some() }),
            )
            .await?;
            println!("{report}");
            if report.problem.is_some() {
                std::process::exit(1);
            }
        }
        AuditCommand::Checkpoint => {
            let checkpoint = seal::checkpoint(&pool).await?;
            record(
                "audit_checkpoint",
                serde_json::json!({ "seq": checkpoint.as_ref().map(|c| c.seq) }),
            )
            .await?;
            match checkpoint {
                Some(c) => println!("{}", serde_json::to_string(&c)?),
                None => {
                    anyhow::bail!("no sealed events yet: start `payvault serve` to seal the log")
                }
            }
        }
        AuditCommand::Export { after } => {
            let mut cursor = after;
            let mut count = 0u64;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            loop {
                let batch = store::audit::export_sealed_events(&pool, cursor, 1000).await?;
                if batch.is_empty() {
                    break;
                }
                for (seq, row) in &batch {
                    let mut line = crate::audit::event_json(row);
                    line["seq"] = (*seq).into();
                    std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
                    cursor = *seq;
                    count += 1;
                }
            }
            std::io::Write::flush(&mut out)?;
            drop(out);
            record(
                "audit_export",
                serde_json::json!({ "after": after, "exported": count, "next_after": cursor }),
            )
            .await?;
            eprintln!("exported {count} events; resume with --after {cursor}");
        }
        AuditCommand::Prune { before } => {
            let keys = master_keys(&pool).await?;
            let days = config::audit_retention_days()?;
            let limit = chrono::Utc::now() - chrono::Duration::days(days);
            if before > limit {
                anyhow::bail!(
                    "refusing to prune events newer than the retention period ({days} days, PAYVAULT_AUDIT_RETENTION_DAYS): --before must be {} or earlier",
                    limit.format("%Y-%m-%d")
                );
            }
            let deleted = seal::prune(&pool, &keys, before).await?;
            record(
                "audit_prune",
                serde_json::json!({ "before": before, "deleted": deleted, "retention_days": days }),
            )
            .await?;
            println!(
                "pruned {deleted} audit events that occurred before {}",
                before.to_rfc3339()
            );
        }
    }
    Ok(())
}

fn print_events(rows: &[store::audit::AuditRow], format: ListFormat) {
    match format {
        ListFormat::Json => {
            for row in rows {
                println!("{}", crate::audit::event_json(row));
            }
        }
        ListFormat::Csv => {
            println!("id,occurred_at,actor_kind,actor_id,action,outcome,error_code,client_addr,forwarded_for,request_id,token,transaction_id,masked_data,amount_minor,currency,details");
            for r in rows {
                let fields = [
                    r.id.to_string(),
                    r.occurred_at.to_rfc3339(),
                    r.actor_kind.clone(),
                    r.actor_id.map(|a| a.to_string()).unwrap_or_default(),
                    r.action.clone(),
                    r.outcome.clone(),
                    r.error_code.clone().unwrap_or_default(),
                    r.client_addr.clone().unwrap_or_default(),
                    r.forwarded_for.clone().unwrap_or_default(),
                    r.request_id.clone().unwrap_or_default(),
                    r.token.clone().unwrap_or_default(),
                    r.transaction_id.clone().unwrap_or_default(),
                    r.masked_data.clone().unwrap_or_default(),
                    r.amount_minor.map(|a| a.to_string()).unwrap_or_default(),
                    r.currency.clone().unwrap_or_default(),
                    r.details.clone(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                println!("{}", line.join(","));
            }
        }
        ListFormat::Table => {
            println!(
                "{:>8}  {:<20}  {:<10}  {:<18}  {:<8}  {:<28}  {:<26}  {:<24}  AMOUNT",
                "ID", "TIME (UTC)", "ACTOR", "ACTION", "OUTCOME", "ERROR", "TOKEN", "CARD"
            );
            for r in rows {
                let amount = match (r.amount_minor, &r.currency) {
                    (Some(a), Some(c)) => crate::domain::Amount::display_minor(a, c),
                    _ => String::new(),
                };
                println!(
                    "{:>8}  {:<20}  {:<10}  {:<18}  {:<8}  {:<28}  {:<26}  {:<24}  {}",
                    r.id,
                    r.occurred_at.format("%Y-%m-%d %H:%M:%S"),
                    r.actor_kind,
                    r.action,
                    r.outcome,
                    r.error_code.as_deref().unwrap_or("-"),
                    r.token.as_deref().unwrap_or("-"),
                    r.masked_data.as_deref().unwrap_or("-"),
                    amount
                );
            }
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

async fn rotate_keys(batch: i64) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let keys = Arc::new(master_keys(&pool).await?);
    let current = keys.current_version();
    let total: i64 = store::vault::count_by_key_version(&pool)
        .await?
        .iter()
        .filter(|(v, _)| *v < current)
        .map(|(_, n)| n)
        .sum();
    let vault = crate::vault::Vault::new(pool.clone(), keys.clone());
    let mut done = 0u64;
    eprintln!("re-encrypting {total} entries under master key version {current}");
    loop {
        let n = vault
            .rotate_batch(batch)
            .await
            .context("rotation batch failed; run again to resume")?;
        if n == 0 {
            break;
        }
        done += n;
        let width = 30usize;
        let filled = if total > 0 {
            (done as usize * width / total as usize).min(width)
        } else {
            width
        };
        eprint!(
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
    }
    eprintln!();
    let mut event = AuditEvent::operator("key_rotate");
    event.details["to_version"] = current.into();
    event.details["rotated"] = done.into();
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("rotated {done} entries to master key version {current}");
    Ok(())
}

async fn retire_key(version: i32) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let in_use = store::vault::count_by_key_version(&pool)
        .await?
        .into_iter()
        .find(|(v, _)| *v == version)
        .map_or(0, |(_, n)| n);
    let mut event = AuditEvent::operator("key_retire");
    event.details["version"] = version.into();
    if in_use > 0 {
        let event = event.failed("key_in_use");
        store::audit::insert_audit_event(&pool, &event)
            .await
            .context("cannot write the audit log")?;
        anyhow::bail!("refusing to retire master key version {version}: {in_use} entries still use it (run `payvault keys rotate` first)");
    }
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("no entry uses master key version {version}: remove it from PAYVAULT_MASTER_KEY on every instance.");
    println!("Keep a copy while audit events sealed under it must stay verifiable (until they are pruned).");
    Ok(())
}

/// A connection for CLI commands, with a clear message when the schema is not set up yet.
async fn cli_pool() -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&config::database_url()?, 2)
        .await
        .context("cannot connect to the database")?;
    let latest = store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match store::applied_migration(&pool).await {
        Ok(Some(v)) if v >= latest => Ok(pool),
        _ => anyhow::bail!(
            "the database schema is not set up or not current: run `payvault migrate` first (`payvault serve` also migrates on start)"
        ),
    }
}

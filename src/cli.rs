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
    },
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
        Command::Keys(KeysCommand::Generate { version }) => {
            let key = MasterKey::generate(version);
            println!("# New payvault master key (version {version}). Keep it in a secret manager, never in the database.");
            println!("# Set it as PAYVAULT_MASTER_KEY, or put it in a file named by PAYVAULT_MASTER_KEY_FILE.");
            println!("{}", key.encode().as_str());
            Ok(())
        }
    }
}

async fn serve(no_migrate: bool) -> anyhow::Result<()> {
    let cfg = ServeConfig::from_env()?;
    let keys = KeyRing::parse(cfg.master_key.expose_secret()).context("PAYVAULT_MASTER_KEY")?;
    let pool = store::connect(&cfg.database_url, cfg.db_max_connections)
        .await
        .context("cannot connect to the database")?;
    if !no_migrate {
        store::migrate(&pool).await.context("migration failed")?;
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
    let app = Application::build(&settings, pool, Arc::new(keys))
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(addr = %app.local_addr()?, key_versions = ?versions, "payvault listening");
    app.run(shutdown_signal()).await?;
    let stop = AuditEvent::system("service_stop", instance);
    if let Err(e) = store::audit::insert_audit_event(&stop_pool, &stop).await {
        tracing::warn!(error = %e, "could not audit the service stop");
    }
    tracing::info!("payvault stopped");
    Ok(())
}

async fn credentials(cmd: CredentialsCommand) -> anyhow::Result<()> {
    let pool = store::connect(&config::database_url()?, 2)
        .await
        .context("cannot connect to the database")?;
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

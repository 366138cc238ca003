//! The `payvault` command line: argument types and dispatch. Each command group lives in its
//! own file; `serve` and `dev` both end in [`crate::app::launch`].

mod audit;
mod charges;
mod credentials;
mod db;
mod keys;
mod processor;
mod shares;
mod tenants;
mod transfer;
mod wrap;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{self, shutdown_signal, KeySource, Service};
use crate::config::{self, ServeConfig};
use crate::processor::sandbox::Sandbox;
use audit::AuditCommand;
use credentials::CredentialsCommand;
use keys::KeysCommand;
use processor::ProcessorCommand;
use tenants::TenantsCommand;

#[derive(Debug, Parser)]
#[command(
    name = "payvault",
    version,
    about = "Card and bank-account tokenization vault for Twilio <Pay>"
)]
pub struct Cli {
    /// Who runs this command, recorded as `operator` in its audit events beside the OS user
    /// (as declared: not authenticated).
    #[arg(long, global = true, env = "PAYVAULT_OPERATOR", value_name = "NAME")]
    operator: Option<String>,
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
    /// Apply pending database migrations and exit. Connect as the role that is to own the
    /// schema, never the one payvault serves as.
    Migrate {
        /// Also create the runtime role NAME (LOGIN; password from PAYVAULT_RUNTIME_PASSWORD or
        /// PAYVAULT_RUNTIME_PASSWORD_FILE, if set) unless it exists, and grant it what `serve
        /// --no-migrate` needs: read-only audit tables, writes only through payvault's
        /// functions. Run again after each upgrade.
        #[arg(long, env = "PAYVAULT_RUNTIME_ROLE", value_name = "NAME")]
        runtime_role: Option<String>,
    },
    /// Manage the credentials callers use.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Manage tenants: the owners of credentials, tokens, charges and audit events.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Master key operations.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Render a processor profile's request, or check that it reaches the processor.
    #[command(subcommand)]
    Processor(ProcessorCommand),
    /// Read, verify, export and prune the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Charges that need an operator: `unknown` lists those whose outcome is unknown.
    #[command(subcommand)]
    Charges(charges::ChargesCommand),
    /// Import cards and bank accounts from a CSV or JSON-lines file (plain or OpenPGP-encrypted),
    /// resumably; writes a result file mapping each source id to its token.
    Import(transfer::ImportArgs),
    /// Export tokens' card data as JSON lines encrypted to a recipient's OpenPGP key (audited;
    /// needs --operator and --i-understand-this-exports-card-data).
    Export(transfer::ExportArgs),
    /// Zero-configuration local mode: a private PostgreSQL cluster, development keys and
    /// credentials, and the sandbox processor, all kept in one directory. Never for real cards.
    Dev(crate::dev::DevArgs),
    /// Submit your share to a sealed instance (split custodians): the share is read from
    /// standard input, never from an argument. Each instance is unsealed on its own.
    Unseal {
        /// The instance: its admin listener (PAYVAULT_ADMIN_LISTEN) when it has one, else its
        /// main URL. Default: this host's admin listener, or PAYVAULT_LISTEN.
        #[arg(long)]
        url: Option<String>,
        /// Your name as custodian, recorded in the audit log (1-64 characters).
        #[arg(long, value_name = "NAME")]
        custodian: String,
    },
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(operator) = cli.operator {
        // Checked here rather than by clap, whose error would repeat the value.
        crate::domain::audit::check_operator_name(&operator)
            .map_err(|why| anyhow::anyhow!("--operator (PAYVAULT_OPERATOR) {why}"))?;
        crate::domain::audit::declare_operator(operator);
    }
    match cli.command {
        Command::Serve { no_migrate } => serve(no_migrate).await,
        Command::Migrate { runtime_role } => db::migrate(runtime_role).await,
        Command::Credentials(cmd) => credentials::run(cmd).await,
        Command::Tenants(cmd) => tenants::run(cmd).await,
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::Unseal { url, custodian } => shares::unseal(url, custodian).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Charges(cmd) => charges::run(cmd).await,
        Command::Import(args) => transfer::import(args).await,
        Command::Export(args) => transfer::export(args).await,
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
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Processor(cmd) => processor::run(cmd).await,
    }
}

/// `payvault serve`: configuration and keys from the environment, then [`app::launch`] until
/// SIGTERM or Ctrl-C.
async fn serve(no_migrate: bool) -> anyhow::Result<()> {
    let config = ServeConfig::from_env()?;
    let keys = KeySource::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let service = Service {
        config,
        keys,
        migrate: !no_migrate,
    };
    app::launch(service, listener, shutdown_signal(), |addr| {
        tracing::info!(%addr, "payvault listening");
    })
    .await
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

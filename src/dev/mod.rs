//! `payvault dev`: the zero-configuration local mode.
//!
//! Everything lives in one data directory (default `./.payvault-dev`): a PostgreSQL cluster
//! started from the installed server binaries and stopped with payvault, a development master
//! key and development credentials, each file readable by its owner only. The cluster listens on
//! a Unix socket inside its own private directory, never on TCP. Charges go to the in-process
//! sandbox. Nothing here is fit for real card data, and the banner says so.
//!
//! This module holds the set-up (arguments, key and credentials files, the banner) and hands
//! over to the service; [`postgres`] runs the cluster, and is what test harnesses use to start
//! a throwaway one.

pub mod postgres;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::domain::SecretText;
use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::auth::{admin, CredentialKind, Scope};
use crate::config::{self, Environment, ProcessorConfig, ServeConfig};
use crate::crypto::MasterKey;

/// The vault's database in the local cluster.
const DB_NAME: &str = "payvault";

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for the local PostgreSQL cluster, the development master key and credentials;
    /// kept between runs.
    #[arg(long, env = "PAYVAULT_DEV_DIR", default_value = ".payvault-dev")]
    dir: PathBuf,
    /// Directory holding PostgreSQL's `initdb` and `postgres` (default: found on PATH or in
    /// /usr/lib/postgresql/<version>/bin).
    #[arg(long, env = "PAYVAULT_PG_BIN")]
    pg_bin: Option<PathBuf>,
}

/// What `payvault dev` generates once and shows at every start. The file is the owner's alone.
#[derive(Serialize, Deserialize)]
struct DevCredentials {
    connector_username: String,
    connector_password: String,
    api_username: String,
    api_secret: String,
}

impl Drop for DevCredentials {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.connector_password.zeroize();
        self.api_secret.zeroize();
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // First of all, before any child process exists: from here on Ctrl-C (or SIGTERM, or the
    // terminal closing) is ours, so it cannot kill payvault while PostgreSQL or initdb runs.
    let stop = Stop::install()?;
    if config::environment_setting()? == Some(Environment::Production) {
        bail!("`payvault dev` is a development mode: PAYVAULT_ENV=production refuses it; use `payvault serve`");
    }
    let pg_user = postgres::postgres_account()?;
    if let Some(account) = pg_user {
        if let Some((blocked, mode)) = postgres::unreachable_ancestor(&args.dir, account)? {
            bail!(
                "PostgreSQL refuses to run as root, so `payvault dev` runs it as the `postgres` account, \
                 which cannot enter {} (mode {mode:o}). Keep the vault where that account can reach it, \
                 for example:\n    {} dev --dir /var/tmp/payvault-dev\nor run `payvault dev` as an ordinary user.",
                blocked.display(),
                self_command(),
            );
        }
    }
    postgres::create_private_dir(&args.dir, pg_user.is_some())?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let bin = postgres::find_pg_bin(args.pg_bin.as_deref())?;
    let pgdata = dir.join("pgdata");
    if !postgres::socket_path_fits(&pgdata) {
        bail!(
            "{} is too long a path for PostgreSQL's Unix socket; choose a shorter --dir",
            pgdata.display()
        );
    }
    match postgres::cluster_state(&pgdata) {
        postgres::ClusterState::Complete => {}
        state => {
            if state == postgres::ClusterState::Incomplete {
                // Left by an earlier version, which ran initdb in place and was interrupted.
                eprintln!(
                    "payvault dev: removing the incomplete cluster in {}",
                    pgdata.display()
                );
                std::fs::remove_dir_all(&pgdata)
                    .with_context(|| format!("cannot remove {}", pgdata.display()))?;
            }
            eprintln!(
                "payvault dev: creating a PostgreSQL cluster in {}",
                pgdata.display()
            );
            stop.unless_stopped(postgres::init_cluster(&bin, &pgdata, &dir, pg_user))
                .await?;
        }
    }
    let mut cluster = stop
        .unless_stopped(postgres::LocalPostgres::start(&bin, &pgdata, &dir, pg_user))
        .await?;
    let result = serve(&dir, &pgdata, &stop).await;
    cluster.stop().await;
    result
}

/// Ctrl-C, SIGTERM or SIGHUP, listened for from the start of `payvault dev`. The handlers are
/// installed when this is made, so the default action (dying at once, leaving PostgreSQL
/// orphaned) never applies; each step of the start-up is cancelled by it, and the service drains
/// on it.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind| signal(kind).context("cannot install a signal handler");
        let mut int = handler(SignalKind::interrupt())?;
        let mut term = handler(SignalKind::terminate())?;
        let mut hup = handler(SignalKind::hangup())?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Tokio keeps a handler installed once made, so later signals are ignored, not fatal:
        // a second Ctrl-C does not cut the stopping of PostgreSQL short.
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            tracing::info!("stop signal received; stopping");
            let _ = tx.send(true);
        });
        Ok(Self(rx))
    }

    /// Resolves once a stop signal has arrived.
    async fn stopped(mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Runs `step` unless a stop signal arrives first; then `step` is dropped (its guards stop
    /// what it started) and the result is an error saying so.
    async fn unless_stopped<T>(
        &self,
        step: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let result = tokio::select! {
            biased;
            () = self.clone().stopped() => None,
            result = step => Some(result),
        };
        match result {
            Some(Ok(value)) => Ok(value),
            // A Ctrl-C in a terminal also reaches initdb, which may fail of it first: the cause
            // is still the interruption.
            Some(Err(e)) if !*self.0.borrow() => Err(e),
            _ => bail!("interrupted; stopped before the vault was ready"),
        }
    }
}

async fn serve(dir: &Path, pgdata: &Path, stop: &Stop) -> anyhow::Result<()> {
    let url = postgres::database_url(pgdata, DB_NAME)?;
    let key = load_or_create_key(&dir.join("master.key"))?;
    let creds = load_or_create_credentials(&dir.join("credentials.json"))?;

    let mut cfg = ServeConfig::from_env_with_database(SecretText::from(url.clone()))?;
    // Development unless said otherwise (production was refused above).
    cfg.environment = Environment::Development;
    if config::var("PAYVAULT_LISTEN")?.is_none() {
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    }
    if matches!(cfg.processor, ProcessorConfig::None) {
        cfg.processor = ProcessorConfig::Sandbox;
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let sandbox = matches!(cfg.processor, ProcessorConfig::Sandbox);

    // The credentials' audit events are MAC'd with the same key `serve` then loads.
    let ring =
        crate::crypto::KeyRing::from_keys(vec![load_or_create_key(&dir.join("master.key"))?])?;
    let signer = crate::store::audit_mac::EventSigner::new(std::sync::Arc::new(ring));
    stop.unless_stopped(prepare_database(pgdata, &url, &creds, &signer))
        .await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let service = crate::app::Service {
        config: cfg,
        keys: crate::app::KeySource::from_keys(vec![key]),
        migrate: false,
    };
    let key_file = dir.join("master.key");
    crate::app::launch(service, listener, stop.clone().stopped(), |addr| {
        let base = format!("{scheme}://{addr}");
        let processor = if sandbox {
            "the built-in sandbox: no money moves"
        } else {
            "as configured by PAYVAULT_PROCESSOR"
        };
        print_banner(&Banner {
            base: &base,
            dir,
            processor,
            creds: &creds,
            database_url: &url,
            key_file: &key_file,
            payvault: &self_command(),
        });
    })
    .await
}

/// Creates the vault's database, applies migrations and ensures the development credentials.
async fn prepare_database(
    pgdata: &Path,
    url: &str,
    creds: &DevCredentials,
    signer: &crate::store::audit_mac::EventSigner,
) -> anyhow::Result<()> {
    postgres::create_database(pgdata, DB_NAME).await?;
    let pool = crate::store::connect(&SecretText::from(url.to_owned()), 2)
        .await
        .context("cannot connect to the local PostgreSQL")?;
    crate::store::migrate(&pool)
        .await
        .context("migration failed")?;
    admin::ensure_credential(
        &pool,
        signer,
        "dev-connector",
        CredentialKind::Connector,
        vec![Scope::Connector, Scope::TokensCharge],
        &creds.connector_username,
        SecretText::new(creds.connector_password.clone()),
    )
    .await
    .context("cannot create the development connector credential")?;
    admin::ensure_credential(
        &pool,
        signer,
        "dev-backend",
        CredentialKind::Api,
        Scope::ALL.to_vec(),
        &creds.api_username,
        SecretText::new(creds.api_secret.clone()),
    )
    .await
    .context("cannot create the development API credential")?;
    signer.flush_voids(&pool).await?;
    pool.close().await;
    Ok(())
}

/// This program as a shell word that runs as pasted from any directory: the absolute path of
/// the running executable (after `cargo run`, `payvault` is not on PATH).
fn self_command() -> String {
    match std::env::current_exe() {
        Ok(exe) => shell_quote(&exe.to_string_lossy()),
        Err(_) => "payvault".into(),
    }
}

/// `text` as one POSIX shell word.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

struct Banner<'a> {
    base: &'a str,
    dir: &'a Path,
    processor: &'a str,
    creds: &'a DevCredentials,
    database_url: &'a str,
    key_file: &'a Path,
    /// How to run this program, as pasted (see [`self_command`]).
    payvault: &'a str,
}

fn print_banner(b: &Banner<'_>) {
    let c = b.creds;
    let rule = "=".repeat(78);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"{rule}
  payvault DEVELOPMENT MODE: for trying payvault out, never for real card data.
  Development keys and credentials; PAYVAULT_ENV=production refuses them.
{rule}
  listening:  {base}
  processor:  {processor}
  data:       {dir} (database, master key, credentials)

  Twilio connector (HTTP Basic), also for charging stored tokens:
    username: {cu}
    password: {cp}
  Merchant API key (Authorization: Bearer), all scopes:
    api key:  {au}.{asec}

  Try it:
    curl -s -u '{cu}:{cp}' {base}/ -d '{{
      "method": "tokenize", "transaction_id": "dev-1", "cardnumber": "4111111111111111",
      "cvv": "123", "expiry_month": "08", "expiry_year": "30", "description": "demo"}}'

  Other payvault commands against this vault (paste these lines into a shell):
    export DATABASE_URL={db}
    export PAYVAULT_MASTER_KEY_FILE={key}
    {payvault} credentials list
    {payvault} audit verify
{rule}"#,
        base = b.base,
        processor = b.processor,
        dir = b.dir.display(),
        cu = c.connector_username,
        cp = c.connector_password,
        au = c.api_username,
        asec = c.api_secret,
        db = shell_quote(b.database_url),
        key = shell_quote(&b.key_file.to_string_lossy()),
        payvault = b.payvault,
    );
    let _ = out.flush();
}

/// Writes `contents` to a new file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Reads a file that must be the owner's alone: a key or credentials file others can read is
/// refused rather than used.
fn read_private(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path)?))
}

fn load_or_create_key(path: &Path) -> anyhow::Result<MasterKey> {
    if !path.exists() {
        let key = MasterKey::generate_development(1);
        let mut text = key.encode();
        text.push('\n');
        write_private(path, text.as_bytes())?;
    }
    let text = read_private(path)?;
    let mut keys = MasterKey::parse_list(&text).with_context(|| path.display().to_string())?;
    match keys.pop() {
        Some(key) if keys.is_empty() => Ok(key),
        _ => bail!("{} must hold exactly one master key", path.display()),
    }
}

fn random_secret() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, bytes.as_mut());
    format!("pvs_{}", URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

fn load_or_create_credentials(path: &Path) -> anyhow::Result<DevCredentials> {
    if !path.exists() {
        let creds = DevCredentials {
            connector_username: "twilio-dev".into(),
            connector_password: random_secret(),
            api_username: "backend-dev".into(),
            api_secret: random_secret(),
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&creds)?);
        write_private(path, &json)?;
    }
    let text = read_private(path)?;
    // serde's message could quote a secret: name the file only.
    serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("{} is not a valid credentials file", path.display()))
}

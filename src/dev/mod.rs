//! `payvault dev`: the zero-configuration local mode.
//!
//! Everything lives in one data directory (default `./.payvault-dev`): a PostgreSQL cluster
//! started from the installed server binaries and stopped with payvault, a development master
//! key and development credentials, each file readable by its owner only. The cluster listens on
//! a Unix socket inside its own private directory, never on TCP. Charges go to the in-process
//! sandbox. Nothing here is fit for real card data, and the banner says so.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::auth::{admin, CredentialKind, Scope};
use crate::cli::EnvKeys;
use crate::config::{self, Environment, ProcessorConfig, ServeConfig};
use crate::crypto::MasterKey;
use crate::domain::SecretText;

/// The cluster's superuser and the vault's database.
const DB_USER: &str = "payvault";
const DB_NAME: &str = "payvault";
/// Longest path a Unix socket address holds (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long PostgreSQL gets to start and to stop.
const PG_DEADLINE: Duration = Duration::from_secs(60);

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
    if config::environment()? == Environment::Production {
        bail!("`payvault dev` is a development mode: PAYVAULT_ENV=production refuses it; use `payvault serve`");
    }
    let pg_user = postgres_account()?;
    create_private_dir(&args.dir, pg_user.is_some())?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let bin = find_pg_bin(args.pg_bin.as_deref())?;
    let pgdata = dir.join("pgdata");
    if pgdata.join(".s.PGSQL.5432").as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "{} is too long a path for PostgreSQL's Unix socket; choose a shorter --dir",
            pgdata.display()
        );
    }
    if !pgdata.join("PG_VERSION").exists() {
        init_cluster(&bin, &pgdata, &dir, pg_user)?;
    }
    let mut postgres = LocalPostgres::start(&bin, &pgdata, &dir, pg_user).await?;
    let result = serve(&dir, &pgdata).await;
    postgres.stop().await;
    result
}

async fn serve(dir: &Path, pgdata: &Path) -> anyhow::Result<()> {
    let url = database_url(pgdata, DB_NAME)?;
    create_database(pgdata).await?;
    let key = load_or_create_key(&dir.join("master.key"))?;
    let creds = load_or_create_credentials(&dir.join("credentials.json"))?;

    let mut cfg = ServeConfig::from_env_with_database(SecretString::from(url.clone()))?;
    if config::var("PAYVAULT_LISTEN")?.is_none() {
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    }
    if matches!(cfg.processor, ProcessorConfig::None) {
        cfg.processor = ProcessorConfig::Sandbox;
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let sandbox = matches!(cfg.processor, ProcessorConfig::Sandbox);

    let pool = crate::store::connect(&SecretString::from(url.clone()), 2)
        .await
        .context("cannot connect to the local PostgreSQL")?;
    crate::store::migrate(&pool)
        .await
        .context("migration failed")?;
    admin::ensure_credential(
        &pool,
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
        "dev-backend",
        CredentialKind::Api,
        Scope::ALL.to_vec(),
        &creds.api_username,
        SecretText::new(creds.api_secret.clone()),
    )
    .await
    .context("cannot create the development API credential")?;
    pool.close().await;

    let env = EnvKeys {
        keys: vec![key],
        passphrase: None,
    };
    let key_file = dir.join("master.key");
    crate::cli::run_service(cfg, env, false, |addr| {
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
        });
    })
    .await
}

struct Banner<'a> {
    base: &'a str,
    dir: &'a Path,
    processor: &'a str,
    creds: &'a DevCredentials,
    database_url: &'a str,
    key_file: &'a Path,
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

  Other payvault commands against this vault:
    export DATABASE_URL='{db}'
    export PAYVAULT_MASTER_KEY_FILE='{key}'
{rule}"#,
        base = b.base,
        processor = b.processor,
        dir = b.dir.display(),
        cu = c.connector_username,
        cp = c.connector_password,
        au = c.api_username,
        asec = c.api_secret,
        db = b.database_url,
        key = b.key_file.display(),
    );
    let _ = out.flush();
}

/// PostgreSQL refuses to run as root; as root, the cluster belongs to the `postgres` account.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

fn postgres_account() -> anyhow::Result<Option<Account>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let account = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            ["postgres", _, uid, gid, ..] => Some(Account {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
            }),
            _ => None,
        }
    });
    match account {
        Some(account) => Ok(Some(account)),
        None => bail!("PostgreSQL refuses to run as root and there is no `postgres` account to run it as; run `payvault dev` as an ordinary user"),
    }
}

/// Creates the data directory readable by its owner only. As root it stays traversable, so the
/// `postgres` account can reach its own cluster inside it; the files stay private either way.
fn create_private_dir(dir: &Path, traversable: bool) -> anyhow::Result<()> {
    let mode = if traversable { 0o711 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    Ok(())
}

/// The directory with `initdb` and `postgres`: the one given, else PATH, else the newest
/// /usr/lib/postgresql/<version>/bin.
pub fn find_pg_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = given {
        if complete(dir) {
            return Ok(dir.to_owned());
        }
        bail!(
            "PAYVAULT_PG_BIN={}: no initdb and postgres there",
            dir.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| complete(d)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("PostgreSQL's server binaries (initdb, postgres) are not on PATH or in /usr/lib/postgresql/<version>/bin: install them (Debian/Ubuntu: apt install postgresql; macOS: brew install postgresql) or set PAYVAULT_PG_BIN"),
    }
}

fn pg_command(program: PathBuf, account: Option<Account>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(a) = account {
        cmd.uid(a.uid).gid(a.gid);
    }
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

fn init_cluster(
    bin: &Path,
    pgdata: &Path,
    dir: &Path,
    account: Option<Account>,
) -> anyhow::Result<()> {
    eprintln!(
        "payvault dev: creating a PostgreSQL cluster in {}",
        pgdata.display()
    );
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(pgdata)
        .with_context(|| format!("cannot create {}", pgdata.display()))?;
    if let Some(a) = account {
        std::os::unix::fs::chown(pgdata, Some(a.uid), Some(a.gid))
            .with_context(|| format!("cannot give {} to the postgres account", pgdata.display()))?;
    }
    let log = dir.join("initdb.log");
    let output = pg_command(bin.join("initdb"), account)
        .arg("--pgdata")
        .arg(pgdata)
        .args([
            "--username",
            DB_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
        ])
        .args(["--no-instructions"])
        .output()
        .context("cannot run initdb")?;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&log)
    {
        let _ = file.write_all(&[output.stdout.as_slice(), &output.stderr].concat());
    }
    if !output.status.success() {
        // A half-made cluster would be mistaken for a finished one next time.
        let _ = std::fs::remove_dir_all(pgdata);
        bail!(
            "initdb failed ({}); its output is in {}:\n{}",
            output.status,
            log.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The local cluster while payvault runs.
struct LocalPostgres {
    child: Option<Child>,
    /// A postmaster an earlier, killed `payvault dev` left running, adopted by its pid.
    adopted: Option<(rustix::process::Pid, PathBuf)>,
}

impl LocalPostgres {
    /// Starts `postgres` on a Unix socket in its data directory and waits until it accepts
    /// connections. A cluster left running by an earlier, killed `payvault dev` is reused.
    async fn start(
        bin: &Path,
        pgdata: &Path,
        dir: &Path,
        account: Option<Account>,
    ) -> anyhow::Result<Self> {
        if accepts_connections(pgdata).await {
            eprintln!(
                "payvault dev: reusing the PostgreSQL already running in {}",
                pgdata.display()
            );
            let pid_file = pgdata.join("postmaster.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw);
            return Ok(Self {
                child: None,
                adopted: pid.map(|pid| (pid, pid_file)),
            });
        }
        let log_path = dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut child = pg_command(bin.join("postgres"), account)
            // Its own process group: Ctrl-C in the terminal reaches payvault only, which drains
            // its requests first and then stops PostgreSQL itself.
            .process_group(0)
            .arg("-D")
            .arg(pgdata)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", pgdata.display()))
            .args(["-c", "unix_socket_permissions=0700"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let deadline = Instant::now() + PG_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "postgres exited during start-up ({status}); see {}",
                    log_path.display()
                );
            }
            if accepts_connections(pgdata).await {
                return Ok(Self {
                    child: Some(child),
                    adopted: None,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "postgres did not start within {PG_DEADLINE:?}; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown (SIGINT): PostgreSQL rolls back open transactions and checkpoints.
    async fn stop(&mut self) {
        if let Some((pid, pid_file)) = self.adopted.take() {
            // Not our child: signal it, and wait for it to remove its pid file.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let deadline = Instant::now() + PG_DEADLINE;
            while pid_file.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if pid_file.exists() {
                eprintln!("payvault dev: the adopted PostgreSQL did not stop in time");
            }
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + PG_DEADLINE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return true,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return false;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .await
        .unwrap_or(false);
        if !waited {
            eprintln!("payvault dev: PostgreSQL did not stop in time and was killed");
        }
    }
}

async fn accepts_connections(pgdata: &Path) -> bool {
    let opts = sqlx::postgres::PgConnectOptions::new()
        .socket(pgdata)
        .username(DB_USER)
        .database("postgres");
    match sqlx::ConnectOptions::connect(&opts).await {
        Ok(conn) => {
            let _ = sqlx::Connection::close(conn).await;
            true
        }
        Err(_) => false,
    }
}

/// `postgres://payvault@localhost/<db>?host=<socket dir>`.
fn database_url(pgdata: &Path, db: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(&format!("postgres://{DB_USER}@localhost/{db}"))?;
    let socket_dir = pgdata
        .to_str()
        .context("the data directory path is not valid UTF-8")?;
    url.query_pairs_mut().append_pair("host", socket_dir);
    Ok(url.to_string())
}

async fn create_database(pgdata: &Path) -> anyhow::Result<()> {
    let opts = sqlx::postgres::PgConnectOptions::new()
        .socket(pgdata)
        .username(DB_USER)
        .database("postgres");
    let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(DB_NAME)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {DB_NAME}"))
            .execute(&mut conn)
            .await?;
    }
    sqlx::Connection::close(conn).await?;
    Ok(())
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

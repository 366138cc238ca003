//! The local PostgreSQL runner: finds the installed server binaries, creates a cluster with
//! `initdb`, starts `postgres` listening only on a Unix socket inside its data directory (never
//! on TCP, trust authentication for its superuser `payvault`), stops it or adopts one an earlier
//! run left behind, and creates databases in it. Run as root, it runs PostgreSQL as the
//! `postgres` account, since PostgreSQL refuses to run as root.
//!
//! `payvault dev` (the parent module) keeps one cluster in its data directory across runs.
//! [`LocalCluster::start_throwaway`] makes a fresh one in a temporary directory for a test
//! harness that has no server to use: the same code paths, plus a watchdog that stops the
//! cluster and removes its directory once the process that started it is gone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The cluster's superuser.
const DB_USER: &str = "payvault";
/// Longest path a Unix socket address holds (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long PostgreSQL gets to start and to stop.
const PG_DEADLINE: Duration = Duration::from_secs(60);

/// PostgreSQL refuses to run as root; as root, the cluster belongs to the `postgres` account.
#[derive(Debug, Clone, Copy)]
pub(super) struct Account {
    uid: u32,
    gid: u32,
}

/// The account to run PostgreSQL as: `None` (the current user) unless we are root.
pub(super) fn postgres_account() -> anyhow::Result<Option<Account>> {
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
pub(super) fn create_private_dir(dir: &Path, traversable: bool) -> anyhow::Result<()> {
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

/// Whether the cluster's socket, `<pgdata>/.s.PGSQL.5432`, fits in a Unix socket address.
pub(super) fn socket_path_fits(pgdata: &Path) -> bool {
    pgdata.join(".s.PGSQL.5432").as_os_str().len() <= MAX_SOCKET_PATH
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

/// Whether `pgdata` holds a cluster: made whole (see [`init_cluster`]), absent, or the incomplete
/// remains of an interrupted `initdb` from a version that ran it in place.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClusterState {
    Complete,
    Missing,
    Incomplete,
}

pub(super) fn cluster_state(pgdata: &Path) -> ClusterState {
    if pgdata.join("PG_VERSION").exists() {
        ClusterState::Complete
    } else if pgdata.exists() {
        ClusterState::Incomplete
    } else {
        ClusterState::Missing
    }
}

/// Where `initdb` builds a cluster before it is renamed to `pgdata`.
fn staging_dir(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.as_os_str().to_owned();
    name.push(".initdb");
    PathBuf::from(name)
}

/// An `initdb` run and its staging directory, both removed unless the run completed: dropped
/// on an error, a panic or when the future running it is cancelled by Ctrl-C.
struct Staging {
    /// `None` once renamed into place.
    dir: Option<PathBuf>,
    initdb: Option<Child>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(mut child) = self.initdb.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates a cluster in `pgdata` (which must not exist), atomically: `initdb` runs in a staging
/// sibling, `<pgdata>.initdb`, which is renamed to `pgdata` only once `initdb` has succeeded, so
/// an interrupted run (Ctrl-C, a kill, a power cut) never leaves a half-made `pgdata` that
/// would be taken for a cluster. A staging directory left by such a run is discarded first.
/// `initdb`'s output goes to `dir/initdb.log`.
pub(super) async fn init_cluster(
    bin: &Path,
    pgdata: &Path,
    dir: &Path,
    account: Option<Account>,
) -> anyhow::Result<()> {
    let staging = staging_dir(pgdata);
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => eprintln!(
            "payvault dev: removed {}, left by an interrupted initdb",
            staging.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove {}", staging.display()));
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let mut guard = Staging {
        dir: Some(staging.clone()),
        initdb: None,
    };
    if let Some(a) = account {
        std::os::unix::fs::chown(&staging, Some(a.uid), Some(a.gid)).with_context(|| {
            format!("cannot give {} to the postgres account", staging.display())
        })?;
    }
    let log_path = dir.join("initdb.log");
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let child = pg_command(bin.join("initdb"), account)
        .arg("--pgdata")
        .arg(&staging)
        .args([
            "--username",
            DB_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
        ])
        .args(["--no-instructions"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot run initdb")?;
    // Polled rather than waited for on a blocking thread, so that Ctrl-C (which cancels this
    // future) is answered at once: dropping the guard kills initdb and removes its staging.
    let child = guard.initdb.insert(child);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    guard.initdb = None;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "initdb failed ({status}); its output is in {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    std::fs::rename(&staging, pgdata).with_context(|| {
        format!(
            "cannot rename {} to {}",
            staging.display(),
            pgdata.display()
        )
    })?;
    guard.dir = None;
    Ok(())
}

/// A running cluster: started by us, or adopted.
pub(super) struct LocalPostgres {
    child: Option<Child>,
    /// A postmaster an earlier, killed `payvault dev` left running, adopted by its pid.
    adopted: Option<(rustix::process::Pid, PathBuf)>,
}

impl LocalPostgres {
    /// Starts `postgres` on a Unix socket in its data directory and waits until it accepts
    /// connections. A cluster left running by an earlier, killed `payvault dev` is reused.
    pub(super) async fn start(
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
        let child = pg_command(bin.join("postgres"), account)
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
        // Owned from here: if this future is cancelled (Ctrl-C) or fails, dropping `running`
        // stops PostgreSQL.
        let mut running = Self {
            child: Some(child),
            adopted: None,
        };
        let deadline = Instant::now() + PG_DEADLINE;
        loop {
            if let Some(child) = running.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    running.child = None;
                    bail!(
                        "postgres exited during start-up ({status}); see {}",
                        log_path.display()
                    );
                }
            }
            if accepts_connections(pgdata).await {
                return Ok(running);
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not start within {PG_DEADLINE:?}; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown (SIGINT): PostgreSQL rolls back open transactions and checkpoints.
    pub(super) async fn stop(&mut self) {
        let mut taken = Self {
            child: self.child.take(),
            adopted: self.adopted.take(),
        };
        let _ = tokio::task::spawn_blocking(move || taken.stop_blocking()).await;
    }

    /// [`Self::stop`] on the calling thread; what `Drop` does when `stop` was not reached.
    fn stop_blocking(&mut self) {
        if let Some((pid, pid_file)) = self.adopted.take() {
            // Not our child: signal it, and wait for it to remove its pid file.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let deadline = Instant::now() + PG_DEADLINE;
            while pid_file.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
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
        let deadline = Instant::now() + PG_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("payvault dev: PostgreSQL did not stop in time and was killed");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Every way out (an early error, a cancelled start, a panic) stops the PostgreSQL we started
/// or adopted; [`LocalPostgres::stop`] is the same without blocking the runtime.
impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop_blocking();
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
pub(super) fn database_url(pgdata: &Path, db: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(&format!("postgres://{DB_USER}@localhost/{db}"))?;
    let socket_dir = pgdata
        .to_str()
        .context("the data directory path is not valid UTF-8")?;
    url.query_pairs_mut().append_pair("host", socket_dir);
    Ok(url.to_string())
}

/// Creates database `name` in the cluster unless it exists.
pub(super) async fn create_database(pgdata: &Path, name: &str) -> anyhow::Result<()> {
    let opts = sqlx::postgres::PgConnectOptions::new()
        .socket(pgdata)
        .username(DB_USER)
        .database("postgres");
    let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
    }
    sqlx::Connection::close(conn).await?;
    Ok(())
}

/// A cluster in a fresh temporary directory that never outlives the process that started it.
///
/// For test harnesses that need a PostgreSQL server and find none. The cluster is made and run
/// exactly as `payvault dev` makes and runs its own (as the `postgres` account when root,
/// listening only on a Unix socket in its data directory), and comes with a watchdog: a small
/// `sh` process in a process group of its own (so Ctrl-C in a terminal does not kill it first)
/// that reads a pipe from this process until end of file. End of file comes when this value is
/// dropped or stopped, or when the process exits in any way, `kill -9` included, since the
/// kernel closes the pipe then. The watchdog then stops the cluster (fast shutdown, then
/// `SIGKILL` to its process group after 60 s) and removes the directory.
pub struct LocalCluster {
    dir: PathBuf,
    admin_url: String,
    postgres: LocalPostgres,
    /// The watchdog and the write end of its pipe.
    watchdog: Option<(Child, ChildStdin)>,
}

/// The watchdog, run by `sh -c` with the cluster's directory as `$1`. The postmaster's pid
/// comes from its pid file, which PostgreSQL removes as the last step of a clean shutdown: the
/// wait watches that file, not the pid alone, since a postmaster whose parent is gone may stay a
/// zombie (which `kill -0` still finds) until something reaps it.
const WATCHDOG: &str = r#"
trap '' INT HUP
while read -r _; do :; done
pidfile="$1/pgdata/postmaster.pid"
pid=$(head -n 1 "$pidfile" 2>/dev/null)
if [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; then
  n=0
  while [ -e "$pidfile" ] && kill -0 "$pid" 2>/dev/null && [ "$n" -lt 600 ]; do
    sleep 0.1; n=$((n + 1))
  done
  if [ -e "$pidfile" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null; fi
fi
rm -rf "$1"
"#;

impl LocalCluster {
    /// Creates a cluster in a new directory `payvault-pg-<random>` under `parent`, starts it
    /// and waits (with a deadline) until it accepts connections. `pg_bin` is the directory of
    /// `initdb` and `postgres`, found as [`find_pg_bin`] finds it when `None`.
    ///
    /// As root, `parent` must be reachable by the `postgres` account: the system temporary
    /// directory (`/tmp`) is. The directory itself is created mode 0711 (0700 when not root),
    /// the data directory inside it belongs to the account PostgreSQL runs as.
    pub async fn start_throwaway(parent: &Path, pg_bin: Option<&Path>) -> anyhow::Result<Self> {
        let account = postgres_account()?;
        let bin = find_pg_bin(pg_bin)?;
        let parent = std::fs::canonicalize(parent)
            .with_context(|| format!("cannot resolve {}", parent.display()))?;
        if let Some(a) = account {
            check_reachable(&parent, a)?;
        }
        let dir = parent.join(format!("payvault-pg-{}", uuid::Uuid::new_v4().simple()));
        let pgdata = dir.join("pgdata");
        if !socket_path_fits(&pgdata) {
            bail!(
                "{} is too long a path for PostgreSQL's Unix socket; choose a shorter parent directory",
                pgdata.display()
            );
        }
        // Not recursive: fails if something is already there.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        create_private_dir(&dir, account.is_some())?;
        // Armed before PostgreSQL starts, so nothing started here can outlive this process.
        let watchdog = match spawn_watchdog(&dir) {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut cluster = Self {
            admin_url: database_url(&pgdata, "postgres")?,
            dir: dir.clone(),
            postgres: LocalPostgres {
                child: None,
                adopted: None,
            },
            watchdog: Some(watchdog),
        };
        init_cluster(&bin, &pgdata, &dir, account).await?;
        cluster.postgres = match LocalPostgres::start(&bin, &pgdata, &dir, account).await {
            Ok(postgres) => postgres,
            Err(e) => {
                // The watchdog removes the directory, log included: keep what it said.
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                return Err(e.context(format!("PostgreSQL's log:\n{log}")));
            }
        };
        Ok(cluster)
    }

    /// A superuser URL for the cluster's `postgres` database, over its Unix socket:
    /// `postgres://payvault@localhost/postgres?host=<data directory>`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The directory holding the cluster (`pgdata/`) and its logs (`initdb.log`, `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the cluster (fast shutdown), then lets the watchdog remove its directory and waits
    /// for that.
    pub async fn stop(mut self) {
        self.postgres.stop().await;
        if let Some((mut child, lifeline)) = self.watchdog.take() {
            drop(lifeline);
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

/// Starts the watchdog described on [`LocalCluster`] for `dir`.
fn spawn_watchdog(dir: &Path) -> anyhow::Result<(Child, ChildStdin)> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("payvault-pg-watchdog")
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the watchdog for the throwaway PostgreSQL (/bin/sh)")?;
    match child.stdin.take() {
        Some(lifeline) => Ok((child, lifeline)),
        None => bail!("the watchdog has no stdin"),
    }
}

/// Refuses a parent directory the `postgres` account cannot traverse, with a clear message
/// instead of initdb's "permission denied".
fn check_reachable(dir: &Path, account: Account) -> anyhow::Result<()> {
    if let Some((ancestor, mode)) = unreachable_ancestor(dir, account)? {
        bail!(
            "{} is not reachable by the postgres account (mode {mode:o}), which runs PostgreSQL as root; choose a directory such as /tmp",
            ancestor.display(),
        );
    }
    Ok(())
}

/// The first directory on the way to `path` (itself included, if it exists) that `account`
/// cannot traverse, with its mode. The part of `path` that does not exist yet is skipped: what
/// `payvault dev` creates there is traversable.
pub(super) fn unreachable_ancestor(
    path: &Path,
    account: Account,
) -> anyhow::Result<Option<(PathBuf, u32)>> {
    let path =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let Some(existing) = path.ancestors().find(|a| a.exists()) else {
        return Ok(None);
    };
    let existing = std::fs::canonicalize(existing)
        .with_context(|| format!("cannot resolve {}", existing.display()))?;
    for ancestor in existing.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .with_context(|| format!("cannot read {}", ancestor.display()))?;
        let mode = meta.mode();
        let reachable = mode & 0o001 != 0
            || (meta.uid() == account.uid && mode & 0o100 != 0)
            || (meta.gid() == account.gid && mode & 0o010 != 0);
        if !reachable {
            return Ok(Some((ancestor.to_owned(), mode & 0o777)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_unreachable_ancestor_is_found_and_what_is_yet_to_be_made_is_not() {
        // An account that owns nothing here: only the "other" bits count for it.
        let stranger = Account {
            uid: 0xfff0,
            gid: 0xfff0,
        };
        let base = std::env::temp_dir().join(format!("pv-reach-{}", uuid::Uuid::new_v4().simple()));
        let private = base.join("private");
        std::fs::create_dir_all(&private).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let found = unreachable_ancestor(&private.join("not/yet/made"), stranger).unwrap();
        assert_eq!(found, Some((private.clone(), 0o700)));
        assert_eq!(
            unreachable_ancestor(&base.join("open/dev"), stranger).unwrap(),
            None
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(
            unreachable_ancestor(&private.join("dev"), stranger).unwrap(),
            None
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}

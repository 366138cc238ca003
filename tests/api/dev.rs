//! `payvault dev`, the zero-configuration local mode, run from the built binary as a user runs
//! it: its own PostgreSQL cluster in a fresh directory, a tokenize and a charge, a restart, and
//! the token still there; Ctrl-C at any moment of its start-up; the banner's commands pasted
//! into a shell.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::{self, card_charge, card_tokenize, new_txn};
use payvault::dev::postgres::LocalCluster;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// What the banner of a running `payvault dev` told us.
struct Dev {
    child: Child,
    base: String,
    username: String,
    password: String,
    api_key: String,
    /// The lines the banner says to paste into a shell.
    commands: Vec<String>,
}

fn start(dir: &Path) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["dev", "--dir"])
        .arg(dir)
        .env("PAYVAULT_LISTEN", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("PAYVAULT_MASTER_KEY")
        .env_remove("PAYVAULT_ENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let field = |line: &str, name: &str| {
        line.trim()
            .strip_prefix(name)
            .map(|rest| rest.trim().to_owned())
    };
    let (mut base, mut username, mut password, mut api_key) = (None, None, None, None);
    let (mut commands, mut in_commands, mut banner_done) = (Vec::new(), false, false);
    // initdb on a slow machine takes a few seconds; the banner is printed once serving.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !banner_done {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            // Not left running (with its PostgreSQL) once the test has failed.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            panic!("payvault dev printed no (complete) banner in time");
        };
        base = base.or_else(|| field(&line, "listening:"));
        username = username.or_else(|| field(&line, "username:"));
        password = password.or_else(|| field(&line, "password:"));
        api_key = api_key.or_else(|| field(&line, "api key:"));
        if line.starts_with("====") {
            banner_done = in_commands;
        } else if in_commands {
            commands.push(line.trim().to_owned());
        } else if line.contains("paste these lines into a shell") {
            in_commands = true;
        }
    }
    Dev {
        child,
        base: base.unwrap(),
        username: username.unwrap(),
        password: password.unwrap(),
        api_key: api_key.unwrap(),
        commands,
    }
}

impl Dev {
    async fn connector(&self, body: &Value) -> Value {
        helpers::connector_post(&self.base, (&self.username, &self.password), body).await
    }

    /// The token's metadata through the merchant API, as (HTTP status, body).
    async fn token(&self, token: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/tokens/{token}", self.base))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "payvault dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "payvault dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// PostgreSQL's server binaries, where `payvault dev` looks for them. Their absence is a
/// failure, not a reason to skip: the README's test command requires them.
fn server_binaries() -> PathBuf {
    let given = std::env::var_os("PAYVAULT_PG_BIN").map(PathBuf::from);
    payvault::dev::postgres::find_pg_bin(given.as_deref())
        .unwrap_or_else(|e| panic!("`cargo test` needs PostgreSQL's server binaries: {e:#}"))
}

#[tokio::test]
async fn dev_mode_starts_from_nothing_and_keeps_its_data_across_restarts() {
    let bin = server_binaries();
    eprintln!("using PostgreSQL from {}", bin.display());
    let dir = std::env::temp_dir().join(format!("pvdev-{}", uuid::Uuid::new_v4().simple()));

    let dev = start(&dir);
    assert_eq!(dev.username, "twilio-dev");
    assert!(dev.password.starts_with("pvs_"));
    let tokenized = dev
        .connector(&card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let token = tokenized["token_id"].as_str().expect("a token").to_owned();
    let charged = dev
        .connector(&card_charge(&new_txn(), "4111111111111111", "10.00"))
        .await;
    assert!(
        charged["charge_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ch_sandbox_")),
        "{charged}"
    );
    // The banner's follow-up commands run as pasted, from anywhere: `payvault` is not on PATH
    // after `cargo run`.
    assert!(dev.commands.len() >= 3, "{:?}", dev.commands);
    let program = dev.commands.last().unwrap().split(' ').next().unwrap();
    assert!(
        program.trim_start_matches('\'').starts_with('/'),
        "an absolute path: {program}"
    );
    let pasted = Command::new("sh")
        .arg("-c")
        .arg(format!("set -e\n{}", dev.commands.join("\n")))
        .current_dir("/")
        .env("PATH", "/usr/bin:/bin")
        .env_remove("DATABASE_URL")
        .env_remove("PAYVAULT_MASTER_KEY")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&pasted.stdout);
    assert!(
        pasted.status.success(),
        "{:?}\n{out}\n{}",
        dev.commands,
        String::from_utf8_lossy(&pasted.stderr)
    );
    assert!(
        out.contains("dev-connector") && out.contains("dev-backend"),
        "{out}"
    );

    let first_password = dev.password.clone();
    dev.stop();
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL stops with payvault"
    );

    // Keys and credentials are the owner's alone.
    for file in ["master.key", "credentials.json"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let key = std::fs::read_to_string(dir.join("master.key")).unwrap();
    assert!(key.starts_with("pvdev.1."), "a development key");

    let dev = start(&dir);
    assert_eq!(
        dev.password, first_password,
        "same credentials after a restart"
    );
    let (status, meta) = dev.token(&token).await;
    assert_eq!(status, 200);
    assert_eq!(meta["status"], "active", "{meta}");
    let mut by_token = card_charge(&new_txn(), "4111111111111111", "5.00");
    let body = by_token.as_object_mut().unwrap();
    for field in ["cardnumber", "cvv", "expiry_month", "expiry_year"] {
        body.remove(field);
    }
    body.insert("token".into(), token.clone().into());
    let charged = dev.connector(&by_token).await;
    assert!(charged["charge_id"].is_string(), "{charged}");

    // Killed outright, payvault cannot stop its PostgreSQL; the next start adopts the running
    // cluster and stops it on exit.
    let mut killed = dev.child;
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(dir.join("pgdata/postmaster.pid").exists(), "left running");
    let dev = start(&dir);
    assert_eq!(dev.token(&token).await.0, 200);
    dev.stop();
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "the adopted PostgreSQL stops with payvault"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dev_mode_is_refused_in_production() {
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["dev", "--dir", "/nonexistent/never-created"])
        .env("PAYVAULT_ENV", "production")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PAYVAULT_ENV=production refuses it"),
        "{stderr}"
    );
}

/// The throwaway cluster the test harness falls back on: started in a fresh directory, reachable
/// at its admin URL, and gone, directory included, once stopped.
#[tokio::test]
async fn a_throwaway_cluster_serves_and_leaves_nothing_behind() {
    let bin = server_binaries();
    let cluster = LocalCluster::start_throwaway(&std::env::temp_dir(), Some(&bin))
        .await
        .unwrap();
    let dir = cluster.dir().to_owned();
    assert!(dir.join("pgdata/postmaster.pid").exists(), "running");
    let mut conn = PgConnection::connect(cluster.admin_url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    cluster.stop().await;
    assert!(!dir.exists(), "{} removed", dir.display());
}

/// The processes whose parent is `parent` and whose command name is `name`, from /proc.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if &stat[open + 1..close] == name && ppid == Some(&parent.to_string()) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Polls `probe` every few milliseconds until it answers, or panics after `limit`.
fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `payvault dev` in a process group of its own, as a shell runs a foreground job: a Ctrl-C in
/// the terminal is SIGINT to that whole group.
fn spawn_in_own_group(dir: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["dev", "--dir"])
        .arg(dir)
        .env("PAYVAULT_LISTEN", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("PAYVAULT_MASTER_KEY")
        .env_remove("PAYVAULT_ENV")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ctrl_c(job: &Child) {
    let pid = rustix::process::Pid::from_raw(job.id() as i32).unwrap();
    rustix::process::kill_process_group(pid, rustix::process::Signal::INT).unwrap();
}

/// Waits (with a deadline) for `job` to exit; its exit status and stderr.
fn exited(mut job: Child) -> (std::process::ExitStatus, String) {
    poll("payvault dev to exit", Duration::from_secs(60), || {
        job.try_wait().unwrap()
    });
    let out = job.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops a PostgreSQL a failed test left running.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|pid| alive(*pid)) {
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
    }
}

/// Ctrl-C during the first initdb, and again the moment PostgreSQL is started: neither leaves
/// anything behind (no half-made cluster that the next start trips over, no orphaned
/// PostgreSQL), and the next start works.
#[test]
fn ctrl_c_at_any_moment_of_the_start_leaves_nothing_behind() {
    server_binaries();
    let dir = std::env::temp_dir().join(format!("pvdev-{}", uuid::Uuid::new_v4().simple()));

    // During initdb.
    let job = spawn_in_own_group(&dir);
    let initdb = poll("initdb to start", Duration::from_secs(60), || {
        children_named(job.id(), "initdb").first().copied()
    });
    ctrl_c(&job);
    let (status, stderr) = exited(job);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!alive(initdb), "initdb stopped");
    for leftover in ["pgdata", "pgdata.initdb"] {
        assert!(
            !dir.join(leftover).exists(),
            "{leftover} left behind: {stderr}"
        );
    }

    // The moment PostgreSQL is started (initdb done, not yet accepting connections).
    let job = spawn_in_own_group(&dir);
    let postgres = poll("postgres to start", Duration::from_secs(120), || {
        children_named(job.id(), "postgres").first().copied()
    });
    let _cleanup = StopOnDrop(Some(postgres));
    ctrl_c(&job);
    let (status, stderr) = exited(job);
    assert!(!status.success(), "{stderr}");
    poll("PostgreSQL to stop", Duration::from_secs(60), || {
        (!alive(postgres)).then_some(())
    });
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "PostgreSQL shut down cleanly: {stderr}"
    );

    // The cluster made by the second start is whole: the next start serves from it.
    let dev = start(&dir);
    assert_eq!(dev.username, "twilio-dev");
    dev.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As root, PostgreSQL runs as the `postgres` account; a directory it cannot enter (under
/// `/root`, typically) is refused before initdb, with what to do instead of initdb's bare
/// "Permission denied". (Only root runs PostgreSQL under another account; the check itself is
/// unit-tested in `dev::postgres`.)
#[test]
fn as_root_a_directory_postgres_cannot_reach_is_refused_with_what_to_do() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: payvault dev runs PostgreSQL as this user, nothing to check");
        return;
    }
    let private = std::env::temp_dir().join(format!("pvroot-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["dev", "--dir"])
        .arg(private.join("dev"))
        .env_remove("PAYVAULT_ENV")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "`postgres` account, which cannot enter {} (mode 700)",
            private.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{} dev --dir /var/tmp/payvault-dev",
            env!("CARGO_BIN_EXE_payvault")
        )),
        "{stderr}"
    );
    assert!(!private.join("dev").exists(), "nothing created");
    std::fs::remove_dir_all(&private).unwrap();
}

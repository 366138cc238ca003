//! `payvault dev`, the zero-configuration local mode, run from the built binary as a user runs
//! it: its own PostgreSQL cluster in a fresh directory, a tokenize and a charge, a restart, and
//! the token still there.

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
    // initdb on a slow machine takes a few seconds; the banner is printed once serving.
    let deadline = Instant::now() + Duration::from_secs(120);
    while api_key.is_none() || base.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("payvault dev printed no banner in time");
        base = base.or_else(|| field(&line, "listening:"));
        username = username.or_else(|| field(&line, "username:"));
        password = password.or_else(|| field(&line, "password:"));
        api_key = api_key.or_else(|| field(&line, "api key:"));
    }
    Dev {
        child,
        base: base.unwrap(),
        username: username.unwrap(),
        password: password.unwrap(),
        api_key: api_key.unwrap(),
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

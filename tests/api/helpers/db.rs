//! Test databases: the server that hosts them, one fresh migrated database per test, and
//! sealing the audit log.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use payvault::crypto::KeyRing;
use payvault::dev::postgres::LocalCluster;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The local server the tests use when `PAYVAULT_TEST_DATABASE_URL` is unset.
const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server that hosts test databases: `PAYVAULT_TEST_DATABASE_URL`, else the local
/// trust-authenticated PostgreSQL on 127.0.0.1:5432, else, when nothing answers there, a
/// throwaway cluster started once for the whole test process.
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("PAYVAULT_TEST_DATABASE_URL") {
            return url;
        }
        let local = SocketAddr::from(([127, 0, 0, 1], 5432));
        if TcpStream::connect_timeout(&local, Duration::from_secs(2)).is_ok() {
            return LOCAL_ADMIN_URL.to_owned();
        }
        start_throwaway_cluster()
    })
    .clone()
}

/// Starts a cluster as `payvault dev` does, in a fresh directory under the temporary directory,
/// and keeps it for the life of the process; its watchdog stops it and removes the directory
/// once the process is gone, however it ends. The start runs on a thread of its own, with a
/// runtime of its own: each `#[tokio::test]` has its own runtime, and the first test to get
/// here is running inside it.
fn start_throwaway_cluster() -> String {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    let started = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pg_bin = std::env::var_os("PAYVAULT_PG_BIN").map(PathBuf::from);
        runtime.block_on(LocalCluster::start_throwaway(
            &std::env::temp_dir(),
            pg_bin.as_deref(),
        ))
    })
    .join()
    .unwrap();
    let cluster = started.unwrap_or_else(|e| {
        panic!(
            "tests need PostgreSQL: nothing answers on 127.0.0.1:5432 and a throwaway cluster \
             could not be started ({e:#}); set PAYVAULT_TEST_DATABASE_URL to use a server of your own"
        )
    });
    eprintln!(
        "tests: nothing answers on 127.0.0.1:5432; using a throwaway PostgreSQL in {}",
        cluster.dir().display()
    );
    CLUSTER.get_or_init(|| cluster).admin_url().to_owned()
}

/// The URL of database `db` on the admin URL's server (which may carry a `host` query
/// parameter: a Unix socket directory).
fn url_for(db: &str) -> String {
    let mut url = reqwest::Url::parse(&admin_url()).expect("the admin URL is a URL");
    url.set_path(&format!("/{db}"));
    url.to_string()
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let db = Self::unmigrated().await;
        payvault::store::migrate(&db.pool).await.unwrap();
        db
    }

    /// A fresh, empty database: no migration applied yet.
    pub async fn unmigrated() -> Self {
        let name = format!("payvault_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url()).await.expect(
            "tests need PostgreSQL: set PAYVAULT_TEST_DATABASE_URL or run one on 127.0.0.1:5432",
        );
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url_for(&name))
            .await
            .unwrap();
        Self { name, pool }
    }

    pub fn url(&self) -> String {
        url_for(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime (possibly while unwinding); use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ =
                        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}

/// Seals every audit event, waiting for a server's own sealer if it holds the lock right now.
/// The sealing lag bound tests verify with (the default).
pub const MAX_UNSEALED: Duration = Duration::from_secs(300);

pub async fn seal_all(pool: &PgPool, keys: &KeyRing) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        payvault::audit::seal::seal_pending(pool, keys)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_unsealed")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit events were not sealed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A runtime role for a test database, set up as `payvault migrate --runtime-role` does, and
/// dropped (with its grants) when this value is. Roles belong to the whole server: each test has
/// its own name.
pub struct RuntimeRole {
    pub name: String,
    password: String,
    db: String,
}

impl RuntimeRole {
    pub async fn new(db: &TestDb) -> Self {
        let name = format!(
            "payvault_rt_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let password = uuid::Uuid::new_v4().simple().to_string();
        let created = payvault::store::roles::ensure_runtime_role(
            &db.pool,
            &name,
            Some(&password.clone().into()),
        )
        .await
        .unwrap();
        assert!(created);
        Self {
            name,
            password,
            db: db.name.clone(),
        }
    }

    /// The test database's URL, connecting as this role with its password.
    pub fn url(&self) -> String {
        let mut url = reqwest::Url::parse(&url_for(&self.db)).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some(&self.password)).unwrap();
        url.to_string()
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(3)
            .connect(&self.url())
            .await
            .unwrap()
    }
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        let (name, db) = (self.name.clone(), self.db.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                // Its grants in the test database first (if that still exists), then the role.
                if let Ok(mut conn) = PgConnection::connect(&url_for(&db)).await {
                    let _ = sqlx::query(&format!(r#"DROP OWNED BY "{name}""#))
                        .execute(&mut conn)
                        .await;
                }
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!(r#"DROP ROLE IF EXISTS "{name}""#))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

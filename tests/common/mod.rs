//! Test harness: every test gets its own freshly migrated database and its own payvault server
//! on a loopback port, and talks to it over HTTP like Twilio does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use payvault::auth::admin::{self, CreatedCredential};
use payvault::auth::{CredentialKind, Scope};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::startup::{Application, Settings};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server that hosts test databases. `PAYVAULT_TEST_DATABASE_URL` overrides the default
/// local trust-authenticated PostgreSQL.
pub fn admin_url() -> String {
    std::env::var("PAYVAULT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

/// Everything every test binary logs, for leak scans.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // Everything payvault logs, at the most verbose level, so a leak at any level is caught.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace,hyper=debug,hyper_util=debug,h2=info,tokio=info,runtime=info")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    });
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
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
        payvault::store::migrate(&pool).await.unwrap();
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

pub struct TestApp {
    pub addr: SocketAddr,
    pub db: Arc<TestDb>,
    pub keys: Arc<KeyRing>,
    pub client: reqwest::Client,
    /// A connector credential for Twilio-style requests.
    pub connector: CreatedCredential,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs `body` (any bytes) to `path` as the connector credential.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(
                &self.connector.row.username,
                Some(self.connector.secret.expose()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs JSON to `path` as the connector credential; returns status and parsed body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.post_raw(path, body.to_string()).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    pub async fn create_credential(
        &self,
        name: &str,
        kind: CredentialKind,
        scopes: Option<Vec<Scope>>,
    ) -> CreatedCredential {
        admin::create_credential(self.pool(), name, kind, scopes)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.pool())
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn test_keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::from_keys(vec![MasterKey::generate(1)]).unwrap())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Arc::new(TestDb::new().await), test_keys()).await
}

/// Starts a server against an existing database: two calls with the same database make two
/// instances sharing it.
pub async fn spawn_app_with(db: Arc<TestDb>, keys: Arc<KeyRing>) -> TestApp {
    init_logging();
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 16 * 1024,
        auth_cache_ttl: Duration::from_secs(60),
    };
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&db.url())
        .await
        .unwrap();
    let app = Application::build(&settings, pool, keys.clone())
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let connector = admin::create_credential(
        &db.pool,
        &format!("twilio-{}", addr.port()),
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap();
    TestApp {
        addr,
        db,
        keys,
        client: reqwest::Client::new(),
        connector,
        stop: Some(stop),
    }
}

/// A valid Twilio card tokenize request.
pub fn card_tokenize(txn: &str, pan: &str) -> Value {
    serde_json::json!({
        "method": "tokenize",
        "transaction_id": txn,
        "cardnumber": pan,
        "cvv": "123",
        "expiry_month": "08",
        "expiry_year": "35",
        "postal_code": "94111",
        "description": "pizza",
        "parameters": {"order_id": "A-1"}
    })
}

/// A valid Twilio ACH tokenize request.
pub fn bank_tokenize(txn: &str, account: &str) -> Value {
    serde_json::json!({
        "method": "tokenize",
        "transaction_id": txn,
        "bankaccountnumber": account,
        "routingnumber": "121000358",
        "description": null,
        "parameters": {}
    })
}

pub fn new_txn() -> String {
    uuid::Uuid::new_v4().to_string()
}

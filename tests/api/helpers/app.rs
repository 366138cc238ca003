//! A payvault server per test, on a loopback port, and the client side of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use payvault::app::{KeySource, Service};
use payvault::auth::admin::{self, CreatedCredential};
use payvault::auth::{CredentialKind, Scope};
use payvault::config::{ProcessorConfig, ServeConfig, TlsFiles};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::processor::profile::{ProcessorEnvironment, Profile, ProfileConfig};
use serde_json::Value;
use sqlx::PgPool;

use super::db::TestDb;
use super::logs::init_logging;

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

    /// POSTs `body` to `path` with the given credential (Basic auth).
    pub async fn post_as(
        &self,
        cred: &CreatedCredential,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .basic_auth(&cred.row.username, Some(cred.secret.expose()))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
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

/// How a test server charges.
pub struct Options {
    pub dedup: bool,
    pub processor: ProcessorConfig,
    pub processor_timeout: Duration,
    pub idempotency_wait: Duration,
    pub tls: Option<TlsFiles>,
    /// Reach the database through this URL (a proxy, say) instead of the test database's own.
    pub database_url: Option<String>,
    /// A charge attempt's lease and heartbeat, instead of the defaults.
    pub charge_lease: Option<(Duration, Duration)>,
    /// Any further setting, applied last.
    pub tune: Option<Tune>,
}

/// A change to a test server's configuration, applied after every other option.
pub type Tune = Box<dyn FnOnce(&mut ServeConfig) + Send>;

impl Default for Options {
    /// The in-process sandbox, with a 1 s "slow" case and a 2 s processor timeout.
    fn default() -> Self {
        let timeout = Duration::from_secs(2);
        Self {
            dedup: false,
            processor: ProcessorConfig::Sandbox,
            processor_timeout: timeout,
            idempotency_wait: Duration::from_secs(9),
            tls: None,
            database_url: None,
            charge_lease: None,
            tune: None,
        }
    }
}

impl Options {
    /// The `generic` profile pointed at `url`, with bearer auth `stub-secret`.
    pub fn generic(url: &str, timeout: Duration) -> Self {
        Self {
            dedup: false,
            processor: generic_processor(url, &[("auth", "bearer"), ("secret", "stub-secret")]),
            processor_timeout: timeout,
            idempotency_wait: Duration::from_secs(9),
            ..Default::default()
        }
    }
}

/// The `generic` profile (Twilio's format forwarded) at `url` with these settings
/// (`auth`, `username`, `secret`, `header`), as `PAYVAULT_PROCESSOR_<SETTING>` would give them.
pub fn generic_processor(url: &str, settings: &[(&str, &str)]) -> ProcessorConfig {
    let profile = Profile::builtin("generic").unwrap().unwrap();
    ProcessorConfig::Profile(
        ProfileConfig::with_settings(profile, ProcessorEnvironment::Test, Some(url), settings)
            .unwrap(),
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Arc::new(TestDb::new().await), test_keys()).await
}

/// Starts a server against an existing database: two calls with the same database make two
/// instances sharing it.
pub async fn spawn_app_with(db: Arc<TestDb>, keys: Arc<KeyRing>) -> TestApp {
    spawn_app_opts(db, keys, Options::default()).await
}

pub async fn spawn_app_opts(db: Arc<TestDb>, keys: Arc<KeyRing>, opts: Options) -> TestApp {
    let source = KeySource::Loaded(keys.clone());
    match start_app(db, source, keys, opts).await {
        Ok(app) => app,
        Err(e) => panic!("payvault did not start: {e}"),
    }
}

/// Starts a server whose master keys come from `source` (a key provider, say); `keys` is what
/// the returned [`TestApp`] offers the test (the same keys, loaded by the test). The start-up
/// error, with its causes, if it does not start.
pub async fn start_app(
    db: Arc<TestDb>,
    source: KeySource,
    keys: Arc<KeyRing>,
    opts: Options,
) -> Result<TestApp, String> {
    init_logging();
    // The same launch path as `payvault serve`, configured as a test needs it.
    let url = opts.database_url.clone().unwrap_or_else(|| db.url());
    let mut config = ServeConfig::new(url.into());
    // Tests use the sandbox and fakes over plain HTTP: development, said explicitly (the default
    // is production).
    config.environment = payvault::config::Environment::Development;
    config.max_body_bytes = 16 * 1024;
    config.db_max_connections = 10;
    config.processor = opts.processor;
    config.processor_connect_timeout = Duration::from_secs(1);
    config.processor_timeout = opts.processor_timeout;
    config.idempotency_wait = opts.idempotency_wait;
    config.sandbox_slow = Duration::from_secs(1);
    config.trusted_proxies = "127.0.0.2".into();
    config.seal_interval = Duration::from_millis(50);
    config.dedup = opts.dedup;
    config.shutdown_grace = Duration::from_secs(5);
    config.tls = opts.tls;
    if let Some((lease, heartbeat)) = opts.charge_lease {
        config.charge_lease = lease;
        config.charge_heartbeat = heartbeat;
    }
    if let Some(tune) = opts.tune {
        tune(&mut config);
    }
    let service = Service {
        config,
        keys: source,
        migrate: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, on_ready) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(payvault::app::launch(
        service,
        listener,
        async move {
            let _ = stopped.await;
        },
        move |_| {
            let _ = ready.send(());
        },
    ));
    if on_ready.await.is_err() {
        return Err(match served.await {
            Ok(Err(e)) => format!("{e:#}"),
            other => format!("{other:?}"),
        });
    }
    let connector = admin::create_credential(
        &db.pool,
        &format!("twilio-{}", addr.port()),
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap();
    Ok(TestApp {
        addr,
        db,
        keys,
        client: reqwest::Client::new(),
        connector,
        stop: Some(stop),
    })
}

/// POSTs a Twilio request to the connector endpoint with HTTP Basic credentials.
pub async fn connector_post(base: &str, (username, password): (&str, &str), body: &Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/"))
        .basic_auth(username, Some(password))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

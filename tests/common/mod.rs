//! Test harness: every test gets its own freshly migrated database and its own payvault server
//! on a loopback port, and talks to it over HTTP like Twilio does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use payvault::app::{KeySource, Service};
use payvault::auth::admin::{self, CreatedCredential};
use payvault::auth::{CredentialKind, Scope};
use payvault::config::{ProcessorConfig, ServeConfig, TlsFiles};
use payvault::crypto::{KeyRing, MasterKey};
use payvault::processor::generic::ProcessorAuth;
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
}

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
        }
    }
}

impl Options {
    /// The generic adapter pointed at `url`, with bearer auth `stub-secret`.
    pub fn generic(url: &str, timeout: Duration) -> Self {
        Self {
            dedup: false,
            processor: ProcessorConfig::Generic {
                url: url.parse().unwrap(),
                auth: ProcessorAuth::Bearer(secrecy::SecretString::from("stub-secret")),
            },
            processor_timeout: timeout,
            idempotency_wait: Duration::from_secs(9),
            ..Default::default()
        }
    }
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
    init_logging();
    // The same launch path as `payvault serve`, configured as a test needs it.
    let url = opts.database_url.clone().unwrap_or_else(|| db.url());
    let mut config = ServeConfig::new(url.into());
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
    let service = Service {
        config,
        keys: KeySource::Loaded(keys.clone()),
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
        panic!("payvault did not start: {:?}", served.await);
    }
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

/// A valid Twilio card charge request.
pub fn card_charge(txn: &str, pan: &str, amount: &str) -> Value {
    let mut v = card_tokenize(txn, pan);
    v["method"] = "charge".into();
    v["amount"] = amount.into();
    v["currency_code"] = "USD".into();
    v
}

pub fn new_txn() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A scripted answer of the [`Stub`] processor.
#[derive(Clone, Debug)]
pub enum StubAnswer {
    Json {
        status: u16,
        body: Value,
        delay: Duration,
    },
    Raw {
        status: u16,
        body: String,
    },
}

impl StubAnswer {
    pub fn approve(id: &str) -> Self {
        Self::Json {
            status: 200,
            body: serde_json::json!({"charge_id": id, "error_code": null, "error_message": null}),
            delay: Duration::ZERO,
        }
    }
    pub fn slow(id: &str, delay: Duration) -> Self {
        let Self::Json { status, body, .. } = Self::approve(id) else {
            unreachable!()
        };
        Self::Json {
            status,
            body,
            delay,
        }
    }
}

/// A request as the processor saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

type Script = Arc<dyn Fn(usize, &Value) -> StubAnswer + Send + Sync>;

/// A payment processor stub on a loopback port: records every call and answers by script
/// (the script gets the call number, from 1, and the request body).
pub struct Stub {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    pub async fn start(
        script: impl Fn(usize, &Value) -> StubAnswer + Send + Sync + 'static,
    ) -> Self {
        use axum::extract::State;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Script = Arc::new(script);
        let state = (seen.clone(), script);
        let app = axum::Router::new()
            .route(
                "/charge",
                axum::routing::post(
                    |State((seen, script)): State<(Arc<Mutex<Vec<Seen>>>, Script)>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move {
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(Seen {
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                body: body.clone(),
                            });
                            seen.len()
                        };
                        let answer = script(n, &body);
                        use axum::response::IntoResponse;
                        match answer {
                            StubAnswer::Json {
                                status,
                                body,
                                delay,
                            } => {
                                tokio::time::sleep(delay).await;
                                (
                                    axum::http::StatusCode::from_u16(status).unwrap(),
                                    axum::Json(body),
                                )
                                    .into_response()
                            }
                            StubAnswer::Raw { status, body } => {
                                (axum::http::StatusCode::from_u16(status).unwrap(), body)
                                    .into_response()
                            }
                        }
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/charge", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, seen }
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Runs futures concurrently on the current task.
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// `needle` occurring in `hay` as a whole token (not inside a longer run of letters/digits).
pub fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// The text around the first whole-word occurrence of `needle`, for failure messages.
fn context(hay: &str, needle: &str) -> String {
    let b = hay.as_bytes();
    hay.match_indices(needle)
        .map(|(i, _)| i)
        .find(|&i| {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + needle.len()).copied();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
        .map(|i| {
            String::from_utf8_lossy(&b[i.saturating_sub(120)..(i + 60).min(b.len())]).into_owned()
        })
        .unwrap_or_default()
}

/// Replaces decimal fractions such as `0.0729` (durations in log lines) with `<num>`, so their
/// digits cannot look like a CVV.
pub fn strip_decimals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start && i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.extend_from_slice(b"<num>");
        } else if i > start {
            out.extend_from_slice(&b[start..i]);
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces UUIDs (request ids, credential ids) so random hex groups cannot look like a CVV.
pub fn strip_uuids(text: &str) -> String {
    let bytes = text.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        let mut j = i;
        for (n, len) in shape.iter().enumerate() {
            if j + len > bytes.len() || !bytes[j..j + len].iter().all(u8::is_ascii_hexdigit) {
                out.push(bytes[i] as char);
                i += 1;
                continue 'outer;
            }
            j += len;
            if n < 4 {
                if bytes.get(j) != Some(&b'-') {
                    out.push(bytes[i] as char);
                    i += 1;
                    continue 'outer;
                }
                j += 1;
            }
        }
        out.push_str("<uuid>");
        i = j;
    }
    out
}

pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Scans every column of every table (as text, and bytea hex-encoded) and `logs` for the
/// given secrets. Short ones (CVVs) are looked for as whole words in text columns and logs,
/// with UUIDs masked so random hex cannot look like a CVV. Also checks no column is named
/// after a CVV.
pub async fn assert_no_leaks(pool: &PgPool, long: &[&str], short: &[&str], logs: &str) {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.len() >= 4, "{tables:?}");
    let mut everything = String::new();
    for table in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!(r#"SELECT row_to_json(t)::text FROM "{table}" t"#))
                .fetch_all(pool)
                .await
                .unwrap();
        everything.push_str(&rows.join("\n"));
    }
    assert!(everything.len() > 1000, "the scan saw data");
    for secret in long {
        assert!(
            !everything.contains(secret),
            "{secret} found in the database"
        );
        assert!(
            !everything.contains(&hex(secret)),
            "{secret} found hex-encoded in the database"
        );
        assert!(!logs.contains(secret), "{secret} found in the logs");
    }
    let text_columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'ARRAY', 'character varying')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut text = String::new();
    for (table, column) in text_columns {
        let values: Vec<Option<String>> =
            sqlx::query_scalar(&format!(r#"SELECT "{column}"::text FROM "{table}""#))
                .fetch_all(pool)
                .await
                .unwrap();
        text.extend(values.into_iter().flatten().map(|v| v + "\n"));
    }
    let (text, logs) = (
        strip_decimals(&strip_uuids(&text)),
        strip_decimals(&strip_uuids(logs)),
    );
    for cvv in short {
        assert!(
            !contains_word(&text, cvv),
            "CVV {cvv} found in a text column: {}",
            context(&text, cvv)
        );
        assert!(
            !contains_word(&logs, cvv),
            "CVV {cvv} found in the logs: {}",
            context(&logs, cvv)
        );
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("cvv") || c.contains("security_code")),
        "{columns:?}"
    );
}

#[test]
fn uuid_stripping_and_word_search_work() {
    assert_eq!(
        strip_uuids("id=0c8e7294-1a2b-4c3d-8e9f-001122334455!"),
        "id=<uuid>!"
    );
    assert!(contains_word(r#"{"cvv":"7294"}"#, "7294"));
    assert!(!contains_word("a17294b", "7294"));
    assert_eq!(
        strip_decimals("elapsed=0.0729 cvv=0729 v1.2"),
        "elapsed=<num> cvv=0729 v<num>"
    );
}

/// Seals every audit event, waiting for a server's own sealer if it holds the lock right now.
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

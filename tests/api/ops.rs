//! Operator endpoints: readiness with the loaded key versions, and Prometheus metrics.

use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::helpers::{
    self, card_charge, card_tokenize, new_txn, spawn_app_opts, spawn_app_with, test_keys, Options,
    TestDb,
};
use payvault::crypto::{KeyRing, MasterKey};
use serde_json::Value;

#[tokio::test]
async fn readyz_and_metrics_show_the_loaded_key_versions_by_id_only() {
    let k1 = MasterKey::generate(1).encode();
    let k2 = MasterKey::generate(2).encode();
    let ring = Arc::new(KeyRing::parse(&format!("{},{}", k1.as_str(), k2.as_str())).unwrap());
    let app = spawn_app_with(Arc::new(TestDb::new().await), ring).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["key_versions"], serde_json::json!([1, 2]));
    assert_eq!(body["current_key_version"], 2);
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    app.post("/", &card_charge(&new_txn(), "4111111111111111", "1.00"))
        .await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"payvault_master_key_loaded{version="1"} 1"#,
        r#"payvault_master_key_loaded{version="2"} 1"#,
        "payvault_master_key_current_version 2",
        r#"payvault_http_requests_total{route="/",method="POST",status="200"}"#,
        "payvault_http_request_duration_seconds_bucket",
        r#"payvault_processor_calls_total{outcome="approved"}"#,
        "payvault_db_pool_connections",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    for secret in [&k1[7..], &k2[7..], "4111111111111111"] {
        assert!(!metrics.contains(secret) && !body.to_string().contains(secret));
    }
}

#[tokio::test]
async fn openapi_describes_every_route_and_each_documented_route_exists() {
    let app = helpers::spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let expected = [
        "DELETE /v1/tokens/{token}",
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /v1/audit/events",
        "GET /v1/tokens/{token}",
        "PATCH /v1/tokens/{token}",
        "POST /",
        "POST /charge",
        "POST /tokenize",
        "POST /v1/tokens/{token}/charges",
    ];
    assert_eq!(documented, expected);
    // Every documented operation is served (not 404/405).
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path.replace("{token}", "tok_AAAAAAAAAAAAAAAAAAAAAA");
        let status = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            status != 404 || path.starts_with("/v1/tokens"),
            "{op}: {status}"
        );
        assert_ne!(status, 405, "{op}");
    }
    // The connector's request schemas by method (each property is one the parser reads: a unit
    // test in http/openapi.rs checks them against `WireRequest`).
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("ConnectorTokenize", "transaction_id"),
        ("ConnectorTokenize", "cardnumber"),
        ("ConnectorTokenize", "bankaccountnumber"),
        ("ConnectorTokenize", "routingnumber"),
        ("ConnectorCharge", "amount"),
        ("ConnectorCharge", "currency_code"),
        ("ConnectorCharge", "token"),
        ("ConnectorCharge", "parameters"),
    ] {
        assert!(
            schemas[schema]["properties"].get(field).is_some(),
            "{field} undocumented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["basic"].is_object());
}

/// A TCP proxy in front of the test PostgreSQL that can be cut and restored: "the database is
/// down" as a load balancer's probe would see it, without stopping the server other tests use.
struct DbProxy {
    port: u16,
    target: DbAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Where the test PostgreSQL listens: on TCP, or on a Unix socket (a throwaway cluster, whose
/// URL names its socket directory in a `host` query parameter).
#[derive(Clone)]
enum DbAddr {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl DbProxy {
    async fn start() -> Self {
        let admin = reqwest::Url::parse(&helpers::admin_url()).unwrap();
        let port = admin.port().unwrap_or(5432);
        let socket_dir = admin
            .query_pairs()
            .find(|(key, value)| key == "host" && value.starts_with('/'))
            .map(|(_, dir)| dir.into_owned());
        let target = match socket_dir {
            Some(dir) => DbAddr::Unix(std::path::Path::new(&dir).join(format!(".s.PGSQL.{port}"))),
            None => DbAddr::Tcp(format!("{}:{port}", admin.host_str().unwrap())),
        };
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proxy = Self {
            port,
            target,
            task: None,
        };
        proxy.up().await;
        proxy
    }

    /// The test database's URL, through the proxy.
    fn url_for(&self, db: &TestDb) -> String {
        let mut url = reqwest::Url::parse(&db.url()).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        // A socket directory would take precedence over the proxy's address.
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| key != "host")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url.to_string()
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every proxied connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                connections.spawn(async move {
                    match target {
                        DbAddr::Tcp(addr) => {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(addr).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        }
                        DbAddr::Unix(path) => {
                            if let Ok(mut outbound) = tokio::net::UnixStream::connect(path).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        }
                    }
                });
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `/readyz` until it answers `status`, with a deadline; returns the last body.
async fn wait_for_readyz(app: &helpers::TestApp, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
        let got = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {got} {body}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_down_and_recovers() {
    let db = Arc::new(TestDb::new().await);
    let mut proxy = DbProxy::start().await;
    let opts = Options {
        database_url: Some(proxy.url_for(&db)),
        ..Default::default()
    };
    let app = spawn_app_opts(db, test_keys(), opts).await;
    let body = wait_for_readyz(&app, 200, Duration::from_secs(10)).await;
    assert_eq!(body["database"], "ok");

    proxy.down();
    let body = wait_for_readyz(&app, 503, Duration::from_secs(15)).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["database"], "unreachable");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process itself is alive");

    proxy.up().await;
    let body = wait_for_readyz(&app, 200, Duration::from_secs(15)).await;
    assert_eq!(body["status"], "ready");
    let (_, tokenized) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert!(tokenized["token_id"].is_string(), "{tokenized}");
}

#[tokio::test]
async fn a_request_while_the_database_refuses_connections_gets_internal_error_quickly() {
    let db = Arc::new(TestDb::new().await);
    let mut proxy = DbProxy::start().await;
    let opts = Options {
        database_url: Some(proxy.url_for(&db)),
        ..Default::default()
    };
    let app = spawn_app_opts(db, test_keys(), opts).await;
    // A first request caches the credential, so the next one needs the database only to store.
    let (_, first) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert!(first["token_id"].is_string(), "{first}");

    proxy.down();
    // Once the pool has dropped its cut connections, every query must open a new one, which
    // the database refuses: sqlx retries until the acquire timeout.
    wait_for_readyz(&app, 503, Duration::from_secs(15)).await;
    let started = Instant::now();
    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let waited = started.elapsed();
    assert_eq!(
        (status, body["error_code"].as_str()),
        (200, Some("internal_error")),
        "{body}"
    );
    assert!(body["token_id"].is_null(), "{body}");
    // The default acquire timeout (PAYVAULT_DB_ACQUIRE_TIMEOUT_MS, 2 s), not sqlx's 30 s or the
    // 5 s it used to be: Twilio's 10 s leave room for its retry.
    assert!(
        waited < Duration::from_millis(4_500),
        "answered after {waited:?}"
    );
    proxy.up().await;
}

#[tokio::test]
async fn serves_https_when_given_a_certificate_and_key() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("pvtls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();

    let opts = Options {
        tls: Some(payvault::config::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..Default::default()
    };
    let app = spawn_app_opts(Arc::new(TestDb::new().await), test_keys(), opts).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", app.addr)
        .build()
        .unwrap();
    let https = format!("https://localhost:{}", app.addr.port());
    let resp = client
        .post(format!("{https}/"))
        .basic_auth(
            &app.connector.row.username,
            Some(app.connector.secret.expose()),
        )
        .body(card_tokenize(&new_txn(), "4111111111111111").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["token_id"].is_string(), "{body}");

    // Plain HTTP on the TLS port gets no answer.
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // Bad files are named, their content never shown.
    std::fs::write(&key, "not a key at all: SECRETSECRET").unwrap();
    let err = payvault::http::tls::acceptor(&cert, &key)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("key.pem") && !err.contains("SECRETSECRET"),
        "{err}"
    );
    let err = payvault::http::tls::acceptor(&dir.join("missing.pem"), &key)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Abuse resistance (issue 13): failed-login throttling before Argon2, per-source failure audit,
//! bounded metric labels, the admin listener, connection limits and timeouts, and a JSON answer
//! where hyper would answer an unparseable request with an empty 400.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payvault::auth::{AuthError, Authenticator, CredentialKind};
use payvault::config::ServeConfig;
use payvault::domain::SecretText;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    card_tokenize, join_all, spawn_app, spawn_app_opts, test_keys, Options, TestApp, TestDb,
};

pub async fn app_with(tune: impl FnOnce(&mut ServeConfig) + Send + 'static) -> TestApp {
    let opts = Options {
        tune: Some(Box::new(tune)),
        ..Options::default()
    };
    spawn_app_opts(Arc::new(TestDb::new().await), test_keys(), opts).await
}

/// A client whose connections come from `local` (any 127.0.0.0/8 address works on loopback).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn unknown_usernames_and_throttled_attempts_run_no_argon2() {
    let db = TestDb::new().await;
    let auth = Authenticator::new(db.pool.clone(), Duration::from_secs(60));
    let cred = payvault::auth::admin::create_credential(
        &db.pool,
        &crate::helpers::signer_for(&crate::helpers::test_keys()),
        "victim",
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap();
    let (user, secret) = (cred.row.username.as_str(), &cred.secret);
    let attacker = ip("10.0.0.1");

    // Unknown usernames: refused without a verification, and counted against the source.
    for i in 0..payvault::auth::throttle::SOURCE_FAILURES {
        let r = auth
            .authenticate(&format!("pvc_random{i}"), &SecretText::from("x"), attacker)
            .await;
        assert!(matches!(r, Err(AuthError::Invalid)), "{r:?}");
    }
    assert_eq!(auth.verifications(), 0, "no Argon2 for unknown usernames");

    // The source is now throttled: even the right secret (not yet verified here) is refused
    // before the database or Argon2.
    let r = auth.authenticate(user, secret, attacker).await;
    let Err(AuthError::Throttled { retry_after }) = r else {
        panic!("expected a throttle, got {r:?}")
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    assert_eq!(auth.verifications(), 0, "no Argon2 for a throttled source");

    // Another source: a wrong secret costs one verification, the right one another; a cached
    // verification costs none.
    let other = ip("10.0.0.2");
    let r = auth
        .authenticate(user, &SecretText::from("pvs_wrong"), other)
        .await;
    assert!(matches!(r, Err(AuthError::Invalid)), "{r:?}");
    assert_eq!(auth.verifications(), 1);
    assert!(auth.authenticate(user, secret, other).await.is_ok());
    assert_eq!(auth.verifications(), 2);
    assert!(auth.authenticate(user, secret, other).await.is_ok());
    assert_eq!(auth.verifications(), 2);

    // Once verified here, the right secret is never throttled, even from the flooding source.
    assert!(auth.authenticate(user, secret, attacker).await.is_ok());
    assert_eq!(auth.verifications(), 2);
}

#[tokio::test]
async fn a_throttled_source_gets_429_in_each_format_and_another_source_gets_through() {
    let app = spawn_app().await;
    let user = app.connector.row.username.clone();
    let body = card_tokenize("thr-1", "4111111111111111");
    // Ten wrong secrets from 127.0.0.1: each an ordinary 401.
    for _ in 0..payvault::auth::throttle::SOURCE_FAILURES {
        let resp = app
            .client
            .post(app.url("/"))
            .basic_auth(&user, Some("pvs_wrong"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // The eleventh, even with the right secret (never verified on this instance), is refused
    // before verification: Twilio's shape on `/`...
    let resp = app.post_raw("/", body.to_string()).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["error_code"], "too_many_attempts");
    assert!(reply["token_id"].is_null() && reply.get("charge_id").is_some());
    // ... and the merchant API's on `/v1`.
    let resp = app
        .client
        .get(app.url("/v1/tokens/tok_AAAAAAAAAAAAAAAAAAAAAA"))
        .basic_auth(&user, Some("pvs_wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["error"]["code"], "too_many_attempts");
    assert!(!problem.to_string().contains("4111"));

    // Another address is not affected: its right secret works, its wrong one is a plain 401.
    let other = client_from("127.0.0.3");
    let resp = other
        .post(app.url("/"))
        .basic_auth(&user, Some(app.connector.secret.expose()))
        .body(card_tokenize("thr-2", "4111111111111111").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert!(reply["token_id"].as_str().unwrap().starts_with("tok_"));
    let resp = other
        .post(app.url("/"))
        .basic_auth("pvc_nobody", Some("pvs_wrong"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // And now that this instance has verified the secret, the flooded address may use it too.
    let (status, reply) = app
        .post("/", &card_tokenize("thr-3", "4111111111111111"))
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// Failures written for `addr`: an event of its own counts one, an aggregate its `failures`.
async fn failures_audited(app: &TestApp, addr: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum(CASE WHEN details->>'aggregated' = 'true'
                   THEN (details->>'failures')::bigint ELSE 1 END), 0)::bigint
         FROM audit_events
         WHERE action = 'authenticate' AND outcome = 'failure' AND client_addr = $1",
    )
    .bind(addr)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

/// Waits (15 s at most) until exactly `expected` failures from `addr` are audited.
pub async fn wait_for_audited_failures(app: &TestApp, addr: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let audited = failures_audited(app, addr).await;
        if audited == expected {
            return;
        }
        assert!(
            audited < expected && Instant::now() < deadline,
            "{audited} failures audited for {addr}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn failed_logins_are_audited_per_source_and_a_flood_hides_no_other() {
    let app = app_with(|c| c.auth_failure_audit_interval = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..40 {
        let resp = app
            .client
            .post(app.url("/"))
            .basic_auth(format!("pvc_flood{i}"), Some("pvs_wrong"))
            .body("{}")
            .send()
            .await
            .unwrap();
        flood.push(resp.status().as_u16());
    }
    assert!(flood.iter().all(|s| *s == 401 || *s == 429), "{flood:?}");
    assert!(flood.contains(&429), "the flood was throttled: {flood:?}");
    let other = client_from("127.0.0.3");
    for _ in 0..2 {
        let resp = other
            .post(app.url("/"))
            .basic_auth(&app.connector.row.username, Some("pvs_wrong"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // Every failure of each address is in the audit log once its aggregate is written.
    wait_for_audited_failures(&app, "127.0.0.1", 40).await;
    wait_for_audited_failures(&app, "127.0.0.3", 2).await;
    // At most two rows per address per (1 s) interval, not one per request.
    let rows = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'authenticate' AND client_addr = '127.0.0.1'")
        .await;
    let intervals = i64::try_from(started.elapsed().as_secs()).unwrap() + 2;
    assert!(
        rows <= 2 * intervals && rows < 40,
        "{rows} rows for one flooding address"
    );
    let throttled = app
        .count("SELECT coalesce(sum((details->>'throttled')::bigint), 0)::bigint FROM audit_events WHERE action = 'authenticate' AND client_addr = '127.0.0.1'")
        .await;
    assert!(throttled > 0);
}

fn random_method(i: usize) -> String {
    // Uppercase tokens no standard method has.
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..10)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            char::from(b'A' + (x % 26) as u8)
        })
        .collect::<String>()
        + &format!("{i}")
}

#[tokio::test]
async fn random_methods_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    let methods: Vec<String> = (0..3000).map(random_method).collect();
    for chunk in methods.chunks(50) {
        join_all(chunk.iter().enumerate().map(|(i, m)| {
            let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
            let path = if i % 2 == 0 { "/" } else { "/v1/tokens/tok_x" };
            let req = app.client.request(method, app.url(path));
            async move { req.send().await.unwrap().status() }
        }))
        .await;
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in &methods {
        assert!(!metrics.contains(m.as_str()), "{m} became a label");
    }
    // Every series' labels come from bounded sets: route templates, nine methods or `other`,
    // and the status codes payvault produces.
    let other_series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(r#"method="other""#))
        .count();
    assert!(
        other_series <= 64,
        "{other_series} series for invented methods"
    );
    assert!(metrics.len() < 256 * 1024, "{} bytes", metrics.len());
    for line in metrics.lines().filter(|l| l.contains("route=")) {
        let route = line
            .split("route=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            route == "unmatched" || route.starts_with('/') && !route.contains("tok_"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_instead_of_the_public_one() {
    let admin: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let app = app_with(move |c| c.admin_listen = Some(admin)).await;
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    let metrics = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("payvault_master_key_current_version"));
    let doc: Value = app
        .client
        .get(format!("http://{admin}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/metrics"].is_object());
    let public_doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(public_doc["paths"]["/metrics"].is_null());
    assert!(public_doc["paths"]["/"].is_object());
}

/// Reads until the server closes the connection (or `within` passes); the bytes read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let app = app_with(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // One header byte every 300 ms, 40 bytes (12 s) if the server let it.
    let head = b"POST / HTTP/1.1\r\nHost: payvault\r\nX-Slow: aaaaaaaaaaaaa";
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for byte in head.iter().take(40) {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        sent
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(8), read.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {closed:?}"
    );
    writer.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = app_with(|c| {
        c.header_read_timeout = Duration::from_secs(30);
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: payvault\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives, then (within the idle timeout, far below the header timeout) the close.
    let bytes = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the idle connection was not closed");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let app = app_with(|c| c.max_connections = 2).await;
    let first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    // The second is served (so both slots are taken by accepted connections).
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: payvault\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A third is left in the backlog: its request gets no answer while both are open.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: payvault\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(waiting.is_err(), "answered beyond the limit: {waiting:?}");
    // Closing one frees a slot; the waiting connection is then accepted and answered.
    drop(first);
    let bytes = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("never answered");
    assert!(
        bytes.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn a_control_byte_in_a_header_gets_a_json_400() {
    let app = spawn_app().await;
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: payvault\r\nX-Bad: a\x01b\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nHost: payvault\r\nAuthorization: Basic \x7f\r\nContent-Length: 2\r\n\r\n{}"[..],
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let bytes = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("not closed");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "malformed_request");
        assert_eq!(body["error_code"], "malformed_request");
    }
    // A normal request on a fresh connection is unaffected.
    let ok = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

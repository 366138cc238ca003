//! Operator endpoints: readiness with the loaded key versions, and Prometheus metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{card_charge, card_tokenize, new_txn, spawn_app_with, TestDb};
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
    let app = common::spawn_app().await;
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
    // The connector request schema is the parser's own struct.
    let schema = &doc["components"]["schemas"]["WireRequest"]["properties"];
    for field in [
        "transaction_id",
        "cardnumber",
        "bankaccountnumber",
        "routingnumber",
        "amount",
        "currency_code",
        "token",
        "parameters",
    ] {
        assert!(schema.get(field).is_some(), "{field} undocumented");
    }
    assert!(doc["components"]["securitySchemes"]["basic"].is_object());
}

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

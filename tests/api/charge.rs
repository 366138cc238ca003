//! Charges: processor adapters, amount validation, failure semantics, and exactly-once
//! forwarding under retries, concurrency and several instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{
    self, card_charge, join_all, new_txn, spawn_app, spawn_app_opts, test_keys, Options, Stub,
    StubAnswer, TestApp, TestDb,
};
use payvault::auth::{CredentialKind, Scope};
use serde_json::{json, Value};

async fn with_stub(stub: &Stub, timeout: Duration) -> TestApp {
    spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        Options::generic(&stub.url, timeout),
    )
    .await
}

fn assert_charged(body: &Value) -> String {
    assert_eq!(body["error_code"], Value::Null, "{body}");
    assert_eq!(body["error_message"], Value::Null, "{body}");
    assert!(body.get("token_id").is_none(), "{body}");
    body["charge_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no charge_id in {body}"))
        .to_owned()
}

#[tokio::test]
async fn sandbox_approves_on_root_and_legacy_path() {
    let app = spawn_app().await;
    for path in ["/", "/charge"] {
        let (status, body) = app
            .post(path, &card_charge(&new_txn(), "4111111111111111", "10.00"))
            .await;
        assert_eq!(status, 200);
        assert!(assert_charged(&body).starts_with("ch_sandbox_"));
    }
    let mut ach = json!({"method": "charge", "transaction_id": new_txn(), "bankaccountnumber": "12345678",
                         "routingnumber": "121000358", "amount": "25", "currency_code": "usd"});
    let (_, body) = app.post("/", &ach).await;
    assert_charged(&body);
    ach.as_object_mut().unwrap().remove("method");
    ach["transaction_id"] = json!(new_txn());
    let (_, body) = app.post("/charge", &ach).await;
    assert_charged(&body);
    assert_eq!(
        app.count("SELECT count(*) FROM vault_entries").await,
        0,
        "a plain charge stores no card"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE state = 'succeeded'")
            .await,
        4
    );
}

#[tokio::test]
async fn sandbox_declines_and_failures_each_have_their_code() {
    let app = spawn_app().await;
    let cases = [
        ("4111111111111111", "10.02", "card_declined"),
        ("4111111111111111", "10.51", "insufficient_funds"),
        ("4111111111111111", "10.54", "expired_card"),
        ("4111111111111111", "10.05", "processor_error"),
        ("4111111111111111", "10.99", "processor_timeout"),
        ("4000000000000002", "10.00", "card_declined"),
        ("4000000000009995", "10.00", "insufficient_funds"),
        ("4000000000000069", "10.00", "expired_card"),
        ("4000000000000119", "10.00", "processor_error"),
    ];
    for (pan, amount, code) in cases {
        let (status, body) = app.post("/", &card_charge(&new_txn(), pan, amount)).await;
        assert_eq!(status, 200);
        assert_eq!(body["error_code"], code, "{pan} {amount}: {body}");
        assert_eq!(body["charge_id"], Value::Null);
        assert!(!body["error_message"].as_str().unwrap().contains(pan));
    }
    // The slow case answers after 1 s (test setting) and approves.
    let (_, body) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "10.12"))
        .await;
    assert_charged(&body);
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE state = 'failed'")
            .await,
        6
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE state = 'unknown'")
            .await,
        3
    );
}

#[tokio::test]
async fn amount_and_currency_edge_cases() {
    let app = spawn_app().await;
    let ok = [
        ("10", "USD"),
        ("10.0", "usd"),
        ("0.01", "USD"),
        ("1000000", "USD"),
        ("500", "JPY"),
        ("1.250", "KWD"),
    ];
    for (amount, currency) in ok {
        let mut body = card_charge(&new_txn(), "4111111111111111", amount);
        body["currency_code"] = json!(currency);
        let (_, resp) = app.post("/", &body).await;
        assert_charged(&resp);
    }
    let bad = [
        ("0", "USD", "amount_not_positive"),
        ("0.00", "USD", "amount_not_positive"),
        ("-5.00", "USD", "amount_not_positive"),
        ("ten", "USD", "invalid_amount"),
        ("1e3", "USD", "invalid_amount"),
        ("", "USD", "missing_field"),
        ("10.001", "USD", "amount_too_precise"),
        ("10.5", "JPY", "amount_too_precise"),
        ("1.0001", "KWD", "amount_too_precise"),
        ("1000000.01", "USD", "amount_too_large"),
        ("10.00", "ABC", "unknown_currency"),
        ("10.00", "", "missing_field"),
    ];
    for (amount, currency, code) in bad {
        let mut body = card_charge(&new_txn(), "4111111111111111", amount);
        body["currency_code"] = json!(currency);
        let (status, resp) = app.post("/", &body).await;
        assert_eq!(status, 200);
        assert_eq!(resp["error_code"], code, "{amount} {currency}: {resp}");
        assert_eq!(resp["charge_id"], Value::Null);
    }
    let mut no_amount = card_charge(&new_txn(), "4111111111111111", "1");
    no_amount.as_object_mut().unwrap().remove("amount");
    let (_, resp) = app.post("/", &no_amount).await;
    assert_eq!(resp["error_code"], "missing_field");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records").await,
        ok.len() as i64
    );
}

#[tokio::test]
async fn generic_adapter_forwards_twilio_json_with_idempotency_key_and_auth() {
    let stub = Stub::start(|_, _| StubAnswer::Json {
        status: 200,
        body: json!({"charge_id": "ch_123", "error_code": null, "error_message": null, "parameters": {"auth_code": "A1"}}),
        delay: Duration::ZERO,
    })
    .await;
    let app = with_stub(&stub, Duration::from_secs(2)).await;
    let txn = new_txn();
    let (_, body) = app
        .post("/", &card_charge(&txn, "4111111111111111", "10.00"))
        .await;
    assert_eq!(assert_charged(&body), "ch_123");
    assert_eq!(
        body["parameters"],
        json!({"auth_code": "A1"}),
        "processor parameters pass through"
    );

    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0].body;
    assert_eq!(sent["method"], "charge");
    assert_eq!(sent["transaction_id"], txn.as_str());
    assert_eq!(sent["cardnumber"], "4111111111111111");
    assert_eq!(sent["cvv"], "123", "the CVV is forwarded");
    assert_eq!(
        (sent["expiry_month"].as_str(), sent["expiry_year"].as_str()),
        (Some("08"), Some("35"))
    );
    assert_eq!(
        (sent["amount"].as_str(), sent["currency_code"].as_str()),
        (Some("10.00"), Some("USD"))
    );
    assert_eq!(sent["parameters"], json!({"order_id": "A-1"}));
    let header = |name: &str| {
        seen[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer stub-secret")
    );
    let key = header("idempotency-key").unwrap();
    assert!(key.starts_with("pv_") && key.len() == 35, "{key}");
    assert!(
        !key.contains(&txn),
        "the key is derived, not the raw transaction id"
    );
    // The processor sees none of payvault's own credentials.
    assert!(seen[0]
        .headers
        .iter()
        .all(|(_, v)| !v.contains(app.connector.secret.expose())));
}

#[tokio::test]
async fn processor_failures_have_distinct_codes() {
    let cases: Vec<(StubAnswer, &str)> = vec![
        (
            StubAnswer::Raw {
                status: 503,
                body: "down".into(),
            },
            "processor_error",
        ),
        (
            StubAnswer::Raw {
                status: 200,
                body: "<html>ok</html>".into(),
            },
            "processor_bad_response",
        ),
        (
            StubAnswer::Json {
                status: 200,
                body: json!({"id": "ch_1"}),
                delay: Duration::ZERO,
            },
            "processor_bad_response",
        ),
        (
            StubAnswer::Json {
                status: 200,
                body: json!({"charge_id": null, "error_code": "do_not_honor", "error_message": "card 4111111111111111 refused",
                             "parameters": {"decline_id": "d1"}}),
                delay: Duration::ZERO,
            },
            "do_not_honor",
        ),
        (
            StubAnswer::slow("ch_late", Duration::from_secs(3)),
            "processor_timeout",
        ),
    ];
    for (answer, code) in cases {
        let stub = Stub::start(move |_, _| answer.clone()).await;
        let app = with_stub(&stub, Duration::from_millis(500)).await;
        let (status, body) = app
            .post("/", &card_charge(&new_txn(), "4111111111111111", "10.00"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["error_code"], code, "{body}");
        assert_eq!(body["charge_id"], Value::Null);
        let message = body["error_message"].as_str().unwrap();
        assert!(
            !message.contains("4111111111111111"),
            "processor text is scrubbed: {message}"
        );
        if code == "do_not_honor" {
            assert_eq!(body["parameters"], json!({"decline_id": "d1"}));
        }
    }
    // Connection refused: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = Options::generic(
        &format!("http://127.0.0.1:{port}/charge"),
        Duration::from_millis(500),
    );
    let app = spawn_app_opts(Arc::new(TestDb::new().await), test_keys(), opts).await;
    let (_, body) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "10.00"))
        .await;
    assert_eq!(body["error_code"], "processor_unreachable", "{body}");
}

#[tokio::test]
async fn fifty_concurrent_identical_charges_make_one_processor_call() {
    let stub =
        Stub::start(|n, _| StubAnswer::slow(&format!("ch_{n}"), Duration::from_millis(300))).await;
    let app = with_stub(&stub, Duration::from_secs(5)).await;
    let body = card_charge(&new_txn(), "4111111111111111", "42.00");
    let responses = join_all((0..50).map(|_| app.post("/", &body))).await;
    assert_eq!(stub.calls(), 1);
    for (status, resp) in &responses {
        assert_eq!(*status, 200);
        assert_eq!(resp, &responses[0].1, "all 50 answers are identical");
    }
    assert_eq!(assert_charged(&responses[0].1), "ch_1");
}

#[tokio::test]
async fn a_retry_during_a_slow_charge_waits_and_gets_the_same_charge_id() {
    let stub =
        Stub::start(|n, _| StubAnswer::slow(&format!("ch_{n}"), Duration::from_millis(1500))).await;
    let app = with_stub(&stub, Duration::from_secs(5)).await;
    let body = card_charge(&new_txn(), "4111111111111111", "10.00");
    let first = app.post("/", &body);
    let retry = async {
        // Wait until the first attempt has reached the processor, then retry as Twilio would.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stub.calls() == 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.post("/", &body).await
    };
    let ((_, a), (_, b)) = tokio::join!(first, retry);
    assert_eq!(assert_charged(&a), "ch_1");
    assert_eq!(a, b);
    assert_eq!(stub.calls(), 1);
    // A retry long after completion gets the stored answer, byte for byte.
    let late = app
        .post_raw("/", body.to_string())
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&late).unwrap(), a);
    assert_eq!(stub.calls(), 1);
}

/// Twilio's documented case in real time: the processor takes 11 s, Twilio retries at 10 s.
#[tokio::test]
async fn twilio_retry_after_ten_seconds_during_an_eleven_second_charge() {
    let stub =
        Stub::start(|n, _| StubAnswer::slow(&format!("ch_{n}"), Duration::from_secs(11))).await;
    let app = with_stub(&stub, Duration::from_secs(15)).await;
    let body = card_charge(&new_txn(), "4111111111111111", "10.00");
    let first = app.post("/", &body);
    let retry = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = Instant::now();
        let r = app.post("/", &body).await;
        (r, t.elapsed())
    };
    let ((_, a), ((_, b), waited)) = tokio::join!(first, retry);
    assert_eq!(
        assert_charged(&b),
        "ch_1",
        "Twilio's retry receives the original charge_id"
    );
    assert_eq!(a, b);
    assert!(
        waited < Duration::from_secs(9),
        "the retry answered within Twilio's window: {waited:?}"
    );
    assert_eq!(stub.calls(), 1, "charged once");
}

#[tokio::test]
async fn two_instances_on_one_database_make_one_processor_call() {
    let stub =
        Stub::start(|n, _| StubAnswer::slow(&format!("ch_{n}"), Duration::from_millis(300))).await;
    let db = Arc::new(TestDb::new().await);
    let keys = test_keys();
    let a = spawn_app_opts(
        db.clone(),
        keys.clone(),
        Options::generic(&stub.url, Duration::from_secs(5)),
    )
    .await;
    let b = spawn_app_opts(
        db.clone(),
        keys.clone(),
        Options::generic(&stub.url, Duration::from_secs(5)),
    )
    .await;
    let body = card_charge(&new_txn(), "4111111111111111", "10.00");
    // Both instances get the same transaction from the same connector credential.
    let cred = &a.connector;
    let requests = (0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post_as(cred, "/", &body)
    });
    let responses = join_all(requests).await;
    assert_eq!(stub.calls(), 1);
    assert!(responses.iter().all(|r| r == &responses[0]));
    assert_eq!(assert_charged(&responses[0].1), "ch_1");
}

#[tokio::test]
async fn an_unknown_outcome_is_resent_with_the_same_processor_key() {
    // First call times out; the retry's call answers.
    let stub = Stub::start(|n, _| {
        if n == 1 {
            StubAnswer::slow("ch_first", Duration::from_secs(2))
        } else {
            StubAnswer::approve("ch_first")
        }
    })
    .await;
    let app = with_stub(&stub, Duration::from_millis(500)).await;
    let body = card_charge(&new_txn(), "4111111111111111", "10.00");
    let (_, first) = app.post("/", &body).await;
    assert_eq!(first["error_code"], "processor_timeout");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE state = 'unknown'")
            .await,
        1
    );
    let (_, second) = app.post("/", &body).await;
    assert_eq!(assert_charged(&second), "ch_first");
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    let key = |i: usize| {
        seen[i]
            .headers
            .iter()
            .find(|(k, _)| k == "idempotency-key")
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(
        key(0),
        key(1),
        "the retry re-sends with the same Idempotency-Key"
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM idempotency_records")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    // Now final: a third request is answered from the record.
    let (_, third) = app.post("/", &body).await;
    assert_eq!(third, second);
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn same_transaction_id_with_a_different_charge_is_a_duplicate() {
    let stub = Stub::start(|n, _| StubAnswer::approve(&format!("ch_{n}"))).await;
    let app = with_stub(&stub, Duration::from_secs(2)).await;
    let txn = new_txn();
    let (_, first) = app
        .post("/", &card_charge(&txn, "4111111111111111", "10.00"))
        .await;
    assert_charged(&first);
    for other in [
        card_charge(&txn, "4111111111111111", "10.01"),
        card_charge(&txn, "5555555555554444", "10.00"),
    ] {
        let (_, resp) = app.post("/", &other).await;
        assert_eq!(resp["error_code"], "duplicate_transaction", "{resp}");
    }
    let (_, tokenize) = app
        .post("/", &helpers::card_tokenize(&txn, "4111111111111111"))
        .await;
    assert_eq!(tokenize["error_code"], "duplicate_transaction");
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn save_card_vaults_the_card_and_returns_its_token_in_parameters() {
    let stub = Stub::start(|_, _| StubAnswer::Json {
        status: 200,
        body: json!({"charge_id": "ch_1", "error_code": null, "parameters": {"token_id": "processor-own"}}),
        delay: Duration::ZERO,
    })
    .await;
    let app = with_stub(&stub, Duration::from_secs(2)).await;
    let mut body = card_charge(&new_txn(), "4111111111111111", "10.00");
    body["parameters"] = json!({"save_card": "true"});
    let (_, resp) = app.post("/", &body).await;
    assert_charged(&resp);
    assert_eq!(
        resp["parameters"]["token_id"], "processor-own",
        "the processor's parameter is not clobbered"
    );
    let token = resp["parameters"]["payvault_token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("tok_"));
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);
    let (_, again) = app.post("/", &body).await;
    assert_eq!(again, resp, "a retry gets the same token");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);

    // Without a competing processor parameter, ours is `token_id` (Twilio: PayConnector_token_id).
    let app = spawn_app().await;
    let mut body = card_charge(&new_txn(), "5555555555554444", "10.00");
    body["parameters"] = json!({"save_card": "true"});
    let (_, resp) = app.post("/", &body).await;
    assert!(
        resp["parameters"]["token_id"]
            .as_str()
            .unwrap()
            .starts_with("tok_"),
        "{resp}"
    );
    // A declined charge vaults nothing.
    let mut declined = card_charge(&new_txn(), "5555555555554444", "10.02");
    declined["parameters"] = json!({"save_card": "true"});
    let (_, resp) = app.post("/", &declined).await;
    assert_eq!(resp["error_code"], "card_declined");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);
}

/// A merchant backend that may also charge stored tokens through the connector endpoint.
async fn backend(app: &TestApp) -> payvault::auth::admin::CreatedCredential {
    app.create_credential(
        "backend",
        CredentialKind::Connector,
        Some(vec![Scope::Connector, Scope::TokensCharge]),
    )
    .await
}

async fn tokenize(app: &TestApp, pan: &str) -> String {
    let (_, body) = app
        .post("/", &helpers::card_tokenize(&new_txn(), pan))
        .await;
    body["token_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stored_token_is_charged_without_cvv_on_root_and_merchant_api() {
    let stub = Stub::start(|n, _| StubAnswer::approve(&format!("ch_{n}"))).await;
    let app = with_stub(&stub, Duration::from_secs(2)).await;
    let token = tokenize(&app, "4111111111111111").await;

    // Root endpoint: `token` in place of card data.
    let body = json!({"method": "charge", "transaction_id": new_txn(), "token": token, "amount": "9.99", "currency_code": "USD"});
    let (_, resp) = app.post("/", &body).await;
    assert_eq!(
        resp["error_code"], "forbidden",
        "a plain connector credential cannot charge tokens"
    );
    let (_, resp) = app.post_as(&backend(&app).await, "/", &body).await;
    assert_eq!(assert_charged(&resp), "ch_1");
    let sent = &stub.seen()[0].body;
    assert_eq!(sent["cardnumber"], "4111111111111111");
    assert!(
        sent.get("cvv").is_none(),
        "recurring charges carry no CVV: {sent}"
    );
    assert_eq!(
        (sent["expiry_month"].as_str(), sent["expiry_year"].as_str()),
        (Some("08"), Some("35"))
    );

    // Merchant API with an api credential.
    let billing = app
        .create_credential(
            "billing",
            CredentialKind::Api,
            Some(vec![Scope::TokensCharge]),
        )
        .await;
    let charge = |key: &str, amount: &str| {
        app.client
            .post(app.url(&format!("/v1/tokens/{token}/charges")))
            .header(
                "authorization",
                format!(
                    "Bearer {}.{}",
                    billing.row.username,
                    billing.secret.expose()
                ),
            )
            .header("idempotency-key", key)
            .body(
                json!({"amount": amount, "currency": "USD", "description": "monthly"}).to_string(),
            )
            .send()
    };
    let resp = charge("invoice-1", "19.99").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["charge_id"], "ch_2");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(
        (body["amount"].as_str(), body["currency"].as_str()),
        (Some("19.99"), Some("USD"))
    );
    let again: Value = charge("invoice-1", "19.99")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, body, "idempotent on the Idempotency-Key");
    let conflict = charge("invoice-1", "5.00").await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        conflict.json::<Value>().await.unwrap()["error"]["code"],
        "duplicate_transaction"
    );
    let declined = charge("invoice-2", "19.02").await;
    assert_eq!(stub.calls(), 3);
    drop(declined);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'token_resolve' AND outcome = 'success'").await,
        3
    );
}

#[tokio::test]
async fn charging_an_unknown_or_deleted_token_fails_cleanly() {
    let app = spawn_app().await;
    let token = tokenize(&app, "4111111111111111").await;
    let backend = backend(&app).await;
    let paid = json!({"method": "charge", "transaction_id": new_txn(), "token": token, "amount": "5", "currency_code": "USD"});
    let (_, before) = app.post_as(&backend, "/", &paid).await;
    assert_charged(&before);
    sqlx::query("DELETE FROM vault_entries")
        .execute(app.pool())
        .await
        .unwrap();
    let (_, retried) = app.post_as(&backend, "/", &paid).await;
    assert_eq!(
        retried, before,
        "a retry of a finished charge is answered even after the token is gone"
    );
    for t in [token.as_str(), "tok_AAAAAAAAAAAAAAAAAAAAAA"] {
        let body = json!({"method": "charge", "transaction_id": new_txn(), "token": t, "amount": "5", "currency_code": "USD"});
        let (status, resp) = app.post_as(&backend, "/", &body).await;
        assert_eq!(status, 200);
        assert_eq!(resp["error_code"], "unknown_token", "{resp}");
        assert_eq!(resp["charge_id"], Value::Null);
    }
    let body = json!({"method": "charge", "transaction_id": new_txn(), "token": "4111111111111111", "amount": "5", "currency_code": "USD"});
    let (_, resp) = app.post("/", &body).await;
    assert_eq!(resp["error_code"], "invalid_token");
    assert!(!resp["error_message"].as_str().unwrap().contains("4111"));
    let mut both = card_charge(&new_txn(), "4111111111111111", "5");
    both["token"] = json!(token);
    let (_, resp) = app.post("/", &both).await;
    assert_eq!(resp["error_code"], "ambiguous_payment_method");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE operation = 'charge'")
            .await,
        1
    );
}

#[tokio::test]
async fn merchant_api_enforces_auth_scope_and_input() {
    let app = spawn_app().await;
    let token = tokenize(&app, "4111111111111111").await;
    let reader = app
        .create_credential("reader", CredentialKind::Api, Some(vec![Scope::TokensRead]))
        .await;
    let billing = app
        .create_credential(
            "billing",
            CredentialKind::Api,
            Some(vec![Scope::TokensCharge]),
        )
        .await;
    let url = app.url(&format!("/v1/tokens/{token}/charges"));
    let send = |auth: Option<&payvault::auth::admin::CreatedCredential>,
                key: Option<&str>,
                body: Value,
                url: String| {
        let mut req = app.client.post(url).body(body.to_string());
        if let Some(c) = auth {
            req = req.basic_auth(&c.row.username, Some(c.secret.expose()));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let good = json!({"amount": "5.00", "currency": "USD"});
    let (s, b) = send(None, Some("k1"), good.clone(), url.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, b) = send(Some(&reader), Some("k1"), good.clone(), url.clone()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, b) = send(Some(&app.connector), Some("k1"), good.clone(), url.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "a connector credential cannot use /v1"
    );
    let (s, b) = send(Some(&billing), None, good.clone(), url.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("missing_idempotency_key"))
    );
    let (s, b) = send(
        Some(&billing),
        Some("k1"),
        json!({"amount": "5.001", "currency": "USD"}),
        url.clone(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("amount_too_precise"))
    );
    let (s, b) = send(Some(&billing), Some("k1"), json!([1]), url.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let unknown = app.url("/v1/tokens/tok_AAAAAAAAAAAAAAAAAAAAAA/charges");
    let (s, b) = send(Some(&billing), Some("k2"), good.clone(), unknown).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("unknown_token"))
    );
    let (s, b) = send(
        Some(&billing),
        Some("k3"),
        json!({"amount": "5.02", "currency": "USD"}),
        url.clone(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["status"].as_str()),
        (402, Some("card_declined"), Some("declined"))
    );
    let (s, b) = send(Some(&billing), Some("k4"), good, url).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")));
    // An api credential cannot call the Twilio endpoint without the connector scope.
    let (s, _) = app
        .post_as(
            &billing,
            "/",
            &card_charge(&new_txn(), "4111111111111111", "1"),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn every_charge_attempt_and_outcome_is_audited_with_amount_and_latency() {
    let app = spawn_app().await;
    let txn = new_txn();
    let body = card_charge(&txn, "4111111111111111", "12.34");
    let (_, resp) = app.post("/", &body).await;
    let charge_id = assert_charged(&resp);
    app.post("/", &body).await;
    #[derive(sqlx::FromRow, Debug)]
    struct Row {
        action: String,
        outcome: String,
        amount_minor: Option<i64>,
        currency: Option<String>,
        masked_data: Option<String>,
        details: Value,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT action, outcome, amount_minor, currency, masked_data, details FROM audit_events
         WHERE transaction_id = $1 ORDER BY id",
    )
    .bind(&txn)
    .fetch_all(app.pool())
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["charge_attempt", "charge", "charge"], "{rows:?}");
    for r in &rows {
        assert_eq!(
            (r.amount_minor, r.currency.as_deref()),
            (Some(1234), Some("USD"))
        );
        assert_eq!(r.masked_data.as_deref(), Some("visa 411111******1111"));
        assert_eq!(r.outcome, "success");
    }
    assert_eq!(rows[1].details["charge_id"], charge_id.as_str());
    assert!(rows[1].details["processor_latency_ms"].is_u64());
    assert_eq!(rows[2].details["replayed"], true);
}

#[tokio::test]
async fn charge_traffic_leaves_no_card_data_anywhere_but_the_processor_body() {
    // The processor echoes the card number back in its decline message and parameters.
    let stub = Stub::start(|n, body| {
        if n % 2 == 0 {
            StubAnswer::approve(&format!("ch_{n}"))
        } else {
            let pan = body["cardnumber"].as_str().unwrap_or("").to_owned();
            StubAnswer::Json {
                status: 200,
                body: json!({"charge_id": null, "error_code": "do_not_honor",
                             "error_message": format!("card {pan} refused"), "parameters": {"echo": pan}}),
                delay: Duration::ZERO,
            }
        }
    })
    .await;
    let app = with_stub(&stub, Duration::from_secs(2)).await;
    let pans = ["4111111111111111", "5555555555554444", "378282246310005"];
    let cvvs = ["0729", "086"]; // leading zeros: cannot be a latency or count
    for (i, pan) in pans.iter().enumerate() {
        let mut body = card_charge(&new_txn(), pan, "10.00");
        body["cvv"] = json!(cvvs[i % 2]);
        body["parameters"] = json!({"save_card": "true"});
        let (_, resp) = app.post("/", &body).await;
        assert!(!resp.to_string().contains(pan), "{resp}");
        app.post("/", &body).await;
    }
    let ach = json!({"method": "charge", "transaction_id": new_txn(), "bankaccountnumber": "123456789",
                     "routingnumber": "121000358", "amount": "25", "currency_code": "USD"});
    app.post("/", &ach).await;
    let token = tokenize(&app, "6011111111111117").await;
    let by_token = json!({"method": "charge", "transaction_id": new_txn(), "token": token, "amount": "1", "currency_code": "USD"});
    app.post_as(&backend(&app).await, "/", &by_token).await;

    let mut long: Vec<&str> = pans.to_vec();
    long.extend(["123456789", "6011111111111117"]);
    helpers::assert_no_leaks(app.pool(), &long, &cvvs, &helpers::captured_logs()).await;

    // The processor saw card data in the body only: never in a header.
    let seen = stub.seen();
    assert!(seen.len() >= 5);
    for s in &seen {
        for (name, value) in &s.headers {
            for secret in &long {
                assert!(
                    !value.contains(secret),
                    "{secret} in processor header {name}"
                );
            }
            for cvv in &cvvs {
                assert!(
                    !helpers::contains_word(value, cvv),
                    "CVV {cvv} in processor header {name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn generic_adapter_supports_basic_and_named_header_auth() {
    let cases = [
        (
            vec![
                ("auth", "basic"),
                ("username", "merchant"),
                ("secret", "s3cret"),
            ],
            "authorization",
            "Basic bWVyY2hhbnQ6czNjcmV0",
        ),
        (
            vec![
                ("auth", "header"),
                ("header", "x-api-key"),
                ("secret", "k-123"),
            ],
            "x-api-key",
            "k-123",
        ),
    ];
    for (settings, header, expected) in cases {
        let stub = Stub::start(|_, _| StubAnswer::approve("ch_1")).await;
        let opts = Options {
            dedup: false,
            processor: helpers::generic_processor(&stub.url, &settings),
            processor_timeout: Duration::from_secs(2),
            idempotency_wait: Duration::from_secs(9),
            ..Default::default()
        };
        let app = spawn_app_opts(Arc::new(TestDb::new().await), test_keys(), opts).await;
        let (_, body) = app
            .post("/", &card_charge(&new_txn(), "4111111111111111", "1.00"))
            .await;
        assert_charged(&body);
        let seen = stub.seen();
        let value = seen[0]
            .headers
            .iter()
            .find(|(k, _)| k == header)
            .map(|(_, v)| v.as_str());
        assert_eq!(value, Some(expected));
    }
}

#[tokio::test]
async fn a_charge_completes_and_is_recorded_even_if_the_caller_hangs_up() {
    let stub =
        Stub::start(|n, _| StubAnswer::slow(&format!("ch_{n}"), Duration::from_millis(800))).await;
    let app = with_stub(&stub, Duration::from_secs(5)).await;
    let body = card_charge(&new_txn(), "4111111111111111", "10.00");
    // Verify the credential once first, so that the hang-up below falls in the processor call
    // and not in a cold Argon2 check on a busy machine.
    let (_, warm) = app
        .post("/", &helpers::card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert!(warm["token_id"].is_string(), "{warm}");
    // Twilio gives up on a connection after 10 s; here the client gives up after 200 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(app.url("/"))
        .basic_auth(
            &app.connector.row.username,
            Some(app.connector.secret.expose()),
        )
        .body(body.to_string())
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up before the answer");
    // The charge still finishes and is recorded; the retry gets it without a second call.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .count("SELECT count(*) FROM idempotency_records WHERE state = 'succeeded'")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the abandoned charge was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, retry) = app.post("/", &body).await;
    assert_eq!(assert_charged(&retry), "ch_1");
    assert_eq!(stub.calls(), 1);
}

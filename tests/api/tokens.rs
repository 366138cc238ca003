//! Token lifecycle on the merchant API: metadata, deletion by crypto-shredding, expiry, and the
//! scope each route needs.

use crate::helpers::{self, card_tokenize, new_txn, spawn_app, TestApp};
use payvault::auth::admin::CreatedCredential;
use payvault::auth::{CredentialKind, Scope};
use serde_json::{json, Value};

async fn tokenize_with(app: &TestApp, params: Value) -> (String, Value) {
    let mut body = card_tokenize(&new_txn(), "4111111111111111");
    body["parameters"] = params;
    let (_, resp) = app.post("/", &body).await;
    (
        resp["token_id"].as_str().unwrap_or_default().to_owned(),
        resp,
    )
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cred: Option<&CreatedCredential>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("idempotency-key", new_txn());
    if let Some(c) = cred {
        req = req.basic_auth(&c.row.username, Some(c.secret.expose()));
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn api(app: &TestApp, scopes: Vec<Scope>) -> CreatedCredential {
    let name = format!("api-{}", &new_txn()[..8]);
    app.create_credential(&name, CredentialKind::Api, Some(scopes))
        .await
}

#[tokio::test]
async fn metadata_shows_the_card_masked_and_never_the_number() {
    let app = spawn_app().await;
    let (token, _) = tokenize_with(&app, json!({})).await;
    let reader = api(&app, vec![Scope::TokensRead]).await;
    let (status, meta) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/tokens/{token}"),
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(meta["status"], "active");
    assert_eq!(
        (
            meta["brand"].as_str(),
            meta["bin"].as_str(),
            meta["last4"].as_str()
        ),
        (Some("visa"), Some("411111"), Some("1111"))
    );
    assert_eq!(
        (meta["exp_month"].as_i64(), meta["exp_year"].as_i64()),
        (Some(8), Some(2035))
    );
    assert_eq!(meta["fingerprint"].as_str().unwrap().len(), 64);
    assert!(!meta.to_string().contains("4111111111111111"));
    let (status, body) = call(
        &app,
        reqwest::Method::GET,
        "/v1/tokens/tok_AAAAAAAAAAAAAAAAAAAAAA",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_token"))
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'token_read'")
            .await,
        2
    );
}

#[tokio::test]
async fn delete_shreds_the_card_and_later_charges_fail_cleanly() {
    let app = spawn_app().await;
    let (token, _) = tokenize_with(&app, json!({})).await;
    let deleter = api(
        &app,
        vec![Scope::TokensDelete, Scope::TokensRead, Scope::TokensCharge],
    )
    .await;
    let path = format!("/v1/tokens/{token}");
    let (status, body) = call(&app, reqwest::Method::DELETE, &path, Some(&deleter), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("deleted")));
    let (wrapped, ct): (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT wrapped_key, ciphertext FROM vault_entries WHERE token = $1")
            .bind(&token)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(
        wrapped.is_none() && ct.is_none(),
        "the data key is destroyed: the card is unrecoverable"
    );

    // Idempotent, and the metadata says so.
    let (status, again) = call(&app, reqwest::Method::DELETE, &path, Some(&deleter), None).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("deleted")));
    let (_, meta) = call(&app, reqwest::Method::GET, &path, Some(&deleter), None).await;
    assert_eq!(meta["status"], "deleted");
    assert!(meta["deleted_at"].is_string());

    // Charges fail cleanly on both interfaces.
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        &format!("{path}/charges"),
        Some(&deleter),
        Some(json!({"amount": "1", "currency": "USD"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("token_deleted"))
    );
    let backend = app
        .create_credential(
            "backend",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let (_, body) = app.post_as(&backend, "/", &json!({"method": "charge", "transaction_id": new_txn(), "token": token, "amount": "1", "currency_code": "USD"})).await;
    assert_eq!(body["error_code"], "token_deleted");

    // The audit trail stays.
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'tokenize'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'token_delete'")
            .await,
        2
    );
}

#[tokio::test]
async fn tokens_expire_by_parameter_or_with_the_card_and_are_purged() {
    let app = spawn_app().await;
    let (never, _) = tokenize_with(&app, json!({})).await;
    let (ttl, _) = tokenize_with(&app, json!({"token_ttl_days": "30"})).await;
    let (with_card, _) = tokenize_with(&app, json!({"token_expires_with_card": "true"})).await;
    let expires = |t: String| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "SELECT expires_at FROM vault_entries WHERE token = $1",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(expires(never.clone()).await, None);
    let in_30 = expires(ttl.clone()).await.unwrap() - chrono::Utc::now();
    assert!((29..=30).contains(&in_30.num_days()), "{in_30:?}");
    assert_eq!(
        expires(with_card).await.unwrap().to_rfc3339(),
        "2035-09-01T00:00:00+00:00",
        "after the card's last month"
    );
    for bad in [
        json!({"token_ttl_days": "0"}),
        json!({"token_ttl_days": "soon"}),
        json!({"token_ttl_days": "99999"}),
    ] {
        let (_, resp) = tokenize_with(&app, bad).await;
        assert_eq!(resp["error_code"], "invalid_token_expiry", "{resp}");
    }

    // Once expired, a token cannot be charged...
    sqlx::query(
        "UPDATE vault_entries SET expires_at = now() - interval '1 second' WHERE token = $1",
    )
    .bind(&ttl)
    .execute(app.pool())
    .await
    .unwrap();
    let charger = api(&app, vec![Scope::TokensCharge]).await;
    let (status, body) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/tokens/{ttl}/charges"),
        Some(&charger),
        Some(json!({"amount": "1", "currency": "USD"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("token_expired"))
    );
    // ...and the purge job shreds it, with an audit event.
    let purged = payvault::store::vault::purge_expired(app.pool(), &app.signer, 100)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let shredded: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM vault_entries WHERE token = $1")
            .bind(&ttl)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(shredded.is_none());
    assert_eq!(app.count("SELECT count(*) FROM audit_events WHERE action = 'token_expire' AND actor_kind = 'system'").await, 1);
    // The others are untouched.
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/tokens/{never}/charges"),
        Some(&charger),
        Some(json!({"amount": "1", "currency": "USD"})),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn each_scope_allows_exactly_what_it_names() {
    let app = spawn_app().await;
    let (token, _) = tokenize_with(&app, json!({})).await;
    let routes: Vec<(Scope, reqwest::Method, String, Option<Value>)> = vec![
        (
            Scope::Connector,
            reqwest::Method::POST,
            "/".into(),
            Some(card_tokenize(&new_txn(), "4111111111111111")),
        ),
        (
            Scope::TokensRead,
            reqwest::Method::GET,
            format!("/v1/tokens/{token}"),
            None,
        ),
        (
            Scope::TokensCharge,
            reqwest::Method::POST,
            format!("/v1/tokens/{token}/charges"),
            Some(json!({"amount": "1", "currency": "USD"})),
        ),
        (
            Scope::AuditRead,
            reqwest::Method::GET,
            "/v1/audit/events".into(),
            None,
        ),
        (
            Scope::TokensDelete,
            reqwest::Method::PATCH,
            format!("/v1/tokens/{token}"),
            Some(json!({"ttl_days": 30})),
        ),
        // Last: it deletes the token the others use.
        (
            Scope::TokensDelete,
            reqwest::Method::DELETE,
            format!("/v1/tokens/{token}"),
            None,
        ),
    ];
    let creds: Vec<(Scope, CreatedCredential)> = {
        let mut v = Vec::new();
        for scope in Scope::ALL {
            v.push((scope, api(&app, vec![scope]).await));
        }
        v
    };
    for (needed, method, path, body) in &routes {
        for (has, cred) in &creds {
            if has == needed {
                continue;
            }
            let (status, _) = call(&app, method.clone(), path, Some(cred), body.clone()).await;
            assert_eq!(status, 403, "{has} must not reach {method} {path}");
        }
        let (status, _) = call(&app, method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "no credentials on {method} {path}");
        let allowed = &creds.iter().find(|(s, _)| s == needed).unwrap().1;
        let (status, resp) = call(&app, method.clone(), path, Some(allowed), body.clone()).await;
        assert_eq!(status, 200, "{needed} on {method} {path}: {resp}");
    }
}

#[tokio::test]
async fn with_dedup_on_the_same_card_gets_one_token_per_credential() {
    let opts = helpers::Options {
        dedup: true,
        ..Default::default()
    };
    let app = helpers::spawn_app_opts(
        std::sync::Arc::new(helpers::TestDb::new().await),
        helpers::test_keys(),
        opts,
    )
    .await;
    let (first, _) = tokenize_with(&app, json!({})).await;
    let (second, _) = tokenize_with(&app, json!({})).await;
    assert_eq!(
        first, second,
        "same card, new transaction: the existing token"
    );
    // Concurrent tokenizes of one new card agree on one token.
    let bodies: Vec<Value> = (0..10)
        .map(|_| card_tokenize(&new_txn(), "5555555555554444"))
        .collect();
    let answers = helpers::join_all(bodies.iter().map(|b| app.post("/", b))).await;
    let tokens: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["token_id"].as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 2);

    // A reissued card (new expiry) keeps its token; the metadata follows the newest expiry.
    let mut reissued = card_tokenize(&new_txn(), "4111111111111111");
    reissued["expiry_year"] = json!("39");
    reissued["expiry_month"] = json!("02");
    let (_, resp) = app.post("/", &reissued).await;
    assert_eq!(resp["token_id"], first.as_str());
    let exp: (i16, i16) =
        sqlx::query_as("SELECT exp_month, exp_year FROM vault_entries WHERE token = $1")
            .bind(&first)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(exp, (2, 2039));
    let updated: i64 = app
        .count("SELECT count(*) FROM audit_events WHERE details->>'expiry_updated' = 'true'")
        .await;
    assert_eq!(updated, 1);

    // Another credential gets its own token; a deleted token is not reused.
    let other = app
        .create_credential("twilio-2", CredentialKind::Connector, None)
        .await;
    let (_, resp) = app
        .post_as(&other, "/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_ne!(resp["token_id"], first.as_str());
    sqlx::query("UPDATE vault_entries SET wrapped_key = NULL, ciphertext = NULL, deleted_at = now() WHERE token = $1").bind(&first).execute(app.pool()).await.unwrap();
    let (third, _) = tokenize_with(&app, json!({})).await;
    assert_ne!(third, first);
    // Retries stay idempotent under dedup.
    let txn = new_txn();
    let (_, a) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    let (_, b) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    assert_eq!(a, b);
}

#[tokio::test]
async fn dedup_is_off_by_default() {
    let app = spawn_app().await;
    let (first, _) = tokenize_with(&app, json!({})).await;
    let (second, _) = tokenize_with(&app, json!({})).await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_token_expiry_can_be_set_per_api_call() {
    let app = spawn_app().await;
    let (token, _) = tokenize_with(&app, json!({})).await;
    let owner = api(&app, vec![Scope::TokensDelete]).await;
    let path = format!("/v1/tokens/{token}");
    let patch = |body: Value| {
        call(
            &app,
            reqwest::Method::PATCH,
            &path,
            Some(&owner),
            Some(body),
        )
    };
    let (status, meta) = patch(json!({"ttl_days": 10})).await;
    assert_eq!(status, 200);
    let at = chrono::DateTime::parse_from_rfc3339(meta["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days(),
        9
    );
    let (_, meta) = patch(json!({"expires_with_card": true})).await;
    assert!(
        meta["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("2035-09-01T00:00:00"),
        "{meta}"
    );
    let (_, meta) = patch(json!({"expires_at": "2030-01-01T00:00:00Z"})).await;
    assert!(meta["expires_at"]
        .as_str()
        .unwrap()
        .starts_with("2030-01-01"));
    let (_, meta) = patch(json!({"expires_at": null})).await;
    assert_eq!(meta["expires_at"], Value::Null, "never");
    for bad in [
        json!({}),
        json!({"ttl_days": 0}),
        json!({"ttl_days": 5, "expires_at": null}),
        json!({"expires_at": "soon"}),
        json!({"color": "red"}),
    ] {
        let (status, body) = patch(bad.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_token_expiry")),
            "{bad}"
        );
    }
    call(&app, reqwest::Method::DELETE, &path, Some(&owner), None).await;
    let (status, body) = patch(json!({"ttl_days": 10})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("token_deleted"))
    );
    assert_eq!(app.count("SELECT count(*) FROM audit_events WHERE action = 'token_update' AND outcome = 'success'").await, 4);
}

#[tokio::test]
async fn request_logs_name_the_route_template_never_the_token_in_the_path() {
    let app = spawn_app().await;
    let (token, _) = tokenize_with(&app, json!({})).await;
    let cred = api(&app, vec![Scope::TokensRead, Scope::TokensDelete]).await;
    let path = format!("/v1/tokens/{token}");
    let (status, _) = call(&app, reqwest::Method::GET, &path, Some(&cred), None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, reqwest::Method::DELETE, &path, Some(&cred), None).await;
    assert_eq!(status, 200);
    let logs = helpers::captured_logs();
    assert!(
        logs.contains("/v1/tokens/{token}"),
        "the request span names the route template"
    );
    assert!(
        !logs.contains(&token),
        "a token from the request path reached the logs"
    );
}

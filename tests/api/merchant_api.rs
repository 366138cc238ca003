//! The merchant API's input rules, as they differ from the connector's wire format: empty query
//! values, `/v1` field names in errors, malformed token ids; and the OpenAPI document's facts.

use crate::helpers::{card_tokenize, new_txn, spawn_app, TestApp};
use payvault::auth::admin::CreatedCredential;
use payvault::auth::{CredentialKind, Scope};
use serde_json::{json, Value};

async fn send(
    app: &TestApp,
    cred: &CreatedCredential,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .basic_auth(&cred.row.username, Some(cred.secret.expose()));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn all_scopes(app: &TestApp) -> CreatedCredential {
    let scopes = vec![
        Scope::TokensRead,
        Scope::TokensCharge,
        Scope::TokensDelete,
        Scope::AuditRead,
    ];
    app.create_credential("backend", CredentialKind::Api, Some(scopes))
        .await
}

#[tokio::test]
async fn empty_query_values_count_as_absent_as_on_the_connector() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let (_, tokenized) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert!(tokenized["token_id"].is_string(), "{tokenized}");
    let get = reqwest::Method::GET;
    let (status, plain) = send(&app, &cred, get.clone(), "/v1/audit/events", None, None).await;
    assert_eq!(status, 200, "{plain}");
    let empty = "/v1/audit/events?since=&until=&action=&actor=&token=&transaction_id=&outcome=&limit=&cursor=";
    let (status, with_empty) = send(&app, &cred, get.clone(), empty, None, None).await;
    assert_eq!(status, 200, "{with_empty}");
    // The same events as with no query at all (the second read also sees the first's event).
    let ids = |page: &Value| -> Vec<Value> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect()
    };
    let (first, second) = (ids(&plain), ids(&with_empty));
    assert!(
        !first.is_empty() && second.starts_with(&first),
        "{plain}\n{with_empty}"
    );
    // A non-empty bad value is still refused, naming the parameter.
    let (status, body) = send(&app, &cred, get, "/v1/audit/events?limit=0", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
}

#[tokio::test]
async fn audit_filters_with_a_nul_character_are_refused_not_a_server_error() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    for param in ["action", "actor", "token", "transaction_id"] {
        let path = format!("/v1/audit/events?{param}=a%00b");
        let (status, body) = send(&app, &cred, reqwest::Method::GET, &path, None, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{param}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(param));
    }
}

#[tokio::test]
async fn v1_errors_name_the_v1_header_and_fields_never_the_connector_ones() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let (_, tokenized) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let path = format!(
        "/v1/tokens/{}/charges",
        tokenized["token_id"].as_str().unwrap()
    );
    let post = reqwest::Method::POST;
    let good = json!({"amount": "5.00", "currency": "USD"});

    // A key with a space is not 1-255 printable ASCII characters.
    let (status, body) = send(
        &app,
        &cred,
        post.clone(),
        &path,
        Some("has space"),
        Some(good),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Idempotency-Key") && !message.contains("transaction_id"),
        "{message}"
    );

    let bad_currency = json!({"amount": "5.00", "currency": "XYZ"});
    let (status, body) = send(
        &app,
        &cred,
        post,
        &path,
        Some(&new_txn()),
        Some(bad_currency),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_currency"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`currency`") && !message.contains("currency_code"),
        "{message}"
    );
}

#[tokio::test]
async fn a_malformed_token_id_is_not_found_on_every_token_route() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let routes = [
        (reqwest::Method::GET, "/v1/tokens/abc", None),
        (reqwest::Method::DELETE, "/v1/tokens/abc", None),
        (
            reqwest::Method::PATCH,
            "/v1/tokens/abc",
            Some(json!({"ttl_days": 30})),
        ),
        (
            reqwest::Method::POST,
            "/v1/tokens/abc/charges",
            Some(json!({"amount": "5.00", "currency": "USD"})),
        ),
    ];
    for (method, path, body) in routes {
        let key = new_txn();
        let (status, answer) = send(&app, &cred, method.clone(), path, Some(&key), body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("unknown_token")),
            "{method} {path}: {answer}"
        );
    }
    // The refused charge is audited like any other.
    let refused = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'charge' AND outcome = 'failure' AND error_code = 'unknown_token'")
        .await;
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn the_openapi_document_types_links_and_secures_every_operation() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();

    // Query parameters of the audit log: exact types, and empty values allowed.
    let params = op("/v1/audit/events", "get")["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let param = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
    for p in &params {
        assert_eq!(p["allowEmptyValue"], true, "{p}");
    }
    let limit = &param("limit")["schema"];
    assert!(limit["type"].to_string().contains("integer"), "{limit}");
    assert_eq!(
        (limit["minimum"].as_i64(), limit["maximum"].as_i64()),
        (Some(1), Some(1000))
    );
    let cursor = &param("cursor")["schema"];
    assert!(
        cursor["type"].to_string().contains("integer") && cursor["minimum"] == 0,
        "{cursor}"
    );
    let outcome = param("outcome")["schema"].to_string();
    assert!(
        outcome.contains("\"success\"") && outcome.contains("\"failure\""),
        "{outcome}"
    );
    for name in ["since", "until"] {
        assert_eq!(param(name)["schema"]["format"], "date-time", "{name}");
    }

    // Every operation that authenticates lists both Basic and Bearer, and every documented
    // error of the merchant API carries the error schema.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if let Some(security) = operation.get("security") {
                let schemes = security.to_string();
                assert!(
                    schemes.contains("basic") && schemes.contains("bearer"),
                    "{method} {path}"
                );
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{method} {path}: 401"
                );
                assert!(
                    operation["responses"].get("403").is_some(),
                    "{method} {path}: 403"
                );
            }
            if path.starts_with("/v1") {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    // 402 is a declined charge (the charge itself, with its `error`), and a
                    // deleted token reads 410 with its remaining metadata.
                    let resource = status == "402" || (status == "410" && method == "get");
                    if status.starts_with('4') && !resource {
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    // The connector: request schemas by method, and the 200 that carries refusals.
    let root = op("/", "post");
    let body = root["requestBody"]["content"]["application/json"]["schema"].to_string();
    assert!(
        body.contains("ConnectorTokenize") && body.contains("ConnectorCharge"),
        "{body}"
    );
    assert!(root["responses"]["200"]["description"]
        .as_str()
        .unwrap()
        .contains("error_code"));
    let schemas = &doc["components"]["schemas"];
    let required = schemas["ConnectorReply"]["required"].to_string();
    assert!(required.contains("error_code") && required.contains("error_message"));
    assert!(schemas["ConnectorCharge"]["properties"]["currency_code"].is_object());
    assert!(schemas["ConnectorTokenize"]["properties"]["cardnumber"]["pattern"].is_string());

    // Links from a created token to each operation on it, in OpenAPI's spelling.
    for path in ["/", "/tokenize"] {
        let links = &op(path, "post")["responses"]["200"]["links"];
        for target in ["get_token", "update_token", "delete_token", "charge_token"] {
            let link = links
                .as_object()
                .unwrap()
                .values()
                .find(|l| l["operationId"] == target)
                .unwrap_or_else(|| panic!("{path}: no link to {target}: {links}"));
            assert_eq!(link["parameters"]["token"], "$response.body#/token_id");
        }
    }
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|i| i.as_object().unwrap().values())
        .filter_map(|o| o["operationId"].as_str())
        .collect();
    for target in ["get_token", "update_token", "delete_token", "charge_token"] {
        assert!(ids.contains(&target), "{target} is not an operationId");
    }

    // Token ids and the Idempotency-Key are typed by their patterns; the charge body's amount
    // precision follows the currency.
    let charge = op("/v1/tokens/{token}/charges", "post");
    let cparams = charge["parameters"].as_array().unwrap();
    let token = cparams.iter().find(|p| p["name"] == "token").unwrap();
    assert_eq!(token["schema"]["pattern"], "^tok_[A-Za-z0-9_-]{22}$");
    let key = cparams
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(
        (key["in"].as_str(), key["required"].as_bool()),
        (Some("header"), Some(true))
    );
    let request = &schemas["ChargeTokenRequest"];
    assert!(request["properties"]["currency"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("JPY")));
    assert!(request["allOf"].as_array().unwrap().len() >= 3, "{request}");
    let expiry = &schemas["ExpiryChange"]["oneOf"];
    assert_eq!(expiry.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn ttl_days_written_as_a_whole_float_is_the_integer_the_document_promises() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let (_, tokenized) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let path = format!("/v1/tokens/{}", tokenized["token_id"].as_str().unwrap());
    let patch = reqwest::Method::PATCH;
    let (status, body) = send(
        &app,
        &cred,
        patch.clone(),
        &path,
        None,
        Some(json!({"ttl_days": 30.0})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].is_string(), "{body}");
    let (status, body) = send(
        &app,
        &cred,
        patch,
        &path,
        None,
        Some(json!({"ttl_days": 30.5})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_token_expiry"))
    );
}

#[tokio::test]
async fn a_deleted_token_reads_410_gone_with_what_remains_of_it() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let (_, tokenized) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let path = format!("/v1/tokens/{}", tokenized["token_id"].as_str().unwrap());
    let (status, _) = send(&app, &cred, reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200);
    let (status, deleted) = send(&app, &cred, reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!((status, deleted["status"].as_str()), (200, Some("deleted")));
    let (status, after) = send(&app, &cred, reqwest::Method::GET, &path, None, None).await;
    assert_eq!(
        (status, after["status"].as_str()),
        (410, Some("deleted")),
        "{after}"
    );
    assert!(
        after["deleted_at"].is_string() && after["last4"] == "1111",
        "{after}"
    );
    // DELETE stays idempotent.
    let (status, _) = send(&app, &cred, reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn expiring_a_bank_account_with_its_card_conflicts_with_the_token_not_the_request() {
    let app = spawn_app().await;
    let cred = all_scopes(&app).await;
    let (_, tokenized) = app
        .post(
            "/",
            &crate::helpers::bank_tokenize(&new_txn(), "000123456789"),
        )
        .await;
    let path = format!("/v1/tokens/{}", tokenized["token_id"].as_str().unwrap());
    let change = json!({"expires_with_card": true});
    let (status, body) = send(
        &app,
        &cred,
        reqwest::Method::PATCH,
        &path,
        None,
        Some(change),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_token_expiry")),
        "{body}"
    );
    // A malformed change is still the request's fault.
    let (status, _) = send(
        &app,
        &cred,
        reqwest::Method::PATCH,
        &path,
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400);
}

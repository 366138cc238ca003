//! The Twilio connector endpoint, tokenize: every request variant, validation, idempotency,
//! encryption at rest, and leaks.

use crate::helpers::{self, bank_tokenize, card_tokenize, new_txn, spawn_app};
use serde_json::{json, Value};

const TEST_CARDS: [&str; 8] = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "30569309025904",
    "3566002020360505",
    "6200000000000005",
    "6771798021000008",
];

fn assert_token(body: &Value) -> String {
    assert_eq!(body["error_code"], Value::Null, "{body}");
    assert_eq!(body["error_message"], Value::Null, "{body}");
    let token = body["token_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"));
    assert!(token.starts_with("tok_") && token.len() == 26, "{token}");
    assert_eq!(
        body.as_object().unwrap().len(),
        3,
        "exactly token_id, error_code, error_message: {body}"
    );
    token.to_owned()
}

#[tokio::test]
async fn card_tokenize_on_root_returns_token_and_stores_only_metadata() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(status, 200);
    let token = assert_token(&body);

    let row: (String, String, String, String, i16, i16, i32) = sqlx::query_as(
        "SELECT kind, brand, bin, last4, exp_month, exp_year, key_version FROM vault_entries WHERE token = $1",
    )
    .bind(&token)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "card".into(),
            "visa".into(),
            "411111".into(),
            "1111".into(),
            8,
            2035,
            1
        )
    );
    let entry = payvault::store::vault::find_sealed_entry(app.pool(), &token)
        .await
        .unwrap()
        .unwrap();
    let plain = app
        .keys
        .open(&token, &entry.binding(), &entry.sealed)
        .unwrap();
    assert_eq!(
        &plain[2..],
        b"4111111111111111",
        "the vault holds the PAN, decryptable with the master key"
    );
}

#[tokio::test]
async fn every_request_variant_is_accepted() {
    let app = spawn_app().await;
    let variants: Vec<(&str, Value)> = vec![
        ("/", card_tokenize(&new_txn(), "5555555555554444")),
        ("/tokenize", {
            let mut v = card_tokenize(&new_txn(), "378282246310005");
            v.as_object_mut().unwrap().remove("method");
            v
        }),
        ("/tokenize", card_tokenize(&new_txn(), "6011111111111117")),
        ("/", bank_tokenize(&new_txn(), "12345678")),
        ("/tokenize", {
            let mut v = bank_tokenize(&new_txn(), "123456789");
            v.as_object_mut().unwrap().remove("method");
            v
        }),
        // Four-digit year, no CVV (securityCode=false), no postal code, description as an object.
        (
            "/",
            json!({
                "method": "tokenize", "transaction_id": new_txn(), "cardnumber": "3566002020360505",
                "expiry_month": "12", "expiry_year": "2031", "description": {}, "parameters": {}
            }),
        ),
        // Empty CVV and postal code, extra keys from other vendors, numbers instead of strings.
        (
            "/",
            json!({
                "method": "tokenize", "transaction_id": new_txn(), "cardnumber": 6200000000000005u64,
                "expiry_month": 1, "expiry_year": 30, "cvv": "", "postal_code": "",
                "token_type": "reusable", "chargeAmount": "0", "description": null
            }),
        ),
    ];
    for (path, body) in variants {
        let (status, resp) = app.post(path, &body).await;
        assert_eq!(status, 200, "{path} {resp}");
        assert_token(&resp);
    }
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 7);
    assert_eq!(
        app.count("SELECT count(*) FROM vault_entries WHERE kind = 'bank_account'")
            .await,
        2
    );
}

#[tokio::test]
async fn content_type_is_ignored() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some(""),
    ] {
        let mut req = app
            .client
            .post(app.url("/"))
            .basic_auth(
                &app.connector.row.username,
                Some(app.connector.secret.expose()),
            )
            .body(card_tokenize(&new_txn(), "4111111111111111").to_string());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_token(&resp.json().await.unwrap());
    }
}

#[tokio::test]
async fn validation_matrix_answers_precise_codes_in_twilio_shape() {
    let app = spawn_app().await;
    let card = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = card_tokenize(&new_txn(), "4111111111111111");
        f(v.as_object_mut().unwrap());
        v
    };
    let bank = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v = bank_tokenize(&new_txn(), "123456789");
        f(v.as_object_mut().unwrap());
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "non-digit PAN",
            card(&|m| {
                m.insert("cardnumber".into(), json!("4111x11111111111"));
            }),
            "invalid_card_number",
        ),
        (
            "short PAN",
            card(&|m| {
                m.insert("cardnumber".into(), json!("41111111111"));
            }),
            "invalid_card_number_length",
        ),
        (
            "long PAN",
            card(&|m| {
                m.insert("cardnumber".into(), json!("41111111111111111111"));
            }),
            "invalid_card_number_length",
        ),
        (
            "bad Luhn",
            card(&|m| {
                m.insert("cardnumber".into(), json!("4111111111111112"));
            }),
            "invalid_card_number_checksum",
        ),
        (
            "month 0",
            card(&|m| {
                m.insert("expiry_month".into(), json!("00"));
            }),
            "invalid_expiry_month",
        ),
        (
            "month 13",
            card(&|m| {
                m.insert("expiry_month".into(), json!("13"));
            }),
            "invalid_expiry_month",
        ),
        (
            "3-digit year",
            card(&|m| {
                m.insert("expiry_year".into(), json!("203"));
            }),
            "invalid_expiry_year",
        ),
        (
            "expired",
            card(&|m| {
                m.insert("expiry_year".into(), json!("2020"));
            }),
            "card_expired",
        ),
        (
            "CVV too short",
            card(&|m| {
                m.insert("cvv".into(), json!("12"));
            }),
            "invalid_cvv",
        ),
        (
            "CVV too long",
            card(&|m| {
                m.insert("cvv".into(), json!("12345"));
            }),
            "invalid_cvv",
        ),
        (
            "CVV letters",
            card(&|m| {
                m.insert("cvv".into(), json!("12a"));
            }),
            "invalid_cvv",
        ),
        (
            "postal code",
            card(&|m| {
                m.insert("postal_code".into(), json!("<b>94111</b>"));
            }),
            "invalid_postal_code",
        ),
        (
            "no expiry month",
            card(&|m| {
                m.remove("expiry_month");
            }),
            "missing_field",
        ),
        (
            "no expiry year",
            card(&|m| {
                m.remove("expiry_year");
            }),
            "missing_field",
        ),
        (
            "no transaction id",
            card(&|m| {
                m.remove("transaction_id");
            }),
            "missing_field",
        ),
        (
            "bad transaction id",
            card(&|m| {
                m.insert("transaction_id".into(), json!("a b"));
            }),
            "invalid_transaction_id",
        ),
        (
            "long transaction id",
            card(&|m| {
                m.insert("transaction_id".into(), json!("x".repeat(256)));
            }),
            "invalid_transaction_id",
        ),
        (
            "no payment method",
            card(&|m| {
                m.remove("cardnumber");
            }),
            "missing_payment_method",
        ),
        (
            "card and bank",
            card(&|m| {
                m.insert("bankaccountnumber".into(), json!("123456789"));
            }),
            "ambiguous_payment_method",
        ),
        (
            "routing 8 digits",
            bank(&|m| {
                m.insert("routingnumber".into(), json!("12345678"));
            }),
            "invalid_routing_number",
        ),
        (
            "routing checksum",
            bank(&|m| {
                m.insert("routingnumber".into(), json!("121000359"));
            }),
            "invalid_routing_number_checksum",
        ),
        (
            "no routing",
            bank(&|m| {
                m.remove("routingnumber");
            }),
            "missing_field",
        ),
        (
            "account short",
            bank(&|m| {
                m.insert("bankaccountnumber".into(), json!("123"));
            }),
            "invalid_account_number",
        ),
        (
            "account long",
            bank(&|m| {
                m.insert("bankaccountnumber".into(), json!("1".repeat(18)));
            }),
            "invalid_account_number",
        ),
        (
            "account letters",
            bank(&|m| {
                m.insert("bankaccountnumber".into(), json!("12345678a"));
            }),
            "invalid_account_number",
        ),
        (
            "unknown method",
            card(&|m| {
                m.insert("method".into(), json!("refund"));
            }),
            "unknown_method",
        ),
        (
            "no method",
            card(&|m| {
                m.remove("method");
            }),
            "missing_field",
        ),
        (
            "wrong type",
            card(&|m| {
                m.insert("cvv".into(), json!([1, 2, 3]));
            }),
            "invalid_field_type",
        ),
        (
            "float PAN",
            card(&|m| {
                m.insert("cardnumber".into(), json!(4.111111111111111e15));
            }),
            "invalid_field_type",
        ),
    ];
    for (name, body, code) in cases {
        let (status, resp) = app.post("/", &body).await;
        assert_eq!(status, 200, "{name}");
        let id_key = if code == "unknown_method" || name == "no method" {
            "charge_id"
        } else {
            "token_id"
        };
        assert_eq!(resp["error_code"], code, "{name}: {resp}");
        assert_eq!(resp["token_id"], Value::Null, "{name}: {resp}");
        assert_eq!(resp[id_key], Value::Null, "{name}: {resp}");
        let message = resp["error_message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no message in {resp}"));
        assert!(!message.is_empty());
        for secret in ["4111", "12345678", "4.11"] {
            assert!(
                !message.contains(secret),
                "{name}: message echoes input: {message}"
            );
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM vault_entries").await,
        0,
        "nothing invalid is stored"
    );
}

#[tokio::test]
async fn unknown_or_missing_method_answers_with_both_id_keys() {
    let app = spawn_app().await;
    let (_, resp) = app
        .post("/", &json!({"method": "refund", "transaction_id": "t"}))
        .await;
    assert_eq!(
        resp,
        json!({"charge_id": null, "token_id": null, "error_code": "unknown_method",
               "error_message": "field `method` must be `tokenize` or `charge`"})
    );
    let (_, resp) = app
        .post(
            "/tokenize",
            &json!({"method": "charge", "transaction_id": "t"}),
        )
        .await;
    assert_eq!(resp["error_code"], "method_path_mismatch");
    assert!(resp.as_object().unwrap().contains_key("token_id"));
}

#[tokio::test]
async fn malformed_json_and_oversized_bodies_get_clear_errors() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            br#"{"method":"tokenize","cardnumber":"4111111111111111""#.to_vec(),
            "malformed_json",
        ),
        (
            "not json",
            b"cardnumber=4111111111111111".to_vec(),
            "malformed_json",
        ),
        ("array", b"[]".to_vec(), "malformed_json"),
        (
            "bare number",
            b"4111111111111111".to_vec(),
            "malformed_json",
        ),
        ("empty", Vec::new(), "malformed_json"),
        ("trailing garbage", b"{} {}".to_vec(), "malformed_json"),
        (
            "too large",
            format!(r#"{{"description":"{}"}}"#, "x".repeat(20_000)).into_bytes(),
            "request_too_large",
        ),
    ];
    for (name, body, code) in cases {
        let resp = app.post_raw("/", body).await;
        assert_eq!(resp.status(), 200, "{name}");
        let resp: Value = resp.json().await.unwrap();
        assert_eq!(resp["error_code"], code, "{name}: {resp}");
        assert_eq!(resp["token_id"], Value::Null);
        assert_eq!(resp["charge_id"], Value::Null);
        assert!(
            !resp["error_message"].as_str().unwrap().contains("4111"),
            "{name}: {resp}"
        );
    }
}

#[tokio::test]
async fn retry_with_same_transaction_id_returns_same_token() {
    let app = spawn_app().await;
    let txn = new_txn();
    let (_, first) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    let (_, again) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    assert_eq!(assert_token(&first), assert_token(&again));
    // A different CVV is not a different payment (the CVV is not part of the request MAC).
    let mut other_cvv = card_tokenize(&txn, "4111111111111111");
    other_cvv["cvv"] = json!("999");
    let (_, third) = app.post("/tokenize", &other_cvv).await;
    assert_eq!(assert_token(&first), assert_token(&third));
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'tokenize' AND details->>'replayed' = 'true'").await,
        2
    );
}

#[tokio::test]
async fn same_transaction_id_with_different_payload_is_a_duplicate() {
    let app = spawn_app().await;
    let txn = new_txn();
    let (_, first) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    assert_token(&first);
    let (status, resp) = app
        .post("/", &card_tokenize(&txn, "5555555555554444"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(resp["error_code"], "duplicate_transaction");
    assert_eq!(resp["token_id"], Value::Null);
    let mut other_expiry = card_tokenize(&txn, "4111111111111111");
    other_expiry["expiry_month"] = json!("09");
    let (_, resp) = app.post("/", &other_expiry).await;
    assert_eq!(resp["error_code"], "duplicate_transaction");
    let (_, resp) = app.post("/", &bank_tokenize(&txn, "12345678")).await;
    assert_eq!(resp["error_code"], "duplicate_transaction");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);
}

#[tokio::test]
async fn transaction_ids_are_scoped_per_credential() {
    let app = spawn_app().await;
    let other = app
        .create_credential("twilio-b", payvault::auth::CredentialKind::Connector, None)
        .await;
    let txn = new_txn();
    let (_, a) = app
        .post("/", &card_tokenize(&txn, "4111111111111111"))
        .await;
    let resp: Value = app
        .client
        .post(app.url("/"))
        .basic_auth(&other.row.username, Some(other.secret.expose()))
        .body(card_tokenize(&txn, "4111111111111111").to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(assert_token(&a), assert_token(&resp));
}

#[tokio::test]
async fn twenty_concurrent_duplicates_create_exactly_one_entry() {
    let app = spawn_app().await;
    let txn = new_txn();
    let body = card_tokenize(&txn, "4111111111111111");
    let requests = (0..20).map(|_| app.post("/", &body));
    let responses = helpers::join_all(requests).await;
    let tokens: std::collections::HashSet<String> = responses
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200);
            assert_token(body)
        })
        .collect();
    assert_eq!(tokens.len(), 1, "all 20 got the same token: {tokens:?}");
    assert_eq!(app.count("SELECT count(*) FROM vault_entries").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records").await,
        1
    );
}

#[tokio::test]
async fn tokens_are_random_and_unrelated_to_the_card() {
    let app = spawn_app().await;
    let (_, a) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let (_, b) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let (a, b) = (assert_token(&a), assert_token(&b));
    assert_ne!(a, b, "same card, new transaction: a new random token");
    assert!(!a.contains("1111") || !b.contains("1111"));
    // Both entries share the keyed fingerprint (dedup and lookup), and it is not a plain hash.
    let fps: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT fingerprint FROM vault_entries ORDER BY created_at")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(fps[0], fps[1]);
    use sha2::Digest;
    assert_ne!(fps[0], sha2::Sha256::digest(b"4111111111111111").to_vec());
}

#[tokio::test]
async fn every_twilio_test_card_tokenizes_with_its_brand() {
    let app = spawn_app().await;
    let brands = [
        "visa",
        "mastercard",
        "amex",
        "discover",
        "diners",
        "jcb",
        "unionpay",
        "maestro",
    ];
    for (pan, brand) in TEST_CARDS.iter().zip(brands) {
        let (_, body) = app.post("/", &card_tokenize(&new_txn(), pan)).await;
        let token = assert_token(&body);
        let (stored_brand, last4): (String, String) =
            sqlx::query_as("SELECT brand, last4 FROM vault_entries WHERE token = $1")
                .bind(&token)
                .fetch_one(app.pool())
                .await
                .unwrap();
        assert_eq!(
            (stored_brand.as_str(), last4.as_str()),
            (brand, &pan[pan.len() - 4..])
        );
    }
    // Twilio's published Diners number has a wrong check digit; it is refused as such.
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "3065930009020004"))
        .await;
    assert_eq!(body["error_code"], "invalid_card_number_checksum");
}

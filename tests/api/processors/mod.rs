//! Processor profiles end to end: a charge on payvault's root endpoint goes out as the profile
//! describes, to a local fake that checks it the way the real processor would.

mod adyen;
mod authorizenet;
mod checkout;
mod cybersource;
mod generic;
mod issuer;
mod nmi;
mod stripe_fake;
mod wire;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use payvault::config::ProcessorConfig;
use payvault::processor::profile::{ProcessorEnvironment, Profile, ProfileConfig};
use serde_json::{json, Value};

use crate::helpers::{
    card_charge, new_txn, spawn_app_opts, test_keys, Options, Stub, StubAnswer, TestApp, TestDb,
};

const STRIPE_KEY: &str = "sk_test_payvault_fake";

/// What the fake Stripe saw: headers and the decoded form fields.
#[derive(Clone, Debug)]
struct StripeCall {
    headers: HeaderMap,
    form: HashMap<String, String>,
    content_type: String,
}

/// A fake of Stripe's `POST /v1/payment_intents` written from processors.md §4: bearer secret
/// key, form encoding with bracketed keys, the fields of a confirmed MOTO card sale, and
/// `Idempotency-Key` replay. Card 4000000000000002 is declined (HTTP 402), others approved.
struct FakeStripe {
    url: String,
    calls: Arc<Mutex<Vec<StripeCall>>>,
}

fn stripe_error(status: u16, kind: &str, code: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(status).unwrap(),
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

impl FakeStripe {
    async fn start() -> Self {
        type Replies = Arc<Mutex<HashMap<String, (StatusCode, Value)>>>;
        let calls: Arc<Mutex<Vec<StripeCall>>> = Arc::default();
        let replies: Replies = Arc::default();
        let state = (calls.clone(), replies);
        let app = axum::Router::new()
            .route(
                "/v1/payment_intents",
                axum::routing::post(
                    |axum::extract::State((calls, replies)): axum::extract::State<(
                        Arc<Mutex<Vec<StripeCall>>>,
                        Replies,
                    )>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        let form: HashMap<String, String> = form_urlencoded::parse(&body)
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        let header = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        calls.lock().unwrap().push(StripeCall {
                            headers: headers.clone(),
                            form: form.clone(),
                            content_type: header("content-type"),
                        });
                        let (status, body) = if header("authorization")
                            != format!("Bearer {STRIPE_KEY}")
                        {
                            stripe_error(401, "invalid_request_error", "", "Invalid API Key provided")
                        } else if header("content-type") != "application/x-www-form-urlencoded" {
                            stripe_error(400, "invalid_request_error", "parameter_invalid", "form body expected")
                        } else if let Some(missing) = [
                            "amount",
                            "currency",
                            "payment_method_data[type]",
                            "payment_method_data[card][number]",
                            "payment_method_data[card][exp_month]",
                            "payment_method_data[card][exp_year]",
                        ]
                        .into_iter()
                        .find(|k| !form.contains_key(*k))
                        {
                            stripe_error(
                                400,
                                "invalid_request_error",
                                "parameter_missing",
                                &format!("Missing required param: {missing}."),
                            )
                        } else if form.get("confirm").map(String::as_str) != Some("true")
                            && form.contains_key("payment_method_options[card][moto]")
                        {
                            stripe_error(400, "invalid_request_error", "parameter_invalid", "moto requires confirm=true")
                        } else {
                            let key = header("idempotency-key");
                            if let Some(earlier) = replies.lock().unwrap().get(&key) {
                                return (earlier.0, axum::Json(earlier.1.clone()));
                            }
                            let n = calls.lock().unwrap().len();
                            let answer = if form["payment_method_data[card][number]"]
                                == "4000000000000002"
                            {
                                (
                                    StatusCode::PAYMENT_REQUIRED,
                                    json!({"error": {"type": "card_error", "code": "card_declined",
                                        "decline_code": "generic_decline",
                                        "message": "Your card was declined.",
                                        "charge": format!("ch_fake{n}"),
                                        "payment_intent": {"id": format!("pi_fake{n}"), "status": "requires_payment_method"}}}),
                                )
                            } else {
                                (
                                    StatusCode::OK,
                                    json!({"id": format!("pi_fake{n}"), "object": "payment_intent",
                                        "amount": form["amount"].parse::<i64>().unwrap(),
                                        "currency": form["currency"], "status": "succeeded",
                                        "latest_charge": {"id": format!("ch_fake{n}"), "status": "succeeded",
                                            "payment_method_details": {"type": "card",
                                                "card": {"last4": "4242", "network_transaction_id": "123456789012345"}}}}),
                                )
                            };
                            if !key.is_empty() {
                                replies.lock().unwrap().insert(key, answer.clone());
                            }
                            answer
                        };
                        (status, axum::Json(body))
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, calls }
    }

    fn calls(&self) -> Vec<StripeCall> {
        self.calls.lock().unwrap().clone()
    }
}

async fn with_profile(config: ProfileConfig) -> TestApp {
    spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        Options {
            processor: ProcessorConfig::Profile(config),
            ..Options::default()
        },
    )
    .await
}

async fn with_stripe(fake: &FakeStripe, key: &str) -> TestApp {
    let profile = Profile::builtin("stripe").unwrap().unwrap();
    let config = ProfileConfig::with_settings(
        profile,
        ProcessorEnvironment::Test,
        Some(&fake.url),
        &[("secret_key", key)],
    )
    .unwrap();
    with_profile(config).await
}

#[tokio::test]
async fn stripe_approves_a_moto_card_sale_sent_as_stripe_expects() {
    let fake = FakeStripe::start().await;
    let app = with_stripe(&fake, STRIPE_KEY).await;
    let txn = new_txn();
    let (status, body) = app
        .post("/", &card_charge(&txn, "4242424242424242", "12.34"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["error_code"], Value::Null, "{body}");
    assert_eq!(body["charge_id"], "pi_fake1", "{body}");
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.content_type, "application/x-www-form-urlencoded");
    let f = &call.form;
    assert_eq!(f["amount"], "1234");
    assert_eq!(f["currency"], "usd");
    assert_eq!(f["confirm"], "true");
    assert_eq!(f["payment_method_data[type]"], "card");
    assert_eq!(f["payment_method_data[card][number]"], "4242424242424242");
    assert_eq!(f["payment_method_options[card][moto]"], "true");
    assert_eq!(f["expand[0]"], "latest_charge");
    assert_eq!(f["payment_method_data[card][exp_month]"].len(), 2);
    assert_eq!(f["payment_method_data[card][exp_year]"].len(), 4);
    let idem = call.headers["idempotency-key"].to_str().unwrap();
    assert!(!idem.is_empty());
    assert_eq!(call.headers["stripe-version"], "2022-11-15");
    // A retry by Twilio is answered by payvault without a second charge.
    let (_, again) = app
        .post("/", &card_charge(&txn, "4242424242424242", "12.34"))
        .await;
    assert_eq!(again["charge_id"], "pi_fake1");
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn stripe_declines_reach_twilio_as_errors() {
    let fake = FakeStripe::start().await;
    let app = with_stripe(&fake, STRIPE_KEY).await;
    let (status, body) = app
        .post("/", &card_charge(&new_txn(), "4000000000000002", "5.00"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    assert_eq!(body["error_code"], "generic_decline", "{body}");
    assert_eq!(body["error_message"], "Your card was declined.", "{body}");
}

#[tokio::test]
async fn stripe_refusing_the_key_is_a_definitive_error() {
    let fake = FakeStripe::start().await;
    let app = with_stripe(&fake, "sk_test_wrong").await;
    let (_, body) = app
        .post("/", &card_charge(&new_txn(), "4242424242424242", "5.00"))
        .await;
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    // HTTP 401: payvault's Stripe key was refused, a definite failure (never an unknown outcome).
    assert_eq!(body["error_code"], "processor_auth_failed", "{body}");
    assert_eq!(fake.calls().len(), 1);
}

const CUSTOM: &str = r#"
name = "acme"
description = "a merchant's own gateway"
[urls]
test = "http://unused.invalid"
live = "https://unused.invalid"
[settings.api_key]
secret = true
description = "Acme API key"
[auth]
scheme = "header"
name = "X-Acme-Key"
value = "{{ settings.api_key }}"
[idempotency]
strategy = "header"
header = "X-Acme-Idempotency"
[operations.sale]
path = "/charge"
body = '''
{"pan": {{ card.number | pan }}, "exp": {{ card.expiry | exp("MM/YY") }},
 "cents": {{ amount.minor }}, "ref": {{ transaction_id }}}
'''
[operations.sale.reply]
approved = "reply.charge_id"
charge_id = "reply.charge_id"
decline_code = "reply.error_code"
decline_message = "reply.error_message"
"#;

#[tokio::test]
async fn a_custom_profile_loaded_from_a_file_charges() {
    let stub = Stub::start(|_, _| StubAnswer::approve("acme_1")).await;
    let dir = std::env::temp_dir().join(format!("payvault-profile-{}", new_txn()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acme.toml");
    std::fs::write(&path, CUSTOM).unwrap();
    let profile = Profile::from_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let base = stub.url.trim_end_matches("/charge");
    let config = ProfileConfig::with_settings(
        profile,
        ProcessorEnvironment::Test,
        Some(base),
        &[("api_key", "acme-secret")],
    )
    .unwrap();
    let app = with_profile(config).await;
    let txn = new_txn();
    let (_, body) = app
        .post("/", &card_charge(&txn, "4111111111111111", "7.50"))
        .await;
    assert_eq!(body["charge_id"], "acme_1", "{body}");
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["pan"], "4111111111111111");
    assert_eq!(seen[0].body["cents"], 750);
    assert_eq!(seen[0].body["ref"], txn.as_str());
    assert!(seen[0].body["exp"].as_str().unwrap().contains('/'));
    let header = |n: &str| {
        seen[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-acme-key").as_deref(), Some("acme-secret"));
    assert!(header("x-acme-idempotency").is_some());
}

#[test]
fn a_profile_with_a_template_error_is_refused_at_start_with_the_line() {
    let dir = std::env::temp_dir().join(format!("payvault-profile-{}", new_txn()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        CUSTOM.replace(
            "\"cents\": {{ amount.minor }}",
            "\"cents\": {{ amount.minor }",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/unused")
        .env("PAYVAULT_PROCESSOR_PROFILE", &path)
        .env("PAYVAULT_PROCESSOR_API_KEY", "x")
        .env_remove("PAYVAULT_PROCESSOR")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("template operations.sale.body, line 2"),
        "{stderr}"
    );
    // A missing required setting names its variable.
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/unused")
        .env("PAYVAULT_PROCESSOR", "stripe")
        .env_remove("PAYVAULT_PROCESSOR_PROFILE")
        .env_remove("PAYVAULT_PROCESSOR_SECRET_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PAYVAULT_PROCESSOR_SECRET_KEY"), "{stderr}");
}

/// The `generic` profile's auth scheme comes from `PAYVAULT_PROCESSOR_AUTH`: an unknown scheme,
/// or a scheme without the settings it needs, stops the start naming the variables (and never a
/// secret's value), before the database is touched.
#[test]
fn generic_auth_settings_are_checked_at_start() {
    let generated = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["keys", "generate"])
        .output()
        .unwrap();
    let key = String::from_utf8(generated.stdout).unwrap();
    let key = key.lines().last().unwrap().to_owned();
    let serve = |settings: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.arg("serve")
            .env("DATABASE_URL", "postgres://127.0.0.1:1/unused")
            .env("PAYVAULT_ENV", "development")
            .env("PAYVAULT_MASTER_KEY", &key)
            .env("PAYVAULT_PROCESSOR_URL", "http://127.0.0.1:1/charge")
            .env_remove("PAYVAULT_PROCESSOR")
            .env_remove("PAYVAULT_PROCESSOR_PROFILE");
        for name in ["AUTH", "USERNAME", "SECRET", "SECRET_FILE", "HEADER"] {
            cmd.env_remove(format!("PAYVAULT_PROCESSOR_{name}"));
        }
        for (name, value) in settings {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&[("PAYVAULT_PROCESSOR_AUTH", "digest")]);
    assert!(
        err.contains("PAYVAULT_PROCESSOR_AUTH: `digest` is not one of basic, bearer, header, none"),
        "{err}"
    );
    let err = serve(&[
        ("PAYVAULT_PROCESSOR_AUTH", "basic"),
        ("PAYVAULT_PROCESSOR_SECRET", "s3cret-do-not-print"),
    ]);
    assert!(
        err.contains("PAYVAULT_PROCESSOR_USERNAME is required with PAYVAULT_PROCESSOR_AUTH=basic"),
        "{err}"
    );
    assert!(!err.contains("s3cret-do-not-print"), "{err}");
    let err = serve(&[("PAYVAULT_PROCESSOR_AUTH", "bearer")]);
    assert!(
        err.contains("PAYVAULT_PROCESSOR_SECRET (or _FILE) is required"),
        "{err}"
    );
    let err = serve(&[
        ("PAYVAULT_PROCESSOR_AUTH", "header"),
        ("PAYVAULT_PROCESSOR_HEADER", "bad header"),
        ("PAYVAULT_PROCESSOR_SECRET", "k"),
    ]);
    assert!(err.contains("`bad header` is not a header name"), "{err}");
    // A correct one gets as far as the database.
    let err = serve(&[
        ("PAYVAULT_PROCESSOR_AUTH", "header"),
        ("PAYVAULT_PROCESSOR_HEADER", "X-Api-Key"),
        ("PAYVAULT_PROCESSOR_SECRET", "k"),
    ]);
    assert!(err.contains("cannot connect to the database"), "{err}");
}

#[test]
fn render_masks_card_data_and_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["processor", "render", "--processor", "stripe"])
        .env("PAYVAULT_PROCESSOR_SECRET_KEY", "sk_test_do_not_print")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("POST https://api.stripe.com/v1/payment_intents"),
        "{text}"
    );
    assert!(text.contains("424242******4242"), "{text}");
    assert!(text.contains("cvc%5D=***"), "{text}");
    assert!(!text.contains("4242424242424242"), "{text}");
    assert!(!text.contains("sk_test_do_not_print"), "{text}");
    assert!(text.contains("authorization: Bearer ********"), "{text}");
}

//! The `generic` profile (Twilio's Generic Pay Connector JSON forwarded to a gateway) against a
//! scripted gateway ([`Stub`]): refusals, a flooding answer, echoed card numbers. Its request
//! format, auth schemes and failure codes are covered in `charge.rs`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::wire::{self, ECHOES, FLOOD, PAN};
use crate::helpers::{
    assert_no_leaks, captured_logs, new_txn, spawn_app_opts, test_keys, Flood, Options, Stub,
    StubAnswer, TestApp, TestDb,
};

async fn app(stub: &Stub) -> TestApp {
    spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        Options::generic(&stub.url, wire::TIMEOUT),
    )
    .await
}

#[tokio::test]
async fn generic_wrong_credentials_and_refused_requests_are_definite_failures() {
    for (status, code, words) in [
        (401, "processor_auth_failed", "credentials"),
        (403, "processor_auth_failed", "credentials"),
        (400, "processor_rejected", "rejected the request"),
        (422, "processor_rejected", "rejected the request"),
    ] {
        let stub = Stub::start(move |_, _| StubAnswer::Raw {
            status,
            body: "<html>no</html>".into(),
        })
        .await;
        let app = app(&stub).await;
        let txn = new_txn();
        let (_, body) = app.post("/", &wire::card(&txn, PAN, "10.00")).await;
        assert_eq!(body["charge_id"], Value::Null, "{body}");
        assert_eq!(body["error_code"], code, "{status}: {body}");
        let message = body["error_message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.contains(&format!("HTTP {status}")),
            "{body}"
        );
        let (_, again) = app.post("/", &wire::card(&txn, PAN, "10.00")).await;
        assert_eq!(again, body);
        assert_eq!(stub.calls(), 1, "a definite failure is not re-sent");
        assert_eq!(
            app.count("SELECT count(*) FROM idempotency_records WHERE state = 'failed'")
                .await,
            1
        );
        assert_eq!(wire::charges_unknown(&app), "", "nothing to reconcile");
    }
    assert!(captured_logs().lines().any(|l| l.contains("WARN")
        && l.contains("the payment processor refused the request")
        && l.contains("profile=generic")
        && l.contains("error_code=processor_rejected")));
    // A 409 (a concurrent attempt under the same key) may hide a charge: unknown.
    let stub = Stub::start(|_, _| StubAnswer::Raw {
        status: 409,
        body: "conflict".into(),
    })
    .await;
    let (_, body) = app(&stub)
        .await
        .post("/", &wire::card(&new_txn(), PAN, "10.00"))
        .await;
    assert_eq!(body["error_code"], "processor_bad_response", "{body}");
}

#[tokio::test]
async fn generic_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    let flood = Arc::new(Flood::default());
    let answer = StubAnswer::Flood {
        total: FLOOD,
        flood: flood.clone(),
    };
    let stub = Stub::start(move |_, _| answer.clone()).await;
    let app = app(&stub).await;
    let (_, body) = app.post("/", &wire::card(&new_txn(), PAN, "10.00")).await;
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    assert_eq!(body["error_code"], "processor_bad_response", "{body}");
    let taken = flood.wait_cut(Duration::from_secs(10)).await;
    assert!(taken < FLOOD / 5, "{taken} of {FLOOD} bytes handed over");
}

#[tokio::test]
async fn generic_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    let stub = Stub::start(|n, _| {
        let written = ECHOES[(n - 1) % ECHOES.len()];
        StubAnswer::Json {
            status: 200,
            body: json!({"charge_id": null, "error_code": "do_not_honor",
                         "error_message": format!("card {written} refused"),
                         "parameters": {"echo": written, "note": format!("pan={written}")}}),
            delay: Duration::ZERO,
        }
    })
    .await;
    let app = app(&stub).await;
    for written in ECHOES {
        let (_, body) = app.post("/", &wire::card(&new_txn(), PAN, "10.00")).await;
        let text = body.to_string();
        assert!(!text.contains(written) && !text.contains(PAN), "{text}");
        assert_eq!(body["error_message"], "card [redacted] refused", "{body}");
        assert_eq!(
            body["parameters"],
            json!({"echo": "[redacted]", "note": "pan=[redacted]"}),
            "{body}"
        );
    }
    let mut needles = vec![PAN];
    needles.extend(ECHOES);
    assert_no_leaks(app.pool(), &needles, &[wire::CVV], &captured_logs()).await;
}

//! Stripe fake (processors.md §4).

use std::time::Duration;

use serde_json::Value;

use super::{client, future_year, PAN};
use crate::fakes::stripe::{self, PATH, SECRET_KEY};
use crate::fakes::{Fake, Fault};

type Form = Vec<(&'static str, String)>;

/// The §4.2 body (PRISM-PROBE plus MOTO).
fn sale() -> Form {
    vec![
        ("amount", "1000".into()),
        ("currency", "usd".into()),
        ("confirm", "true".into()),
        ("capture_method", "automatic".into()),
        ("payment_method_data[type]", "card".into()),
        ("payment_method_data[card][number]", PAN.into()),
        ("payment_method_data[card][exp_month]", "03".into()),
        (
            "payment_method_data[card][exp_year]",
            future_year().to_string(),
        ),
        ("payment_method_data[card][cvc]", "737".into()),
        ("payment_method_options[card][moto]", "true".into()),
        ("expand[0]", "latest_charge".into()),
        ("metadata[order_id]", "ord-1".into()),
    ]
}

/// The §4.4 external-vault MIT: the card again without cvc, plus the NTID.
fn mit(ntid: &str) -> Form {
    let mut form = without(sale(), "payment_method_data[card][cvc]");
    form.retain(|(k, _)| *k != "payment_method_options[card][moto]");
    form.push((
        "payment_method_options[card][mit_exemption][network_transaction_id]",
        ntid.into(),
    ));
    form
}

fn set(mut form: Form, key: &'static str, value: &str) -> Form {
    form.retain(|(k, _)| *k != key);
    form.push((key, value.into()));
    form
}

fn without(mut form: Form, key: &str) -> Form {
    form.retain(|(k, _)| *k != key);
    form
}

pub async fn good_sale(
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}{PATH}", fake.base_url))
        .bearer_auth(SECRET_KEY)
        .form(&sale())
        .send()
        .await
}

async fn post(fake: &Fake, form: &Form, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{PATH}", fake.base_url))
        .bearer_auth(SECRET_KEY)
        .form(form);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn approves_the_documented_moto_sale_with_the_ntid_in_latest_charge() {
    let fake = stripe::start().await;
    let (status, body) = post(&fake, &sale(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert!(body["id"].as_str().unwrap().starts_with("pi_"));
    assert_eq!(body["amount"], 1000);
    let ntid = &body["latest_charge"]["payment_method_details"]["card"]["network_transaction_id"];
    assert!(ntid.as_str().unwrap().len() >= 10, "{body}");
    assert_eq!(
        fake.record().sales[0].network_transaction_id.as_deref(),
        ntid.as_str()
    );
    assert_eq!(
        fake.last_fields()["payment_method_data[card][number]"],
        "411111…1111"
    );
    // Without expand, latest_charge is the charge id only.
    let (_, body) = post(&fake, &without(sale(), "expand[0]"), None).await;
    assert!(body["latest_charge"].as_str().unwrap().starts_with("ch_"));
    // HTTP Basic with the key as user is accepted too (AM).
    let res = client()
        .post(format!("{}{PATH}", fake.base_url))
        .basic_auth(SECRET_KEY, Some(""))
        .form(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn rejects_what_stripe_rejects() {
    let cases: Vec<(&str, Form, u16, &str)> = vec![
        (
            "decimal amount",
            set(sale(), "amount", "10.00"),
            400,
            "amount",
        ),
        ("no amount", without(sale(), "amount"), 400, "amount"),
        (
            "bad currency",
            set(sale(), "currency", "usdx"),
            400,
            "currency",
        ),
        (
            "no MOTO",
            without(sale(), "payment_method_options[card][moto]"),
            400,
            "moto",
        ),
        (
            "MOTO without confirm",
            without(sale(), "confirm"),
            400,
            "moto",
        ),
        (
            "bad month",
            set(sale(), "payment_method_data[card][exp_month]", "13"),
            402,
            "invalid_expiry_month",
        ),
        (
            "expired",
            set(sale(), "payment_method_data[card][exp_year]", "2020"),
            402,
            "invalid_expiry_year",
        ),
        (
            "bad luhn",
            set(
                sale(),
                "payment_method_data[card][number]",
                "4111111111111112",
            ),
            402,
            "incorrect_number",
        ),
        (
            "bad cvc",
            set(sale(), "payment_method_data[card][cvc]", "1"),
            402,
            "invalid_cvc",
        ),
        (
            "no type",
            without(sale(), "payment_method_data[type]"),
            400,
            "payment_method_data[type]",
        ),
    ];
    for (name, form, status, detail) in cases {
        let fake = stripe::start().await;
        let (got, body) = post(&fake, &form, None).await;
        assert_eq!(got, status, "{name}: {body}");
        assert!(body["error"].to_string().contains(detail), "{name}: {body}");
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn rejects_missing_or_wrong_keys_and_json_bodies() {
    let fake = stripe::start().await;
    let url = format!("{}{PATH}", fake.base_url);
    let res = client().post(&url).form(&sale()).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let res = client()
        .post(&url)
        .bearer_auth("sk_test_wrong")
        .form(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .post(&url)
        .bearer_auth(SECRET_KEY)
        .json(&serde_json::json!({"amount": 1000, "currency": "usd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn declines_on_the_documented_test_cards() {
    let cards = [
        ("4000000000000002", "card_declined", Some("generic_decline")),
        (
            "4000000000009995",
            "card_declined",
            Some("insufficient_funds"),
        ),
        ("4000000000000127", "incorrect_cvc", None),
        ("4000000000000069", "expired_card", None),
        ("4000000000000119", "processing_error", None),
    ];
    for (card, code, decline_code) in cards {
        let fake = stripe::start().await;
        let (status, body) = post(
            &fake,
            &set(sale(), "payment_method_data[card][number]", card),
            None,
        )
        .await;
        assert_eq!(status, 402, "{card}: {body}");
        assert_eq!(body["error"]["type"], "card_error");
        assert_eq!(body["error"]["code"], code, "{card}");
        assert_eq!(
            body["error"]["decline_code"].as_str(),
            decline_code,
            "{card}"
        );
        assert_eq!(
            body["error"]["payment_intent"]["status"],
            "requires_payment_method"
        );
        assert_eq!(fake.sales_executed(), 1);
        assert_eq!(fake.approved_sales(), 0);
    }
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_without_a_second_sale() {
    let fake = stripe::start().await;
    let (s1, first) = post(&fake, &sale(), Some("key-1")).await;
    let (s2, second) = post(&fake, &sale(), Some("key-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, second);
    assert_eq!(fake.sales_executed(), 1);
    assert_eq!(fake.record().replays, 1);
    assert_eq!(fake.record().idempotency_keys, ["key-1", "key-1"]);

    // Other parameters under the same key: an idempotency_error, nothing executed.
    let (status, body) = post(&fake, &set(sale(), "amount", "2000"), Some("key-1")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "idempotency_error");
    // A validation failure is not stored: the key stays usable.
    let (status, _) = post(&fake, &set(sale(), "amount", "1.5"), Some("key-2")).await;
    assert_eq!(status, 400);
    let (status, _) = post(&fake, &sale(), Some("key-2")).await;
    assert_eq!(status, 200);
    assert_eq!(fake.sales_executed(), 2);

    // A 500 once execution started is stored and replayed.
    fake.fault_next(Fault::ServerError);
    let (status, _) = post(&fake, &sale(), Some("key-3")).await;
    assert_eq!(status, 500);
    let (status, _) = post(&fake, &sale(), Some("key-3")).await;
    assert_eq!(status, 500);
    assert_eq!(fake.sales_executed(), 2);
}

#[tokio::test]
async fn a_twin_while_the_first_is_in_flight_is_a_409() {
    let fake = stripe::start().await;
    fake.fault_next(Fault::Hang(Duration::from_millis(300)));
    let body = sale();
    let (a, b) = tokio::join!(post(&fake, &body, Some("k")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        post(&fake, &body, Some("k")).await
    });
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 409, "{}", b.1);
    assert_eq!(fake.sales_executed(), 1);

    // Once executed, a twin during a slow answer (Delay) gets the replay.
    fake.fault_next(Fault::Delay(Duration::from_millis(300)));
    let (a, b) = tokio::join!(post(&fake, &body, Some("k2")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&fake, &body, Some("k2")).await
    });
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1, b.1);
    assert_eq!(fake.sales_executed(), 2);
}

#[tokio::test]
async fn merchant_initiated_sale_carries_the_ntid_without_cvc() {
    let fake = stripe::start().await;
    let (status, body) = post(&fake, &mit("123456789619999"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(fake.record().sales[0].merchant_initiated);
    let with_cvc = set(
        mit("123456789619999"),
        "payment_method_data[card][cvc]",
        "737",
    );
    let (status, body) = post(&fake, &with_cvc, None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&fake, &mit(""), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn without_confirm_nothing_is_charged() {
    let fake = stripe::start().await;
    let form = without(
        without(sale(), "confirm"),
        "payment_method_options[card][moto]",
    );
    let (status, body) = post(&fake, &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "requires_confirmation");
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn us_bank_account_is_checked_and_processing() {
    let fake = stripe::start().await;
    let bank: Form = vec![
        ("amount", "2500".into()),
        ("currency", "usd".into()),
        ("confirm", "true".into()),
        ("payment_method_data[type]", "us_bank_account".into()),
        (
            "payment_method_data[us_bank_account][routing_number]",
            "110000000".into(),
        ),
        (
            "payment_method_data[us_bank_account][account_number]",
            "000123456789".into(),
        ),
        (
            "payment_method_data[us_bank_account][account_holder_type]",
            "individual".into(),
        ),
        (
            "payment_method_data[billing_details][name]",
            "Ada Lovelace".into(),
        ),
    ];
    let (status, body) = post(&fake, &bank, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "processing");
    assert_eq!(
        fake.last_fields()["payment_method_data[us_bank_account][account_number]"],
        "…6789"
    );
    let bad = set(
        bank.clone(),
        "payment_method_data[us_bank_account][routing_number]",
        "110000001",
    );
    let (status, _) = post(&fake, &bad, None).await;
    assert_eq!(status, 400);
    let bad = set(
        bank,
        "payment_method_data[us_bank_account][account_holder_type]",
        "personal",
    );
    let (status, _) = post(&fake, &bad, None).await;
    assert_eq!(status, 400);
    assert_eq!(fake.sales_executed(), 1);
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = stripe::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

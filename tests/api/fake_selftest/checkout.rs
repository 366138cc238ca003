//! Checkout.com fake (processors.md §6).

use serde_json::{json, Value};

use super::{client, future_year, PAN};
use crate::fakes::checkout::{self, PATH, PROCESSING_CHANNEL_ID, SECRET_KEY};
use crate::fakes::Fake;

/// The §6.2 MOTO body.
fn sale() -> Value {
    json!({"source": {"type": "card", "number": PAN, "expiry_month": 3, "expiry_year": future_year(),
                      "cvv": "100", "billing_address": {"zip": "W1T 4TJ"},
                      "account_holder": {"first_name": "Ada", "last_name": "Lovelace"}},
           "amount": 2500, "currency": "USD", "processing_channel_id": PROCESSING_CHANNEL_ID,
           "capture": true, "reference": "call-123", "payment_type": "MOTO"})
}

/// The §6.4 MIT: card without cvv, stored, previous_payment_id.
fn mit(previous: &str) -> Value {
    let mut body = sale();
    body["payment_type"] = json!("Recurring");
    body["merchant_initiated"] = json!(true);
    body["previous_payment_id"] = json!(previous);
    body["source"].as_object_mut().unwrap().remove("cvv");
    body["source"]["stored"] = json!(true);
    body
}

pub async fn good_sale(
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}{PATH}", fake.base_url))
        .bearer_auth(SECRET_KEY)
        .json(&sale())
        .send()
        .await
}

async fn post(fake: &Fake, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{PATH}", fake.base_url))
        .bearer_auth(SECRET_KEY)
        .json(body);
    if let Some(key) = key {
        req = req.header("Cko-Idempotency-Key", key);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut body = sale();
    f(&mut body);
    body
}

#[tokio::test]
async fn approves_the_documented_moto_sale() {
    let fake = checkout::start().await;
    let (status, body) = post(&fake, &sale(), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["approved"], true);
    assert_eq!(body["status"], "Authorized");
    assert_eq!(body["response_code"], "10000");
    assert!(body["id"].as_str().unwrap().starts_with("pay_"));
    assert!(body["scheme_id"].is_string());
    assert_eq!(fake.last_fields()["source.number"], "411111…1111");
    // PRISM sends month/year as strings: accepted (lenient, see the fake's doc).
    let strings = edit(|b| {
        b["source"]["expiry_month"] = json!("03");
        b["source"]["expiry_year"] = json!(future_year().to_string());
        b["amount"] = json!(2600);
    });
    assert_eq!(post(&fake, &strings, None).await.0, 201);
    // A first CIT storing the card for a series: MOTO + Recurring is unconfirmed, so it passes.
    let first_of_series = edit(|b| {
        b["payment_type"] = json!("Recurring");
        b["merchant_initiated"] = json!(false);
        b["amount"] = json!(2700);
    });
    assert_eq!(post(&fake, &first_of_series, None).await.0, 201);
}

#[tokio::test]
async fn rejects_what_checkout_rejects() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "major units",
            Box::new(|b| b["amount"] = json!(25.00)),
            "amount_invalid",
        ),
        (
            "string amount",
            Box::new(|b| b["amount"] = json!("2500")),
            "amount_invalid",
        ),
        (
            "no currency",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("currency");
            }),
            "currency_required",
        ),
        (
            "no channel",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("processing_channel_id");
            }),
            "processing_channel_id_required",
        ),
        (
            "expired",
            Box::new(|b| b["source"]["expiry_year"] = json!(2020)),
            "card_expired",
        ),
        (
            "month 13",
            Box::new(|b| b["source"]["expiry_month"] = json!(13)),
            "card_expiry_month_invalid",
        ),
        (
            "two-digit year",
            Box::new(|b| b["source"]["expiry_year"] = json!(30)),
            "card_expiry_year_invalid",
        ),
        (
            "bad luhn",
            Box::new(|b| b["source"]["number"] = json!("4111111111111112")),
            "card_number_invalid",
        ),
        (
            "not MOTO",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("payment_type");
            }),
            "payment_type_invalid",
        ),
        (
            "bad payment_type",
            Box::new(|b| b["payment_type"] = json!("Moto")),
            "payment_type_invalid",
        ),
        (
            "bad cvv",
            Box::new(|b| b["source"]["cvv"] = json!("1")),
            "cvv_invalid",
        ),
    ];
    for (name, f, code) in cases {
        let fake = checkout::start().await;
        let (status, body) = post(&fake, &edit(f), None).await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["error_type"], "request_invalid", "{name}");
        assert_eq!(body["error_codes"][0], code, "{name}: {body}");
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn rejects_missing_or_wrong_keys() {
    let fake = checkout::start().await;
    let url = format!("{}{PATH}", fake.base_url);
    let res = client().post(&url).json(&sale()).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .post(&url)
        .bearer_auth("sk_sbox_wrong")
        .json(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // The legacy platform's bare key is not the default platform's scheme.
    let res = client()
        .post(&url)
        .header("Authorization", SECRET_KEY)
        .json(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn declines_on_the_documented_amount_triggers() {
    let triggers = [
        (10005, "20005"),
        (10012, "20012"),
        (10014, "20014"),
        (10051, "20051"),
        (10062, "20062"),
        (10063, "20063"),
        (10033, "30033"),
        (9998, "20068"),
    ];
    for (amount, code) in triggers {
        let fake = checkout::start().await;
        let (status, body) = post(&fake, &edit(|b| b["amount"] = json!(amount)), None).await;
        assert_eq!(status, 201, "{amount}");
        assert_eq!(body["approved"], false, "{amount}: {body}");
        assert_eq!(body["status"], "Declined");
        assert_eq!(body["response_code"], code, "{amount}");
        assert_eq!(fake.approved_sales(), 0);
    }
}

#[tokio::test]
async fn idempotency_key_replays_successes_only() {
    let fake = checkout::start().await;
    let (s1, first) = post(&fake, &sale(), Some("cko-1")).await;
    let (s2, second) = post(&fake, &sale(), Some("cko-1")).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second);
    assert_eq!(fake.sales_executed(), 1);

    // A 4xx is not kept: the corrected retry under the same key executes.
    let (status, _) = post(&fake, &edit(|b| b["amount"] = json!("x")), Some("cko-2")).await;
    assert_eq!(status, 422);
    let (status, _) = post(&fake, &sale(), Some("cko-2")).await;
    assert_eq!(status, 201);
    assert_eq!(fake.sales_executed(), 2);
}

#[tokio::test]
async fn merchant_initiated_sale_carries_previous_payment_id_without_cvv() {
    let fake = checkout::start().await;
    let (status, body) = post(&fake, &mit("096091887499308"), None).await;
    assert_eq!(status, 201, "{body}");
    assert!(fake.record().sales[0].merchant_initiated);
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut b = mit("096091887499308");
                b["payment_type"] = json!("Regular");
                b
            },
            "payment_type_invalid",
        ),
        (
            {
                let mut b = mit("096091887499308");
                b["source"]["cvv"] = json!("100");
                b
            },
            "cvv_invalid",
        ),
        (mit(""), "previous_payment_id_required"),
        (
            {
                let mut b = mit("096091887499308");
                b["source"].as_object_mut().unwrap().remove("stored");
                b
            },
            "source_stored_required",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = post(&fake, &body, None).await;
        assert_eq!(status, 422);
        assert_eq!(answer["error_codes"][0], code, "{answer}");
    }
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn ach_source_is_checked() {
    let fake = checkout::start().await;
    let ach = json!({"source": {"type": "ach", "account_type": "checking", "country": "US",
                                "account_number": "4099999992", "bank_code": "011075150",
                                "account_holder": {"type": "individual", "first_name": "Ada", "last_name": "Lovelace"}},
                     "amount": 2500, "currency": "USD", "processing_channel_id": PROCESSING_CHANNEL_ID});
    let (status, body) = post(&fake, &ach, None).await;
    assert_eq!(status, 201, "{body}");
    let mut bad = ach.clone();
    bad["source"]["account_number"] = json!("123");
    assert_eq!(
        post(&fake, &bad, None).await.1["error_codes"][0],
        "account_number_invalid"
    );
    let mut bad = ach;
    bad["source"]["account_holder"]["type"] = json!("personal");
    assert_eq!(
        post(&fake, &bad, None).await.1["error_codes"][0],
        "account_holder_type_invalid"
    );
    assert_eq!(fake.sales_executed(), 1);
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = checkout::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

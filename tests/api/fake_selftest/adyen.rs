//! Adyen fake (processors.md §5).

use serde_json::{json, Value};

use super::{client, future_year, PAN};
use crate::fakes::adyen::{self, API_KEY, MERCHANT_ACCOUNT, PATH};
use crate::fakes::Fake;

/// The §5.2 MOTO body.
fn sale() -> Value {
    json!({"amount": {"currency": "USD", "value": 2500}, "merchantAccount": MERCHANT_ACCOUNT,
           "reference": "call-123", "returnUrl": "https://example.invalid/return",
           "shopperInteraction": "Moto",
           "paymentMethod": {"type": "scheme", "number": PAN, "expiryMonth": "03",
                             "expiryYear": future_year().to_string(), "cvc": "737", "holderName": "Ada Lovelace"}})
}

/// The §5.4 MIT with the NTID.
fn mit(ntid: &str) -> Value {
    let mut body = sale();
    body["shopperInteraction"] = json!("ContAuth");
    body["recurringProcessingModel"] = json!("Subscription");
    let pm = body["paymentMethod"].as_object_mut().unwrap();
    pm.remove("cvc");
    pm.insert("brand".into(), json!("visa"));
    pm.insert("networkPaymentReference".into(), json!(ntid));
    body
}

pub async fn good_sale(
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}{PATH}", fake.base_url))
        .header("X-API-Key", API_KEY)
        .json(&sale())
        .send()
        .await
}

async fn post(fake: &Fake, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{PATH}", fake.base_url))
        .header("X-API-Key", API_KEY)
        .json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut body = sale();
    f(&mut body);
    body
}

#[tokio::test]
async fn approves_the_documented_moto_sale() {
    let fake = adyen::start().await;
    let (status, body) = post(&fake, &sale(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resultCode"], "Authorised");
    assert_eq!(body["pspReference"].as_str().unwrap().len(), 16);
    assert!(
        body["additionalData"]["networkTxReference"].is_string(),
        "{body}"
    );
    assert_eq!(fake.last_fields()["paymentMethod.number"], "411111…1111");
    assert_eq!(fake.last_fields()["paymentMethod.cvc"], "***");
}

#[tokio::test]
async fn rejects_what_adyen_rejects() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, u16, &str)> = vec![
        (
            "no returnUrl",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("returnUrl");
            }),
            422,
            "returnUrl",
        ),
        (
            "no reference",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("reference");
            }),
            422,
            "reference",
        ),
        (
            "major units",
            Box::new(|b| b["amount"]["value"] = json!(25.00)),
            422,
            "137",
        ),
        (
            "string amount",
            Box::new(|b| b["amount"]["value"] = json!("2500")),
            422,
            "137",
        ),
        (
            "two-digit year",
            Box::new(|b| b["paymentMethod"]["expiryYear"] = json!("30")),
            422,
            "expiryYear",
        ),
        (
            "month without zero",
            Box::new(|b| b["paymentMethod"]["expiryMonth"] = json!("3")),
            422,
            "expiryMonth",
        ),
        (
            "no MOTO",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("shopperInteraction");
            }),
            422,
            "Moto",
        ),
        (
            "lower-case moto",
            Box::new(|b| b["shopperInteraction"] = json!("moto")),
            422,
            "shopperInteraction",
        ),
        (
            "bad luhn",
            Box::new(|b| b["paymentMethod"]["number"] = json!("4111111111111112")),
            422,
            "101",
        ),
        (
            "wrong account",
            Box::new(|b| b["merchantAccount"] = json!("PayvaultECOM")),
            403,
            "901",
        ),
        (
            "bad currency",
            Box::new(|b| b["amount"]["currency"] = json!("XXX1")),
            422,
            "138",
        ),
    ];
    for (name, f, status, detail) in cases {
        let fake = adyen::start().await;
        let (got, body) = post(&fake, &edit(f), None).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["status"], status, "{name}: ServiceError shape {body}");
        assert!(body.to_string().contains(detail), "{name}: {body}");
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn rejects_missing_or_wrong_api_keys() {
    let fake = adyen::start().await;
    let url = format!("{}{PATH}", fake.base_url);
    for key in [None, Some("wrong")] {
        let mut req = client().post(&url).json(&sale());
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errorType"], "security");
    }
    // Bearer is not Adyen's scheme.
    let res = client()
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn refuses_on_the_documented_triggers_with_200() {
    let triggers = [
        edit(|b| b["paymentMethod"]["holderName"] = json!("DECLINED")),
        edit(|b| b["additionalData"] = json!({"RequestedTestAcquirerResponseCode": "2"})),
    ];
    for body in triggers {
        let fake = adyen::start().await;
        let (status, answer) = post(&fake, &body, None).await;
        assert_eq!(status, 200);
        assert_eq!(answer["resultCode"], "Refused", "{answer}");
        assert_eq!(answer["refusalReasonCode"], "2");
        assert_eq!(fake.sales_executed(), 1);
        assert_eq!(fake.approved_sales(), 0);
    }
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_and_echoes_the_key() {
    let fake = adyen::start().await;
    let send = || {
        client()
            .post(format!("{}{PATH}", fake.base_url))
            .header("X-API-Key", API_KEY)
            .header("Idempotency-Key", "adyen-key-1")
            .json(&sale())
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.headers()["idempotency-key"], "adyen-key-1");
    let first: Value = first.json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.headers()["idempotency-key"], "adyen-key-1");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(fake.sales_executed(), 1);
    // A concurrent pair with a fresh key still executes once.
    let body = sale();
    let (a, b) = tokio::join!(
        post(&fake, &body, Some("adyen-key-2")),
        post(&fake, &body, Some("adyen-key-2"))
    );
    assert_eq!(a.1, b.1);
    assert_eq!(fake.sales_executed(), 2);
    let (status, _) = post(&fake, &sale(), Some(&"k".repeat(65))).await;
    assert_eq!(status, 422, "keys are at most 64 characters");
}

#[tokio::test]
async fn merchant_initiated_sale_carries_the_network_payment_reference() {
    let fake = adyen::start().await;
    let (status, body) = post(&fake, &mit("123456789619999"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resultCode"], "Authorised");
    let mut with_cvc = mit("123456789619999");
    with_cvc["paymentMethod"]["cvc"] = json!("737");
    let (status, _) = post(&fake, &with_cvc, None).await;
    assert_eq!(status, 422);
    let (status, body) = post(&fake, &mit(""), None).await;
    assert_eq!(status, 422);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("networkPaymentReference"));
    let mut no_model = mit("123456789619999");
    no_model
        .as_object_mut()
        .unwrap()
        .remove("recurringProcessingModel");
    let (status, _) = post(&fake, &no_model, None).await;
    assert_eq!(status, 422);
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn ach_is_checked_and_the_documented_routing_refuses() {
    let fake = adyen::start().await;
    let ach = |routing: &str| {
        json!({"amount": {"currency": "USD", "value": 2500}, "merchantAccount": MERCHANT_ACCOUNT,
               "reference": "ach-1", "returnUrl": "https://example.invalid/return",
               "paymentMethod": {"type": "ach", "bankAccountNumber": "123456789", "bankLocationId": routing,
                                 "ownerName": "Ada Lovelace", "bankAccountType": "checking"}})
    };
    let (status, body) = post(&fake, &ach("011000138"), None).await;
    assert_eq!(
        (status, body["resultCode"].as_str()),
        (200, Some("Authorised")),
        "{body}"
    );
    let (_, body) = post(&fake, &ach("121000348"), None).await;
    assert_eq!(body["resultCode"], "Refused");
    let (status, _) = post(&fake, &ach("12100034"), None).await;
    assert_eq!(status, 422);
    let mut eur = ach("011000138");
    eur["amount"]["currency"] = json!("EUR");
    let (status, _) = post(&fake, &eur, None).await;
    assert_eq!(status, 422);
    assert_eq!(fake.sales_executed(), 2);
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = adyen::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

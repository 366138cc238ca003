//! Authorize.net fake (processors.md §2).

use serde_json::{json, Value};

use super::{client, future_year, PAN};
use crate::fakes::authorizenet::{self, LOGIN, PATH, TRANSACTION_KEY};
use crate::fakes::Fake;

/// The §2.2 minimal MOTO body, in XSD order.
fn sale() -> Value {
    json!({"createTransactionRequest": {
    "merchantAuthentication": {"name": LOGIN, "transactionKey": TRANSACTION_KEY},
    "refId": "call-123",
    "transactionRequest": {
        "transactionType": "authCaptureTransaction",
        "amount": "25.00",
        "payment": {"creditCard": {"cardNumber": PAN, "expirationDate": format!("{}-03", future_year()), "cardCode": "123"}},
        "order": {"invoiceNumber": "INV-1", "description": "phone order"},
        "billTo": {"firstName": "Ada", "lastName": "Lovelace", "zip": "46201"},
        "retail": {"marketType": "1"}
    }}})
}

/// The §2.4 MIT body.
fn mit(ntid: &str) -> Value {
    json!({"createTransactionRequest": {
    "merchantAuthentication": {"name": LOGIN, "transactionKey": TRANSACTION_KEY},
    "refId": "mit-77",
    "transactionRequest": {
        "transactionType": "authCaptureTransaction",
        "amount": "25.00",
        "payment": {"creditCard": {"cardNumber": PAN, "expirationDate": format!("{}-03", future_year())}},
        "order": {"invoiceNumber": "INV-2", "description": "monthly"},
        "transactionSettings": {"setting": [{"settingName": "recurringBilling", "settingValue": "true"}]},
        "processingOptions": {"isSubsequentAuth": "true"},
        "subsequentAuthInformation": {"originalNetworkTransId": ntid}
    }}})
}

/// The §2.3 eCheck by phone body.
fn echeck(amount: &str, echeck_type: &str) -> Value {
    json!({"createTransactionRequest": {
    "merchantAuthentication": {"name": LOGIN, "transactionKey": TRANSACTION_KEY},
    "refId": "ach-1",
    "transactionRequest": {
        "transactionType": "authCaptureTransaction",
        "amount": amount,
        "payment": {"bankAccount": {"accountType": "checking", "routingNumber": "121000358",
            "accountNumber": "12345678", "nameOnAccount": "Ada Lovelace", "echeckType": echeck_type}}
    }}})
}

/// Element names in the order §2.2–§2.4 give (one list serves every level: the names of one
/// object never appear in another in a different relative order). serde_json sorts object keys,
/// which Authorize.net rejects, so bodies are written out in this order; unknown names go last.
const XSD_ORDER: &[&str] = &[
    "merchantAuthentication",
    "name",
    "transactionKey",
    "refId",
    "transactionRequest",
    "transactionType",
    "amount",
    "currencyCode",
    "payment",
    "creditCard",
    "cardNumber",
    "expirationDate",
    "cardCode",
    "bankAccount",
    "accountType",
    "routingNumber",
    "accountNumber",
    "nameOnAccount",
    "echeckType",
    "order",
    "invoiceNumber",
    "description",
    "billTo",
    "firstName",
    "lastName",
    "zip",
    "retail",
    "marketType",
    "transactionSettings",
    "setting",
    "settingName",
    "settingValue",
    "processingOptions",
    "isSubsequentAuth",
    "subsequentAuthInformation",
    "originalNetworkTransId",
    "reason",
];

fn ordered(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| XSD_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX));
            let members: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), ordered(&map[k.as_str()])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(ordered).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

pub async fn good_sale(
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    post_raw(
        client,
        fake,
        ordered(&sale()).into_bytes(),
        "application/json",
    )
    .await
}

async fn post_raw(
    client: &reqwest::Client,
    fake: &Fake,
    body: Vec<u8>,
    content_type: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}{PATH}", fake.base_url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
}

/// Posts `body` in schema order and parses the BOM-prefixed answer.
async fn post(fake: &Fake, body: &Value) -> Value {
    post_text(fake, &ordered(body)).await
}

async fn post_text(fake: &Fake, body: &str) -> Value {
    let res = post_raw(
        &client(),
        fake,
        body.as_bytes().to_vec(),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "Authorize.net answers errors with 200");
    let bytes = res.bytes().await.unwrap();
    assert!(
        bytes.starts_with(b"\xEF\xBB\xBF"),
        "answers start with a BOM"
    );
    serde_json::from_slice(&bytes[3..]).unwrap()
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut body = sale();
    f(&mut body["createTransactionRequest"]);
    body
}

#[tokio::test]
async fn approves_the_documented_moto_sale() {
    let fake = authorizenet::start().await;
    let answer = post(&fake, &sale()).await;
    assert_eq!(answer["messages"]["resultCode"], "Ok", "{answer}");
    let tr = &answer["transactionResponse"];
    assert_eq!(tr["responseCode"], "1");
    assert_ne!(tr["transId"], "0");
    assert!(tr["networkTransId"].as_str().unwrap().len() >= 10);
    assert_eq!(tr["accountNumber"], "XXXX1111");
    assert_eq!(answer["refId"], "call-123");
    let fields = fake.last_fields();
    let card = "createTransactionRequest.transactionRequest.payment.creditCard";
    assert_eq!(fields[&format!("{card}.cardNumber")], "411111…1111");
    assert_eq!(fields[&format!("{card}.cardCode")], "***");
    assert_eq!(
        fields["createTransactionRequest.transactionRequest.retail.marketType"],
        "1"
    );
}

#[tokio::test]
async fn accepts_the_three_documented_expiry_formats() {
    let y = future_year();
    for expiry in [
        format!("{y}-03"),
        format!("03{:02}", y % 100),
        format!("03/{y}"),
    ] {
        let fake = authorizenet::start().await;
        let body = edit(|r| {
            r["transactionRequest"]["payment"]["creditCard"]["expirationDate"] = json!(expiry)
        });
        let answer = post(&fake, &body).await;
        assert_eq!(
            answer["transactionResponse"]["responseCode"], "1",
            "{expiry}: {answer}"
        );
    }
}

/// Each case breaks one thing; the answer names it with the documented code and nothing runs.
#[tokio::test]
async fn rejects_what_authorize_net_rejects() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "wrong key",
            Box::new(|r| r["merchantAuthentication"]["transactionKey"] = json!("nope")),
            "E00007",
            "",
        ),
        (
            "no auth",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("merchantAuthentication");
            }),
            "E00003",
            "merchantAuthentication",
        ),
        (
            "bad expiry",
            Box::new(|r| {
                r["transactionRequest"]["payment"]["creditCard"]["expirationDate"] =
                    json!("2030/03")
            }),
            "E00027",
            "7",
        ),
        (
            "expired",
            Box::new(|r| {
                r["transactionRequest"]["payment"]["creditCard"]["expirationDate"] =
                    json!("2020-03")
            }),
            "E00027",
            "8",
        ),
        (
            "bad luhn",
            Box::new(|r| {
                r["transactionRequest"]["payment"]["creditCard"]["cardNumber"] =
                    json!("4111111111111112")
            }),
            "E00027",
            "6",
        ),
        (
            "minor units",
            Box::new(|r| r["transactionRequest"]["amount"] = json!("2500.001")),
            "E00027",
            "5",
        ),
        (
            "no MOTO",
            Box::new(|r| {
                r["transactionRequest"]
                    .as_object_mut()
                    .unwrap()
                    .remove("retail");
            }),
            "E00003",
            "marketType",
        ),
        (
            "wrong MOTO",
            Box::new(|r| r["transactionRequest"]["retail"]["marketType"] = json!("2")),
            "E00003",
            "marketType",
        ),
        (
            "refId > 20",
            Box::new(|r| r["refId"] = json!("x".repeat(21))),
            "E00003",
            "refId",
        ),
        (
            "bad type",
            Box::new(|r| r["transactionRequest"]["transactionType"] = json!("sale")),
            "E00003",
            "transactionType",
        ),
        (
            "unknown element",
            Box::new(|r| r["transactionRequest"]["foo"] = json!(1)),
            "E00003",
            "'foo'",
        ),
        (
            "bad cvv",
            Box::new(|r| {
                r["transactionRequest"]["payment"]["creditCard"]["cardCode"] = json!("12")
            }),
            "E00027",
            "78",
        ),
    ];
    for (name, f, code, detail) in cases {
        let fake = authorizenet::start().await;
        let answer = post(&fake, &edit(f)).await;
        assert_eq!(
            answer["messages"]["resultCode"], "Error",
            "{name}: {answer}"
        );
        assert_eq!(
            answer["messages"]["message"][0]["code"], code,
            "{name}: {answer}"
        );
        let text = answer.to_string();
        if code == "E00027" {
            assert_eq!(
                answer["transactionResponse"]["errors"][0]["errorCode"], detail,
                "{name}: {answer}"
            );
        } else {
            assert!(text.contains(detail), "{name}: {answer}");
        }
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn rejects_elements_out_of_schema_order() {
    let fake = authorizenet::start().await;
    // billTo before order: the E00003 of AN-ORDER. serde_json sorts keys, so write it by hand.
    let y = future_year();
    let body = format!(
        r#"{{"createTransactionRequest":{{"merchantAuthentication":{{"name":"{LOGIN}","transactionKey":"{TRANSACTION_KEY}"}},"refId":"r1","transactionRequest":{{"transactionType":"authCaptureTransaction","amount":"25.00","payment":{{"creditCard":{{"cardNumber":"{PAN}","expirationDate":"{y}-03"}}}},"billTo":{{"zip":"46201"}},"order":{{"invoiceNumber":"INV-1"}},"retail":{{"marketType":"1"}}}}}}}}"#
    );
    let answer = post_text(&fake, &body).await;
    assert_eq!(
        answer["messages"]["message"][0]["code"], "E00003",
        "{answer}"
    );
    assert!(
        answer.to_string().contains("invalid child element 'order'"),
        "{answer}"
    );
    // serde_json's sorted keys (what `serde_json::to_vec` of a `json!` body sends) are rejected.
    let sorted = serde_json::to_string(&sale()).unwrap();
    let answer = post_text(&fake, &sorted).await;
    assert_eq!(
        answer["messages"]["message"][0]["code"], "E00003",
        "{answer}"
    );
    // The same in schema order is approved.
    let ordered = body.replace(
        r#""billTo":{"zip":"46201"},"order":{"invoiceNumber":"INV-1"}"#,
        r#""order":{"invoiceNumber":"INV-1"},"billTo":{"zip":"46201"}"#,
    );
    let answer = post_text(&fake, &ordered).await;
    assert_eq!(
        answer["transactionResponse"]["responseCode"], "1",
        "{answer}"
    );
    // merchantAuthentication must come first in the envelope.
    let late_auth = format!(
        r#"{{"createTransactionRequest":{{"refId":"r2","merchantAuthentication":{{"name":"{LOGIN}","transactionKey":"{TRANSACTION_KEY}"}}}}}}"#
    );
    let answer = post_text(&fake, &late_auth).await;
    assert_eq!(
        answer["messages"]["message"][0]["code"], "E00003",
        "{answer}"
    );
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn rejects_a_non_json_content_type() {
    let fake = authorizenet::start().await;
    let res = post_raw(&client(), &fake, ordered(&sale()).into_bytes(), "text/xml")
        .await
        .unwrap();
    let bytes = res.bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes[3..]).unwrap();
    assert_eq!(answer["messages"]["message"][0]["code"], "E00003");
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn declines_on_the_documented_zip_trigger() {
    let fake = authorizenet::start().await;
    let body = edit(|r| r["transactionRequest"]["billTo"]["zip"] = json!("46282"));
    let answer = post(&fake, &body).await;
    assert_eq!(
        answer["transactionResponse"]["responseCode"], "2",
        "{answer}"
    );
    assert_eq!(fake.sales_executed(), 1);
    assert_eq!(fake.approved_sales(), 0);
}

#[tokio::test]
async fn second_identical_sale_inside_the_window_is_a_duplicate() {
    let fake = authorizenet::start().await;
    let first = post(&fake, &sale()).await;
    let second = post(&fake, &sale()).await;
    let tr = &second["transactionResponse"];
    assert_eq!(tr["responseCode"], "3", "{second}");
    assert_eq!(tr["errors"][0]["errorCode"], "11");
    assert_eq!(
        tr["transId"], "0",
        "no original id without an explicit duplicateWindow"
    );
    assert_eq!(fake.sales_executed(), 1);

    // With duplicateWindow sent, the duplicate carries the original transaction.
    let fake = authorizenet::start().await;
    let with_window = edit(|r| {
        r["transactionRequest"]["transactionSettings"] =
            json!({"setting": [{"settingName": "duplicateWindow", "settingValue": "120"}]})
    });
    let first_retry = post(&fake, &with_window).await;
    let again = post(&fake, &with_window).await;
    assert_eq!(again["transactionResponse"]["errors"][0]["errorCode"], "11");
    assert_eq!(
        again["transactionResponse"]["transId"],
        first_retry["transactionResponse"]["transId"]
    );
    assert_eq!(
        again["transactionResponse"]["authCode"],
        first_retry["transactionResponse"]["authCode"]
    );
    assert_eq!(fake.sales_executed(), 1);
    assert_ne!(first["transactionResponse"]["transId"], "0");

    // duplicateWindow 0 disables the check; a different amount is not a duplicate.
    let fake = authorizenet::start().await;
    let no_window = edit(|r| {
        r["transactionRequest"]["transactionSettings"] =
            json!({"setting": [{"settingName": "duplicateWindow", "settingValue": "0"}]})
    });
    post(&fake, &no_window).await;
    post(&fake, &no_window).await;
    let other = edit(|r| r["transactionRequest"]["amount"] = json!("26.00"));
    post(&fake, &other).await;
    assert_eq!(fake.sales_executed(), 3);
}

#[tokio::test]
async fn merchant_initiated_sale_carries_the_ntid_and_no_cvv() {
    let fake = authorizenet::start().await;
    let answer = post(&fake, &mit("123456789NNNH")).await;
    assert_eq!(
        answer["transactionResponse"]["responseCode"], "1",
        "{answer}"
    );
    assert!(fake.record().sales[0].merchant_initiated);

    let mut with_cvv = mit("123456789NNNH");
    with_cvv["createTransactionRequest"]["transactionRequest"]["payment"]["creditCard"]
        ["cardCode"] = json!("123");
    with_cvv["createTransactionRequest"]["transactionRequest"]["amount"] = json!("30.00");
    let answer = post(&fake, &with_cvv).await;
    assert!(
        answer.to_string().contains("cardCode must not be sent"),
        "{answer}"
    );

    let mut no_ntid = mit("");
    no_ntid["createTransactionRequest"]["transactionRequest"]["amount"] = json!("31.00");
    let answer = post(&fake, &no_ntid).await;
    assert!(
        answer.to_string().contains("originalNetworkTransId"),
        "{answer}"
    );

    let mut bad_reason = mit("123456789NNNH");
    bad_reason["createTransactionRequest"]["transactionRequest"]["subsequentAuthInformation"]
        ["reason"] = json!("recurring");
    let answer = post(&fake, &bad_reason).await;
    assert_eq!(
        answer["messages"]["message"][0]["code"], "E00003",
        "{answer}"
    );
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn echeck_by_phone_needs_tel_and_declines_over_100() {
    let fake = authorizenet::start().await;
    let answer = post(&fake, &echeck("25.00", "TEL")).await;
    let tr = &answer["transactionResponse"];
    assert_eq!(tr["responseCode"], "1", "{answer}");
    assert_eq!(tr["accountType"], "eCheck");
    assert_eq!(
        fake.last_fields()
            ["createTransactionRequest.transactionRequest.payment.bankAccount.accountNumber"],
        "…5678"
    );

    let answer = post(&fake, &echeck("26.00", "WEB")).await;
    assert!(answer.to_string().contains("echeckType"), "{answer}");

    let mut bad_routing = echeck("27.00", "TEL");
    bad_routing["createTransactionRequest"]["transactionRequest"]["payment"]["bankAccount"]
        ["routingNumber"] = json!("121000359");
    let answer = post(&fake, &bad_routing).await;
    assert_eq!(
        answer["transactionResponse"]["errors"][0]["errorCode"], "9",
        "{answer}"
    );

    let answer = post(&fake, &echeck("100.01", "TEL")).await;
    assert_eq!(
        answer["transactionResponse"]["responseCode"], "2",
        "{answer}"
    );
    assert_eq!(fake.sales_executed(), 2);
    assert_eq!(fake.approved_sales(), 1);
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = authorizenet::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

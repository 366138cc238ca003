//! CyberSource fake (processors.md §7), including the HTTP Signature and Digest checks.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{client, future_year, PAN};
use crate::fakes::cybersource::{
    self, KEY_ID, MERCHANT_ID, PATH, REVERSAL_PATH, SHARED_SECRET, VOID_PATH,
};
use crate::fakes::Fake;

/// The §7.2 MOTO body.
fn sale() -> Value {
    json!({"clientReferenceInformation": {"code": "call-123"},
           "processingInformation": {"capture": true, "commerceIndicator": "moto"},
           "paymentInformation": {"card": {"number": PAN, "expirationMonth": "12",
                                           "expirationYear": future_year().to_string(), "securityCode": "123"}},
           "orderInformation": {"amountDetails": {"totalAmount": "25.00", "currency": "USD"},
                                "billTo": {"firstName": "Ada", "lastName": "Lovelace", "postalCode": "94105", "country": "US"}}})
}

/// The §7.4 MIT, nested the vendor's way.
fn mit(previous: &str) -> Value {
    let mut body = sale();
    body["processingInformation"] = json!({"capture": true, "commerceIndicator": "recurring",
        "authorizationOptions": {"initiator": {"type": "merchant", "storedCredentialUsed": true,
            "merchantInitiatedTransaction": {"previousTransactionId": previous}}}});
    body["paymentInformation"]["card"]
        .as_object_mut()
        .unwrap()
        .remove("securityCode");
    body
}

/// How a test request is signed; each field can be broken on its own.
struct Signing {
    secret: String,
    key_id: String,
    target_label: &'static str,
    headers_list: Option<String>,
    digest_override: Option<String>,
    /// Body sent instead of the signed one (signature and digest over the original).
    swap_body: Option<Vec<u8>>,
    date: Option<String>,
    /// The endpoint posted to, and the one signed as request-target when different.
    path: &'static str,
    signed_path: Option<&'static str>,
}

impl Default for Signing {
    fn default() -> Self {
        Self {
            secret: SHARED_SECRET.into(),
            key_id: KEY_ID.into(),
            target_label: "request-target",
            headers_list: None,
            digest_override: None,
            swap_body: None,
            date: None,
            path: PATH,
            signed_path: None,
        }
    }
}

/// Signs as §7.1 describes, written independently of the fake's verifier.
fn signed(
    client: &reqwest::Client,
    fake: &Fake,
    body: &Value,
    s: Signing,
) -> reqwest::RequestBuilder {
    let bytes = serde_json::to_vec(body).unwrap();
    let host = fake.base_url.trim_start_matches("http://").to_owned();
    let date = s.date.unwrap_or_else(|| {
        chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    });
    let b64 = base64::engine::general_purpose::STANDARD;
    let digest = s
        .digest_override
        .unwrap_or_else(|| format!("SHA-256={}", b64.encode(Sha256::digest(&bytes))));
    let label = s.target_label;
    let target = s.signed_path.unwrap_or(s.path);
    let signing = format!(
        "host: {host}\ndate: {date}\n{label}: post {target}\ndigest: {digest}\nv-c-merchant-id: {MERCHANT_ID}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&b64.decode(&s.secret).unwrap()).unwrap();
    mac.update(signing.as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    let list = s
        .headers_list
        .unwrap_or_else(|| format!("host date {label} digest v-c-merchant-id"));
    client
        .post(format!("{}{}", fake.base_url, s.path))
        .header("content-type", "application/json;charset=utf-8")
        .header("accept", "application/hal+json;charset=utf-8")
        .header("v-c-merchant-id", MERCHANT_ID)
        .header("date", date)
        .header("digest", digest)
        .header(
            "signature",
            format!(
                r#"keyid="{}", algorithm="HmacSHA256", headers="{list}", signature="{signature}""#,
                s.key_id
            ),
        )
        .body(s.swap_body.unwrap_or(bytes))
}

pub async fn good_sale(
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    signed(client, fake, &sale(), Signing::default())
        .send()
        .await
}

async fn post(fake: &Fake, body: &Value) -> (u16, Value) {
    send(signed(&client(), fake, body, Signing::default())).await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn approves_the_documented_moto_sale() {
    let fake = cybersource::start().await;
    let (status, body) = post(&fake, &sale()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "AUTHORIZED");
    assert!(body["id"].is_string());
    let p = &body["processorInformation"];
    assert!(p["networkTransactionId"].is_string(), "{body}");
    assert_eq!(p["networkTransactionId"], p["transactionId"]);
    assert_eq!(body["clientReferenceInformation"]["code"], "call-123");
    assert_eq!(
        fake.last_fields()["paymentInformation.card.number"],
        "411111…1111"
    );
    // The vendor pages' `(request-target)` spelling verifies as well.
    let s = Signing {
        target_label: "(request-target)",
        ..Signing::default()
    };
    let (status, body) = send(signed(&client(), &fake, &sale(), s)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn rejects_a_wrong_digest_or_signature_with_401() {
    let other_secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let mut tampered = sale();
    tampered["orderInformation"]["amountDetails"]["totalAmount"] = json!("2500.00");
    let cases: Vec<(&str, Signing, &str)> = vec![
        (
            "wrong secret",
            Signing {
                secret: other_secret,
                ..Signing::default()
            },
            "signature does not match",
        ),
        (
            "wrong key id",
            Signing {
                key_id: "other".into(),
                ..Signing::default()
            },
            "keyid",
        ),
        (
            "digest of another body",
            Signing {
                digest_override: Some(
                    "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into(),
                ),
                ..Signing::default()
            },
            "Digest",
        ),
        (
            "digest without prefix",
            Signing {
                digest_override: Some(
                    base64::engine::general_purpose::STANDARD
                        .encode(Sha256::digest(serde_json::to_vec(&sale()).unwrap())),
                ),
                ..Signing::default()
            },
            "Digest",
        ),
        (
            "body changed after signing",
            Signing {
                swap_body: Some(serde_json::to_vec(&tampered).unwrap()),
                ..Signing::default()
            },
            "Digest",
        ),
        (
            "label differs from the list",
            Signing {
                headers_list: Some("host date (request-target) digest v-c-merchant-id".into()),
                ..Signing::default()
            },
            "signature does not match",
        ),
        (
            "digest not signed",
            Signing {
                headers_list: Some("host date request-target v-c-merchant-id".into()),
                ..Signing::default()
            },
            "digest",
        ),
        (
            "order differs from the list",
            Signing {
                headers_list: Some("date host request-target digest v-c-merchant-id".into()),
                ..Signing::default()
            },
            "signature does not match",
        ),
    ];
    for (name, s, why) in cases {
        let fake = cybersource::start().await;
        let (status, body) = send(signed(&client(), &fake, &sale(), s)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(
            body["response"]["rmsg"].as_str().unwrap().contains(why),
            "{name}: {body}"
        );
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
    // Missing headers altogether.
    let fake = cybersource::start().await;
    let res = client()
        .post(format!("{}{PATH}", fake.base_url))
        .json(&sale())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let s = Signing {
        date: Some("yesterday".into()),
        ..Signing::default()
    };
    let (status, body) = send(signed(&client(), &fake, &sale(), s)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("RFC 1123"), "{body}");
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn rejects_invalid_fields_with_400_naming_the_field() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "month without zero",
            Box::new(|b| b["paymentInformation"]["card"]["expirationMonth"] = json!("3")),
            "INVALID_DATA",
            "paymentInformation.card.expirationMonth",
        ),
        (
            "two-digit year",
            Box::new(|b| b["paymentInformation"]["card"]["expirationYear"] = json!("31")),
            "INVALID_DATA",
            "paymentInformation.card.expirationYear",
        ),
        (
            "minor units",
            Box::new(|b| b["orderInformation"]["amountDetails"]["totalAmount"] = json!("25.001")),
            "INVALID_DATA",
            "orderInformation.amountDetails.totalAmount",
        ),
        (
            "numeric amount",
            Box::new(|b| b["orderInformation"]["amountDetails"]["totalAmount"] = json!(25)),
            "MISSING_FIELD",
            "orderInformation.amountDetails.totalAmount",
        ),
        (
            "no currency",
            Box::new(|b| {
                b["orderInformation"]["amountDetails"]
                    .as_object_mut()
                    .unwrap()
                    .remove("currency");
            }),
            "MISSING_FIELD",
            "orderInformation.amountDetails.currency",
        ),
        (
            "not moto",
            Box::new(|b| b["processingInformation"]["commerceIndicator"] = json!("internet")),
            "INVALID_DATA",
            "processingInformation.commerceIndicator",
        ),
        (
            "bad luhn",
            Box::new(|b| b["paymentInformation"]["card"]["number"] = json!("4111111111111112")),
            "INVALID_DATA",
            "paymentInformation.card.number",
        ),
        (
            "no card",
            Box::new(|b| {
                b["paymentInformation"]
                    .as_object_mut()
                    .unwrap()
                    .remove("card");
            }),
            "MISSING_FIELD",
            "paymentInformation.card.number",
        ),
    ];
    for (name, f, reason, field) in cases {
        let fake = cybersource::start().await;
        let mut body = sale();
        f(&mut body);
        let (status, answer) = post(&fake, &body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["status"], "INVALID_REQUEST");
        assert_eq!(answer["reason"], reason, "{name}: {answer}");
        assert_eq!(answer["details"][0]["field"], field, "{name}: {answer}");
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn declines_the_documented_invalid_account_card() {
    let fake = cybersource::start().await;
    let mut body = sale();
    body["paymentInformation"]["card"]["number"] = json!("42423482938483873");
    let (status, answer) = post(&fake, &body).await;
    assert_eq!(status, 201);
    assert_eq!(answer["status"], "DECLINED");
    assert_eq!(answer["errorInformation"]["reason"], "INVALID_ACCOUNT");
    assert_eq!(fake.sales_executed(), 1);
    assert_eq!(fake.approved_sales(), 0);
}

#[tokio::test]
async fn merchant_initiated_sale_nests_the_previous_transaction_id() {
    let fake = cybersource::start().await;
    let (status, body) = post(&fake, &mit("123456789619999")).await;
    assert_eq!(status, 201, "{body}");
    assert!(fake.record().sales[0].merchant_initiated);

    let mut upper = mit("");
    upper["processingInformation"]["authorizationOptions"]["initiator"]
        ["merchantInitiatedTransaction"] = json!({"previousTransactionID": "123456789619999"});
    assert_eq!(
        post(&fake, &upper).await.0,
        201,
        "spelling is unconfirmed: lenient"
    );

    let mut sibling = mit("");
    let options = &mut sibling["processingInformation"]["authorizationOptions"];
    options["initiator"]
        .as_object_mut()
        .unwrap()
        .remove("merchantInitiatedTransaction");
    options["merchantInitiatedTransaction"] = json!({"previousTransactionId": "123456789619999"});
    assert_eq!(
        post(&fake, &sibling).await.0,
        400,
        "PRISM's sibling placement"
    );

    let mut with_cvv = mit("123456789619999");
    with_cvv["paymentInformation"]["card"]["securityCode"] = json!("123");
    let (status, answer) = post(&fake, &with_cvv).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["details"][0]["field"],
        "paymentInformation.card.securityCode"
    );

    let (status, answer) = post(&fake, &mit("")).await;
    assert_eq!(status, 400);
    assert_eq!(answer["reason"], "MISSING_FIELD");

    let mut moto = mit("123456789619999");
    moto["processingInformation"]["commerceIndicator"] = json!("moto");
    assert_eq!(post(&fake, &moto).await.0, 400);
    assert_eq!(fake.sales_executed(), 2);
}

#[tokio::test]
async fn echeck_by_phone_needs_tel_and_the_documented_account_declines() {
    let fake = cybersource::start().await;
    let check = |account: &str, routing: &str, sec: &str| {
        json!({"clientReferenceInformation": {"code": "ach-1"},
               "processingInformation": {"commerceIndicator": "internet", "bankTransferOptions": {"secCode": sec}},
               "paymentInformation": {"paymentType": {"name": "CHECK"},
                                      "bank": {"account": {"type": "C", "number": account}, "routingNumber": routing}},
               "orderInformation": {"amountDetails": {"totalAmount": "25.00", "currency": "USD"},
                                    "billTo": {"firstName": "Ada", "lastName": "Lovelace"}}})
    };
    let (status, body) = post(&fake, &check("4100", "121042882", "TEL")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        fake.last_fields()["paymentInformation.bank.account.number"],
        "…4100"
    );
    let (status, body) = post(&fake, &check("4100", "121042882", "PPD")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["details"][0]["field"],
        "processingInformation.bankTransferOptions.secCode"
    );
    let (status, _) = post(&fake, &check("4100", "121042883", "TEL")).await;
    assert_eq!(status, 400);
    let (status, body) = post(&fake, &check("550111", "121107882", "TEL")).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "DECLINED");
    assert_eq!(fake.sales_executed(), 2);
    assert_eq!(fake.approved_sales(), 1);
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = cybersource::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

/// The timeout void (and the timeout authorization reversal) by merchant transaction id, signed
/// for its own path.
#[tokio::test]
async fn a_timeout_void_by_merchant_transaction_id_is_signed_and_undoes_the_sale() {
    let fake = cybersource::start().await;
    let mut body = sale();
    body["clientReferenceInformation"]["transactionId"] = json!("mt-1");
    let (status, sold) = post(&fake, &body).await;
    assert_eq!(status, 201, "{sold}");
    // A merchant transaction id is used once.
    let (status, again) = post(&fake, &body).await;
    assert_eq!(status, 400, "{again}");
    assert_eq!(again["reason"], "DUPLICATE_REQUEST");
    assert_eq!(fake.sales_executed(), 1);

    let void = json!({"clientReferenceInformation": {"code": "call-123", "transactionId": "mt-1"}});
    let to_void = |signed_path| Signing {
        path: VOID_PATH,
        signed_path,
        ..Signing::default()
    };
    // Signed for another request-target, or with another key: refused.
    let (status, _) = send(signed(&client(), &fake, &void, to_void(Some(PATH)))).await;
    assert_eq!(status, 401);
    let wrong_key = Signing {
        secret: "c2VjcmV0".into(),
        ..to_void(None)
    };
    let (status, _) = send(signed(&client(), &fake, &void, wrong_key)).await;
    assert_eq!(status, 401);
    assert!(fake.record().undone.is_empty());
    // Without the merchant transaction id: the missing field is named.
    let (status, missing) = send(signed(
        &client(),
        &fake,
        &json!({"clientReferenceInformation": {"code": "x"}}),
        to_void(None),
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        missing["details"][0]["field"],
        "clientReferenceInformation.transactionId"
    );

    let (status, voided) = send(signed(&client(), &fake, &void, to_void(None))).await;
    assert_eq!(status, 201, "{voided}");
    assert_eq!(voided["status"], "VOIDED");
    assert_eq!(voided["voidAmountDetails"]["voidAmount"], "25.00");
    assert_eq!(fake.record().undone, [sold["id"].as_str().unwrap()]);
    // A merchant transaction id the fake never saw: nothing stands, answered VOIDED all the same.
    let unknown = json!({"clientReferenceInformation": {"transactionId": "mt-404"}});
    let (status, never) = send(signed(&client(), &fake, &unknown, to_void(None))).await;
    assert_eq!(status, 201, "{never}");
    assert_eq!(
        never["voidAmountDetails"]["originalTransactionAmount"],
        "0.00"
    );
    assert_eq!(fake.record().undone.len(), 1);

    // A timeout authorization reversal does not undo a captured sale.
    let reversal = json!({"clientReferenceInformation": {"transactionId": "mt-1"},
        "reversalInformation": {"amountDetails": {"totalAmount": "25.00"}, "reason": "timeout"}});
    let to_reverse = Signing {
        path: REVERSAL_PATH,
        ..Signing::default()
    };
    let (status, refused) = send(signed(&client(), &fake, &reversal, to_reverse)).await;
    assert_eq!(status, 400, "{refused}");
}

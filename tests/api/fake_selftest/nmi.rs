//! NMI fake (processors.md §3).

use std::collections::BTreeMap;

use super::{client, future_year, PAN};
use crate::fakes::nmi::{
    self, QUERY_PATH, SECURITY_KEY, TEST_ACCOUNT, TEST_ROUTING, TRANSACT_PATH,
};
use crate::fakes::Fake;

type Form = Vec<(&'static str, String)>;

/// The §3.2 body (PRISM-PROBE plus optional fields).
fn sale() -> Form {
    vec![
        ("security_key", SECURITY_KEY.into()),
        ("type", "sale".into()),
        ("amount", "10.00".into()),
        ("currency", "USD".into()),
        ("orderid", "ord-1".into()),
        ("ccnumber", PAN.into()),
        ("ccexp", format!("03{:02}", future_year() % 100)),
        ("cvv", "737".into()),
        ("first_name", "Ada".into()),
        ("last_name", "Lovelace".into()),
        ("zip", "77777".into()),
    ]
}

fn check_sale(sec_code: &str) -> Form {
    vec![
        ("security_key", SECURITY_KEY.into()),
        ("type", "sale".into()),
        ("amount", "10.00".into()),
        ("orderid", "ach-1".into()),
        ("payment", "check".into()),
        ("checkname", "Ada Lovelace".into()),
        ("checkaba", TEST_ROUTING.into()),
        ("checkaccount", TEST_ACCOUNT.into()),
        ("account_holder_type", "personal".into()),
        ("account_type", "checking".into()),
        ("sec_code", sec_code.into()),
    ]
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
        .post(format!("{}{TRANSACT_PATH}", fake.base_url))
        .form(&sale())
        .send()
        .await
}

async fn post(fake: &Fake, path: &str, form: &Form) -> String {
    let res = client()
        .post(format!("{}{path}", fake.base_url))
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

async fn transact(fake: &Fake, form: &Form) -> BTreeMap<String, String> {
    let text = post(fake, TRANSACT_PATH, form).await;
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn approves_the_documented_sale() {
    let fake = nmi::start().await;
    let answer = transact(&fake, &sale()).await;
    assert_eq!(answer["response"], "1", "{answer:?}");
    assert_eq!(answer["response_code"], "100");
    assert_eq!(answer["responsetext"], "SUCCESS");
    assert!(!answer["transactionid"].is_empty());
    assert_eq!(answer["orderid"], "ord-1");
    let fields = fake.last_fields();
    assert_eq!(fields["ccnumber"], "411111…1111");
    assert_eq!(fields["cvv"], "***");
    assert_eq!(fields["security_key"], "***");
}

#[tokio::test]
async fn rejects_what_nmi_rejects() {
    let y = future_year() % 100;
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "wrong key",
            set(sale(), "security_key", "nope"),
            "Authentication Failed",
        ),
        (
            "no key",
            without(sale(), "security_key"),
            "Authentication Failed",
        ),
        (
            "ccexp MM/YY",
            set(sale(), "ccexp", &format!("03/{y}")),
            "Expiration",
        ),
        (
            "ccexp YYYY-MM",
            set(sale(), "ccexp", &format!("20{y}-03")),
            "Expiration",
        ),
        (
            "bad luhn",
            set(sale(), "ccnumber", "4111111111111112"),
            "Invalid Credit Card Number",
        ),
        ("minor units", set(sale(), "amount", "1000.001"), "amount"),
        (
            "amount with comma",
            set(sale(), "amount", "10,00"),
            "amount",
        ),
        ("no type", without(sale(), "type"), "Transaction Type"),
        ("bad cvv", set(sale(), "cvv", "12"), "CVV"),
        (
            "bad initiator",
            set(sale(), "initiated_by", "cardholder"),
            "initiated_by",
        ),
        (
            "initial id on a CIT",
            set(sale(), "initial_transaction_id", "1"),
            "initial_transaction_id",
        ),
    ];
    for (name, form, text) in cases {
        let fake = nmi::start().await;
        let answer = transact(&fake, &form).await;
        assert_eq!(answer["response"], "3", "{name}: {answer:?}");
        assert_eq!(answer["response_code"], "300", "{name}: {answer:?}");
        assert!(answer["responsetext"].contains(text), "{name}: {answer:?}");
        assert_eq!(fake.sales_executed(), 0, "{name}");
    }
}

#[tokio::test]
async fn rejects_a_json_body() {
    let fake = nmi::start().await;
    let body: BTreeMap<_, _> = sale().into_iter().collect();
    let res = client()
        .post(format!("{}{TRANSACT_PATH}", fake.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(text.contains("response=3"), "{text}");
    assert_eq!(fake.sales_executed(), 0);
}

#[tokio::test]
async fn declines_expired_cards_and_amounts_under_one_dollar() {
    let fake = nmi::start().await;
    let answer = transact(&fake, &set(sale(), "ccexp", "0320")).await;
    assert_eq!(answer["response"], "2", "{answer:?}");
    assert_eq!(answer["response_code"], "223");
    let answer = transact(&fake, &set(sale(), "amount", "0.99")).await;
    assert_eq!(answer["response"], "2", "{answer:?}");
    assert_eq!(answer["responsetext"], "DECLINE");
    assert_eq!(fake.sales_executed(), 1);
    assert_eq!(fake.approved_sales(), 0);
}

#[tokio::test]
async fn ach_by_phone_needs_tel() {
    let fake = nmi::start().await;
    let answer = transact(&fake, &check_sale("TEL")).await;
    assert_eq!(answer["response"], "1", "{answer:?}");
    assert_eq!(fake.last_fields()["checkaccount"], "…3815");
    let answer = transact(&fake, &check_sale("WEB")).await;
    assert!(answer["responsetext"].contains("TEL"), "{answer:?}");
    let answer = transact(&fake, &set(check_sale("TEL"), "checkaba", "490000019")).await;
    assert!(answer["responsetext"].contains("ABA"), "{answer:?}");
    let answer = transact(&fake, &without(check_sale("TEL"), "account_holder_type")).await;
    assert!(
        answer["responsetext"].contains("account_holder_type"),
        "{answer:?}"
    );
    assert_eq!(fake.sales_executed(), 1);
}

#[tokio::test]
async fn merchant_initiated_sale_references_nmis_own_transaction() {
    let fake = nmi::start().await;
    let first = sale()
        .into_iter()
        .chain([
            ("initiated_by", "customer".to_owned()),
            ("stored_credential_indicator", "stored".to_owned()),
            ("billing_method", "recurring".to_owned()),
        ])
        .collect::<Form>();
    let first = transact(&fake, &first).await;
    assert_eq!(first["response"], "1");
    let mit = |initial: &str| -> Form {
        without(sale(), "cvv")
            .into_iter()
            .chain([
                ("initiated_by", "merchant".to_owned()),
                ("stored_credential_indicator", "used".to_owned()),
                ("initial_transaction_id", initial.to_owned()),
                ("billing_method", "recurring".to_owned()),
            ])
            .collect()
    };
    let answer = transact(&fake, &mit(&first["transactionid"])).await;
    assert_eq!(answer["response"], "1", "{answer:?}");
    assert!(fake.record().sales[1].merchant_initiated);

    let answer = transact(&fake, &mit("123456789619999")).await;
    assert!(
        answer["responsetext"].contains("not a transaction of this gateway"),
        "{answer:?}"
    );
    let with_cvv = set(mit(&first["transactionid"]), "cvv", "737");
    let answer = transact(&fake, &with_cvv).await;
    assert!(answer["responsetext"].contains("cvv"), "{answer:?}");
    let unscheduled = without(mit(&first["transactionid"]), "billing_method");
    let answer = transact(&fake, &unscheduled).await;
    assert!(
        answer["responsetext"].contains("billing_method"),
        "{answer:?}"
    );
    let not_used = set(
        mit(&first["transactionid"]),
        "stored_credential_indicator",
        "stored",
    );
    let answer = transact(&fake, &not_used).await;
    assert_eq!(answer["response"], "3", "{answer:?}");
    assert_eq!(fake.sales_executed(), 2);
}

#[tokio::test]
async fn dup_seconds_rejects_a_repeat_and_the_query_api_finds_the_order() {
    let fake = nmi::start().await;
    let form = set(sale(), "dup_seconds", "600");
    let first = transact(&fake, &form).await;
    let second = transact(&fake, &form).await;
    assert_eq!(second["response"], "3", "{second:?}");
    assert!(second["responsetext"].starts_with("Duplicate transaction"));
    assert!(second["responsetext"].contains(&first["transactionid"]));
    assert_eq!(fake.sales_executed(), 1);

    let query: Form = vec![
        ("security_key", SECURITY_KEY.into()),
        ("order_id", "ord-1".into()),
    ];
    let xml = post(&fake, QUERY_PATH, &query).await;
    assert!(
        xml.contains(&format!(
            "<transaction_id>{}</transaction_id>",
            first["transactionid"]
        )),
        "{xml}"
    );
    assert_eq!(xml.matches("<transaction>").count(), 1, "{xml}");
    // NMI's shape: the condition, the sale action with its response, the card masked.
    for part in [
        "<condition>pendingsettlement</condition>",
        "<order_id>ord-1</order_id>",
        "<action_type>sale</action_type>",
        "<success>1</success>",
        "<response_code>100</response_code>",
        "<cc_number>4xxxxxxxxxxx1111</cc_number>",
    ] {
        assert!(xml.contains(part), "{part}: {xml}");
    }
    assert!(!xml.contains("4111111111111111"), "{xml}");
    let xml = post(&fake, QUERY_PATH, &set(query.clone(), "order_id", "other")).await;
    assert!(!xml.contains("<transaction>"), "{xml}");
    let xml = post(&fake, QUERY_PATH, &set(query, "security_key", "nope")).await;
    assert!(xml.contains("Authentication Failed"), "{xml}");
}

/// The sale the shared fault tests send is one this fake approves.
#[tokio::test]
async fn the_shared_good_sale_is_approved() {
    let fake = nmi::start().await;
    let res = good_sale(&client(), &fake).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(fake.approved_sales(), 1);
}

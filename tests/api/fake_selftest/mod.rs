//! Self-tests of the fake processors (`fakes`): for each, a request built from processors.md's
//! field list is approved, requests missing or malforming one required thing get the documented
//! rejection and execute nothing, decline triggers decline, idempotency replays execute once;
//! and here, for all six, the controllable faults and the masking of the record.

mod adyen;
mod authorizenet;
mod checkout;
mod cybersource;
mod nmi;
mod stripe;

use std::time::Duration;

use crate::fakes::{self, Fake, Fault};

/// The card every "good sale" uses (a test card at all six processors).
pub const PAN: &str = "4111111111111111";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A future expiry year (4 digits) for request bodies.
pub fn future_year() -> i32 {
    use chrono::Datelike;
    chrono::Utc::now().year() + 3
}

#[derive(Clone, Copy, Debug)]
enum Which {
    AuthorizeNet,
    Nmi,
    Stripe,
    Adyen,
    Checkout,
    CyberSource,
}

const ALL: [Which; 6] = [
    Which::AuthorizeNet,
    Which::Nmi,
    Which::Stripe,
    Which::Adyen,
    Which::Checkout,
    Which::CyberSource,
];

async fn start(which: Which) -> Fake {
    match which {
        Which::AuthorizeNet => fakes::authorizenet::start().await,
        Which::Nmi => fakes::nmi::start().await,
        Which::Stripe => fakes::stripe::start().await,
        Which::Adyen => fakes::adyen::start().await,
        Which::Checkout => fakes::checkout::start().await,
        Which::CyberSource => fakes::cybersource::start().await,
    }
}

async fn good_sale(
    which: Which,
    client: &reqwest::Client,
    fake: &Fake,
) -> reqwest::Result<reqwest::Response> {
    match which {
        Which::AuthorizeNet => authorizenet::good_sale(client, fake).await,
        Which::Nmi => nmi::good_sale(client, fake).await,
        Which::Stripe => stripe::good_sale(client, fake).await,
        Which::Adyen => adyen::good_sale(client, fake).await,
        Which::Checkout => checkout::good_sale(client, fake).await,
        Which::CyberSource => cybersource::good_sale(client, fake).await,
    }
}

#[tokio::test]
async fn good_sales_execute_once_and_the_record_holds_no_pan() {
    for which in ALL {
        let fake = start(which).await;
        let res = good_sale(which, &client(), &fake).await.unwrap();
        assert!(res.status().is_success(), "{which:?}: {}", res.status());
        assert_eq!(fake.sales_executed(), 1, "{which:?}");
        assert_eq!(fake.approved_sales(), 1, "{which:?}");
        let record = format!("{:?}", fake.record());
        assert!(
            !record.contains(PAN),
            "{which:?} record holds the PAN: {record}"
        );
        assert!(record.contains("411111…1111"), "{which:?}: {record}");
    }
}

#[tokio::test]
async fn server_error_fault_answers_5xx_and_executes_nothing() {
    for which in ALL {
        let fake = start(which).await;
        fake.fault_next(Fault::ServerError);
        let res = good_sale(which, &client(), &fake).await.unwrap();
        assert!(
            res.status().is_server_error(),
            "{which:?}: {}",
            res.status()
        );
        assert_eq!(fake.sales_executed(), 0, "{which:?}");
        // One-shot: the next request is served normally.
        let res = good_sale(which, &client(), &fake).await.unwrap();
        assert!(res.status().is_success(), "{which:?}");
    }
}

#[tokio::test]
async fn delay_fault_outlasts_the_callers_timeout_after_executing() {
    for which in ALL {
        let fake = start(which).await;
        fake.fault_next(Fault::Delay(Duration::from_secs(3)));
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = good_sale(which, &impatient, &fake).await.unwrap_err();
        assert!(err.is_timeout(), "{which:?}: {err}");
        assert_eq!(
            fake.sales_executed(),
            1,
            "{which:?}: the sale ran before the delay"
        );
    }
}

#[tokio::test]
async fn malformed_fault_answers_a_cut_body() {
    for which in ALL {
        let fake = start(which).await;
        fake.fault_next(Fault::Malformed);
        let res = good_sale(which, &client(), &fake).await.unwrap();
        let body = res.bytes().await.unwrap();
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        match which {
            // A query string stays parseable when cut; what goes is its tail.
            Which::Nmi => assert!(
                !String::from_utf8_lossy(body).contains("response_code="),
                "{which:?}"
            ),
            _ => assert!(
                serde_json::from_slice::<serde_json::Value>(body).is_err(),
                "{which:?}"
            ),
        }
        assert_eq!(fake.sales_executed(), 1, "{which:?}");
    }
}

#[tokio::test]
async fn oversize_fault_answers_a_large_wellformed_body() {
    const SIZE: usize = 3 * 1024 * 1024;
    for which in ALL {
        let fake = start(which).await;
        fake.fault_next(Fault::Oversize(SIZE));
        let res = good_sale(which, &client(), &fake).await.unwrap();
        assert!(res.status().is_success(), "{which:?}");
        let body = res.bytes().await.unwrap();
        assert!(body.len() >= SIZE, "{which:?}: {}", body.len());
        if !matches!(which, Which::Nmi) {
            let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
            serde_json::from_slice::<serde_json::Value>(body).unwrap();
        }
    }
}

#[tokio::test]
async fn echo_pan_fault_declines_with_the_dotted_pan_in_the_message() {
    for which in ALL {
        let fake = start(which).await;
        fake.set_fault(Some(Fault::EchoPan));
        let res = good_sale(which, &client(), &fake).await.unwrap();
        let text = res.text().await.unwrap();
        assert!(text.contains("4111.1111.1111.1111"), "{which:?}: {text}");
        assert_eq!(fake.sales_executed(), 0, "{which:?}");
        fake.set_fault(None);
        let res = good_sale(which, &client(), &fake).await.unwrap();
        assert!(
            !res.text().await.unwrap().contains("4111.1111"),
            "{which:?}"
        );
    }
}

#[tokio::test]
async fn wrong_path_is_404_and_wrong_method_is_405() {
    let paths = [
        (Which::AuthorizeNet, fakes::authorizenet::PATH),
        (Which::Nmi, fakes::nmi::TRANSACT_PATH),
        (Which::Stripe, fakes::stripe::PATH),
        (Which::Adyen, fakes::adyen::PATH),
        (Which::Checkout, fakes::checkout::PATH),
        (Which::CyberSource, fakes::cybersource::PATH),
    ];
    for (which, path) in paths {
        let fake = start(which).await;
        let res = client()
            .get(format!("{}{path}", fake.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{which:?}");
        let res = client()
            .post(format!("{}{path}x", fake.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{which:?}");
        assert!(fake.record().requests.is_empty(), "{which:?}");
    }
}

#[test]
fn shared_checks() {
    assert!(fakes::luhn_ok("4111111111111111"));
    assert!(!fakes::luhn_ok("4111111111111112"));
    assert!(fakes::aba_ok("121107882"));
    assert!(!fakes::aba_ok("121107883"));
    assert_eq!(fakes::major_to_minor("25.00", 2), Ok(2500));
    assert_eq!(fakes::major_to_minor("25", 2), Ok(2500));
    assert_eq!(fakes::major_to_minor("25.5", 2), Ok(2550));
    assert!(fakes::major_to_minor("25.001", 2).is_err());
    assert!(fakes::major_to_minor("100.5", 0).is_err());
    assert!(fakes::major_to_minor("0.00", 2).is_err());
    assert!(fakes::major_to_minor("1,00", 2).is_err());
    assert_eq!(fakes::exponent("jpy"), Some(0));
    assert_eq!(fakes::exponent("BHD"), Some(3));
    assert_eq!(fakes::mask_pan(PAN), "411111…1111");
    assert_eq!(fakes::dotted(PAN), "4111.1111.1111.1111");
}

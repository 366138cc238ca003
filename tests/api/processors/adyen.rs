//! The `adyen` profile against the Adyen fake (processors.md §5).

use crate::fakes::adyen::{self, API_KEY, MERCHANT_ACCOUNT};
use crate::helpers::new_txn;

use super::wire::{self, Wire, PAN};

async fn wire() -> Wire {
    Wire {
        profile: "adyen",
        settings: vec![("api_key", API_KEY), ("merchant_account", MERCHANT_ACCOUNT)],
        fake: adyen::start().await,
        base_path: "/v71",
    }
}

#[tokio::test]
async fn adyen_approves_a_keyed_moto_sale_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let record = wire.fake.record();
    assert!(
        record.requests[0]
            .idempotency_key
            .as_ref()
            .is_some_and(|k| !k.is_empty()),
        "Idempotency-Key sent"
    );
    let fields = wire.fake.last_fields();
    assert_eq!(fields["amount.value"], "1234", "minor units");
    assert_eq!(fields["amount.currency"], "USD");
    assert_eq!(fields["merchantAccount"], MERCHANT_ACCOUNT);
    assert_eq!(fields["shopperInteraction"], "Moto", "MOTO");
    assert_eq!(fields["paymentMethod.type"], "scheme");
    assert_eq!(fields["paymentMethod.number"], "411111…1111");
    assert_eq!(fields["paymentMethod.expiryMonth"], "08");
    assert_eq!(fields["paymentMethod.expiryYear"], "2035");
    assert_eq!(fields["paymentMethod.cvc"], "***");
    assert_eq!(fields["paymentMethod.holderName"], wire::HOLDER);
}

#[tokio::test]
async fn adyen_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let mut body = wire::card(&new_txn(), PAN, "10.00");
    body["parameters"]["AVSName"] = "DECLINED".into();
    let (_, answer) = app.post("/", &body).await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "2", "{answer}");
    assert_eq!(message, "Refused");
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn adyen_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn adyen_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn adyen_merchant_initiated_charges_cite_the_network_transaction_id() {
    let wire = wire().await;
    let (ntid, seen) = wire::merchant_initiated(&wire).await;
    for fields in &seen {
        assert_eq!(fields["shopperInteraction"], "ContAuth");
        assert_eq!(fields["paymentMethod.networkPaymentReference"], ntid);
    }
    assert_eq!(seen[0]["recurringProcessingModel"], "Subscription");
    assert_eq!(seen[1]["recurringProcessingModel"], "UnscheduledCardOnFile");
}

#[tokio::test]
async fn adyen_an_unknown_outcome_then_twilios_retry_is_replayed_under_the_same_key() {
    wire::lost_answer_is_replayed_by_key(&wire().await, PAN, "12.34").await;
}

#[tokio::test]
async fn adyen_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(&wire().await, "api_key", "AQEwrongKey0000").await;
}

#[tokio::test]
async fn adyen_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

/// Adyen passes back only `resultCode`, which decides the outcome itself: the echo goes in the
/// refusal reason only.
#[tokio::test]
async fn adyen_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, None).await;
}

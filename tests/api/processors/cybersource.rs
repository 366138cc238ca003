//! The `cybersource` profile against the CyberSource fake (processors.md §7).

use crate::fakes::cybersource::{self, DECLINE_CARD, KEY_ID, MERCHANT_ID, SHARED_SECRET};
use crate::helpers::new_txn;

use super::wire::{self, Wire, ACCOUNT, PAN, ROUTING};

async fn wire() -> Wire {
    Wire {
        profile: "cybersource",
        settings: vec![
            ("merchant_id", MERCHANT_ID),
            ("key_id", KEY_ID),
            ("shared_secret", SHARED_SECRET),
        ],
        fake: cybersource::start().await,
        base_path: "",
    }
}

#[tokio::test]
async fn cybersource_approves_a_signed_keyed_moto_sale_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let fields = wire.fake.last_fields();
    assert_eq!(
        fields["orderInformation.amountDetails.totalAmount"], "12.34",
        "major units"
    );
    assert_eq!(fields["orderInformation.amountDetails.currency"], "USD");
    assert_eq!(
        fields["processingInformation.commerceIndicator"], "moto",
        "MOTO"
    );
    assert_eq!(fields["processingInformation.capture"], "true");
    assert_eq!(fields["paymentInformation.card.number"], "411111…1111");
    assert_eq!(fields["paymentInformation.card.expirationMonth"], "08");
    assert_eq!(fields["paymentInformation.card.expirationYear"], "2035");
    assert_eq!(fields["paymentInformation.card.securityCode"], "***");
}

#[tokio::test]
async fn cybersource_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, answer) = app
        .post("/", &wire::card(&new_txn(), DECLINE_CARD, "10.00"))
        .await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "INVALID_ACCOUNT", "{answer}");
    assert_eq!(message, "Decline - Invalid account number");
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn cybersource_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn cybersource_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn cybersource_ach_is_a_tel_check_with_the_holder_name() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, body) = app
        .post("/", &wire::bank(&new_txn(), ACCOUNT, ROUTING, "25.00"))
        .await;
    let charge_id = wire::approved(&body);
    assert_eq!(wire.fake.record().sales[0].id, charge_id);
    let fields = wire.fake.last_fields();
    assert_eq!(fields["paymentInformation.paymentType.name"], "CHECK");
    assert_eq!(
        fields["processingInformation.bankTransferOptions.secCode"],
        "TEL"
    );
    assert_eq!(fields["orderInformation.billTo.firstName"], "Ada");
    assert_eq!(fields["orderInformation.billTo.lastName"], "Lovelace");
    assert_eq!(fields["paymentInformation.bank.routingNumber"], ROUTING);
}

#[tokio::test]
async fn cybersource_merchant_initiated_charges_cite_the_network_transaction_id() {
    let wire = wire().await;
    let (ntid, seen) = wire::merchant_initiated(&wire).await;
    const INITIATOR: &str = "processingInformation.authorizationOptions.initiator";
    for fields in &seen {
        assert_eq!(fields[&format!("{INITIATOR}.type")], "merchant");
        assert_eq!(fields[&format!("{INITIATOR}.storedCredentialUsed")], "true");
        assert_eq!(
            fields[&format!("{INITIATOR}.merchantInitiatedTransaction.previousTransactionId")],
            ntid
        );
    }
    assert_eq!(
        seen[0]["processingInformation.commerceIndicator"],
        "recurring"
    );
    assert_eq!(
        seen[1]["processingInformation.commerceIndicator"],
        "internet"
    );
}

#[tokio::test]
async fn cybersource_an_unknown_outcome_then_twilios_retry_is_held_for_reconciliation() {
    wire::lost_answer_is_held_for_reconciliation(&wire().await, PAN, "12.34").await;
}

#[tokio::test]
async fn cybersource_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(
        &wire().await,
        "shared_secret",
        "d3Jvbmcgc2hhcmVkIHNlY3JldCB3cm9uZyBzZWNyZXQ=",
    )
    .await;
}

#[tokio::test]
async fn cybersource_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

#[tokio::test]
async fn cybersource_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, Some("status")).await;
}

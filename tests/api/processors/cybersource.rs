//! The `cybersource` profile against the CyberSource fake (processors.md §7).

use serde_json::Value;

use crate::fakes::cybersource::{
    self, DECLINE_CARD, KEY_ID, MERCHANT_ID, PATH, REVERSAL_PATH, SHARED_SECRET, VOID_PATH,
};
use crate::fakes::Fault;
use crate::helpers::{assert_no_leaks, captured_logs, new_txn};

use super::wire::{self, Lost, Wire, ACCOUNT, PAN, ROUTING};

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

// CyberSource asks for 60 s between a request and its timeout reversal: Twilio's retry, 10 s
// later, is too soon, so it is answered as unknown without calling CyberSource and the charge
// stays listed for reconciliation.
#[tokio::test]
async fn cybersource_an_unknown_outcome_then_twilios_retry_is_held_for_reconciliation() {
    wire::lost_answer_is_held_for_reconciliation(&wire().await, PAN, "12.34").await;
}

/// The built-in profile with the 60 s recovery delay removed, so that a test's retry voids.
fn no_delay(profile: &str) -> String {
    assert!(profile.contains("not_before_seconds = 60"));
    profile.replace("not_before_seconds = 60", "not_before_seconds = 0")
}

/// The merchant transaction id a request carried.
fn merchant_id(fields: &std::collections::BTreeMap<String, String>) -> String {
    fields["clientReferenceInformation.transactionId"].clone()
}

// The first sale executed and its answer was lost: the retry voids it by its merchant
// transaction id and, once CyberSource confirms, sends the sale again under a new one. The
// cardholder stands charged once: the re-sent sale, whose id Twilio gets.
#[tokio::test]
async fn cybersource_a_lost_answer_is_voided_then_sent_again_once() {
    let wire = wire().await;
    let app = wire.app_edited(no_delay).await;
    let (txn, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::AfterTheSale, "12.34", None).await;
    let record = wire.fake.record();
    let charge_id = wire::approved(&retry);
    assert_eq!(paths, [VOID_PATH, PATH], "voided, then sent again");
    assert_eq!(record.sales.len(), 2, "{:?}", record.sales);
    assert_eq!(
        record.undone,
        [record.sales[0].id.clone()],
        "the first is voided"
    );
    let standing = record.standing_sales();
    assert_eq!(standing.len(), 1, "charged once: {:?}", record);
    assert_eq!(standing[0].id, charge_id);
    // The void named the first sale's merchant transaction id (the fake voids by it: the first
    // sale is the one undone); the re-send has its own. (The first sale's request is not in the
    // record: payvault hung up before the fake answered it.)
    let seen = &record.requests;
    let (void, sale2) = (&seen[seen.len() - 2].fields, &seen[seen.len() - 1].fields);
    assert_ne!(merchant_id(sale2), merchant_id(void));
    assert!(merchant_id(sale2).starts_with(&merchant_id(void)));
    assert_eq!(void["clientReferenceInformation.code"], txn);
    assert!(
        !void.keys().any(|k| k.starts_with("paymentInformation")),
        "{void:?}"
    );
    // A later retry is answered from the record.
    let (_, again) = app.post("/", &wire::card(&txn, PAN, "12.34")).await;
    assert_eq!(wire::approved(&again), charge_id);
    assert_eq!(wire.fake.record().requests.len(), seen.len());
    assert_no_leaks(app.pool(), &[PAN], &[wire::CVV], &captured_logs()).await;
}

#[tokio::test]
async fn cybersource_a_sale_that_never_reached_cybersource_is_sent_once_after_the_void() {
    let wire = wire().await;
    let app = wire.app_edited(no_delay).await;
    let (_, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::BeforeTheSale, "12.34", None).await;
    let record = wire.fake.record();
    assert_eq!(paths, [VOID_PATH, PATH]);
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    assert!(record.undone.is_empty());
    assert_eq!(wire::approved(&retry), record.sales[0].id);
}

#[tokio::test]
async fn cybersource_a_failed_void_leaves_the_charge_unknown_and_listed() {
    let wire = wire().await;
    let app = wire.app_edited(no_delay).await;
    let (txn, retry, paths) = wire::lost_then_retried(
        &wire,
        &app,
        Lost::AfterTheSale,
        "12.34",
        Some(Fault::ServerError),
    )
    .await;
    assert_eq!(retry["charge_id"], Value::Null, "{retry}");
    assert_eq!(retry["error_code"], "processor_outcome_unknown", "{retry}");
    assert_eq!(paths, [VOID_PATH], "nothing re-sent");
    assert_eq!(wire.fake.record().standing_sales().len(), 1);
    wire::assert_listed_unknown(&app, &txn);
    // The next retry voids again (the first attempt, and the second, which sent nothing) and
    // only then sends the sale: still one standing.
    let (_, later) = app.post("/", &wire::card(&txn, PAN, "12.34")).await;
    let record = wire.fake.record();
    assert_eq!(wire::approved(&later), record.sales[1].id, "{record:?}");
    assert_eq!(record.standing_sales().len(), 1, "{record:?}");
    assert_eq!(record.undone, [record.sales[0].id.clone()]);
}

// A timeout authorization reversal cannot undo a captured sale (the vendor's rule, which the
// fake enforces): a profile that tried it would leave the charge unknown, never re-sent.
#[tokio::test]
async fn cybersource_a_reversal_cannot_undo_a_captured_sale_so_nothing_is_re_sent() {
    let wire = wire().await;
    let app = wire
        .app_edited(|t| {
            no_delay(t).replace(
                "path = \"/pts/v2/voids\"",
                "path = \"/pts/v2/reversals\"",
            )
            .replace("\"comments\": \"timeout void\"", "\"comments\": \"x\" }, \"reversalInformation\": { \"amountDetails\": { \"totalAmount\": {{ amount.major }} }")
        })
        .await;
    let (txn, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::AfterTheSale, "12.34", None).await;
    assert_eq!(paths, [REVERSAL_PATH]);
    assert_eq!(retry["error_code"], "processor_outcome_unknown", "{retry}");
    assert_eq!(wire.fake.sales_executed(), 1);
    wire::assert_listed_unknown(&app, &txn);
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

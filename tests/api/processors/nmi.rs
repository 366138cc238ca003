//! The `nmi` profile against the NMI fake (processors.md §3).

use crate::fakes::nmi::{self, SECURITY_KEY, TEST_ACCOUNT, TEST_ROUTING};
use crate::helpers::new_txn;

use super::wire::{self, Wire, HOLDER, PAN};

async fn wire() -> Wire {
    Wire {
        profile: "nmi",
        settings: vec![("security_key", SECURITY_KEY)],
        fake: nmi::start().await,
        base_path: "",
    }
}

#[tokio::test]
async fn nmi_approves_a_keyed_sale_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let fields = wire.fake.last_fields();
    assert_eq!(fields["type"], "sale");
    assert_eq!(fields["amount"], "12.34", "major units");
    assert_eq!(fields["currency"], "USD");
    assert_eq!(fields["ccnumber"], "411111…1111");
    assert_eq!(fields["ccexp"], "0835", "MMYY");
    assert_eq!(fields["cvv"], "***");
    assert_eq!(fields["zip"], "94111");
    assert_eq!(fields["security_key"], "***");
    // No MOTO variable is documented (§3.2): none is sent.
    assert!(!fields.contains_key("industry"));
}

#[tokio::test]
async fn nmi_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, answer) = app.post("/", &wire::card(&new_txn(), PAN, "0.50")).await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "200", "{answer}");
    assert_eq!(message, "DECLINE");
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn nmi_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn nmi_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn nmi_ach_is_a_tel_check_with_the_holder_name() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, body) = app
        .post(
            "/",
            &wire::bank(&new_txn(), TEST_ACCOUNT, TEST_ROUTING, "25.00"),
        )
        .await;
    let charge_id = wire::approved(&body);
    assert_eq!(wire.fake.record().sales[0].id, charge_id);
    let fields = wire.fake.last_fields();
    assert_eq!(fields["payment"], "check");
    assert_eq!(fields["sec_code"], "TEL");
    assert_eq!(fields["checkname"], HOLDER);
    assert_eq!(fields["checkaba"], TEST_ROUTING);
    assert_eq!(fields["checkaccount"], "…3815");
}

#[tokio::test]
async fn nmi_merchant_initiated_charges_cite_the_first_transaction_id() {
    let wire = wire().await;
    let (anchor, seen) = wire::merchant_initiated(&wire).await;
    for fields in &seen {
        assert_eq!(fields["initiated_by"], "merchant");
        assert_eq!(fields["stored_credential_indicator"], "used");
        assert_eq!(fields["initial_transaction_id"], anchor);
    }
    assert_eq!(seen[0]["billing_method"], "recurring");
    assert!(!seen[1].contains_key("billing_method"), "unscheduled");
}

// NMI has no idempotency key and its duplicate answer does not carry the original outcome
// (processors.md §3.5): the profile declares `lookup`, so a lost answer is never re-sent (this
// test once caught a second, real sale when the profile declared `duplicate_window`).
#[tokio::test]
async fn nmi_an_unknown_outcome_then_twilios_retry_is_held_for_reconciliation() {
    wire::lost_answer_is_held_for_reconciliation(&wire().await, PAN, "12.34").await;
}

#[tokio::test]
async fn nmi_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(&wire().await, "security_key", "wrong-nmi-security-key").await;
}

#[tokio::test]
async fn nmi_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

#[tokio::test]
async fn nmi_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, Some("authcode")).await;
}

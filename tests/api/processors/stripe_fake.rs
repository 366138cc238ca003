//! The `stripe` profile against the Stripe fake of `fakes::stripe` (processors.md §4).

use crate::fakes::stripe::{self, SECRET_KEY};
use crate::helpers::new_txn;

use super::wire::{self, Wire, PAN};

async fn wire() -> Wire {
    Wire {
        profile: "stripe",
        settings: vec![("secret_key", SECRET_KEY)],
        fake: stripe::start().await,
        base_path: "",
    }
}

#[tokio::test]
async fn stripe_fake_approves_a_keyed_moto_sale_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let record = wire.fake.record();
    let key = record.requests[0].idempotency_key.clone();
    assert!(key.is_some_and(|k| !k.is_empty()), "Idempotency-Key sent");
    let fields = wire.fake.last_fields();
    assert_eq!(fields["amount"], "1234", "minor units");
    assert_eq!(fields["currency"], "usd");
    assert_eq!(fields["confirm"], "true");
    assert_eq!(fields["payment_method_data[card][number]"], "411111…1111");
    assert_eq!(fields["payment_method_data[card][exp_month]"], "08");
    assert_eq!(fields["payment_method_data[card][exp_year]"], "2035");
    assert_eq!(fields["payment_method_data[card][cvc]"], "***");
    assert_eq!(fields["payment_method_options[card][moto]"], "true", "MOTO");
}

#[tokio::test]
async fn stripe_fake_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, answer) = app
        .post("/", &wire::card(&new_txn(), "4000000000000002", "10.00"))
        .await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "generic_decline", "{answer}");
    assert_eq!(message, "Your card was declined.");
}

#[tokio::test]
async fn stripe_fake_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn stripe_fake_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn stripe_fake_merchant_initiated_charges_cite_the_network_transaction_id() {
    let wire = wire().await;
    let (ntid, seen) = wire::merchant_initiated(&wire).await;
    for fields in &seen {
        assert_eq!(
            fields["payment_method_options[card][mit_exemption][network_transaction_id]"],
            ntid
        );
        assert!(!fields.contains_key("payment_method_options[card][moto]"));
    }
}

#[tokio::test]
async fn stripe_an_unknown_outcome_then_twilios_retry_is_replayed_under_the_same_key() {
    wire::lost_answer_is_replayed_by_key(&wire().await, PAN, "12.34").await;
}

#[tokio::test]
async fn stripe_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(&wire().await, "secret_key", "sk_test_wrongKey0000").await;
}

#[tokio::test]
async fn stripe_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

#[tokio::test]
async fn stripe_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, Some("status")).await;
}

//! The `checkout` profile against the Checkout.com fake (processors.md §6).

use crate::fakes::checkout::{self, PROCESSING_CHANNEL_ID, SECRET_KEY};
use crate::helpers::new_txn;

use super::wire::{self, Wire, PAN};

async fn wire() -> Wire {
    Wire {
        profile: "checkout",
        settings: vec![
            ("secret_key", SECRET_KEY),
            ("processing_channel_id", PROCESSING_CHANNEL_ID),
        ],
        fake: checkout::start().await,
        base_path: "",
    }
}

#[tokio::test]
async fn checkout_approves_a_keyed_moto_sale_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let record = wire.fake.record();
    assert!(
        record.requests[0]
            .idempotency_key
            .as_ref()
            .is_some_and(|k| !k.is_empty()),
        "Cko-Idempotency-Key sent"
    );
    let fields = wire.fake.last_fields();
    assert_eq!(fields["amount"], "1234", "minor units");
    assert_eq!(fields["currency"], "USD");
    assert_eq!(fields["payment_type"], "MOTO", "MOTO");
    assert_eq!(fields["capture"], "true");
    assert_eq!(fields["source.number"], "411111…1111");
    assert_eq!(fields["source.expiry_month"], "08");
    assert_eq!(fields["source.expiry_year"], "2035");
    assert_eq!(fields["source.cvv"], "***");
}

#[tokio::test]
async fn checkout_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, answer) = app.post("/", &wire::card(&new_txn(), PAN, "10.05")).await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "20005", "{answer}");
    assert_eq!(message, "Declined - Do Not Honour");
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn checkout_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn checkout_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn checkout_merchant_initiated_charges_cite_the_scheme_id() {
    let wire = wire().await;
    let (ntid, seen) = wire::merchant_initiated(&wire).await;
    for fields in &seen {
        assert_eq!(fields["merchant_initiated"], "true");
        assert_eq!(fields["previous_payment_id"], ntid);
        assert_eq!(fields["source.stored"], "true");
    }
    assert_eq!(seen[0]["payment_type"], "Recurring");
    assert_eq!(seen[1]["payment_type"], "Unscheduled");
}

#[tokio::test]
async fn checkout_an_unknown_outcome_then_twilios_retry_is_replayed_under_the_same_key() {
    wire::lost_answer_is_replayed_by_key(&wire().await, PAN, "12.34").await;
}

#[tokio::test]
async fn checkout_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(
        &wire().await,
        "secret_key",
        "sk_sbox_wrongwrongwrongwrongwrong",
    )
    .await;
}

#[tokio::test]
async fn checkout_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

#[tokio::test]
async fn checkout_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, Some("status")).await;
}

//! The `nmi` profile against the NMI fake (processors.md §3).

use serde_json::Value;

use crate::fakes::nmi::{
    self, QUERY_PATH, SECURITY_KEY, TEST_ACCOUNT, TEST_ROUTING, TRANSACT_PATH,
};
use crate::fakes::Fault;
use crate::helpers::{assert_no_leaks, captured_logs, new_txn};

use super::wire::{self, Lost, Wire, HOLDER, PAN};

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
// (processors.md §3.5): the profile declares `lookup`, and a retry after an unknown outcome asks
// NMI's Query API by orderid before anything is re-sent (a blind re-send once caught a second,
// real sale here when the profile declared `duplicate_window`).
#[tokio::test]
async fn nmi_a_lost_answer_is_looked_up_and_the_retry_gets_the_original_charge_id() {
    let wire = wire().await;
    let app = wire.app().await;
    let (txn, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::AfterTheSale, "12.34", None).await;
    let record = wire.fake.record();
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    assert_eq!(
        wire::approved(&retry),
        record.sales[0].id,
        "the original charge id"
    );
    assert_eq!(paths, [QUERY_PATH], "one lookup, no re-send");
    let query = wire.fake.last_fields();
    assert_eq!(query["order_id"], txn, "by payvault's reference");
    assert_eq!(query["security_key"], "***");
    assert_eq!(query.len(), 2, "{query:?}");
    // The outcome is recorded: a later retry asks nothing.
    let (_, again) = app.post("/", &wire::card(&txn, PAN, "12.34")).await;
    assert_eq!(wire::approved(&again), record.sales[0].id);
    assert_eq!(wire.fake.record().requests.len(), record.requests.len());
    assert_no_leaks(app.pool(), &[PAN], &[wire::CVV], &captured_logs()).await;
}

#[tokio::test]
async fn nmi_a_lost_decline_is_looked_up_as_the_decline() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::AfterTheSale, "0.50", None).await;
    let (code, message) = wire::declined(&retry);
    assert_eq!((code.as_str(), message.as_str()), ("200", "DECLINE"));
    assert_eq!(paths, [QUERY_PATH]);
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn nmi_a_sale_that_never_reached_nmi_is_sent_once_after_the_lookup() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, retry, paths) =
        wire::lost_then_retried(&wire, &app, Lost::BeforeTheSale, "12.34", None).await;
    let record = wire.fake.record();
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    assert_eq!(wire::approved(&retry), record.sales[0].id);
    assert_eq!(
        paths,
        [QUERY_PATH, TRANSACT_PATH],
        "looked up, then sent once"
    );
}

#[tokio::test]
async fn nmi_a_failed_lookup_leaves_the_charge_unknown_and_listed() {
    let wire = wire().await;
    let app = wire.app().await;
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
    assert_eq!(paths, [QUERY_PATH], "nothing re-sent");
    assert_eq!(wire.fake.sales_executed(), 1);
    wire::assert_listed_unknown(&app, &txn);
    // A lookup answering neither found nor not found (an error answer) is no better.
    let (_, again) = {
        let app2 = wire
            .app_edited(|t| {
                t.replace(
                    "\"order_id\": {{ transaction_id }}",
                    "\"order_id\": \"x\", \"security_key\": \"wrong\"",
                )
            })
            .await;
        let (txn2, retry2, _) =
            wire::lost_then_retried(&wire, &app2, Lost::AfterTheSale, "12.34", None).await;
        wire::assert_listed_unknown(&app2, &txn2);
        (txn2, retry2)
    };
    assert_eq!(again["error_code"], "processor_outcome_unknown", "{again}");
    assert_eq!(
        wire.fake.sales_executed(),
        2,
        "the second charge's one sale, not re-sent"
    );
    // Once NMI answers again, the next retry finds the first sale.
    let (_, later) = app.post("/", &wire::card(&txn, PAN, "12.34")).await;
    assert_eq!(wire::approved(&later), wire.fake.record().sales[0].id);
    assert_eq!(wire.fake.sales_executed(), 2);
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

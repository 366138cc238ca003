//! The `authorizenet` profile against the Authorize.net fake (processors.md §2).

use crate::fakes::authorizenet::{self, DECLINE_ZIP, LOGIN, TRANSACTION_KEY};
use crate::helpers::new_txn;

use super::wire::{self, Wire, ACCOUNT, HOLDER, PAN, ROUTING};

const TXN: &str = "createTransactionRequest.transactionRequest";

async fn wire() -> Wire {
    Wire {
        profile: "authorizenet",
        settings: vec![
            ("api_login_id", LOGIN),
            ("transaction_key", TRANSACTION_KEY),
        ],
        fake: authorizenet::start().await,
        base_path: "",
    }
}

fn f(name: &str) -> String {
    format!("{TXN}.{name}")
}

#[tokio::test]
async fn authorizenet_approves_a_keyed_moto_sale_in_xsd_order_and_a_retry_executes_once() {
    let wire = wire().await;
    wire::approve_and_retry(&wire, PAN, "12.34").await;
    let fields = wire.fake.last_fields();
    assert_eq!(fields[&f("transactionType")], "authCaptureTransaction");
    assert_eq!(fields[&f("amount")], "12.34", "major units");
    assert_eq!(fields[&f("currencyCode")], "USD");
    assert_eq!(fields[&f("payment.creditCard.cardNumber")], "411111…1111");
    assert_eq!(
        fields[&f("payment.creditCard.expirationDate")],
        "2035-08",
        "YYYY-MM"
    );
    assert_eq!(fields[&f("payment.creditCard.cardCode")], "***");
    assert_eq!(fields[&f("retail.marketType")], "1", "MOTO");
    assert_eq!(fields[&f("billTo.zip")], "94111");
    assert_eq!(
        fields["createTransactionRequest.merchantAuthentication.transactionKey"],
        "***"
    );
}

#[tokio::test]
async fn authorizenet_decline_reaches_twilio_as_the_processors_error() {
    let wire = wire().await;
    let app = wire.app().await;
    let mut body = wire::card(&new_txn(), PAN, "10.00");
    body["postal_code"] = DECLINE_ZIP.into();
    let (_, answer) = app.post("/", &body).await;
    let (code, message) = wire::declined(&answer);
    assert_eq!(code, "2", "{answer}");
    assert_eq!(message, "This transaction has been declined.");
    assert_eq!(wire.fake.sales_executed(), 1);
}

#[tokio::test]
async fn authorizenet_unknown_outcomes_leave_no_card_data() {
    wire::unknown_outcomes(&wire().await, PAN).await;
}

#[tokio::test]
async fn authorizenet_echoed_dotted_pan_is_scrubbed() {
    wire::echo_is_scrubbed(&wire().await).await;
}

#[tokio::test]
async fn authorizenet_ach_is_a_tel_echeck_with_the_holder_name() {
    let wire = wire().await;
    let app = wire.app().await;
    let (_, body) = app
        .post("/", &wire::bank(&new_txn(), ACCOUNT, ROUTING, "25.00"))
        .await;
    let charge_id = wire::approved(&body);
    assert_eq!(wire.fake.record().sales[0].id, charge_id);
    let fields = wire.fake.last_fields();
    assert_eq!(fields[&f("payment.bankAccount.echeckType")], "TEL");
    assert_eq!(fields[&f("payment.bankAccount.nameOnAccount")], HOLDER);
    assert_eq!(fields[&f("payment.bankAccount.routingNumber")], ROUTING);
    assert_eq!(fields[&f("payment.bankAccount.accountNumber")], "…3815");
    assert_eq!(fields[&f("amount")], "25.00");
}

#[tokio::test]
async fn authorizenet_merchant_initiated_charges_cite_the_network_transaction_id() {
    let wire = wire().await;
    let (ntid, seen) = wire::merchant_initiated(&wire).await;
    let (recurring, unscheduled) = (&seen[0], &seen[1]);
    for fields in &seen {
        assert_eq!(fields[&f("processingOptions.isSubsequentAuth")], "true");
        assert_eq!(
            fields[&f("subsequentAuthInformation.originalNetworkTransId")],
            ntid
        );
        assert!(!fields.contains_key(&f("retail.marketType")), "not MOTO");
    }
    assert_eq!(
        recurring[&f("transactionSettings.setting.1.settingName")],
        "recurringBilling"
    );
    assert!(!unscheduled.contains_key(&f("transactionSettings.setting.1.settingName")));
}

#[tokio::test]
async fn authorizenet_an_unknown_outcome_then_twilios_retry_reads_the_duplicate_as_the_original() {
    let wire = wire().await;
    let (_app, _txn, retry, resent) = wire::lost_answer_then_retry(&wire, PAN, "12.34").await;
    let record = wire.fake.record();
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    // The re-send (the profile sends duplicateWindow explicitly) is refused as a duplicate
    // carrying the original transaction (§2.5): Twilio gets the original charge id.
    assert_eq!(resent, 1, "one re-send: {:?}", record.requests);
    assert_eq!(wire::approved(&retry), record.sales[0].id, "{retry}");
    assert_eq!(
        retry["parameters"]["transactionResponse_authCode"], "A00001",
        "the original auth code: {retry}"
    );
}

#[tokio::test]
async fn authorizenet_wrong_credentials_and_refused_requests_are_definite_failures() {
    wire::refusals_are_definite(&wire().await, "transaction_key", "wrong-transaction-key").await;
}

#[tokio::test]
async fn authorizenet_a_forty_mib_chunked_answer_is_cut_off_at_the_limit() {
    wire::flood_is_cut_off(&wire().await).await;
}

#[tokio::test]
async fn authorizenet_a_pan_echoed_with_any_separators_is_scrubbed_everywhere() {
    wire::echoes_are_scrubbed(&wire().await, Some("transactionResponse.authCode")).await;
}

//! What the per-processor wire tests share: a payvault server (or a bare profile processor)
//! pointed at a fake, Twilio request bodies, and the scenarios every processor goes through
//! (unknown outcomes, a PAN echoed with dots, Twilio's retry, merchant-initiated follow-ups).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use payvault::config::ProcessorConfig;
use payvault::crypto::KeyRing;
use payvault::domain::{
    Amount, Card, CardNumber, Cvv, Expiry, PaymentMethod, PostalCode, SecretText,
};
use payvault::processor::profile::{
    ProcessorEnvironment, Profile, ProfileConfig, ProfileProcessor,
};
use payvault::processor::{Initiator, Processor, ProcessorError, ProcessorReply, ProcessorRequest};
use serde_json::{json, Value};

use crate::fakes::{Fake, Fault};
use crate::helpers::{
    assert_no_leaks, captured_logs, card_charge, new_txn, spawn_app_opts, test_keys, Options,
    TestApp, TestDb,
};

/// The card the tests key (a test card at all six processors) and its CVV: four digits with a
/// leading zero, so the leak scan cannot confuse it with a count or a latency.
pub const PAN: &str = "4111111111111111";
pub const CVV: &str = "0729";
pub const DOTTED_PAN: &str = "4111.1111.1111.1111";
/// The holder name Twilio passes as `parameters.AVSName`.
pub const HOLDER: &str = "Ada Lovelace";
/// A bank account and routing number (ABA-valid) for ACH (NMI's sandbox pair, §3.3).
pub const ACCOUNT: &str = "24413815";
pub const ROUTING: &str = "490000018";

/// The processor timeout of the test servers; the delay fault holds the answer longer.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A processor under test: its built-in profile, the settings the fake accepts, the fake.
pub struct Wire {
    pub profile: &'static str,
    pub settings: Vec<(&'static str, &'static str)>,
    pub fake: Fake,
    /// Appended to the fake's address to make the base URL (Adyen's `/v71`).
    pub base_path: &'static str,
}

impl Wire {
    pub fn config(&self) -> ProfileConfig {
        let profile = Profile::builtin(self.profile).unwrap().unwrap();
        ProfileConfig::with_settings(
            profile,
            ProcessorEnvironment::Test,
            Some(&format!("{}{}", self.fake.base_url, self.base_path)),
            &self.settings,
        )
        .unwrap()
    }

    /// A payvault server charging through this profile.
    pub async fn app(&self) -> TestApp {
        spawn_app_opts(
            Arc::new(TestDb::new().await),
            test_keys(),
            Options {
                processor: ProcessorConfig::Profile(self.config()),
                processor_timeout: TIMEOUT,
                ..Options::default()
            },
        )
        .await
    }

    /// A payvault server charging through this profile on `db`, with `keys` (another instance's).
    pub async fn app_on(&self, db: Arc<TestDb>, keys: Arc<KeyRing>) -> TestApp {
        spawn_app_opts(
            db,
            keys,
            Options {
                processor: ProcessorConfig::Profile(self.config()),
                processor_timeout: TIMEOUT,
                ..Options::default()
            },
        )
        .await
    }

    /// A payvault server charging through this profile with its text edited by `edit` (a
    /// shorter recovery delay than the processor documents, a different path).
    pub async fn app_edited(&self, edit: impl Fn(&str) -> String) -> TestApp {
        let text = payvault::processor::profile::BUILTIN
            .iter()
            .find(|(n, _)| *n == self.profile)
            .map(|(_, t)| edit(t))
            .unwrap();
        let profile = Profile::parse(&text, "edited").unwrap();
        let config = ProfileConfig::with_settings(
            profile,
            ProcessorEnvironment::Test,
            Some(&format!("{}{}", self.fake.base_url, self.base_path)),
            &self.settings,
        )
        .unwrap();
        spawn_app_opts(
            Arc::new(TestDb::new().await),
            test_keys(),
            Options {
                processor: ProcessorConfig::Profile(config),
                processor_timeout: TIMEOUT,
                ..Options::default()
            },
        )
        .await
    }

    /// The profile processor itself, for charges the root endpoint cannot make yet.
    pub fn processor(&self) -> ProfileProcessor {
        ProfileProcessor::new(self.config(), Duration::from_secs(1), TIMEOUT).unwrap()
    }
}

/// Twilio's card charge: [`CVV`], a postal code, the holder name in `AVSName`.
pub fn card(txn: &str, pan: &str, amount: &str) -> Value {
    let mut body = card_charge(txn, pan, amount);
    body["cvv"] = json!(CVV);
    body["parameters"] = json!({"AVSName": HOLDER, "order_id": "A-1"});
    body
}

/// Twilio's ACH charge.
pub fn bank(txn: &str, account: &str, routing: &str, amount: &str) -> Value {
    json!({"method": "charge", "transaction_id": txn, "bankaccountnumber": account,
           "routingnumber": routing, "amount": amount, "currency_code": "USD",
           "description": "phone order", "parameters": {"AVSName": HOLDER}})
}

/// An approval: the charge id, no error.
pub fn approved(body: &Value) -> String {
    assert_eq!(body["error_code"], Value::Null, "{body}");
    body["charge_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no charge_id: {body}"))
        .to_owned()
}

/// A definitive decline: an error code, no charge id.
pub fn declined(body: &Value) -> (String, String) {
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    let code = body["error_code"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        !code.starts_with("processor_"),
        "a payvault error, not the processor's decline: {body}"
    );
    (
        code.to_owned(),
        body["error_message"].as_str().unwrap_or("").to_owned(),
    )
}

/// Approves a keyed sale, then Twilio retries it: the same charge id, one sale executed.
pub async fn approve_and_retry(wire: &Wire, pan: &str, amount: &str) -> (TestApp, String) {
    let app = wire.app().await;
    let txn = new_txn();
    let (status, body) = app.post("/", &card(&txn, pan, amount)).await;
    assert_eq!(status, 200, "{body}");
    let charge_id = approved(&body);
    let sales = wire.fake.record().sales;
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(
        sales[0].id, charge_id,
        "Twilio gets the fake's transaction id"
    );
    assert!(sales[0].approved && !sales[0].merchant_initiated);
    let (_, again) = app.post("/", &card(&txn, pan, amount)).await;
    assert_eq!(approved(&again), charge_id, "{again}");
    assert_eq!(wire.fake.sales_executed(), 1, "the retry executed nothing");
    (app, charge_id)
}

/// A 5xx, an answer later than the processor timeout and a truncated answer each give Twilio an
/// unknown-outcome error; then nothing in the database or the logs holds the card.
pub async fn unknown_outcomes(wire: &Wire, pan: &str) {
    let app = wire.app().await;
    let cases = [
        (Fault::ServerError, "processor_error"),
        (
            Fault::Delay(TIMEOUT + Duration::from_secs(1)),
            "processor_timeout",
        ),
        (Fault::Malformed, "processor_bad_response"),
    ];
    for (fault, code) in cases {
        wire.fake.fault_next(fault.clone());
        let (status, body) = app.post("/", &card(&new_txn(), pan, "10.00")).await;
        assert_eq!(status, 200, "{fault:?}: {body}");
        assert_eq!(body["charge_id"], Value::Null, "{fault:?}: {body}");
        assert_eq!(body["error_code"], code, "{fault:?}: {body}");
    }
    assert_no_leaks(app.pool(), &[pan], &[CVV], &captured_logs()).await;
}

/// The processor echoes the PAN written with dots in its decline message: Twilio, the database
/// and the logs get it scrubbed.
pub async fn echo_is_scrubbed(wire: &Wire) {
    let app = wire.app().await;
    wire.fake.fault_next(Fault::EchoPan);
    let (_, body) = app.post("/", &card(&new_txn(), PAN, "10.00")).await;
    let (_, message) = declined(&body);
    let text = body.to_string();
    assert!(!text.contains(DOTTED_PAN) && !text.contains(PAN), "{text}");
    assert!(message.contains("[redacted]"), "{body}");
    assert_no_leaks(app.pool(), &[PAN, DOTTED_PAN], &[CVV], &captured_logs()).await;
}

pub fn card_method(pan: &str, cvv: Option<&str>) -> PaymentMethod {
    PaymentMethod::Card(Card {
        number: CardNumber::parse(SecretText::from(pan)).unwrap(),
        expiry: Expiry::from_stored(3, 2031).unwrap(),
        cvv: cvv.map(|c| Cvv::parse(SecretText::from(c)).unwrap()),
        postal_code: Some(PostalCode::parse("94105").unwrap()),
    })
}

/// One charge through `Processor::charge`, as the charge flow makes it.
pub async fn direct(
    processor: &ProfileProcessor,
    method: &PaymentMethod,
    amount: &str,
    initiator: Initiator,
) -> Result<ProcessorReply, ProcessorError> {
    let amount = Amount::parse(amount, "USD").unwrap();
    let parameters = BTreeMap::from([("AVSName".to_owned(), HOLDER.to_owned())]);
    let txn = new_txn();
    let key = new_txn();
    let req = ProcessorRequest {
        transaction_id: &txn,
        idempotency_key: &key,
        method,
        amount: &amount,
        description: Some("monthly"),
        parameters: &parameters,
        timeout: TIMEOUT,
        initiator,
    };
    processor.charge(&req).await
}

/// A customer-initiated sale whose reply carries the fake's network transaction id, then a
/// recurring and an unscheduled merchant-initiated follow-up citing it: the fake takes both as
/// merchant-initiated sales. The card handed to the follow-ups still has a CVV, which must not
/// be sent. Returns the NTID and each follow-up's masked fields.
pub async fn merchant_initiated(wire: &Wire) -> (String, Vec<BTreeMap<String, String>>) {
    let processor = wire.processor();
    let first = direct(
        &processor,
        &card_method(PAN, Some(CVV)),
        "10.00",
        Initiator::CustomerMoto,
    )
    .await
    .unwrap();
    let charge_id = first
        .charge_id
        .clone()
        .unwrap_or_else(|| panic!("{first:?}"));
    let sale = wire.fake.record().sales.last().cloned().unwrap();
    assert_eq!(sale.id, charge_id);
    let ntid = first
        .network_transaction_id
        .clone()
        .unwrap_or_else(|| panic!("no network transaction id read: {first:?}"));
    // NMI answers none: its own transaction id is the anchor (§3.4).
    let expected = sale.network_transaction_id.unwrap_or(sale.id);
    assert_eq!(ntid, expected, "the NTID is read from the fake's reply");

    let mut seen = Vec::new();
    for recurring in [true, false] {
        let reply = direct(
            &processor,
            &card_method(PAN, Some(CVV)),
            "10.00",
            Initiator::Merchant {
                network_transaction_id: Some(ntid.clone()),
                recurring,
            },
        )
        .await
        .unwrap();
        let id = reply
            .charge_id
            .clone()
            .unwrap_or_else(|| panic!("recurring={recurring}: {reply:?}"));
        let sale = wire.fake.record().sales.last().cloned().unwrap();
        assert_eq!(sale.id, id);
        assert!(sale.merchant_initiated && sale.approved, "{sale:?}");
        let fields = wire.fake.last_fields();
        assert!(
            fields.values().any(|v| *v == ntid),
            "the NTID is sent: {fields:?}"
        );
        let cvv_fields: HashSet<&String> = fields
            .keys()
            .filter(|k| {
                let k = k.to_ascii_lowercase();
                k.contains("cvv")
                    || k.contains("cvc")
                    || k.contains("securitycode")
                    || k.contains("cardcode")
            })
            .collect();
        assert!(
            cvv_fields.is_empty(),
            "no CVV on a merchant-initiated charge: {fields:?}"
        );
        seen.push(fields);
    }
    // Without a network transaction id nothing is sent: a definitive profile error.
    let before = wire.fake.record().requests.len();
    let reply = direct(
        &processor,
        &card_method(PAN, None),
        "10.00",
        Initiator::Merchant {
            network_transaction_id: None,
            recurring: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        reply.error_code.as_deref(),
        Some("processor_profile_error"),
        "{reply:?}"
    );
    assert_eq!(wire.fake.record().requests.len(), before);
    (ntid, seen)
}

/// An unknown outcome followed by Twilio's retry: the fake executes the first sale but answers
/// after the processor timeout (Twilio hears `processor_timeout`), then Twilio retries the same
/// `transaction_id`. Returns the app, the transaction id, the retry's answer and how many
/// requests the retry made the fake answer (the lost first request is never recorded as
/// answered: payvault hangs up on it before the fake's delay ends). The fake executed at most
/// one sale.
pub async fn lost_answer_then_retry(
    wire: &Wire,
    pan: &str,
    amount: &str,
) -> (TestApp, String, Value, usize) {
    let app = wire.app().await;
    let txn = new_txn();
    wire.fake
        .fault_next(Fault::Delay(TIMEOUT + Duration::from_secs(1)));
    let (status, first) = app.post("/", &card(&txn, pan, amount)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["charge_id"], Value::Null, "{first}");
    assert_eq!(first["error_code"], "processor_timeout", "{first}");
    assert_eq!(
        wire.fake.sales_executed(),
        1,
        "the first sale ran before its answer was lost"
    );
    let before = wire.fake.record().requests.len();
    let (status, retry) = app.post("/", &card(&txn, pan, amount)).await;
    assert_eq!(status, 200, "{retry}");
    let record = wire.fake.record();
    assert!(
        record.sales.len() <= 1,
        "at most one sale executed: {:?}",
        record.sales
    );
    (app, txn, retry, record.requests.len() - before)
}

/// For a `header` profile: the retry re-sends with the same idempotency key, the fake replays
/// the first answer and Twilio gets the first sale's charge id.
pub async fn lost_answer_is_replayed_by_key(wire: &Wire, pan: &str, amount: &str) {
    let (_app, _txn, retry, resent) = lost_answer_then_retry(wire, pan, amount).await;
    let record = wire.fake.record();
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    assert_eq!(
        approved(&retry),
        record.sales[0].id,
        "the original charge id"
    );
    assert_eq!(resent, 1, "one re-send: {:?}", record.requests);
    assert_eq!(record.replays, 1, "the re-send was answered from the key");
    let keys = &record.idempotency_keys;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(!keys[0].is_empty());
    assert_eq!(keys[0], keys[1], "the re-send carries the first key");
}

/// For a profile that cannot re-send safely (`lookup`, `reversal`, `none`): the retry does not
/// reach the processor, Twilio hears that the outcome is unknown, and the charge is listed by
/// `payvault charges unknown` for reconciliation.
pub async fn lost_answer_is_held_for_reconciliation(wire: &Wire, pan: &str, amount: &str) {
    let (app, txn, retry, resent) = lost_answer_then_retry(wire, pan, amount).await;
    let record = wire.fake.record();
    assert_eq!(record.sales.len(), 1, "{:?}", record.sales);
    assert_eq!(
        resent, 0,
        "the retry did not call the processor: {:?}",
        record.requests
    );
    assert_eq!(retry["charge_id"], Value::Null, "{retry}");
    assert_eq!(retry["error_code"], "processor_outcome_unknown", "{retry}");
    let listed = charges_unknown(&app);
    let rows: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["transaction_id"], txn.as_str(), "{listed}");
    assert_eq!(rows[0]["state"], "unknown", "{listed}");
}

/// `payvault charges unknown --format json` against the app's database: one JSON object a line.
pub fn charges_unknown(app: &TestApp) -> String {
    charges_unknown_with(app, &[])
}

/// The same with more arguments (`--tenant NAME`).
pub fn charges_unknown_with(app: &TestApp, args: &[&str]) -> String {
    let out = run_charges_unknown(app, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `payvault charges unknown --format json ARGS` against the app's database, as it exits.
fn run_charges_unknown(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["charges", "unknown", "--format", "json"])
        .args(args)
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("DATABASE_URL", app.db.url())
        .env("PAYVAULT_MASTER_KEY", crate::helpers::key_text(&app.keys))
        .output()
        .unwrap()
}

/// The first attempt's answer is lost in one of two ways.
#[derive(Clone, Copy, Debug)]
pub enum Lost {
    /// The processor executed the sale; its answer came after the processor timeout.
    AfterTheSale,
    /// The processor answered 5xx without executing anything: the sale never reached it.
    BeforeTheSale,
}

/// The first attempt of a card charge on `app` gets no definitive answer (`lost`), then Twilio
/// retries the same `transaction_id`. Returns the transaction id, the retry's answer and the
/// paths of the requests the retry made the fake answer.
pub async fn lost_then_retried(
    wire: &Wire,
    app: &TestApp,
    lost: Lost,
    amount: &str,
    before_retry: Option<Fault>,
) -> (String, Value, Vec<String>) {
    let txn = new_txn();
    let (fault, code, executed) = match lost {
        Lost::AfterTheSale => (
            Fault::Delay(TIMEOUT + Duration::from_secs(1)),
            "processor_timeout",
            1,
        ),
        Lost::BeforeTheSale => (Fault::ServerError, "processor_error", 0),
    };
    let sales_before = wire.fake.sales_executed();
    wire.fake.fault_next(fault);
    let (status, first) = app.post("/", &card(&txn, PAN, amount)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["charge_id"], Value::Null, "{first}");
    assert_eq!(first["error_code"], code, "{first}");
    assert_eq!(
        wire.fake.sales_executed() - sales_before,
        executed,
        "{lost:?}"
    );
    let before = wire.fake.record().requests.len();
    if let Some(fault) = before_retry {
        wire.fake.fault_next(fault);
    }
    let (status, retry) = app.post("/", &card(&txn, PAN, amount)).await;
    assert_eq!(status, 200, "{retry}");
    let paths = wire.fake.record().requests[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    (txn, retry, paths)
}

/// The charge is listed by `payvault charges unknown`, as unknown.
pub fn assert_listed_unknown(app: &TestApp, txn: &str) {
    let listed = charges_unknown(app);
    let rows: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["transaction_id"], txn, "{listed}");
    assert_eq!(rows[0]["state"], "unknown", "{listed}");
    assert_eq!(rows[0]["tenant"], "default", "{listed}");
    // By tenant: the charge's own lists it, another tenant's does not.
    assert_eq!(
        charges_unknown_with(app, &["--tenant", "default"]),
        listed,
        "the default tenant's charges"
    );
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["tenants", "create", "other-merchant"])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("DATABASE_URL", app.db.url())
        .env("PAYVAULT_MASTER_KEY", crate::helpers::key_text(&app.keys))
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert_eq!(
        charges_unknown_with(app, &["--tenant", "other-merchant"]),
        "",
        "another tenant has no charge to reconcile"
    );
    // A tenant that does not exist is an error that names it, not an empty list.
    let missing = run_charges_unknown(app, &["--tenant", "no-such-merchant"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "an unknown tenant was accepted");
    assert!(
        missing.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&missing.stdout)
    );
    assert!(
        stderr.contains("no tenant named `no-such-merchant`"),
        "{stderr}"
    );
}

/// A charge the processor refuses as a whole is a definite failure with payvault's own code:
/// Twilio hears it (no charge id), the processor executed nothing, a retry of the same
/// transaction is answered from the record without calling the processor again, nothing is
/// listed for reconciliation, and a WARN line names the profile and the code.
async fn assert_refused(wire: &Wire, app: &TestApp, code: &str, words: &str) {
    let txn = new_txn();
    let (status, body) = app.post("/", &card(&txn, PAN, "10.00")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    let message = body["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(words) && message.contains("Nothing was charged"),
        "{body}"
    );
    assert_eq!(wire.fake.sales_executed(), 0, "nothing executed");
    let requests = wire.fake.record().requests.len();
    let (_, again) = app.post("/", &card(&txn, PAN, "10.00")).await;
    assert_eq!(again, body, "the retry gets the recorded answer");
    assert_eq!(
        wire.fake.record().requests.len(),
        requests,
        "a definite failure is not re-sent"
    );
    let failed = app
        .count("SELECT count(*) FROM idempotency_records WHERE state = 'failed'")
        .await;
    assert!(failed >= 1, "recorded as a failure, not unknown");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records WHERE state = 'unknown'")
            .await,
        0
    );
    assert_eq!(charges_unknown(app), "", "nothing to reconcile");
    let logs = captured_logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("the payment processor refused the request")
            && l.contains(&format!("profile={}", wire.profile))
            && l.contains(&format!("error_code={code}"))),
        "a WARN line for {} {code}",
        wire.profile
    );
}

/// Wrong credentials (`setting` given a wrong value) are `processor_auth_failed`; a request the
/// processor refuses as invalid ([`Fault::Reject`]) is `processor_rejected`. Neither is an
/// unknown outcome, and neither leaves card data behind.
pub async fn refusals_are_definite(wire: &Wire, setting: &str, wrong: &str) {
    let settings: Vec<(&str, &str)> = wire
        .settings
        .iter()
        .map(|&(name, value)| (name, if name == setting { wrong } else { value }))
        .collect();
    assert!(
        settings.iter().any(|&(_, v)| v == wrong),
        "no setting {setting}"
    );
    let profile = Profile::builtin(wire.profile).unwrap().unwrap();
    let config = ProfileConfig::with_settings(
        profile,
        ProcessorEnvironment::Test,
        Some(&format!("{}{}", wire.fake.base_url, wire.base_path)),
        &settings,
    )
    .unwrap();
    let app = spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        Options {
            processor: ProcessorConfig::Profile(config),
            processor_timeout: TIMEOUT,
            ..Options::default()
        },
    )
    .await;
    assert_refused(wire, &app, "processor_auth_failed", "credentials").await;
    assert_no_leaks(app.pool(), &[PAN], &[CVV], &captured_logs()).await;

    let app = wire.app().await;
    wire.fake.set_fault(Some(Fault::Reject));
    assert_refused(wire, &app, "processor_rejected", "rejected the request").await;
    wire.fake.set_fault(None);
    assert_no_leaks(app.pool(), &[PAN], &[CVV], &captured_logs()).await;
}

/// The size of the answer that floods ([`Fault::Flood`]): 40 MiB, against payvault's 64 KiB.
pub const FLOOD: usize = 40 * 1024 * 1024;

/// The processor answers a real answer followed by 40 MiB of padding, chunked: payvault stops
/// reading at its limit and hangs up (the fake was handed far less than the whole), and Twilio
/// hears an unreadable answer, whose outcome is unknown.
pub async fn flood_is_cut_off(wire: &Wire) {
    let app = wire.app().await;
    wire.fake.fault_next(Fault::Flood(FLOOD));
    let (status, body) = app.post("/", &card(&new_txn(), PAN, "10.00")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["charge_id"], Value::Null, "{body}");
    assert_eq!(body["error_code"], "processor_bad_response", "{body}");
    let flood = wire.fake.flood().expect("the fake flooded");
    let taken = flood.wait_cut(Duration::from_secs(10)).await;
    assert!(
        taken < FLOOD / 5,
        "payvault hung up early, not after buffering: {taken} of {FLOOD} bytes handed over"
    );
}

/// Ways a processor may write the card number back: dots, spaces, dashes, mixed.
pub const ECHOES: &[&str] = &[
    "4111.1111.1111.1111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111 .1111-1111 1111",
];

/// The processor echoes the PAN, written each way of [`ECHOES`], in its decline message and, where
/// the profile passes one back, in `parameter` (the answer's dotted path): Twilio, the database
/// (`idempotency_records.outcome` included) and the logs never get it.
pub async fn echoes_are_scrubbed(wire: &Wire, parameter: Option<&'static str>) {
    let app = wire.app().await;
    for written in ECHOES {
        wire.fake.fault_next(Fault::EchoPanAs {
            written: (*written).to_owned(),
            field: parameter,
        });
        let (_, body) = app.post("/", &card(&new_txn(), PAN, "10.00")).await;
        let (_, message) = declined(&body);
        let text = body.to_string();
        assert!(!text.contains(written) && !text.contains(PAN), "{text}");
        assert!(message.contains("[redacted]"), "{written}: {body}");
        if let Some(path) = parameter {
            assert_eq!(
                body["parameters"][path.replace('.', "_")],
                "[redacted]",
                "{written}: {body}"
            );
        }
    }
    let outcomes = app
        .count("SELECT count(*) FROM idempotency_records WHERE outcome::text LIKE '%[redacted]%'")
        .await;
    assert_eq!(
        outcomes,
        ECHOES.len() as i64,
        "the scrubbed text is what is stored"
    );
    let mut needles = vec![PAN];
    needles.extend(ECHOES);
    assert_no_leaks(app.pool(), &needles, &[CVV], &captured_logs()).await;
}

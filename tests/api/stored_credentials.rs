//! Stored credentials (merchant-initiated charges of a token, citing the network transaction id
//! of the card's first charge) and exactly-once with processors that have no idempotency key.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    captured_logs, card_charge, card_tokenize, new_txn, spawn_app, spawn_app_opts, test_keys,
    Options, Stub, StubAnswer, TestApp, TestDb,
};
use payvault::audit::Origin;
use payvault::auth::{CredentialKind, Principal, Scope};
use payvault::charge::{ChargeRequest, Charger, Source};
use payvault::domain::{Amount, Token};
use payvault::processor::{
    BoxFuture, IdempotencyStrategy, Initiator, Lookup, Processor, ProcessorError, ProcessorReply,
    ProcessorRequest, Reversal,
};
use payvault::vault::Vault;
use serde_json::{json, Value};

const NTID: &str = "483297487231504";

fn approve_with_ntid(id: &str) -> StubAnswer {
    StubAnswer::Json {
        status: 200,
        body: json!({"charge_id": id, "error_code": null, "error_message": null,
                     "network_transaction_id": NTID}),
        delay: Duration::ZERO,
    }
}

async fn stub_app(stub: &Stub) -> TestApp {
    spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        Options::generic(&stub.url, Duration::from_secs(2)),
    )
    .await
}

/// A Twilio connector that may also charge stored tokens.
async fn token_connector(app: &TestApp) -> payvault::auth::admin::CreatedCredential {
    app.create_credential(
        "twilio-tokens",
        CredentialKind::Connector,
        Some(vec![Scope::Connector, Scope::TokensCharge]),
    )
    .await
}

async fn token_view(app: &TestApp, token: &str) -> Value {
    let reader = app
        .create_credential("reader", CredentialKind::Api, Some(vec![Scope::TokensRead]))
        .await;
    let resp = app
        .client
        .get(app.url(&format!("/v1/tokens/{token}")))
        .basic_auth(&reader.row.username, Some(reader.secret.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn token_charge(token: &str, stored_credential: Option<&str>) -> Value {
    let mut body = json!({"method": "charge", "transaction_id": new_txn(), "token": token,
                          "amount": "25.00", "currency_code": "USD", "parameters": {}});
    if let Some(kind) = stored_credential {
        body["parameters"]["stored_credential"] = kind.into();
    }
    body
}

#[tokio::test]
async fn save_card_stores_the_ntid_and_token_charges_cite_it_merchant_initiated_without_cvv() {
    let stub = Stub::start(|n, _| approve_with_ntid(&format!("ch_{n}"))).await;
    let app = stub_app(&stub).await;

    // The first charge: the caller keys the card (customer-initiated MOTO) and saves it.
    let mut first = card_charge(&new_txn(), "4111111111111111", "10.00");
    first["parameters"] = json!({"save_card": "true"});
    let (status, resp) = app.post("/", &first).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["charge_id"], "ch_1", "{resp}");
    let token = resp["parameters"]["token_id"].as_str().unwrap().to_owned();
    let seen = stub.seen();
    assert_eq!(
        seen[0].body["cvv"], "123",
        "the caller's CVV goes on the first charge"
    );
    assert!(seen[0].body.get("initiator").is_none(), "{}", seen[0].body);
    assert!(seen[0].body.get("network_transaction_id").is_none());

    let stored: Option<String> =
        sqlx::query_scalar("SELECT network_transaction_id FROM vault_entries WHERE token = $1")
            .bind(&token)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(NTID));
    assert_eq!(
        token_view(&app, &token).await["has_network_transaction_id"],
        true
    );

    // A later charge of the token on the root endpoint, recurring.
    let twilio = token_connector(&app).await;
    let (status, resp) = app
        .post_as(&twilio, "/", &token_charge(&token, Some("recurring")))
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["charge_id"], "ch_2", "{resp}");
    let body = &stub.seen()[1].body;
    assert_eq!(body["initiator"], "merchant", "{body}");
    assert_eq!(body["stored_credential"], "recurring", "{body}");
    assert_eq!(body["network_transaction_id"], NTID, "{body}");
    assert!(
        body.get("cvv").is_none(),
        "no CVV on a token charge: {body}"
    );
    assert_eq!(body["cardnumber"], "4111111111111111");

    // The merchant API: unscheduled by default, recurring when asked.
    let charger = app
        .create_credential(
            "billing",
            CredentialKind::Api,
            Some(vec![Scope::TokensCharge]),
        )
        .await;
    for (field, expected) in [
        (None, "unscheduled"),
        (Some("unscheduled"), "unscheduled"),
        (Some("recurring"), "recurring"),
    ] {
        let mut req = json!({"amount": "5.00", "currency": "USD"});
        if let Some(f) = field {
            req["stored_credential"] = f.into();
        }
        let resp = app
            .client
            .post(app.url(&format!("/v1/tokens/{token}/charges")))
            .basic_auth(&charger.row.username, Some(charger.secret.expose()))
            .header("idempotency-key", new_txn())
            .body(req.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = stub.seen().last().unwrap().body.clone();
        assert_eq!(body["initiator"], "merchant", "{body}");
        assert_eq!(body["stored_credential"], expected, "{body}");
        assert_eq!(body["network_transaction_id"], NTID, "{body}");
        assert!(body.get("cvv").is_none(), "{body}");
    }
    // Set once: later charges returning the same (or another) id leave it as it was, and the
    // id appears in neither the audit log nor the logs.
    let in_audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE row_to_json(audit_events)::text LIKE '%' || $1 || '%'",
    )
    .bind(NTID)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(in_audit, 0);
    let logs = captured_logs();
    if let Some(i) = logs.find(NTID) {
        panic!(
            "the NTID was logged: {}",
            &logs[i.saturating_sub(400)..(i + 100).min(logs.len())]
        );
    }
}

#[tokio::test]
async fn an_invalid_stored_credential_is_refused_naming_the_field_only() {
    let stub = Stub::start(|n, _| approve_with_ntid(&format!("ch_{n}"))).await;
    let app = stub_app(&stub).await;
    let (_, resp) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let token = resp["token_id"].as_str().unwrap().to_owned();

    let twilio = token_connector(&app).await;
    let (_, resp) = app
        .post_as(
            &twilio,
            "/",
            &token_charge(&token, Some("installment-secret")),
        )
        .await;
    assert_eq!(resp["error_code"], "invalid_stored_credential", "{resp}");
    let message = resp["error_message"].as_str().unwrap();
    assert!(message.contains("stored_credential"), "{message}");
    assert!(!resp.to_string().contains("installment-secret"), "{resp}");

    let charger = app
        .create_credential(
            "billing",
            CredentialKind::Api,
            Some(vec![Scope::TokensCharge]),
        )
        .await;
    for bad in [json!("weekly-secret"), json!(42)] {
        let resp = app
            .client
            .post(app.url(&format!("/v1/tokens/{token}/charges")))
            .basic_auth(&charger.row.username, Some(charger.secret.expose()))
            .header("idempotency-key", new_txn())
            .body(
                json!({"amount": "5.00", "currency": "USD", "stored_credential": bad}).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_stored_credential", "{body}");
        assert!(!body.to_string().contains("weekly-secret"), "{body}");
    }
    assert_eq!(stub.calls(), 0, "nothing reached the processor");
}

// ---- the charge flow with a processor of our own: what it is asked, and how re-sends go ------

/// What a test processor saw of one call (never the card beyond what a test needs).
#[derive(Debug, Clone)]
struct Call {
    initiator: Initiator,
    had_cvv: bool,
    idempotency_key: String,
    timeout: Duration,
}

/// A processor that records each request and answers by script, declaring a strategy.
#[derive(Debug)]
struct Scripted {
    strategy: IdempotencyStrategy,
    calls: Mutex<Vec<Call>>,
    answer: fn(usize) -> (Duration, Result<ProcessorReply, ProcessorError>),
    /// What `lookup` / `reverse` answer (`None`: the trait's default), and how often they ran.
    lookup: Option<Lookup>,
    reversal: Option<Reversal>,
    recoveries: Mutex<usize>,
    /// The processor's name, and whether it takes a merchant-initiated charge without a network
    /// transaction id of its own.
    name: &'static str,
    without_ntid: bool,
    /// How long `lookup` takes.
    lookup_delay: Duration,
}

impl Scripted {
    fn new(
        strategy: IdempotencyStrategy,
        answer: fn(usize) -> (Duration, Result<ProcessorReply, ProcessorError>),
    ) -> Arc<Self> {
        Arc::new(Self {
            strategy,
            calls: Mutex::default(),
            answer,
            lookup: None,
            reversal: None,
            recoveries: Mutex::default(),
            name: "generic",
            without_ntid: true,
            lookup_delay: Duration::ZERO,
        })
    }
    fn recovering(
        strategy: IdempotencyStrategy,
        answer: fn(usize) -> (Duration, Result<ProcessorReply, ProcessorError>),
        lookup: Option<Lookup>,
        reversal: Option<Reversal>,
    ) -> Arc<Self> {
        Arc::new(Self {
            strategy,
            calls: Mutex::default(),
            answer,
            lookup,
            reversal,
            recoveries: Mutex::default(),
            name: "generic",
            without_ntid: true,
            lookup_delay: Duration::ZERO,
        })
    }
    fn named(
        name: &'static str,
        without_ntid: bool,
        answer: fn(usize) -> (Duration, Result<ProcessorReply, ProcessorError>),
    ) -> Arc<Self> {
        Arc::new(Self {
            strategy: IdempotencyStrategy::Header,
            calls: Mutex::default(),
            answer,
            lookup: None,
            reversal: None,
            recoveries: Mutex::default(),
            name,
            without_ntid,
            lookup_delay: Duration::ZERO,
        })
    }
    fn recoveries(&self) -> usize {
        *self.recoveries.lock().unwrap()
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn approved(id: &str, ntid: Option<&str>) -> Result<ProcessorReply, ProcessorError> {
    Ok(ProcessorReply {
        charge_id: Some(id.into()),
        error_code: None,
        error_message: None,
        parameters: Default::default(),
        network_transaction_id: ntid.map(str::to_owned),
    })
}

impl Processor for Scripted {
    fn charge<'a>(
        &'a self,
        req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<ProcessorReply, ProcessorError>> {
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Call {
                    initiator: req.initiator.clone(),
                    had_cvv: matches!(req.method, payvault::domain::PaymentMethod::Card(c) if c.cvv.is_some()),
                    idempotency_key: req.idempotency_key.to_owned(),
                    timeout: req.timeout,
                });
                calls.len()
            };
            let (delay, answer) = (self.answer)(n);
            if delay > req.timeout {
                tokio::time::sleep(req.timeout).await;
                return Err(ProcessorError::Timeout);
            }
            tokio::time::sleep(delay).await;
            answer
        })
    }

    fn resend_safety(&self) -> IdempotencyStrategy {
        self.strategy
    }

    fn name(&self) -> &str {
        self.name
    }

    fn merchant_initiated_without_network_transaction_id(&self) -> bool {
        self.without_ntid
    }

    fn lookup<'a>(
        &'a self,
        _req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Lookup, ProcessorError>> {
        *self.recoveries.lock().unwrap() += 1;
        let answer = self.lookup.clone().unwrap_or(Lookup::Unsupported);
        let delay = self.lookup_delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(answer)
        })
    }

    fn reverse<'a>(
        &'a self,
        _req: &'a ProcessorRequest<'a>,
    ) -> BoxFuture<'a, Result<Reversal, ProcessorError>> {
        *self.recoveries.lock().unwrap() += 1;
        let answer = self.reversal.unwrap_or(Reversal::Unsupported);
        Box::pin(async move { Ok(answer) })
    }
}

fn charger_for(app: &TestApp, processor: Arc<Scripted>, lease: Duration) -> Charger {
    Charger {
        vault: Vault::new(app.pool().clone(), app.keys.clone()),
        pool: app.pool().clone(),
        processor,
        tenant_processors: Default::default(),
        wait: Duration::from_secs(3),
        lease,
        heartbeat: lease / 5,
        processor_timeout: Duration::from_millis(300),
    }
}

fn principal(app: &TestApp) -> Principal {
    let row = &app.connector.row;
    Principal {
        id: row.id,
        tenant_id: row.tenant_id,
        username: row.username.clone(),
        name: row.name.clone(),
        kind: CredentialKind::Connector,
        scopes: vec![Scope::Connector],
    }
}

fn token_request(key: &str, token: &str, stored_credential: Option<&str>) -> ChargeRequest {
    let mut parameters = std::collections::BTreeMap::new();
    if let Some(kind) = stored_credential {
        parameters.insert("stored_credential".to_owned(), kind.to_owned());
    }
    ChargeRequest {
        key: key.to_owned(),
        source: Source::Token(Token::parse(token).unwrap()),
        amount: Amount::parse("12.34", "USD").unwrap(),
        save_card: false,
        token_expires_at: None,
        description: None,
        parameters,
    }
}

async fn tokenize(app: &TestApp) -> String {
    let (_, resp) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    resp["token_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_first_charge_of_a_tokenized_card_stores_the_ntid_and_later_ones_cite_it() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    let processor = Scripted::new(IdempotencyStrategy::Header, |n| {
        (Duration::ZERO, approved(&format!("ch_{n}"), Some(NTID)))
    });
    let charger = charger_for(&app, processor.clone(), Duration::from_secs(5));
    let who = principal(&app);
    let origin = Origin::default();

    let first = charger
        .charge(
            &who,
            &origin,
            &token_request(&new_txn(), &token, None),
            Instant::now(),
        )
        .await
        .unwrap();
    assert!(first.outcome.approved());
    for kind in ["recurring", "unscheduled"] {
        let charged = charger
            .charge(
                &who,
                &origin,
                &token_request(&new_txn(), &token, Some(kind)),
                Instant::now(),
            )
            .await
            .unwrap();
        assert!(charged.outcome.approved());
    }
    let calls = processor.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| !c.had_cvv),
        "never a CVV on a token charge"
    );
    assert_eq!(
        calls[0].initiator,
        Initiator::Merchant {
            network_transaction_id: None,
            recurring: false
        },
        "no id stored yet"
    );
    assert_eq!(
        calls[1].initiator,
        Initiator::Merchant {
            network_transaction_id: Some(NTID.into()),
            recurring: true
        }
    );
    assert_eq!(
        calls[2].initiator,
        Initiator::Merchant {
            network_transaction_id: Some(NTID.into()),
            recurring: false
        }
    );
    assert_eq!(
        token_view(&app, &token).await["has_network_transaction_id"],
        true
    );
}

fn payvault_charges_unknown(app: &TestApp) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["charges", "unknown", "--format", "json"])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("DATABASE_URL", app.db.url())
        .env("PAYVAULT_MASTER_KEY", crate::helpers::key_text(&app.keys))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn without_an_idempotency_key_an_unknown_outcome_is_never_re_sent_and_is_listed() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    // Declares `none`, and times out: the processor may or may not have charged.
    let processor = Scripted::new(IdempotencyStrategy::None, |_| {
        (Duration::from_secs(60), approved("ch_late", None))
    });
    let charger = charger_for(&app, processor.clone(), Duration::from_secs(5));
    let who = principal(&app);
    let key = new_txn();
    let req = token_request(&key, &token, None);

    let first = charger
        .charge(&who, &Origin::default(), &req, Instant::now())
        .await
        .unwrap();
    assert_eq!(
        first.outcome.error_code.as_deref(),
        Some("processor_timeout")
    );
    assert!(
        first
            .outcome
            .error_message
            .as_deref()
            .unwrap()
            .contains("held for reconciliation"),
        "{:?}",
        first.outcome
    );
    for _ in 0..2 {
        let retry = charger
            .charge(&who, &Origin::default(), &req, Instant::now())
            .await
            .unwrap();
        assert_eq!(
            retry.outcome.error_code.as_deref(),
            Some("processor_outcome_unknown"),
            "{:?}",
            retry.outcome
        );
        assert!(retry.outcome.charge_id.is_none());
    }
    assert_eq!(processor.calls().len(), 1, "the processor was called once");
    let state: String =
        sqlx::query_scalar("SELECT state FROM idempotency_records WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(state, "unknown");

    // A processor with a key it honours is re-sent, with the same key.
    let keyed = Scripted::new(IdempotencyStrategy::Header, |n| match n {
        1 => (Duration::from_secs(60), approved("ch_lost", None)),
        _ => (Duration::ZERO, approved("ch_2", None)),
    });
    let keyed_charger = charger_for(&app, keyed.clone(), Duration::from_secs(5));
    let keyed_req = token_request(&new_txn(), &token, None);
    let lost = keyed_charger
        .charge(&who, &Origin::default(), &keyed_req, Instant::now())
        .await
        .unwrap();
    assert_eq!(
        lost.outcome.error_code.as_deref(),
        Some("processor_timeout")
    );
    let resent = keyed_charger
        .charge(&who, &Origin::default(), &keyed_req, Instant::now())
        .await
        .unwrap();
    assert_eq!(resent.outcome.charge_id.as_deref(), Some("ch_2"));
    let calls = keyed.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].idempotency_key, calls[1].idempotency_key);

    // The operator's reconciliation list: the held charge, never card data.
    let listed = payvault_charges_unknown(&app);
    let rows: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(row["transaction_id"], key.as_str());
    assert_eq!(row["token"], token.as_str());
    assert_eq!(row["amount_minor"], 1234);
    assert_eq!(row["currency"], "USD");
    assert_eq!(row["processor_error"], "processor_timeout");
    assert!(row["first_attempt_at"].is_string(), "{row}");
    assert!(!listed.contains("4111111111111111"), "{listed}");
}

#[tokio::test]
async fn without_an_idempotency_key_an_abandoned_attempt_is_not_re_sent() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    // The first attempt hangs past its (short) lease without renewing it, as if its instance had
    // died (or lost the database), and then comes back.
    let processor = Scripted::new(IdempotencyStrategy::None, |_| {
        (Duration::from_millis(250), approved("ch_1", None))
    });
    let mut charger = charger_for(&app, processor.clone(), Duration::from_millis(50));
    charger.heartbeat = Duration::from_secs(60);
    let who = principal(&app);
    let req = Arc::new(token_request(&new_txn(), &token, None));
    let first = {
        let (charger, who, req) = (charger.clone(), who.clone(), req.clone());
        tokio::spawn(async move {
            charger
                .charge(&who, &Origin::default(), &req, Instant::now())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;
    let retry = charger
        .charge(&who, &Origin::default(), &req, Instant::now())
        .await
        .unwrap();
    assert_eq!(
        retry.outcome.error_code.as_deref(),
        Some("processor_outcome_unknown"),
        "{:?}",
        retry.outcome
    );
    // The abandoned attempt's late answer does not overwrite the unknown outcome.
    let _ = first.await.unwrap();
    assert_eq!(processor.calls().len(), 1);
    let listed = payvault_charges_unknown(&app);
    assert!(listed.contains("processor_attempt_abandoned"), "{listed}");
}

/// Times out on the first call, approves `ch_<n>` after.
fn lost_then_approved(n: usize) -> (Duration, Result<ProcessorReply, ProcessorError>) {
    match n {
        1 => (Duration::from_secs(60), approved("ch_lost", None)),
        n => (Duration::ZERO, approved(&format!("ch_{n}"), None)),
    }
}

#[tokio::test]
async fn lookup_and_reversal_decide_whether_an_unknown_outcome_is_re_sent() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    let who = principal(&app);
    // (strategy, lookup, reversal) -> (charge calls, retry's charge id or error code)
    let cases = [
        (
            IdempotencyStrategy::Lookup,
            Some(Lookup::Found(approved("ch_found", None).unwrap())),
            None,
            1,
            "ch_found",
        ),
        (
            IdempotencyStrategy::Lookup,
            Some(Lookup::NotFound),
            None,
            2,
            "ch_2",
        ),
        (
            IdempotencyStrategy::Lookup,
            None,
            None,
            1,
            "processor_outcome_unknown",
        ),
        (
            IdempotencyStrategy::Reversal,
            None,
            Some(Reversal::Reversed),
            2,
            "ch_2",
        ),
        (
            IdempotencyStrategy::Reversal,
            None,
            None,
            1,
            "processor_outcome_unknown",
        ),
    ];
    for (strategy, lookup, reversal, calls, answer) in cases {
        let processor = Scripted::recovering(strategy, lost_then_approved, lookup, reversal);
        let charger = charger_for(&app, processor.clone(), Duration::from_secs(5));
        let req = token_request(&new_txn(), &token, None);
        let first = charger
            .charge(&who, &Origin::default(), &req, Instant::now())
            .await
            .unwrap();
        assert_eq!(
            first.outcome.error_code.as_deref(),
            Some("processor_timeout")
        );
        let retry = charger
            .charge(&who, &Origin::default(), &req, Instant::now())
            .await
            .unwrap();
        let got = retry
            .outcome
            .charge_id
            .clone()
            .or(retry.outcome.error_code.clone())
            .unwrap();
        assert_eq!(got, answer, "{strategy:?}: {:?}", retry.outcome);
        assert_eq!(processor.calls().len(), calls, "{strategy:?}");
        assert_eq!(processor.recoveries(), 1, "{strategy:?}");
        if calls == 2 {
            let c = processor.calls();
            if strategy == IdempotencyStrategy::Reversal {
                // Each attempt has its own reference: undoing the first cannot touch the second.
                assert_eq!(c[1].idempotency_key, format!("{}-2", c[0].idempotency_key));
            } else {
                assert_eq!(c[0].idempotency_key, c[1].idempotency_key);
            }
        }
    }
}

fn approved_ntid_a(n: usize) -> (Duration, Result<ProcessorReply, ProcessorError>) {
    (
        Duration::ZERO,
        approved(&format!("ch_a{n}"), Some("NTID-A")),
    )
}

fn approved_ntid_b(n: usize) -> (Duration, Result<ProcessorReply, ProcessorError>) {
    (
        Duration::ZERO,
        approved(&format!("ch_b{n}"), Some("NTID-B")),
    )
}

async fn stored_ntid(app: &TestApp, token: &str) -> (Option<String>, Option<String>) {
    sqlx::query_as(
        "SELECT network_transaction_id, network_transaction_issuer FROM vault_entries WHERE token = $1",
    )
    .bind(token)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

/// A network transaction id is cited only to the processor that issued it: another processor
/// that needs its own refuses the charge before anything is sent, saying why; one that takes a
/// merchant-initiated charge without gets none, and its own id then replaces the first.
#[tokio::test]
async fn a_network_transaction_id_is_cited_only_to_the_processor_that_issued_it() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    let who = principal(&app);
    let charge = |processor: Arc<Scripted>| {
        let charger = charger_for(&app, processor, Duration::from_secs(5));
        let who = who.clone();
        let token = token.clone();
        async move {
            charger
                .charge(
                    &who,
                    &Origin::default(),
                    &token_request(&new_txn(), &token, Some("recurring")),
                    Instant::now(),
                )
                .await
        }
    };

    // Processor a's first charge stores its id, with a as the issuer; a's next one cites it.
    let a = Scripted::named("acme", false, approved_ntid_a);
    charge(a.clone()).await.unwrap_err(); // a needs an id of its own: none stored yet
    assert!(a.calls().is_empty());
    let a_lenient = Scripted::named("acme", true, approved_ntid_a);
    assert!(charge(a_lenient.clone()).await.unwrap().outcome.approved());
    assert_eq!(
        stored_ntid(&app, &token).await,
        (Some("NTID-A".into()), Some("acme".into()))
    );
    assert!(charge(a.clone()).await.unwrap().outcome.approved());
    assert_eq!(
        a.calls()[0].initiator,
        Initiator::Merchant {
            network_transaction_id: Some("NTID-A".into()),
            recurring: true
        }
    );

    // Processor b needs its own: refused, named, nothing sent.
    let b = Scripted::named("bank-b", false, approved_ntid_b);
    let err = charge(b.clone()).await.unwrap_err();
    assert_eq!(err.code(), "stored_credential_unavailable");
    let message = err.to_string();
    assert!(
        message.contains("processor acme") && message.contains("processor bank-b"),
        "{message}"
    );
    assert!(
        !message.contains("NTID-A"),
        "never the id itself: {message}"
    );
    assert!(b.calls().is_empty(), "nothing was sent");

    // A processor b that takes a merchant-initiated charge without gets none of a's...
    let b_lenient = Scripted::named("bank-b", true, approved_ntid_b);
    assert!(charge(b_lenient.clone()).await.unwrap().outcome.approved());
    assert_eq!(
        b_lenient.calls()[0].initiator,
        Initiator::Merchant {
            network_transaction_id: None,
            recurring: true
        },
        "a's id is never sent to b"
    );
    // ...and the id it returns replaces a's: b's next charge cites it, a's no longer can.
    assert_eq!(
        stored_ntid(&app, &token).await,
        (Some("NTID-B".into()), Some("bank-b".into()))
    );
    assert!(charge(b.clone()).await.unwrap().outcome.approved());
    assert_eq!(
        b.calls()[0].initiator,
        Initiator::Merchant {
            network_transaction_id: Some("NTID-B".into()),
            recurring: true
        }
    );
    assert_eq!(
        charge(a.clone()).await.unwrap_err().code(),
        "stored_credential_unavailable"
    );

    // An id stored before issuers were recorded is cited as it was before.
    sqlx::query("UPDATE vault_entries SET network_transaction_issuer = NULL WHERE token = $1")
        .bind(&token)
        .execute(app.pool())
        .await
        .unwrap();
    assert!(charge(a.clone()).await.unwrap().outcome.approved());
    assert_eq!(
        a.calls().last().unwrap().initiator,
        Initiator::Merchant {
            network_transaction_id: Some("NTID-B".into()),
            recurring: true
        }
    );
}

/// A lookup and the sale sent after it share the attempt's time: the attempt ends within its
/// lease, so no other instance can take over while one of its requests may still be on its way.
#[tokio::test]
async fn a_lookup_and_the_sale_after_it_share_the_attempts_time() {
    let app = spawn_app().await;
    let token = tokenize(&app).await;
    let who = principal(&app);
    let processor = Arc::new(Scripted {
        lookup_delay: Duration::from_millis(200),
        ..Arc::into_inner(Scripted::recovering(
            IdempotencyStrategy::Lookup,
            lost_then_approved,
            Some(Lookup::NotFound),
            None,
        ))
        .unwrap()
    });
    // The processor timeout is 300 ms.
    let charger = charger_for(&app, processor.clone(), Duration::from_secs(5));
    let req = token_request(&new_txn(), &token, None);
    let first = charger
        .charge(&who, &Origin::default(), &req, Instant::now())
        .await
        .unwrap();
    assert_eq!(
        first.outcome.error_code.as_deref(),
        Some("processor_timeout")
    );
    let retry = charger
        .charge(&who, &Origin::default(), &req, Instant::now())
        .await
        .unwrap();
    assert_eq!(retry.outcome.charge_id.as_deref(), Some("ch_2"));
    let calls = processor.calls();
    assert_eq!(calls[0].timeout, Duration::from_millis(300));
    assert!(
        calls[1].timeout <= Duration::from_millis(100),
        "the sale gets what the lookup left: {:?}",
        calls[1].timeout
    );
}

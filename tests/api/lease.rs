//! The lease of a charge attempt: renewed by heartbeat while its holder is alive, so a live
//! attempt is never taken over, and a dead one is taken over within seconds, in time for
//! Twilio's retry (10 s after its first request) to get the real outcome.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payvault::auth::{admin, CredentialKind};
use payvault::crypto::{KeyRing, MasterKey};
use serde_json::Value;

use crate::cli::{free_port, wait_until_serving, Child};
use crate::fakes::stripe::{self, SECRET_KEY};
use crate::fakes::Fault;
use crate::helpers::{
    card_charge, connector_post, new_txn, spawn_app_opts, test_keys, Options, Stub, StubAnswer,
    TestDb,
};

const PAN: &str = "4111111111111111";

/// Polls `done` every 20 ms until it holds, failing after `within`.
async fn poll_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `state`, `attempts` and whether the lease is still running, of the only charge record.
async fn charge_record(db: &TestDb) -> (String, i32, bool) {
    sqlx::query_as(
        "SELECT state, attempts, coalesce(lease_expires_at > now(), false) \
         FROM idempotency_records WHERE operation = 'charge'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_live_attempt_keeps_its_lease_past_its_length_and_a_retry_hears_in_progress() {
    let lease = Duration::from_millis(600);
    let slow = Duration::from_secs(3);
    // The first sale takes 3 s, five leases; any other call would be a second sale.
    let stub = Stub::start(move |n, _| match n {
        1 => StubAnswer::slow("ch_first", slow),
        _ => StubAnswer::approve("ch_second"),
    })
    .await;
    let wait = Duration::from_millis(400);
    let opts = Options {
        idempotency_wait: wait,
        charge_lease: Some((lease, Duration::from_millis(100))),
        ..Options::generic(&stub.url, Duration::from_secs(10))
    };
    let db = Arc::new(TestDb::new().await);
    let app = Arc::new(spawn_app_opts(db.clone(), test_keys(), opts).await);
    let body = card_charge(&new_txn(), PAN, "12.34");

    let first = {
        let (app, body) = (app.clone(), body.clone());
        tokio::spawn(async move { app.post("/", &body).await })
    };
    poll_until(
        Duration::from_secs(10),
        "the processor is called",
        || async { stub.calls() == 1 },
    )
    .await;
    // Twice the lease's length later (modelled time, not a wait for readiness), the attempt
    // still holds it: its heartbeat renewed it.
    tokio::time::sleep(2 * lease).await;
    let (state, attempts, running) = charge_record(&db).await;
    assert_eq!((state.as_str(), attempts), ("in_flight", 1));
    assert!(running, "the live attempt's lease was renewed");

    // Twilio's retry meanwhile waits no longer than the idempotency wait, and never re-sends.
    let asked = Instant::now();
    let (status, retry) = app.post("/", &body).await;
    let waited = asked.elapsed();
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["error_code"], "transaction_in_progress", "{retry}");
    assert_eq!(retry["charge_id"], Value::Null, "{retry}");
    assert!(
        waited >= wait && waited < slow,
        "answered after the wait, not after the call: {waited:?}"
    );
    assert_eq!(stub.calls(), 1, "the retry did not call the processor");

    let (_, answer) = first.await.unwrap();
    assert_eq!(answer["charge_id"], "ch_first", "{answer}");
    let (_, later) = app.post("/", &body).await;
    assert_eq!(later["charge_id"], "ch_first", "{later}");
    assert_eq!(stub.calls(), 1);
    let (state, _, running) = charge_record(&db).await;
    assert_eq!(state, "succeeded");
    assert!(!running, "a finished charge holds no lease");
}

/// `payvault serve` charging through the `stripe` profile at `fake`, with a short lease.
fn serve(db: &TestDb, master_key: &str, fake_url: &str, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["serve", "--no-migrate"])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("PAYVAULT_ENV", "development")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", master_key)
        .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYVAULT_PROCESSOR", "stripe")
        .env("PAYVAULT_PROCESSOR_URL", fake_url)
        .env("PAYVAULT_PROCESSOR_SECRET_KEY", SECRET_KEY)
        .env("PAYVAULT_CHARGE_LEASE_MS", "1500")
        .env("PAYVAULT_CHARGE_HEARTBEAT_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Child(child)
}

#[tokio::test]
async fn twilios_retry_on_a_survivor_gets_the_charge_of_an_instance_killed_mid_call() {
    let db = TestDb::new().await;
    let master_key = MasterKey::generate(1).encode();
    let signer = crate::helpers::signer_for(&Arc::new(KeyRing::parse(&master_key).unwrap()));
    let twilio =
        admin::create_credential(&db.pool, &signer, "twilio", CredentialKind::Connector, None)
            .await
            .unwrap();
    let credentials = (twilio.row.username.as_str(), twilio.secret.expose());
    let fake = stripe::start().await;
    // Stripe executes the first sale, then its answer is held: the instance waiting for it dies
    // after the card was charged.
    fake.fault_next(Fault::Delay(Duration::from_secs(60)));
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = serve(&db, &master_key, &fake.base_url, port_a);
    let _b = serve(&db, &master_key, &fake.base_url, port_b);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    wait_until_serving(&base_a).await;
    wait_until_serving(&base_b).await;

    let body = card_charge(&new_txn(), PAN, "12.34");
    let first = {
        let (base, body) = (base_a.clone(), body.clone());
        let (user, secret) = (credentials.0.to_owned(), credentials.1.to_owned());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/"))
                .basic_auth(user, Some(secret))
                .body(body.to_string())
                .send()
                .await
        })
    };
    poll_until(
        Duration::from_secs(10),
        "Stripe executes the sale",
        || async { fake.sales_executed() == 1 },
    )
    .await;
    let (state, attempts, running) = charge_record(&db).await;
    assert_eq!((state.as_str(), attempts, running), ("in_flight", 1, true));

    // SIGKILL: no shutdown, no outcome recorded, no more heartbeats.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    assert!(
        first.await.unwrap().is_err(),
        "the first request got no answer"
    );

    // Twilio's retry (sent at once: with the short lease it need not wait 10 s to find the
    // lease lapsed) waits on the dead attempt's lease, takes over when it expires and re-sends
    // under the same idempotency key; Stripe replays the first sale's answer.
    let asked = Instant::now();
    let retry = connector_post(&base_b, credentials, &body).await;
    let waited = asked.elapsed();
    let record = fake.record();
    assert_eq!(
        record.sales.len(),
        1,
        "one sale executed: {:?}",
        record.sales
    );
    assert_eq!(retry["error_code"], Value::Null, "{retry}");
    assert_eq!(retry["charge_id"], record.sales[0].id.as_str(), "{retry}");
    assert!(
        waited < Duration::from_secs(9),
        "answered within Twilio's budget: {waited:?}"
    );
    let keys = &record.idempotency_keys;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the processor saw one idempotency key");
    assert_eq!(record.replays, 1, "the re-send was answered from the key");
    let (state, attempts, _) = charge_record(&db).await;
    assert_eq!((state.as_str(), attempts), ("succeeded", 2));
}

#[test]
fn serve_refuses_a_heartbeat_not_shorter_than_the_lease() {
    let out = Command::new(env!("CARGO_BIN_EXE_payvault"))
        .arg("serve")
        // Never reached: configuration is checked before any connection.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env_remove("DATABASE_URL_FILE")
        .env("PAYVAULT_ENV", "development")
        .env("PAYVAULT_LISTEN", "127.0.0.1:0")
        .env(
            "PAYVAULT_MASTER_KEY",
            MasterKey::generate(1).encode().as_str(),
        )
        .env("PAYVAULT_CHARGE_LEASE_MS", "2000")
        .env("PAYVAULT_CHARGE_HEARTBEAT_MS", "2000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PAYVAULT_CHARGE_HEARTBEAT_MS")
            && err.contains("shorter than PAYVAULT_CHARGE_LEASE_MS (2000 ms)"),
        "{err}"
    );
}

/// `lease_expires_at` of the only charge record, as seconds from now (`None` when cleared).
async fn lease_left(db: &TestDb) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_expires_at - now())::float8 \
         FROM idempotency_records WHERE operation = 'charge'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_heartbeat_renews_only_the_attempt_that_holds_the_charge() {
    use payvault::store::audit::AuditBatch;
    use payvault::store::charges::{
        claim_new_charge, finish_charge, renew_charge_lease, take_over_charge, ChargeState,
        FinishedCharge, NewCharge, TakeOver,
    };
    let db = TestDb::new().await;
    let signer = crate::helpers::signer_for(&crate::helpers::test_keys());
    let who =
        admin::create_credential(&db.pool, &signer, "twilio", CredentialKind::Connector, None)
            .await
            .unwrap()
            .row
            .id;
    let key = new_txn();
    let none = AuditBatch::new(&signer, &[]).unwrap();
    let lease = Duration::from_secs(60);
    let claim = NewCharge {
        credential_id: who,
        tenant_id: payvault::domain::DEFAULT_TENANT,
        key: &key,
        request_mac: &[0; 32],
        mac_key_version: 1,
        processor_key: "pv_test",
        lease: Duration::from_secs(1),
    };
    assert!(claim_new_charge(&db.pool, &claim, &none).await.unwrap());
    let renew = |attempt| renew_charge_lease(&db.pool, who, &key, attempt, lease);
    assert!(renew(1).await.unwrap());
    assert!(lease_left(&db).await.unwrap() > 50.0, "renewed for a lease");
    let lapse = || async {
        sqlx::query("UPDATE idempotency_records SET lease_expires_at = now() - interval '1 s'")
            .execute(&db.pool)
            .await
            .unwrap();
    };
    // A late beat of a live attempt nobody has taken over yet renews it.
    lapse().await;
    assert!(renew(1).await.unwrap());
    assert!(lease_left(&db).await.unwrap() > 50.0);

    // Once a retry took it over, the first attempt's beats no longer extend anything.
    lapse().await;
    let take = TakeOver {
        credential_id: who,
        key: &key,
        seen_attempts: 1,
        lease,
    };
    assert_eq!(
        take_over_charge(&db.pool, &take, &none).await.unwrap(),
        Some(2)
    );
    let before = lease_left(&db).await.unwrap();
    assert!(!renew(1).await.unwrap(), "attempt 1 lost the charge");
    assert!(lease_left(&db).await.unwrap() <= before);
    assert!(renew(2).await.unwrap());

    // A finished charge has no lease to renew.
    let outcome = serde_json::json!({"charge_id": "ch_1"});
    let finish = FinishedCharge {
        credential_id: who,
        key: &key,
        attempt: 2,
        state: ChargeState::Succeeded,
        outcome: &outcome,
        token: None,
    };
    assert!(finish_charge(&db.pool, &finish, &none).await.unwrap());
    assert!(!renew(2).await.unwrap());
    assert_eq!(lease_left(&db).await, None);
}

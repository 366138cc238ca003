//! The audit log: complete coverage, tamper evidence, queries and retention.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{
    self, card_charge, card_tokenize, new_txn, spawn_app, spawn_app_with, test_keys, TestApp,
    TestDb,
};
use payvault::audit::seal::{self, Checkpoint};
use payvault::auth::{CredentialKind, Scope};
use serde_json::{json, Value};

/// Waits until every audit event is sealed (the servers' sealers run every 50 ms).
async fn sealed(app: &TestApp) {
    helpers::seal_all(app.pool(), &app.keys).await;
}

async fn verify(app: &TestApp, checkpoint: Option<&Checkpoint>) -> seal::Report {
    seal::verify(app.pool(), &app.keys, checkpoint, helpers::MAX_UNSEALED)
        .await
        .unwrap()
}

/// Runs `sql` as a database administrator would, with the append-only triggers bypassed.
async fn as_dba(app: &TestApp, sql: &str) {
    let mut tx = app.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// A log with a few dozen varied events, all sealed.
async fn busy_log() -> TestApp {
    let app = spawn_app().await;
    for i in 0..6 {
        app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
            .await;
        app.post(
            "/",
            &card_charge(
                &new_txn(),
                "5555555555554444",
                if i % 2 == 0 { "10.00" } else { "10.02" },
            ),
        )
        .await;
    }
    sealed(&app).await;
    let report = verify(&app, None).await;
    assert!(report.problem.is_none(), "{report}");
    assert!(report.verified >= 18, "{report}");
    app
}

async fn seq_of_event(app: &TestApp, nth: i64) -> (i64, i64) {
    sqlx::query_as("SELECT seq, event_id FROM audit_seals ORDER BY seq OFFSET $1 LIMIT 1")
        .bind(nth)
        .fetch_one(app.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let app = busy_log().await;
    let report = verify(&app, None).await;
    let text = report.to_string();
    assert!(
        text.contains("events verified, chain intact up to event"),
        "{text}"
    );
    assert_eq!(report.pending, 0);
}

#[tokio::test]
async fn a_modified_field_is_found_at_its_event() {
    let app = busy_log().await;
    let (seq, id) = seq_of_event(&app, 5).await;
    as_dba(
        &app,
        &format!("UPDATE audit_events SET outcome = 'failure', error_code = 'x' WHERE id = {id}"),
    )
    .await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!((p.seq, p.event_id), (Some(seq), Some(id)), "{}", p.what);
    assert!(p.what.contains("modified"), "{}", p.what);
    // Even a change inside the JSON details.
    let app = busy_log().await;
    let (seq, id) = seq_of_event(&app, 2).await;
    as_dba(
        &app,
        &format!(r#"UPDATE audit_events SET details = details || '{{"x":1}}' WHERE id = {id}"#),
    )
    .await;
    assert_eq!(verify(&app, None).await.problem.unwrap().seq, Some(seq));
}

#[tokio::test]
async fn a_deleted_middle_row_is_found() {
    let app = busy_log().await;
    let (seq, id) = seq_of_event(&app, 7).await;
    as_dba(&app, &format!("DELETE FROM audit_events WHERE id = {id}")).await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!((p.seq, p.event_id), (Some(seq), Some(id)));
    assert!(p.what.contains("deleted"), "{}", p.what);
    // Deleting the seal too leaves a gap in the chain.
    as_dba(&app, &format!("DELETE FROM audit_seals WHERE seq = {seq}")).await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!(p.seq, Some(seq), "{}", p.what);
    assert!(p.what.contains("were deleted"), "{}", p.what);
}

#[tokio::test]
async fn deleting_the_newest_rows_is_caught_by_a_checkpoint() {
    let app = busy_log().await;
    let checkpoint = seal::checkpoint(app.pool()).await.unwrap().unwrap();
    assert!(verify(&app, Some(&checkpoint)).await.problem.is_none());
    let (seq, _) = seq_of_event(&app, 10).await;
    as_dba(
        &app,
        &format!("DELETE FROM audit_events WHERE id IN (SELECT event_id FROM audit_seals WHERE seq >= {seq}); DELETE FROM audit_seals WHERE seq >= {seq};"),
    )
    .await;
    // The shorter chain is internally consistent...
    assert!(verify(&app, None).await.problem.is_none());
    // ...but not against the checkpoint kept off-box.
    let p = verify(&app, Some(&checkpoint)).await.problem.unwrap();
    assert_eq!(p.seq, Some(checkpoint.seq));
    assert!(p.what.contains("newest events were deleted"), "{}", p.what);
}

#[tokio::test]
async fn an_inserted_row_is_found() {
    let app = busy_log().await;
    // A forged event inside the sealed history, with a forged seal: the chain breaks there.
    let (seq, _) = seq_of_event(&app, 4).await;
    as_dba(
        &app,
        &format!(
            "INSERT INTO audit_events (actor_kind, action, outcome, occurred_at) OVERRIDING SYSTEM VALUE
               SELECT 'connector', 'tokenize', 'success', occurred_at FROM audit_events ORDER BY id LIMIT 1;
             DELETE FROM audit_unsealed;
             UPDATE audit_seals SET seq = seq + 1000000 WHERE seq > {seq};
             UPDATE audit_seals SET seq = seq - 1000000 + 1 WHERE seq > 1000000;
             INSERT INTO audit_seals (seq, event_id, key_version, mac)
               SELECT {seq} + 1, max(id), 1, sha256('forged') FROM audit_events;"
        ),
    )
    .await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!(p.seq, Some(seq + 1), "{}", p.what);

    // A backdated event with no seal at all is reported too.
    let app = busy_log().await;
    as_dba(
        &app,
        "INSERT INTO audit_events (actor_kind, action, outcome, occurred_at)
           VALUES ('connector', 'charge', 'success', now() - interval '1 day');
         DELETE FROM audit_unsealed;",
    )
    .await;
    let p = verify(&app, None).await.problem.unwrap();
    assert!(
        p.what.contains("inserted into the sealed history"),
        "{}",
        p.what
    );
}

#[tokio::test]
async fn swapped_rows_are_found() {
    let app = busy_log().await;
    let (seq_a, id_a) = seq_of_event(&app, 3).await;
    let (_, id_b) = seq_of_event(&app, 4).await;
    as_dba(
        &app,
        &format!(
            "UPDATE audit_seals SET event_id = -1 WHERE event_id = {id_a};
             UPDATE audit_seals SET event_id = {id_a} WHERE event_id = {id_b};
             UPDATE audit_seals SET event_id = {id_b} WHERE event_id = -1;"
        ),
    )
    .await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!(p.seq, Some(seq_a), "{}", p.what);
}

#[tokio::test]
async fn a_chain_recomputed_with_a_plain_hash_is_found() {
    let app = busy_log().await;
    let (seq, id) = seq_of_event(&app, 6).await;
    // The attacker edits an event and re-computes every later link with SHA-256, as they would
    // for an unkeyed hash chain.
    as_dba(
        &app,
        &format!(
            "UPDATE audit_events SET masked_data = 'visa 411111******0000' WHERE id = {id};
             UPDATE audit_seals s SET mac = sha256(s.mac || convert_to(e::text, 'UTF8'))
               FROM audit_events e WHERE e.id = s.event_id AND s.seq >= {seq};"
        ),
    )
    .await;
    let p = verify(&app, None).await.problem.unwrap();
    assert_eq!((p.seq, p.event_id), (Some(seq), Some(id)));
}

#[tokio::test]
async fn the_seal_tables_refuse_update_and_delete() {
    let app = busy_log().await;
    for sql in [
        "UPDATE audit_seals SET mac = ''",
        "DELETE FROM audit_seals",
        "TRUNCATE audit_seals",
    ] {
        let err = sqlx::query(sql).execute(app.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn two_instances_writing_at_once_produce_a_log_that_verifies() {
    let db = Arc::new(TestDb::new().await);
    let keys = test_keys();
    let a = spawn_app_with(db.clone(), keys.clone()).await;
    let b = spawn_app_with(db.clone(), keys.clone()).await;
    let bodies: Vec<Value> = (0..40)
        .map(|i| {
            if i % 3 == 0 {
                card_charge(&new_txn(), "4111111111111111", "3.00")
            } else {
                card_tokenize(&new_txn(), "4111111111111111")
            }
        })
        .collect();
    let requests = bodies.iter().enumerate().map(|(i, body)| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post_as(&a.connector, "/", body)
    });
    helpers::join_all(requests).await;
    sealed(&a).await;
    let report = verify(&a, None).await;
    assert!(report.problem.is_none(), "{report}");
    let events = a.count("SELECT count(*) FROM audit_events").await;
    assert_eq!(
        report.verified as i64, events,
        "every event is sealed exactly once"
    );
}

#[derive(sqlx::FromRow, Debug)]
struct Ev {
    actor_id: Option<uuid::Uuid>,
    actor_kind: String,
    action: String,
    outcome: String,
    error_code: Option<String>,
    client_addr: Option<String>,
    request_id: Option<String>,
    token: Option<String>,
    transaction_id: Option<String>,
    masked_data: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
}

async fn events_of(app: &TestApp, request_id: &str) -> Vec<Ev> {
    sqlx::query_as(
        "SELECT actor_id, actor_kind, action, outcome, error_code, client_addr, request_id, token,
                transaction_id, masked_data, amount_minor, currency
         FROM audit_events WHERE request_id = $1 ORDER BY id",
    )
    .bind(request_id)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

async fn post_id(
    app: &TestApp,
    cred: Option<&payvault::auth::admin::CreatedCredential>,
    body: &Value,
) -> (String, Value) {
    let cred = cred.unwrap_or(&app.connector);
    let resp = app
        .client
        .post(app.url("/"))
        .basic_auth(&cred.row.username, Some(cred.secret.expose()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    (id, resp.json().await.unwrap())
}

#[tokio::test]
async fn each_action_produces_exactly_its_events_with_the_required_fields() {
    let app = spawn_app().await;
    let who = Some(app.connector.row.id);

    // Tokenize: one event.
    let txn = new_txn();
    let (rid, body) = post_id(&app, None, &card_tokenize(&txn, "4111111111111111")).await;
    let token = body["token_id"].as_str().unwrap().to_owned();
    let ev = events_of(&app, &rid).await;
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    assert_eq!(
        (
            e.action.as_str(),
            e.outcome.as_str(),
            e.actor_id,
            e.actor_kind.as_str()
        ),
        ("tokenize", "success", who, "connector")
    );
    assert_eq!(
        (e.token.as_deref(), e.transaction_id.as_deref()),
        (Some(token.as_str()), Some(txn.as_str()))
    );
    assert_eq!(
        (e.client_addr.as_deref(), e.request_id.as_deref()),
        (Some("127.0.0.1"), Some(rid.as_str()))
    );
    assert_eq!(e.masked_data.as_deref(), Some("visa 411111******1111"));

    // Charge with card data: the attempt and the outcome, with amount and currency.
    let (rid, _) = post_id(
        &app,
        None,
        &card_charge(&new_txn(), "4111111111111111", "12.34"),
    )
    .await;
    let ev = events_of(&app, &rid).await;
    let actions: Vec<&str> = ev.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["charge_attempt", "charge"]);
    assert!(ev
        .iter()
        .all(|e| e.amount_minor == Some(1234) && e.currency.as_deref() == Some("USD")));

    // A declined charge: failure with the processor's code.
    let (rid, _) = post_id(
        &app,
        None,
        &card_charge(&new_txn(), "4111111111111111", "12.02"),
    )
    .await;
    let ev = events_of(&app, &rid).await;
    assert_eq!(
        (ev[1].outcome.as_str(), ev[1].error_code.as_deref()),
        ("failure", Some("card_declined"))
    );

    // Charge of a stored token: resolution, attempt, outcome.
    let backend = app
        .create_credential(
            "backend",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;
    let by_token = json!({"method": "charge", "transaction_id": new_txn(), "token": token, "amount": "1", "currency_code": "USD"});
    let (rid, _) = post_id(&app, Some(&backend), &by_token).await;
    let actions: Vec<String> = events_of(&app, &rid)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token_resolve", "charge_attempt", "charge"]);

    // Failed authentication: one anonymous failure.
    let before = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'authenticate'")
        .await;
    app.client
        .post(app.url("/"))
        .basic_auth("pvc_00000000000000000000", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM audit_events WHERE action = 'authenticate' AND outcome = 'failure'").await, before + 1);

    // Credential create and revoke.
    let creates = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'credential_create'")
        .await;
    assert_eq!(creates, 2, "the harness's connector and `backend`");
    payvault::auth::admin::revoke_credential(app.pool(), &app.signer, "backend")
        .await
        .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM audit_events WHERE action = 'credential_revoke' AND actor_kind = 'operator'").await, 1);

    // Reading the audit log.
    let auditor = app
        .create_credential("auditor", CredentialKind::Api, Some(vec![Scope::AuditRead]))
        .await;
    let resp = app
        .client
        .get(app.url("/v1/audit/events?action=tokenize"))
        .basic_auth(&auditor.row.username, Some(auditor.secret.expose()))
        .send()
        .await
        .unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let ev = events_of(&app, &rid).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].action.as_str(), ev[0].actor_id),
        ("audit_read", Some(auditor.row.id))
    );
}

#[tokio::test]
async fn a_charge_whose_audit_event_cannot_be_written_does_not_reach_the_processor() {
    let stub = helpers::Stub::start(|_, _| helpers::StubAnswer::approve("ch_1")).await;
    let app = helpers::spawn_app_opts(
        Arc::new(TestDb::new().await),
        test_keys(),
        helpers::Options::generic(&stub.url, Duration::from_secs(2)),
    )
    .await;
    sqlx::raw_sql(
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$;
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION fail_audit();",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let (_, body) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "1.00"))
        .await;
    assert_eq!(body["error_code"], "internal_error");
    assert_eq!(stub.calls(), 0, "no audit event, no charge");
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_records").await,
        0
    );
}

#[tokio::test]
async fn the_audit_api_filters_paginates_and_needs_its_scope() {
    let app = spawn_app().await;
    let txn = new_txn();
    for _ in 0..5 {
        app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
            .await;
    }
    app.post("/", &card_charge(&txn, "4111111111111111", "10.02"))
        .await;
    let auditor = app
        .create_credential("auditor", CredentialKind::Api, Some(vec![Scope::AuditRead]))
        .await;
    let get = |q: String, cred: &payvault::auth::admin::CreatedCredential| {
        let req = app
            .client
            .get(app.url(&format!("/v1/audit/events{q}")))
            .basic_auth(&cred.row.username, Some(cred.secret.expose()));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, page1) = get("?action=tokenize&limit=3".into(), &auditor).await;
    assert_eq!(s, 200);
    assert_eq!(page1["events"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = get(
        format!("?action=tokenize&limit=3&cursor={cursor}"),
        &auditor,
    )
    .await;
    assert_eq!(page2["events"].as_array().unwrap().len(), 2);
    assert_eq!(page2["next_cursor"], Value::Null);
    let ids: Vec<i64> = page1["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["events"].as_array().unwrap())
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "stable id order: {ids:?}"
    );

    let (_, failed) = get(format!("?transaction_id={txn}&outcome=failure"), &auditor).await;
    let events = failed["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["action"].as_str(),
            events[0]["error_code"].as_str()
        ),
        (Some("charge"), Some("card_declined"))
    );
    assert_eq!(events[0]["masked_data"], "visa 411111******1111");
    let (_, by_actor) = get(
        format!(
            "?actor={}&action=charge_attempt",
            app.connector.row.username
        ),
        &auditor,
    )
    .await;
    assert_eq!(by_actor["events"].as_array().unwrap().len(), 1);
    let (_, future) = get("?since=2999-01-01".into(), &auditor).await;
    assert_eq!(future["events"].as_array().unwrap().len(), 0);
    let (s, bad) = get("?since=yesterday".into(), &auditor).await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // Scope: the connector credential may not read the audit log; nobody may without credentials.
    let (s, body) = get(String::new(), &app.connector).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let r = app
        .client
        .get(app.url("/v1/audit/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn pruning_old_events_leaves_a_verifiable_chain() {
    // Two years of history, sealed before the service (and this test's credential) arrived.
    let db = Arc::new(TestDb::new().await);
    let keys = test_keys();
    sqlx::raw_sql(
        "INSERT INTO audit_events (actor_kind, action, outcome, occurred_at)
         SELECT 'connector', 'tokenize', 'success', now() - interval '800 days' + g * interval '1 day'
         FROM generate_series(1, 50) g;
         -- Written before events carried their own MAC: the seal chain alone covers them.
         UPDATE audit_mac_epoch SET first_id = (SELECT max(id) + 1 FROM audit_events);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    seal::seal_pending(&db.pool, &keys).await.unwrap();
    let app = spawn_app_with(db, keys).await;
    for _ in 0..3 {
        app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
            .await;
    }
    sealed(&app).await;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(400);
    let deleted = seal::prune(app.pool(), &app.keys, cutoff).await.unwrap();
    assert_eq!(deleted, 50, "the events older than the cutoff");
    assert_eq!(app.count("SELECT count(*) FROM audit_anchors").await, 1);
    sealed(&app).await;
    let report = verify(&app, None).await;
    assert!(report.problem.is_none(), "{report}");
    // Deleting the next chain prefix without the key (no valid anchor) is caught.
    let (seq, _) = seq_of_event(&app, 2).await;
    as_dba(&app, &format!("DELETE FROM audit_seals WHERE seq <= {seq}")).await;
    let p = verify(&app, None).await.problem.unwrap();
    assert!(
        p.what.contains("without a valid prune anchor"),
        "{}",
        p.what
    );
}

#[tokio::test]
async fn a_flood_of_bad_logins_is_rate_limited_but_counted() {
    let app =
        crate::abuse::app_with(|c| c.auth_failure_audit_interval = Duration::from_secs(1)).await;
    let bad = || {
        // No credentials at all: refused without an Argon2 verification, so the flood is fast.
        app.client.post(app.url("/")).send()
    };
    let flood = helpers::join_all((0..60).map(|_| bad())).await;
    assert!(flood.iter().all(|r| r.as_ref().unwrap().status() == 401));
    // The source's first failure is an event of its own, the other 59 one aggregate at the end
    // of the interval (`auth::failures`): every failure counted, not every one a row.
    crate::abuse::wait_for_audited_failures(&app, "127.0.0.1", 60).await;
    let rows = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'authenticate'")
        .await;
    assert!(rows < 60, "{rows} rows");
}

#[tokio::test]
async fn the_forwarded_address_is_recorded_only_behind_a_trusted_proxy() {
    // The harness trusts 127.0.0.2 as a proxy.
    let app = spawn_app().await;
    let send = |from: &str| {
        let client = reqwest::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let req = client
            .post(app.url("/"))
            .basic_auth(
                &app.connector.row.username,
                Some(app.connector.secret.expose()),
            )
            .header("x-forwarded-for", "198.51.100.7, 203.0.113.9")
            .body(card_tokenize(&new_txn(), "4111111111111111").to_string());
        async move {
            req.send().await.unwrap().headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let pool = app.pool().clone();
    let row = |rid: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, Option<String>)>(
                "SELECT client_addr, forwarded_for FROM audit_events WHERE request_id = $1",
            )
            .bind(rid)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let direct = row(send("127.0.0.1").await).await;
    assert_eq!(
        direct,
        (Some("127.0.0.1".into()), None),
        "an untrusted peer's header is ignored"
    );
    let proxied = row(send("127.0.0.2").await).await;
    assert_eq!(
        proxied,
        (Some("127.0.0.2".into()), Some("203.0.113.9".into())),
        "the right-most untrusted hop"
    );
}

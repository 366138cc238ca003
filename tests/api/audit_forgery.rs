//! Issue 14, items 1 and 2: events authenticated at the source, and sealing that cannot stop
//! unnoticed. Each attack runs as a database superuser with the triggers bypassed
//! (`session_replication_role = replica`), and `verify` must fail naming the place. Attacks on
//! the sealed chain alone (a modified, deleted, inserted or reordered sealed event, a truncated
//! tail, a reset chain) are in `audit` and `audit_checkpoint`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{self, card_tokenize, new_txn, spawn_app_opts, test_keys, Options, TestDb};
use payvault::audit::seal::{self, Report};
use payvault::audit::AuditEvent;
use payvault::crypto::KeyRing;
use payvault::store::audit::{insert_audit_event, AuditBatch};
use payvault::store::audit_mac::EventSigner;
use serde_json::{json, Value};

/// A database with events written by payvault's writer, nothing sealed yet (no server runs):
/// the window in which only the events' own MACs protect them.
struct Log {
    db: TestDb,
    key: String,
    keys: Arc<KeyRing>,
    signer: EventSigner,
}

impl Log {
    async fn new() -> Self {
        let key = payvault::crypto::MasterKey::generate(1)
            .encode()
            .as_str()
            .to_owned();
        let keys = Arc::new(KeyRing::parse(&key).unwrap());
        Self {
            db: TestDb::new().await,
            signer: EventSigner::new(keys.clone()),
            key,
            keys,
        }
    }

    /// `payvault audit verify` as an operator runs it: its exit code and output.
    fn cli_verify(&self) -> (Option<i32>, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_payvault"))
            .args(["audit", "verify"])
            .env_remove("DATABASE_URL_FILE")
            .env_remove("PAYVAULT_MASTER_KEY_FILE")
            .env("DATABASE_URL", self.db.url())
            .env("PAYVAULT_MASTER_KEY", &self.key)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Writes an event with every optional column set; returns its id.
    async fn write(&self, action: &'static str) -> i64 {
        let mut event = AuditEvent::system(action, json!({ "n": 1, "nested": { "b": [1, 2.5] } }));
        event.request_id = Some("req-1".into());
        event.actor_id = Some(uuid::Uuid::new_v4());
        event.error_code = Some("card_declined".into());
        event.client_addr = Some("192.0.2.1".into());
        event.forwarded_for = Some("198.51.100.7".into());
        event.token = Some("tok_abc".into());
        event.transaction_id = Some("txn-1".into());
        event.masked_data = Some("visa 411111******1111".into());
        event.amount_minor = Some(1002);
        event.currency = Some("USD".into());
        insert_audit_event(&self.db.pool, &self.signer, &event)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT max(id) FROM audit_events")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn as_dba(&self, sql: &str) {
        sqlx::raw_sql(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; {sql} COMMIT;"
        ))
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    async fn verify(&self) -> Report {
        seal::verify(&self.db.pool, &self.keys, None, helpers::MAX_UNSEALED)
            .await
            .unwrap()
    }

    async fn seal(&self) -> u64 {
        seal::seal_pending(&self.db.pool, &self.keys).await.unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// Asserts `report` fails and one of its findings names `event_id` and says `what`.
fn names(report: &Report, event_id: i64, what: &str) {
    assert!(!report.intact(), "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.event_id == Some(event_id) && f.what.contains(what)),
        "no finding about event {event_id} saying `{what}`:\n{report}"
    );
}

#[tokio::test]
async fn untouched_events_verify_sealed_or_not_and_details_survive_jsonb() {
    let log = Log::new().await;
    for action in ["first", "second", "third"] {
        log.write(action).await;
    }
    let report = log.verify().await;
    assert!(report.intact(), "{report}");
    assert_eq!(report.pending, 3);
    assert_eq!(log.seal().await, 3);
    let report = log.verify().await;
    assert!(report.intact(), "{report}");
    assert_eq!(report.verified, 3);
}

#[tokio::test]
async fn a_forged_insert_fresh_backdated_or_copied_is_named() {
    let log = Log::new().await;
    let real = log.write("real").await;
    log.seal().await;
    // Fresh, with no MAC at all.
    log.as_dba(
        "INSERT INTO audit_events (actor_kind, action, outcome) VALUES ('operator', 'credential_create', 'success');",
    )
    .await;
    let fresh = log.count("SELECT max(id) FROM audit_events").await;
    // Backdated, with writer columns and a made-up MAC.
    log.as_dba(&format!(
        "INSERT INTO audit_events (actor_kind, action, outcome, occurred_at, writer_id, writer_seq, mac_key_version, mac)
         SELECT 'connector', 'charge', 'success', occurred_at - interval '1 day', gen_random_uuid(), 1, 1, sha256('forged')
         FROM audit_events WHERE id = {real};"
    ))
    .await;
    let backdated = log.count("SELECT max(id) FROM audit_events").await;
    // A copy of the real event under a new id is refused as a duplicate of its writer's
    // counter value...
    let copy = format!(
        "INSERT INTO audit_events (occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code,
            client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details,
            writer_id, writer_seq, mac_key_version, mac)
         SELECT occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code, client_addr,
            forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details,
            writer_id, writer_seq + {{bump}}, mac_key_version, mac
         FROM audit_events WHERE id = {real}"
    );
    let refused = sqlx::raw_sql(&copy.replace("{bump}", "0"))
        .execute(&log.db.pool)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("audit_events_writer_key"),
        "{refused}"
    );
    // ...and with another counter value, its MAC no longer verifies.
    log.as_dba(&format!("{};", copy.replace("{bump}", "1000")))
        .await;
    let copied = log.count("SELECT max(id) FROM audit_events").await;

    let report = log.verify().await;
    names(&report, fresh, "has no MAC");
    names(&report, backdated, "does not verify");
    names(&report, copied, "does not verify");
    let (code, text) = log.cli_verify();
    assert_eq!(code, Some(1), "{text}");
    for id in [fresh, backdated, copied] {
        assert!(text.contains(&format!("event {id} ")), "{text}");
    }
}

#[tokio::test]
async fn an_edit_of_any_column_of_an_unsealed_event_is_named() {
    let log = Log::new().await;
    let edits = [
        "occurred_at = occurred_at - interval '1 second'",
        "request_id = 'req-2'",
        "actor_id = gen_random_uuid()",
        "actor_kind = 'api'",
        "action = 'token_delete'",
        // (a check constraint ties the two together)
        "outcome = 'success', error_code = NULL",
        "error_code = 'expired_card'",
        "client_addr = '192.0.2.2'",
        "forwarded_for = NULL",
        "token = 'tok_other'",
        "transaction_id = 'txn-2'",
        "masked_data = 'visa 411111******0000'",
        "amount_minor = 100200",
        "currency = 'EUR'",
        r#"details = details || '{"n": 2}'"#,
        // Moved to another tenant (the tenant's own audit view would hide or show it).
        "tenant_id = gen_random_uuid()",
        "writer_id = gen_random_uuid()",
        "writer_seq = writer_seq + 100000",
        "mac_key_version = mac_key_version - 1",
        "mac = sha256(mac)",
    ];
    let mut edited = Vec::new();
    for edit in edits {
        let id = log.write("edited").await;
        log.as_dba(&format!("UPDATE audit_events SET {edit} WHERE id = {id};"))
            .await;
        edited.push((id, edit));
    }
    let report = log.verify().await;
    for (id, edit) in &edited {
        assert!(
            report.findings.iter().any(|f| f.event_id == Some(*id)),
            "`{edit}` on event {id} went unnoticed:\n{report}"
        );
    }
    // The sealer never chains them: each is set aside and reported, and the rest is sealed.
    let good = log.write("good").await;
    assert_eq!(log.seal().await, 1, "only the untouched event is sealed");
    assert_eq!(
        log.count(&format!(
            "SELECT count(*) FROM audit_seals WHERE event_id = {good}"
        ))
        .await,
        1
    );
    let report = log.verify().await;
    for (id, _) in &edited {
        names(&report, *id, "the sealer set event");
    }
}

#[tokio::test]
async fn a_sealed_event_moved_to_another_tenant_is_named() {
    let log = Log::new().await;
    let id = log.write("moved").await;
    assert_eq!(log.seal().await, 1);
    let report = log.verify().await;
    assert!(report.intact(), "{report}");
    // The seal chain does not cover the tenant; the event's own MAC does, sealed or not.
    log.as_dba(&format!(
        "UPDATE audit_events SET tenant_id = gen_random_uuid() WHERE id = {id};"
    ))
    .await;
    let report = log.verify().await;
    assert!(
        report.findings.iter().any(|f| f.event_id == Some(id)),
        "a sealed event moved to another tenant went unnoticed:\n{report}"
    );
}

#[tokio::test]
async fn a_deleted_unsealed_event_shows_as_a_gap_in_its_writers_counter() {
    let log = Log::new().await;
    log.write("first").await;
    let doomed = log.write("second").await;
    log.write("third").await;
    log.as_dba(&format!(
        "DELETE FROM audit_events WHERE id = {doomed}; DELETE FROM audit_unsealed WHERE event_id = {doomed};"
    ))
    .await;
    let report = log.verify().await;
    assert!(!report.intact(), "{report}");
    let text = report.to_string();
    let writer = log.signer.writer_id().to_string();
    assert!(
        text.contains(&format!("event #2 of writer {writer} is missing")),
        "{text}"
    );
    // Sealing the rest does not hide it.
    assert_eq!(log.seal().await, 2);
    let (code, text) = log.cli_verify();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("event #2 of writer {writer} is missing")),
        "{text}"
    );
}

#[tokio::test]
async fn counter_values_never_written_are_voided_not_reported() {
    let log = Log::new().await;
    log.write("first").await;
    {
        // A statement that chose not to write its events (a lost idempotency race, say).
        let event = AuditEvent::system("never", json!({}));
        let _unwritten = AuditBatch::one(&log.signer, &event).unwrap();
    }
    log.write("third").await;
    let before = log.verify().await;
    assert!(
        before.to_string().contains("event #2 of writer"),
        "until the void is recorded the gap shows: {before}"
    );
    assert_eq!(log.signer.flush_voids(&log.db.pool).await.unwrap(), 1);
    let report = log.verify().await;
    assert!(report.intact(), "{report}");
    // A void without a valid MAC explains nothing: #5 is deleted, and a void forged for it.
    log.write("fourth").await;
    let doomed = log.write("fifth").await;
    log.write("sixth").await;
    log.as_dba(&format!(
        "DELETE FROM audit_events WHERE id = {doomed};
         INSERT INTO audit_voids (writer_id, first_seq, last_seq, key_version, mac)
         VALUES ('{}', 5, 5, 1, sha256('forged'));",
        log.signer.writer_id()
    ))
    .await;
    let text = log.verify().await.to_string();
    assert!(text.contains("event #5 of writer"), "{text}");
}

#[tokio::test]
async fn a_poisoned_queue_row_is_set_aside_and_never_blocks_sealing() {
    let log = Log::new().await;
    let sealed = log.write("sealed").await;
    log.seal().await;
    // Queue rows naming an already-sealed event and one that does not exist: before, the
    // first made every batch fail (a duplicate seal), so sealing stopped for good.
    log.as_dba(&format!(
        "INSERT INTO audit_unsealed (event_id) VALUES ({sealed}), (999999);"
    ))
    .await;
    let report = log.verify().await;
    names(&report, sealed, "already sealed");
    names(&report, 999_999, "does not exist");
    let next = log.write("next").await;
    assert_eq!(log.seal().await, 1, "the good event is sealed all the same");
    assert_eq!(log.count("SELECT count(*) FROM audit_unsealed").await, 0);
    let report = log.verify().await;
    names(&report, sealed, "already sealed");
    names(&report, 999_999, "does not exist");
    assert!(report.problem.is_none(), "the chain stays intact: {report}");
    assert!(!report.findings.iter().any(|f| f.event_id == Some(next)));
    let (code, text) = log.cli_verify();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("the sealer set event {sealed} aside")),
        "{text}"
    );
}

#[tokio::test]
async fn verify_fails_when_sealing_lags_past_the_bound() {
    let log = Log::new().await;
    let id = log.write("waiting").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = seal::verify(&log.db.pool, &log.keys, None, Duration::from_millis(1))
            .await
            .unwrap();
        if !report.intact() || Instant::now() > deadline {
            break report;
        }
        tokio::task::yield_now().await;
    };
    names(&report, id, "has been unsealed for");
    log.seal().await;
    let report = seal::verify(&log.db.pool, &log.keys, None, Duration::from_millis(1))
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
}

#[tokio::test]
async fn readyz_and_metrics_show_the_sealing_lag() {
    // A sealer that ran once at start and then sleeps, and a bound of 1 ms.
    let opts = Options {
        tune: Some(Box::new(|c| {
            c.seal_interval = Duration::from_secs(3600);
            c.audit_max_unsealed = Duration::from_millis(1);
        })),
        ..Default::default()
    };
    let app = spawn_app_opts(Arc::new(TestDb::new().await), test_keys(), opts).await;
    app.post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "lagging sealing degrades, it does not stop serving"
        );
        let body: Value = r.json().await.unwrap();
        if body["status"] == "degraded" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["audit_sealing"], "lagging", "{body}");
    assert!(
        body["audit_seal_lag_seconds"].as_f64().unwrap() > 0.0,
        "{body}"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("payvault_audit_seal_lag_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cli_command_seals_the_events_it_wrote_before_exiting() {
    let db = TestDb::new().await;
    let key = payvault::crypto::MasterKey::generate(1)
        .encode()
        .as_str()
        .to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payvault"))
        .args(["credentials", "list"])
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PAYVAULT_MASTER_KEY_FILE")
        .env("DATABASE_URL", db.url())
        .env("PAYVAULT_MASTER_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (events, unsealed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events WHERE action = 'credential_list'), (SELECT count(*) FROM audit_unsealed)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (events, unsealed),
        (1, 0),
        "written, and sealed by the command itself"
    );
    let keys = KeyRing::parse(&key).unwrap();
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(report.verified, 1);
}

#[tokio::test]
async fn a_made_up_key_version_cannot_stop_sealing() {
    let log = Log::new().await;
    // A version newer than any loaded, on an event dated far in the future: set aside at once,
    // not left waiting for an instance with that version.
    let future = log.write("future").await;
    log.as_dba(&format!(
        "UPDATE audit_events SET mac_key_version = 2, occurred_at = now() + interval '10 years' WHERE id = {future};"
    ))
    .await;
    let good = log.write("good").await;
    assert_eq!(log.seal().await, 1);
    assert_eq!(log.count("SELECT count(*) FROM audit_unsealed").await, 0);
    let report = log.verify().await;
    names(&report, future, "master key version not loaded");
    assert!(!report.findings.iter().any(|f| f.event_id == Some(good)));
    // Just written under a newer version (another instance already has it): left queued for
    // that instance, and reported meanwhile.
    let young = log.write("young").await;
    log.as_dba(&format!(
        "UPDATE audit_events SET mac_key_version = 2 WHERE id = {young};"
    ))
    .await;
    assert_eq!(log.seal().await, 0);
    assert_eq!(log.count("SELECT count(*) FROM audit_unsealed").await, 1);
    names(&log.verify().await, young, "not loaded");
}

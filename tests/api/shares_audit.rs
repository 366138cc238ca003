//! Audit events of a sealed instance (split custodians meet event MACs): what a sealed instance
//! records (refusals, failed logins, `unseal_submit`, its start) is held until it is unsealed,
//! then written MAC'd, in order, with the time each occurred, so `payvault audit verify` passes;
//! an instance that stops sealed says how many events it lost.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payvault::store::audit::AuditRow;
use serde_json::{json, Value};

use crate::cli::{free_port, wait_until_serving, Child};
use crate::helpers::{card_tokenize, new_txn, TestDb};
use crate::shares::{payvault, readyz, ring_from, split, start_sealed, submit, text};

/// Every event with its MAC columns, in id order.
async fn events(db: &TestDb) -> Vec<AuditRow> {
    sqlx::query_as(
        r#"SELECT id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code,
                  client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor,
                  currency, details::text AS details, writer_id, writer_seq, mac_key_version, mac,
                  tenant_id
           FROM audit_events ORDER BY id"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn events_recorded_while_sealed_are_written_with_valid_macs_at_unseal() {
    let db = Arc::new(TestDb::new().await);
    let shares = split(&db, 3, 2);
    let (ring, _, _) = ring_from(&db, &shares[..2]).await;
    let app = start_sealed(&db, &ring).await;
    let before = events(&db).await.len();

    // While sealed: a refused card operation, a failed login, a refused and an accepted share.
    let (_, body) = app
        .post("/", &card_tokenize(&new_txn(), "4111111111111111"))
        .await;
    assert_eq!(body["error_code"], "vault_sealed", "{body}");
    let resp = app
        .client
        .post(app.url("/"))
        .basic_auth("pvc_nobody", Some("wrong-password-123456"))
        .body(card_tokenize(&new_txn(), "4111111111111111").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, body) = submit(&app, "alice", "pvshare.not-a-share").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_share"))
    );
    let (status, body) = submit(&app, "alice", &shares[0]).await;
    assert_eq!(status, 200, "{body}");

    // Nothing of it is in the database yet (no MAC without the keys): it is held.
    let written = events(&db).await;
    assert!(
        written[before..]
            .iter()
            .all(|e| e.action != "unseal_submit" && e.error_code.as_deref() != Some("vault_sealed")),
        "an event was written while sealed: {:?}",
        written.iter().map(|e| e.action.as_str()).collect::<Vec<_>>()
    );
    let (status, ready) = readyz(&app).await;
    assert_eq!(
        (status, &ready["status"]),
        (503, &json!("not_ready")),
        "{ready}"
    );
    assert_eq!(ready["sealed"], true, "{ready}");
    assert_eq!(ready["key_provider"]["status"], "sealed", "{ready}");
    assert!(ready["audit_events_held"].as_u64().unwrap() >= 4, "{ready}");
    assert_eq!(ready["audit_events_dropped"], 0, "{ready}");
    assert!(ready.get("audit_sealing").is_some(), "{ready}");
    let unseal_requested = chrono::Utc::now();

    // The K-th share unseals: what was held is in the database by the time it is answered.
    let (status, body) = submit(&app, "bob", &shares[1]).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("unsealed")),
        "{body}"
    );
    let rows = events(&db).await;
    let submits: Vec<&AuditRow> = rows
        .iter()
        .filter(|e| e.action == "unseal_submit")
        .collect();
    let outcome =
        |e: &AuditRow| serde_json::from_str::<Value>(&e.details).unwrap()["status"].clone();
    assert_eq!(
        submits.iter().map(|e| outcome(e)).collect::<Vec<_>>(),
        [json!("rejected"), json!("accepted"), json!("unsealed")],
        "in the order submitted"
    );
    let refusal = rows
        .iter()
        .find(|e| e.error_code.as_deref() == Some("vault_sealed"))
        .expect("the sealed refusal is kept");
    let login = rows
        .iter()
        .find(|e| e.action == "authenticate" && e.outcome == "failure")
        .expect("the failed login is kept");
    let start = rows
        .iter()
        .find(|e| e.action == "service_start")
        .expect("the start is kept");
    assert_eq!(
        serde_json::from_str::<Value>(&start.details).unwrap()["sealed"],
        true
    );
    for e in [refusal, login, start]
        .into_iter()
        .chain(submits.iter().copied())
    {
        assert!(
            e.mac_valid(&ring).unwrap(),
            "event {} ({}) does not verify",
            e.id,
            e.action
        );
    }
    // Each kept the time it occurred, not the time it was written; ids follow that order.
    assert!(refusal.occurred_at < unseal_requested && submits[1].occurred_at < unseal_requested);
    assert!(start.id < refusal.id && refusal.id < submits[0].id && submits[0].id < submits[2].id);
    let (status, ready) = readyz(&app).await;
    assert_eq!((status, &ready["sealed"]), (200, &json!(false)), "{ready}");
    assert_eq!(ready["key_provider"]["status"], "ok", "{ready}");

    // The chain and every event's MAC verify, with the custodians' shares on stdin.
    let two = format!("{}\n{}\n", shares[2], shares[0]);
    let env = [("PAYVAULT_KEY_PROVIDER", "shares")];
    let out = payvault(&db, &env, &["audit", "verify"], &two);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("events verified"), "{}", text(&out));
    // Its own `audit_verify` event is MAC'd and sealed like any other.
    let verified = events(&db).await;
    let event = verified
        .iter()
        .rfind(|e| e.action == "audit_verify")
        .unwrap();
    assert!(event.mac_valid(&ring).unwrap());
}

#[tokio::test]
async fn an_instance_stopped_while_sealed_says_how_many_events_it_lost() {
    let db = TestDb::new().await;
    split(&db, 3, 2);
    let port = free_port();
    let log = std::env::temp_dir().join(format!("payvault-sealed-{}", uuid::Uuid::new_v4()));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_payvault"))
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env("PAYVAULT_KEY_PROVIDER", "shares")
            .env_remove("PAYVAULT_MASTER_KEY")
            .env_remove("PAYVAULT_ADMIN_LISTEN")
            .env("PAYVAULT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PAYVAULT_PROCESSOR", "sandbox")
            .env("PAYVAULT_ENV", "development")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&base).await;
    let refused = reqwest::Client::new()
        .post(format!("{base}/unseal"))
        .body(json!({"custodian": "alice", "share": "pvshare.typo"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "payvault serve ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "{status}: {logged}");
    // The start, the refused submission and the stop: held, never written, counted.
    assert!(
        logged.contains("stopping sealed: 3 audit events"),
        "{logged}"
    );
    assert!(!logged.contains("pvshare.typo"), "{logged}");
    let written: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action IN ('service_start', 'unseal_submit', 'service_stop')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(written, 0);
}

//! Sealing in batches from a moving lower bound (issue 17, item 4): every queued event is sealed
//! exactly once, in the order taken, across batches and across drains, and events committed
//! late with lower ids than those already sealed are sealed too.

use crate::helpers::{self, signer_for, test_keys, TestDb};
use payvault::audit::seal;
use payvault::audit::AuditEvent;
use payvault::store::audit::{insert_audit_events, AuditBatch};

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn chained_ids(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT event_id FROM audit_seals ORDER BY seq")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Writes `n` events in one statement; returns their ids, ascending.
async fn write(
    db: &TestDb,
    signer: &payvault::store::audit_mac::EventSigner,
    n: usize,
) -> Vec<i64> {
    let events: Vec<AuditEvent> = (0..n)
        .map(|_| AuditEvent::operator("sealing_test"))
        .collect();
    let refs: Vec<&AuditEvent> = events.iter().collect();
    insert_audit_events(&db.pool, &AuditBatch::new(signer, &refs).unwrap())
        .await
        .unwrap();
    sqlx::query_scalar("SELECT id FROM audit_events WHERE action = 'sealing_test' ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_drain_in_many_batches_seals_every_event_once_in_id_order() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let signer = signer_for(&keys);
    let ids = write(&db, &signer, 25).await;
    assert_eq!(ids.len(), 25);
    // One INSERT statement of 25 events: its statement trigger queued every one of them.
    assert_eq!(count(&db, "SELECT count(*) FROM audit_unsealed").await, 25);
    assert_eq!(
        seal::seal_pending_in_batches(&db.pool, &keys, 4)
            .await
            .unwrap(),
        25
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit_unsealed").await, 0);
    assert_eq!(chained_ids(&db).await, ids);
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(report.verified, 25);
}

#[tokio::test]
async fn events_queued_below_the_last_sealed_id_are_sealed_after_it() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let signer = signer_for(&keys);
    let ids = write(&db, &signer, 6).await;
    // Events 2 and 4 as if their transactions had not committed yet when sealing ran: their
    // queue rows appear only after the later events are sealed.
    let (late_a, late_b) = (ids[1], ids[3]);
    sqlx::query("DELETE FROM audit_unsealed WHERE event_id = ANY($1)")
        .bind(vec![late_a, late_b])
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seal::seal_pending_in_batches(&db.pool, &keys, 2)
            .await
            .unwrap(),
        4
    );
    sqlx::query("INSERT INTO audit_unsealed (event_id) VALUES ($1), ($2)")
        .bind(late_a)
        .bind(late_b)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seal::seal_pending_in_batches(&db.pool, &keys, 2)
            .await
            .unwrap(),
        2,
        "the bound starts again from the beginning of the queue"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit_unsealed").await, 0);
    assert_eq!(
        chained_ids(&db).await,
        vec![ids[0], ids[2], ids[4], ids[5], late_a, late_b]
    );
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
}

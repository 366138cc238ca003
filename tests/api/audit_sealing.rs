//! Sealing in batches from a moving lower bound (issue 17, item 4): every queued event is sealed
//! exactly once, in the order taken, across batches and across drains, and events committed
//! late with lower ids than those already sealed are sealed too. The background sealer's pass
//! (issue 17, item 5) ends once it has caught up, while writers keep writing.

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

/// Writes `n` events in one statement.
async fn insert(db: &TestDb, signer: &payvault::store::audit_mac::EventSigner, n: usize) {
    let events: Vec<AuditEvent> = (0..n)
        .map(|_| AuditEvent::operator("sealing_test"))
        .collect();
    let refs: Vec<&AuditEvent> = events.iter().collect();
    insert_audit_events(&db.pool, &AuditBatch::new(signer, &refs).unwrap())
        .await
        .unwrap();
}

/// Writes `n` events in one statement; returns the ids of every event written so far, ascending.
async fn write(
    db: &TestDb,
    signer: &payvault::store::audit_mac::EventSigner,
    n: usize,
) -> Vec<i64> {
    insert(db, signer, n).await;
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

#[tokio::test]
async fn a_pass_seals_the_backlog_and_leaves_late_events_to_the_next_pass() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let signer = signer_for(&keys);
    let ids = write(&db, &signer, 10).await;
    // A late event: its queue row appears only after the pass.
    sqlx::query("DELETE FROM audit_unsealed WHERE event_id = $1")
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .unwrap();
    // Batches of 4, 4 and 1: the short one ends the pass.
    assert_eq!(seal::seal_one_pass(&db.pool, &keys, 4).await.unwrap(), 9);
    assert_eq!(count(&db, "SELECT count(*) FROM audit_unsealed").await, 0);
    sqlx::query("INSERT INTO audit_unsealed (event_id) VALUES ($1)")
        .bind(ids[2])
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seal::seal_one_pass(&db.pool, &keys, 4).await.unwrap(),
        1,
        "the next pass starts from the beginning of the queue"
    );
    let mut expected: Vec<i64> = ids.iter().copied().filter(|&id| id != ids[2]).collect();
    expected.push(ids[2]);
    assert_eq!(chained_ids(&db).await, expected);
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(report.verified, 10);
}

/// The background sealer's pass ends once it has caught up, although events keep arriving the
/// whole time (a drain until the queue is empty would chase them as long as they come); the next
/// pass takes them. Deterministic: a trigger on the seals stands in for a writer, queueing one
/// more held-back event each time a batch is sealed, as a writer committing during the pass.
#[tokio::test]
async fn a_pass_ends_once_caught_up_while_events_keep_arriving() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let signer = signer_for(&keys);
    let ids = write(&db, &signer, 60).await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE held (event_id bigint PRIMARY KEY);
         INSERT INTO held SELECT event_id FROM audit_unsealed WHERE event_id >= {first_held};
         DELETE FROM audit_unsealed WHERE event_id >= {first_held};
         CREATE FUNCTION arrive() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             WITH next AS (DELETE FROM held WHERE event_id = (SELECT min(event_id) FROM held)
                           RETURNING event_id)
             INSERT INTO audit_unsealed (event_id) SELECT event_id FROM next;
             RETURN NULL;
         END $$;
         CREATE TRIGGER arrive AFTER INSERT ON audit_seals FOR EACH STATEMENT EXECUTE FUNCTION arrive();",
        first_held = ids[30]
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // Batches of 10: ids 1-10, 11-20 and 21-30 are full, and each lets one more event arrive
    // (31, 32, 33); 31-33 is short: the pass has caught up and ends, although 34 arrived.
    assert_eq!(seal::seal_one_pass(&db.pool, &keys, 10).await.unwrap(), 33);
    assert_eq!(chained_ids(&db).await, ids[..33].to_vec());
    let queued: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM audit_unsealed")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, vec![ids[33]]);
    sqlx::query("DROP TRIGGER arrive ON audit_seals")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_unsealed (event_id) SELECT event_id FROM held")
        .execute(&db.pool)
        .await
        .unwrap();
    // The next pass takes what arrived.
    assert_eq!(seal::seal_one_pass(&db.pool, &keys, 10).await.unwrap(), 27);
    assert_eq!(chained_ids(&db).await, ids);
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(report.verified, 60);
}

/// The queue is vacuumed after every 10,000 dead rows, unthrottled: a drained bulk load leaves
/// millions, which every sealing pass would otherwise walk over until autovacuum's default
/// trigger (a fraction of the few live rows' estimate) and pace got to them
/// (migrations/20261228000001_sealing_queue_autovacuum.sql).
#[tokio::test]
async fn the_sealing_queue_is_vacuumed_after_every_ten_thousand_dead_rows() {
    let db = TestDb::new().await;
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'audit_unsealed'::regclass ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        options,
        [
            "autovacuum_vacuum_cost_delay=0",
            "autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_threshold=10000",
        ]
    );
}

//! What `audit verify` reads besides the seal chain: every event (for its own MAC), gaps in the
//! writer counters, voids, anomalies the sealer set aside, the sealing queue and its lag.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::audit::AuditRow;

/// The first event id written with a MAC (older ones are covered by the seal chain alone).
pub async fn mac_epoch(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    let first = sqlx::query_scalar!("SELECT min(first_id) FROM audit_mac_epoch")
        .fetch_one(db)
        .await?;
    Ok(first.unwrap_or(1))
}

/// Events with id above `after`, in id order, sealed or not.
pub async fn events_after(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as!(
        AuditRow,
        r#"
        SELECT id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code,
               client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor,
               currency, details::text AS "details!", writer_id, writer_seq, mac_key_version, mac,
               tenant_id
        FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2
        "#,
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// A run of missing counter values of one writer: `after` is the last present one (0 when the
/// writer's first values are missing), `next` the next present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub writer_id: Uuid,
    pub after: i64,
    pub next: i64,
}

pub async fn writer_gaps(db: impl PgExecutor<'_>) -> Result<Vec<Gap>, sqlx::Error> {
    sqlx::query_as!(
        Gap,
        r#"
        SELECT writer_id AS "writer_id!", prev AS "after!", writer_seq AS "next!" FROM (
            SELECT writer_id, writer_seq,
                   lag(writer_seq, 1, 0::bigint) OVER (PARTITION BY writer_id ORDER BY writer_seq) AS prev
            FROM audit_events WHERE writer_id IS NOT NULL AND writer_seq IS NOT NULL
        ) t
        WHERE writer_seq > prev + 1
        ORDER BY writer_id, prev
        "#
    )
    .fetch_all(db)
    .await
}

/// A voided counter range (see `audit_voids`).
#[derive(Debug, Clone)]
pub struct Void {
    pub writer_id: Uuid,
    pub first_seq: i64,
    pub last_seq: i64,
    pub key_version: i32,
    pub mac: Vec<u8>,
}

pub async fn voids(db: impl PgExecutor<'_>) -> Result<Vec<Void>, sqlx::Error> {
    sqlx::query_as!(
        Void,
        "SELECT writer_id, first_seq, last_seq, key_version, mac FROM audit_voids ORDER BY writer_id, first_seq"
    )
    .fetch_all(db)
    .await
}

/// Something the sealer set aside.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub event_id: i64,
    pub kind: String,
    pub found_at: DateTime<Utc>,
}

pub async fn anomalies(db: impl PgExecutor<'_>) -> Result<Vec<Anomaly>, sqlx::Error> {
    sqlx::query_as!(
        Anomaly,
        "SELECT event_id, kind, found_at FROM audit_anomalies ORDER BY id"
    )
    .fetch_all(db)
    .await
}

/// Queue rows naming an event that does not exist (`missing`) or is already sealed (`sealed`).
pub async fn bad_queue_rows(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(i64, &'static str)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT u.event_id,
               NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = u.event_id) AS "missing!"
        FROM audit_unsealed u
        WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = u.event_id)
           OR EXISTS (SELECT 1 FROM audit_seals s WHERE s.event_id = u.event_id)
        ORDER BY u.event_id LIMIT 100
        "#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, if r.missing { "missing" } else { "sealed" }))
        .collect())
}

/// The oldest event without a seal that the sealer did not set aside, with its time.
pub async fn oldest_unsealed(
    db: impl PgExecutor<'_>,
) -> Result<Option<(i64, DateTime<Utc>)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT e.id, e.occurred_at FROM audit_events e
        WHERE NOT EXISTS (SELECT 1 FROM audit_seals s WHERE s.event_id = e.id)
          AND NOT EXISTS (SELECT 1 FROM audit_anomalies a WHERE a.event_id = e.id)
        ORDER BY e.occurred_at LIMIT 1
        "#
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.id, r.occurred_at)))
}

/// Whether any retention prune happened (its anchor explains writer counters that start late).
pub async fn pruned(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let any = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM audit_anchors) AS "any!""#)
        .fetch_one(db)
        .await?;
    Ok(any)
}

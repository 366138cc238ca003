//! What `audit verify` reads: the seal links and every event (each in its own key order, a page
//! at a time), voids, anomalies the sealer set aside, and the sealing queue.

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

/// One link of the seal chain, without its event (`audit verify` reads the events on their own,
/// in id order, and joins them to the links itself).
#[derive(Debug, Clone)]
pub struct SealLink {
    pub seq: i64,
    pub event_id: i64,
    pub key_version: i32,
    pub mac: Vec<u8>,
    pub sealed_at: DateTime<Utc>,
}

/// Seals with seq above `after`, in chain order.
pub async fn links_after(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<SealLink>, sqlx::Error> {
    sqlx::query_as!(
        SealLink,
        "SELECT seq, event_id, key_version, mac, sealed_at FROM audit_seals WHERE seq > $1 ORDER BY seq LIMIT $2",
        after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// One event by id, if it exists.
pub async fn event_by_id(
    db: impl PgExecutor<'_>,
    id: i64,
) -> Result<Option<AuditRow>, sqlx::Error> {
    sqlx::query_as!(
        AuditRow,
        r#"
        SELECT id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code,
               client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor,
               currency, details::text AS "details!", writer_id, writer_seq, mac_key_version, mac,
               tenant_id
        FROM audit_events WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(db)
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

/// Whether any retention prune happened (its anchor explains writer counters that start late).
pub async fn pruned(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let any = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM audit_anchors) AS "any!""#)
        .fetch_one(db)
        .await?;
    Ok(any)
}

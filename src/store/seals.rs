//! The audit seal chain: `audit_unsealed`, `audit_seals`, `audit_anchors`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::audit::AuditRow;

/// Arbitrary constant naming the sealing advisory lock.
const SEAL_LOCK: i64 = 0x7061_7976_6175_6c74; // "payvault"

/// The event of a row that LEFT JOINs `audit_events` (its columns as `id?`, `occurred_at?`,
/// ..., `event_mac?`, `tenant_id?`): `None` when the join found no event.
macro_rules! joined_event {
    ($r:ident) => {
        match (
            $r.id,
            $r.occurred_at,
            $r.actor_kind,
            $r.action,
            $r.outcome,
            $r.details,
            $r.tenant_id,
        ) {
            (
                Some(id),
                Some(occurred_at),
                Some(actor_kind),
                Some(action),
                Some(outcome),
                Some(details),
                Some(tenant_id),
            ) => Some(AuditRow {
                id,
                occurred_at,
                request_id: $r.request_id,
                actor_id: $r.actor_id,
                actor_kind,
                action,
                outcome,
                error_code: $r.error_code,
                client_addr: $r.client_addr,
                forwarded_for: $r.forwarded_for,
                token: $r.token,
                transaction_id: $r.transaction_id,
                masked_data: $r.masked_data,
                amount_minor: $r.amount_minor,
                currency: $r.currency,
                details,
                writer_id: $r.writer_id,
                writer_seq: $r.writer_seq,
                mac_key_version: $r.mac_key_version,
                mac: $r.event_mac,
                tenant_id,
            }),
            _ => None,
        }
    };
}

/// Takes the sealing lock for this transaction, or returns `false` if another instance holds it.
pub async fn try_lock_sealing(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        SEAL_LOCK
    )
    .fetch_one(db)
    .await?;
    Ok(locked)
}

/// The newest link of the chain: a seal, or else the newest prune anchor.
#[derive(Debug, Clone)]
pub struct ChainTip {
    pub seq: i64,
    pub mac: Vec<u8>,
}

pub async fn chain_tip(db: impl PgExecutor<'_>) -> Result<Option<ChainTip>, sqlx::Error> {
    sqlx::query_as!(
        ChainTip,
        r#"
        SELECT seq AS "seq!", mac AS "mac!" FROM (
            (SELECT seq, mac FROM audit_seals ORDER BY seq DESC LIMIT 1)
            UNION ALL
            (SELECT seq, mac FROM audit_anchors ORDER BY seq DESC LIMIT 1)
        ) t ORDER BY seq DESC LIMIT 1
        "#
    )
    .fetch_optional(db)
    .await
}

/// A queued event id taken off the queue, with what the sealer needs to know about it.
#[derive(Debug)]
pub struct Queued {
    pub event_id: i64,
    /// The event already has a seal (a bad queue row).
    pub already_sealed: bool,
    /// The event, `None` if no such event exists (a bad queue row).
    pub event: Option<AuditRow>,
}

/// Which of `ids` already have a seal.
pub async fn sealed_among(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT event_id FROM audit_seals WHERE event_id = ANY($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// Takes up to `limit` queued event ids above `after` off the queue, in id order, each with its
/// event (if it exists) and whether it already has a seal: two statements for the whole batch.
/// The runtime role cannot DELETE from the queue: `payvault_dequeue_unsealed` (SECURITY
/// DEFINER, see its migration, 20261227000001, for why `after`) does it; the rest is a plain
/// read (the runtime role may SELECT the audit tables).
pub async fn dequeue_for_sealing(
    db: &mut sqlx::PgConnection,
    limit: i64,
    after: i64,
) -> Result<Vec<Queued>, sqlx::Error> {
    let mut ids: Vec<i64> = sqlx::query_scalar!(
        r#"SELECT payvault_dequeue_unsealed($1, $2) AS "event_id!""#,
        limit,
        after,
    )
    .fetch_all(&mut *db)
    .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    ids.sort_unstable();
    // unnest($1) is planned as a few rows: one primary key probe per id, whatever the table's
    // size or statistics (a join planned on stale statistics may scan the whole table).
    let rows = sqlx::query!(
        r#"
        SELECT q.event_id AS "event_id!",
               EXISTS (SELECT 1 FROM audit_seals s WHERE s.event_id = q.event_id) AS "already_sealed!",
               e.id AS "id?", e.occurred_at AS "occurred_at?", e.request_id, e.actor_id,
               e.actor_kind AS "actor_kind?", e.action AS "action?", e.outcome AS "outcome?",
               e.error_code, e.client_addr, e.forwarded_for, e.token, e.transaction_id,
               e.masked_data, e.amount_minor, e.currency, e.details::text AS "details?",
               e.writer_id, e.writer_seq, e.mac_key_version, e.mac AS "event_mac?",
               e.tenant_id AS "tenant_id?"
        FROM unnest($1::bigint[]) AS q(event_id)
        LEFT JOIN audit_events e ON e.id = q.event_id
        ORDER BY q.event_id
        "#,
        &ids,
    )
    .fetch_all(&mut *db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Queued {
            event_id: r.event_id,
            already_sealed: r.already_sealed,
            event: joined_event!(r),
        })
        .collect())
}

/// Records what the sealer set aside, through `payvault_record_audit_anomalies`.
pub async fn record_anomalies(
    db: impl PgExecutor<'_>,
    event_ids: &[i64],
    kinds: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT payvault_record_audit_anomalies($1, $2)",
        event_ids,
        kinds
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// Records voided writer counter ranges, through `payvault_insert_audit_voids`.
pub async fn insert_voids(
    db: impl PgExecutor<'_>,
    writer_id: uuid::Uuid,
    firsts: &[i64],
    lasts: &[i64],
    key_version: i32,
    macs: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT payvault_insert_audit_voids($1, $2, $3, $4, $5)",
        writer_id,
        firsts,
        lasts,
        key_version,
        macs,
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// Appends seals, through `payvault_insert_seals` (SECURITY DEFINER: the runtime role may only
/// read `audit_seals`).
pub async fn insert_seals(
    db: impl PgExecutor<'_>,
    seqs: &[i64],
    event_ids: &[i64],
    key_version: i32,
    macs: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT payvault_insert_seals($1, $2, $3, $4)",
        seqs,
        event_ids,
        key_version,
        macs,
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// A seal with its event (absent if the event row was deleted), in chain order.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub seq: i64,
    pub event_id: i64,
    pub key_version: i32,
    pub mac: Vec<u8>,
    pub sealed_at: DateTime<Utc>,
    pub event: Option<AuditRow>,
}

pub async fn seals_after(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT s.seq, s.event_id, s.key_version, s.mac, s.sealed_at,
               e.id AS "id?", e.occurred_at AS "occurred_at?", e.request_id, e.actor_id,
               e.actor_kind AS "actor_kind?", e.action AS "action?", e.outcome AS "outcome?",
               e.error_code, e.client_addr, e.forwarded_for, e.token, e.transaction_id,
               e.masked_data, e.amount_minor, e.currency, e.details::text AS "details?",
               e.writer_id, e.writer_seq, e.mac_key_version, e.mac AS "event_mac?",
               e.tenant_id AS "tenant_id?"
        FROM audit_seals s LEFT JOIN audit_events e ON e.id = s.event_id
        WHERE s.seq > $1
        ORDER BY s.seq
        LIMIT $2
        "#,
        after,
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SealedRow {
            seq: r.seq,
            event_id: r.event_id,
            key_version: r.key_version,
            mac: r.mac,
            sealed_at: r.sealed_at,
            event: joined_event!(r),
        })
        .collect())
}

/// An anchor left by a retention prune.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub seq: i64,
    pub mac: Vec<u8>,
    pub key_version: i32,
    pub signature: Vec<u8>,
}

/// The newest anchor at or below `seq` (the chain restarts after it).
pub async fn anchor_before(
    db: impl PgExecutor<'_>,
    seq: i64,
) -> Result<Option<Anchor>, sqlx::Error> {
    sqlx::query_as!(
        Anchor,
        "SELECT seq, mac, key_version, signature FROM audit_anchors WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
        seq,
    )
    .fetch_optional(db)
    .await
}

/// Records `anchor` and deletes the chain prefix up to its seq with its events, through
/// `payvault_prune_audit` (SECURITY DEFINER: the only way anyone but the owner deletes audit
/// history). Returns how many events were deleted.
pub async fn prune_prefix(db: impl PgExecutor<'_>, anchor: &Anchor) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query_scalar!(
        r#"SELECT payvault_prune_audit($1, $2, $3, $4) AS "deleted!""#,
        anchor.seq,
        anchor.mac,
        anchor.key_version,
        anchor.signature,
    )
    .fetch_one(db)
    .await?;
    Ok(deleted.max(0).unsigned_abs())
}

/// How many events await sealing, and since when.
pub async fn pending(db: impl PgExecutor<'_>) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT count(*) AS "n!", min(e.occurred_at) AS oldest
        FROM audit_unsealed u LEFT JOIN audit_events e ON e.id = u.event_id
        "#
    )
    .fetch_one(db)
    .await?;
    Ok((row.n, row.oldest))
}

/// The last seal whose event occurred before `before` such that every earlier seal's did too.
pub async fn prunable_prefix(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT max(s.seq) FROM audit_seals s
        WHERE s.seq < coalesce(
            (SELECT min(s2.seq) FROM audit_seals s2 JOIN audit_events e2 ON e2.id = s2.event_id
             WHERE e2.occurred_at >= $1),
            (SELECT max(seq) + 1 FROM audit_seals))
        "#,
        before,
    )
    .fetch_one(db)
    .await
}

/// The newest seal.
#[derive(Debug, Clone)]
pub struct SealRef {
    pub seq: i64,
    pub event_id: i64,
    pub sealed_at: DateTime<Utc>,
    pub mac: Vec<u8>,
}

pub async fn newest_seal(db: impl PgExecutor<'_>) -> Result<Option<SealRef>, sqlx::Error> {
    sqlx::query_as!(
        SealRef,
        "SELECT seq, event_id, sealed_at, mac FROM audit_seals ORDER BY seq DESC LIMIT 1"
    )
    .fetch_optional(db)
    .await
}

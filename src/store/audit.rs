//! Writes to the append-only `audit_events` table.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::audit_mac::{EventSigner, MacFields};
use crate::crypto::{KeyRing, Sealed};
use crate::domain::{AuditEvent, DEFAULT_TENANT};

/// Audit events ready for `payvault_insert_audit_events(jsonb)`, the one SQL function that
/// writes `audit_events` (see its migration). Every statement that records events takes one of
/// these, so events reach the database in exactly one shape, built here: stamped with the time,
/// the writer's identity and counter, and MAC'd by [`EventSigner`]. Serialised while the
/// statement is encoded: an event that cannot be serialised fails the operation it records.
///
/// The writer counter values are allocated when the batch is built. A store function that
/// writes the batch calls [`AuditBatch::mark_written`] once its statement inserted the events;
/// a batch dropped without that (the statement did not run, failed, or chose not to insert)
/// hands its values back to the signer as a void, so `verify` does not take the gap for a
/// deletion.
#[derive(Debug)]
pub struct AuditBatch<'a> {
    rows: Vec<EventRow<'a>>,
    signer: &'a EventSigner,
    written: AtomicBool,
}

/// One `audit_events` row as the SQL function reads it (field names are its column names).
#[derive(Debug, Serialize)]
pub struct EventRow<'a> {
    occurred_at: String,
    request_id: Option<&'a str>,
    actor_id: Option<Uuid>,
    actor_kind: &'a str,
    action: &'a str,
    outcome: &'a str,
    error_code: Option<&'a str>,
    client_addr: Option<&'a str>,
    forwarded_for: Option<&'a str>,
    token: Option<&'a str>,
    transaction_id: Option<&'a str>,
    masked_data: Option<&'a str>,
    amount_minor: Option<i64>,
    currency: Option<&'a str>,
    details: &'a serde_json::Value,
    writer_id: Uuid,
    writer_seq: i64,
    mac_key_version: i32,
    /// Hex (the function decodes it).
    mac: String,
    tenant_id: Uuid,
}

fn sign<'a>(
    signer: &EventSigner,
    keys: &KeyRing,
    e: &'a AuditEvent,
    seq: i64,
    occurred_at: DateTime<Utc>,
) -> EventRow<'a> {
    let fields = MacFields {
        writer_id: signer.writer_id(),
        writer_seq: seq,
        key_version: keys.current_version(),
        occurred_at,
        request_id: e.request_id.as_deref(),
        actor_id: e.actor_id,
        actor_kind: e.actor_kind,
        action: e.action,
        outcome: e.outcome(),
        error_code: e.error_code.as_deref(),
        client_addr: e.client_addr.as_deref(),
        forwarded_for: e.forwarded_for.as_deref(),
        token: e.token.as_deref(),
        transaction_id: e.transaction_id.as_deref(),
        masked_data: e.masked_data.as_deref(),
        amount_minor: e.amount_minor,
        currency: e.currency.as_deref(),
        details: &e.details,
        // What the column holds for an event of no tenant of its own, so the MAC covers it.
        tenant_id: e.tenant_id.unwrap_or(DEFAULT_TENANT),
    };
    // The current version is always loaded, so this cannot fail; an empty MAC would only make
    // verify report the event.
    let mac = fields.mac(keys).map(hex).unwrap_or_default();
    EventRow {
        occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        request_id: fields.request_id,
        actor_id: fields.actor_id,
        actor_kind: fields.actor_kind,
        action: fields.action,
        outcome: fields.outcome,
        error_code: fields.error_code,
        client_addr: fields.client_addr,
        forwarded_for: fields.forwarded_for,
        token: fields.token,
        transaction_id: fields.transaction_id,
        masked_data: fields.masked_data,
        amount_minor: fields.amount_minor,
        currency: fields.currency,
        details: &e.details,
        writer_id: fields.writer_id,
        writer_seq: seq,
        mac_key_version: fields.key_version,
        mac,
        tenant_id: fields.tenant_id,
    }
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a> AuditBatch<'a> {
    /// `events`, occurring now. [`Sealed`] without master keys: every path that writes events
    /// inside an operation's transaction is refused (`vault_sealed`) before it gets here, and
    /// standalone events are held instead (see [`EventSigner::record`]).
    pub fn new(signer: &'a EventSigner, events: &[&'a AuditEvent]) -> Result<Self, Sealed> {
        let now = now_micros();
        Self::at(signer, events.iter().map(|&e| (e, now)))
    }

    /// Events with the time each occurred (held events keep the time they were created).
    pub fn at(
        signer: &'a EventSigner,
        events: impl ExactSizeIterator<Item = (&'a AuditEvent, DateTime<Utc>)>,
    ) -> Result<Self, Sealed> {
        let keys = signer.keys()?;
        let first = signer.allocate(events.len());
        let rows = events
            .zip(first..)
            .map(|((e, at), seq)| sign(signer, keys, e, seq, at))
            .collect();
        Ok(Self {
            rows,
            signer,
            written: AtomicBool::new(false),
        })
    }

    pub fn one(signer: &'a EventSigner, event: &'a AuditEvent) -> Result<Self, Sealed> {
        Self::new(signer, &[event])
    }

    /// The `events` argument of `payvault_insert_audit_events` (a jsonb array).
    pub fn json(&self) -> Json<&[EventRow<'a>]> {
        Json(&self.rows)
    }

    /// The statement carrying this batch inserted its events.
    pub fn mark_written(&self) {
        self.written.store(true, Ordering::Relaxed);
    }
}

impl Drop for AuditBatch<'_> {
    fn drop(&mut self) {
        if !self.written.load(Ordering::Relaxed) {
            if let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) {
                self.signer.void(first.writer_seq, last.writer_seq);
            }
        }
    }
}

/// Now, in microseconds: what timestamptz keeps, so the MAC covers exactly the stored value.
pub(crate) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// [`Sealed`] as the database error of a store function that writes audit events: unreachable
/// in practice (callers refuse `vault_sealed` first), answered `internal_error` if reached.
pub fn sealed_error(e: Sealed) -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(e))
}

/// Writes one event inside the caller's transaction (a standalone event goes through
/// [`EventSigner::record`], which holds it while the instance is sealed).
pub async fn insert_audit_event(
    db: impl PgExecutor<'_>,
    signer: &EventSigner,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    let batch = AuditBatch::one(signer, event).map_err(sealed_error)?;
    insert_audit_events(db, &batch).await
}

/// Writes a batch of events on its own (or inside the caller's transaction).
pub async fn insert_audit_events(
    db: impl PgExecutor<'_>,
    events: &AuditBatch<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT payvault_insert_audit_events($1) AS "inserted!""#,
        events.json() as _,
    )
    .fetch_one(db)
    .await?;
    events.mark_written();
    Ok(())
}

/// An audit event as stored, with everything the seal covers.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub request_id: Option<String>,
    pub actor_id: Option<uuid::Uuid>,
    pub actor_kind: String,
    pub action: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    pub masked_data: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// `details` as Postgres prints jsonb: canonical (sorted keys, fixed spacing).
    pub details: String,
    /// Who wrote it, and its MAC (all `None` for events written before event MACs).
    pub writer_id: Option<Uuid>,
    pub writer_seq: Option<i64>,
    pub mac_key_version: Option<i32>,
    pub mac: Option<Vec<u8>>,
    /// The tenant the event belongs to (the default tenant for the deployment's own events).
    pub tenant_id: Uuid,
}

impl AuditRow {
    /// Whether the row's MAC verifies: `None` when it has none, or its key is not loaded.
    pub fn mac_valid(
        &self,
        keys: &crate::crypto::KeyRing,
    ) -> Result<bool, crate::crypto::CryptoError> {
        let (Some(writer_id), Some(writer_seq), Some(key_version), Some(mac)) = (
            self.writer_id,
            self.writer_seq,
            self.mac_key_version,
            &self.mac,
        ) else {
            return Ok(false);
        };
        let details: serde_json::Value =
            serde_json::from_str(&self.details).unwrap_or(serde_json::Value::Null);
        let fields = MacFields {
            writer_id,
            writer_seq,
            key_version,
            occurred_at: self.occurred_at,
            request_id: self.request_id.as_deref(),
            actor_id: self.actor_id,
            actor_kind: &self.actor_kind,
            action: &self.action,
            outcome: &self.outcome,
            error_code: self.error_code.as_deref(),
            client_addr: self.client_addr.as_deref(),
            forwarded_for: self.forwarded_for.as_deref(),
            token: self.token.as_deref(),
            transaction_id: self.transaction_id.as_deref(),
            masked_data: self.masked_data.as_deref(),
            amount_minor: self.amount_minor,
            currency: self.currency.as_deref(),
            details: &details,
            tenant_id: self.tenant_id,
        };
        let expected = fields.mac(keys)?;
        Ok(subtle::ConstantTimeEq::ct_eq(&expected[..], mac.as_slice()).into())
    }
}

/// Filters of an audit query; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub action: Option<String>,
    /// Credential id, username or name.
    pub actor: Option<String>,
    pub token: Option<String>,
    pub transaction_id: Option<String>,
    pub outcome: Option<String>,
    /// Only this tenant's events (the caller's, on the API without `audit:all`).
    pub tenant: Option<Uuid>,
}

impl AuditFilter {
    /// Whether this listing pages in time order: a time range (`since` or `until`) without a
    /// token or transaction id. Every other listing pages in id order.
    pub fn time_ordered(&self) -> bool {
        (self.since.is_some() || self.until.is_some())
            && self.token.is_none()
            && self.transaction_id.is_none()
    }
}

/// Why a page of the audit log could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The cursor of a time-ordered page is no event the listing can see: unknown (never
    /// returned, or pruned since), or another tenant's. Both answer alike, so a cursor tells
    /// nothing about another tenant's events.
    #[error("the cursor is not an event of this listing")]
    UnknownCursor,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The events matching `filter` after the cursor event `after` (0: from the start), at most
/// `limit`, in one of two orders:
/// - **time order** (`(occurred_at, id)`) for a time range without a token or transaction id
///   ([`AuditFilter::time_ordered`]): the cursor's `occurred_at` is looked up (with the tenant
///   filter, see [`ListError::UnknownCursor`]) and the page is the next `limit` matches after
///   `(occurred_at, id)` of the cursor, read in order from the index
///   `audit_events_occurred_at_id_idx (occurred_at, id) INCLUDE (tenant_id)`: one index range
///   scan of the page, whatever the size of the window or the table (docs/benchmarks.md,
///   "audit list by time range"). Time order, not id order, because occurred_at (set by the
///   writer before the insert) only roughly follows id: events held while sealed are written
///   later with their original time, and instances' clocks differ, so no page of a window in
///   id order can be read without reading the whole window;
/// - **id order** for everything else, with `id > after`: by token or transaction id the
///   `(col, id)` index, already in cursor order, gives one page; without any of these filters,
///   the primary key from the cursor.
///
/// Either way the pages, concatenated, are exactly the matching events, each once. Each
/// statement names only the filters given (built with [`sqlx::QueryBuilder`]) and is sent
/// unnamed, so PostgreSQL plans each call for its own values: a statement with
/// `($n IS NULL OR col = $n)` for every filter, prepared once per pooled connection, went to a
/// generic plan after five calls, and that plan cannot use an index for a filter that may be
/// absent.
pub async fn list_audit_events(
    pool: &sqlx::PgPool,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, ListError> {
    let start = if !filter.time_ordered() {
        Start::Id(after)
    } else if after <= 0 {
        Start::Time(None)
    } else {
        let at = sqlx::query_scalar!(
            "SELECT occurred_at FROM audit_events WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)",
            after,
            filter.tenant,
        )
        .fetch_optional(pool)
        .await?
        .ok_or(ListError::UnknownCursor)?;
        Start::Time(Some((at, after)))
    };
    Ok(list_query(filter, start, limit)
        .build_query_as::<AuditRow>()
        .persistent(false)
        .fetch_all(pool)
        .await?)
}

/// Where a page starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Id order, after this id.
    Id(i64),
    /// Time order, after this `(occurred_at, id)` (from `since` when `None`).
    Time(Option<(DateTime<Utc>, i64)>),
}

/// The statement of one page (see [`list_audit_events`]).
fn list_query(
    filter: &AuditFilter,
    start: Start,
    limit: i64,
) -> sqlx::QueryBuilder<'_, sqlx::Postgres> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code, \
         client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor, currency, \
         details::text AS details, writer_id, writer_seq, mac_key_version, mac, tenant_id \
         FROM audit_events WHERE TRUE",
    );
    let mut since = filter.since;
    match start {
        Start::Id(after) => {
            q.push(" AND id > ").push_bind(after);
        }
        Start::Time(Some((at, id))) => {
            // One lower bound on occurred_at, the tighter, so where the index scan starts does
            // not rest on how PostgreSQL ranks a row comparison against a plain bound on the
            // same column (15 starts at the row comparison; starting at `since` would pass
            // every event of the window before the cursor).
            if since.is_none_or(|s| s <= at) {
                q.push(" AND (occurred_at, id) > (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
                since = None;
            }
        }
        Start::Time(None) => {}
    }
    if let Some(since) = since {
        q.push(" AND occurred_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        q.push(" AND occurred_at < ").push_bind(until);
    }
    if let Some(action) = &filter.action {
        q.push(" AND action = ").push_bind(action);
    }
    if let Some(actor) = &filter.actor {
        q.push(" AND (actor_id::text = ")
            .push_bind(actor)
            .push(" OR actor_id IN (SELECT id FROM credentials WHERE username = ")
            .push_bind(actor)
            .push(" OR name = ")
            .push_bind(actor)
            .push("))");
    }
    if let Some(token) = &filter.token {
        q.push(" AND token = ").push_bind(token);
    }
    if let Some(transaction_id) = &filter.transaction_id {
        q.push(" AND transaction_id = ").push_bind(transaction_id);
    }
    if let Some(outcome) = &filter.outcome {
        q.push(" AND outcome = ").push_bind(outcome);
    }
    if let Some(tenant) = filter.tenant {
        q.push(" AND tenant_id = ").push_bind(tenant);
    }
    match start {
        Start::Id(_) => q.push(" ORDER BY id LIMIT "),
        Start::Time(_) => q.push(" ORDER BY occurred_at, id LIMIT "),
    };
    q.push_bind(limit);
    q
}

/// Sealed events with seal seq above `after`, in chain order (the export order: final, so a
/// cursor never skips an event that committed late). Seals whose event is gone (tampering, which
/// `audit verify` reports) are skipped.
pub async fn export_sealed_events(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, AuditRow)>, sqlx::Error> {
    let rows = super::seals::seals_after(db, after, limit).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.seq, r.event?)))
        .collect())
}

//! `audit verify`: one pass over the log.
//!
//! Two reader tasks page through `audit_seals` in seq order and `audit_events` in id order
//! (each an index range scan on its primary key, a few thousand rows a round trip, a page or two
//! ahead of the checks), and the checks join them here: each seal's link is checked with its
//! event's row as soon as the events have been read up to its event id, and every event's own
//! MAC and writer counter value are checked as it is read. Seals come in nearly the order of
//! their event ids (the sealer takes the queue in id order), so the events read but not yet
//! matched to a seal stay few; what is left unmatched at the end is every event without a seal,
//! which gives the "inserted behind the sealer's back" check and the sealing lag check without
//! an anti-join over the whole table.
//!
//! Like the paged walk before it, the pass reads in several statements, not one snapshot: the
//! log is append-only, so a later page only sees more of it.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::integrity::{self, EventChecks, Scanned};
use super::seal::{
    anchor_valid, check_row, hex, Checkpoint, Problem, Report, SealError, SEAL_GRACE,
};
use crate::crypto::KeyRing;
use crate::store;
use crate::store::audit::AuditRow;
use crate::store::audit_checks::SealLink;
use crate::store::seals::SealedRow;

const EVENT_PAGE: i64 = 5_000;
const LINK_PAGE: i64 = 20_000;
/// Pages a reader may be ahead of the checks.
const PAGES_AHEAD: usize = 2;
/// At most this many event rows are kept waiting for their seal; beyond it only the id and time
/// are kept, and the row is read again (one query) if its seal comes.
const HELD_ROWS: usize = 100_000;

type Page<T> = Result<Vec<T>, sqlx::Error>;

/// Pages read by a task of their own: `fetch(pool, after)` returns the rows after the key
/// `after` in key order; the task stops at the first empty page or error.
struct Pages<T> {
    rx: mpsc::Receiver<Page<T>>,
    page: std::vec::IntoIter<T>,
}

impl<T: Send + 'static> Pages<T> {
    fn spawn<F, Fut>(pool: &PgPool, first: i64, key: fn(&T) -> i64, fetch: F) -> Self
    where
        F: Fn(PgPool, i64) -> Fut + Send + 'static,
        Fut: Future<Output = Page<T>> + Send,
    {
        let (tx, rx) = mpsc::channel(PAGES_AHEAD);
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut after = first;
            loop {
                let page = fetch(pool.clone(), after).await;
                let next = match &page {
                    Ok(rows) => rows.last().map(key),
                    Err(_) => None,
                };
                if matches!(&page, Ok(rows) if rows.is_empty()) || tx.send(page).await.is_err() {
                    break;
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
        });
        Self {
            rx,
            page: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self) -> Result<Option<T>, sqlx::Error> {
        loop {
            if let Some(row) = self.page.next() {
                return Ok(Some(row));
            }
            match self.rx.recv().await {
                Some(page) => self.page = page?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}

/// An event read but not (yet) matched to a seal.
// Nearly every entry is a `Row` (a `Stub` only past `HELD_ROWS`): boxing it would add an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
enum Held {
    Row(AuditRow),
    Stub(DateTime<Utc>),
}

/// The events side of the pass.
struct Events<'k> {
    keys: &'k KeyRing,
    pages: Pages<AuditRow>,
    checks: EventChecks,
    held: BTreeMap<i64, Held>,
    held_rows: usize,
    /// The highest event id read so far.
    read_to: i64,
    done: bool,
}

impl Events<'_> {
    fn observe(&mut self, row: AuditRow) {
        self.checks.observe(self.keys, &row);
        let id = row.id;
        self.read_to = self.read_to.max(id);
        let held = if self.held_rows < HELD_ROWS {
            self.held_rows += 1;
            Held::Row(row)
        } else {
            Held::Stub(row.occurred_at)
        };
        if let Some(Held::Row(_)) = self.held.insert(id, held) {
            self.held_rows -= 1;
        }
    }

    /// The event `id` (reading on until the events reach it), `None` if it does not exist.
    async fn take(&mut self, pool: &PgPool, id: i64) -> Result<Option<AuditRow>, sqlx::Error> {
        while !self.done && self.read_to < id {
            match self.pages.next().await? {
                Some(row) => self.observe(row),
                None => self.done = true,
            }
        }
        match self.held.remove(&id) {
            Some(Held::Row(row)) => {
                self.held_rows -= 1;
                Ok(Some(row))
            }
            // Not kept, deleted, or written after the events were read: ask.
            Some(Held::Stub(_)) | None => store::audit_checks::event_by_id(pool, id).await,
        }
    }
}

/// The chain side of the pass: where it is, and the last link that verified.
struct Chain<'a> {
    keys: &'a KeyRing,
    checkpoint: Option<&'a Checkpoint>,
    expected_seq: Option<i64>,
    prev: Vec<u8>,
    checkpoint_seen: bool,
    last: Option<(i64, i64, DateTime<Utc>)>,
}

impl Chain<'_> {
    /// Checks the next link; `Some` is the first problem.
    async fn step(
        &mut self,
        pool: &PgPool,
        link: SealLink,
        event: Option<AuditRow>,
    ) -> Result<Option<Problem>, SealError> {
        let problem = |seq, event_id, what: String| {
            Ok(Some(Problem {
                seq,
                event_id,
                what,
            }))
        };
        if self.expected_seq.is_none() {
            // The chain starts at 1, or right after a valid prune anchor.
            if link.seq == 1 {
                self.prev = vec![0u8; 32];
            } else {
                match store::seals::anchor_before(pool, link.seq).await? {
                    Some(a) if a.seq == link.seq - 1 && anchor_valid(self.keys, &a)? => {
                        self.prev = a.mac;
                    }
                    _ => {
                        return problem(
                            Some(link.seq),
                            Some(link.event_id),
                            "the start of the chain was deleted without a valid prune anchor"
                                .into(),
                        )
                    }
                }
            }
        } else if Some(link.seq) != self.expected_seq {
            let missing = self.expected_seq.unwrap_or(0);
            return problem(
                Some(missing),
                None,
                format!("sealed events {missing} to {} were deleted", link.seq - 1),
            );
        }
        let row = SealedRow {
            seq: link.seq,
            event_id: link.event_id,
            key_version: link.key_version,
            mac: link.mac,
            sealed_at: link.sealed_at,
            event,
        };
        if let Some(what) = check_row(self.keys, &row, &self.prev)? {
            return problem(Some(row.seq), Some(row.event_id), what);
        }
        if let Some(cp) = self.checkpoint {
            if cp.seq == row.seq {
                self.checkpoint_seen = true;
                if cp.mac != hex(&row.mac) || cp.event_id != row.event_id {
                    return problem(
                        Some(row.seq),
                        Some(row.event_id),
                        "the chain differs from the checkpoint".into(),
                    );
                }
            }
        }
        self.prev = row.mac;
        self.expected_seq = Some(row.seq + 1);
        self.last = Some((row.seq, row.event_id, row.sealed_at));
        Ok(None)
    }
}

/// Walks the whole chain and reports the first place it was altered, deleted, inserted or
/// reordered. With `checkpoint`, also checks the chain still reaches it unchanged. Then reports
/// the event checks of [`super::integrity`], with `max_unsealed` as the sealing lag bound.
pub async fn verify(
    pool: &PgPool,
    keys: &KeyRing,
    checkpoint: Option<&Checkpoint>,
    max_unsealed: Duration,
) -> Result<Report, SealError> {
    let mut report = Report {
        verified: 0,
        last: None,
        pending: 0,
        problem: None,
        findings: Vec::new(),
    };
    let epoch = store::audit_checks::mac_epoch(pool).await?;
    let anomalies = store::audit_checks::anomalies(pool).await?;
    let mut events = Events {
        keys,
        pages: Pages::spawn(
            pool,
            i64::MIN,
            |e: &AuditRow| e.id,
            |pool, after| async move {
                store::audit_checks::events_after(&pool, after, EVENT_PAGE).await
            },
        ),
        checks: EventChecks::new(epoch),
        held: BTreeMap::new(),
        held_rows: 0,
        read_to: i64::MIN,
        done: false,
    };
    let mut links = Pages::spawn(
        pool,
        0,
        |l: &SealLink| l.seq,
        |pool, after| async move { store::audit_checks::links_after(&pool, after, LINK_PAGE).await },
    );
    let mut chain = Chain {
        keys,
        checkpoint,
        expected_seq: None,
        prev: Vec::new(),
        checkpoint_seen: false,
        last: None,
    };
    while let Some(link) = links.next().await? {
        let event = events.take(pool, link.event_id).await?;
        // After the first problem the links are only matched to their events (for the
        // unsealed checks below), no longer checked.
        if report.problem.is_none() {
            report.problem = chain.step(pool, link, event).await?;
            if report.problem.is_none() {
                report.verified += 1;
            }
        }
    }
    report.last = chain.last.map(|(seq, event_id, sealed_at)| Checkpoint {
        seq,
        event_id,
        sealed_at,
        mac: hex(&chain.prev),
    });
    if report.problem.is_none() {
        if let Some(cp) = checkpoint {
            if !chain.checkpoint_seen {
                let reached = report.last.as_ref().map_or(0, |l| l.seq);
                report.problem = Some(Problem {
                    seq: Some(cp.seq),
                    event_id: Some(cp.event_id),
                    what: format!(
                        "the newest events were deleted: the checkpoint vouches for chain position {} but the chain ends at {reached}",
                        cp.seq
                    ),
                });
            }
        }
    }
    // An event without a seal that is older than the newest seal (beyond the grace period)
    // was inserted behind the sealer's back.
    let cutoff = match (&report.problem, &report.last) {
        (None, Some(last)) => {
            Some(last.sealed_at - chrono::Duration::from_std(SEAL_GRACE).unwrap_or_default())
        }
        _ => None,
    };
    let set_aside: HashSet<i64> = anomalies.iter().map(|a| a.event_id).collect();
    let mut unsealed = Unsealed {
        cutoff,
        set_aside: &set_aside,
        behind: Vec::new(),
        oldest: BinaryHeap::new(),
    };
    for (id, held) in std::mem::take(&mut events.held) {
        let at = match held {
            Held::Row(row) => row.occurred_at,
            Held::Stub(at) => at,
        };
        unsealed.add(id, at);
    }
    while let Some(row) = events.pages.next().await? {
        events.checks.observe(keys, &row);
        unsealed.add(row.id, row.occurred_at);
    }
    let (behind, oldest_unsealed) = unsealed.still_unsealed(pool).await?;
    if let Some(id) = behind {
        report.problem = Some(Problem {
            seq: None,
            event_id: Some(id),
            what: format!("event {id} was inserted into the sealed history without a seal"),
        });
    }
    report.pending = store::seals::pending(pool).await?.0;
    let scanned = Scanned {
        events: events.checks,
        oldest_unsealed,
    };
    report.findings = integrity::check(pool, keys, &anomalies, scanned, max_unsealed).await?;
    Ok(report)
}

/// How many candidates of each unsealed check are kept (they are checked again at the end).
const CANDIDATES: usize = 100;

/// The events left without a seal, fed in id order.
struct Unsealed<'a> {
    cutoff: Option<DateTime<Utc>>,
    set_aside: &'a HashSet<i64>,
    /// The first ones older than the cutoff, in id order.
    behind: Vec<i64>,
    /// The oldest ones the sealer did not set aside (a max-heap: the newest of them on top).
    oldest: BinaryHeap<(DateTime<Utc>, i64)>,
}

impl Unsealed<'_> {
    fn add(&mut self, id: i64, at: DateTime<Utc>) {
        if self.behind.len() < CANDIDATES && self.cutoff.is_some_and(|c| at < c) {
            self.behind.push(id);
        }
        if !self.set_aside.contains(&id) {
            if self.oldest.len() < CANDIDATES {
                self.oldest.push((at, id));
            } else if self.oldest.peek().is_some_and(|top| (at, id) < *top) {
                self.oldest.pop();
                self.oldest.push((at, id));
            }
        }
    }

    /// The first event older than the cutoff and the oldest event that are still without a
    /// seal now (the sealer may have sealed some while the events were read).
    async fn still_unsealed(
        self,
        pool: &PgPool,
    ) -> Result<(Option<i64>, Option<(i64, DateTime<Utc>)>), sqlx::Error> {
        let mut oldest = self.oldest.into_sorted_vec();
        let mut ids: Vec<i64> = oldest.iter().map(|(_, id)| *id).collect();
        ids.extend(&self.behind);
        if ids.is_empty() {
            return Ok((None, None));
        }
        let sealed: HashSet<i64> = store::seals::sealed_among(pool, &ids)
            .await?
            .into_iter()
            .collect();
        let behind = self.behind.into_iter().find(|id| !sealed.contains(id));
        oldest.retain(|(_, id)| !sealed.contains(id));
        Ok((behind, oldest.first().map(|(at, id)| (*id, *at))))
    }
}

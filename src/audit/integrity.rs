//! The checks `audit verify` makes besides walking the seal chain (issue 14, items 1 and 2):
//! every event's own MAC, sealed or not; gaps in each writer's counter not explained by a valid
//! void; what the sealer set aside; queue rows naming missing or already-sealed events; and
//! events left unsealed longer than the bound.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::crypto::KeyRing;
use crate::store::audit::AuditRow;
use crate::store::audit_checks::{self as checks, Gap, Void};
use crate::store::audit_mac::void_mac;

/// At most this many findings of one kind are listed (the count is always given).
const LIST: usize = 20;

/// One thing `verify` found wrong, naming the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub event_id: Option<i64>,
    pub what: String,
}

fn finding(event_id: Option<i64>, what: String) -> Finding {
    Finding { event_id, what }
}

/// What the single pass over the events of `super::verify` found: events failing their own
/// MAC and each writer's counter values seen (see [`EventChecks`]), and the oldest event left
/// without a seal that the sealer did not set aside.
pub struct Scanned {
    pub events: EventChecks,
    pub oldest_unsealed: Option<(i64, DateTime<Utc>)>,
}

/// Runs every check on what the pass found and on the small tables (voids, anomalies, the
/// sealing queue); an empty list means nothing was found.
pub async fn check(
    pool: &sqlx::PgPool,
    keys: &KeyRing,
    anomalies: &[checks::Anomaly],
    scanned: Scanned,
    max_unsealed: Duration,
) -> Result<Vec<Finding>, sqlx::Error> {
    let (mut found, gaps_seen) = scanned.events.finish();
    found.extend(gaps(pool, keys, gaps_seen).await?);
    for a in anomalies.iter().take(LIST) {
        found.push(finding(
            Some(a.event_id),
            format!(
                "the sealer set event {} aside at {} ({}) instead of sealing it",
                a.event_id,
                a.found_at.to_rfc3339(),
                anomaly_text(&a.kind)
            ),
        ));
    }
    for (id, why) in checks::bad_queue_rows(pool).await? {
        let what = match why {
            "missing" => format!("the sealing queue names event {id}, which does not exist"),
            _ => format!("the sealing queue names event {id}, which is already sealed"),
        };
        found.push(finding(Some(id), what));
    }
    if let Some((id, at)) = scanned.oldest_unsealed {
        let age = (Utc::now() - at).to_std().unwrap_or_default();
        if age > max_unsealed {
            found.push(finding(
                Some(id),
                format!(
                    "event {id} has been unsealed for {} s, more than PAYVAULT_AUDIT_MAX_UNSEALED_SECS ({} s): sealing stopped, or the event was inserted behind payvault's back",
                    age.as_secs(),
                    max_unsealed.as_secs()
                ),
            ));
        }
    }
    Ok(found)
}

fn anomaly_text(kind: &str) -> &str {
    match kind {
        "bad_mac" => "its MAC does not verify: forged or modified",
        "no_mac" => "it has no MAC: inserted behind payvault's back",
        "missing_event" => "its queue row named an event that does not exist",
        "unknown_key_version" => "it is MAC'd under a master key version not loaded",
        "already_sealed" => "its queue row named an event that is already sealed",
        other => other,
    }
}

/// The per-event checks, fed every event once (in any order): its own MAC (from the MAC epoch
/// on; missing or not verifying, sealed or not), and its writer counter value, kept as runs of
/// consecutive values per writer so that memory grows with the gaps, not with the log.
pub struct EventChecks {
    epoch: i64,
    bad: u64,
    listed: Vec<Finding>,
    /// Per writer: first value of each run of consecutive values -> last value of the run.
    runs: BTreeMap<Uuid, BTreeMap<i64, i64>>,
}

impl EventChecks {
    pub fn new(epoch: i64) -> Self {
        Self {
            epoch,
            bad: 0,
            listed: Vec::new(),
            runs: BTreeMap::new(),
        }
    }

    pub fn observe(&mut self, keys: &KeyRing, row: &AuditRow) {
        if let (Some(writer), Some(value)) = (row.writer_id, row.writer_seq) {
            add_value(self.runs.entry(writer).or_default(), value);
        }
        if row.id < self.epoch {
            return;
        }
        let problem = match row.mac_valid(keys) {
            Ok(true) => return,
            Ok(false) if row.mac.is_none() => "has no MAC: inserted behind payvault's back",
            Ok(false) => "has a MAC that does not verify: forged, or modified after it was written",
            Err(_) => "is MAC'd under a master key version that is not loaded",
        };
        self.bad += 1;
        if self.listed.len() < LIST {
            let writer = row
                .writer_id
                .map(|w| format!(" (writer {w}, #{})", row.writer_seq.unwrap_or(0)))
                .unwrap_or_default();
            self.listed.push(finding(
                Some(row.id),
                format!("event {}{writer} {problem}", row.id),
            ));
        }
    }

    /// The MAC findings (at most [`LIST`], then the count), and the gaps in writer counters, by
    /// writer and position.
    fn finish(self) -> (Vec<Finding>, Vec<Gap>) {
        let mut listed = self.listed;
        if self.bad as usize > listed.len() {
            listed.push(finding(
                None,
                format!("{} events in all fail their MAC check", self.bad),
            ));
        }
        let mut gaps = Vec::new();
        for (writer_id, runs) in self.runs {
            let mut after = 0;
            for (first, last) in runs {
                if first > after + 1 {
                    gaps.push(Gap {
                        writer_id,
                        after,
                        next: first,
                    });
                }
                after = last;
            }
        }
        (listed, gaps)
    }
}

/// Adds `value` to the runs of consecutive values, merging runs it joins.
fn add_value(runs: &mut BTreeMap<i64, i64>, value: i64) {
    // The usual case: the next value of the newest run.
    if let Some(mut last) = runs.last_entry() {
        if *last.get() + 1 == value {
            *last.get_mut() = value;
            return;
        }
    }
    let below = runs.range(..=value).next_back().map(|(f, l)| (*f, *l));
    if let Some((_, last)) = below {
        if last >= value {
            return; // already seen (the counter is unique, so only a re-read)
        }
    }
    let above = value
        .checked_add(1)
        .and_then(|next| runs.get(&next).map(|l| (next, *l)));
    let first = match below {
        Some((first, last)) if last + 1 == value => first,
        _ => value,
    };
    let last = match above {
        Some((next, last)) => {
            runs.remove(&next);
            last
        }
        None => value,
    };
    runs.insert(first, last);
}

/// Gaps in a writer's counter that no valid void covers: events deleted before they were
/// sealed (or written in a transaction that failed after inserting them; see README).
async fn gaps(
    pool: &sqlx::PgPool,
    keys: &KeyRing,
    gaps: Vec<Gap>,
) -> Result<Vec<Finding>, sqlx::Error> {
    if gaps.is_empty() {
        return Ok(Vec::new());
    }
    let voids: Vec<Void> = checks::voids(pool)
        .await?
        .into_iter()
        .filter(|v| void_valid(keys, v))
        .collect();
    let pruned = checks::pruned(pool).await?;
    let mut found = Vec::new();
    for gap in gaps {
        // A retention prune deletes a writer's oldest events from the start of the chain.
        if gap.after == 0 && pruned {
            continue;
        }
        for (first, last) in unexplained(&gap, &voids) {
            let what = if first == last {
                format!(
                    "event #{first} of writer {} is missing: deleted before it was sealed (between its #{} and #{})",
                    gap.writer_id, gap.after, gap.next
                )
            } else {
                format!(
                    "events #{first} to #{last} of writer {} are missing: deleted before they were sealed (between its #{} and #{})",
                    gap.writer_id, gap.after, gap.next
                )
            };
            if found.len() < LIST {
                found.push(finding(None, what));
            }
        }
    }
    Ok(found)
}

fn void_valid(keys: &KeyRing, v: &Void) -> bool {
    void_mac(keys, v.key_version, v.writer_id, v.first_seq, v.last_seq)
        .map(|mac| subtle::ConstantTimeEq::ct_eq(&mac[..], v.mac.as_slice()).into())
        .unwrap_or(false)
}

/// The parts of `gap` (the values strictly between `after` and `next`) no void of its writer
/// covers, as inclusive ranges.
fn unexplained(gap: &Gap, voids: &[Void]) -> Vec<(i64, i64)> {
    let mut covered: Vec<(i64, i64)> = voids
        .iter()
        .filter(|v| v.writer_id == gap.writer_id)
        .map(|v| (v.first_seq, v.last_seq))
        .collect();
    covered.sort_unstable();
    let mut missing = Vec::new();
    let mut from = gap.after + 1;
    let to = gap.next - 1;
    for (first, last) in covered {
        if last < from || first > to {
            continue;
        }
        if first > from {
            missing.push((from, first - 1));
        }
        from = from.max(last + 1);
    }
    if from <= to {
        missing.push((from, to));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn void(first: i64, last: i64) -> Void {
        Void {
            writer_id: Uuid::nil(),
            first_seq: first,
            last_seq: last,
            key_version: 1,
            mac: Vec::new(),
        }
    }

    #[test]
    fn voids_explain_exactly_the_values_they_cover() {
        let gap = Gap {
            writer_id: Uuid::nil(),
            after: 2,
            next: 10,
        };
        assert_eq!(unexplained(&gap, &[]), vec![(3, 9)]);
        assert_eq!(unexplained(&gap, &[void(3, 9)]), vec![]);
        assert_eq!(
            unexplained(&gap, &[void(4, 5), void(8, 8)]),
            vec![(3, 3), (6, 7), (9, 9)]
        );
        let other = Void {
            writer_id: Uuid::from_u128(1),
            ..void(3, 9)
        };
        assert_eq!(unexplained(&gap, &[other]), vec![(3, 9)]);
    }

    fn gaps_of(values: &[i64]) -> Vec<(i64, i64)> {
        let mut runs = BTreeMap::new();
        for v in values {
            add_value(&mut runs, *v);
        }
        let mut checks = EventChecks::new(i64::MAX);
        checks.runs.insert(Uuid::nil(), runs);
        checks
            .finish()
            .1
            .into_iter()
            .map(|g| (g.after, g.next))
            .collect()
    }

    #[test]
    fn gaps_are_found_whatever_order_the_values_come_in() {
        assert_eq!(gaps_of(&[1, 2, 3, 4]), vec![]);
        assert_eq!(gaps_of(&[4, 2, 1, 3]), vec![]);
        assert_eq!(gaps_of(&[2, 3]), vec![(0, 2)]);
        assert_eq!(gaps_of(&[1, 2, 5, 6, 9]), vec![(2, 5), (6, 9)]);
        assert_eq!(gaps_of(&[9, 1, 6, 2, 5]), vec![(2, 5), (6, 9)]);
        // A value that closes a gap merges the runs on both sides; a repeat changes nothing.
        assert_eq!(gaps_of(&[1, 3, 2, 2, 5, 4]), vec![]);
    }
}

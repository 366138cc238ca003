//! The checks `audit verify` makes besides walking the seal chain (issue 14, items 1 and 2):
//! every event's own MAC, sealed or not; gaps in each writer's counter not explained by a valid
//! void; what the sealer set aside; queue rows naming missing or already-sealed events; and
//! events left unsealed longer than the bound.

use std::time::Duration;

use chrono::Utc;

use crate::crypto::KeyRing;
use crate::store::audit_checks::{self as checks, Gap, Void};
use crate::store::audit_mac::void_mac;

const BATCH: i64 = 1000;
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

/// Runs every check; an empty list means nothing was found.
pub async fn check(
    pool: &sqlx::PgPool,
    keys: &KeyRing,
    max_unsealed: Duration,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut found = bad_macs(pool, keys).await?;
    found.extend(gaps(pool, keys).await?);
    for a in checks::anomalies(pool).await?.into_iter().take(LIST) {
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
    if let Some((id, at)) = checks::oldest_unsealed(pool).await? {
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

/// Events (from the MAC epoch on) whose MAC is missing or does not verify, sealed or not.
async fn bad_macs(pool: &sqlx::PgPool, keys: &KeyRing) -> Result<Vec<Finding>, sqlx::Error> {
    let epoch = checks::mac_epoch(pool).await?;
    let mut after = epoch - 1;
    let (mut bad, mut listed) = (0u64, Vec::new());
    loop {
        let rows = checks::events_after(pool, after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in &rows {
            let problem = match row.mac_valid(keys) {
                Ok(true) => continue,
                Ok(false) if row.mac.is_none() => "has no MAC: inserted behind payvault's back",
                Ok(false) => {
                    "has a MAC that does not verify: forged, or modified after it was written"
                }
                Err(_) => "is MAC'd under a master key version that is not loaded",
            };
            bad += 1;
            if listed.len() < LIST {
                let writer = row
                    .writer_id
                    .map(|w| format!(" (writer {w}, #{})", row.writer_seq.unwrap_or(0)))
                    .unwrap_or_default();
                listed.push(finding(
                    Some(row.id),
                    format!("event {}{writer} {problem}", row.id),
                ));
            }
        }
    }
    if bad as usize > listed.len() {
        listed.push(finding(
            None,
            format!("{bad} events in all fail their MAC check"),
        ));
    }
    Ok(listed)
}

/// Gaps in a writer's counter that no valid void covers: events deleted before they were
/// sealed (or written in a transaction that failed after inserting them; see README).
async fn gaps(pool: &sqlx::PgPool, keys: &KeyRing) -> Result<Vec<Finding>, sqlx::Error> {
    let gaps = checks::writer_gaps(pool).await?;
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
    use uuid::Uuid;

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
}

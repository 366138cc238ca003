//! `audit list` / `GET /v1/audit/events` stay exact whatever plan the query takes: every
//! matching event, each once, through the id cursor, in time order `(occurred_at, id)` for a
//! time range without token or transaction id and in id order otherwise, for each filter shape
//! the indexes of issue 17 item 4 serve (by token, by transaction id, by time range, by tenant,
//! and their combinations), with events whose time is out of id order (held while sealed) and
//! events sharing a time; and a time range's cursor must be an event the caller may see.

use chrono::{DateTime, Duration, Utc};
use payvault::auth::{admin, tenants, CredentialKind, Scope};
use payvault::domain::{AuditEvent, DEFAULT_TENANT};
use payvault::store::audit::{
    insert_audit_events, list_audit_events, AuditBatch, AuditFilter, ListError,
};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// What each filter compares against, read for every event in the table.
#[derive(Debug, sqlx::FromRow)]
struct Seen {
    id: i64,
    occurred_at: DateTime<Utc>,
    token: Option<String>,
    transaction_id: Option<String>,
    tenant_id: Uuid,
}

fn matches(filter: &AuditFilter, e: &Seen) -> bool {
    filter.since.is_none_or(|s| e.occurred_at >= s)
        && filter.until.is_none_or(|u| e.occurred_at < u)
        && filter
            .token
            .as_ref()
            .is_none_or(|t| e.token.as_ref() == Some(t))
        && filter
            .transaction_id
            .as_ref()
            .is_none_or(|t| e.transaction_id.as_ref() == Some(t))
        && filter.tenant.is_none_or(|t| e.tenant_id == t)
}

/// Every page of `filter` at page size `limit`, concatenated (the ids).
async fn all_pages(app: &TestApp, filter: &AuditFilter, limit: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = list_audit_events(app.pool(), filter, after, limit)
            .await
            .unwrap();
        assert!(page.len() as i64 <= limit);
        ids.extend(page.iter().map(|r| r.id));
        match page.last() {
            Some(last) if page.len() as i64 == limit => after = last.id,
            _ => return ids,
        }
    }
}

/// The ids of the events matching `filter`, in the order the listing promises.
fn expected_ids(seen: &[Seen], filter: &AuditFilter) -> Vec<i64> {
    let mut matching: Vec<&Seen> = seen.iter().filter(|e| matches(filter, e)).collect();
    if filter.time_ordered() {
        matching.sort_by_key(|e| (e.occurred_at, e.id));
    } else {
        matching.sort_by_key(|e| e.id);
    }
    matching.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn every_filter_shape_returns_exactly_the_matching_events_in_its_order() {
    let app = spawn_app().await;
    let other = tenants::create_tenant(app.pool(), &app.signer, "brand-x")
        .await
        .unwrap()
        .id;
    // 150 events in 10 batches; a third of them stamped minutes before their neighbours, as
    // events held while sealed are (their id comes later than their time says).
    // In microseconds, as stored (and as a bound is sent): a bound in nanoseconds would be
    // compared here more finely than PostgreSQL compares it.
    let base =
        DateTime::from_timestamp_micros((Utc::now() - Duration::hours(1)).timestamp_micros())
            .unwrap();
    let mut events = Vec::new();
    for i in 0..150i64 {
        let mut e = AuditEvent::operator("list_test");
        if i % 4 != 3 {
            e = e.with_token(&format!("tok_list_{}", i % 5));
        }
        if i % 3 != 0 {
            e.transaction_id = Some(format!("txn_{}", i % 7));
        }
        e.tenant_id = Some(if i % 2 == 0 { other } else { DEFAULT_TENANT });
        let at = if i % 3 == 1 {
            base + Duration::seconds(i) - Duration::minutes(5)
        } else if i % 10 == 5 {
            // The time of the event before it (as events of one batch share theirs).
            events.last().map(|(_, at)| *at).unwrap()
        } else {
            base + Duration::seconds(i)
        };
        events.push((e, at));
    }
    // Gaps in the ids (as rolled-back inserts leave), wider than the ids a time-range query
    // first reads after its cursor, so pages are also assembled across that boundary.
    let seq: String = sqlx::query_scalar("SELECT pg_get_serial_sequence('audit_events', 'id')")
        .fetch_one(app.pool())
        .await
        .unwrap();
    for (n, chunk) in events.chunks(15).enumerate() {
        if n % 3 == 1 {
            sqlx::query("SELECT setval($1::regclass, nextval($1::regclass) + 4000)")
                .bind(&seq)
                .execute(app.pool())
                .await
                .unwrap();
        }
        let batch = AuditBatch::at(&app.signer, chunk.iter().map(|(e, at)| (e, *at))).unwrap();
        insert_audit_events(app.pool(), &batch).await.unwrap();
    }
    let seen: Vec<Seen> = sqlx::query_as(
        "SELECT id, occurred_at, token, transaction_id, tenant_id FROM audit_events ORDER BY id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert!(seen.len() >= 150);
    assert!(
        seen.last().unwrap().id > 10_000,
        "the ids span several probe widths"
    );

    let t = |s: i64| Some(base + Duration::seconds(s));
    let filters = [
        AuditFilter::default(),
        AuditFilter {
            token: Some("tok_list_2".into()),
            ..Default::default()
        },
        AuditFilter {
            token: Some("tok_nobody".into()),
            ..Default::default()
        },
        AuditFilter {
            transaction_id: Some("txn_3".into()),
            ..Default::default()
        },
        // A range that out-of-order events fall into from later ids, and one they leave.
        AuditFilter {
            since: t(-200),
            until: t(40),
            ..Default::default()
        },
        AuditFilter {
            since: t(60),
            ..Default::default()
        },
        AuditFilter {
            until: t(20),
            ..Default::default()
        },
        AuditFilter {
            tenant: Some(other),
            ..Default::default()
        },
        AuditFilter {
            since: t(-250),
            until: t(100),
            tenant: Some(other),
            ..Default::default()
        },
        AuditFilter {
            since: t(-400),
            tenant: Some(DEFAULT_TENANT),
            ..Default::default()
        },
        AuditFilter {
            token: Some("tok_list_1".into()),
            tenant: Some(DEFAULT_TENANT),
            ..Default::default()
        },
        AuditFilter {
            token: Some("tok_list_4".into()),
            since: t(10),
            until: t(120),
            ..Default::default()
        },
        AuditFilter {
            transaction_id: Some("txn_5".into()),
            since: t(-300),
            tenant: Some(other),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let expected = expected_ids(&seen, filter);
        // Several page sizes (1 walks the cursor through every match), each more than five
        // times on the pool's connections, where a reused prepared statement would have gone
        // to a generic plan.
        for limit in [1, 7, 1000] {
            for _ in 0..6 {
                let got = all_pages(&app, filter, limit).await;
                assert_eq!(got, expected, "filter {filter:?}, page size {limit}");
                if limit == 1 {
                    break;
                }
            }
        }
        // A cursor in the middle of the matches: the rest, from the one after it.
        if let Some(&mid) = expected.get(expected.len() / 2) {
            let rest = list_audit_events(app.pool(), filter, mid, 1000)
                .await
                .unwrap();
            let rest: Vec<i64> = rest.iter().map(|r| r.id).collect();
            assert_eq!(
                rest,
                expected[expected.len() / 2 + 1..],
                "filter {filter:?}"
            );
        }
    }
    // The test means something: the filters select different, non-empty sets, and a time
    // range's order is not its id order (events held while sealed, and ties on the time).
    let by_token = seen.iter().filter(|e| matches(&filters[1], e)).count();
    let by_range = seen.iter().filter(|e| matches(&filters[4], e)).count();
    assert!(by_token > 0 && by_token < seen.len() && by_range > 0 && by_range < seen.len());
    let in_time = expected_ids(&seen, &filters[4]);
    let mut in_id = in_time.clone();
    in_id.sort_unstable();
    assert_ne!(in_time, in_id);
    let mut times: Vec<_> = seen.iter().map(|e| e.occurred_at).collect();
    times.sort_unstable();
    assert!(
        times.windows(2).any(|w| w[0] == w[1]),
        "events share a time"
    );

    // A cursor before the range (its time under `since`): the whole range after it.
    let early = seen
        .iter()
        .find(|e| e.occurred_at < base + Duration::seconds(60))
        .unwrap();
    let got = list_audit_events(app.pool(), &filters[5], early.id, 1000)
        .await
        .unwrap();
    let got: Vec<i64> = got.iter().map(|r| r.id).collect();
    assert_eq!(got, expected_ids(&seen, &filters[5]));

    // A time range's cursor is looked up with the tenant filter: another tenant's event, or no
    // event at all, is refused alike; id-ordered listings take any id, as before.
    let ranged = AuditFilter {
        since: t(-400),
        tenant: Some(other),
        ..Default::default()
    };
    let foreign = seen
        .iter()
        .find(|e| e.tenant_id == DEFAULT_TENANT)
        .unwrap()
        .id;
    let own = seen.iter().find(|e| e.tenant_id == other).unwrap().id;
    let unknown = seen.last().unwrap().id + 1_000_000;
    for cursor in [foreign, unknown] {
        let got = list_audit_events(app.pool(), &ranged, cursor, 10).await;
        assert!(
            matches!(got, Err(ListError::UnknownCursor)),
            "cursor {cursor}: {got:?}"
        );
    }
    assert!(list_audit_events(app.pool(), &ranged, own, 10)
        .await
        .is_ok());
    let by_id = AuditFilter {
        tenant: Some(other),
        ..Default::default()
    };
    assert!(list_audit_events(app.pool(), &by_id, unknown, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_api_refuses_another_tenants_cursor_as_an_unknown_one() {
    let app = spawn_app().await;
    let brand = tenants::create_tenant(app.pool(), &app.signer, "brand-y")
        .await
        .unwrap();
    let reader = admin::create_credential_in(
        app.pool(),
        &app.signer,
        brand.id,
        "brand-y-auditor",
        CredentialKind::Api,
        Some(vec![Scope::AuditRead]),
    )
    .await
    .unwrap();
    let get = |q: String| {
        let req = app
            .client
            .get(app.url(&format!("/v1/audit/events{q}")))
            .basic_auth(&reader.row.username, Some(reader.secret.expose()));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let since = "since=2000-01-01";
    // Brand-y's own events so far: its creation and its credential's (operator events on it).
    let (status, page) = get(format!("?{since}&limit=1")).await;
    assert_eq!(status, 200, "{page}");
    let own = page["next_cursor"].as_str().unwrap().to_owned();
    let (status, page) = get(format!("?{since}&cursor={own}")).await;
    assert_eq!(status, 200, "{page}");
    let foreign: i64 = sqlx::query_scalar(
        "SELECT max(id) FROM audit_events WHERE tenant_id = '00000000-0000-0000-0000-000000000001'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    let (status, refused) = get(format!("?{since}&cursor={foreign}")).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_cursor");
    let (status, unknown) = get(format!("?{since}&cursor={}", foreign + 1_000_000)).await;
    assert_eq!(status, 400);
    let (status, unparsed) = get(format!("?{since}&cursor=x")).await;
    assert_eq!(status, 400);
    assert_eq!(refused, unknown);
    assert_eq!(refused, unparsed);
    // Without a time range the order is by id and any cursor is taken, as before.
    let (status, _) = get(format!("?cursor={foreign}")).await;
    assert_eq!(status, 200);
}

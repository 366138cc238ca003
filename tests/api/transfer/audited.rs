//! The audit events of `import` and `export`: written by the command's own writer and MAC'd
//! (the `import_row` events of `--audit-each-row` inside each batch's transaction), one
//! `import_row` per row a run actually vaulted, and a log that verifies once sealed.

use super::support::*;
use crate::helpers::{self, test_keys, TestDb};
use payvault::audit::seal;
use payvault::transfer::export::{export, ExportOptions, Selection};
use payvault::transfer::{import, Format, ImportSummary, Preset};

#[tokio::test]
async fn import_and_export_events_are_macd_per_writer_and_the_log_verifies() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let who = credential(&db, &keys).await;
    let dir = TempDir::new();
    // Row 4 fails the Luhn check. The first run sees the first 10 rows, the second all 20.
    let full = cards(Preset::Generic, Format::Csv, 20, Some(4), 9_000);
    let part: String = full.lines().take(11).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path("part.csv"), part).unwrap();
    std::fs::write(dir.path("all.csv"), &full).unwrap();
    let mut summaries = Vec::new();
    for (input, result) in [("part.csv", "r1"), ("all.csv", "r2")] {
        let mut opts = options(
            dir.path(input),
            dir.path(result),
            Preset::Generic,
            Format::Csv,
            who,
        );
        opts.audit_each_row = true;
        let summary = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
            .await
            .unwrap();
        summaries.push(summary);
    }
    assert_eq!(
        summaries,
        [
            ImportSummary {
                imported: 9,
                refused: 1,
                ..Default::default()
            },
            ImportSummary {
                imported: 10,
                already_imported: 9,
                refused: 1,
                ..Default::default()
            }
        ]
    );
    // One import_row per vaulted row: none for the rows the second run found already imported.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE action = 'import_row'"
        )
        .await,
        19
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(DISTINCT token) FROM audit_events WHERE action = 'import_row'"
        )
        .await,
        count(&db.pool, "SELECT count(*) FROM import_sources").await
    );
    // Each run's row events are its own writer's, the writer of its import_started.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events r WHERE r.action = 'import_row' AND NOT EXISTS \
             (SELECT 1 FROM audit_events s WHERE s.action = 'import_started' \
              AND s.writer_id = r.writer_id)"
        )
        .await,
        0
    );

    let recipient = curve25519_key();
    let exported = export(
        &db.pool,
        keys.clone(),
        &audit_log(&db.pool, &keys),
        ExportOptions {
            selection: Selection::All,
            recipient: payvault::transfer::pgp::Recipient::new(public(&recipient)).unwrap(),
            out: dir.path("out.pgp"),
            batch_size: 6,
        },
    )
    .await
    .unwrap();
    assert_eq!(exported.exported, 19);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(DISTINCT writer_id) FROM audit_events \
             WHERE action LIKE 'import%' OR action LIKE 'export%'"
        )
        .await,
        3,
        "two imports and one export, a writer each"
    );

    // Every event's MAC checks out and no writer's counter has a gap.
    helpers::seal_all(&db.pool, &keys).await;
    let report = seal::verify(&db.pool, &keys, None, helpers::MAX_UNSEALED)
        .await
        .unwrap();
    assert!(report.intact(), "{report}");
    assert_eq!(
        report.verified as i64,
        count(&db.pool, "SELECT count(*) FROM audit_events").await,
        "{report}"
    );
}

//! `payvault import` and `payvault export` (issue 17): presets, plain and OpenPGP input,
//! refusals by line, resuming without duplicates, the export/import round trip, the recipient
//! key policy, and leak scans of the database, logs, result files and temporary files.

use std::collections::HashMap;

use crate::helpers::{
    assert_no_leaks, captured_logs, contains_word, test_keys, RuntimeRole, TestDb,
};
use payvault::transfer::export::{export, ExportOptions, Selection};
use payvault::transfer::pgp::{DecryptKey, Recipient};
use payvault::transfer::{import, Format, ImportSummary, Preset};
use pgp::composed::{KeyType, SecretKeyParamsBuilder};
use pgp::crypto::ecc_curve::ECCCurve;
use serde_json::Value;

mod audited;
mod process;
mod support;
mod tenants;

use support::*;

#[tokio::test]
async fn every_preset_imports_plain_and_pgp_files_and_reports_a_bad_row_by_line() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let who = credential(&db, &keys).await;
    let dir = TempDir::new();
    let key = curve25519_key();
    save_secret_key(&key, &dir.path("operator.key"));
    let mut seed = 1_000;
    let mut expected = 0;
    for preset in [Preset::Generic, Preset::Stripe, Preset::Braintree] {
        for format in [Format::Csv, Format::Jsonl] {
            for encrypted in [false, true] {
                seed += 100;
                let text = cards(preset, format, 20, Some(9), seed);
                let input = dir.path(&format!("in-{seed}"));
                if encrypted {
                    encrypt_to(&key, &text, &input);
                } else {
                    std::fs::write(&input, &text).unwrap();
                }
                let result = dir.path(&format!("in-{seed}.result"));
                let mut opts = options(input, result.clone(), preset, format, who);
                opts.source = format!("src-{seed}");
                if encrypted {
                    opts.decrypt = Some(DecryptKey::load(&dir.path("operator.key"), None).unwrap());
                }
                let summary = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
                    .await
                    .unwrap();
                let case = format!("{preset:?} {format:?} encrypted={encrypted}");
                assert_eq!(
                    summary,
                    ImportSummary {
                        imported: 19,
                        refused: 1,
                        ..Default::default()
                    },
                    "{case}"
                );
                expected += 19;
                let lines = read_result(&result);
                assert_eq!(lines.len(), 20, "{case}");
                let refused: Vec<&Value> =
                    lines.iter().filter(|l| l["status"] == "refused").collect();
                assert_eq!(refused.len(), 1, "{case}");
                // Row 9 is line 11 of a CSV (after the header), line 10 of JSON lines.
                let line = if format == Format::Csv { 11 } else { 10 };
                assert_eq!(refused[0]["line"], line, "{case}");
                assert_eq!(
                    refused[0]["error_code"], "invalid_card_number_checksum",
                    "{case}"
                );
                assert_eq!(refused[0]["source_id"], format!("src_{seed}_9"), "{case}");
                let ok = lines.iter().find(|l| l["status"] == "imported").unwrap();
                assert_eq!(ok["brand"], "visa", "{case}");
                assert_eq!(ok["exp_month"], 8, "{case}");
                assert_eq!(ok["fingerprint"].as_str().unwrap().len(), 64, "{case}");
                assert!(ok["token"].as_str().unwrap().starts_with("tok_"), "{case}");
            }
        }
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM vault_entries").await,
        expected
    );
    // The stored card is the one in the file, sealed as tokenize seals it.
    let all = decrypted(&db.pool, &keys).await;
    let token: String = sqlx::query_scalar(
        "SELECT token FROM import_sources WHERE source = 'src-1100' AND source_id = 'src_1100_3'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (payload, m, y) = &all[&token];
    assert_eq!(&payload[2..], pan(1103).as_bytes());
    assert_eq!((*m, *y), (Some(8), Some(2031)));

    // The whole import is audited, not each row.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE action = 'import_started'"
        )
        .await,
        12
    );
    let finished: Value = sqlx::query_scalar(
        "SELECT details FROM audit_events WHERE action = 'import_finished' ORDER BY id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(finished["counts"]["imported"], 19, "{finished}");
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM audit_events WHERE action = 'import_row'"
        )
        .await,
        0
    );

    let pans: Vec<String> = (0..20).map(|i| pan(1100 + i)).collect();
    let pan_refs: Vec<&str> = pans.iter().map(String::as_str).collect();
    assert_no_leaks(&db.pool, &pan_refs, &["737"], &captured_logs()).await;
    let files: String = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".result"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    for p in &pans {
        assert!(!files.contains(p.as_str()), "a PAN is in a result file");
    }
    assert!(!contains_word(&files, "737"), "the CVV is in a result file");
}

#[tokio::test]
async fn malformed_rows_are_refused_by_line_without_their_values_and_the_rest_imported() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let who = credential(&db, &keys).await;
    let dir = TempDir::new();
    let input = dir.path("in.csv");
    std::fs::write(
        &input,
        format!(
            "source_id,number,exp_month,exp_year,routing_number,account_number\n\
             a,{},12,2030,,\n\
             b,{},12,2020,,\n\
             c,{},12\n\
             d,,,,121000358,123456789\n\
             {},{},12,2030,,\n\
             e,{},12,2030,,\n\
             a,{},12,2030,,\n",
            pan(1),
            pan(2),
            pan(6),
            pan(3),
            pan(3),
            pan(4),
            pan(5)
        ),
    )
    .unwrap();
    let result = dir.path("out");
    let summary = import(
        &db.pool,
        keys.clone(),
        &audit_log(&db.pool, &keys),
        options(input, result.clone(), Preset::Generic, Format::Csv, who),
    )
    .await
    .unwrap();
    let lines = read_result(&result);
    let by_line: HashMap<u64, &Value> = lines
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l))
        .collect();
    assert_eq!(by_line[&2]["status"], "imported");
    assert_eq!(by_line[&3]["error_code"], "card_expired");
    let broken = lines
        .iter()
        .find(|l| l["error_code"] == "malformed_csv")
        .expect("the broken row is reported");
    assert!(broken["line"].as_u64().unwrap() >= 4, "{broken}");
    assert!(lines
        .iter()
        .any(|l| l["error_code"] == "card_number_in_source_id"));
    assert!(lines.iter().any(|l| l["source_id"] == "d"
        && l["status"] == "imported"
        && l["kind"] == "bank_account"));
    let dup = lines
        .iter()
        .find(|l| l["error_code"] == "duplicate_source_id")
        .unwrap();
    assert!(dup["error"].as_str().unwrap().contains("line 2"), "{dup}");
    let text = std::fs::read_to_string(&result).unwrap();
    for n in 1..=6 {
        assert!(!text.contains(&pan(n)), "a PAN is in the result file");
    }
    assert!(
        !text.contains("123456789"),
        "the account number is in the result file"
    );
    assert_eq!(summary.imported, 3, "{summary:?} {text}");
}

#[tokio::test]
async fn an_interrupted_import_resumes_without_duplicates() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let who = credential(&db, &keys).await;
    let dir = TempDir::new();
    let full = cards(Preset::Generic, Format::Jsonl, 50, None, 7_000);
    // The first run dies after 30 rows were committed: as if it had read only this far.
    let prefix: String = full.lines().take(30).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path("part.jsonl"), prefix).unwrap();
    std::fs::write(dir.path("all.jsonl"), &full).unwrap();
    let first = import(
        &db.pool,
        keys.clone(),
        &audit_log(&db.pool, &keys),
        options(
            dir.path("part.jsonl"),
            dir.path("r1"),
            Preset::Generic,
            Format::Jsonl,
            who,
        ),
    )
    .await
    .unwrap();
    assert_eq!(first.imported, 30);
    let first_tokens: HashMap<String, String> = read_result(&dir.path("r1"))
        .into_iter()
        .map(|l| {
            (
                l["source_id"].as_str().unwrap().to_owned(),
                l["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let second = import(
        &db.pool,
        keys.clone(),
        &audit_log(&db.pool, &keys),
        options(
            dir.path("all.jsonl"),
            dir.path("r2"),
            Preset::Generic,
            Format::Jsonl,
            who,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        second,
        ImportSummary {
            imported: 20,
            already_imported: 30,
            ..Default::default()
        }
    );
    for l in read_result(&dir.path("r2")) {
        if l["status"] == "already_imported" {
            assert_eq!(
                first_tokens[l["source_id"].as_str().unwrap()],
                l["token"],
                "{l}"
            );
        }
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM vault_entries").await,
        50
    );
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT token) FROM import_sources").await,
        50
    );
}

#[tokio::test]
async fn export_then_import_into_a_fresh_vault_gives_the_same_cards() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let (keys_a, keys_b) = (test_keys(), test_keys());
    let (who_a, who_b) = (credential(&a, &keys_a).await, credential(&b, &keys_b).await);
    let dir = TempDir::new();
    let mut text =
        String::from("source_id,number,exp_month,exp_year,routing_number,account_number\n");
    for i in 0..40 {
        text.push_str(&format!("c{i},{},8,2031,,\n", pan(50_000 + i)));
    }
    text.push_str("bank_1,,,,121000358,000123456789\n");
    std::fs::write(dir.path("in.csv"), text).unwrap();
    let mut opts = options(
        dir.path("in.csv"),
        dir.path("r-a"),
        Preset::Generic,
        Format::Csv,
        who_a,
    );
    opts.network_transaction_issuer = Some("stripe".into());
    let summary = import(&a.pool, keys_a.clone(), &audit_log(&a.pool, &keys_a), opts)
        .await
        .unwrap();
    assert_eq!(
        summary.imported,
        41,
        "{summary:?} {}",
        std::fs::read_to_string(dir.path("r-a")).unwrap()
    );
    sqlx::query("UPDATE vault_entries SET network_transaction_id = 'NTID-7' WHERE token = (SELECT min(token) FROM vault_entries WHERE kind = 'card')")
        .execute(&a.pool)
        .await
        .unwrap();

    let operator_key = curve25519_key();
    save_secret_key(&operator_key, &dir.path("b.key"));
    let exported = export(
        &a.pool,
        keys_a.clone(),
        &audit_log(&a.pool, &keys_a),
        ExportOptions {
            selection: Selection::All,
            recipient: Recipient::new(public(&operator_key)).unwrap(),
            out: dir.path("export.pgp"),
            batch_size: 9,
        },
    )
    .await
    .unwrap();
    assert_eq!(exported.exported, 41);
    // The export is audited before the first card is decrypted, and at its end.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE action LIKE 'export%' ORDER BY id",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(actions, ["export_started", "export_finished"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path("export.pgp"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // An existing file is never overwritten.
    let again = export(
        &a.pool,
        keys_a.clone(),
        &audit_log(&a.pool, &keys_a),
        ExportOptions {
            selection: Selection::All,
            recipient: Recipient::new(public(&operator_key)).unwrap(),
            out: dir.path("export.pgp"),
            batch_size: 9,
        },
    )
    .await;
    assert!(again.is_err());

    let mut opts = options(
        dir.path("export.pgp"),
        dir.path("r-b"),
        Preset::Generic,
        Format::Jsonl,
        who_b,
    );
    opts.decrypt = Some(DecryptKey::load(&dir.path("b.key"), None).unwrap());
    let summary = import(&b.pool, keys_b.clone(), &audit_log(&b.pool, &keys_b), opts)
        .await
        .unwrap();
    assert_eq!(summary.imported, 41, "{summary:?}");

    let (old, new) = (
        decrypted(&a.pool, &keys_a).await,
        decrypted(&b.pool, &keys_b).await,
    );
    let mapping: Vec<(String, String)> =
        sqlx::query_as("SELECT source_id, token FROM import_sources")
            .fetch_all(&b.pool)
            .await
            .unwrap();
    assert_eq!(mapping.len(), 41);
    for (old_token, new_token) in &mapping {
        assert_eq!(old[old_token], new[new_token], "{old_token}");
    }
    let ntids: i64 = count(
        &b.pool,
        "SELECT count(*) FROM vault_entries WHERE network_transaction_id = 'NTID-7'",
    )
    .await;
    assert_eq!(ntids, 1);

    let pans: Vec<String> = (0..40).map(|i| pan(50_000 + i)).collect();
    let mut secrets: Vec<&str> = pans.iter().map(String::as_str).collect();
    secrets.push("000123456789");
    let logs = captured_logs();
    assert_no_leaks(&a.pool, &secrets, &[], &logs).await;
    assert_no_leaks(&b.pool, &secrets, &[], &logs).await;
    // Nothing written to disk holds a card in clear but the test's own input.
    std::fs::remove_file(dir.path("in.csv")).unwrap();
    let on_disk = dir.all_text();
    for secret in &secrets {
        assert!(!on_disk.contains(secret), "{secret} is on disk");
    }
}

#[tokio::test]
async fn weak_or_obsolete_recipient_keys_are_refused_with_the_reason() {
    let rsa_2048 = key_with(KeyType::Rsa(2048), KeyType::Rsa(2048));
    let err = Recipient::new(public(&rsa_2048)).unwrap_err().to_string();
    assert!(
        err.contains("RSA of 2048 bits") && err.contains("3072"),
        "{err}"
    );
    let nist = key_with(
        KeyType::ECDSA(ECCCurve::P256),
        KeyType::ECDH(ECCCurve::P256),
    );
    let err = Recipient::new(public(&nist)).unwrap_err().to_string();
    assert!(err.contains("Curve25519"), "{err}");
    let no_encryption = {
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("Sign Only <s@example.com>".into());
        params
            .build()
            .unwrap()
            .generate(aes_gcm::aead::OsRng)
            .unwrap()
    };
    let err = Recipient::new(public(&no_encryption))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption key"), "{err}");
    assert!(Recipient::new(public(&curve25519_key())).is_ok());
}

#[tokio::test]
async fn with_dedup_a_card_already_vaulted_maps_to_its_token() {
    let db = TestDb::new().await;
    let keys = test_keys();
    let who = credential(&db, &keys).await;
    let dir = TempDir::new();
    let same = pan(77);
    std::fs::write(
        dir.path("in.csv"),
        format!("source_id,number,exp_month,exp_year\nx1,{same},1,2031\nx2,{same},2,2032\n"),
    )
    .unwrap();
    let mut opts = options(
        dir.path("in.csv"),
        dir.path("r1"),
        Preset::Generic,
        Format::Csv,
        who,
    );
    opts.dedup = true;
    let first = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
        .await
        .unwrap();
    assert_eq!((first.imported, first.deduplicated), (1, 1));
    std::fs::write(
        dir.path("in2.csv"),
        format!("source_id,number,exp_month,exp_year\ny1,{same},1,2031\n"),
    )
    .unwrap();
    let mut opts = options(
        dir.path("in2.csv"),
        dir.path("r2"),
        Preset::Generic,
        Format::Csv,
        who,
    );
    opts.dedup = true;
    opts.source = "other".into();
    let second = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
        .await
        .unwrap();
    assert_eq!(second.deduplicated, 1);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM vault_entries").await,
        1
    );
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT token) FROM import_sources").await,
        1
    );
}

#[tokio::test]
async fn the_runtime_role_may_record_imports_but_never_rewrite_or_forget_one() {
    let db = TestDb::new().await;
    let role = RuntimeRole::new(&db).await;
    let rt = role.pool().await;
    for sql in ["SELECT count(*) FROM import_sources"] {
        sqlx::query(sql).execute(&rt).await.unwrap();
    }
    for sql in [
        "UPDATE import_sources SET token = token",
        "DELETE FROM import_sources",
        "TRUNCATE import_sources",
    ] {
        let err = sqlx::query(sql).execute(&rt).await.unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{sql}: {err}"
        );
    }
}

//! Import and export with tenants (issues 15 and 17): an import vaults into the tenant of the
//! credential it runs as, and `export --tenant` writes that tenant's cards and no other's.

use payvault::auth::{admin, tenants, CredentialKind};
use payvault::transfer::export::{export, ExportOptions, Selection};
use payvault::transfer::pgp::{DecryptKey, Recipient};
use payvault::transfer::{import, Format, Preset};

use super::support::*;
use crate::helpers::{signer_for, test_keys, TestDb};

#[tokio::test]
async fn an_import_lands_in_its_credentials_tenant_and_export_by_tenant_writes_only_that_tenants_cards(
) {
    let (db, fresh) = (TestDb::new().await, TestDb::new().await);
    let (keys, fresh_keys) = (test_keys(), test_keys());
    let signer = signer_for(&keys);
    let brand_b = tenants::create_tenant(&db.pool, &signer, "brand-b")
        .await
        .unwrap();
    let who_default = credential(&db, &keys).await;
    let who_b = admin::create_credential_in(
        &db.pool,
        &signer,
        brand_b.id,
        "importer-b",
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap()
    .row
    .id;
    let dir = TempDir::new();

    // Five cards into the default tenant, three (other numbers) into brand-b.
    std::fs::write(
        dir.path("default.csv"),
        cards(Preset::Generic, Format::Csv, 5, None, 70_000),
    )
    .unwrap();
    std::fs::write(
        dir.path("b.csv"),
        cards(Preset::Generic, Format::Csv, 3, None, 80_000),
    )
    .unwrap();
    let opts = options(
        dir.path("default.csv"),
        dir.path("r-default"),
        Preset::Generic,
        Format::Csv,
        who_default,
    );
    let done = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
        .await
        .unwrap();
    assert_eq!(done.imported, 5, "{done:?}");
    let mut opts = options(
        dir.path("b.csv"),
        dir.path("r-b"),
        Preset::Generic,
        Format::Csv,
        who_b,
    );
    opts.tenant_id = brand_b.id;
    opts.source = "brand-b-source".into();
    let done = import(&db.pool, keys.clone(), &audit_log(&db.pool, &keys), opts)
        .await
        .unwrap();
    assert_eq!(done.imported, 3, "{done:?}");
    let in_b = count(
        &db.pool,
        &format!(
            "SELECT count(*) FROM vault_entries WHERE tenant_id = '{}' AND created_by = '{who_b}'",
            brand_b.id
        ),
    )
    .await;
    assert_eq!(in_b, 3);

    // Export brand-b only.
    let operator_key = curve25519_key();
    save_secret_key(&operator_key, &dir.path("op.key"));
    let exported = export(
        &db.pool,
        keys.clone(),
        &audit_log(&db.pool, &keys),
        ExportOptions {
            selection: Selection::Tenant(brand_b.id),
            recipient: Recipient::new(public(&operator_key)).unwrap(),
            out: dir.path("b.pgp"),
            batch_size: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(exported.exported, 3);

    // Imported into a fresh vault, the export holds exactly brand-b's cards.
    let who_fresh = credential(&fresh, &fresh_keys).await;
    let mut opts = options(
        dir.path("b.pgp"),
        dir.path("r-fresh"),
        Preset::Generic,
        Format::Jsonl,
        who_fresh,
    );
    opts.decrypt = Some(DecryptKey::load(&dir.path("op.key"), None).unwrap());
    let done = import(
        &fresh.pool,
        fresh_keys.clone(),
        &audit_log(&fresh.pool, &fresh_keys),
        opts,
    )
    .await
    .unwrap();
    assert_eq!(done.imported, 3, "{done:?}");
    let b_tokens: Vec<String> =
        sqlx::query_scalar("SELECT token FROM vault_entries WHERE tenant_id = $1")
            .bind(brand_b.id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let source = decrypted(&db.pool, &keys).await;
    let mut expected: Vec<_> = b_tokens.iter().map(|t| source[t].clone()).collect();
    let mut got: Vec<_> = decrypted(&fresh.pool, &fresh_keys)
        .await
        .into_values()
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // And none of the default tenant's.
    let default_numbers: Vec<String> = (0..5).map(|i| pan(70_000 + i)).collect();
    for (payload, _, _) in &got {
        let text = String::from_utf8_lossy(payload);
        for number in &default_numbers {
            assert!(!text.contains(number.as_str()));
        }
    }
}

//! A tenant with a processor of its own charges through it; every other tenant through the
//! deployment's.

use std::sync::Arc;

use payvault::auth::admin;
use payvault::auth::{tenants, CredentialKind};
use payvault::config::ProcessorConfig;

use crate::helpers::{
    card_charge, new_txn, signer_for, spawn_app_opts, test_keys, Options, TestDb,
};

#[tokio::test]
async fn a_tenant_with_its_own_processor_charges_through_it_and_the_others_through_the_deployments()
{
    let db = Arc::new(TestDb::new().await);
    // Chosen before the start (instances read the choice when they start); the deployment has
    // no processor at all.
    let keys = test_keys();
    let signer = signer_for(&keys);
    let b = tenants::create_tenant(&db.pool, &signer, "brand-b")
        .await
        .unwrap();
    let row = tenants::set_tenant_processor(
        &db.pool,
        &signer,
        "brand-b",
        Some(("sandbox", "PAYVAULT_TENANT_BRAND_B")),
    )
    .await
    .unwrap();
    assert_eq!(row.processor.as_deref(), Some("sandbox"));
    let opts = Options {
        processor: ProcessorConfig::None,
        ..Default::default()
    };
    let app = spawn_app_opts(db.clone(), keys, opts).await;
    let b_twilio = admin::create_credential_in(
        app.pool(),
        &app.signer,
        b.id,
        "b-twilio",
        CredentialKind::Connector,
        None,
    )
    .await
    .unwrap();

    let (_, ours) = app
        .post_as(
            &b_twilio,
            "/",
            &card_charge(&new_txn(), "4111111111111111", "10.00"),
        )
        .await;
    assert!(ours["charge_id"].is_string(), "{ours}");
    let (_, deployments) = app
        .post("/", &card_charge(&new_txn(), "4111111111111111", "10.00"))
        .await;
    assert_eq!(
        deployments["error_code"], "processor_not_configured",
        "{deployments}"
    );

    // A choice payvault cannot use is refused when made, naming the rule.
    for (processor, prefix) in [("paypal", "PAYVAULT_TENANT_B"), ("stripe", "STRIPE_KEY")] {
        let refused = tenants::set_tenant_processor(
            app.pool(),
            &app.signer,
            "brand-b",
            Some((processor, prefix)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(refused, tenants::TenantError::InvalidProcessor(_)),
            "{refused}"
        );
    }
    let cleared = tenants::set_tenant_processor(app.pool(), &app.signer, "brand-b", None)
        .await
        .unwrap();
    assert_eq!((cleared.processor, cleared.processor_env), (None, None));
    assert_eq!(
        app.count("SELECT count(*) FROM audit_events WHERE action = 'tenant_set_processor'")
            .await,
        2
    );
}

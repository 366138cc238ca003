//! A token's network transaction id is cited only to the processor that issued it: two payvault
//! instances on one database, one charging through NMI, the other through CyberSource.

use std::sync::Arc;

use payvault::auth::{CredentialKind, Scope};
use serde_json::{json, Value};

use crate::fakes::{cybersource, nmi};
use crate::helpers::{new_txn, test_keys, TestDb};

use super::wire::{self, Wire, PAN};

#[tokio::test]
async fn a_token_whose_stored_credential_is_nmis_is_refused_by_cybersource_and_cited_to_nmi() {
    let nmi = Wire {
        profile: "nmi",
        settings: vec![("security_key", nmi::SECURITY_KEY)],
        fake: nmi::start().await,
        base_path: "",
    };
    let cs = Wire {
        profile: "cybersource",
        settings: vec![
            ("merchant_id", cybersource::MERCHANT_ID),
            ("key_id", cybersource::KEY_ID),
            ("shared_secret", cybersource::SHARED_SECRET),
        ],
        fake: cybersource::start().await,
        base_path: "",
    };
    let db = Arc::new(TestDb::new().await);
    let keys = test_keys();
    let via_nmi = nmi.app_on(db.clone(), keys.clone()).await;
    let via_cs = cs.app_on(db, keys).await;
    let twilio = via_nmi
        .create_credential(
            "twilio-tokens",
            CredentialKind::Connector,
            Some(vec![Scope::Connector, Scope::TokensCharge]),
        )
        .await;

    // The caller's card, saved: NMI's transactionid becomes the token's stored credential.
    let mut first = wire::card(&new_txn(), PAN, "10.00");
    first["parameters"]["save_card"] = json!("true");
    let (_, saved) = via_nmi.post_as(&twilio, "/", &first).await;
    let anchor = wire::approved(&saved);
    let token = saved["parameters"]["token_id"].as_str().unwrap().to_owned();
    let token_charge = || {
        json!({"method": "charge", "transaction_id": new_txn(), "token": token,
               "amount": "5.00", "currency_code": "USD",
               "parameters": {"stored_credential": "recurring"}})
    };

    // CyberSource needs a network transaction id of its own: a clear refusal, nothing sent.
    let (status, refused) = via_cs.post_as(&twilio, "/", &token_charge()).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["charge_id"], Value::Null, "{refused}");
    assert_eq!(
        refused["error_code"], "stored_credential_unavailable",
        "{refused}"
    );
    let message = refused["error_message"].as_str().unwrap();
    assert!(
        message.contains("processor nmi") && message.contains("processor cybersource"),
        "{message}"
    );
    assert!(!message.contains(&anchor), "never the id itself: {message}");
    assert!(
        cs.fake.record().requests.is_empty(),
        "nothing reached CyberSource"
    );

    // Through NMI the token's charge cites NMI's own transaction id.
    let (_, charged) = via_nmi.post_as(&twilio, "/", &token_charge()).await;
    wire::approved(&charged);
    let fields = nmi.fake.last_fields();
    assert_eq!(fields["initiated_by"], "merchant");
    assert_eq!(fields["initial_transaction_id"], anchor);
}

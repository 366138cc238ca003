//! Request bodies as Twilio sends them.

use serde_json::Value;

/// A valid Twilio card tokenize request.
pub fn card_tokenize(txn: &str, pan: &str) -> Value {
    serde_json::json!({
        "method": "tokenize",
        "transaction_id": txn,
        "cardnumber": pan,
        "cvv": "123",
        "expiry_month": "08",
        "expiry_year": "35",
        "postal_code": "94111",
        "description": "pizza",
        "parameters": {"order_id": "A-1"}
    })
}

/// A valid Twilio ACH tokenize request.
pub fn bank_tokenize(txn: &str, account: &str) -> Value {
    serde_json::json!({
        "method": "tokenize",
        "transaction_id": txn,
        "bankaccountnumber": account,
        "routingnumber": "121000358",
        "description": null,
        "parameters": {}
    })
}

/// A valid Twilio card charge request.
pub fn card_charge(txn: &str, pan: &str, amount: &str) -> Value {
    let mut v = card_tokenize(txn, pan);
    v["method"] = "charge".into();
    v["amount"] = amount.into();
    v["currency_code"] = "USD".into();
    v
}

pub fn new_txn() -> String {
    uuid::Uuid::new_v4().to_string()
}

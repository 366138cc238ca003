//! Self-tests of the fake processors (`fakes`): for each, a request built from processors.md's
//! field list is approved, requests missing or malforming one required thing get the documented
//! rejection and execute nothing, decline triggers decline, idempotency replays execute once;
//! here, the helpers they share.

mod adyen;
mod authorizenet;
mod checkout;
mod cybersource;
mod nmi;
mod stripe;

use std::time::Duration;

/// The card every "good sale" uses (a test card at all six processors).
pub const PAN: &str = "4111111111111111";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A future expiry year (4 digits) for request bodies.
pub fn future_year() -> i32 {
    use chrono::Datelike;
    chrono::Utc::now().year() + 3
}

//! `payvault processor check` as an operator runs it: the built binary against the Stripe fake
//! (`fakes::stripe`) through `PAYVAULT_PROCESSOR_URL`.

use std::process::{Command, Output};

use crate::fakes::stripe::{self, SECRET_KEY};

/// The profile's documented test card (`stripe.toml`): never printed in full.
const TEST_PAN: &str = "4242424242424242";

/// Runs `payvault processor check --processor stripe` against `base_url` with `vars` set, off
/// the test's runtime (the fake answers on it).
async fn check(base_url: &str, vars: &[(&'static str, &'static str)]) -> Output {
    let base_url = base_url.to_owned();
    let vars = vars.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_payvault"));
        cmd.args(["processor", "check", "--processor", "stripe"])
            .env_remove("PAYVAULT_PROCESSOR")
            .env_remove("PAYVAULT_PROCESSOR_PROFILE")
            .env_remove("PAYVAULT_PROCESSOR_ENVIRONMENT")
            .env_remove("PAYVAULT_PROCESSOR_SECRET_KEY")
            .env_remove("PAYVAULT_PROCESSOR_SECRET_KEY_FILE")
            .env("PAYVAULT_PROCESSOR_URL", base_url);
        for (name, value) in vars {
            cmd.env(name, value);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

/// Everything the command printed; asserts it holds no PAN and none of `secrets`.
fn printed(out: &Output, secrets: &[&str]) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(TEST_PAN), "no PAN: {text}");
    for secret in secrets {
        assert!(!text.contains(secret), "no secret: {text}");
    }
    text
}

#[tokio::test]
async fn processor_check_reports_success_a_refused_key_and_refuses_live() {
    let fake = stripe::start().await;

    // The right key: one approved test sale.
    let out = check(
        &fake.base_url,
        &[("PAYVAULT_PROCESSOR_SECRET_KEY", SECRET_KEY)],
    )
    .await;
    let text = printed(&out, &[SECRET_KEY]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("TEST SALE") && text.contains("ok: HTTP 200, approved, charge id"),
        "{text}"
    );
    assert!(
        text.contains("424242") && text.contains("4242"),
        "BIN and last 4: {text}"
    );
    assert_eq!(fake.sales_executed(), 1);

    // A wrong key: non-zero, the processor's refusal named, the key not echoed.
    let wrong = "sk_test_wrongKey7Rq2";
    let out = check(&fake.base_url, &[("PAYVAULT_PROCESSOR_SECRET_KEY", wrong)]).await;
    let text = printed(&out, &[wrong, SECRET_KEY]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("the processor refused the credentials (HTTP 401)")
            && text.contains("Invalid API Key provided"),
        "{text}"
    );
    assert_eq!(fake.sales_executed(), 1, "nothing charged with a wrong key");

    // The live environment: refused before anything is sent.
    let out = check(
        &fake.base_url,
        &[
            ("PAYVAULT_PROCESSOR_SECRET_KEY", SECRET_KEY),
            ("PAYVAULT_PROCESSOR_ENVIRONMENT", "live"),
        ],
    )
    .await;
    let text = printed(&out, &[SECRET_KEY]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("only runs against the test environment"),
        "{text}"
    );
    assert_eq!(fake.sales_executed(), 1, "nothing sent to live");
    assert_eq!(fake.record().requests.len(), 2, "{:?}", fake.record());
}

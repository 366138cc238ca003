//! `payvault processor`: look at what a processor profile sends, and check that it connects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config;
use crate::domain::{
    AccountNumber, Amount, BankAccount, Card, CardNumber, Cvv, Expiry, PaymentMethod, PostalCode,
    RoutingNumber, SecretText,
};
use crate::processor::profile::{
    setting_variable, Mode, ProcessorEnvironment, Profile, ProfileConfig, ProfileProcessor,
};
use crate::processor::{Initiator, ProcessorRequest};

#[derive(Debug, Subcommand)]
pub enum ProcessorCommand {
    /// Print the exact sale request a profile builds for a sample card: method, URL, headers and
    /// body, with card data (BIN and last 4 only, CVV ***) and secrets masked.
    Render {
        #[command(flatten)]
        which: Which,
        /// Render a bank-account (ACH) debit instead of a card sale.
        #[arg(long)]
        bank: bool,
    },
    /// Send the processor's documented TEST card to its TEST environment (never live) and report
    /// whether the connection and credentials work. Settings come from the environment.
    Check {
        #[command(flatten)]
        which: Which,
    },
}

#[derive(Debug, Args)]
pub struct Which {
    /// A profile file (default: PAYVAULT_PROCESSOR_PROFILE or PAYVAULT_PROCESSOR).
    #[arg(long, conflicts_with = "processor")]
    profile: Option<PathBuf>,
    /// A built-in profile by name (stripe, checkout, adyen, authorizenet, nmi, cybersource).
    #[arg(long)]
    processor: Option<String>,
}

impl Which {
    fn load(&self) -> anyhow::Result<Profile> {
        if let Some(path) = &self.profile {
            return Ok(Profile::from_file(path)?);
        }
        if let Some(name) = &self.processor {
            return Profile::builtin(name)
                .with_context(|| format!("no built-in processor profile `{name}`"))?
                .map_err(Into::into);
        }
        config::selected_profile()?.context(
            "name a profile: --profile FILE, --processor NAME, PAYVAULT_PROCESSOR_PROFILE or PAYVAULT_PROCESSOR",
        )
    }
}

pub async fn run(cmd: ProcessorCommand) -> anyhow::Result<()> {
    match cmd {
        ProcessorCommand::Render { which, bank } => render(which.load()?, bank),
        ProcessorCommand::Check { which } => check(which.load()?).await,
    }
}

/// The sample charge: the profile's documented test card (or a test bank account).
fn sample(profile: &Profile, bank: bool) -> anyhow::Result<(PaymentMethod, Amount)> {
    let method = if bank {
        PaymentMethod::Bank(BankAccount {
            routing: RoutingNumber::parse("121000358")?,
            account: AccountNumber::parse(SecretText::from("123456789"))?,
        })
    } else {
        let year = chrono::Datelike::year(&chrono::Utc::now()) as u16 + 2;
        PaymentMethod::Card(Card {
            number: CardNumber::parse(SecretText::from(profile.test_card()))?,
            expiry: Expiry::from_stored(12, year).context("sample expiry")?,
            cvv: Some(Cvv::parse(SecretText::from("123"))?),
            postal_code: Some(PostalCode::parse("94105")?),
        })
    };
    let (amount, currency) = profile.test_amount();
    Ok((method, Amount::parse(amount, currency)?))
}

fn sample_request<'a>(
    method: &'a PaymentMethod,
    amount: &'a Amount,
    parameters: &'a BTreeMap<String, String>,
    key: &'a str,
) -> ProcessorRequest<'a> {
    ProcessorRequest {
        transaction_id: key,
        idempotency_key: key,
        method,
        amount,
        description: Some("payvault processor test"),
        parameters,
        timeout: Duration::from_secs(15),
        initiator: Initiator::CustomerMoto,
    }
}

/// `payvault processor render`: settings from the environment where set, placeholders
/// elsewhere; secrets never shown.
fn render(profile: Profile, bank: bool) -> anyhow::Result<()> {
    let (method, amount) = sample(&profile, bank)?;
    let url = config::var("PAYVAULT_PROCESSOR_URL")?;
    let cfg = ProfileConfig::resolve(
        profile,
        ProcessorEnvironment::Test,
        url.as_deref(),
        |name, decl| -> anyhow::Result<Option<SecretText>> {
            let set = std::env::var(setting_variable(name))
                .ok()
                .filter(|v| !v.is_empty());
            if set.is_none() && decl.default.is_some() {
                // The profile's default applies.
                return Ok(None);
            }
            // A base64 placeholder, so that a signing key can be built from it.
            let placeholder = if decl.secret {
                "cGxhY2Vob2xkZXI=".to_owned()
            } else {
                format!("<{}>", setting_variable(name))
            };
            Ok(Some(SecretText::from(set.unwrap_or(placeholder))))
        },
    )?;
    let processor = ProfileProcessor::new(cfg, Duration::from_secs(3), Duration::from_secs(15))?;
    let parameters = BTreeMap::from([("AVSName".to_owned(), "Ada Lovelace".to_owned())]);
    let key = "00000000-0000-4000-8000-000000000000";
    let req = sample_request(&method, &amount, &parameters, key);
    let built = processor
        .build(&req, Mode::Masked)
        .map_err(|e| anyhow::anyhow!("the profile cannot build this request: {e}"))?;
    println!("{} {}", built.method, built.url);
    for (name, value) in &built.headers {
        println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    println!();
    println!("{}", String::from_utf8_lossy(&built.body));
    Ok(())
}

/// `payvault processor check`: one sale with the documented test card, test environment only.
async fn check(profile: Profile) -> anyhow::Result<()> {
    let cfg = config::profile_config(profile)?;
    if cfg.environment != ProcessorEnvironment::Test {
        anyhow::bail!(
            "payvault processor check only runs against the test environment: unset PAYVAULT_PROCESSOR_ENVIRONMENT or set it to test"
        );
    }
    let (method, amount) = sample(&cfg.profile, false)?;
    println!(
        "TEST SALE: {} {} with the documented test card {} to {} (test environment)",
        amount.to_decimal(),
        amount.currency(),
        method.masked(),
        cfg.base_url
    );
    let processor = ProfileProcessor::new(cfg, Duration::from_secs(5), Duration::from_secs(20))?;
    let parameters = BTreeMap::new();
    let key = format!("payvault-check-{}", uuid::Uuid::new_v4());
    let req = sample_request(&method, &amount, &parameters, &key);
    match processor.probe(&req).await {
        Err(e) => anyhow::bail!("no answer: {e}"),
        Ok((status, Ok(reply))) if reply.approved() => {
            println!(
                "ok: HTTP {status}, approved, charge id {}",
                reply.charge_id.unwrap_or_default()
            );
            Ok(())
        }
        Ok((status, Ok(reply))) => {
            let refused = matches!(status, 401 | 403)
                || reply.error_code.as_deref() == Some(crate::processor::AUTH_FAILED);
            println!(
                "reached the processor: HTTP {status}, declined: {} {}",
                reply.error_code.unwrap_or_default(),
                reply.error_message.unwrap_or_default()
            );
            if refused {
                anyhow::bail!("the processor refused the credentials (HTTP {status})");
            }
            Ok(())
        }
        Ok((status, Err(e))) => {
            anyhow::bail!("reached the processor (HTTP {status}) but could not read its answer: {e}; check the credentials and the profile")
        }
    }
}

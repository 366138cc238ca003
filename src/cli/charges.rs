//! `payvault charges`: charges that need an operator. `unknown` lists the charges whose outcome
//! is unknown (the processor's answer was lost, or the instance making the attempt died), for
//! reconciliation with the processor. Never card data: the masked card, the token, the amount
//! and the first attempt's time. The listing is audited.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::db::cli_pool;
use crate::audit::AuditEvent;
use crate::store;
use crate::store::charges::UnknownCharge;

#[derive(Debug, Subcommand)]
pub enum ChargesCommand {
    /// List charges whose outcome is unknown, oldest first: a charge held because its
    /// processor cannot safely be asked again (idempotency `none`, `lookup` or `reversal`)
    /// stays here until it is reconciled with the processor.
    Unknown {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// At most this many charges.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Only this tenant's charges (by name).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    /// One JSON object per line.
    Json,
}

pub async fn run(cmd: ChargesCommand) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    match cmd {
        ChargesCommand::Unknown {
            format,
            limit,
            tenant,
        } => {
            let tenant_id = match &tenant {
                Some(name) => Some(crate::auth::tenants::find_tenant(&pool, name).await?.id),
                None => None,
            };
            let rows =
                store::charges::list_unknown_charges(&pool, tenant_id, limit.clamp(1, 100_000))
                    .await
                    .context("cannot read the charges")?;
            let mut event = AuditEvent::operator("charges_unknown_list");
            if let Some(details) = event.details.as_object_mut() {
                details.insert("count".into(), rows.len().into());
                if let Some(name) = &tenant {
                    details.insert("tenant".into(), name.as_str().into());
                }
            }
            let log = super::db::cli_audit_log(&pool).await?;
            log.record(&event)
                .await
                .context("cannot write the audit log")?;
            super::db::seal_before_exit(&log).await;
            print(&rows, format);
        }
    }
    Ok(())
}

fn amount(r: &UnknownCharge) -> String {
    match (r.amount_minor, &r.currency) {
        (Some(a), Some(c)) => crate::domain::Amount::display_minor(a, c),
        _ => String::new(),
    }
}

fn print(rows: &[UnknownCharge], format: Format) {
    match format {
        Format::Json => {
            for r in rows {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("amount".into(), amount(r).into());
                }
                println!("{v}");
            }
        }
        Format::Table => {
            println!(
                "{:<36}  {:<16}  {:<20}  {:<9}  {:<26}  {:<24}  {:>14}  {:<20}  ERROR",
                "TRANSACTION",
                "TENANT",
                "CREDENTIAL",
                "STATE",
                "TOKEN",
                "CARD",
                "AMOUNT",
                "FIRST ATTEMPT (UTC)"
            );
            for r in rows {
                println!(
                    "{:<36}  {:<16}  {:<20}  {:<9}  {:<26}  {:<24}  {:>14}  {:<20}  {}",
                    r.transaction_id,
                    r.tenant,
                    r.credential,
                    r.state,
                    r.token.as_deref().unwrap_or("-"),
                    r.masked_card.as_deref().unwrap_or("-"),
                    amount(r),
                    r.first_attempt_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.processor_error.as_deref().unwrap_or("-"),
                );
            }
        }
    }
}

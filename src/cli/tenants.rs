//! `payvault tenants`: the tenants credentials, tokens, charges and audit events belong to.

use clap::Subcommand;

use super::credentials::{Format, FormatArg};
use super::db::{cli_audit_log, cli_pool, seal_before_exit};
use crate::auth::tenants;
use crate::store::tenants::TenantRow;

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant (then `credentials create --tenant NAME` gives it credentials).
    Create {
        /// 1 to 64 letters, digits, '-', '_' or '.'.
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Disable a tenant: its credentials are refused from now on, on every running instance.
    /// Its tokens, charges and audit events stay. The default tenant cannot be disabled.
    Disable { name: String },
    /// Give a tenant a processor of its own (`none`, `sandbox` or a built-in profile), its
    /// settings read from the environment variables under PREFIX (`PREFIX_URL`,
    /// `PREFIX_ENVIRONMENT`, `PREFIX_<SETTING>`), or with --clear the deployment's again.
    /// Running instances use it after their next start.
    SetProcessor {
        name: String,
        #[arg(long, required_unless_present = "clear", requires = "settings_prefix")]
        processor: Option<String>,
        /// e.g. PAYVAULT_TENANT_BRAND_B.
        #[arg(long, value_name = "PREFIX")]
        settings_prefix: Option<String>,
        #[arg(long, conflicts_with_all = ["processor", "settings_prefix"])]
        clear: bool,
    },
}

fn json(row: &TenantRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.id, "name": row.name, "status": row.status,
        "processor": row.processor, "processor_env": row.processor_env,
        "created_at": row.created_at, "disabled_at": row.disabled_at,
    })
}

pub async fn run(cmd: TenantsCommand) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let log = cli_audit_log(&pool).await?;
    let signer = log.signer();
    match cmd {
        TenantsCommand::Create { name, format } => {
            let row = tenants::create_tenant(&pool, signer, &name).await?;
            match format.format {
                Format::Json => println!("{}", json(&row)),
                Format::Text => println!("Created tenant `{}` ({})", row.name, row.id),
            }
        }
        TenantsCommand::List { format } => {
            let rows = tenants::list_tenants(&pool, signer).await?;
            match format.format {
                Format::Json => rows.iter().for_each(|row| println!("{}", json(row))),
                Format::Text => {
                    println!(
                        "{:<36} {:<24} {:<9} {:<26} CREATED",
                        "ID", "NAME", "STATUS", "PROCESSOR"
                    );
                    for row in rows {
                        println!(
                            "{:<36} {:<24} {:<9} {:<26} {}",
                            row.id,
                            row.name,
                            row.status,
                            row.processor.as_deref().unwrap_or("(deployment's)"),
                            row.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                        );
                    }
                }
            }
        }
        TenantsCommand::Disable { name } => {
            let row = tenants::disable_tenant(&pool, signer, &name).await?;
            println!("Disabled tenant `{}` ({})", row.name, row.id);
        }
        TenantsCommand::SetProcessor {
            name,
            processor,
            settings_prefix,
            ..
        } => {
            let chosen = processor.as_deref().zip(settings_prefix.as_deref());
            let row = tenants::set_tenant_processor(&pool, signer, &name, chosen).await?;
            match (&row.processor, &row.processor_env) {
                (Some(p), Some(env)) => println!(
                    "Tenant `{}` charges through `{p}` (settings {env}_*) from the next start",
                    row.name
                ),
                _ => println!(
                    "Tenant `{}` charges through the deployment's processor from the next start",
                    row.name
                ),
            }
        }
    }
    seal_before_exit(&log).await;
    Ok(())
}

//! Database access for CLI commands.

use anyhow::Context;

use crate::{config, store};

/// A connection for CLI commands, with a clear message when the schema is not set up yet.
pub async fn cli_pool() -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&config::database_url()?, 2)
        .await
        .context("cannot connect to the database")?;
    let latest = store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match store::applied_migration(&pool).await {
        Ok(Some(v)) if v >= latest => Ok(pool),
        _ => anyhow::bail!(
            "the database schema is not set up or not current: run `payvault migrate` first (`payvault serve` also migrates on start)"
        ),
    }
}

//! Database access for CLI commands.

use anyhow::Context;

use std::sync::Arc;

use crate::audit::{AuditEvent, AuditLog};
use crate::store::audit_mac::EventSigner;
use crate::{config, store};

/// A connection for CLI commands, with a clear message when the schema is not set up yet.
pub async fn cli_pool() -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&config::database_url()?, 2)
        .await
        .context("cannot connect to the database")?;
    match store::schema_current(&pool).await {
        true => Ok(pool),
        false => anyhow::bail!(
            "the database schema is not set up or not current: run `payvault migrate` first (`payvault serve` also migrates on start)"
        ),
    }
}

/// The audit log as this CLI invocation writes it: a writer of its own (see
/// `store::audit_mac`), MAC'ing its events with the master key, which every command that
/// writes audit events therefore needs.
pub async fn cli_audit_log(pool: &sqlx::PgPool) -> anyhow::Result<AuditLog> {
    let keys = super::keys::master_keys(pool)
        .await
        .context("audit events are MAC'd with the master key")?;
    Ok(AuditLog::new(
        pool.clone(),
        Arc::new(EventSigner::new(keys)),
    ))
}

/// Seals what the command wrote before it exits, so a CLI leaves nothing unsealed behind; a
/// failure is only a warning (a running instance seals it, and `audit verify` reports events
/// left unsealed too long).
pub async fn seal_before_exit(log: &AuditLog) {
    if let Err(e) = log.seal_before_exit().await {
        eprintln!("warning: could not seal this command's audit events ({e}); a running payvault instance will");
    }
}

/// `payvault migrate [--runtime-role NAME]`.
pub async fn migrate(runtime_role: Option<String>) -> anyhow::Result<()> {
    let pool = store::connect(&config::database_url()?, 2)
        .await
        .context("cannot connect to the database")?;
    store::migrate(&pool).await.context("migration failed")?;
    println!("migrations applied");
    let Some(role) = runtime_role.filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let password = config::secret_var("PAYVAULT_RUNTIME_PASSWORD")?;
    // Loaded before the role is touched: the grant's audit event is MAC'd with it.
    let log = cli_audit_log(&pool).await?;
    let created = store::roles::ensure_runtime_role(&pool, &role, password.as_ref())
        .await
        .with_context(|| format!("cannot set up the runtime role {role}"))?;
    let mut event = AuditEvent::operator("db_runtime_role");
    event.details["role"] = role.as_str().into();
    event.details["created"] = created.into();
    event.details["password_set"] = password.is_some().into();
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    seal_before_exit(&log).await;
    println!(
        "runtime role {role} {}: serve as it with `payvault serve --no-migrate` (DATABASE_URL naming {role})",
        if created { "created and granted" } else { "granted" }
    );
    Ok(())
}

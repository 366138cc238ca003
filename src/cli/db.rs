//! Database access for CLI commands.

use anyhow::Context;

use crate::audit::AuditEvent;
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
    let created = store::roles::ensure_runtime_role(&pool, &role, password.as_ref())
        .await
        .with_context(|| format!("cannot set up the runtime role {role}"))?;
    let mut event = AuditEvent::operator("db_runtime_role");
    event.details["role"] = role.as_str().into();
    event.details["created"] = created.into();
    event.details["password_set"] = password.is_some().into();
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!(
        "runtime role {role} {}: serve as it with `payvault serve --no-migrate` (DATABASE_URL naming {role})",
        if created { "created and granted" } else { "granted" }
    );
    Ok(())
}

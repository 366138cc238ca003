//! The `tenants` table.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A tenant row. Never holds a processor secret: only where to read it from.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    /// The tenant's own processor (`none`, `sandbox` or a built-in profile), if any.
    pub processor: Option<String>,
    /// The prefix of the environment variables holding that processor's settings.
    pub processor_env: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Inserts an active tenant; `false` when the name is taken.
pub async fn insert_tenant(
    db: impl PgExecutor<'_>,
    id: Uuid,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO tenants (id, name) VALUES ($1, $2)
        ON CONFLICT ON CONSTRAINT tenants_name_key DO NOTHING
        "#,
        id,
        name,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find_tenant_by_name(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"
        SELECT id, name, status, processor, processor_env, created_at, disabled_at
        FROM tenants WHERE name = $1
        "#,
        name,
    )
    .fetch_optional(db)
    .await
}

pub async fn list_tenants(db: impl PgExecutor<'_>) -> Result<Vec<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"
        SELECT id, name, status, processor, processor_env, created_at, disabled_at
        FROM tenants ORDER BY created_at, name
        "#,
    )
    .fetch_all(db)
    .await
}

/// Disables an active tenant; returns it, or `None` when no active tenant has this name.
pub async fn disable_tenant(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"
        UPDATE tenants SET status = 'disabled', disabled_at = now()
        WHERE name = $1 AND status = 'active'
        RETURNING id, name, status, processor, processor_env, created_at, disabled_at
        "#,
        name,
    )
    .fetch_optional(db)
    .await
}

/// Sets (or, with `None`, clears) a tenant's processor and settings prefix.
pub async fn set_tenant_processor(
    db: impl PgExecutor<'_>,
    name: &str,
    processor: Option<(&str, &str)>,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let (processor, env) = processor.unzip();
    sqlx::query_as!(
        TenantRow,
        r#"
        UPDATE tenants SET processor = $2, processor_env = $3
        WHERE name = $1
        RETURNING id, name, status, processor, processor_env, created_at, disabled_at
        "#,
        name,
        processor,
        env,
    )
    .fetch_optional(db)
    .await
}

/// Tenants with a processor of their own: `(id, name, processor, settings prefix)`.
pub async fn tenant_processors(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(Uuid, String, String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT id, name, processor AS "processor!", processor_env AS "processor_env!"
        FROM tenants
        WHERE processor IS NOT NULL AND processor_env IS NOT NULL
        ORDER BY name
        "#,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.name, r.processor, r.processor_env))
        .collect())
}

//! The `tenants` table.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A tenant row.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: Uuid,
    pub name: String,
    pub status: String,
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
        SELECT id, name, status, created_at, disabled_at
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
        SELECT id, name, status, created_at, disabled_at
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
        RETURNING id, name, status, created_at, disabled_at
        "#,
        name,
    )
    .fetch_optional(db)
    .await
}

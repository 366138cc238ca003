//! The `credentials` table.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A credential row. `secret_hash` is an Argon2id PHC string, never a secret.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub id: Uuid,
    /// The tenant the credential belongs to, for good.
    pub tenant_id: Uuid,
    pub username: String,
    pub name: String,
    pub kind: String,
    pub scopes: Vec<String>,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Channel on which credential changes are announced, so every instance drops its cache of
/// verified secrets at once (a revocation takes effect cluster-wide without waiting for a TTL).
pub const CHANGED_CHANNEL: &str = "payvault_credentials_changed";

pub async fn insert_credential(
    db: impl PgExecutor<'_>,
    row: &CredentialRow,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO credentials (id, username, name, kind, scopes, secret_hash, created_at, tenant_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        "#,
        row.id,
        row.username,
        row.name,
        row.kind,
        &row.scopes,
        row.secret_hash,
        row.created_at,
        row.tenant_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find_credential_by_username(
    db: impl PgExecutor<'_>,
    username: &str,
) -> Result<Option<CredentialRow>, sqlx::Error> {
    sqlx::query_as!(
        CredentialRow,
        r#"
        SELECT id, tenant_id, username, name, kind, scopes, secret_hash, created_at, revoked_at
        FROM credentials WHERE username = $1
        "#,
        username,
    )
    .fetch_optional(db)
    .await
}

/// The active credential with this username whose tenant is active too: what authentication
/// accepts. A disabled tenant's credentials are refused like revoked ones.
pub async fn find_usable_credential(
    db: impl PgExecutor<'_>,
    username: &str,
) -> Result<Option<CredentialRow>, sqlx::Error> {
    sqlx::query_as!(
        CredentialRow,
        r#"
        SELECT c.id, c.tenant_id, c.username, c.name, c.kind, c.scopes, c.secret_hash,
               c.created_at, c.revoked_at
        FROM credentials c JOIN tenants t ON t.id = c.tenant_id
        WHERE c.username = $1 AND c.revoked_at IS NULL AND t.status = 'active'
        "#,
        username,
    )
    .fetch_optional(db)
    .await
}

pub async fn list_credentials(
    db: impl PgExecutor<'_>,
    include_revoked: bool,
) -> Result<Vec<CredentialRow>, sqlx::Error> {
    sqlx::query_as!(
        CredentialRow,
        r#"
        SELECT id, tenant_id, username, name, kind, scopes, secret_hash, created_at, revoked_at
        FROM credentials
        WHERE $1 OR revoked_at IS NULL
        ORDER BY created_at, username
        "#,
        include_revoked,
    )
    .fetch_all(db)
    .await
}

/// Revokes the active credential with this username or name. Returns it, or `None` when no
/// active credential matches.
pub async fn revoke_credential(
    db: impl PgExecutor<'_>,
    username_or_name: &str,
) -> Result<Option<CredentialRow>, sqlx::Error> {
    sqlx::query_as!(
        CredentialRow,
        r#"
        UPDATE credentials SET revoked_at = now()
        WHERE (username = $1 OR name = $1) AND revoked_at IS NULL
        RETURNING id, tenant_id, username, name, kind, scopes, secret_hash, created_at, revoked_at
        "#,
        username_or_name,
    )
    .fetch_optional(db)
    .await
}

/// Tells every listening instance that credentials changed (delivered when the transaction
/// commits).
pub async fn notify_credentials_changed(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_notify($1, '')", CHANGED_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}

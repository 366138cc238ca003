//! Operator actions on tenants (`payvault tenants ...`), each audited in the same transaction
//! as the change. Disabling a tenant announces a credential change, so running instances drop
//! its credentials' cached verifications at once.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{check_tenant_name, AuditEvent, DEFAULT_TENANT};
use crate::store;
use crate::store::audit_mac::EventSigner;
use crate::store::tenants::TenantRow;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("invalid tenant name: {0}")]
    InvalidName(&'static str),
    #[error("a tenant named `{0}` already exists")]
    NameTaken(String),
    #[error("no tenant named `{0}`")]
    NotFound(String),
    #[error("no active tenant named `{0}`")]
    NotActive(String),
    #[error("the default tenant cannot be disabled")]
    DefaultTenant,
    #[error("invalid processor setting: {0}")]
    InvalidProcessor(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn event(action: &'static str, row: &TenantRow) -> AuditEvent {
    let mut event = AuditEvent::operator(action);
    event.tenant_id = Some(row.id);
    event.details["tenant_id"] = row.id.to_string().into();
    event.details["tenant"] = row.name.clone().into();
    event
}

/// Creates an active tenant.
pub async fn create_tenant(
    pool: &PgPool,
    signer: &EventSigner,
    name: &str,
) -> Result<TenantRow, TenantError> {
    check_tenant_name(name).map_err(TenantError::InvalidName)?;
    let mut tx = pool.begin().await?;
    if !store::tenants::insert_tenant(&mut *tx, Uuid::new_v4(), name).await? {
        return Err(TenantError::NameTaken(name.to_owned()));
    }
    let row = store::tenants::find_tenant_by_name(&mut *tx, name)
        .await?
        .ok_or_else(|| TenantError::NotFound(name.to_owned()))?;
    store::audit::insert_audit_event(&mut *tx, signer, &event("tenant_create", &row)).await?;
    tx.commit().await?;
    Ok(row)
}

/// The tenant named `name` (active or not).
pub async fn find_tenant(pool: &PgPool, name: &str) -> Result<TenantRow, TenantError> {
    store::tenants::find_tenant_by_name(pool, name)
        .await?
        .ok_or_else(|| TenantError::NotFound(name.to_owned()))
}

/// The active tenant named `name`: what new credentials may be created in.
pub async fn find_active_tenant(pool: &PgPool, name: &str) -> Result<TenantRow, TenantError> {
    let row = find_tenant(pool, name).await?;
    if row.status != "active" {
        return Err(TenantError::NotActive(name.to_owned()));
    }
    Ok(row)
}

/// Every tenant. Audited (`tenant_list`) before it reads.
pub async fn list_tenants(
    pool: &PgPool,
    signer: &EventSigner,
) -> Result<Vec<TenantRow>, TenantError> {
    store::audit::insert_audit_event(pool, signer, &AuditEvent::operator("tenant_list")).await?;
    Ok(store::tenants::list_tenants(pool).await?)
}

/// Disables a tenant: its credentials are refused at authentication from now on, on every
/// instance at once; its tokens, charges and audit events stay.
pub async fn disable_tenant(
    pool: &PgPool,
    signer: &EventSigner,
    name: &str,
) -> Result<TenantRow, TenantError> {
    let mut tx = pool.begin().await?;
    let row = store::tenants::disable_tenant(&mut *tx, name)
        .await?
        .ok_or_else(|| TenantError::NotActive(name.to_owned()))?;
    if row.id == DEFAULT_TENANT {
        return Err(TenantError::DefaultTenant);
    }
    store::audit::insert_audit_event(&mut *tx, signer, &event("tenant_disable", &row)).await?;
    store::credentials::notify_credentials_changed(&mut *tx).await?;
    tx.commit().await?;
    Ok(row)
}

/// Gives a tenant a processor of its own, its settings read from the environment variables
/// under `env` (see [`crate::config::tenant_processor_config`]), or with `None` the
/// deployment's processor again. Takes effect when payvault instances next start.
pub async fn set_tenant_processor(
    pool: &PgPool,
    signer: &EventSigner,
    name: &str,
    processor: Option<(&str, &str)>,
) -> Result<TenantRow, TenantError> {
    if let Some((processor, env)) = processor {
        crate::config::check_tenant_processor(processor, env)
            .map_err(TenantError::InvalidProcessor)?;
    }
    let mut tx = pool.begin().await?;
    let row = store::tenants::set_tenant_processor(&mut *tx, name, processor)
        .await?
        .ok_or_else(|| TenantError::NotFound(name.to_owned()))?;
    let mut event = event("tenant_set_processor", &row);
    event.details["processor"] = row.processor.clone().into();
    event.details["processor_env"] = row.processor_env.clone().into();
    store::audit::insert_audit_event(&mut *tx, signer, &event).await?;
    tx.commit().await?;
    Ok(row)
}

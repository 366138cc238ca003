//! Operator actions on credentials (`payvault credentials ...`). Each is audited in the same
//! transaction as the change, and announces itself so running instances drop cached secrets.

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::credential::{CredentialKind, NewCredential, Scope};
use crate::domain::AuditEvent;
use crate::domain::SecretText;
use crate::domain::DEFAULT_TENANT;
use crate::store;
use crate::store::audit_mac::EventSigner;
use crate::store::credentials::CredentialRow;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("an active credential named `{0}` already exists")]
    NameTaken(String),
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    #[error("an api credential needs --scopes (for example tokens:read,tokens:charge)")]
    NoScopes,
    #[error("no active credential with username or name `{0}`")]
    NotFound(String),
    #[error("credential username `{0}` is already taken by a credential with another secret or name; choose a new username")]
    UsernameTaken(String),
    #[error("no tenant `{0}`")]
    NoSuchTenant(String),
    #[error(
        "audit:all (every tenant's audit events) is for the default tenant's credentials only"
    )]
    AuditAllOutsideDefaultTenant,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A created credential with its secret, which exists only in this value.
#[derive(Debug)]
pub struct CreatedCredential {
    pub row: CredentialRow,
    pub secret: SecretText,
}

fn operator_event(action: &'static str) -> AuditEvent {
    AuditEvent::operator(action)
}

fn check_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty() || name.len() > 64 {
        return Err(AdminError::InvalidName("must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(AdminError::InvalidName(
            "use letters, digits, '-', '_' and '.'",
        ));
    }
    if name.starts_with("pvc_") || name.starts_with("pvk_") {
        return Err(AdminError::InvalidName(
            "pvc_ and pvk_ are reserved for usernames",
        ));
    }
    Ok(())
}

/// Creates a credential in the default tenant.
pub async fn create_credential(
    pool: &PgPool,
    signer: &EventSigner,
    name: &str,
    kind: CredentialKind,
    scopes: Option<Vec<Scope>>,
) -> Result<CreatedCredential, AdminError> {
    create_credential_in(pool, signer, DEFAULT_TENANT, name, kind, scopes).await
}

/// Creates a credential in `tenant` (an id; see `super::tenants::find_tenant` for a name).
pub async fn create_credential_in(
    pool: &PgPool,
    signer: &EventSigner,
    tenant: Uuid,
    name: &str,
    kind: CredentialKind,
    scopes: Option<Vec<Scope>>,
) -> Result<CreatedCredential, AdminError> {
    check_name(name)?;
    let mut scopes = scopes.unwrap_or_else(|| kind.default_scopes());
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(AdminError::NoScopes);
    }
    if tenant != DEFAULT_TENANT && scopes.contains(&Scope::AuditAll) {
        return Err(AdminError::AuditAllOutsideDefaultTenant);
    }
    // Argon2 hashing is CPU-heavy; keep it off the async runtime.
    let generated = tokio::task::spawn_blocking(move || NewCredential::generate(kind))
        .await
        .map_err(|e| AdminError::Database(sqlx::Error::Io(std::io::Error::other(e))))?;
    let row = CredentialRow {
        id: generated.id,
        tenant_id: tenant,
        username: generated.username,
        name: name.to_owned(),
        kind: kind.as_str().to_owned(),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        secret_hash: generated.secret_hash,
        created_at: Utc::now(),
        revoked_at: None,
    };
    insert_with_audit(pool, signer, &row).await?;
    Ok(CreatedCredential {
        row,
        secret: generated.secret,
    })
}

/// Inserts a credential and its `credential_create` audit event in one transaction.
async fn insert_with_audit(
    pool: &PgPool,
    signer: &EventSigner,
    row: &CredentialRow,
) -> Result<(), AdminError> {
    let mut event = operator_event("credential_create");
    event.tenant_id = Some(row.tenant_id);
    event.details["credential_id"] = row.id.to_string().into();
    event.details["username"] = row.username.clone().into();
    event.details["name"] = row.name.clone().into();
    event.details["kind"] = row.kind.clone().into();
    event.details["scopes"] = row.scopes.clone().into();

    let mut tx = pool.begin().await?;
    store::credentials::insert_credential(&mut *tx, row)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some("credentials_active_name_key") => {
                AdminError::NameTaken(row.name.clone())
            }
            sqlx::Error::Database(db) if db.constraint() == Some("credentials_username_key") => {
                AdminError::UsernameTaken(row.username.clone())
            }
            sqlx::Error::Database(db) if db.constraint() == Some("credentials_tenant_fkey") => {
                AdminError::NoSuchTenant(row.tenant_id.to_string())
            }
            _ => AdminError::Database(e),
        })?;
    store::audit::insert_audit_event(&mut *tx, signer, &event).await?;
    tx.commit().await?;
    Ok(())
}

/// Makes sure an active credential `name` exists with exactly this username and secret, creating
/// it if needed: the development credentials of `payvault dev` and of the compose file, which are
/// chosen before the database exists. Returns whether it was created.
pub async fn ensure_credential(
    pool: &PgPool,
    signer: &EventSigner,
    name: &str,
    kind: CredentialKind,
    scopes: Vec<Scope>,
    username: &str,
    secret: SecretText,
) -> Result<bool, AdminError> {
    check_name(name)?;
    check_name(username).map_err(|_| {
        AdminError::InvalidName("the username must be 1 to 64 letters, digits, '-', '_' or '.'")
    })?;
    if let Some(row) = store::credentials::find_credential_by_username(pool, username).await? {
        let phc = row.secret_hash.clone();
        let same_secret = tokio::task::spawn_blocking(move || {
            use argon2::{PasswordHash, PasswordVerifier};
            PasswordHash::new(&phc).is_ok_and(|hash| {
                argon2::Argon2::default()
                    .verify_password(secret.expose().as_bytes(), &hash)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if same_secret && row.revoked_at.is_none() && row.name == name && row.kind == kind.as_str()
        {
            return Ok(false);
        }
        return Err(AdminError::UsernameTaken(username.to_owned()));
    }
    let mut scopes = scopes;
    scopes.sort();
    scopes.dedup();
    let secret_hash = tokio::task::spawn_blocking(move || super::credential::hash_secret(&secret))
        .await
        .map_err(|e| AdminError::Database(sqlx::Error::Io(std::io::Error::other(e))))?;
    let row = CredentialRow {
        id: uuid::Uuid::new_v4(),
        tenant_id: DEFAULT_TENANT,
        username: username.to_owned(),
        name: name.to_owned(),
        kind: kind.as_str().to_owned(),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        secret_hash,
        created_at: Utc::now(),
        revoked_at: None,
    };
    insert_with_audit(pool, signer, &row).await?;
    Ok(true)
}

pub async fn revoke_credential(
    pool: &PgPool,
    signer: &EventSigner,
    username_or_name: &str,
) -> Result<CredentialRow, AdminError> {
    let mut tx = pool.begin().await?;
    let row = store::credentials::revoke_credential(&mut *tx, username_or_name)
        .await?
        .ok_or_else(|| AdminError::NotFound(username_or_name.to_owned()))?;
    let mut event = operator_event("credential_revoke");
    event.tenant_id = Some(row.tenant_id);
    event.details["credential_id"] = row.id.to_string().into();
    event.details["username"] = row.username.clone().into();
    event.details["name"] = row.name.clone().into();
    store::audit::insert_audit_event(&mut *tx, signer, &event).await?;
    store::credentials::notify_credentials_changed(&mut *tx).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn list_credentials(
    pool: &PgPool,
    signer: &EventSigner,
    include_revoked: bool,
) -> Result<Vec<CredentialRow>, AdminError> {
    // Audited before it reads (PCI DSS 10.2.1.2: access by administrators), so a listing whose
    // event cannot be written does not happen.
    let mut event = operator_event("credential_list");
    event.details["include_revoked"] = include_revoked.into();
    store::audit::insert_audit_event(pool, signer, &event).await?;
    Ok(store::credentials::list_credentials(pool, include_revoked).await?)
}

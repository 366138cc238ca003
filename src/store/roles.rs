//! Database roles: creating and granting the runtime role, and what the connected role may do.
//! See the `least_privilege_roles` migration.

use base64::prelude::{Engine, BASE64_STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use zeroize::Zeroizing;

use crate::domain::SecretText;

/// Creates `role` (LOGIN, with `password` when given; an existing role keeps its attributes and
/// gets the new password) and grants it what the runtime needs through
/// `payvault_grant_runtime`, which refuses a superuser or the tables' owner. Needs a connection
/// as the owner of the payvault tables, with CREATEROLE to create the role.
pub async fn ensure_runtime_role(
    pool: &PgPool,
    role: &str,
    password: Option<&SecretText>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS "exists!""#,
        role
    )
    .fetch_one(&mut *tx)
    .await?;
    // Utility statements take no parameters, so Postgres quotes the name and the password into
    // the statement itself. Only a SCRAM verifier goes there, never the password, which would
    // otherwise reach the server log under `log_statement = ddl` (as psql's \password does).
    let verifier = password.map(|p| scram_sha256_verifier(p.expose(), &random_salt(), 4096));
    let statement: String = sqlx::query_scalar!(
        r#"
        SELECT CASE
            WHEN NOT $1 THEN format('CREATE ROLE %I LOGIN', $2::text)
                || coalesce(format(' PASSWORD %L', $3::text), '')
            WHEN $3::text IS NOT NULL THEN format('ALTER ROLE %I PASSWORD %L', $2::text, $3::text)
            ELSE ''
        END AS "statement!"
        "#,
        exists,
        role,
        verifier,
    )
    .fetch_one(&mut *tx)
    .await?;
    if !statement.is_empty() {
        sqlx::raw_sql(&statement).execute(&mut *tx).await?;
    }
    sqlx::query!("SELECT payvault_grant_runtime($1)", role)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(!exists)
}

/// What the connected role is, for the production start check.
#[derive(Debug, Clone)]
pub struct SessionRole {
    pub name: String,
    pub superuser: bool,
    /// The owner of `audit_events`, `None` if the table does not exist (schema not migrated).
    pub audit_owner: Option<String>,
    /// Whether the connected role is, or is a member of, that owner.
    pub owns_audit: bool,
    /// Whether it holds UPDATE, DELETE or TRUNCATE on `audit_events` all the same.
    pub may_rewrite_audit: bool,
}

impl SessionRole {
    /// Under `PAYVAULT_ENV=production`, why this role must not serve: REVOKE and the append-only
    /// triggers do not bind a superuser or the tables' owner, who could rewrite the audit log or
    /// stop it (`ALTER TABLE ... DISABLE TRIGGER`) unnoticed.
    pub fn production_refusals(&self) -> Vec<String> {
        let fix = "create a runtime role with `payvault migrate --runtime-role NAME` (connected as the owner) and serve as it with `payvault serve --no-migrate`";
        let mut refusals = Vec::new();
        if self.superuser {
            refusals.push(format!(
                "DATABASE_URL connects as {}, a superuser: {fix}",
                self.name
            ));
        } else if self.owns_audit {
            refusals.push(format!(
                "DATABASE_URL connects as {}, which owns the audit tables (owner {}) and could rewrite or stop the audit log: {fix}",
                self.name,
                self.audit_owner.as_deref().unwrap_or("?")
            ));
        } else if self.audit_owner.is_none() {
            refusals.push(format!(
                "the database schema is not set up: run `payvault migrate --runtime-role {}` connected as the owner role, then serve as {} with `payvault serve --no-migrate`",
                self.name, self.name
            ));
        } else if self.may_rewrite_audit {
            refusals.push(format!(
                "DATABASE_URL connects as {}, which holds UPDATE, DELETE or TRUNCATE on audit_events: run `payvault migrate --runtime-role {}` as the owner to reset its grants",
                self.name, self.name
            ));
        }
        refusals
    }

    /// Whether this role can run migrations: it owns the schema (or there is none yet), or is a
    /// superuser.
    pub fn may_migrate(&self) -> bool {
        self.superuser || self.owns_audit || self.audit_owner.is_none()
    }
}

pub async fn session_role(pool: &PgPool) -> Result<SessionRole, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT current_user::text AS "name!",
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS "superuser!",
               pg_get_userbyid(c.relowner)::text AS audit_owner,
               coalesce(pg_has_role(current_user, c.relowner, 'MEMBER'), false) AS "owns_audit!",
               coalesce(has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE'), false)
                   AS "may_rewrite_audit!"
        FROM (SELECT 1) one
        LEFT JOIN pg_class c ON c.oid = to_regclass('audit_events')
        "#
    )
    .fetch_one(pool)
    .await?;
    Ok(SessionRole {
        name: row.name,
        superuser: row.superuser,
        audit_owner: row.audit_owner,
        owns_audit: row.owns_audit,
        may_rewrite_audit: row.may_rewrite_audit,
    })
}

/// A PostgreSQL SCRAM-SHA-256 password verifier (RFC 5802, RFC 7677), the form in which
/// Postgres stores passwords: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// Postgres also SASLprep-normalises passwords; for the ASCII passwords a secret manager
/// generates that is the identity.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    // PBKDF2-HMAC-SHA-256 with one output block (32 bytes, the hash length).
    let mut block = Zeroizing::new([0u8; 32]);
    let mut u = Zeroizing::new(hmac(
        password.as_bytes(),
        &[salt, &1u32.to_be_bytes()].concat(),
    ));
    *block = *u;
    for _ in 1..iterations {
        *u = hmac(password.as_bytes(), &*u);
        for (b, x) in block.iter_mut().zip(u.iter()) {
            *b ^= x;
        }
    }
    let client_key = Zeroizing::new(hmac(&*block, b"Client Key"));
    let stored_key = Sha256::digest(*client_key);
    let server_key = hmac(&*block, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64_STANDARD.encode(salt),
        BASE64_STANDARD.encode(stored_key),
        BASE64_STANDARD.encode(server_key)
    )
}

fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, &mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::SessionRole;

    fn role(superuser: bool, owns_audit: bool, owner: Option<&str>, rewrite: bool) -> SessionRole {
        SessionRole {
            name: "app".into(),
            superuser,
            audit_owner: owner.map(str::to_owned),
            owns_audit,
            may_rewrite_audit: rewrite,
        }
    }

    #[test]
    fn production_refuses_every_role_that_could_rewrite_the_audit_log() {
        let runtime = role(false, false, Some("owner"), false);
        assert!(runtime.production_refusals().is_empty());
        assert!(!runtime.may_migrate());
        for (r, says) in [
            (role(true, true, Some("owner"), true), "a superuser"),
            (
                role(false, true, Some("owner"), true),
                "owns the audit tables (owner owner)",
            ),
            (role(false, false, None, false), "schema is not set up"),
            (
                role(false, false, Some("owner"), true),
                "UPDATE, DELETE or TRUNCATE",
            ),
        ] {
            let refusals = r.production_refusals();
            assert_eq!(refusals.len(), 1, "{refusals:?}");
            assert!(refusals[0].contains(says), "{refusals:?}");
        }
        assert!(role(false, true, Some("app"), true).may_migrate());
    }
}

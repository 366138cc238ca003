//! `master_key_kdf`: public parameters of passphrase-derived master keys.

use sqlx::PgExecutor;

#[derive(Debug, Clone)]
pub struct KdfParams {
    pub version: i32,
    pub salt: Vec<u8>,
    pub m_cost_kib: i32,
    pub t_cost: i32,
    pub p_cost: i32,
    pub check_mac: Vec<u8>,
}

pub async fn find_kdf(
    db: impl PgExecutor<'_>,
    version: i32,
) -> Result<Option<KdfParams>, sqlx::Error> {
    sqlx::query_as!(
        KdfParams,
        "SELECT version, salt, m_cost_kib, t_cost, p_cost, check_mac FROM master_key_kdf WHERE version = $1",
        version,
    )
    .fetch_optional(db)
    .await
}

/// Stores the parameters; `false` if this version already has some (they never change).
pub async fn insert_kdf(db: impl PgExecutor<'_>, p: &KdfParams) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO master_key_kdf (version, salt, m_cost_kib, t_cost, p_cost, check_mac)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT ON CONSTRAINT master_key_kdf_pkey DO NOTHING
        "#,
        p.version,
        p.salt,
        p.m_cost_kib,
        p.t_cost,
        p.p_cost,
        p.check_mac,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

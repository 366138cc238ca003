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

/// The recorded check value of each master key version (`master_key_checks`).
pub async fn find_key_checks(db: impl PgExecutor<'_>) -> Result<Vec<(i32, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query!("SELECT version, check_mac FROM master_key_checks ORDER BY version")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.version, r.check_mac)).collect())
}

/// Records a version's check value; `false` if it already has one (it never changes).
pub async fn insert_key_check(
    db: impl PgExecutor<'_>,
    version: i32,
    check_mac: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO master_key_checks (version, check_mac) VALUES ($1, $2)
        ON CONFLICT ON CONSTRAINT master_key_checks_pkey DO NOTHING
        "#,
        version,
        check_mac,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A live entry encrypted under `version`, if any: evidence for checking a key that has no
/// recorded check value yet.
pub async fn sample_entry_token(
    db: impl PgExecutor<'_>,
    version: i32,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT token FROM vault_entries WHERE key_version = $1 AND wrapped_key IS NOT NULL AND deleted_at IS NULL LIMIT 1",
        version,
    )
    .fetch_optional(db)
    .await
}

/// The newest audit seal made under `version`, if any (its chain position).
pub async fn newest_seal_of_version(
    db: impl PgExecutor<'_>,
    version: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT max(seq) FROM audit_seals WHERE key_version = $1",
        version,
    )
    .fetch_one(db)
    .await
}

/// A master key version stored wrapped by a key provider (`master_key_wraps`).
#[derive(Debug, Clone)]
pub struct KeyWrap {
    pub version: i32,
    pub provider: String,
    pub wrapped: Vec<u8>,
}

/// Every wrapped master key, by version.
pub async fn find_key_wraps(db: impl PgExecutor<'_>) -> Result<Vec<KeyWrap>, sqlx::Error> {
    sqlx::query_as!(
        KeyWrap,
        "SELECT version, provider, wrapped FROM master_key_wraps ORDER BY version"
    )
    .fetch_all(db)
    .await
}

/// Stores a wrapped master key; `false` if the version already has one (never replaced).
pub async fn insert_key_wrap(db: impl PgExecutor<'_>, wrap: &KeyWrap) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO master_key_wraps (version, provider, wrapped) VALUES ($1, $2, $3)
        ON CONFLICT ON CONSTRAINT master_key_wraps_pkey DO NOTHING
        "#,
        wrap.version,
        wrap.provider,
        wrap.wrapped,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The highest master key version known: wrapped, or with a recorded check value.
pub async fn highest_known_version(db: impl PgExecutor<'_>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT GREATEST(
            (SELECT max(version) FROM master_key_wraps),
            (SELECT max(version) FROM master_key_checks),
            (SELECT max(key_version) FROM vault_entries),
            0) AS "v!""#
    )
    .fetch_one(db)
    .await
}

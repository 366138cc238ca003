//! `key_share_sets`: the public record of each split of the root secret (see `crate::shares`).

use sqlx::PgExecutor;

use crate::shares::ShareSet;

pub async fn insert_share_set(db: impl PgExecutor<'_>, set: &ShareSet) -> Result<(), sqlx::Error> {
    let verifiers: Vec<Vec<u8>> = set.verifiers.iter().map(|v| v.to_vec()).collect();
    sqlx::query!(
        "INSERT INTO key_share_sets (set_id, threshold, shares, root_check, share_verifiers)
         VALUES ($1, $2, $3, $4, $5)",
        set.set_id,
        i32::from(set.threshold),
        i32::from(set.shares),
        &set.root_check[..],
        &verifiers,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The set `set_id`, or the newest one when `None`; `None` if there is no such set.
pub async fn find_share_set(
    db: impl PgExecutor<'_>,
    set_id: Option<&str>,
) -> Result<Option<ShareSet>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT set_id, threshold, shares, root_check, share_verifiers FROM key_share_sets
         WHERE $1::text IS NULL OR set_id = $1
         ORDER BY created_at DESC, set_id LIMIT 1",
        set_id,
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let corrupt = || sqlx::Error::Decode("key_share_sets holds a malformed row".into());
    let to32 = |v: &[u8]| <[u8; 32]>::try_from(v).map_err(|_| corrupt());
    Ok(Some(ShareSet {
        set_id: row.set_id,
        threshold: u8::try_from(row.threshold).map_err(|_| corrupt())?,
        shares: u8::try_from(row.shares).map_err(|_| corrupt())?,
        root_check: to32(&row.root_check)?,
        verifiers: row
            .share_verifiers
            .iter()
            .map(|v| to32(v))
            .collect::<Result<_, _>>()?,
    }))
}

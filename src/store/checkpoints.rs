//! What the audit checkpoint sinks and `audit verify --checkpoint-file` read of the seal chain
//! (see `audit::checkpoint`).

use sqlx::PgExecutor;

/// The chain MAC recorded at a position: a seal's (with its event), or a prune anchor's.
#[derive(Debug, Clone)]
pub struct PositionMac {
    pub seq: i64,
    /// `None` for a prune anchor (its event was deleted by an audited prune).
    pub event_id: Option<i64>,
    pub mac: Vec<u8>,
}

/// The chain MACs at `seqs`, from the seals and the prune anchors.
pub async fn macs_at(
    db: impl PgExecutor<'_>,
    seqs: &[i64],
) -> Result<Vec<PositionMac>, sqlx::Error> {
    sqlx::query_as!(
        PositionMac,
        r#"
        SELECT seq AS "seq!", event_id, mac AS "mac!" FROM (
            SELECT seq, event_id, mac FROM audit_seals WHERE seq = ANY($1)
            UNION ALL
            SELECT seq, NULL::bigint AS event_id, mac FROM audit_anchors WHERE seq = ANY($1)
        ) t ORDER BY seq
        "#,
        seqs
    )
    .fetch_all(db)
    .await
}

/// The newest chain position (seal or prune anchor) and the newest prune anchor's position:
/// positions up to the latter were pruned on purpose.
pub async fn extent(db: impl PgExecutor<'_>) -> Result<(Option<i64>, Option<i64>), sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT GREATEST((SELECT max(seq) FROM audit_seals), (SELECT max(seq) FROM audit_anchors)) AS "end",
               (SELECT max(seq) FROM audit_anchors) AS "pruned"
        "#
    )
    .fetch_one(db)
    .await?;
    Ok((row.end, row.pruned))
}

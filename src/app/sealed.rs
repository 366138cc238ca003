//! Starting sealed (`PAYVAULT_KEY_PROVIDER=shares`): the instance serves without master keys
//! until custodians unseal it; the rebuilt root then unwraps the master keys of
//! `master_key_wraps`, checked as at any start, and the instance serves without a restart.

use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;

use super::KeySource;
use crate::crypto::MasterKey;
use crate::custody::{KeyProvider, SharesProvider};
use crate::shares::unseal::{OpenKeys, Unsealer};
use crate::store;
use crate::store::audit_mac::EventSigner;

/// The unsealer that opens `signer`'s (sealed) key state with the share set `shares` names.
pub async fn start(
    pool: &PgPool,
    shares: Arc<SharesProvider>,
    audit_keys: Vec<MasterKey>,
    signer: Arc<EventSigner>,
) -> anyhow::Result<Arc<Unsealer>> {
    let set = store::shares::find_share_set(pool, shares.set_id())
        .await
        .context("cannot read the share sets (key_share_sets)")?
        .ok_or_else(|| match shares.set_id() {
            Some(id) => anyhow::anyhow!("PAYVAULT_SHARE_SET={id}: no such share set in the database (see `payvault keys split`)"),
            None => anyhow::anyhow!("PAYVAULT_KEY_PROVIDER=shares: no share set in the database: run `payvault keys split` first"),
        })?;
    let audit_keys = Arc::new(audit_keys);
    let open: OpenKeys = {
        let pool = pool.clone();
        Box::new(move |root| {
            let (pool, shares, audit_keys) = (pool.clone(), shares.clone(), audit_keys.clone());
            Box::pin(async move {
                // The root reproduced its set's check value: it is the one, whatever follows.
                shares.set_root(root);
                KeySource::Provider {
                    provider: KeyProvider::Shares(shares),
                    audit_keys: audit_keys.iter().map(MasterKey::duplicate).collect(),
                }
                .load(&pool)
                .await
            })
        })
    };
    tracing::warn!(
        set_id = %set.set_id,
        threshold = set.threshold,
        "payvault is SEALED: it serves no card operation until {} custodians submit their shares (payvault unseal)",
        set.threshold
    );
    Ok(Arc::new(Unsealer::new(set, signer, pool.clone(), open)))
}

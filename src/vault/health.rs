//! What readiness and metrics need to know about the vault's database and keys.

use std::time::Duration;

use super::Vault;
use crate::store;

/// Whether the database can serve this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    /// Reachable, with every migration this build knows applied.
    Current,
    /// Reachable, but migrations are missing.
    Pending,
    /// Not reachable within the deadline.
    Unreachable,
}

/// Connections in the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
}

impl Vault {
    /// The schema's state, answered within `deadline` (a probe wants a prompt answer, not the
    /// pool's whole acquire timeout).
    pub async fn schema_state(&self, deadline: Duration) -> SchemaState {
        let latest = store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match tokio::time::timeout(deadline, store::applied_migration(&self.pool)).await {
            Ok(Ok(Some(v))) if v >= latest => SchemaState::Current,
            Ok(Ok(_)) => SchemaState::Pending,
            Ok(Err(_)) | Err(_) => SchemaState::Unreachable,
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
        }
    }
}

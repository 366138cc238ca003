//! Whether this instance holds its master keys: from the start (keys from the environment or a
//! provider), or only once it is unsealed (split custodians). Sealed, every path that needs a
//! key gets [`Sealed`] and answers `vault_sealed`; unsealing sets the ring once, and whatever
//! waits for it ([`KeyState::wait`]: the audit sealer, checkpoints) starts then, without a
//! restart.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::KeyRing;

/// The instance is sealed: its master keys are not loaded until custodians unseal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the vault is sealed: it opens once enough custodians have submitted their shares (`payvault unseal`)")]
pub struct Sealed;

#[derive(Debug)]
pub struct KeyState {
    ring: OnceLock<Arc<KeyRing>>,
    opened: watch::Sender<bool>,
}

impl KeyState {
    /// Keys loaded at start.
    pub fn unsealed(ring: Arc<KeyRing>) -> Arc<Self> {
        let state = Self::sealed();
        state.unseal(ring);
        state
    }

    /// No keys until [`KeyState::unseal`].
    pub fn sealed() -> Arc<Self> {
        Arc::new(Self {
            ring: OnceLock::new(),
            opened: watch::Sender::new(false),
        })
    }

    /// The key ring, or [`Sealed`].
    pub fn get(&self) -> Result<&Arc<KeyRing>, Sealed> {
        self.ring.get().ok_or(Sealed)
    }

    pub fn is_sealed(&self) -> bool {
        self.ring.get().is_none()
    }

    /// Sets the ring; `false` (and `ring` dropped) if it was already set.
    pub fn unseal(&self, ring: Arc<KeyRing>) -> bool {
        let first = self.ring.set(ring).is_ok();
        if first {
            self.opened.send_replace(true);
        }
        first
    }

    /// Waits until the ring is set.
    pub async fn wait(&self) -> Arc<KeyRing> {
        let mut opened = self.opened.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = opened.wait_for(|open| *open).await;
        match self.ring.get() {
            Some(ring) => ring.clone(),
            None => unreachable!("the ring is set before `opened` turns true"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[tokio::test]
    async fn waiters_start_when_unsealed() {
        let state = KeyState::sealed();
        assert_eq!(state.get().unwrap_err(), Sealed);
        let waiter = tokio::spawn({
            let state = state.clone();
            async move { state.wait().await.current_version() }
        });
        let ring = Arc::new(KeyRing::from_keys(vec![MasterKey::generate(4)]).unwrap());
        assert!(state.unseal(ring.clone()));
        assert!(!state.unseal(ring));
        assert_eq!(waiter.await.unwrap(), 4);
        assert_eq!(state.get().unwrap().current_version(), 4);
    }
}

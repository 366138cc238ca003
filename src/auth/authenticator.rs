//! Verifies presented credentials, caching successful verifications.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use hmac::Mac;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::credential::{hash_secret, CredentialKind, Principal, Scope};
use super::verifier::Verifier;
use crate::crypto::HmacSha256;
use crate::domain::SecretText;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong secret and revoked credential all look the same to the caller.
    #[error("invalid credentials")]
    Invalid,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

struct Cached {
    principal: Arc<Principal>,
    /// Per-process HMAC of (username, secret): proves the secret matched without keeping it.
    secret_mac: [u8; 32],
    expires: Instant,
}

/// Checks usernames and secrets against the `credentials` table.
pub struct Authenticator {
    pool: PgPool,
    cache: Mutex<HashMap<String, Cached>>,
    cache_key: HmacSha256,
    ttl: Duration,
    /// Argon2 runs on one worker thread per core, so a flood of bad passwords cannot take more
    /// than those (nor more memory than one 19 MiB buffer each).
    verifier: Verifier,
    /// Concurrent cache misses for one username wait for each other, so a cold cache under load
    /// costs one Argon2 verification per credential, not one per request.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Verified against when the username is unknown, so that case costs the same time.
    dummy_hash: String,
    /// Bumped by every cache clear. A verification only caches its result if no clear happened
    /// since it read the credential, so a revocation that lands mid-verification sticks.
    generation: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        let cache_key = match <HmacSha256 as Mac>::new_from_slice(key.as_ref()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            pool,
            cache: Mutex::new(HashMap::new()),
            cache_key,
            ttl,
            verifier: Verifier::start(permits),
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            dummy_hash: hash_secret(&SecretText::from("payvault-dummy-secret")),
            generation: AtomicU64::new(0),
        }
    }

    /// Which lock stripe a username's verifications serialise on.
    fn stripe_of(&self, username: &str) -> u8 {
        let mut mac = self.cache_key.clone();
        mac.update(username.as_bytes());
        mac.finalize().into_bytes()[0]
    }

    fn secret_mac(&self, username: &str, secret: &SecretText) -> [u8; 32] {
        let mut mac = self.cache_key.clone();
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(secret.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Returns the principal if `secret` is the current secret of the active credential
    /// `username`.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &SecretText,
    ) -> Result<Arc<Principal>, AuthError> {
        let secret_mac = self.secret_mac(username, secret);
        if let Some(principal) = self.cached(username, &secret_mac) {
            return Ok(principal);
        }
        let stripe = usize::from(self.stripe_of(username)) % self.stripes.len();
        let _one_at_a_time = self.stripes[stripe].lock().await;
        if let Some(principal) = self.cached(username, &secret_mac) {
            return Ok(principal);
        }

        let generation = self.generation.load(Ordering::SeqCst);
        let row = store::credentials::find_credential_by_username(&self.pool, username).await?;
        let active = row.filter(|r| r.revoked_at.is_none());
        let hash = active
            .as_ref()
            .map_or(self.dummy_hash.clone(), |r| r.secret_hash.clone());
        let verified = self.verify_off_runtime(hash, secret).await && active.is_some();
        let Some(row) = active.filter(|_| verified) else {
            return Err(AuthError::Invalid);
        };

        let principal = Arc::new(Principal {
            id: row.id,
            username: row.username,
            name: row.name,
            kind: row.kind.parse().unwrap_or(CredentialKind::Api),
            scopes: row
                .scopes
                .iter()
                .filter_map(|s| s.parse::<Scope>().ok())
                .collect(),
        });
        let mut cache = self.lock_cache();
        if self.generation.load(Ordering::SeqCst) != generation {
            // Credentials changed while we verified: answer this request, cache nothing.
            return Ok(principal);
        }
        cache.insert(
            username.to_owned(),
            Cached {
                principal: principal.clone(),
                secret_mac,
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(principal)
    }

    fn cached(&self, username: &str, secret_mac: &[u8; 32]) -> Option<Arc<Principal>> {
        let cache = self.lock_cache();
        let hit = cache.get(username)?;
        let fresh = hit.expires > Instant::now();
        let matches: bool = hit.secret_mac.ct_eq(secret_mac).into();
        (fresh && matches).then(|| hit.principal.clone())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // The map holds no invariant a panicking writer could break; keep using it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs Argon2id verification on the dedicated worker threads.
    async fn verify_off_runtime(&self, phc: String, secret: &SecretText) -> bool {
        self.verifier.verify(phc, secret).await
    }

    /// Forgets every cached verification.
    pub fn clear_cache(&self) {
        let mut cache = self.lock_cache();
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.clear();
    }

    /// Follows credential changes announced by any instance (or the CLI) and clears the cache,
    /// so a revocation takes effect everywhere at once. If the notification connection drops,
    /// notifications may have been missed, so the cache is cleared then too. Runs until the
    /// process ends.
    pub async fn follow_changes(self: Arc<Self>) {
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => {
                    if listener
                        .listen(store::credentials::CHANGED_CHANNEL)
                        .await
                        .is_ok()
                    {
                        self.clear_cache();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => self.clear_cache(),
                                Ok(None) | Err(_) => {
                                    self.clear_cache();
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "credential change listener cannot connect"),
            }
            // Until the listener is back, cached entries still expire after the TTL.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

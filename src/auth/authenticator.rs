//! Verifies presented credentials, caching successful verifications.

use std::collections::HashMap;
use std::net::IpAddr;
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
use super::throttle::Throttle;
use super::verifier::{Busy, Lane, Verifier};
use crate::crypto::HmacSha256;
use crate::domain::SecretText;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong secret, revoked credential and disabled tenant all look the same to
    /// the caller.
    #[error("invalid credentials")]
    Invalid,
    /// Too many failed attempts from this source (or against this username from a source that
    /// failed too), or the verification queue is full: refused before any Argon2 work.
    #[error("too many failed attempts")]
    Throttled { retry_after: Duration },
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
    /// Failed attempts per source and per username, checked before any verification.
    throttle: Throttle,
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
        let verifier = Verifier::start(permits);
        // One hash at start gives the cost an unknown username is made to wait (see
        // `authenticate`) before any real verification has run.
        let started = Instant::now();
        let _ = hash_secret(&SecretText::from("payvault-calibration-secret"));
        verifier.seed_average(started.elapsed());
        Self {
            pool,
            cache: Mutex::new(HashMap::new()),
            cache_key,
            ttl,
            verifier,
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            throttle: Throttle::default(),
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
    /// `username`; `source` is the caller's address, for throttling.
    ///
    /// Cost control, in order: a secret verified within the cache TTL costs one HMAC; a source
    /// (or a username, for sources that failed) past its failure budget is refused before the
    /// database is asked; an unknown or revoked username runs no Argon2 but waits as long as a
    /// verification takes on average (so response time does not tell whether a username exists,
    /// without spending CPU on it); verifications from clean sources, or of a secret this
    /// instance verified before, queue ahead of those from failing sources.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &SecretText,
        source: IpAddr,
    ) -> Result<Arc<Principal>, AuthError> {
        let secret_mac = self.secret_mac(username, secret);
        let known = self.known(username, &secret_mac);
        if let Some((principal, true)) = &known {
            return Ok(principal.clone());
        }
        // A secret verified here before (the entry only expired) is never throttled: a flood
        // naming a credential must not lock out its owner.
        let known_secret = known.is_some();
        if !known_secret {
            if let Some(retry_after) = self.throttle.refused(source, username) {
                metrics::counter!("payvault_auth_throttled_total").increment(1);
                return Err(AuthError::Throttled { retry_after });
            }
        }
        let lane = if known_secret || self.throttle.is_clean(source) {
            Lane::First
        } else {
            Lane::Suspect
        };
        let stripe = usize::from(self.stripe_of(username)) % self.stripes.len();
        let one_at_a_time = self.stripes[stripe].lock().await;
        if let Some((principal, true)) = self.known(username, &secret_mac) {
            return Ok(principal);
        }

        let generation = self.generation.load(Ordering::SeqCst);
        let row = store::credentials::find_usable_credential(&self.pool, username).await?;
        let Some(row) = row else {
            drop(one_at_a_time);
            self.throttle.record_failure(source, None);
            tokio::time::sleep(self.verifier.average()).await;
            return Err(AuthError::Invalid);
        };
        let verified = match self
            .verifier
            .verify_in(lane, row.secret_hash.clone(), secret)
            .await
        {
            Ok(verified) => verified,
            Err(Busy) => {
                metrics::counter!("payvault_auth_throttled_total").increment(1);
                return Err(AuthError::Throttled {
                    retry_after: Duration::from_secs(1),
                });
            }
        };
        metrics::counter!("payvault_auth_argon2_verifications_total").increment(1);
        drop(one_at_a_time);
        if !verified {
            self.throttle.record_failure(source, Some(username));
            return Err(AuthError::Invalid);
        }

        let principal = Arc::new(Principal {
            id: row.id,
            tenant_id: row.tenant_id,
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

    /// The cached principal if this secret was verified here since the last cache clear, and
    /// whether that verification is still fresh (within the TTL).
    fn known(&self, username: &str, secret_mac: &[u8; 32]) -> Option<(Arc<Principal>, bool)> {
        let cache = self.lock_cache();
        let hit = cache.get(username)?;
        let matches: bool = hit.secret_mac.ct_eq(secret_mac).into();
        matches.then(|| (hit.principal.clone(), hit.expires > Instant::now()))
    }

    /// How many Argon2 verifications this authenticator has run.
    pub fn verifications(&self) -> u64 {
        self.verifier.runs()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // The map holds no invariant a panicking writer could break; keep using it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
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

//! Argon2id verification on dedicated threads.
//!
//! Each worker keeps one Argon2 memory buffer (19 MiB at the default cost) for its whole life:
//! allocating and freeing it per verification on the blocking pool left a copy retained in
//! every thread's malloc arena (hundreds of MB of RSS under load). The buffer is wiped after
//! each use, since it holds material derived from the secret.

use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::domain::SecretText;

struct Job {
    phc: String,
    secret: SecretText,
    reply: oneshot::Sender<bool>,
}

/// A pool of verification threads; cloning shares it.
#[derive(Clone)]
pub struct Verifier {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

/// Verifications waiting beyond this many make callers wait (backpressure on login floods).
const QUEUE: usize = 256;

impl Verifier {
    /// Starts `workers` threads; they end when the last `Verifier` is dropped.
    pub fn start(workers: usize) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("payvault-argon2-{i}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        let job = rx
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .blocking_recv();
                        let Some(job) = job else { return };
                        let ok = verify(&job.phc, &job.secret, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an Argon2 worker thread");
            }
        }
        Self { jobs }
    }

    /// True if `secret` matches the Argon2id PHC string `phc`.
    pub async fn verify(&self, phc: String, secret: &SecretText) -> bool {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            phc,
            secret: SecretText::new(secret.expose().to_owned()),
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// Verifies with caller-owned memory, then wipes it.
fn verify(phc: &str, secret: &SecretText, memory: &mut Vec<Block>) -> bool {
    let result = (|| {
        let hash = PasswordHash::new(phc).ok()?;
        let params = Params::try_from(&hash).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()
            .ok()?
            .unwrap_or_default();
        let expected = hash.hash?;
        let mut salt = [0u8; 64];
        let salt = hash.salt?.decode_b64(&mut salt).ok()?;
        memory.resize(params.block_count(), Block::default());
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(
                secret.expose().as_bytes(),
                salt,
                &mut out,
                &mut memory[..],
            )
            .ok()?;
        Some(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
    })();
    memory.iter_mut().for_each(|b| *b = Block::default());
    result.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_secret;

    #[tokio::test]
    async fn verifies_argon2id_hashes() {
        let verifier = Verifier::start(1);
        let secret = SecretText::from("pvs_correct");
        let phc = hash_secret(&secret);
        assert!(verifier.verify(phc.clone(), &secret).await);
        assert!(
            !verifier
                .verify(phc.clone(), &SecretText::from("pvs_wrong"))
                .await
        );
        assert!(!verifier.verify("not a hash".into(), &secret).await);
        // The same worker, memory reused, still right.
        assert!(verifier.verify(phc, &secret).await);
    }
}

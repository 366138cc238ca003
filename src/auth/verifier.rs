//! Argon2id verification on dedicated threads.
//!
//! Each worker keeps one Argon2 memory buffer (19 MiB at the default cost) for its whole life:
//! allocating and freeing it per verification on the blocking pool left a copy retained in
//! every thread's malloc arena (hundreds of MB of RSS under load). The buffer is wiped after
//! each use, since it holds material derived from the secret.
//!
//! Jobs wait in two short queues. `Lane::First` (attempts from sources with no recent failure,
//! or presenting a secret this instance verified before) is always served before
//! `Lane::Suspect`, so a legitimate cold-cache login does not wait behind a flood of bad ones;
//! a full queue answers [`Busy`] at once instead of piling up waiters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::domain::SecretText;

struct Job {
    phc: String,
    secret: SecretText,
    reply: oneshot::Sender<bool>,
}

/// Which queue a verification waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Served first: clean sources, secrets verified here before.
    First,
    /// Served when `First` is empty: sources that failed recently.
    Suspect,
}

/// The queue for this lane is full: the verification was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

#[derive(Default)]
struct Queues {
    first: VecDeque<Job>,
    suspect: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    /// Verifications run (Argon2 computations), for metrics and tests.
    runs: AtomicU64,
    /// Moving average of one verification's duration, in microseconds.
    average_micros: AtomicU64,
    first_capacity: usize,
    suspect_capacity: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // The queues hold no invariant a panicking holder could break.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queues when the last [`Verifier`] is dropped, ending the threads.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// A pool of verification threads; cloning shares it.
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    /// Starts `workers` threads; they end when the last `Verifier` is dropped. Each lane queues
    /// at most a few verifications per worker: beyond that a wait would outlast Twilio's 10 s.
    pub fn start(workers: usize) -> Self {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            runs: AtomicU64::new(0),
            average_micros: AtomicU64::new(0),
            first_capacity: 32 * workers,
            suspect_capacity: 2 * workers,
        });
        for i in 0..workers {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("payvault-argon2-{i}"))
                .spawn(move || work(&shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an Argon2 worker thread");
            }
        }
        Self {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        }
    }

    /// True if `secret` matches the Argon2id PHC string `phc`; [`Busy`] if `lane`'s queue is
    /// full.
    pub async fn verify_in(
        &self,
        lane: Lane,
        phc: String,
        secret: &SecretText,
    ) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            phc,
            secret: SecretText::new(secret.expose().to_owned()),
            reply,
        };
        {
            let mut queues = self.shared.lock();
            let (queue, capacity) = match lane {
                Lane::First => (&mut queues.first, self.shared.first_capacity),
                Lane::Suspect => (&mut queues.suspect, self.shared.suspect_capacity),
            };
            if queue.len() >= capacity {
                return Err(Busy);
            }
            queue.push_back(job);
        }
        self.shared.ready.notify_one();
        Ok(answer.await.unwrap_or(false))
    }

    /// True if `secret` matches `phc` (first lane; a full queue counts as not verified).
    #[cfg(test)]
    pub async fn verify(&self, phc: String, secret: &SecretText) -> bool {
        self.verify_in(Lane::First, phc, secret)
            .await
            .unwrap_or(false)
    }

    /// How many Argon2 verifications have run.
    pub fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Relaxed)
    }

    /// The recent average duration of one verification (zero before the first).
    pub fn average(&self) -> Duration {
        Duration::from_micros(self.shared.average_micros.load(Ordering::Relaxed))
    }

    /// Seeds the average (with a measured run made elsewhere, say at start).
    pub fn seed_average(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let _ = self.shared.average_micros.compare_exchange(
            0,
            micros,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

fn work(shared: &Shared) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let mut queues = shared.lock();
            loop {
                if let Some(job) = queues
                    .first
                    .pop_front()
                    .or_else(|| queues.suspect.pop_front())
                {
                    break job;
                }
                if queues.closed {
                    return;
                }
                queues = shared
                    .ready
                    .wait(queues)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // The caller gave up (its client hung up): nobody needs the answer.
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        let ok = verify(&job.phc, &job.secret, &mut memory);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let old = shared.average_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            micros
        } else {
            (old * 7 + micros) / 8
        };
        shared.average_micros.store(new, Ordering::Relaxed);
        shared.runs.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(ok);
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
        assert_eq!(verifier.runs(), 4);
        assert!(verifier.average() > Duration::ZERO);
    }

    #[tokio::test]
    async fn a_full_suspect_queue_answers_busy_at_once() {
        let verifier = Verifier::start(1);
        let secret = SecretText::from("pvs_correct");
        let phc = hash_secret(&secret);
        // One worker: one job runs, two wait, the rest are refused without waiting.
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (v, phc, secret) = (verifier.clone(), phc.clone(), secret.expose().to_owned());
                tokio::spawn(async move {
                    v.verify_in(Lane::Suspect, phc, &SecretText::from(secret.as_str()))
                        .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let busy = answers.iter().filter(|a| **a == Err(Busy)).count();
        assert!(busy >= 5, "{answers:?}");
        assert!(answers.contains(&Ok(true)), "{answers:?}");
        // The first lane still has room.
        assert_eq!(
            verifier.verify_in(Lane::First, phc, &secret).await,
            Ok(true)
        );
    }
}

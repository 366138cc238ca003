//! Unsealing one instance: custodians submit shares one at a time (`payvault unseal`, which
//! POSTs to `/unseal`); each share is checked against its set's verifier when submitted and
//! kept in zeroizing memory of this process only. The K-th distinct share rebuilds the root,
//! which must reproduce the set's check value and open the wrapped master keys; the instance
//! then serves. A wrong root discards every pending share. Every submission, accepted or not, is
//! an audit event naming the custodian (never the share). Sealed, no event can be MAC'd: they
//! are held by the instance's writer and written, in order, once the K-th share unseals it
//! (see `store::audit_held`); a submission whose event cannot be recorded does not count.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use zeroize::Zeroizing;

use super::{Share, ShareRejection, ShareSet};
use crate::audit::{AuditEvent, Origin};
use crate::crypto::KeyRing;
use crate::store::audit_mac::EventSigner;

/// Opens the master keys with a rebuilt root (reads and unwraps them, checks their check values).
pub type OpenKeys = Box<
    dyn Fn(
            Zeroizing<[u8; 32]>,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<Arc<KeyRing>>> + Send>>
        + Send
        + Sync,
>;

/// Refused submissions allowed per [`THROTTLE_WINDOW`] on one instance before further
/// submissions are answered 429.
pub const MAX_REFUSALS: usize = 10;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// Where unsealing stands after an accepted share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub submitted: u8,
    pub threshold: u8,
    pub unsealed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("this instance is already unsealed")]
    AlreadyUnsealed,
    #[error("the custodian name {0}")]
    InvalidCustodian(&'static str),
    #[error(transparent)]
    Rejected(#[from] ShareRejection),
    #[error("custodian {0} has already submitted a share to this instance")]
    DuplicateCustodian(String),
    #[error("share {0} has already been submitted to this instance (by another custodian)")]
    DuplicateShare(u8),
    #[error("the root secret was rebuilt but the master keys could not be opened ({0}); every pending share was discarded")]
    OpenFailed(String),
    #[error("too many refused submissions; retry after the Retry-After seconds")]
    Throttled(Duration),
    #[error("the audit log could not be written; the share was not counted")]
    Audit(#[source] sqlx::Error),
}

impl SubmitError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyUnsealed => "already_unsealed",
            Self::InvalidCustodian(_) => "invalid_custodian",
            Self::Rejected(r) => r.code(),
            Self::DuplicateCustodian(_) => "duplicate_custodian",
            Self::DuplicateShare(_) => "duplicate_share",
            Self::OpenFailed(_) => "unseal_failed",
            Self::Throttled(_) => "too_many_attempts",
            Self::Audit(_) => "internal_error",
        }
    }
}

struct Pending {
    custodian: String,
    share: Share,
}

/// What a submission would do, decided before its audit event is written.
enum Step {
    Keep(Pending),
    Open(Arc<KeyRing>),
    Refuse(SubmitError),
}

/// One instance's unsealing: the set it expects, the shares submitted so far.
pub struct Unsealer {
    set: ShareSet,
    /// The instance's audit writer, and through it the key state unsealing sets.
    signer: Arc<EventSigner>,
    pool: PgPool,
    open: OpenKeys,
    pending: tokio::sync::Mutex<Vec<Pending>>,
    refusals: std::sync::Mutex<VecDeque<Instant>>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealer")
            .field("set_id", &self.set.set_id)
            .field("threshold", &self.set.threshold)
            .finish_non_exhaustive()
    }
}

impl Unsealer {
    pub fn new(set: ShareSet, signer: Arc<EventSigner>, pool: PgPool, open: OpenKeys) -> Self {
        Self {
            set,
            signer,
            pool,
            open,
            pending: tokio::sync::Mutex::new(Vec::new()),
            refusals: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    pub fn set(&self) -> &ShareSet {
        &self.set
    }

    /// Shares accepted so far (0 once unsealed).
    pub async fn submitted(&self) -> u8 {
        u8::try_from(self.pending.lock().await.len()).unwrap_or(u8::MAX)
    }

    /// Submits `custodian`'s share (its text, as printed by `keys split`).
    pub async fn submit(
        &self,
        custodian: &str,
        text: &str,
        origin: &Origin,
    ) -> Result<Progress, SubmitError> {
        if let Some(wait) = self.throttled() {
            tracing::warn!("unseal submission throttled: too many refused submissions");
            return Err(SubmitError::Throttled(wait));
        }
        let custodian = custodian.trim();
        let mut pending = self.pending.lock().await;
        let parsed = Share::parse(text);
        let index = parsed.as_ref().ok().map(|s| s.index);
        let step = match parsed {
            Err(e) => Step::Refuse(ShareRejection::from(e).into()),
            Ok(share) => self.step(&pending, custodian, share).await,
        };
        let submitted = match &step {
            Step::Keep(_) => pending.len() + 1,
            Step::Open(_) => usize::from(self.set.threshold),
            Step::Refuse(_) => pending.len(),
        };
        let progress = Progress {
            submitted: u8::try_from(submitted).unwrap_or(u8::MAX),
            threshold: self.set.threshold,
            unsealed: matches!(step, Step::Open(_)),
        };
        let event = self.event(origin, custodian, index, &step, progress);
        // Sealed, the event is held and written (MAC'd) at unseal, with the others held; a
        // share that takes effect is never dropped from a full queue (see store::audit_held).
        let audited = match &step {
            Step::Refuse(_) => self.signer.record(&self.pool, &event).await,
            Step::Keep(_) | Step::Open(_) => self.signer.record_essential(&self.pool, &event).await,
        };
        match step {
            Step::Refuse(e) => {
                if matches!(
                    e,
                    SubmitError::OpenFailed(_)
                        | SubmitError::Rejected(ShareRejection::WrongRoot(_))
                ) {
                    pending.clear();
                }
                self.refused();
                audited.map_err(SubmitError::Audit)?;
                Err(e)
            }
            Step::Keep(p) => {
                audited.map_err(SubmitError::Audit)?;
                pending.push(p);
                Ok(progress)
            }
            Step::Open(ring) => {
                audited.map_err(SubmitError::Audit)?;
                pending.clear();
                self.signer.key_state().unseal(ring);
                tracing::info!(set_id = %self.set.set_id, "unsealed: the master keys are loaded");
                // What was held (this submission last) is written before the answer; on a
                // database error the instance's release task retries.
                if let Err(e) = self.signer.release(&self.pool).await {
                    tracing::warn!(error = %e, "could not yet write the audit events held while sealed; will retry");
                }
                Ok(progress)
            }
        }
    }

    async fn step(&self, pending: &[Pending], custodian: &str, share: Share) -> Step {
        if !self.signer.key_state().is_sealed() {
            return Step::Refuse(SubmitError::AlreadyUnsealed);
        }
        if let Err(why) = crate::domain::audit::check_operator_name(custodian) {
            return Step::Refuse(SubmitError::InvalidCustodian(why));
        }
        if let Err(e) = self.set.verify(&share) {
            return Step::Refuse(e.into());
        }
        if pending
            .iter()
            .any(|p| p.custodian.to_lowercase() == custodian.to_lowercase())
        {
            return Step::Refuse(SubmitError::DuplicateCustodian(custodian.to_owned()));
        }
        if pending.iter().any(|p| p.share.index == share.index) {
            return Step::Refuse(SubmitError::DuplicateShare(share.index));
        }
        if pending.len() + 1 < usize::from(self.set.threshold) {
            return Step::Keep(Pending {
                custodian: custodian.to_owned(),
                share,
            });
        }
        let mut shares: Vec<&Share> = pending.iter().map(|p| &p.share).collect();
        shares.push(&share);
        let root = match self.set.combine(&shares) {
            Ok(root) => root,
            Err(e) => return Step::Refuse(e.into()),
        };
        match (self.open)(root).await {
            Ok(ring) => Step::Open(ring),
            Err(e) => Step::Refuse(SubmitError::OpenFailed(format!("{e:#}"))),
        }
    }

    /// The audit event of one submission: the custodian's name as given, the set and share
    /// index (public), the outcome and progress; never the share.
    fn event(
        &self,
        origin: &Origin,
        custodian: &str,
        index: Option<u8>,
        step: &Step,
        progress: Progress,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(origin, "custodian", "unseal_submit");
        // A name that failed its check may hold anything: not recorded.
        let name_ok = crate::domain::audit::check_operator_name(custodian).is_ok();
        event.details = serde_json::json!({
            "custodian": if name_ok { Some(custodian) } else { None },
            "set_id": self.set.set_id,
            "share_index": index,
            "submitted": progress.submitted,
            "threshold": progress.threshold,
            "status": match step {
                Step::Keep(_) => "accepted",
                Step::Open(_) => "unsealed",
                Step::Refuse(_) => "rejected",
            },
        });
        if let Step::Open(ring) = step {
            event.details["key_versions"] = ring.versions().collect::<Vec<_>>().into();
        }
        if let Step::Refuse(e) = step {
            event = event.failed(e.code());
        }
        event
    }

    fn throttled(&self) -> Option<Duration> {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while refusals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= THROTTLE_WINDOW)
        {
            refusals.pop_front();
        }
        (refusals.len() >= MAX_REFUSALS).then(|| {
            refusals.front().map_or(THROTTLE_WINDOW, |t| {
                THROTTLE_WINDOW - now.duration_since(*t)
            })
        })
    }

    fn refused(&self) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals.push_back(Instant::now());
    }
}

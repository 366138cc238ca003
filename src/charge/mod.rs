//! The charge flow: forward a card (or a card resolved from a token) to the processor exactly
//! once per (credential, idempotency key), across any number of payvault instances.
//!
//! State machine of a charge's idempotency record (all transitions in Postgres):
//!
//! ```text
//!   (none) --claim--> in_flight --processor approved--> succeeded   (final, replayed)
//!                         |      --processor declined--> failed      (final, replayed)
//!                         |      --timeout / 5xx / bad answer / unreachable--> unknown
//!                         +-- lease expired (no heartbeat: instance died) --+
//!   unknown | expired in_flight --retry takes over--> in_flight (same processor key)
//! ```
//!
//! - The attempt in flight renews its lease (a few seconds) by heartbeat while it runs, so the
//!   lease expires only after its instance died: a retry on another instance then takes over
//!   within the lease, well inside Twilio's 10 s budget, rather than waiting out the processor
//!   timeout. An attempt that outlived its lease cannot record its outcome over the newer one's.
//! - A retry of a final record gets the stored outcome: the same `charge_id`, byte for byte.
//! - A retry while another attempt is in flight waits for it, polling the record, for at most
//!   `wait` (below Twilio's 10 s), and never calls the processor itself.
//! - A retry of an `unknown` outcome re-sends with the same processor idempotency key, fixed at
//!   the first attempt, so a processor that honours it cannot charge twice; only if the
//!   processor says a re-send is safe ([`Processor::resend_safety`]: `header` or
//!   `duplicate_window`). With `lookup` the retry first asks the processor what became of the
//!   attempt (a transaction found is the outcome; none found, the sale is sent); with
//!   `reversal` it first undoes every earlier attempt, each under its own reference, and sends
//!   the sale under a new one only once all are confirmed undone; either waits
//!   [`Processor::recovery_delay`] after the earlier attempt. Otherwise the outcome stays
//!   unknown: a retry is answered
//!   `processor_outcome_unknown` without calling the processor, an abandoned attempt is marked
//!   unknown the same way, and the charge waits for reconciliation (`payvault charges unknown`).
//!
//! Stored credentials: a charge of a stored token is merchant-initiated (no CVV), citing the
//! network transaction id stored with the token if this processor issued it; the first approved
//! charge through a processor that returns one (a `save_card` charge, or the first charge of a
//! tokenized card) stores it with the processor's name, once per processor.
//! - The same key with a different payload is refused as a duplicate.
//!
//! Every attempt and every outcome is audited in the transaction that records it.
//!
//! A charge reads top to bottom in [`Charger::charge`]: resolve the source ([`resolve`]), claim
//! the key or wait for another attempt ([`claim`]), call the processor and record the outcome
//! ([`outcome`]), or answer a retry of a finished charge from its record (`replay`).

mod claim;
mod outcome;
mod resolve;

use claim::Claim;
use resolve::{Resolved, StoredCredential};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, Origin};
use crate::auth::Principal;
use crate::crypto::CryptoError;
use crate::domain::{Amount, InvalidInput, PaymentMethod, Token};
use crate::processor::{Initiator, Processor};
use crate::store::charges::ChargeRecord;
use crate::vault::Vault;

pub use crate::store::charges::ChargeState;

/// Where the money comes from.
#[derive(Debug)]
pub enum Source {
    /// Card or bank data in the request.
    Payment(PaymentMethod),
    /// A stored token (recurring billing: no CVV).
    Token(Token),
}

/// A validated charge request.
#[derive(Debug)]
pub struct ChargeRequest {
    /// Twilio's `transaction_id`, or the merchant's `Idempotency-Key`.
    pub key: String,
    pub source: Source,
    pub amount: Amount,
    /// Also vault the card and return its token (`<Parameter name="save_card" value="true">`).
    pub save_card: bool,
    /// Expiry of the token `save_card` creates.
    pub token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub description: Option<String>,
    pub parameters: BTreeMap<String, String>,
}

/// A charge's result as stored for replay and rendered by each interface. Never card data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeOutcome {
    pub charge_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The token of a card vaulted by this charge, or the token charged.
    pub token_id: Option<String>,
}

impl ChargeOutcome {
    pub fn approved(&self) -> bool {
        self.charge_id.is_some() && self.error_code.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Charged {
    pub outcome: ChargeOutcome,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("{0}")]
    Invalid(InvalidInput),
    #[error("no such token")]
    UnknownToken,
    #[error("the token was deleted")]
    TokenDeleted,
    #[error("the token has expired")]
    TokenExpired,
    #[error("this idempotency key was already used for a different request")]
    Duplicate,
    /// A retry that came after the answer's retention period: refused, never charged again.
    #[error("this idempotency key was already used, longer ago than answers are kept; it was not charged again")]
    AnswerPurged,
    #[error("an earlier attempt with this idempotency key is still in progress; retry shortly")]
    InProgress,
    /// A merchant-initiated charge through a processor that needs a network transaction id of
    /// its own, for a token that has none from it. Processor names are not secret.
    #[error("{0}")]
    NoStoredCredential(String),
    /// A stored entry failed authentication: its ciphertext, or a column bound to it (kind,
    /// expiry), was altered in the database. Nothing was sent to the processor.
    #[error("the stored token failed its integrity check and was not charged")]
    EntryIntegrity,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("key error")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Sealed(#[from] crate::crypto::Sealed),
}

/// `<Parameter name="stored_credential">` (Twilio) / `"stored_credential"` (merchant API): what
/// kind of merchant-initiated charge a token charge is.
pub const STORED_CREDENTIAL_PARAMETER: &str = "stored_credential";

/// Whether a token charge is `recurring` (a series at fixed intervals) rather than
/// `unscheduled` (the default). Anything else is refused, naming the field, never the value.
pub fn recurring(parameters: &BTreeMap<String, String>) -> Result<bool, InvalidInput> {
    match parameters
        .get(STORED_CREDENTIAL_PARAMETER)
        .map(|v| v.trim())
    {
        None | Some("") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("unscheduled") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("recurring") => Ok(true),
        Some(_) => Err(InvalidInput::StoredCredential),
    }
}

impl ChargeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChargeError::Invalid(i) => i.code(),
            ChargeError::UnknownToken => "unknown_token",
            ChargeError::TokenDeleted => "token_deleted",
            ChargeError::TokenExpired => "token_expired",
            ChargeError::Duplicate | ChargeError::AnswerPurged => "duplicate_transaction",
            ChargeError::InProgress => "transaction_in_progress",
            ChargeError::NoStoredCredential(_) => "stored_credential_unavailable",
            ChargeError::EntryIntegrity => "token_integrity_failed",
            ChargeError::Database(_) | ChargeError::Crypto(_) => "internal_error",
            ChargeError::Sealed(_) => "vault_sealed",
        }
    }
}

/// Charges through a processor.
#[derive(Debug, Clone)]
pub struct Charger {
    /// Keys (request MACs, decryption of stored tokens) and vaulting of `save_card` cards.
    pub vault: Vault,
    /// The database the charge bookkeeping lives in (the vault's).
    pub pool: PgPool,
    pub processor: Arc<dyn Processor>,
    /// The processors of tenants that have their own (`payvault tenants set-processor`); every
    /// other tenant charges through `processor`.
    pub tenant_processors: Arc<HashMap<Uuid, Arc<dyn Processor>>>,
    /// How long a retry waits for an in-flight attempt before answering `transaction_in_progress`.
    pub wait: Duration,
    /// How long an in-flight attempt is presumed alive without a renewal: the attempt renews it
    /// every `heartbeat` while it calls the processor, so it lapses (and a retry may take the
    /// charge over) only once its instance has died or lost the database for this long.
    pub lease: Duration,
    /// How often the attempt holding a charge renews its lease; shorter than `lease`.
    pub heartbeat: Duration,
    /// Total time allowed for a first attempt's processor call.
    pub processor_timeout: Duration,
}

/// What identifies one charge request across retries and instances, computed once per call.
struct RequestIdentity {
    /// What makes two requests "the same" (not the CVV).
    mac_input: Zeroizing<Vec<u8>>,
    request_mac: [u8; 32],
    mac_version: i32,
    /// Sent to the processor as its idempotency key on the first attempt.
    processor_key: String,
}

impl Charger {
    pub async fn charge(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &ChargeRequest,
        started: Instant,
    ) -> Result<Charged, ChargeError> {
        match self.tenant_processors.get(&who.tenant_id) {
            Some(own) => {
                let charger = Charger {
                    processor: own.clone(),
                    ..self.clone()
                };
                charger.charge_through(who, origin, req, started).await
            }
            None => self.charge_through(who, origin, req, started).await,
        }
    }

    /// [`Charger::charge`] through `self.processor`.
    async fn charge_through(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &ChargeRequest,
        started: Instant,
    ) -> Result<Charged, ChargeError> {
        let base_event = self.base_event(who, origin, req);
        let result = self.charge_inner(who, req, started, &base_event).await;
        if let Err(e) = &result {
            if !matches!(e, ChargeError::Database(_)) {
                let event = base_event.clone().failed(e.code());
                self.vault.record_event(&event).await?;
            }
        }
        result
    }

    fn base_event(&self, who: &Principal, origin: &Origin, req: &ChargeRequest) -> AuditEvent {
        let mut event = AuditEvent::by(who, origin, "charge");
        event.transaction_id = Some(req.key.clone());
        event.amount_minor = Some(req.amount.minor_units());
        event.currency = Some(req.amount.currency().to_owned());
        match &req.source {
            Source::Payment(m) => event.masked_data = Some(m.masked()),
            Source::Token(t) => event.token = Some(t.as_str().to_owned()),
        }
        event
    }

    /// The charge, step by step.
    async fn charge_inner(
        &self,
        who: &Principal,
        req: &ChargeRequest,
        started: Instant,
        base_event: &AuditEvent,
    ) -> Result<Charged, ChargeError> {
        let recurring = recurring(&req.parameters).map_err(ChargeError::Invalid)?;
        let id = self.identify(who, req)?;

        // The connection that resolves a token also makes the first claim: one checkout.
        let mut conn = self.pool.acquire().await?;
        let resolved;
        // A card in the request is the caller on the phone (customer-initiated MOTO); a stored
        // token is charged by the merchant on the stored credential.
        let mut initiator = Initiator::CustomerMoto;
        let mut stored_ntid = false;
        let method = match &req.source {
            Source::Payment(m) => m,
            Source::Token(token) => {
                match self.resolve_token(&mut conn, who, req, token, &id).await? {
                    Resolved::Method(m, stored) => {
                        resolved = m;
                        let network_transaction_id = self.citable(stored)?;
                        // An id from another processor is replaced by this one's, if it returns one.
                        stored_ntid = network_transaction_id.is_some();
                        initiator = Initiator::Merchant {
                            network_transaction_id,
                            recurring,
                        };
                        &resolved
                    }
                    Resolved::Finished(rec) => {
                        // One connection at a time, even with a pool of one.
                        drop(conn);
                        return self.replay(rec, base_event.clone()).await;
                    }
                }
            }
        };
        let mut event = base_event.clone();
        if event.masked_data.is_none() {
            event.masked_data = Some(method.masked());
        }

        let attempt = match self.claim(conn, who, req, &id, &event, started).await? {
            Claim::Attempt(attempt) => attempt,
            Claim::Finished(rec) => return self.replay(rec, event).await,
            Claim::Unresolved(outcome) => return self.answer_unknown(outcome, event).await,
        };
        let call = self.call_processor(req, method, &attempt, initiator);
        let result = self.holding_lease(who, &req.key, &attempt, call).await;
        self.record_outcome(who, req, method, &attempt, result, event, stored_ntid)
            .await
    }

    /// The network transaction id a merchant-initiated charge of a token cites: the stored one,
    /// only if this processor issued it (or its issuer was not recorded). Without one, the
    /// charge goes without, if the processor allows that, or is refused before anything is sent.
    fn citable(&self, stored: Option<StoredCredential>) -> Result<Option<String>, ChargeError> {
        let processor = self.processor.name();
        let other = match stored {
            Some(s) if s.issuer.as_deref().is_none_or(|i| i == processor) => {
                return Ok(Some(s.network_transaction_id))
            }
            Some(s) => s.issuer,
            None => None,
        };
        if self
            .processor
            .merchant_initiated_without_network_transaction_id()
        {
            return Ok(None);
        }
        let why = match other {
            Some(issuer) => format!(
                "the token's stored credential was established with processor {issuer}, and \
                 processor {processor} needs a network transaction id of its own"
            ),
            None => format!(
                "the token has no stored credential (network transaction id) from processor \
                 {processor}, which needs one"
            ),
        };
        Err(ChargeError::NoStoredCredential(format!(
            "{why} for a merchant-initiated charge: charge the card once with the cardholder \
             present (with save_card) to establish one; nothing was sent"
        )))
    }

    /// The request MAC and processor key of this request.
    fn identify(
        &self,
        who: &Principal,
        req: &ChargeRequest,
    ) -> Result<RequestIdentity, ChargeError> {
        let keys = self.vault.keys()?;
        let mac_version = keys.current_version();
        let mac_input = self.mac_input(req);
        let request_mac = keys.request_mac(mac_version, &[b"charge", &mac_input])?;
        Ok(RequestIdentity {
            processor_key: self.processor_key(who, req)?,
            mac_input,
            request_mac,
            mac_version,
        })
    }

    /// Whether `rec` was written by a charge with the same request (operation and MAC).
    fn same_request(&self, rec: &ChargeRecord, mac_input: &[u8]) -> Result<bool, ChargeError> {
        if rec.operation != "charge" {
            return Ok(false);
        }
        let mac = self
            .vault
            .keys()?
            .request_mac(rec.mac_key_version, &[b"charge", mac_input])?;
        Ok(bool::from(mac.ct_eq(rec.request_mac.as_slice())))
    }

    /// What makes two charge requests "the same" for idempotency. Not the CVV.
    fn mac_input(&self, req: &ChargeRequest) -> Zeroizing<Vec<u8>> {
        let mut input = match &req.source {
            Source::Payment(m) => m.request_mac_input(),
            Source::Token(t) => {
                let mut input = Zeroizing::new(format!("token:{}", t.as_str()).into_bytes());
                // A recurring charge differs from an unscheduled one (the default, which keeps
                // the MAC of requests made before stored credentials existed).
                if recurring(&req.parameters) == Ok(true) {
                    input.extend_from_slice(b"|recurring");
                }
                input
            }
        };
        input.extend_from_slice(&req.amount.minor_units().to_be_bytes());
        input.extend_from_slice(req.amount.currency().as_bytes());
        input.push(u8::from(req.save_card));
        input
    }

    /// The processor's idempotency key: derived from (credential, key) under the request-MAC
    /// key, so it is stable across retries and instances and reveals nothing. Stored with the
    /// claim, so a later key rotation cannot change it.
    fn processor_key(&self, who: &Principal, req: &ChargeRequest) -> Result<String, ChargeError> {
        let keys = self.vault.keys()?;
        let mac = keys.request_mac(
            keys.current_version(),
            &[
                b"processor-idempotency-key",
                who.id.as_bytes(),
                req.key.as_bytes(),
            ],
        )?;
        Ok(format!(
            "pv_{}",
            mac[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }
}

//! The vault's operations, composed from `crypto` and `store`. This is where the tokenize flow
//! reads top to bottom.

mod health;
mod tokens;

pub use health::{PoolStats, SchemaState};
pub use tokens::{TokenError, TokenInfo, TokenStatus};

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, Origin};
use crate::auth::Principal;
use crate::crypto::{CryptoError, EntryBinding, KeyRing, KeyState, Sealed, AAD_V3};
use crate::domain::{PaymentMethod, Token, TransactionId};
use crate::store;
use crate::store::audit::AuditBatch;
use crate::store::audit_mac::EventSigner;
use crate::store::charges::ChargeState;
use crate::store::vault::{NewEntry, NewIdempotency};

/// Shared handle on the vault: the database and the master key ring (absent while sealed).
#[derive(Debug, Clone)]
pub struct Vault {
    pool: PgPool,
    /// This process's audit event writer (see `store::audit_mac`), and through it the master
    /// key ring (absent while sealed).
    signer: Arc<EventSigner>,
    /// Tokenizing a card this credential already vaulted returns the existing token.
    dedup: bool,
}

/// A validated tokenize request.
#[derive(Debug)]
pub struct TokenizeRequest {
    pub transaction_id: TransactionId,
    pub method: PaymentMethod,
    /// When the token stops being chargeable (and is then shredded), if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The token for a tokenize request; `replayed` when an earlier identical request created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub token: String,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("transaction_id was already used for a different request")]
    DuplicateTransaction,
    /// A retry that came after the answer's retention period: still refused as a duplicate.
    #[error(
        "transaction_id was already used, longer ago than answers are kept; it was not run again"
    )]
    AnswerPurged,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("key error")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Sealed(#[from] Sealed),
}

impl TokenizeError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenizeError::DuplicateTransaction | TokenizeError::AnswerPurged => {
                "duplicate_transaction"
            }
            TokenizeError::Database(_) | TokenizeError::Crypto(_) => "internal_error",
            TokenizeError::Sealed(_) => "vault_sealed",
        }
    }
}

impl Vault {
    /// A vault whose audit events are written by a new writer (see [`Vault::with_signer`]).
    pub fn new(pool: PgPool, keys: Arc<KeyRing>) -> Self {
        Self::with_signer(pool, Arc::new(EventSigner::new(keys)))
    }

    /// A vault whose audit events are written by `signer` (the process's one writer), with
    /// its key state (an instance that starts sealed gets its keys later).
    pub fn with_signer(pool: PgPool, signer: Arc<EventSigner>) -> Self {
        Self {
            pool,
            signer,
            dedup: false,
        }
    }

    /// Turns deduplication by keyed fingerprint on (`PAYVAULT_DEDUP=on`).
    pub fn with_dedup(mut self, dedup: bool) -> Self {
        self.dedup = dedup;
        self
    }

    /// The master key ring, or [`Sealed`] until custodians unseal the instance.
    pub fn keys(&self) -> Result<&Arc<KeyRing>, Sealed> {
        self.signer.keys()
    }

    pub fn key_state(&self) -> &Arc<KeyState> {
        self.signer.key_state()
    }

    pub fn is_sealed(&self) -> bool {
        self.key_state().is_sealed()
    }

    /// The writer this vault's audit events are MAC'd and counted by.
    pub fn signer(&self) -> &Arc<EventSigner> {
        &self.signer
    }

    /// Encrypts a card or bank account into the vault and returns its token.
    ///
    /// Exactly once per (credential, transaction id): Twilio retries a request that took over
    /// 10 s with the same `transaction_id`, and the retry must get the original token rather
    /// than a second entry. The idempotency record, the entry and the audit event are inserted
    /// in one atomic statement; the database's primary key decides which of several concurrent
    /// duplicates wins.
    pub async fn tokenize(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &TokenizeRequest,
    ) -> Result<Tokenized, TokenizeError> {
        let keys = self.keys()?;
        let mac_input = req.method.request_mac_input();
        let mac_version = keys.current_version();
        let request_mac = keys.request_mac(mac_version, &[b"tokenize", &mac_input])?;

        let prepared = self.prepare_entry(keys, who.tenant_id, &req.method);
        let audit = self
            .tokenize_event(who, origin, req)
            .with_token(prepared.token.as_str());

        let idem = NewIdempotency {
            credential_id: who.id,
            tenant_id: who.tenant_id,
            key: req.transaction_id.as_str(),
            request_mac: &request_mac,
            mac_key_version: mac_version,
        };
        let created = if self.dedup {
            self.tokenize_deduplicated(who, origin, req, &idem, &prepared, &audit)
                .await?
        } else {
            let entry = prepared.as_new_entry(who, req.expires_at);
            store::vault::insert_tokenized_entry(
                &self.pool,
                &idem,
                &entry,
                &AuditBatch::one(&self.signer, &audit)?,
            )
            .await?
            .then(|| prepared.token.as_str().to_owned())
        };
        if let Some(token) = created {
            return Ok(Tokenized {
                token,
                replayed: false,
            });
        }

        // The transaction id is taken: an identical retry gets the original token, anything
        // else is a conflicting reuse.
        let earlier = store::idempotency::find_idempotency_record(
            &self.pool,
            who.id,
            req.transaction_id.as_str(),
        )
        .await?;
        let purged = earlier.as_ref().is_some_and(|rec| rec.purged);
        let replay = match earlier {
            Some(rec) if rec.operation == "tokenize" && rec.state == ChargeState::Succeeded => {
                let mac = keys.request_mac(rec.mac_key_version, &[b"tokenize", &mac_input])?;
                let same: bool = mac.ct_eq(rec.request_mac.as_slice()).into();
                rec.token.filter(|_| same)
            }
            _ => None,
        };
        match replay {
            Some(token) => {
                let mut event = self.tokenize_event(who, origin, req).with_token(&token);
                event.details["replayed"] = true.into();
                self.signer.record(&self.pool, &event).await?;
                Ok(Tokenized {
                    token,
                    replayed: true,
                })
            }
            None => {
                let err = if purged {
                    TokenizeError::AnswerPurged
                } else {
                    TokenizeError::DuplicateTransaction
                };
                let event = self.tokenize_event(who, origin, req).failed(err.code());
                self.signer.record(&self.pool, &event).await?;
                Err(err)
            }
        }
    }

    /// The tokenize transaction with deduplication: if this credential already holds a live
    /// entry with the same keyed fingerprint, that token is returned (its expiry metadata updated
    /// to what the card shows now, e.g. after a reissue) instead of vaulting the card again.
    /// Returns `None` when the transaction id is already taken.
    async fn tokenize_deduplicated(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &TokenizeRequest,
        idem: &NewIdempotency<'_>,
        prepared: &PreparedEntry,
        audit: &AuditEvent,
    ) -> Result<Option<String>, TokenizeError> {
        let mut tx = self.pool.begin().await?;
        // Concurrent tokenizes of one card by one credential take turns, so they agree on one token.
        store::vault::lock_fingerprint(&mut *tx, who.id, &prepared.fingerprint).await?;
        let existing = store::vault::find_live_by_fingerprint(
            &mut *tx,
            who.tenant_id,
            who.id,
            &prepared.fingerprint,
        )
        .await?;
        let Some(existing) = existing else {
            let entry = prepared.as_new_entry(who, req.expires_at);
            let inserted = store::vault::insert_tokenized_entry(
                &mut *tx,
                idem,
                &entry,
                &AuditBatch::one(&self.signer, audit)?,
            )
            .await?;
            tx.commit().await?;
            return Ok(inserted.then(|| prepared.token.as_str().to_owned()));
        };
        if !store::idempotency::insert_idempotency_record(&mut *tx, idem, &existing).await? {
            return Ok(None);
        }
        let updated = self.update_expiry(&mut tx, &existing, prepared).await?;
        let mut event = self.tokenize_event(who, origin, req).with_token(&existing);
        event.details["deduplicated"] = true.into();
        event.details["expiry_updated"] = updated.into();
        store::audit::insert_audit_event(&mut *tx, &self.signer, &event).await?;
        tx.commit().await?;
        Ok(Some(existing))
    }

    /// Gives a deduplicated card entry the expiry the card shows now (a reissue), re-binding its
    /// wrapped key to the new columns; `true` if it changed.
    async fn update_expiry(
        &self,
        tx: &mut sqlx::PgConnection,
        token: &str,
        prepared: &PreparedEntry,
    ) -> Result<bool, TokenizeError> {
        let tenant = prepared.tenant;
        let Some(entry) = store::vault::lock_sealed_entry(&mut *tx, tenant, token).await? else {
            return Ok(false);
        };
        let new = prepared.binding();
        if entry.binding() == new {
            return Ok(false);
        }
        let rebound = self
            .keys()?
            .rebind(token, &entry.binding(), &new, &entry.sealed)?;
        Ok(store::vault::update_card_expiry(
            &mut *tx,
            tenant,
            token,
            prepared.exp_month,
            prepared.exp_year,
            &rebound,
        )
        .await?)
    }

    fn tokenize_event(
        &self,
        who: &Principal,
        origin: &Origin,
        req: &TokenizeRequest,
    ) -> AuditEvent {
        let mut event = AuditEvent::by(who, origin, "tokenize");
        event.transaction_id = Some(req.transaction_id.as_str().to_owned());
        event.masked_data = Some(req.method.masked());
        event.details = serde_json::json!({ "kind": req.method.kind() });
        event
    }

    /// Encrypts a payment method under a fresh token of `tenant`, ready to insert (tokenize,
    /// charge with `save_card`, and `payvault import` all vault through here).
    pub(crate) fn prepare_entry(
        &self,
        keys: &KeyRing,
        tenant: Uuid,
        method: &PaymentMethod,
    ) -> PreparedEntry {
        let token = Token::generate();
        let fingerprint = keys.fingerprint(tenant, &method.fingerprint_parts());
        let (brand, bin, exp_month, exp_year, last4) = match method {
            PaymentMethod::Card(c) => (
                Some(c.number.brand().as_str()),
                Some(c.number.bin().to_owned()),
                Some(i16::from(c.expiry.month())),
                i16::try_from(c.expiry.year()).ok(),
                c.number.last4().to_owned(),
            ),
            PaymentMethod::Bank(b) => (None, None, None, None, b.account.last4().to_owned()),
        };
        let binding = EntryBinding {
            tenant,
            kind: method.kind(),
            exp_month,
            exp_year,
        };
        let sealed = keys.seal(token.as_str(), &binding, &method.secret_payload());
        PreparedEntry {
            token,
            tenant,
            kind: method.kind(),
            sealed,
            fingerprint,
            brand,
            bin,
            last4,
            exp_month,
            exp_year,
        }
    }

    /// Vaults a payment method inside the caller's transaction and returns its token.
    pub async fn insert_entry(
        &self,
        conn: &mut sqlx::PgConnection,
        who: &Principal,
        method: &PaymentMethod,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<String, sqlx::Error> {
        // Reached only after a charge that used the keys, so never sealed in practice.
        let keys = self
            .keys()
            .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
        let prepared = self.prepare_entry(keys, who.tenant_id, method);
        store::vault::insert_entry(conn, &prepared.as_new_entry(who, expires_at)).await?;
        Ok(prepared.token.into_string())
    }

    /// Decrypts the entry behind `token`, whichever tenant's row holds it, in memory only: for
    /// operator tools and tests, never for a caller. `Ok(None)` when no such entry exists; an
    /// error when it does not authenticate (tampered, moved between rows or tenants, relabelled
    /// with another key version, or its kind or expiry columns edited).
    pub async fn open_entry(
        &self,
        token: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, TokenizeError> {
        let Some(entry) = store::vault::find_sealed_entry(&self.pool, token).await? else {
            return Ok(None);
        };
        Ok(Some(self.keys()?.open(
            token,
            &entry.binding(),
            &entry.sealed,
        )?))
    }

    /// Re-encrypts up to `limit` entries that are under an older master key version, or sealed
    /// in an AAD format older than v3 (v1 binds no kind and expiry, neither binds the tenant;
    /// such an entry opens only in the default tenant's row): each
    /// gets a fresh data key wrapped by the current version, and its fingerprint is recomputed. Safe
    /// while the service runs (rows are locked one batch at a time, `SKIP LOCKED` lets several
    /// rotators share the work) and resumable (progress is the key version stored per row).
    /// Returns how many entries it re-encrypted.
    pub async fn rotate_batch(&self, limit: i64) -> Result<u64, TokenizeError> {
        Ok(self.rotate_batch_after(limit, "").await?.0)
    }

    /// [`Self::rotate_batch`] of the entries with a token above `after`, in token order; also
    /// returns the last token it claimed (where the next batch starts).
    pub async fn rotate_batch_after(
        &self,
        limit: i64,
        after: &str,
    ) -> Result<(u64, Option<String>), TokenizeError> {
        let keys = self.keys()?;
        let mut tx = self.pool.begin().await?;
        let rows = store::rotation::claim_for_rotation(
            &mut *tx,
            keys.current_version(),
            AAD_V3,
            limit,
            after,
        )
        .await?;
        let mut rotated = Vec::with_capacity(rows.len());
        for row in &rows {
            let binding = row.entry.binding();
            let plain = keys.open(&row.token, &binding, &row.entry.sealed)?;
            let parts = PaymentMethod::fingerprint_parts_of_payload(&plain)
                .ok_or(TokenizeError::Crypto(CryptoError::Malformed))?;
            let fingerprint = keys.fingerprint(row.entry.tenant, &parts);
            let sealed = keys.seal(&row.token, &binding, &plain);
            rotated.push(store::rotation::Rotated {
                token: &row.token,
                sealed,
                fingerprint: fingerprint.to_vec(),
            });
        }
        if !rotated.is_empty() {
            store::rotation::update_rotated(&mut *tx, &rotated).await?;
        }
        tx.commit().await?;
        Ok((rows.len() as u64, rows.last().map(|r| r.token.clone())))
    }

    /// Records an audit event on its own: a request that failed before reaching the vault
    /// (validation, scope), or a read that changes nothing.
    /// Sealed, it is held and written at unseal (see `store::audit_held`).
    pub async fn record_event(&self, event: &AuditEvent) -> Result<(), sqlx::Error> {
        self.signer.record(&self.pool, event).await
    }
}

/// Shreds expired tokens every `every`, in batches, until the process ends. Several instances
/// can run it at once: rows are claimed with `SKIP LOCKED`.
pub async fn run_expiry_purge(pool: PgPool, signer: Arc<EventSigner>, every: std::time::Duration) {
    // Each shred is audited in its transaction, MAC'd: a sealed instance starts once unsealed.
    signer.key_state().wait().await;
    loop {
        loop {
            match store::vault::purge_expired(&pool, &signer, 500).await {
                Ok(0) => break,
                Ok(n) => tracing::info!(purged = n, "expired tokens shredded"),
                Err(e) => {
                    tracing::warn!(error = %e, "expired-token purge failed; will retry");
                    break;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Purges the answers of finished idempotency records older than `retention`, every `every`,
/// until the process ends (see [`store::idempotency::purge_idempotency_answers`]).
pub async fn run_idempotency_purge(
    pool: PgPool,
    retention: std::time::Duration,
    every: std::time::Duration,
) {
    loop {
        match purge_idempotency_answers(&pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "idempotency answers purged"),
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed; will retry"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Purges, in batches, the answers of finished idempotency records last updated more than
/// `retention` ago. Returns how many were purged.
pub async fn purge_idempotency_answers(
    pool: &PgPool,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let before = Utc::now()
        .checked_sub_signed(retention)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        match store::idempotency::purge_idempotency_answers(pool, before, 500).await? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

/// A sealed entry and its display metadata, before insertion.
pub(crate) struct PreparedEntry {
    pub(crate) token: Token,
    pub(crate) tenant: Uuid,
    pub(crate) kind: &'static str,
    pub(crate) sealed: crate::crypto::SealedEntry,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) brand: Option<&'static str>,
    pub(crate) bin: Option<String>,
    pub(crate) last4: String,
    pub(crate) exp_month: Option<i16>,
    pub(crate) exp_year: Option<i16>,
}

impl PreparedEntry {
    fn binding(&self) -> EntryBinding<'_> {
        EntryBinding {
            tenant: self.tenant,
            kind: self.kind,
            exp_month: self.exp_month,
            exp_year: self.exp_year,
        }
    }

    fn as_new_entry(&self, who: &Principal, expires_at: Option<DateTime<Utc>>) -> NewEntry<'_> {
        NewEntry {
            token: self.token.as_str(),
            tenant_id: self.tenant,
            created_by: who.id,
            kind: self.kind,
            sealed: &self.sealed,
            fingerprint: &self.fingerprint,
            brand: self.brand,
            bin: self.bin.as_deref(),
            last4: &self.last4,
            exp_month: self.exp_month,
            exp_year: self.exp_year,
            expires_at,
        }
    }
}

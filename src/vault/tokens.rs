//! Operations on a stored token that never open its card: metadata, deletion (crypto-shredding)
//! and expiry. Each is audited in the same transaction as its change; a refusal is audited too.

use chrono::{DateTime, Utc};

use super::Vault;
use crate::audit::{AuditEvent, Origin};
use crate::auth::Principal;
use crate::domain::{Expiry, InvalidInput, Token, TokenExpiry};
use crate::store;
use crate::store::vault::TokenMetadata;

/// Where a token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    /// Past its expiry; shredded by the purge shortly.
    Expired,
    /// Crypto-shredded: the metadata and audit trail remain, the card does not.
    Deleted,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Deleted => "deleted",
        }
    }
}

/// A token as the merchant API shows it: never the card.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub status: TokenStatus,
    pub metadata: TokenMetadata,
}

impl TokenInfo {
    fn at(metadata: TokenMetadata, now: DateTime<Utc>) -> Self {
        let status = match (metadata.deleted_at, metadata.expires_at) {
            (Some(_), _) => TokenStatus::Deleted,
            (None, Some(at)) if at <= now => TokenStatus::Expired,
            _ => TokenStatus::Active,
        };
        Self { status, metadata }
    }

    /// The end of the card's validity, for "expire with the card"; `None` for bank accounts.
    fn card_end(&self) -> Option<DateTime<Utc>> {
        let (month, year) = (self.metadata.exp_month?, self.metadata.exp_year?);
        Expiry::from_stored(u8::try_from(month).ok()?, u16::try_from(year).ok()?).map(Expiry::end)
    }
}

/// Why a token operation was refused. Each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No such token, or another tenant's (never revealed): answered alike.
    #[error("no such token")]
    Unknown,
    #[error("the token was deleted")]
    Deleted,
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A well-formed change this token cannot take (expiring with the card, on a bank
    /// account): the token's state, not the request, is in the way.
    #[error(transparent)]
    NotApplicable(InvalidInput),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_token",
            Self::Deleted => "token_deleted",
            Self::Invalid(invalid) | Self::NotApplicable(invalid) => invalid.code(),
            Self::Database(_) => "internal_error",
        }
    }
}

impl Vault {
    /// A token's metadata. Every read is audited (PCI DSS 10.2.1.1).
    pub async fn token_info(
        &self,
        who: &Principal,
        origin: &Origin,
        token: &str,
    ) -> Result<TokenInfo, TokenError> {
        let event = AuditEvent::by(who, origin, "token_read");
        let found = match Token::parse(token) {
            Some(t) => {
                store::vault::find_token_metadata(&self.pool, who.tenant_id, t.as_str()).await?
            }
            None => None,
        };
        let Some(metadata) = found else {
            return self.refuse(event, TokenError::Unknown).await;
        };
        self.record_event(&event.with_token(&metadata.token))
            .await?;
        Ok(TokenInfo::at(metadata, Utc::now()))
    }

    /// Crypto-shreds a token's entry: its wrapped data key and ciphertext are destroyed (see the
    /// README on what that does and does not guarantee for backups). Idempotent: deleting a
    /// deleted token succeeds and says so in the audit event.
    pub async fn delete_token(
        &self,
        who: &Principal,
        origin: &Origin,
        token: &str,
    ) -> Result<TokenInfo, TokenError> {
        let event = AuditEvent::by(who, origin, "token_delete");
        let Some(token) = Token::parse(token) else {
            return self.refuse(event, TokenError::Unknown).await;
        };
        let mut event = event.with_token(token.as_str());
        // The shredding and its audit event commit together.
        let mut tx = self.pool.begin().await?;
        let shredded = store::vault::shred_entry(&mut *tx, who.tenant_id, token.as_str()).await?;
        let Some(metadata) =
            store::vault::find_token_metadata(&mut *tx, who.tenant_id, token.as_str()).await?
        else {
            drop(tx);
            return self.refuse(event, TokenError::Unknown).await;
        };
        event.details = serde_json::json!({ "shredded": shredded, "already_deleted": !shredded });
        store::audit::insert_audit_event(&mut *tx, &self.signer, &event).await?;
        tx.commit().await?;
        Ok(TokenInfo::at(metadata, Utc::now()))
    }

    /// Sets when a token expires. `change` is the caller's request as parsed: a request that
    /// could not be read is refused here so that the refusal is audited like any other.
    pub async fn set_token_expiry(
        &self,
        who: &Principal,
        origin: &Origin,
        token: &str,
        change: Result<TokenExpiry, InvalidInput>,
    ) -> Result<TokenInfo, TokenError> {
        let event = AuditEvent::by(who, origin, "token_update");
        let Some(token) = Token::parse(token) else {
            return self.refuse(event, TokenError::Unknown).await;
        };
        let mut event = event.with_token(token.as_str());
        let change = match change {
            Ok(c) => c,
            Err(invalid) => return self.refuse(event, invalid.into()).await,
        };
        let Some(metadata) =
            store::vault::find_token_metadata(&self.pool, who.tenant_id, token.as_str()).await?
        else {
            return self.refuse(event, TokenError::Unknown).await;
        };
        let info = TokenInfo::at(metadata, Utc::now());
        if info.status == TokenStatus::Deleted {
            return self.refuse(event, TokenError::Deleted).await;
        }
        let expires_at = match change.resolve(Utc::now(), info.card_end()) {
            Ok(at) => at,
            Err(invalid) => return self.refuse(event, TokenError::NotApplicable(invalid)).await,
        };
        event.details =
            serde_json::json!({ "expires_at": expires_at, "previous": info.metadata.expires_at });
        let mut tx = self.pool.begin().await?;
        store::vault::set_expiry(&mut *tx, who.tenant_id, token.as_str(), expires_at).await?;
        store::audit::insert_audit_event(&mut *tx, &self.signer, &event).await?;
        let metadata = store::vault::find_token_metadata(&mut *tx, who.tenant_id, token.as_str())
            .await?
            .ok_or(TokenError::Unknown)?;
        tx.commit().await?;
        Ok(TokenInfo::at(metadata, Utc::now()))
    }

    /// Audits a refused token operation, then returns the refusal.
    async fn refuse<T>(&self, event: AuditEvent, err: TokenError) -> Result<T, TokenError> {
        self.record_event(&event.failed(err.code())).await?;
        Err(err)
    }
}

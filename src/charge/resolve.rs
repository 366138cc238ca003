//! Step 1: the money's source. A stored token is decrypted, in memory only, for one outbound call.

use sqlx::PgConnection;

use super::{ChargeError, ChargeRequest, Charger, RequestIdentity};
use crate::auth::Principal;
use crate::crypto::CryptoError;
use crate::domain::{Expiry, InvalidInput, PaymentMethod, Token};
use crate::store;
use crate::store::charges::ChargeRecord;
use crate::store::vault::StoredEntry;

/// A token charge's source, or the record that answers it.
pub(super) enum Resolved {
    /// The stored card or bank account (never a CVV), and the stored credential, if a charge
    /// returned a network transaction id.
    Method(PaymentMethod, Option<StoredCredential>),
    /// The token is unusable, but this request already finished: its retry is answered from the
    /// record even if the token has been deleted or has expired since.
    Finished(ChargeRecord),
}

/// A token's network transaction id and the processor that issued it (`None`: not recorded, as
/// for ids stored before issuers were).
#[derive(Debug)]
pub(super) struct StoredCredential {
    pub network_transaction_id: String,
    pub issuer: Option<String>,
}

impl Charger {
    /// Resolves a token before claiming: an unknown, deleted or expired token (or a stored card
    /// past its expiry) is refused without taking the key. Only then is the record looked up, so
    /// a usable token costs no replay lookup.
    pub(super) async fn resolve_token(
        &self,
        db: &mut PgConnection,
        who: &Principal,
        req: &ChargeRequest,
        token: &Token,
        id: &RequestIdentity,
    ) -> Result<Resolved, ChargeError> {
        match self.decrypt_token(db, who, token).await {
            Ok((method, ntid)) => Ok(Resolved::Method(method, ntid)),
            Err(
                e @ (ChargeError::UnknownToken
                | ChargeError::TokenDeleted
                | ChargeError::TokenExpired
                | ChargeError::Invalid(_)),
            ) => match store::charges::find_charge_record(db, who.id, &req.key).await? {
                Some(rec) if rec.state.is_final() && self.same_request(&rec, &id.mac_input)? => {
                    Ok(Resolved::Finished(rec))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Decrypts a stored token's card or bank account, in memory only.
    /// Only the caller's tenant's token is found: another tenant's is unknown.
    async fn decrypt_token(
        &self,
        db: &mut PgConnection,
        who: &Principal,
        token: &Token,
    ) -> Result<(PaymentMethod, Option<StoredCredential>), ChargeError> {
        let entry = store::vault::find_entry(db, who.tenant_id, token.as_str())
            .await?
            .ok_or(ChargeError::UnknownToken)?;
        let (entry, ntid) = match entry {
            StoredEntry::Active {
                entry,
                network_transaction_id,
                network_transaction_issuer,
            } => (
                entry,
                network_transaction_id.map(|id| StoredCredential {
                    network_transaction_id: id,
                    issuer: network_transaction_issuer,
                }),
            ),
            StoredEntry::Deleted => return Err(ChargeError::TokenDeleted),
            StoredEntry::Expired => return Err(ChargeError::TokenExpired),
        };
        // The kind and expiry columns are authenticated with the ciphertext: an edited one
        // fails here, before anything reaches the processor.
        let plain = self
            .vault
            .keys()?
            .open(token.as_str(), &entry.binding(), &entry.sealed)
            .map_err(|e| match e {
                CryptoError::Authentication => ChargeError::EntryIntegrity,
                e => ChargeError::Crypto(e),
            })?;
        let expiry = match (entry.exp_month, entry.exp_year) {
            (Some(m), Some(y)) => {
                Expiry::from_stored(u8::try_from(m).unwrap_or(0), u16::try_from(y).unwrap_or(0))
            }
            _ => None,
        };
        let mut method = PaymentMethod::from_secret_payload(&plain, expiry)
            .ok_or(ChargeError::Crypto(CryptoError::Malformed))?;
        if let PaymentMethod::Card(c) = &mut method {
            if c.expiry.is_expired(chrono::Utc::now().date_naive()) {
                return Err(ChargeError::Invalid(InvalidInput::StoredCardExpired));
            }
            // A vault entry never holds a CVV; a merchant-initiated charge never sends one.
            c.cvv = None;
        }
        Ok((method, ntid))
    }
}

//! What a caller pays with, and the transaction it belongs to.

use zeroize::Zeroizing;

use super::bank::BankAccount;
use super::card::Card;
use super::invalid::InvalidInput;

/// Twilio's `transaction_id`: the idempotency key of a connector request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionId(String);

impl TransactionId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::InvalidTransactionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A card or a bank account, validated.
#[derive(Debug)]
pub enum PaymentMethod {
    Card(Card),
    Bank(BankAccount),
}

/// Version tag of the encrypted payload format; bump when the layout changes.
const PAYLOAD_V1: u8 = 1;

impl PaymentMethod {
    /// `card` or `bank_account`, as stored in `vault_entries.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            PaymentMethod::Card(_) => "card",
            PaymentMethod::Bank(_) => "bank_account",
        }
    }

    /// Display form: `visa 411111******1111` or `bank_account *****6789`.
    pub fn masked(&self) -> String {
        match self {
            PaymentMethod::Card(c) => {
                format!("{} {}", c.number.brand().as_str(), c.number.masked())
            }
            PaymentMethod::Bank(b) => format!("bank_account {}", b.account.masked()),
        }
    }

    /// The bytes that get encrypted into the vault: the PAN, or routing and account number.
    /// Never the CVV (PCI DSS 3.3.1). Pre-sized so the buffer never reallocates and leaves an
    /// unzeroized copy behind.
    pub fn secret_payload(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64));
        out.push(PAYLOAD_V1);
        match self {
            PaymentMethod::Card(c) => {
                out.push(b'C');
                out.extend_from_slice(c.number.digits().as_bytes());
            }
            PaymentMethod::Bank(b) => {
                out.push(b'B');
                out.extend_from_slice(b.routing.as_str().as_bytes());
                out.extend_from_slice(b.account.digits().as_bytes());
            }
        }
        out
    }

    /// Inputs of the keyed fingerprint: the same card (or account) always gives the same
    /// fingerprint under one key, whatever its expiry.
    pub fn fingerprint_parts(&self) -> [&[u8]; 3] {
        match self {
            PaymentMethod::Card(c) => [b"card", c.number.digits().as_bytes(), b""],
            PaymentMethod::Bank(b) => [
                b"bank_account",
                b.routing.as_str().as_bytes(),
                b.account.digits().as_bytes(),
            ],
        }
    }

    /// Input of the request MAC that tells an identical retry from a conflicting reuse of the
    /// same transaction id: every field that identifies the payment, length-prefixed. The CVV is
    /// left out on purpose: even a keyed hash of it would be sensitive authentication data kept
    /// after the request (PCI DSS 3.3.1).
    pub fn request_mac_input(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(96));
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        match self {
            PaymentMethod::Card(c) => {
                field(b"card");
                field(c.number.digits().as_bytes());
                field(&[c.expiry.month()]);
                field(&c.expiry.year().to_be_bytes());
                field(
                    c.postal_code
                        .as_ref()
                        .map_or(b"", |p| p.as_str().as_bytes()),
                );
            }
            PaymentMethod::Bank(b) => {
                field(b"bank_account");
                field(b.routing.as_str().as_bytes());
                field(b.account.digits().as_bytes());
            }
        }
        out
    }
}

//! What a caller pays with, and the transaction it belongs to.

use zeroize::Zeroizing;

use super::bank::{AccountNumber, BankAccount, RoutingNumber};
use super::card::{contains_card_number, Card, CardNumber, Expiry};
use super::invalid::InvalidInput;
use super::secret::SecretText;

/// Twilio's `transaction_id`: the idempotency key of a connector request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionId(String);

impl TransactionId {
    /// Also the merchant API's `Idempotency-Key`. An id holding a card number is refused before
    /// anything stores or audits it: idempotency keys are kept in clear (a fuzzer, or a careless
    /// integration, put PANs there).
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            Err(InvalidInput::InvalidTransactionId)
        } else if contains_card_number(raw) {
            Err(InvalidInput::CardNumberInTransactionId)
        } else {
            Ok(Self(raw.to_owned()))
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

    /// The sensitive digit strings of this payment method (PAN and CVV, or account number), for
    /// redacting them from anything a processor sends back.
    pub(crate) fn secret_digits(&self) -> Vec<&str> {
        match self {
            PaymentMethod::Card(c) => {
                let mut v = vec![c.number.digits()];
                v.extend(c.cvv.as_ref().map(|c| c.digits()));
                v
            }
            PaymentMethod::Bank(b) => vec![b.account.digits()],
        }
    }

    /// Rebuilds a payment method from a decrypted vault payload (the inverse of
    /// [`PaymentMethod::secret_payload`]). Cards get their expiry from the entry's metadata and
    /// no CVV: it was never stored.
    pub fn from_secret_payload(payload: &[u8], expiry: Option<Expiry>) -> Option<Self> {
        let secret = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(SecretText::from);
        match payload {
            [PAYLOAD_V1, b'C', pan @ ..] => Some(PaymentMethod::Card(Card {
                number: CardNumber::parse(secret(pan)?).ok()?,
                expiry: expiry?,
                cvv: None,
                postal_code: None,
            })),
            [PAYLOAD_V1, b'B', rest @ ..] if rest.len() > 9 => {
                let (routing, account) = rest.split_at(9);
                Some(PaymentMethod::Bank(BankAccount {
                    routing: RoutingNumber::parse(std::str::from_utf8(routing).ok()?).ok()?,
                    account: AccountNumber::parse(secret(account)?).ok()?,
                }))
            }
            _ => None,
        }
    }

    /// The fingerprint inputs of a decrypted vault payload (what
    /// [`PaymentMethod::fingerprint_parts`] gives for the method it came from).
    pub fn fingerprint_parts_of_payload(payload: &[u8]) -> Option<[&[u8]; 3]> {
        match payload {
            [PAYLOAD_V1, b'C', pan @ ..] => Some([b"card", pan, b""]),
            [PAYLOAD_V1, b'B', rest @ ..] if rest.len() > 9 => {
                let (routing, account) = rest.split_at(9);
                Some([b"bank_account", routing, account])
            }
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_without_cvv() {
        let card = PaymentMethod::Card(Card {
            number: CardNumber::parse("4111111111111111".into()).unwrap(),
            expiry: Expiry::from_stored(8, 2030).unwrap(),
            cvv: Some(super::super::card::Cvv::parse("123".into()).unwrap()),
            postal_code: None,
        });
        let payload = card.secret_payload();
        assert!(
            !payload.windows(3).any(|w| w == b"123"),
            "CVV is not in the payload"
        );
        let back =
            PaymentMethod::from_secret_payload(&payload, Expiry::from_stored(8, 2030)).unwrap();
        assert_eq!(back.masked(), "visa 411111******1111");
        let PaymentMethod::Card(c) = back else {
            panic!()
        };
        assert!(c.cvv.is_none());

        let bank = PaymentMethod::Bank(BankAccount {
            routing: RoutingNumber::parse("121000358").unwrap(),
            account: AccountNumber::parse("123456789".into()).unwrap(),
        });
        let back = PaymentMethod::from_secret_payload(&bank.secret_payload(), None).unwrap();
        assert_eq!(back.masked(), "bank_account *****6789");
        assert!(PaymentMethod::from_secret_payload(b"\x02C4111111111111111", None).is_none());
    }
}

//! US bank account (ACH) data: ABA routing number and account number.

use std::fmt;

use super::invalid::InvalidInput;
use super::secret::SecretText;

/// A 9-digit ABA routing transit number with a valid checksum. Routing numbers are public
/// (they identify the bank, not the account), so this type is not secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingNumber(String);

impl RoutingNumber {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.len() != 9 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidInput::RoutingNumberFormat);
        }
        // ABA checksum: 3*(d1+d4+d7) + 7*(d2+d5+d8) + (d3+d6+d9) must be a multiple of 10.
        let sum: u32 = raw
            .bytes()
            .enumerate()
            .map(|(i, b)| u32::from(b - b'0') * [3, 7, 1][i % 3])
            .sum();
        if !sum.is_multiple_of(10) {
            return Err(InvalidInput::RoutingNumberChecksum);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A bank account number: 4 to 17 digits (the NACHA field is 17 wide).
pub struct AccountNumber(SecretText);

impl AccountNumber {
    pub fn parse(raw: SecretText) -> Result<Self, InvalidInput> {
        let v = raw.expose();
        if (4..=17).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw))
        } else {
            Err(InvalidInput::AccountNumber)
        }
    }

    pub(crate) fn digits(&self) -> &str {
        self.0.expose()
    }

    /// Trailing digits safe to display: four, but at least four digits always stay hidden, so a
    /// 4-digit account shows none and a 6-digit one shows two.
    pub fn last4(&self) -> &str {
        let d = self.digits();
        let shown = 4.min(d.len() - 4);
        &d[d.len() - shown..]
    }

    pub fn masked(&self) -> String {
        format!(
            "{}{}",
            "*".repeat(self.digits().len() - self.last4().len()),
            self.last4()
        )
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountNumber({})", self.masked())
    }
}

/// A validated bank account as it arrives from Twilio.
#[derive(Debug)]
pub struct BankAccount {
    pub routing: RoutingNumber,
    pub account: AccountNumber,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_number_checksum() {
        // Real published routing numbers.
        for ok in ["011000015", "121000358", "021000021", "122105155"] {
            assert!(RoutingNumber::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            RoutingNumber::parse("121000359").unwrap_err(),
            InvalidInput::RoutingNumberChecksum
        );
        for bad in ["12100035", "1210003580", "12100035a", ""] {
            assert_eq!(
                RoutingNumber::parse(bad).unwrap_err(),
                InvalidInput::RoutingNumberFormat,
                "{bad}"
            );
        }
    }

    #[test]
    fn account_number_length_and_masking() {
        let acct = AccountNumber::parse("123456789".into()).unwrap();
        assert_eq!(acct.last4(), "6789");
        assert_eq!(acct.masked(), "*****6789");
        assert_eq!(format!("{acct:?}"), "AccountNumber(*****6789)");
        assert!(AccountNumber::parse("12345678".into()).is_ok());
        let short = AccountNumber::parse("12345".into()).unwrap();
        assert_eq!((short.last4(), short.masked().as_str()), ("5", "****5"));
        assert_eq!(
            AccountNumber::parse("1234".into()).unwrap().masked(),
            "****"
        );
        for bad in ["123", "123456789012345678", "1234a678"] {
            assert_eq!(
                AccountNumber::parse(bad.into()).unwrap_err(),
                InvalidInput::AccountNumber
            );
        }
    }
}

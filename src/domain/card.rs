//! Card data: the PAN, CVV and expiry, validated on construction.
//!
//! `CardNumber` and `Cvv` zeroize on drop, print redacted and cannot be serialized; only the
//! masked metadata PCI DSS 3.4.1 allows (brand, BIN, last 4) is ever exposed in clear.

use std::fmt;

use super::invalid::InvalidInput;
use super::secret::SecretText;
use chrono::{Datelike, NaiveDate};

/// Card networks recognised from the BIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    DinersClub,
    Jcb,
    UnionPay,
    Maestro,
    Unknown,
}

impl Brand {
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::DinersClub => "diners",
            Brand::Jcb => "jcb",
            Brand::UnionPay => "unionpay",
            Brand::Maestro => "maestro",
            Brand::Unknown => "unknown",
        }
    }

    /// Brand from the leading digits (IIN ranges as published by the networks). Order matters:
    /// Discover's 622126-622925 co-brand range sits inside UnionPay's 62.
    fn detect(pan: &str) -> Brand {
        let prefix = |n: usize| -> u32 { pan.get(..n).and_then(|p| p.parse().ok()).unwrap_or(0) };
        let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
        match () {
            _ if p1 == 4 => Brand::Visa,
            _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => Brand::Mastercard,
            _ if p2 == 34 || p2 == 37 => Brand::Amex,
            _ if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => Brand::Discover,
            _ if (622126..=622925).contains(&p6) => Brand::Discover,
            _ if p2 == 62 || p2 == 81 => Brand::UnionPay,
            _ if (3528..=3589).contains(&p4) => Brand::Jcb,
            _ if p2 == 30 || p2 == 36 || p2 == 38 || p2 == 39 => Brand::DinersClub,
            _ if p2 == 50 || (56..=58).contains(&p2) || p2 == 63 || p2 == 67 => Brand::Maestro,
            _ => Brand::Unknown,
        }
    }
}

/// A primary account number: 12-19 digits passing the Luhn check.
pub struct CardNumber(SecretText);

impl CardNumber {
    pub fn parse(raw: SecretText) -> Result<Self, InvalidInput> {
        let digits = raw.expose();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidInput::CardNumberNotNumeric);
        }
        if !(12..=19).contains(&digits.len()) {
            return Err(InvalidInput::CardNumberLength);
        }
        if !luhn_valid(digits) {
            return Err(InvalidInput::CardNumberLuhn);
        }
        Ok(Self(raw))
    }

    /// The full PAN, for encryption, fingerprinting and forwarding only.
    pub(crate) fn digits(&self) -> &str {
        self.0.expose()
    }

    pub fn brand(&self) -> Brand {
        Brand::detect(self.digits())
    }

    /// Leading digits safe to display. Six for PANs of 15+ digits; shorter PANs show fewer so
    /// that at least five digits always stay hidden between BIN and last 4.
    pub fn bin(&self) -> &str {
        let d = self.digits();
        &d[..6.min(d.len() - 9)]
    }

    pub fn last4(&self) -> &str {
        let d = self.digits();
        &d[d.len() - 4..]
    }

    /// `411111******1111`: the most PCI DSS 3.4.1 permits to display.
    pub fn masked(&self) -> String {
        let hidden = self.digits().len() - self.bin().len() - 4;
        format!("{}{}{}", self.bin(), "*".repeat(hidden), self.last4())
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber({})", self.masked())
    }
}

/// Whether `text` holds what looks like a card number: a run of 13 to 19 digits passing the
/// Luhn check, either as written or once the separators people write card numbers with (spaces,
/// dashes, dots) are removed (`4111 1111-1111.1111`). A run is maximal: digits on either side
/// make it a longer number, not a card number.
///
/// The dashes of a canonical UUID (8-4-4-4-12 hex digits, Twilio's `transaction_id`) are
/// structure, not separators: joined across them, about one random UUID in 500 would hold a
/// Luhn-valid run by chance. Within its groups (12 digits at most) none can.
pub fn contains_card_number(text: &str) -> bool {
    let has_pan = |s: &str| {
        s.split(|c: char| !c.is_ascii_digit())
            .any(|run| (13..=19).contains(&run.len()) && luhn_valid(run))
    };
    if has_pan(text) {
        return true;
    }
    if is_uuid(text) {
        return false;
    }
    let joined: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.'))
        .collect();
    has_pan(&joined)
}

/// What the merchant API refuses in an `Idempotency-Key`, stricter than
/// [`contains_card_number`] so that its OpenAPI pattern can say exactly what is accepted:
/// thirteen or more digits with nothing but dots and dashes between them, Luhn-valid or not,
/// unless the whole key is a UUID (whose groups never hold more than twelve digits in a row).
/// The pattern: `^(?:UUID|(?!.*(?:[0-9][.-]*){12}[0-9])[!-~]{1,255})$`.
pub fn has_long_digit_run(text: &str) -> bool {
    if is_uuid(text) {
        return false;
    }
    let mut digits = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                digits += 1;
                if digits >= 13 {
                    return true;
                }
            }
            '.' | '-' => {}
            _ => digits = 0,
        }
    }
    false
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Card security code. Forwarded to the processor for one request and dropped: never stored,
/// not even encrypted (PCI DSS 3.3.1).
pub struct Cvv(SecretText);

impl Cvv {
    pub fn parse(raw: SecretText) -> Result<Self, InvalidInput> {
        let v = raw.expose();
        if (3..=4).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw))
        } else {
            Err(InvalidInput::Cvv)
        }
    }

    pub(crate) fn digits(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv([REDACTED])")
    }
}

/// Card expiry. A card is valid through the last day of its expiry month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    year: u16,
}

/// How far ahead an expiry year may lie; real cards are issued for at most about ten years.
const MAX_YEARS_AHEAD: i32 = 30;

impl Expiry {
    /// Parses Twilio's `expiry_month` ("08") and `expiry_year` ("27" today, "2027" in older
    /// samples), rejecting cards whose expiry month ended before `today`.
    pub fn parse(month: &str, year: &str, today: NaiveDate) -> Result<Self, InvalidInput> {
        let month: u8 = parse_digits(month, 1..=2)
            .filter(|m| (1..=12).contains(m))
            .ok_or(InvalidInput::ExpiryMonth)? as u8;
        let year = match year.len() {
            2 => parse_digits(year, 2..=2).map(|y| 2000 + y),
            4 => parse_digits(year, 4..=4),
            _ => None,
        }
        .ok_or(InvalidInput::ExpiryYear)?;
        let year = u16::try_from(year).map_err(|_| InvalidInput::ExpiryYear)?;
        let expiry = Self { month, year };
        let (this_year, this_month) = (today.year(), today.month());
        if (i32::from(year), u32::from(month)) < (this_year, this_month) {
            return Err(InvalidInput::CardExpired);
        }
        if i32::from(year) > this_year + MAX_YEARS_AHEAD {
            return Err(InvalidInput::ExpiryTooFar);
        }
        Ok(expiry)
    }

    /// An expiry read back from the vault (validated when it was stored).
    pub fn from_stored(month: u8, year: u16) -> Option<Self> {
        (1..=12).contains(&month).then_some(Self { month, year })
    }

    /// The first instant after the card's last valid day (midnight UTC starting the next month).
    pub fn end(self) -> chrono::DateTime<chrono::Utc> {
        let (y, m) = if self.month == 12 {
            (i32::from(self.year) + 1, 1)
        } else {
            (i32::from(self.year), u32::from(self.month) + 1)
        };
        NaiveDate::from_ymd_opt(y, m, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(chrono::DateTime::<chrono::Utc>::MAX_UTC, |t| t.and_utc())
    }

    /// True once the last day of the expiry month has passed.
    pub fn is_expired(self, today: NaiveDate) -> bool {
        (i32::from(self.year), u32::from(self.month)) < (today.year(), today.month())
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn year(self) -> u16 {
        self.year
    }
}

/// Parses a string of ASCII digits whose length lies in `len`.
pub(crate) fn parse_digits(s: &str, len: std::ops::RangeInclusive<usize>) -> Option<u32> {
    if len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Billing postal code: not card data, but we still keep it to a sane shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostalCode(String);

impl PostalCode {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = (1..=10).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::PostalCode)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated card as it arrives from Twilio.
#[derive(Debug)]
pub struct Card {
    pub number: CardNumber,
    pub expiry: Expiry,
    pub cvv: Option<Cvv>,
    pub postal_code: Option<PostalCode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pan(s: &str) -> Result<CardNumber, InvalidInput> {
        CardNumber::parse(SecretText::from(s))
    }

    #[test]
    fn twilio_test_cards_are_valid_with_their_brand() {
        let cases = [
            ("4111111111111111", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("30569309025904", Brand::DinersClub),
            ("3566002020360505", Brand::Jcb),
            ("6200000000000005", Brand::UnionPay),
            ("6771798021000008", Brand::Maestro),
        ];
        for (number, brand) in cases {
            let card = pan(number).unwrap_or_else(|e| panic!("{brand:?} rejected: {e}"));
            assert_eq!(card.brand(), brand, "brand of {brand:?} test card");
        }
    }

    #[test]
    fn twilio_published_diners_number_fails_luhn() {
        // Twilio's docs list 3065930009020004 as the Diners test card, but its check digit is
        // wrong (Luhn sum = 1 mod 10). We keep the Luhn rule for every brand; the README says so.
        assert_eq!(
            pan("3065930009020004").unwrap_err(),
            InvalidInput::CardNumberLuhn
        );
        assert_eq!(pan("3065930009020003").unwrap().brand(), Brand::DinersClub);
    }

    #[test]
    fn rejects_bad_numbers_with_specific_errors() {
        assert_eq!(
            pan("4111a11111111111").unwrap_err(),
            InvalidInput::CardNumberNotNumeric
        );
        assert_eq!(pan("").unwrap_err(), InvalidInput::CardNumberNotNumeric);
        assert_eq!(
            pan("4111 1111 1111 1111").unwrap_err(),
            InvalidInput::CardNumberNotNumeric
        );
        assert_eq!(
            pan("42424242424").unwrap_err(),
            InvalidInput::CardNumberLength
        );
        assert_eq!(
            pan("42424242424242424242").unwrap_err(),
            InvalidInput::CardNumberLength
        );
        assert_eq!(
            pan("4111111111111112").unwrap_err(),
            InvalidInput::CardNumberLuhn
        );
    }

    #[test]
    fn masking_shows_at_most_bin_and_last4() {
        let visa = pan("4111111111111111").unwrap();
        assert_eq!(visa.bin(), "411111");
        assert_eq!(visa.last4(), "1111");
        assert_eq!(visa.masked(), "411111******1111");
        assert_eq!(format!("{visa:?}"), "CardNumber(411111******1111)");
        let amex = pan("378282246310005").unwrap();
        assert_eq!(amex.masked(), "378282*****0005");
        // A 12-digit PAN keeps five digits hidden.
        let short = pan("123456789015").unwrap();
        assert_eq!(short.masked(), "123*****9015");
    }

    #[test]
    fn cvv_is_three_or_four_digits_and_redacted() {
        assert!(Cvv::parse("123".into()).is_ok());
        assert!(Cvv::parse("1234".into()).is_ok());
        for bad in ["12", "12345", "12a", ""] {
            assert_eq!(Cvv::parse(bad.into()).unwrap_err(), InvalidInput::Cvv);
        }
        assert_eq!(
            format!("{:?}", Cvv::parse("123".into()).unwrap()),
            "Cvv([REDACTED])"
        );
    }

    #[test]
    fn expiry_accepts_two_and_four_digit_years_through_end_of_month() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(
            Expiry::parse("11", "26", today).unwrap(),
            Expiry {
                month: 11,
                year: 2026
            }
        );
        assert_eq!(
            Expiry::parse("8", "2027", today).unwrap(),
            Expiry {
                month: 8,
                year: 2027
            }
        );
        assert_eq!(
            Expiry::parse("10", "26", today).unwrap_err(),
            InvalidInput::CardExpired
        );
        assert_eq!(
            Expiry::parse("12", "2025", today).unwrap_err(),
            InvalidInput::CardExpired
        );
        for m in ["0", "13", "00", "1a", "", "123"] {
            assert_eq!(
                Expiry::parse(m, "27", today).unwrap_err(),
                InvalidInput::ExpiryMonth,
                "{m}"
            );
        }
        for y in ["7", "027", "20277", "2a", ""] {
            assert_eq!(
                Expiry::parse("08", y, today).unwrap_err(),
                InvalidInput::ExpiryYear,
                "{y}"
            );
        }
        assert_eq!(
            Expiry::parse("08", "2099", today).unwrap_err(),
            InvalidInput::ExpiryTooFar
        );
    }

    #[test]
    fn postal_code_shape() {
        assert!(PostalCode::parse("94111").is_ok());
        assert!(PostalCode::parse("SW1A 1AA").is_ok());
        assert_eq!(PostalCode::parse("").unwrap_err(), InvalidInput::PostalCode);
        assert_eq!(
            PostalCode::parse("<script>").unwrap_err(),
            InvalidInput::PostalCode
        );
    }

    #[test]
    fn long_digit_runs_are_found_unless_the_key_is_a_uuid() {
        for refused in [
            "1234567890123",
            "order-1234567890123",
            "1.2.3.4.5.6.7.8.9.0.1.2.3",
            "4111-1111-1111-1111",
            "x123456-7890123y",
        ] {
            assert!(has_long_digit_run(refused), "{refused}");
        }
        for accepted in [
            "123456789012",
            "12345678-1234-4123-8123-123456789012",
            "72500aba-328c-445c-a12e-da5700e10b17",
            "123456_7890123",
            "a1b2c3d4e5f6g7h8i9j0k1l2m3",
        ] {
            assert!(!has_long_digit_run(accepted), "{accepted}");
        }
    }

    #[test]
    fn card_numbers_are_found_in_ids_however_written() {
        for id in [
            "4111111111111111",
            "order-4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111.1111.1111.1111",
            "x378282246310005y",
            "ref 6011-0009-9013-9424",
            "12-4111111111111111",
        ] {
            assert!(contains_card_number(id), "{id}");
        }
        for id in [
            "72500aba-328c-445c-a12e-da5700e10b17",
            // A UUID whose groups, joined, would form a Luhn-valid 16-digit run.
            "abcd4111-1111-1111-1111-abcdefabcdef",
            "4111111111111112",
            "order-123456789012",
            // 20 digits: longer than any card number.
            "41111111111111111111",
            "",
        ] {
            assert!(!contains_card_number(id), "{id}");
        }
    }
}

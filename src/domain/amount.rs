//! Charge amounts: Twilio's decimal string in major units, turned into integer minor units by
//! the currency's ISO 4217 exponent (JPY 0, USD 2, KWD 3).

use iso_currency::Currency;

use super::invalid::InvalidInput;

/// `<Pay chargeAmount>` allows up to 1,000,000 in major units.
const MAX_MAJOR_UNITS: i64 = 1_000_000;

/// A payable currency by upper-case ISO 4217 code, with its exponent: not a fund, and with
/// minor units (gold, SDRs and the like have none).
fn payable(code: &str) -> Option<(Currency, u32)> {
    let currency = Currency::from_code(code).filter(|c| !c.is_fund())?;
    Some((currency, u32::from(currency.exponent()?)))
}

/// Every payable currency's code and exponent (for the OpenAPI document), by code.
pub fn payable_currencies() -> Vec<(&'static str, u32)> {
    let letters = b'A'..=b'Z';
    let mut out = Vec::new();
    for a in letters.clone() {
        for b in letters.clone() {
            for c in letters.clone() {
                let code = [a, b, c];
                let code = std::str::from_utf8(&code).unwrap_or_default();
                if let Some((currency, exponent)) = payable(code) {
                    out.push((currency.code(), exponent));
                }
            }
        }
    }
    out
}

/// The largest amount, in major units.
pub const MAX_AMOUNT: i64 = MAX_MAJOR_UNITS;

/// A positive amount in a payable currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    minor: i64,
    currency: Currency,
    exponent: u32,
}

impl Amount {
    /// Parses `amount` ("10", "10.0", "10.00") in `currency` (ISO 4217, any case).
    pub fn parse(amount: &str, currency: &str) -> Result<Self, InvalidInput> {
        let (currency, exponent) =
            payable(&currency.trim().to_ascii_uppercase()).ok_or(InvalidInput::UnknownCurrency)?;

        let amount = amount.trim();
        if amount.starts_with('-') {
            return Err(InvalidInput::AmountNotPositive);
        }
        let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (amount.contains('.') && frac.is_empty())
        {
            return Err(InvalidInput::AmountFormat);
        }
        let frac_trimmed = frac.trim_end_matches('0');
        if frac_trimmed.len() > exponent as usize {
            return Err(InvalidInput::AmountPrecision);
        }
        let scale = 10i64.pow(exponent);
        let whole: i64 = whole
            .trim_start_matches('0')
            .parse::<i64>()
            .or_else(|e| {
                if whole.trim_start_matches('0').is_empty() {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| InvalidInput::AmountTooLarge)?;
        if whole > MAX_MAJOR_UNITS {
            return Err(InvalidInput::AmountTooLarge);
        }
        let mut frac_minor: i64 = 0;
        for (i, b) in frac_trimmed.bytes().enumerate() {
            frac_minor += i64::from(b - b'0') * 10i64.pow(exponent - 1 - i as u32);
        }
        let minor = whole * scale + frac_minor;
        if minor == 0 {
            return Err(InvalidInput::AmountNotPositive);
        }
        if minor > MAX_MAJOR_UNITS * scale {
            return Err(InvalidInput::AmountTooLarge);
        }
        Ok(Self {
            minor,
            currency,
            exponent,
        })
    }

    /// `minor` units of `currency` as a decimal string (`1234`, `USD` -> `12.34 USD`), for display.
    pub fn display_minor(minor: i64, currency: &str) -> String {
        match Currency::from_code(currency).and_then(|c| c.exponent()) {
            Some(exp) if exp > 0 => {
                let scale = 10i64.pow(u32::from(exp));
                let sign = if minor < 0 { "-" } else { "" };
                let m = minor.abs();
                format!(
                    "{sign}{}.{:0w$} {currency}",
                    m / scale,
                    m % scale,
                    w = usize::from(exp)
                )
            }
            _ => format!("{minor} {currency}"),
        }
    }

    pub fn minor_units(&self) -> i64 {
        self.minor
    }

    /// The currency's ISO 4217 exponent: digits after the decimal point (JPY 0, USD 2, KWD 3).
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// Upper-case ISO 4217 code.
    pub fn currency(&self) -> &'static str {
        self.currency.code()
    }

    /// Canonical decimal string in major units with the currency's digits: `10.00`, `500`, `1.250`.
    pub fn to_decimal(&self) -> String {
        if self.exponent == 0 {
            return self.minor.to_string();
        }
        let scale = 10i64.pow(self.exponent);
        format!(
            "{}.{:0width$}",
            self.minor / scale,
            self.minor % scale,
            width = self.exponent as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_by_currency_exponent() {
        let a = Amount::parse("10.0", "usd").unwrap();
        assert_eq!(
            (a.minor_units(), a.currency(), a.to_decimal().as_str()),
            (1000, "USD", "10.00")
        );
        let a = Amount::parse("500", "JPY").unwrap();
        assert_eq!((a.minor_units(), a.to_decimal().as_str()), (500, "500"));
        let a = Amount::parse("1.25", "KWD").unwrap();
        assert_eq!((a.minor_units(), a.to_decimal().as_str()), (1250, "1.250"));
        assert_eq!(Amount::parse("0.01", "USD").unwrap().minor_units(), 1);
        assert_eq!(
            Amount::parse("1000000", "USD").unwrap().minor_units(),
            100_000_000
        );
        assert_eq!(
            Amount::parse("1000000.00", "USD").unwrap().minor_units(),
            100_000_000
        );
        assert_eq!(
            Amount::parse("500.0", "JPY").unwrap().minor_units(),
            500,
            "trailing zeros are fine"
        );
        assert_eq!(Amount::parse("007.50", "EUR").unwrap().minor_units(), 750);
    }

    #[test]
    fn displays_minor_units() {
        assert_eq!(Amount::display_minor(1234, "USD"), "12.34 USD");
        assert_eq!(Amount::display_minor(500, "JPY"), "500 JPY");
        assert_eq!(Amount::display_minor(1250, "KWD"), "1.250 KWD");
    }

    #[test]
    fn rejects_bad_amounts_precisely() {
        use InvalidInput::*;
        let cases = [
            ("0", "USD", AmountNotPositive),
            ("0.00", "USD", AmountNotPositive),
            ("-1.00", "USD", AmountNotPositive),
            ("1.001", "USD", AmountPrecision),
            ("1.5", "JPY", AmountPrecision),
            ("1.0001", "KWD", AmountPrecision),
            ("1000000.01", "USD", AmountTooLarge),
            ("1000001", "JPY", AmountTooLarge),
            ("99999999999999999999999", "USD", AmountTooLarge),
            ("", "USD", AmountFormat),
            ("ten", "USD", AmountFormat),
            ("1,00", "USD", AmountFormat),
            ("1e3", "USD", AmountFormat),
            (".5", "USD", AmountFormat),
            ("5.", "USD", AmountFormat),
            ("+5", "USD", AmountFormat),
            ("1.2.3", "USD", AmountFormat),
            ("10.00", "ZZZ", UnknownCurrency),
            ("10.00", "XAU", UnknownCurrency),
            ("10.00", "BOV", UnknownCurrency),
            ("10.00", "", UnknownCurrency),
        ];
        for (amount, currency, err) in cases {
            assert_eq!(
                Amount::parse(amount, currency).unwrap_err(),
                err,
                "{amount} {currency}"
            );
        }
    }
}

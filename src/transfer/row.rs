//! Validating an import row exactly as tokenize validates a request: the same domain types, so
//! a card tokenize would refuse is refused here, with the same error code.

use chrono::NaiveDate;

use super::layout::{Field, Preset, RawRow};
use crate::domain::card::contains_card_number;
use crate::domain::{
    AccountNumber, BankAccount, Card, CardNumber, Expiry, InvalidInput, PaymentMethod, PostalCode,
    RoutingNumber,
};

/// A valid row, ready to vault.
#[derive(Debug)]
pub struct ImportRow {
    pub line: u64,
    pub source_id: String,
    pub method: PaymentMethod,
    pub network_transaction_id: Option<String>,
}

/// Why a row was refused: a stable code, the column at fault (never its value) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub column: Option<&'static str>,
    pub message: String,
}

impl Refusal {
    pub fn new(
        code: &'static str,
        column: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            column,
            message: message.into(),
        }
    }

    fn invalid(column: &'static str, e: InvalidInput) -> Self {
        Self::new(e.code(), Some(column), e.to_string())
    }
}

/// The source id of a row, if it has a usable one (for the result file, even when the row is
/// refused for another reason).
pub fn source_id(row: &RawRow, preset: Preset) -> Result<String, Refusal> {
    let column = preset.column(Field::SourceId);
    let Some(raw) = row.get(Field::SourceId) else {
        return Err(Refusal::new(
            "missing_field",
            Some(column),
            "the source id is required",
        ));
    };
    if !(1..=255).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::new(
            "invalid_source_id",
            Some(column),
            "the source id must be 1 to 255 printable ASCII characters",
        ));
    }
    if contains_card_number(raw) {
        return Err(Refusal::new(
            "card_number_in_source_id",
            Some(column),
            "the source id looks like it holds a card number",
        ));
    }
    Ok(raw.to_owned())
}

/// Validates a row read with `preset`, as of `today`.
pub fn validate(mut row: RawRow, preset: Preset, today: NaiveDate) -> Result<ImportRow, Refusal> {
    let col = |f| preset.column(f);
    let source_id = source_id(&row, preset)?;
    let number = row.take(Field::Number);
    let account = row.take(Field::AccountNumber);
    let method = match (number, account) {
        (Some(_), Some(_)) => {
            return Err(Refusal::invalid(
                col(Field::Number),
                InvalidInput::AmbiguousPaymentMethod,
            ))
        }
        (None, None) => {
            return Err(Refusal::new(
                "missing_payment_method",
                None,
                format!(
                    "a card number (`{}`) or a bank account number (`{}`) is required",
                    col(Field::Number),
                    col(Field::AccountNumber)
                ),
            ))
        }
        (Some(number), None) => {
            let number =
                CardNumber::parse(number).map_err(|e| Refusal::invalid(col(Field::Number), e))?;
            let expiry = expiry(&row, preset, today)?;
            let postal_code = row
                .get(Field::PostalCode)
                .map(PostalCode::parse)
                .transpose()
                .map_err(|e| Refusal::invalid(col(Field::PostalCode), e))?;
            PaymentMethod::Card(Card {
                number,
                expiry,
                cvv: None,
                postal_code,
            })
        }
        (None, Some(account)) => {
            let routing = row.get(Field::RoutingNumber).ok_or_else(|| {
                Refusal::invalid(
                    col(Field::RoutingNumber),
                    InvalidInput::MissingField("routingnumber"),
                )
            })?;
            let routing = RoutingNumber::parse(routing)
                .map_err(|e| Refusal::invalid(col(Field::RoutingNumber), e))?;
            let account = AccountNumber::parse(account)
                .map_err(|e| Refusal::invalid(col(Field::AccountNumber), e))?;
            PaymentMethod::Bank(BankAccount { routing, account })
        }
    };
    let network_transaction_id = match row.get(Field::NetworkTransactionId) {
        None => None,
        Some(_) if matches!(method, PaymentMethod::Bank(_)) => None,
        Some(id) => {
            let ok = (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
            if !ok || contains_card_number(id) {
                return Err(Refusal::new(
                    "invalid_network_transaction_id",
                    Some(col(Field::NetworkTransactionId)),
                    "the network transaction id must be 1 to 255 printable ASCII characters and hold no card number",
                ));
            }
            Some(id.to_owned())
        }
    };
    Ok(ImportRow {
        line: row.line,
        source_id,
        method,
        network_transaction_id,
    })
}

/// The expiry from separate month and year columns, or from one `MM/YY` (`MM/YYYY`) column.
fn expiry(row: &RawRow, preset: Preset, today: NaiveDate) -> Result<Expiry, Refusal> {
    let col = |f| preset.column(f);
    let (month, year, column) = match (row.get(Field::ExpMonth), row.get(Field::ExpYear)) {
        (Some(m), Some(y)) => (m, y, col(Field::ExpMonth)),
        _ => {
            let Some(both) = row.get(Field::Expiry) else {
                return Err(Refusal::new(
                    "missing_field",
                    Some(col(Field::ExpMonth)),
                    format!(
                        "the expiry is required: `{}` and `{}`, or `{}` as MM/YY",
                        col(Field::ExpMonth),
                        col(Field::ExpYear),
                        col(Field::Expiry)
                    ),
                ));
            };
            let Some((m, y)) = both.split_once(['/', '-']) else {
                return Err(Refusal::new(
                    "invalid_expiry",
                    Some(col(Field::Expiry)),
                    "the expiry must be MM/YY or MM/YYYY",
                ));
            };
            (m.trim(), y.trim(), col(Field::Expiry))
        }
    };
    Expiry::parse(month, year, today).map_err(|e| Refusal::invalid(column, e))
}

#[cfg(test)]
mod tests {
    use super::super::layout::{rows, Format};
    use super::*;

    fn one(csv: &str, preset: Preset) -> Result<ImportRow, Refusal> {
        let row = rows(csv.as_bytes(), Format::Csv, preset)
            .next()
            .unwrap()
            .unwrap();
        validate(row, preset, NaiveDate::from_ymd_opt(2026, 11, 30).unwrap())
    }

    #[test]
    fn cards_and_bank_accounts_validate_as_tokenize_does() {
        let ok = one(
            "source_id,number,exp_month,exp_year,network_transaction_id\nc1,4111111111111111,8,2030,NTID1\n",
            Preset::Generic,
        )
        .unwrap();
        assert_eq!(ok.method.masked(), "visa 411111******1111");
        assert_eq!(ok.network_transaction_id.as_deref(), Some("NTID1"));
        let bank = one(
            "source_id,routing_number,account_number\nb1,121000358,123456789\n",
            Preset::Generic,
        )
        .unwrap();
        assert_eq!(bank.method.kind(), "bank_account");

        let refusals = [
            (
                "c2,4111111111111112,08,2030",
                "invalid_card_number_checksum",
            ),
            ("c3,4111111111111111,08,2020", "card_expired"),
            ("c4,4111111111111111,13,2030", "invalid_expiry_month"),
            ("c5,,08,2030", "missing_payment_method"),
            (
                "4111111111111111,4111111111111111,08,2030",
                "card_number_in_source_id",
            ),
        ];
        for (line, code) in refusals {
            let e = one(
                &format!("source_id,number,exp_month,exp_year\n{line}\n"),
                Preset::Generic,
            )
            .unwrap_err();
            assert_eq!(e.code, code, "{line}");
            assert!(!e.message.contains("4111"), "{e:?}");
        }
    }

    #[test]
    fn a_combined_expiry_column_is_read() {
        let ok = one(
            "payment_method_token,card_number,expiration_date\npm,5555555555554444,09/2031\n",
            Preset::Braintree,
        )
        .unwrap();
        let PaymentMethod::Card(c) = ok.method else {
            panic!()
        };
        assert_eq!((c.expiry.month(), c.expiry.year()), (9, 2031));
    }
}

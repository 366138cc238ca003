//! Input layouts of `payvault import`: which column (CSV header, or JSON key) holds which field,
//! for the generic layout and the Stripe and Braintree export presets; and reading rows in
//! either format into [`RawRow`]s, one at a time.

use std::collections::HashMap;
use std::io::BufRead;

use serde::de::{self, Deserializer, Visitor};
use zeroize::Zeroizing;

use crate::domain::SecretText;

/// The fields `payvault import` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    SourceId,
    Number,
    ExpMonth,
    ExpYear,
    /// Month and year in one column: `MM/YY`, `MM/YYYY` (or with `-`).
    Expiry,
    Name,
    PostalCode,
    NetworkTransactionId,
    RoutingNumber,
    AccountNumber,
    AccountHolder,
}

const FIELDS: [Field; 11] = [
    Field::SourceId,
    Field::Number,
    Field::ExpMonth,
    Field::ExpYear,
    Field::Expiry,
    Field::Name,
    Field::PostalCode,
    Field::NetworkTransactionId,
    Field::RoutingNumber,
    Field::AccountNumber,
    Field::AccountHolder,
];

/// A column mapping preset (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// payvault's own layout, which `payvault export` writes.
    Generic,
    /// A Stripe card data export.
    Stripe,
    /// A Braintree data migration export.
    Braintree,
}

impl Preset {
    /// The column holding `field` in this layout.
    pub fn column(self, field: Field) -> &'static str {
        use Field::*;
        match (self, field) {
            (Preset::Generic, SourceId) => "source_id",
            (Preset::Generic, Number) => "number",
            (Preset::Generic, ExpMonth) => "exp_month",
            (Preset::Generic, ExpYear) => "exp_year",
            (Preset::Generic, Expiry) => "expiry",
            (Preset::Generic, Name) => "name",
            (Preset::Generic, PostalCode) => "postal_code",
            (Preset::Generic, AccountHolder) => "account_holder",
            (Preset::Stripe, SourceId) => "id",
            (Preset::Stripe, Number) => "number",
            (Preset::Stripe, ExpMonth) => "exp_month",
            (Preset::Stripe, ExpYear) => "exp_year",
            (Preset::Stripe, Expiry) => "expiry",
            (Preset::Stripe, Name) => "name",
            (Preset::Stripe, PostalCode) => "address_zip",
            (Preset::Stripe, AccountHolder) => "account_holder_name",
            (Preset::Braintree, SourceId) => "payment_method_token",
            (Preset::Braintree, Number) => "card_number",
            (Preset::Braintree, ExpMonth) => "expiration_month",
            (Preset::Braintree, ExpYear) => "expiration_year",
            (Preset::Braintree, Expiry) => "expiration_date",
            (Preset::Braintree, Name) => "cardholder_name",
            (Preset::Braintree, PostalCode) => "billing_postal_code",
            (Preset::Braintree, AccountHolder) => "account_holder_name",
            (_, NetworkTransactionId) => "network_transaction_id",
            (_, RoutingNumber) => "routing_number",
            (_, AccountNumber) => "account_number",
        }
    }

    fn field_of(self, column: &str) -> Option<Field> {
        FIELDS.into_iter().find(|f| self.column(*f) == column)
    }
}

/// The input's format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// One input row's fields, by what they mean; only those present and not empty. Every value
/// is zeroized when the row is dropped.
#[derive(Debug, Default)]
pub struct RawRow {
    /// The row's line number in the (decrypted) input, counting from 1.
    pub line: u64,
    fields: HashMap<Field, SecretText>,
}

impl RawRow {
    pub fn get(&self, field: Field) -> Option<&str> {
        self.fields.get(&field).map(SecretText::expose)
    }

    pub fn take(&mut self, field: Field) -> Option<SecretText> {
        self.fields.remove(&field)
    }
}

/// Why a row could not be read at all (its fields are never named by value).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("the line is not a JSON object of strings and numbers")]
    NotAnObject,
    #[error("the row is not valid CSV (wrong number of fields, or not UTF-8)")]
    Csv,
    #[error("the input could not be read: {0}")]
    Io(String),
}

impl RowError {
    pub fn code(&self) -> &'static str {
        match self {
            RowError::NotAnObject => "malformed_json",
            RowError::Csv => "malformed_csv",
            RowError::Io(_) => "unreadable_input",
        }
    }
}

/// A row, or why line `line` could not be read.
pub type RowResult = Result<RawRow, (u64, RowError)>;

/// Reads rows from `input`, one at a time.
pub fn rows<'a, R: BufRead + 'a>(
    input: R,
    format: Format,
    preset: Preset,
) -> Box<dyn Iterator<Item = RowResult> + 'a> {
    match format {
        Format::Csv => Box::new(CsvRows::new(input, preset)),
        Format::Jsonl => Box::new(JsonRows {
            input,
            preset,
            line: 0,
            buf: Zeroizing::new(Vec::new()),
        }),
    }
}

struct CsvRows<R: BufRead> {
    reader: csv::Reader<R>,
    /// The field each column holds, by column index; `None` for columns we do not read.
    columns: Option<Vec<Option<Field>>>,
    preset: Preset,
    record: csv::ByteRecord,
    done: bool,
}

impl<R: BufRead> CsvRows<R> {
    fn new(input: R, preset: Preset) -> Self {
        Self {
            reader: csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(false)
                .from_reader(input),
            columns: None,
            preset,
            record: csv::ByteRecord::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for CsvRows<R> {
    type Item = RowResult;

    fn next(&mut self) -> Option<RowResult> {
        loop {
            if self.done {
                return None;
            }
            let read = self.reader.read_byte_record(&mut self.record);
            let line = self.record.position().map_or(0, |p| p.line());
            match read {
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    // An I/O error ends the input; a malformed record is skipped.
                    if let csv::ErrorKind::Io(io) = e.kind() {
                        self.done = true;
                        return Some(Err((line, RowError::Io(io.kind().to_string()))));
                    }
                    let line = e.position().map_or(line, |p| p.line());
                    return Some(Err((line, RowError::Csv)));
                }
                Ok(true) => {}
            }
            let Some(columns) = &self.columns else {
                let preset = self.preset;
                self.columns = Some(
                    self.record
                        .iter()
                        .map(|h| {
                            std::str::from_utf8(h)
                                .ok()
                                .and_then(|h| preset.field_of(h.trim()))
                        })
                        .collect(),
                );
                continue;
            };
            let mut row = RawRow {
                line,
                fields: HashMap::new(),
            };
            for (value, field) in self.record.iter().zip(columns) {
                let Some(field) = field else { continue };
                let Ok(value) = std::str::from_utf8(value) else {
                    return Some(Err((line, RowError::Csv)));
                };
                let value = value.trim();
                if !value.is_empty() {
                    row.fields.insert(*field, SecretText::from(value));
                }
            }
            // The record's buffer held card data: overwrite it before the next one.
            self.record.clear();
            return Some(Ok(row));
        }
    }
}

struct JsonRows<R: BufRead> {
    input: R,
    preset: Preset,
    line: u64,
    buf: Zeroizing<Vec<u8>>,
}

impl<R: BufRead> Iterator for JsonRows<R> {
    type Item = RowResult;

    fn next(&mut self) -> Option<RowResult> {
        loop {
            self.buf.clear();
            self.line += 1;
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err((self.line, RowError::Io(e.kind().to_string())))),
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed: Result<HashMap<String, JsonValue>, _> = serde_json::from_slice(&self.buf);
            let Ok(object) = parsed else {
                return Some(Err((self.line, RowError::NotAnObject)));
            };
            let mut row = RawRow {
                line: self.line,
                fields: HashMap::new(),
            };
            for (key, value) in object {
                if let (Some(field), JsonValue(Some(value))) = (self.preset.field_of(&key), value) {
                    if !value.expose().trim().is_empty() {
                        row.fields
                            .insert(field, SecretText::from(value.expose().trim()));
                    }
                }
            }
            return Some(Ok(row));
        }
    }
}

/// A JSON value read straight into zeroized text: a string or a number as written; `null`
/// is absent. Anything else is refused without echoing it.
struct JsonValue(Option<SecretText>);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = JsonValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(Some(SecretText::from(v))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonValue, E> {
                Ok(JsonValue(Some(SecretText::new(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(Some(SecretText::new(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(Some(SecretText::new(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &str, format: Format, preset: Preset) -> Vec<RowResult> {
        rows(input.as_bytes(), format, preset).collect()
    }

    #[test]
    fn csv_maps_columns_by_header_and_numbers_lines() {
        let input = "card_number,expiration_date,payment_method_token,other\n\
                     4111111111111111,08/2030,pm_1,x\n\
                     1,2\n\
                     5555555555554444, 09/31 ,pm_2,\n";
        let rows = all(input, Format::Csv, Preset::Braintree);
        assert_eq!(rows.len(), 3);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(first.get(Field::Number), Some("4111111111111111"));
        assert_eq!(first.get(Field::Expiry), Some("08/2030"));
        assert_eq!(first.get(Field::SourceId), Some("pm_1"));
        assert!(matches!(rows[1], Err((3, RowError::Csv))));
        assert_eq!(rows[2].as_ref().unwrap().get(Field::Expiry), Some("09/31"));
    }

    #[test]
    fn json_lines_take_strings_and_numbers_and_refuse_the_rest_without_echo() {
        let input = "{\"id\":\"card_1\",\"number\":\"4111111111111111\",\"exp_month\":8,\"exp_year\":2030,\"name\":null}\n\
                     \n\
                     {\"id\":\"card_2\",\"number\":[\"4111111111111111\"]}\n\
                     not json 4111111111111111\n";
        let rows = all(input, Format::Jsonl, Preset::Stripe);
        assert_eq!(rows.len(), 3);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.get(Field::ExpMonth), Some("8"));
        assert_eq!(first.get(Field::Name), None);
        for (row, line) in rows[1..].iter().zip([3, 4]) {
            let Err((l, e)) = row else { panic!() };
            assert_eq!(*l, line);
            assert!(!e.to_string().contains("4111"));
        }
    }
}

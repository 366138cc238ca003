//! The result file of `payvault import`: one JSON line per input row, showing of a vault entry
//! no more than the merchant API does.

use serde::Serialize;

use super::row::Refusal;
use crate::store::imports::KnownRecord;
use crate::vault::PreparedEntry;

/// One line of the result file.
#[derive(Debug, Serialize)]
pub(super) struct ResultLine {
    pub(super) line: u64,
    /// `imported`, `already_imported`, `deduplicated` or `refused`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_id: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    entry: Option<EntryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What the result file shows of a vault entry: never more than the merchant API does.
#[derive(Debug, Clone, Serialize)]
pub(super) struct EntryView {
    token: String,
    kind: String,
    brand: Option<String>,
    bin: Option<String>,
    last4: String,
    exp_month: Option<i16>,
    exp_year: Option<i16>,
    fingerprint: String,
}

impl EntryView {
    pub(super) fn of(entry: &PreparedEntry, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            kind: entry.kind.to_owned(),
            brand: entry.brand.map(str::to_owned),
            bin: entry.bin.clone(),
            last4: entry.last4.clone(),
            exp_month: entry.exp_month,
            exp_year: entry.exp_year,
            fingerprint: hex(&entry.fingerprint),
        }
    }

    pub(super) fn known(k: &KnownRecord) -> Self {
        Self {
            token: k.token.clone(),
            kind: k.kind.clone(),
            brand: k.brand.clone(),
            bin: k.bin.clone(),
            last4: k.last4.clone(),
            exp_month: k.exp_month,
            exp_year: k.exp_year,
            fingerprint: hex(&k.fingerprint),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn refused(line: u64, source_id: Option<String>, why: Refusal) -> ResultLine {
    ResultLine {
        line,
        status: "refused",
        source_id,
        entry: None,
        error_code: Some(why.code),
        column: why.column,
        error: Some(why.message),
    }
}

pub(super) fn done(
    line: u64,
    status: &'static str,
    source_id: &str,
    entry: EntryView,
) -> ResultLine {
    ResultLine {
        line,
        status,
        source_id: Some(source_id.to_owned()),
        entry: Some(entry),
        error_code: None,
        column: None,
        error: None,
    }
}

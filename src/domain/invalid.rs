//! Validation failures, each with a stable machine-readable code.
//!
//! Messages name the field and the rule, never the value: a rejected card number must not be
//! echoed back in a response or a log line.

/// Why a request was rejected before anything was stored or forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("field `{0}` is required")]
    MissingField(&'static str),
    /// Always a top-level field name we define, never a path into caller-chosen keys.
    #[error("field `{0}` must be a string")]
    InvalidFieldType(&'static str),
    #[error("request body is not valid JSON (line {line}, column {column})")]
    MalformedJson { line: usize, column: usize },
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("field `method` must be `tokenize` or `charge`")]
    UnknownMethod,
    #[error("field `method` contradicts the request path")]
    MethodPathMismatch,
    #[error("field `transaction_id` must be 1 to 255 printable ASCII characters")]
    InvalidTransactionId,
    #[error("the idempotency key (`transaction_id`, or the `Idempotency-Key` header) looks like it holds a card number; use an id that holds no card data")]
    CardNumberInTransactionId,
    #[error(
        "send either card fields (`cardnumber`) or bank fields (`bankaccountnumber`), not both"
    )]
    AmbiguousPaymentMethod,
    #[error("field `cardnumber` or `bankaccountnumber` is required")]
    MissingPaymentMethod,
    #[error("field `cardnumber` must contain only digits")]
    CardNumberNotNumeric,
    #[error("field `cardnumber` must have 12 to 19 digits")]
    CardNumberLength,
    #[error("field `cardnumber` fails the Luhn check digit")]
    CardNumberLuhn,
    #[error("field `expiry_month` must be a month from 01 to 12")]
    ExpiryMonth,
    #[error("field `expiry_year` must be a 2- or 4-digit year")]
    ExpiryYear,
    #[error("the card expired at the end of its expiry month")]
    CardExpired,
    #[error("field `expiry_year` is too far in the future")]
    ExpiryTooFar,
    #[error("field `cvv` must be 3 or 4 digits")]
    Cvv,
    #[error("field `postal_code` must be 1 to 10 letters, digits, spaces or dashes")]
    PostalCode,
    #[error("field `routingnumber` must be a 9-digit ABA routing number")]
    RoutingNumberFormat,
    #[error("field `routingnumber` fails the ABA checksum")]
    RoutingNumberChecksum,
    #[error("field `bankaccountnumber` must be 4 to 17 digits")]
    AccountNumber,
    #[error("field `amount` must be a decimal number such as 10.00")]
    AmountFormat,
    #[error("field `amount` must be greater than zero")]
    AmountNotPositive,
    #[error("field `amount` has more decimal places than the currency allows")]
    AmountPrecision,
    #[error("field `amount` exceeds the maximum of 1,000,000")]
    AmountTooLarge,
    #[error("field `currency_code` is not a payable ISO 4217 currency")]
    UnknownCurrency,
    #[error("field `token` is not a payvault token")]
    TokenFormat,
    #[error("send either card or bank fields, or a `token`, not both")]
    TokenWithCardData,
    #[error("the stored card has expired")]
    StoredCardExpired,
    #[error("{0}")]
    TokenExpiry(&'static str),
    #[error("field `stored_credential` must be `recurring` or `unscheduled`")]
    StoredCredential,
}

impl InvalidInput {
    /// Stable code for the `error_code` field. Clients may match on these; never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingField(_) => "missing_field",
            Self::InvalidFieldType(_) => "invalid_field_type",
            Self::MalformedJson { .. } | Self::NotAnObject => "malformed_json",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::BodyUnreadable => "unreadable_body",
            Self::UnknownMethod => "unknown_method",
            Self::MethodPathMismatch => "method_path_mismatch",
            Self::InvalidTransactionId => "invalid_transaction_id",
            Self::CardNumberInTransactionId => "card_number_in_transaction_id",
            Self::AmbiguousPaymentMethod => "ambiguous_payment_method",
            Self::MissingPaymentMethod => "missing_payment_method",
            Self::CardNumberNotNumeric => "invalid_card_number",
            Self::CardNumberLength => "invalid_card_number_length",
            Self::CardNumberLuhn => "invalid_card_number_checksum",
            Self::ExpiryMonth => "invalid_expiry_month",
            Self::ExpiryYear => "invalid_expiry_year",
            Self::CardExpired => "card_expired",
            Self::ExpiryTooFar => "invalid_expiry_year",
            Self::Cvv => "invalid_cvv",
            Self::PostalCode => "invalid_postal_code",
            Self::RoutingNumberFormat => "invalid_routing_number",
            Self::RoutingNumberChecksum => "invalid_routing_number_checksum",
            Self::AccountNumber => "invalid_account_number",
            Self::AmountFormat => "invalid_amount",
            Self::AmountNotPositive => "amount_not_positive",
            Self::AmountPrecision => "amount_too_precise",
            Self::AmountTooLarge => "amount_too_large",
            Self::UnknownCurrency => "unknown_currency",
            Self::TokenFormat => "invalid_token",
            Self::TokenWithCardData => "ambiguous_payment_method",
            Self::StoredCardExpired => "card_expired",
            Self::TokenExpiry(_) => "invalid_token_expiry",
            Self::StoredCredential => "invalid_stored_credential",
        }
    }
}

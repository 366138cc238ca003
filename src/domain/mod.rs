//! Domain types: card and bank data, tokens, transaction ids. Nothing here knows about HTTP or
//! SQL; sensitive values are newtypes that zeroize on drop and never print in clear.

pub mod amount;
pub mod audit;
pub mod bank;
pub mod card;
pub mod expiry;
pub mod invalid;
pub mod payment;
pub mod secret;
pub mod tenant;
pub mod token;

pub use amount::Amount;
pub use audit::{AuditEvent, Origin};
pub use bank::{AccountNumber, BankAccount, RoutingNumber};
pub use card::{has_long_digit_run, Brand, Card, CardNumber, Cvv, Expiry, PostalCode};
pub use expiry::{ExpiryPolicy, TokenExpiry};
pub use invalid::InvalidInput;
pub use payment::{PaymentMethod, TransactionId};
pub use secret::SecretText;
pub use tenant::{check_tenant_name, DEFAULT_TENANT, DEFAULT_TENANT_NAME};
pub use token::Token;

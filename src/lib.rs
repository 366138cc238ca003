//! payvault: a self-hosted card and bank-account tokenization vault that speaks Twilio's
//! Generic Pay Connector protocol.
//!
//! Layout: `http` knows HTTP and the Twilio wire format; `domain` holds the validated card and
//! bank types; `vault` composes the operations; `crypto` holds keys and envelope encryption;
//! `store` holds every SQL statement; `auth` holds credentials; `audit` the audit event model.

pub mod audit;
pub mod auth;
pub mod charge;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod domain;
pub mod http;
pub mod processor;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vault;

//! payvault: a self-hosted card and bank-account tokenization vault that speaks Twilio's
//! Generic Pay Connector protocol.
//!
//! Layout (see docs/architecture.md): `app` launches the service; `cli` and `dev` are the
//! command line; `http` knows HTTP and the Twilio wire format; `vault` (tokenize, token
//! operations) and `charge` are the domain operations; `domain` holds the validated card and
//! bank types; `crypto` holds keys and envelope encryption; `store` holds every SQL statement;
//! `auth` holds credentials; `audit` the audit log and its seal chain; `processor` the outbound
//! payment processor adapters.

pub mod app;
pub mod audit;
pub mod auth;
pub mod charge;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod dev;
pub mod domain;
pub mod http;
pub mod processor;
pub mod shares;
pub mod store;
pub mod telemetry;
pub mod transfer;
pub mod vault;

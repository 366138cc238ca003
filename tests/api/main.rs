//! payvault's integration tests, in one binary: API tests against a real PostgreSQL with a
//! database per test (`helpers`), full-process tests of the `payvault` binary (`cli`, `dev`), and
//! security regression tests that scan the database and the logs for card data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_selftest;
mod fakes;
mod helpers;

mod abuse;
mod audit;
mod audit_checkpoint;
mod audit_forgery;
mod audit_list;
mod audit_sealing;
mod charge;
mod cli;
mod custody;
mod dev;
mod keys;
mod leaks;
mod lease;
mod merchant_api;
mod operator_audit;
mod ops;
mod pool_release;
mod processor_cli;
mod processors;
mod roles;
mod security;
mod shares;
mod shares_audit;
mod startup;
mod stored_credentials;
mod tenant_processor;
mod tenants;
mod tenants_cli;
mod tokenize;
mod tokens;
mod transfer;

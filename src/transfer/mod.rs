//! Bulk import and export of vaulted cards and bank accounts (`payvault import`,
//! `payvault export`): moving a card base in from another vault or processor, or out to one,
//! with OpenPGP-encrypted files.

pub mod export;
pub mod import;
pub mod layout;
pub mod pgp;
mod progress;
mod result;
pub mod row;

pub use import::{import, ImportOptions, ImportSummary};
pub use layout::{Format, Preset};

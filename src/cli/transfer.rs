//! `payvault import` and `payvault export`: the arguments, then [`crate::transfer`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::db::{cli_pool, seal_before_exit};
use super::keys::master_keys;
use crate::audit::AuditLog;
use crate::config;
use crate::store::audit_mac::EventSigner;
use crate::transfer::export::{ExportOptions, Selection};
use crate::transfer::pgp::{DecryptKey, Recipient};
use crate::transfer::{Format, ImportOptions, Preset};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import: CSV with a header row, or JSON lines; plain, or OpenPGP-encrypted
    /// to the key given with --decrypt-key.
    pub input: PathBuf,
    /// Name of the source system (e.g. `stripe-acct_1AbC`): source ids are unique within it,
    /// so a rerun skips the records already imported from it.
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// The credential (name or username) the tokens are recorded as created by; deduplication
    /// (PAYVAULT_DEDUP=on) looks among its tokens.
    #[arg(long, value_name = "NAME")]
    pub credential: String,
    /// Column names: payvault's generic layout, or a Stripe or Braintree export's.
    #[arg(long, value_enum, default_value_t = Preset::Generic)]
    pub preset: Preset,
    /// Input format (default: `jsonl` for a name containing `.jsonl` or `.json`, else `csv`).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// An OpenPGP secret key (armored or binary) the input is encrypted to; its passphrase, if
    /// any, in PAYVAULT_IMPORT_KEY_PASSPHRASE or PAYVAULT_IMPORT_KEY_PASSPHRASE_FILE.
    #[arg(long, value_name = "FILE")]
    pub decrypt_key: Option<PathBuf>,
    /// Where to write the result, one JSON line per input row (default: INPUT.result.jsonl).
    #[arg(long, value_name = "FILE")]
    pub result: Option<PathBuf>,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// The processor profile that issued the imported network transaction ids (e.g. `stripe`):
    /// merchant-initiated charges then cite them only to that processor.
    #[arg(long, value_name = "PROFILE")]
    pub network_transaction_issuer: Option<String>,
    /// Also write one `import_row` audit event per vaulted row.
    #[arg(long)]
    pub audit_each_row: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The recipient's OpenPGP public key (armored or binary): RSA of 3072 bits or more, or
    /// Curve25519 (Ed25519/X25519).
    #[arg(long, value_name = "FILE")]
    pub recipient_key: PathBuf,
    /// The encrypted output file; never overwritten.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Export every live token.
    #[arg(long, conflicts_with_all = ["tokens", "tenant"])]
    pub all: bool,
    /// Export every live token of the tenant NAME.
    #[arg(long, value_name = "NAME", conflicts_with = "tokens")]
    pub tenant: Option<String>,
    /// Export the tokens listed in FILE, one per line.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Required: this command writes card numbers out of the vault (encrypted to the
    /// recipient, who can read them all).
    #[arg(long)]
    pub i_understand_this_exports_card_data: bool,
    /// Entries per database read.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    if !(1..=100).contains(&args.source.len()) {
        anyhow::bail!("--source must be 1 to 100 characters");
    }
    let decrypt = match &args.decrypt_key {
        Some(path) => Some(DecryptKey::load(
            path,
            config::secret_var("PAYVAULT_IMPORT_KEY_PASSPHRASE")?,
        )?),
        None => None,
    };
    let format = args.format.unwrap_or_else(|| {
        let name = args.input.to_string_lossy();
        if name.contains(".jsonl") || name.contains(".json") || name.contains(".ndjson") {
            Format::Jsonl
        } else {
            Format::Csv
        }
    });
    let result = args.result.clone().unwrap_or_else(|| {
        let mut name = args.input.clone().into_os_string();
        name.push(".result.jsonl");
        PathBuf::from(name)
    });
    let expires_at = config::default_token_ttl_days()?
        .map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
    let dedup = config::dedup()?;
    let pool = cli_pool().await?;
    let credential = crate::store::credentials::list_credentials(&pool, false)
        .await?
        .into_iter()
        .find(|c| c.name == args.credential || c.username == args.credential)
        .with_context(|| {
            format!(
                "no active credential is named {}: see `payvault credentials list`",
                args.credential
            )
        })?;
    let keys = master_keys(&pool).await?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(keys.clone())));
    let summary = crate::transfer::import(
        &pool,
        keys,
        &log,
        ImportOptions {
            input: args.input,
            format,
            preset: args.preset,
            source: args.source,
            created_by: credential.id,
            tenant_id: credential.tenant_id,
            decrypt,
            result: result.clone(),
            batch_size: args.batch as usize,
            dedup,
            expires_at,
            network_transaction_issuer: args.network_transaction_issuer,
            audit_each_row: args.audit_each_row,
            progress: true,
        },
    )
    .await;
    // Also after a failed import: its events (and import_finished's failure) are sealed.
    seal_before_exit(&log).await;
    let summary = summary?;
    println!(
        "{} imported, {} already imported, {} deduplicated, {} refused; result in {}",
        summary.imported,
        summary.already_imported,
        summary.deduplicated,
        summary.refused,
        result.display()
    );
    Ok(())
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    if !args.i_understand_this_exports_card_data {
        anyhow::bail!("payvault export writes card numbers out of the vault: add --i-understand-this-exports-card-data to confirm");
    }
    if crate::domain::audit::declared_operator().is_none() {
        anyhow::bail!(
            "payvault export needs a named operator for its audit events: --operator NAME (or PAYVAULT_OPERATOR)"
        );
    }
    let pool = cli_pool().await?;
    let selection = match (&args.tokens, args.all, &args.tenant) {
        (None, false, Some(name)) => {
            let tenant = crate::store::tenants::find_tenant_by_name(&pool, name)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("no tenant is named {name}: see `payvault tenants list`")
                })?;
            Selection::Tenant(tenant.id)
        }
        (Some(path), false, None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let tokens: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if let Some(bad) = tokens
                .iter()
                .position(|t| crate::domain::Token::parse(t).is_none())
            {
                anyhow::bail!("{} line {}: not a payvault token", path.display(), bad + 1);
            }
            Selection::Tokens(tokens)
        }
        (None, true, None) => Selection::All,
        _ => anyhow::bail!("say what to export: --all, --tenant NAME, or --tokens FILE"),
    };
    let recipient = Recipient::load(&args.recipient_key)?;
    let keys = master_keys(&pool).await?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(keys.clone())));
    let out = args.out.clone();
    let summary = crate::transfer::export::export(
        &pool,
        keys,
        &log,
        ExportOptions {
            selection,
            recipient,
            out: args.out,
            batch_size: args.batch as usize,
        },
    )
    .await;
    seal_before_exit(&log).await;
    let summary = summary?;
    println!(
        "{} exported to {} ({} selected tokens not live)",
        summary.exported,
        out.display(),
        summary.missing
    );
    Ok(())
}

//! `payvault keys`: generating, rotating, retiring master keys, and passphrase set-up.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use super::db::cli_pool;
use crate::app::KeySource;
use crate::audit::AuditEvent;
use crate::config;
use crate::crypto::{KeyRing, MasterKey};
use crate::store;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random master key, alone on the last line, in the form
    /// PAYVAULT_MASTER_KEY accepts.
    Generate {
        /// Version number of the new key.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        version: i32,
        /// Mark it a development key (`pvdev.`), which PAYVAULT_ENV=production refuses.
        #[arg(long)]
        development: bool,
    },
    /// Re-encrypt every entry under an older master key version with the current (highest)
    /// version in PAYVAULT_MASTER_KEY, in resumable batches, while the service keeps serving.
    /// Load the new version on every instance first.
    Rotate {
        /// Entries per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Store the salt and Argon2id cost for deriving master key VERSION from
    /// PAYVAULT_MASTER_PASSPHRASE (once; every instance then derives the same key).
    PassphraseInit {
        #[arg(long, default_value_t = 1)]
        version: i32,
    },
    /// Check that no entry still uses VERSION, so it can be removed from PAYVAULT_MASTER_KEY.
    Retire { version: i32 },
    /// How many entries each master key version protects.
    Status,
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Rotate { batch } => rotate_keys(batch.max(1)).await,
        KeysCommand::Retire { version } => retire_key(version).await,
        KeysCommand::PassphraseInit { version } => passphrase_init(version).await,
        KeysCommand::Status => {
            let pool = cli_pool().await?;
            println!("{:<8} ENTRIES", "VERSION");
            for (version, n) in store::vault::count_by_key_version(&pool).await? {
                println!("{version:<8} {n}");
            }
            Ok(())
        }
        KeysCommand::Generate {
            version,
            development,
        } => {
            let key = if development {
                println!("# DEVELOPMENT key: PAYVAULT_ENV=production refuses it.");
                MasterKey::generate_development(version)
            } else {
                MasterKey::generate(version)
            };
            println!("# New payvault master key (version {version}). Keep it in a secret manager, never in the database.");
            println!("# Set it as PAYVAULT_MASTER_KEY, or put it in a file named by PAYVAULT_MASTER_KEY_FILE.");
            println!("{}", key.encode().as_str());
            Ok(())
        }
    }
}

/// The key ring from the environment, for commands that decrypt or verify.
pub(super) async fn master_keys(pool: &sqlx::PgPool) -> anyhow::Result<Arc<KeyRing>> {
    KeySource::from_env()?.load(pool).await
}

/// `payvault keys passphrase-init`: random salt, Argon2id cost, and the check value.
async fn passphrase_init(version: i32) -> anyhow::Result<()> {
    let passphrase =
        config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?.ok_or(config::ConfigError::Missing(
            "PAYVAULT_MASTER_PASSPHRASE (or PAYVAULT_MASTER_PASSPHRASE_FILE)",
        ))?;
    if passphrase.expose().chars().count() < 16 {
        anyhow::bail!("PAYVAULT_MASTER_PASSPHRASE must be at least 16 characters");
    }
    let pool = cli_pool().await?;
    let mut salt = vec![0u8; 16];
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, &mut salt);
    // Derived once per start, so it can cost far more than a login check: 64 MiB, 3 passes.
    let (m, t, p) = (64 * 1024, 3, 1);
    let salt_for_kdf = salt.clone();
    let key = tokio::task::spawn_blocking(move || {
        MasterKey::from_passphrase(version, passphrase.expose(), &salt_for_kdf, m, t, p)
    })
    .await??;
    let params = store::keys::KdfParams {
        version,
        salt,
        m_cost_kib: m as i32,
        t_cost: t as i32,
        p_cost: p as i32,
        check_mac: key.check_mac().to_vec(),
    };
    if !store::keys::insert_kdf(&pool, &params).await? {
        anyhow::bail!(
            "master key version {version} already has passphrase parameters; they never change"
        );
    }
    let mut event = AuditEvent::operator("key_passphrase_init");
    event.details["version"] = version.into();
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("passphrase parameters stored for master key version {version}: set PAYVAULT_MASTER_PASSPHRASE on every instance");
    Ok(())
}

async fn rotate_keys(batch: i64) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let keys = master_keys(&pool).await?;
    let current = keys.current_version();
    // Entries under an older key version, and those sealed before AAD v2 (re-sealed alike).
    let total = store::vault::count_for_rotation(&pool, current, crate::crypto::AAD_V2).await?;
    let vault = crate::vault::Vault::new(pool.clone(), keys.clone());
    let mut done = 0u64;
    eprintln!("re-encrypting {total} entries under master key version {current}");
    loop {
        let n = vault
            .rotate_batch(batch)
            .await
            .context("rotation batch failed; run again to resume")?;
        if n == 0 {
            break;
        }
        done += n;
        let width = 30usize;
        let filled = if total > 0 {
            (done as usize * width / total as usize).min(width)
        } else {
            width
        };
        eprint!(
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
    }
    eprintln!();
    let mut event = AuditEvent::operator("key_rotate");
    event.details["to_version"] = current.into();
    event.details["rotated"] = done.into();
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("rotated {done} entries to master key version {current}");
    Ok(())
}

async fn retire_key(version: i32) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let in_use = store::vault::count_by_key_version(&pool)
        .await?
        .into_iter()
        .find(|(v, _)| *v == version)
        .map_or(0, |(_, n)| n);
    let mut event = AuditEvent::operator("key_retire");
    event.details["version"] = version.into();
    if in_use > 0 {
        let event = event.failed("key_in_use");
        store::audit::insert_audit_event(&pool, &event)
            .await
            .context("cannot write the audit log")?;
        anyhow::bail!("refusing to retire master key version {version}: {in_use} entries still use it (run `payvault keys rotate` first)");
    }
    store::audit::insert_audit_event(&pool, &event)
        .await
        .context("cannot write the audit log")?;
    println!("no entry uses master key version {version}: remove it from PAYVAULT_MASTER_KEY on every instance.");
    println!("Keep a copy while audit events sealed under it must stay verifiable (until they are pruned).");
    Ok(())
}

//! `payvault keys`: generating, rotating, retiring master keys, and passphrase set-up.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use super::db::cli_pool;
use crate::app::KeySource;
use crate::audit::{AuditEvent, AuditLog};
use crate::config;
use crate::crypto::{KeyRing, MasterKey};
use crate::store;
use crate::store::audit_mac::EventSigner;

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
    /// Print a fresh random passphrase (175 bits) for PAYVAULT_MASTER_PASSPHRASE, alone on the
    /// last line.
    GeneratePassphrase,
    /// Check that no entry still uses VERSION, so it can be removed from PAYVAULT_MASTER_KEY.
    Retire { version: i32 },
    /// How many entries each master key version protects.
    Status,
    /// Store master keys wrapped by the key provider PAYVAULT_KEY_PROVIDER names: the current
    /// PAYVAULT_MASTER_KEY (or passphrase) versions, to move an existing vault to the provider
    /// without re-encrypting it; or, with --generate, a fresh version that exists only wrapped.
    Wrap {
        /// Generate a new master key version instead of wrapping the environment's.
        #[arg(long)]
        generate: bool,
        /// With --generate: the new version's number (default: one above the highest known).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        version: Option<i32>,
    },
    /// Split custodians: make a random root secret, wrap the master keys of PAYVAULT_MASTER_KEY
    /// (or, with --generate, a fresh one) under it, and print N shares of it, each once; any K
    /// rebuild it. Then serve with PAYVAULT_KEY_PROVIDER=shares: each instance starts sealed
    /// until K custodians run `payvault unseal`. Run as the schema owner.
    Split {
        /// N: how many shares (custodians), 2-255.
        #[arg(long = "shares", value_parser = clap::value_parser!(u8).range(2..))]
        count: u8,
        /// K: how many shares open the vault, 2-N.
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..))]
        threshold: u8,
        /// A new master key version instead of PAYVAULT_MASTER_KEY's keys (a new vault).
        #[arg(long)]
        generate: bool,
    },
    /// Create the AES-256 root key PAYVAULT_PKCS11_KEY_LABEL inside the PKCS#11 token
    /// PAYVAULT_PKCS11_TOKEN_LABEL (sensitive, never extractable).
    Pkcs11CreateKey,
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Rotate { batch } => rotate_keys(batch.max(1)).await,
        KeysCommand::Wrap { generate, version } => super::wrap::wrap_keys(generate, version).await,
        KeysCommand::Pkcs11CreateKey => super::wrap::pkcs11_create_key().await,
        KeysCommand::Split {
            count,
            threshold,
            generate,
        } => super::shares::split(count, threshold, generate).await,
        KeysCommand::Retire { version } => retire_key(version).await,
        KeysCommand::PassphraseInit { version } => passphrase_init(version).await,
        KeysCommand::GeneratePassphrase => {
            println!("# New payvault master key passphrase. Keep it in a secret manager: with a database backup, it opens the vault.");
            println!("# Set it as PAYVAULT_MASTER_PASSPHRASE (or in a file named by PAYVAULT_MASTER_PASSPHRASE_FILE), then run `payvault keys passphrase-init`.");
            println!(
                "{}",
                crate::crypto::passphrase::generate_passphrase().as_str()
            );
            Ok(())
        }
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
    let source = KeySource::from_env()?;
    if let Some(crate::custody::KeyProvider::Shares(shares)) = source.provider() {
        super::shares::unlock_from_stdin(pool, shares).await?;
    }
    source.load(pool).await
}

/// `payvault keys passphrase-init`: random salt, Argon2id cost, and the check value.
async fn passphrase_init(version: i32) -> anyhow::Result<()> {
    let passphrase =
        config::secret_var("PAYVAULT_MASTER_PASSPHRASE")?.ok_or(config::ConfigError::Missing(
            "PAYVAULT_MASTER_PASSPHRASE (or PAYVAULT_MASTER_PASSPHRASE_FILE)",
        ))?;
    // Salt, cost and check value sit in the database: a backup allows offline guessing.
    let bits = crate::crypto::passphrase::estimated_bits(passphrase.expose());
    if bits < crate::crypto::passphrase::MIN_PASSPHRASE_BITS {
        anyhow::bail!(
            "PAYVAULT_MASTER_PASSPHRASE is too weak: about {bits:.0} bits estimated, at least {:.0} required (anyone with a database backup can guess it offline). Use `payvault keys generate-passphrase`, or a sentence of well over 100 characters",
            crate::crypto::passphrase::MIN_PASSPHRASE_BITS
        );
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
    // The keys load now that the parameters are stored (the passphrase's own version included).
    let log = super::db::cli_audit_log(&pool).await?;
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    super::db::seal_before_exit(&log).await;
    println!("passphrase parameters stored for master key version {version}: set PAYVAULT_MASTER_PASSPHRASE on every instance");
    Ok(())
}

async fn rotate_keys(batch: i64) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let keys = master_keys(&pool).await?;
    let current = keys.current_version();
    // Entries under an older key version, and those sealed before AAD v2 (re-sealed alike).
    let total = store::rotation::count_for_rotation(&pool, current, crate::crypto::AAD_V3).await?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(keys.clone())));
    let vault = crate::vault::Vault::with_signer(pool.clone(), log.signer().clone());
    let mut done = 0u64;
    eprintln!("re-encrypting {total} entries under master key version {current}");
    // Audited before the first entry is decrypted (PCI DSS 10.2.1): a rotation whose event
    // cannot be written does not start, and one that dies half-way is on record.
    let mut event = AuditEvent::operator("key_rotate");
    event.details["to_version"] = current.into();
    event.details["pending"] = total.into();
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    let mut progress = Progress::new(total.max(0).unsigned_abs());
    // In token order from where the last batch ended; at the end, once more from the start for
    // entries another rotator held (skipped, locked) and then gave up.
    let mut after = String::new();
    loop {
        let (n, last) = vault
            .rotate_batch_after(batch, &after)
            .await
            .context("rotation batch failed; run again to resume")?;
        match last {
            Some(last) => after = last,
            None if after.is_empty() => break,
            None => after.clear(),
        }
        done += n;
        progress.update(done);
    }
    progress.finish(done);
    let mut event = AuditEvent::operator("key_rotate_done");
    event.details["to_version"] = current.into();
    event.details["rotated"] = done.into();
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    super::db::seal_before_exit(&log).await;
    println!("rotated {done} entries to master key version {current}");
    Ok(())
}

/// Rotation progress on stderr: a bar redrawn in place on a terminal; elsewhere (a log file, a
/// pipe, a CI job) a plain line every few seconds, since `\r` redraws turn a log into one
/// unreadable line.
struct Progress {
    total: u64,
    terminal: bool,
    last_line: std::time::Instant,
}

impl Progress {
    /// How often a plain line is written when stderr is not a terminal.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(total: u64) -> Self {
        Self {
            total,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last_line: std::time::Instant::now(),
        }
    }

    fn update(&mut self, done: u64) {
        if self.terminal {
            const WIDTH: usize = 30;
            let filled = match self.total {
                0 => WIDTH,
                total => {
                    usize::try_from(done * WIDTH as u64 / total).map_or(WIDTH, |f| f.min(WIDTH))
                }
            };
            eprint!(
                "\r[{}{}] {done}/{}",
                "#".repeat(filled),
                " ".repeat(WIDTH - filled),
                self.total
            );
        } else if self.last_line.elapsed() >= Self::EVERY {
            self.last_line = std::time::Instant::now();
            eprintln!("re-encrypted {done}/{} entries", self.total);
        }
    }

    fn finish(&self, done: u64) {
        if self.terminal {
            eprintln!();
        } else {
            eprintln!("re-encrypted {done}/{} entries", self.total);
        }
    }
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
    // Loaded before anything is recorded: events are MAC'd with it, and the retirement needs
    // the version's key to hand out its audit-only key.
    let keys = master_keys(&pool).await?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(keys.clone())));
    if in_use > 0 {
        let event = event.failed("key_in_use");
        log.record(&event)
            .await
            .context("cannot write the audit log")?;
        super::db::seal_before_exit(&log).await;
        anyhow::bail!("refusing to retire master key version {version}: {in_use} entries still use it (run `payvault keys rotate` first)");
    }
    if version == keys.current_version() {
        anyhow::bail!("master key version {version} is the current one, which encrypts new entries; deploy a newer version and run `payvault keys rotate` first");
    }
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    super::db::seal_before_exit(&log).await;
    match keys.audit_key(version) {
        Some(audit_key) => println!(
            "No live entry uses master key version {version}. To retire it:
  1. On every instance, replace pvmk.{version}.… in PAYVAULT_MASTER_KEY with the audit-only key
     below: it keeps the audit events sealed under version {version} verifiable and decrypts nothing.
  2. Destroy every copy of the version {version} master key (secret manager, key files, their
     backups) or, if a passphrase derived it, that passphrase. Until then, entries deleted under
     version {version} can still be decrypted from database backups and WAL archives; from then
     on, by no one.
{}",
            audit_key.as_str()
        ),
        None => println!(
            "No live entry uses master key version {version}, which is not loaded here as a master key.
Destroy every copy of it (or of the passphrase that derived it). To keep the audit events sealed
under it verifiable, load it and run this again: it prints the version's audit-only key."
        ),
    }
    Ok(())
}

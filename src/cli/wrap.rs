//! `payvault keys wrap` and `payvault keys pkcs11-create-key`: storing master keys wrapped by
//! the key provider `PAYVAULT_KEY_PROVIDER` names (see [`crate::custody`]).

use std::sync::Arc;

use anyhow::Context;

use super::db::cli_pool;
use crate::app::KeySource;
use crate::audit::{AuditEvent, AuditLog};
use crate::crypto::MasterKey;
use crate::custody::{KeyProvider, Pkcs11Config, Pkcs11Provider};
use crate::store;
use crate::store::audit_mac::EventSigner;
use crate::store::keys::KeyWrap;

/// The provider `PAYVAULT_KEY_PROVIDER` names; `env` has nothing to wrap with.
fn configured_provider() -> anyhow::Result<KeyProvider> {
    KeyProvider::from_env()?.ok_or_else(|| {
        anyhow::anyhow!(
            "PAYVAULT_KEY_PROVIDER is unset (or env): set it to pkcs11, transit or shares, with that provider's settings, to wrap master keys"
        )
    })
}

/// `payvault keys wrap`: the environment's master keys (`PAYVAULT_MASTER_KEY`/`_FILE`, the
/// passphrase), checked against their recorded check values, stored wrapped; with `generate`,
/// a fresh key as the next version (or `version`), stored wrapped only. Each wrap is unwrapped
/// again before it is stored. Existing wraps are never replaced.
pub async fn wrap_keys(generate: bool, version: Option<i32>) -> anyhow::Result<()> {
    let provider = configured_provider()?;
    let pool = cli_pool().await?;
    if let KeyProvider::Shares(shares) = &provider {
        super::shares::unlock_from_stdin(&pool, shares).await?;
    }
    let keys = if generate {
        let version = match version {
            Some(v) => v,
            None => store::keys::highest_known_version(&pool).await? + 1,
        };
        vec![MasterKey::generate(version)]
    } else {
        if version.is_some() {
            anyhow::bail!("--version goes with --generate: without it, the versions are those of PAYVAULT_MASTER_KEY");
        }
        KeySource::from_env_keys()?.load_keys(&pool).await.context(
            "the master keys to wrap (PAYVAULT_MASTER_KEY, its _FILE, or the passphrase)",
        )?
    };
    let mut event = AuditEvent::operator("key_wrap");
    event.details["provider"] = provider.name().into();
    event.details["generate"] = generate.into();
    let (mut wrapped, mut present) = (Vec::new(), Vec::new());
    for key in keys.iter().filter(|k| !k.is_audit_only()) {
        let version = key.version();
        if key.is_development() {
            anyhow::bail!("master key version {version} is a development key (pvdev.…): wrapped, it would no longer be recognisable as one; wrap production keys only");
        }
        let existing = store::keys::find_key_wraps(&pool)
            .await?
            .into_iter()
            .find(|w| w.version == version);
        if let Some(existing) = existing {
            if generate {
                anyhow::bail!(
                    "master key version {version} is already wrapped: choose another --version"
                );
            }
            check_existing(&provider, &existing, key).await?;
            present.push(version);
            continue;
        }
        let blob = provider.wrap(version, key.expose_bytes()).await?;
        let back = provider.unwrap(version, &blob).await?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &back[..],
            &key.expose_bytes()[..],
        )) {
            anyhow::bail!(
                "{}: a wrapped key did not unwrap to itself; nothing stored for version {version}",
                provider.describe()
            );
        }
        let row = KeyWrap {
            version,
            provider: provider.name().to_owned(),
            wrapped: blob,
        };
        if !store::keys::insert_key_wrap(&pool, &row).await? {
            anyhow::bail!("master key version {version} was wrapped meanwhile by another run; run again to check it");
        }
        wrapped.push(version);
    }
    event.details["wrapped"] = wrapped.clone().into();
    event.details["already_wrapped"] = present.clone().into();
    // The event is MAC'd by the keys now stored wrapped (the generated one included), as
    // every instance will load them; then sealed, like every CLI command's events.
    let ring = KeySource::Provider {
        provider: provider.clone(),
        audit_keys: Vec::new(),
    }
    .load(&pool)
    .await
    .context("the wrapped master keys, to sign this command's audit event")?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(ring)));
    log.record(&event)
        .await
        .context("cannot write the audit log")?;
    super::db::seal_before_exit(&log).await;
    println!(
        "wrapped master key version(s) {wrapped:?} with {}{}",
        provider.describe(),
        if present.is_empty() {
            String::new()
        } else {
            format!("; version(s) {present:?} were already wrapped, with the same key")
        }
    );
    if generate {
        println!("Restart every instance (PAYVAULT_KEY_PROVIDER={}) to load the new version, then run `payvault keys rotate`.", provider.name());
    } else {
        println!("Now set PAYVAULT_KEY_PROVIDER={} on every instance and remove PAYVAULT_MASTER_KEY / PAYVAULT_MASTER_PASSPHRASE (and their _FILE) from their environment.", provider.name());
    }
    Ok(())
}

/// An existing wrap of `key`'s version must hold `key`: otherwise the environment's key and the
/// stored one disagree, and neither is silently preferred.
async fn check_existing(
    provider: &KeyProvider,
    existing: &KeyWrap,
    key: &MasterKey,
) -> anyhow::Result<()> {
    let version = key.version();
    if existing.provider != provider.name() {
        anyhow::bail!(
            "master key version {version} is already wrapped by the {} provider",
            existing.provider
        );
    }
    let stored = provider.unwrap(version, &existing.wrapped).await?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &stored[..],
        &key.expose_bytes()[..],
    )) {
        anyhow::bail!("master key version {version} is already wrapped, with a different key than PAYVAULT_MASTER_KEY's");
    }
    Ok(())
}

/// `payvault keys pkcs11-create-key`: the AES-256 root key named by `PAYVAULT_PKCS11_KEY_LABEL`,
/// generated inside the token (sensitive, not extractable).
pub async fn pkcs11_create_key() -> anyhow::Result<()> {
    let provider = Arc::new(Pkcs11Provider::new(Pkcs11Config::from_env()?));
    provider.clone().create_key().await?;
    println!("created {}", provider.describe());
    Ok(())
}

//! Split custodians on the command line: `payvault keys split` (make the shares, wrap the
//! master keys under their root), `payvault unseal` (send one custodian's share to a sealed
//! instance), and reading K shares on standard input for commands that need the master keys of
//! a `PAYVAULT_KEY_PROVIDER=shares` vault (`keys wrap --generate`, `keys rotate`, `audit verify`).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zeroize::Zeroizing;

use super::db::cli_pool;
use crate::app::KeySource;
use crate::audit::{AuditEvent, AuditLog};
use crate::crypto::{KeyRing, MasterKey};
use crate::custody::SharesProvider;
use crate::shares::{self, Share};
use crate::store;
use crate::store::audit_mac::EventSigner;
use crate::store::keys::KeyWrap;

/// `payvault keys split --shares N --threshold K [--generate]`.
pub async fn split(count: u8, threshold: u8, generate: bool) -> anyhow::Result<()> {
    let pool = cli_pool().await?;
    let existing = store::keys::find_key_wraps(&pool).await?;
    if let Some(w) = existing.first() {
        anyhow::bail!(
            "master key version {} is already stored wrapped (by the {} provider): `keys split` sets up a vault's custodians once; wrap new versions with `payvault keys wrap --generate`",
            w.version,
            w.provider
        );
    }
    let keys = if generate {
        let version = store::keys::highest_known_version(&pool).await? + 1;
        vec![MasterKey::generate(version)]
    } else {
        KeySource::from_env_keys()
            .context("the master keys to put under the custodians' root (or use --generate for a new vault)")?
            .load_keys(&pool)
            .await?
    };
    let keys: Vec<MasterKey> = keys.into_iter().filter(|k| !k.is_audit_only()).collect();
    if let Some(k) = keys.iter().find(|k| k.is_development()) {
        anyhow::bail!(
            "master key version {} is a development key (pvdev.…): split production keys only",
            k.version()
        );
    }
    // The split's audit event is MAC'd with these keys (the newest version signs), and sealed
    // before the command exits.
    let ring = KeyRing::from_keys(keys.iter().map(MasterKey::duplicate).collect())?;
    let log = AuditLog::new(pool.clone(), Arc::new(EventSigner::new(Arc::new(ring))));
    let split = shares::split(threshold, count)?;
    let mut tx = pool.begin().await?;
    let mut versions = Vec::new();
    for key in &keys {
        let wrapped = shares::wrap(&split.root, key.version(), key.expose_bytes());
        let back = shares::unwrap(&split.root, key.version(), &wrapped)?;
        if *back != *key.expose_bytes() {
            anyhow::bail!("a wrapped key did not unwrap to itself; nothing was stored");
        }
        let row = KeyWrap {
            version: key.version(),
            provider: "shares".into(),
            wrapped,
        };
        if !store::keys::insert_key_wrap(&mut *tx, &row).await? {
            anyhow::bail!(
                "master key version {} was wrapped meanwhile by another run",
                key.version()
            );
        }
        versions.push(key.version());
    }
    store::shares::insert_share_set(&mut *tx, &split.set).await?;
    let mut event = AuditEvent::operator("key_split");
    event.details["set_id"] = split.set.set_id.as_str().into();
    event.details["threshold"] = threshold.into();
    event.details["shares"] = count.into();
    event.details["wrapped"] = versions.clone().into();
    store::audit::insert_audit_event(&mut *tx, log.signer(), &event)
        .await
        .context("cannot write the audit log")?;
    tx.commit().await?;
    super::db::seal_before_exit(&log).await;

    let set = &split.set.set_id;
    println!("# Share set {set}: any {threshold} of these {count} shares rebuild the root secret that wraps master key version(s) {versions:?}.");
    println!("# Each share is shown this once and stored nowhere. Give share i to custodian i alone; fewer than {threshold} reveal nothing.");
    println!("# Serve with PAYVAULT_KEY_PROVIDER=shares (and without PAYVAULT_MASTER_KEY); each instance then starts sealed until {threshold} custodians run `payvault unseal`.");
    if !generate {
        println!("# Then remove the master keys from PAYVAULT_MASTER_KEY / its _FILE / the passphrase, and destroy them.");
    }
    for share in &split.shares {
        println!();
        println!("# share {} of {count}:", share.index);
        println!("{}", share.encode().as_str());
    }
    Ok(())
}

/// `payvault unseal --url URL --custodian NAME`: one share, read from standard input (never an
/// argument or the environment, which other users and logs can see), sent to `URL/unseal`.
pub async fn unseal(url: Option<String>, custodian: String) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => default_url()?,
    };
    let text = read_share("your share")?;
    // A typo is caught here, before anything is sent.
    let share = Share::parse(&text)?;
    drop(share);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // Built in one zeroizing buffer: a parsed share is `pvshare.` and base64url, nothing to
    // escape in JSON.
    let body = Zeroizing::new(format!(
        r#"{{"custodian":{},"share":"{}"}}"#,
        serde_json::Value::from(custodian),
        text.as_str()
    ));
    let response = client
        .post(format!("{url}/unseal"))
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .with_context(|| format!("{url}/unseal did not answer"))?;
    let status = response.status();
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
    if !status.is_success() {
        let code = answer["error"]["code"].as_str().unwrap_or("error");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        anyhow::bail!("{url}/unseal refused the share ({status}, {code}): {message}");
    }
    let (n, k) = (&answer["submitted"], &answer["threshold"]);
    if answer["status"] == "unsealed" {
        println!("unsealed: {n} of {k} shares; the instance serves");
    } else {
        println!("share accepted: {n} of {k}");
    }
    Ok(())
}

/// `/unseal` on this host: the admin listener (`PAYVAULT_ADMIN_LISTEN`) if set, else
/// `PAYVAULT_LISTEN` (over HTTPS when `PAYVAULT_TLS_CERT` is set).
fn default_url() -> anyhow::Result<String> {
    if let Some(admin) = crate::config::var("PAYVAULT_ADMIN_LISTEN")? {
        let addr: std::net::SocketAddr = admin
            .parse()
            .context("PAYVAULT_ADMIN_LISTEN is not an address:port")?;
        return Ok(format!("http://127.0.0.1:{}", addr.port()));
    }
    let listen: std::net::SocketAddr = crate::config::parsed(
        "PAYVAULT_LISTEN",
        std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
    )?;
    let scheme = if crate::config::var("PAYVAULT_TLS_CERT")?.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://127.0.0.1:{}", listen.port()))
}

/// One line from standard input, without echo when it is a terminal.
fn read_share(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("Paste {what} and press Enter (it is not shown): ");
        std::io::stderr().flush()?;
    }
    let echo = terminal.then(|| hide_echo(&stdin)).flatten();
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = echo {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        eprintln!();
    }
    if read.context("cannot read standard input")? == 0 {
        anyhow::bail!("no share on standard input");
    }
    Ok(Zeroizing::new(line.trim().to_owned()))
}

fn hide_echo(stdin: &std::io::Stdin) -> Option<rustix::termios::Termios> {
    let saved = rustix::termios::tcgetattr(stdin).ok()?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &quiet).ok()?;
    Some(saved)
}

/// For CLI commands that need the master keys of a shares vault: reads shares on standard input,
/// one per line, until the set's threshold of distinct verified shares rebuild its root.
pub async fn unlock_from_stdin(
    pool: &sqlx::PgPool,
    provider: &SharesProvider,
) -> anyhow::Result<()> {
    if provider.is_unsealed() {
        return Ok(());
    }
    let set = store::shares::find_share_set(pool, provider.set_id())
        .await?
        .ok_or_else(|| anyhow::anyhow!("PAYVAULT_KEY_PROVIDER=shares: no share set in the database (see `payvault keys split`)"))?;
    eprintln!(
        "This command needs the master keys: {} custodians' shares of set {}, one per line on standard input.",
        set.threshold, set.set_id
    );
    let mut shares: Vec<Share> = Vec::new();
    while shares.len() < usize::from(set.threshold) {
        let text = read_share(&format!("share {} of {}", shares.len() + 1, set.threshold))?;
        let share = Share::parse(&text)?;
        set.verify(&share)?;
        if shares.iter().any(|s| s.index == share.index) {
            anyhow::bail!("share {} was given twice", share.index);
        }
        shares.push(share);
    }
    let refs: Vec<&Share> = shares.iter().collect();
    provider.set_root(set.combine(&refs)?);
    Ok(())
}

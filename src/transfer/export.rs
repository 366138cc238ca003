//! `payvault export`: selected entries, decrypted in memory, written as JSON lines in the
//! generic import layout, and encrypted to a recipient's OpenPGP key as they are written. The
//! card data is never on disk in clear: the plaintext goes from the decrypting threads through
//! a channel into the OpenPGP encryptor, whose output alone reaches the file.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use zeroize::Zeroizing;

use super::pgp::Recipient;
use crate::audit::{AuditEvent, AuditLog};
use crate::crypto::KeyRing;
use crate::domain::{Expiry, PaymentMethod};
use crate::store;
use crate::store::imports::ExportRow;

/// Which entries to export.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every live, unexpired entry.
    All,
    /// Every live, unexpired entry of this tenant.
    Tenant(uuid::Uuid),
    /// These tokens (those deleted, expired or unknown are counted as missing).
    Tokens(Vec<String>),
}

#[derive(Debug)]
pub struct ExportOptions {
    pub selection: Selection,
    pub recipient: Recipient,
    /// Created, never overwritten, readable by its owner alone.
    pub out: PathBuf,
    pub batch_size: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub exported: u64,
    /// Selected tokens that are not live entries (only for a list).
    pub missing: u64,
}

/// A plaintext chunk for the encryptor, or the news that the export failed (the encryptor
/// then fails too, rather than finishing a valid but incomplete file).
type Chunk = Result<Zeroizing<Vec<u8>>, ()>;

/// Exports the selection to `opts.out`. The `export_started` event is written to `log` before
/// the first entry is decrypted; `export_finished` (or its failure) at the end.
pub async fn export(
    pool: &sqlx::PgPool,
    keys: Arc<KeyRing>,
    log: &AuditLog,
    opts: ExportOptions,
) -> anyhow::Result<ExportSummary> {
    let file = create_new_private(&opts.out)?;
    let mut started = AuditEvent::operator("export_started");
    started.details["recipient"] = opts.recipient.fingerprint().into();
    started.details["file"] = opts.out.display().to_string().into();
    started.details["selection"] = match &opts.selection {
        Selection::All => "all".into(),
        Selection::Tenant(t) => serde_json::json!({ "tenant": t }),
        Selection::Tokens(t) => serde_json::json!({ "tokens": t.len() }),
    };
    if let Err(e) = log.record(&started).await {
        let _ = std::fs::remove_file(&opts.out);
        return Err(e).context("cannot write the audit log; nothing was exported");
    }

    let (tx, rx) = sync_channel::<Chunk>(4);
    let recipient = opts.recipient;
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(file);
        recipient.encrypt(ChannelReader::new(rx), &mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    });
    let mut summary = ExportSummary::default();
    let produced = produce(
        pool,
        &keys,
        &opts.selection,
        opts.batch_size.max(1),
        &tx,
        &mut summary,
    )
    .await;
    if produced.is_err() {
        let _ = tx.send(Err(()));
    }
    drop(tx);
    let written = writer.await.context("the encryptor failed")?;
    let outcome = produced.and(written);

    let mut finished = AuditEvent::operator("export_finished");
    finished.details["counts"] = serde_json::to_value(&summary)?;
    if outcome.is_err() {
        let _ = std::fs::remove_file(&opts.out);
        finished = finished.failed("export_failed");
    }
    log.record(&finished)
        .await
        .context("cannot write the audit log")?;
    outcome.map(|()| summary)
}

async fn produce(
    pool: &sqlx::PgPool,
    keys: &KeyRing,
    selection: &Selection,
    batch_size: usize,
    tx: &SyncSender<Chunk>,
    summary: &mut ExportSummary,
) -> anyhow::Result<()> {
    let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
    match selection {
        Selection::All | Selection::Tenant(_) => {
            let tenant = match selection {
                Selection::Tenant(t) => Some(*t),
                _ => None,
            };
            let mut after = String::new();
            loop {
                let mut rows = store::imports::export_page(pool, &after, limit, tenant).await?;
                let Some(last) = rows.last() else { break };
                after = last.token.clone();
                rows.retain(|r| r.entry.is_some());
                send(keys, rows, tx, summary)?;
            }
        }
        Selection::Tokens(tokens) => {
            let mut tokens = tokens.clone();
            tokens.sort();
            tokens.dedup();
            for chunk in tokens.chunks(batch_size) {
                let rows = store::imports::export_listed(pool, chunk).await?;
                summary.missing += (chunk.len() - rows.len()) as u64;
                send(keys, rows, tx, summary)?;
            }
        }
    }
    Ok(())
}

/// Decrypts a batch on two threads into JSON lines and hands them to the encryptor.
fn send(
    keys: &KeyRing,
    mut rows: Vec<ExportRow>,
    tx: &SyncSender<Chunk>,
    summary: &mut ExportSummary,
) -> anyhow::Result<()> {
    let n = rows.len() as u64;
    let second = rows.split_off(rows.len() / 2);
    let (a, b) = std::thread::scope(|s| {
        let other = s.spawn(|| lines(keys, &second));
        let first = lines(keys, &rows);
        (
            first,
            other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    for chunk in [a?, b?] {
        tx.send(Ok(chunk))
            .map_err(|_| anyhow::anyhow!("the encryptor stopped"))?;
    }
    summary.exported += n;
    Ok(())
}

/// One exported entry, in the generic import layout (`source_id` is the token).
#[derive(Serialize)]
struct Line<'a> {
    source_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp_month: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp_year: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_number: Option<&'a str>,
}

/// The longest line [`Line`] can make: sized up front so the buffer never reallocates (which
/// would leave an unzeroized copy of card data behind).
const MAX_LINE: usize = 512;

fn lines(keys: &KeyRing, rows: &[ExportRow]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(rows.len() * MAX_LINE));
    for row in rows {
        let Some(entry) = &row.entry else { continue };
        let plain = keys
            .open(&row.token, &entry.binding(), &entry.sealed)
            .map_err(|_| anyhow::anyhow!("token {} does not decrypt (altered in the database, or its master key version is not loaded)", row.token))?;
        let expiry = match (entry.exp_month, entry.exp_year) {
            (Some(m), Some(y)) => {
                Expiry::from_stored(u8::try_from(m).unwrap_or(0), u16::try_from(y).unwrap_or(0))
            }
            _ => None,
        };
        let method = PaymentMethod::from_secret_payload(&plain, expiry).ok_or_else(|| {
            anyhow::anyhow!(
                "token {} holds a payload this version cannot read",
                row.token
            )
        })?;
        let line = match &method {
            PaymentMethod::Card(c) => Line {
                source_id: &row.token,
                number: Some(c.number.digits()),
                exp_month: Some(c.expiry.month()),
                exp_year: Some(c.expiry.year()),
                network_transaction_id: row.network_transaction_id.as_deref(),
                routing_number: None,
                account_number: None,
            },
            PaymentMethod::Bank(b) => Line {
                source_id: &row.token,
                number: None,
                exp_month: None,
                exp_year: None,
                network_transaction_id: None,
                routing_number: Some(b.routing.as_str()),
                account_number: Some(b.account.digits()),
            },
        };
        let before = out.capacity();
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        debug_assert_eq!(before, out.capacity(), "the buffer never reallocates");
    }
    Ok(out)
}

/// The encryptor's input: the chunks the decrypting side sends, in order.
struct ChannelReader {
    rx: Receiver<Chunk>,
    current: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Zeroizing::new(Vec::new()),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(())) => {
                    return Err(std::io::Error::other("the export failed"));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Creates `path`, refusing to overwrite anything, readable by its owner alone.
fn create_new_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                path.display()
            )
        })
}

//! `payvault import`: a stream of rows in, vault entries out, in batches.
//!
//! A reader thread reads and validates rows and seals each valid one exactly as tokenize does
//! ([`Vault::prepare_entry`]: a fresh data key, the same AAD binding and fingerprint), on two
//! threads; the async side inserts each batch in one statement together with its
//! `import_sources` rows, then writes the batch's lines to the result file. The input is never
//! held whole: memory is a couple of batches, whatever the file's size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::layout::{self, Format, Preset, RawRow};
use super::pgp::DecryptKey;
use super::progress::{CountingReader, Progress};
use super::result::{done, refused, EntryView, ResultLine};
use super::row::{self, ImportRow, Refusal};
use crate::audit::{AuditEvent, AuditLog};
use crate::crypto::KeyRing;
use crate::store;
use crate::store::audit::AuditBatch;
use crate::store::audit_mac::EventSigner;
use crate::store::imports::{ImportScope, ImportedRecord, KnownRecord, NewImportedEntry};
use crate::vault::{PreparedEntry, Vault};

/// What to import and how.
#[derive(Debug)]
pub struct ImportOptions {
    pub input: PathBuf,
    pub format: Format,
    pub preset: Preset,
    /// The operator's name for the source system; source ids are unique within it.
    pub source: String,
    /// The credential the entries are recorded as created by (deduplication looks within it).
    pub created_by: Uuid,
    /// The credential's tenant: the imported entries belong to it.
    pub tenant_id: Uuid,
    /// The key the input is encrypted to, if it is.
    pub decrypt: Option<DecryptKey>,
    pub result: PathBuf,
    pub batch_size: usize,
    /// `PAYVAULT_DEDUP`: a card the credential already vaulted maps to its existing token.
    pub dedup: bool,
    /// When the new tokens expire (`PAYVAULT_TOKEN_TTL_DAYS`), if ever.
    pub expires_at: Option<DateTime<Utc>>,
    pub network_transaction_issuer: Option<String>,
    /// One `import_row` audit event per vaulted row, besides the start and end events.
    pub audit_each_row: bool,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// What an import did, by row.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub imported: u64,
    pub already_imported: u64,
    pub deduplicated: u64,
    pub refused: u64,
}

/// The input file, and the key it is encrypted to if it is.
struct Input {
    file: File,
    decrypt: Option<DecryptKey>,
}

impl ImportSummary {
    fn add(&mut self, other: &Self) {
        self.imported += other.imported;
        self.already_imported += other.already_imported;
        self.deduplicated += other.deduplicated;
        self.refused += other.refused;
    }
}

/// One row on its way from the reader thread to the database.
struct Item {
    line: u64,
    source_id: Option<String>,
    outcome: Result<Sealed, Refusal>,
}

struct Sealed {
    entry: PreparedEntry,
    masked: String,
    network_transaction_id: Option<String>,
}

/// Imports `opts.input`, audited from start to end in `log` (whose writer also MACs the
/// `import_row` events of `--audit-each-row`). Resumable: run it again after an interruption
/// and the rows already imported are reported, not vaulted again.
pub async fn import(
    pool: &sqlx::PgPool,
    keys: Arc<KeyRing>,
    log: &AuditLog,
    mut opts: ImportOptions,
) -> anyhow::Result<ImportSummary> {
    let input =
        File::open(&opts.input).with_context(|| format!("cannot open {}", opts.input.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let result = create_private(&opts.result)?;

    let mut started = AuditEvent::operator("import_started");
    started.details["source"] = opts.source.as_str().into();
    started.details["file"] = opts.input.display().to_string().into();
    started.details["encrypted"] = opts.decrypt.is_some().into();
    started.details["preset"] = format!("{:?}", opts.preset).to_lowercase().into();
    started.details["dedup"] = opts.dedup.into();
    started.details["created_by"] = opts.created_by.to_string().into();
    started.tenant_id = Some(opts.tenant_id);
    log.record(&started)
        .await
        .context("cannot write the audit log")?;

    let progress = Progress::new(size, opts.progress);
    let mut summary = ImportSummary::default();
    let input = Input {
        file: input,
        decrypt: opts.decrypt.take(),
    };
    let sealer = EntrySealer {
        vault: Vault::with_signer(pool.clone(), log.signer().clone()),
        keys,
        tenant: opts.tenant_id,
    };
    let outcome = run(pool, sealer, &opts, input, result, &progress, &mut summary).await;
    progress.finish();

    let mut finished = AuditEvent::operator("import_finished");
    finished.details["source"] = opts.source.as_str().into();
    finished.details["counts"] = serde_json::to_value(&summary)?;
    if outcome.is_err() {
        finished = finished.failed("import_interrupted");
    }
    log.record(&finished)
        .await
        .context("cannot write the audit log")?;
    outcome.map(|()| summary)
}

/// Seals entries for the import's tenant exactly as tokenize does.
struct EntrySealer {
    vault: Vault,
    keys: Arc<KeyRing>,
    tenant: Uuid,
}

impl EntrySealer {
    fn seal(&self, method: &crate::domain::PaymentMethod) -> crate::vault::PreparedEntry {
        self.vault.prepare_entry(&self.keys, self.tenant, method)
    }
}

async fn run(
    pool: &sqlx::PgPool,
    sealer: EntrySealer,
    opts: &ImportOptions,
    input: Input,
    result: File,
    progress: &Progress,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
    let signer = sealer.vault.signer().clone();
    let Input { file, decrypt } = input;
    let input = CountingReader::new(file, progress.counter());
    let (format, preset, batch_size) = (opts.format, opts.preset, opts.batch_size.max(1));
    let stages = progress.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let plain: Box<dyn BufRead + Send + '_> = match &decrypt {
            Some(key) => {
                stages.stage("checking integrity");
                let plain = key.open(input)?;
                stages.stage("importing");
                Box::new(plain)
            }
            None => Box::new(BufReader::with_capacity(1 << 16, input)),
        };
        read_batches(plain, format, preset, &sealer, batch_size, &tx)
    });
    let consumed = consume(pool, &signer, opts, &mut rx, result, progress, summary).await;
    // A consumer that stopped early closes the channel, which stops the reader.
    rx.close();
    let read = reader.await.context("the input reader failed")?;
    consumed.and(read)
}

/// Reads, validates and seals rows, sending them in batches until the input ends or the
/// receiver goes away.
fn read_batches(
    input: Box<dyn BufRead + Send + '_>,
    format: Format,
    preset: Preset,
    sealer: &EntrySealer,
    batch_size: usize,
    tx: &mpsc::Sender<Vec<Item>>,
) -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let mut batch: Vec<(u64, Option<String>, Result<ImportRow, Refusal>)> =
        Vec::with_capacity(batch_size);
    let mut rows = layout::rows(input, format, preset);
    loop {
        let next = rows.next();
        let done = next.is_none();
        if let Some(row) = next {
            batch.push(match row {
                Ok(raw) => validated(raw, preset, today),
                Err((line, e)) => {
                    if let layout::RowError::Io(_) = e {
                        return Err(anyhow::anyhow!("cannot read the input at line {line}: {e}"));
                    }
                    (line, None, Err(Refusal::new(e.code(), None, e.to_string())))
                }
            });
        }
        if batch.len() >= batch_size || (done && !batch.is_empty()) {
            let sealed = seal_all(sealer, std::mem::take(&mut batch));
            if tx.blocking_send(sealed).is_err() {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

fn validated(
    raw: RawRow,
    preset: Preset,
    today: chrono::NaiveDate,
) -> (u64, Option<String>, Result<ImportRow, Refusal>) {
    let line = raw.line;
    let source_id = row::source_id(&raw, preset).ok();
    (line, source_id, row::validate(raw, preset, today))
}

/// Seals the valid rows of a batch, half on another thread.
fn seal_all(
    sealer: &EntrySealer,
    mut rows: Vec<(u64, Option<String>, Result<ImportRow, Refusal>)>,
) -> Vec<Item> {
    let seal = |(line, source_id, row): (u64, Option<String>, Result<ImportRow, Refusal>)| Item {
        line,
        source_id,
        outcome: row.map(|r| Sealed {
            entry: sealer.seal(&r.method),
            masked: r.method.masked(),
            network_transaction_id: r.network_transaction_id,
        }),
    };
    let second = rows.split_off(rows.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| second.into_iter().map(seal).collect::<Vec<_>>());
        let mut items: Vec<Item> = rows.into_iter().map(seal).collect();
        items.extend(
            other
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        );
        items
    })
}

async fn consume(
    pool: &sqlx::PgPool,
    signer: &EventSigner,
    opts: &ImportOptions,
    rx: &mut mpsc::Receiver<Vec<Item>>,
    result: File,
    progress: &Progress,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(result);
    let scope = ImportScope {
        source: &opts.source,
        tenant_id: opts.tenant_id,
        created_by: opts.created_by,
        expires_at: opts.expires_at,
        network_transaction_issuer: opts.network_transaction_issuer.as_deref(),
    };
    while let Some(first) = rx.recv().await {
        // Without deduplication, two batches that are ready go to the database at once, on the
        // pool's two connections, so that PostgreSQL works on two cores. (With it, a batch
        // must see the tokens the one before created.)
        let second = if opts.dedup { None } else { rx.try_recv().ok() };
        let (mut a, mut b) = (ImportSummary::default(), ImportSummary::default());
        let lines = match second {
            None => import_batch(pool, signer, &scope, opts, first, &mut a).await?,
            Some(second) => {
                let (first, second) = tokio::join!(
                    import_batch(pool, signer, &scope, opts, first, &mut a),
                    import_batch(pool, signer, &scope, opts, second, &mut b)
                );
                let mut lines = first?;
                lines.extend(second?);
                lines
            }
        };
        summary.add(&a);
        summary.add(&b);
        for line in lines {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush().context("cannot write the result file")?;
        progress.rows(summary);
    }
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("cannot write the result file")?;
    Ok(())
}

/// A valid row of the batch and the token it will map to.
struct Planned<'a> {
    line: u64,
    source_id: String,
    sealed: &'a Sealed,
    /// The existing token of the same card, when deduplication maps this row to it.
    existing: Option<String>,
}

async fn import_batch(
    pool: &sqlx::PgPool,
    signer: &EventSigner,
    scope: &ImportScope<'_>,
    opts: &ImportOptions,
    batch: Vec<Item>,
    summary: &mut ImportSummary,
) -> anyhow::Result<Vec<ResultLine>> {
    let mut lines = Vec::with_capacity(batch.len());
    let mut first_line: HashMap<&str, u64> = HashMap::new();
    let mut valid = Vec::with_capacity(batch.len());
    for item in &batch {
        match (&item.outcome, &item.source_id) {
            (Err(why), _) => lines.push(refused(item.line, item.source_id.clone(), why.clone())),
            (Ok(sealed), Some(id)) => match first_line.get(id.as_str()) {
                Some(first) => lines.push(refused(
                    item.line,
                    Some(id.clone()),
                    Refusal::new(
                        "duplicate_source_id",
                        None,
                        format!("line {first} has the same source id"),
                    ),
                )),
                None => {
                    first_line.insert(id, item.line);
                    valid.push(Planned {
                        line: item.line,
                        source_id: id.clone(),
                        sealed,
                        existing: None,
                    });
                }
            },
            (Ok(_), None) => unreachable!("a valid row has a source id"),
        }
    }
    summary.refused += lines.len() as u64;

    // Resuming: rows an earlier run already imported are skipped by the insert and reported
    // with their token. Deduplication looks them up first: a later row of the batch must not
    // be mapped to the token of a row that is not inserted.
    if opts.dedup {
        let ids: Vec<&str> = valid.iter().map(|p| p.source_id.as_str()).collect();
        let known: HashMap<String, KnownRecord> =
            store::imports::find_known(pool, scope.source, &ids)
                .await?
                .into_iter()
                .map(|k| (k.source_id.clone(), k))
                .collect();
        valid.retain(|p| match known.get(&p.source_id) {
            Some(k) => {
                lines.push(done(
                    p.line,
                    "already_imported",
                    &p.source_id,
                    EntryView::known(k),
                ));
                false
            }
            None => true,
        });
        summary.already_imported += known.len() as u64;
        deduplicate(pool, scope, &mut valid).await?;
    }

    // In source id order: two batches inserting at once then wait on a shared id (a duplicate
    // in the file) in the same order, never on each other.
    valid.sort_by(|a, b| a.source_id.cmp(&b.source_id));
    let records: Vec<ImportedRecord<'_>> = valid
        .iter()
        .map(|p| {
            let e = &p.sealed.entry;
            ImportedRecord {
                source_id: &p.source_id,
                token: p.existing.as_deref().unwrap_or(e.token.as_str()),
                entry: p.existing.is_none().then(|| NewImportedEntry {
                    kind: e.kind,
                    sealed: &e.sealed,
                    fingerprint: &e.fingerprint,
                    brand: e.brand,
                    bin: e.bin.as_deref(),
                    last4: &e.last4,
                    exp_month: e.exp_month,
                    exp_year: e.exp_year,
                    network_transaction_id: p.sealed.network_transaction_id.as_deref(),
                }),
            }
        })
        .collect();
    let mut tx = pool.begin().await?;
    let inserted = store::imports::insert_batch(&mut *tx, scope, &records).await?;
    // Rows imported before (by an earlier run, or a concurrent one) were not inserted.
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    if opts.audit_each_row && !inserted.is_empty() {
        // MAC'd by this command's writer, in the batch's transaction: the events land with
        // the rows they record, or neither does.
        let events = row_events(scope.source, &valid, &inserted);
        let refs: Vec<&AuditEvent> = events.iter().collect();
        store::audit::insert_audit_events(&mut *tx, &AuditBatch::new(signer, &refs)?).await?;
    }
    tx.commit().await?;

    let raced: Vec<&str> = valid
        .iter()
        .filter(|p| !inserted.contains(&p.source_id))
        .map(|p| p.source_id.as_str())
        .collect();
    let raced: HashMap<String, KnownRecord> = if raced.is_empty() {
        HashMap::new()
    } else {
        store::imports::find_known(pool, scope.source, &raced)
            .await?
            .into_iter()
            .map(|k| (k.source_id.clone(), k))
            .collect()
    };
    for p in &valid {
        let token = p
            .existing
            .as_deref()
            .unwrap_or(p.sealed.entry.token.as_str());
        if let Some(k) = raced.get(&p.source_id) {
            summary.already_imported += 1;
            lines.push(done(
                p.line,
                "already_imported",
                &p.source_id,
                EntryView::known(k),
            ));
        } else if p.existing.is_some() {
            summary.deduplicated += 1;
            let view = EntryView::of(&p.sealed.entry, token);
            lines.push(done(p.line, "deduplicated", &p.source_id, view));
        } else {
            summary.imported += 1;
            let view = EntryView::of(&p.sealed.entry, token);
            lines.push(done(p.line, "imported", &p.source_id, view));
        }
    }
    lines.sort_by_key(|l| l.line);
    Ok(lines)
}

/// Maps rows whose card (or account) the credential already holds, or an earlier row of the
/// batch holds, to that token, as tokenize's deduplication does.
async fn deduplicate(
    pool: &sqlx::PgPool,
    scope: &ImportScope<'_>,
    valid: &mut [Planned<'_>],
) -> anyhow::Result<()> {
    let fingerprints: Vec<&[u8]> = valid
        .iter()
        .map(|p| p.sealed.entry.fingerprint.as_slice())
        .collect();
    let mut holder: HashMap<Vec<u8>, String> =
        store::imports::find_live_by_fingerprints(pool, scope.created_by, &fingerprints)
            .await?
            .into_iter()
            .collect();
    for p in valid.iter_mut() {
        let fp = p.sealed.entry.fingerprint.to_vec();
        match holder.get(&fp) {
            Some(token) => p.existing = Some(token.clone()),
            None => {
                holder.insert(fp, p.sealed.entry.token.as_str().to_owned());
            }
        }
    }
    Ok(())
}

/// One `import_row` event per row this batch inserted (not those an earlier run imported).
fn row_events(
    source: &str,
    valid: &[Planned<'_>],
    inserted: &std::collections::HashSet<String>,
) -> Vec<AuditEvent> {
    valid
        .iter()
        .filter(|p| inserted.contains(&p.source_id))
        .map(|p| {
            let token = p
                .existing
                .as_deref()
                .unwrap_or(p.sealed.entry.token.as_str());
            let mut event = AuditEvent::operator("import_row").with_token(token);
            event.masked_data = Some(p.sealed.masked.clone());
            event.details["source"] = source.into();
            event.details["source_id"] = p.source_id.as_str().into();
            event.details["deduplicated"] = p.existing.is_some().into();
            event
        })
        .collect()
}

/// Creates (or truncates) a file readable by its owner alone.
pub(super) fn create_private(path: &std::path::Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

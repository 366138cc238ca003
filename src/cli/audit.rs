//! `payvault audit`: list, verify, checkpoint, export and prune the audit log. Every read of
//! the log is itself audited (PCI DSS 10.2.1.3).

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::db::cli_pool;
use crate::audit::AuditEvent;
use crate::config;
use crate::store;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, filtered: in id order, or, with --since/--until and neither --token
    /// nor --transaction-id, in time order (occurred_at, then id).
    List {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Show events after this cursor (the event id printed as the next cursor; with a time
        /// range it must be an event of the listing's tenant).
        #[arg(long, default_value_t = 0)]
        cursor: i64,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Verify the seal chain; exits 1 and names the first tampered place if it was altered.
    /// Needs PAYVAULT_MASTER_KEY.
    Verify {
        /// A checkpoint saved earlier by `payvault audit checkpoint`, to detect deletion of the
        /// newest events.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        /// A file of signed checkpoints that `payvault serve` appended
        /// (PAYVAULT_AUDIT_CHECKPOINT_FILE), or its JSON log: detects a truncated or reset chain.
        #[arg(long)]
        checkpoint_file: Option<std::path::PathBuf>,
    },
    /// Print the newest seal as a checkpoint (JSON) to keep off-box.
    Checkpoint,
    /// Seal every queued event now (what `payvault serve` does in the background) and print
    /// how many, how fast, and how many are still queued (0 sealed while another instance holds
    /// the sealing lock). Needs PAYVAULT_MASTER_KEY.
    Seal {
        /// Events sealed per transaction.
        #[arg(long, default_value_t = crate::audit::seal::SEAL_BATCH)]
        batch: i64,
    },
    /// Export sealed events as JSON lines, in chain order, resumable from a cursor.
    Export {
        /// Export events after this chain position (the `seq` of the last line already exported).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Delete sealed events older than the retention period, leaving the rest verifiable.
    /// Needs PAYVAULT_MASTER_KEY.
    Prune {
        /// Delete events that occurred before this date (YYYY-MM-DD or RFC 3339); it must be at
        /// least PAYVAULT_AUDIT_RETENTION_DAYS (default 365) ago.
        #[arg(long, value_parser = crate::audit::parse_time)]
        before: chrono::DateTime<chrono::Utc>,
    },
}

#[derive(Debug, Args)]
pub struct AuditFilterArgs {
    /// Events at or after this date/time (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_parser = crate::audit::parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events before this date/time.
    #[arg(long, value_parser = crate::audit::parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// e.g. tokenize, charge, charge_attempt, token_resolve, authenticate, credential_create.
    #[arg(long)]
    action: Option<String>,
    /// Credential id, username or name.
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    transaction_id: Option<String>,
    /// success or failure.
    #[arg(long, value_parser = ["success", "failure"])]
    outcome: Option<String>,
    /// Only this tenant's events (by name).
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
    Csv,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    use crate::audit::seal;
    let pool = cli_pool().await?;
    // Every read of the audit log is itself audited (PCI DSS 10.2.1.3).
    let log = super::db::cli_audit_log(&pool).await?;
    let keys = log.signer().keys()?.clone();
    let record = |action: &'static str, details: serde_json::Value| {
        let log = log.clone();
        async move {
            let mut event = AuditEvent::operator(action);
            if let (Some(obj), serde_json::Value::Object(extra)) =
                (event.details.as_object_mut(), details)
            {
                obj.extend(extra);
            }
            log.record(&event)
                .await
                .context("cannot write the audit log")
        }
    };
    match cmd {
        AuditCommand::List {
            filter,
            cursor,
            limit,
            format,
        } => {
            let filter = crate::audit::log::AuditFilter {
                since: filter.since,
                until: filter.until,
                action: filter.action,
                actor: filter.actor,
                token: filter.token,
                transaction_id: filter.transaction_id,
                outcome: filter.outcome,
                tenant: match &filter.tenant {
                    Some(name) => Some(crate::auth::tenants::find_tenant(&pool, name).await?.id),
                    None => None,
                },
            };
            let reader = AuditEvent::operator("audit_read");
            let rows = match log
                .read(reader, &filter, cursor, limit.clamp(1, 100_000))
                .await
            {
                Ok(rows) => rows,
                Err(crate::audit::log::ListError::UnknownCursor) => anyhow::bail!(
                    "--cursor {cursor} is no event of this listing: pass the cursor printed by the previous page"
                ),
                Err(e) => return Err(anyhow::Error::new(e).context("cannot read the audit log")),
            };
            print_events(&rows, format)?;
            if let (true, Some(last)) = (rows.len() as i64 == limit, rows.last()) {
                eprintln!("more events: continue with --cursor {}", last.id);
            }
        }
        AuditCommand::Verify {
            checkpoint,
            checkpoint_file,
        } => {
            let published = match &checkpoint_file {
                Some(path) => Some(read_checkpoint_file(path, &keys)?),
                None => None,
            };
            let checkpoint: Option<seal::Checkpoint> = match checkpoint {
                Some(path) => Some(
                    serde_json::from_str(
                        &std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    )
                    .context("the checkpoint file is not a payvault checkpoint")?,
                ),
                None => None,
            };
            let max_unsealed = config::audit_max_unsealed()?;
            let mut report = seal::verify(&pool, &keys, checkpoint.as_ref(), max_unsealed).await?;
            if let (None, Some(published)) = (&report.problem, &published) {
                report.problem = crate::audit::checkpoint::check(&pool, &published.valid).await?;
            }
            record(
                "audit_verify",
                serde_json::json!({
                    "verified": report.verified,
                    "intact": report.intact(),
                    "findings": report.findings.len(),
                    "with_checkpoint": checkpoint.is_some(),
                    "checkpoint_file_checkpoints": published.as_ref().map(|p| p.valid.len()),
                }),
            )
            .await?;
            println!("{report}");
            if let Some(published) = &published {
                let latest = published
                    .valid
                    .iter()
                    .max_by_key(|c| (c.seq, c.published_at));
                if let (true, Some(latest)) = (report.intact(), latest) {
                    println!(
                        "consistent with {} signed checkpoints; the latest vouches for chain position {} (published {})",
                        published.valid.len(),
                        latest.seq,
                        latest.published_at.to_rfc3339()
                    );
                }
            }
            super::db::seal_before_exit(&log).await;
            if !report.intact() {
                std::process::exit(1);
            }
        }
        AuditCommand::Seal { batch } => {
            let started = std::time::Instant::now();
            let sealed = seal::seal_pending_in_batches(&pool, &keys, batch).await?;
            let secs = started.elapsed().as_secs_f64();
            let (queued, _) = store::seals::pending(&pool).await?;
            record(
                "audit_seal",
                serde_json::json!({ "sealed": sealed, "batch": batch }),
            )
            .await?;
            println!(
                "sealed {sealed} audit events in {secs:.2} s ({:.0} events/s, batches of {batch}); {queued} queued",
                sealed as f64 / secs.max(1e-6)
            );
        }
        AuditCommand::Checkpoint => {
            let checkpoint = seal::checkpoint(&pool).await?;
            record(
                "audit_checkpoint",
                serde_json::json!({ "seq": checkpoint.as_ref().map(|c| c.seq) }),
            )
            .await?;
            match checkpoint {
                Some(c) => println!("{}", serde_json::to_string(&c)?),
                None => {
                    anyhow::bail!("no sealed events yet: start `payvault serve` to seal the log")
                }
            }
        }
        AuditCommand::Export { after } => {
            // Recorded before the first event is read: an export whose record cannot be
            // written does not happen (PCI DSS 10.2.1.3).
            record("audit_export", serde_json::json!({ "after": after })).await?;
            let mut cursor = after;
            let mut count = 0u64;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            loop {
                let batch = store::audit::export_sealed_events(&pool, cursor, 1000).await?;
                if batch.is_empty() {
                    break;
                }
                for (seq, row) in &batch {
                    let mut line = crate::audit::event_json(row);
                    line["seq"] = (*seq).into();
                    std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
                    cursor = *seq;
                    count += 1;
                }
            }
            std::io::Write::flush(&mut out)?;
            drop(out);
            record(
                "audit_export_done",
                serde_json::json!({ "after": after, "exported": count, "next_after": cursor }),
            )
            .await?;
            eprintln!("exported {count} events; resume with --after {cursor}");
        }
        AuditCommand::Prune { before } => {
            let days = config::audit_retention_days()?;
            let limit = chrono::Utc::now() - chrono::Duration::days(days);
            if before > limit {
                anyhow::bail!(
                    "refusing to prune events newer than the retention period ({days} days, PAYVAULT_AUDIT_RETENTION_DAYS): --before must be {} or earlier",
                    limit.format("%Y-%m-%d")
                );
            }
            let deleted = seal::prune(&pool, &keys, before).await?;
            record(
                "audit_prune",
                serde_json::json!({ "before": before, "deleted": deleted, "retention_days": days }),
            )
            .await?;
            println!(
                "pruned {deleted} audit events that occurred before {}",
                before.to_rfc3339()
            );
        }
    }
    super::db::seal_before_exit(&log).await;
    Ok(())
}

/// The signed checkpoints of `path`; ignored lines are reported on stderr. A file without any
/// valid checkpoint is an error: it cannot vouch for anything.
fn read_checkpoint_file(
    path: &std::path::Path,
    keys: &crate::crypto::KeyRing,
) -> anyhow::Result<crate::audit::checkpoint::CheckpointFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = crate::audit::checkpoint::parse(&text, keys);
    for (line, why) in &file.ignored {
        eprintln!("{}: line {line} ignored: {why}", path.display());
    }
    if file.valid.is_empty() {
        anyhow::bail!(
            "{} holds no checkpoint signed with a loaded master key version",
            path.display()
        );
    }
    Ok(file)
}

fn print_events(rows: &[store::audit::AuditRow], format: ListFormat) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => {
            for row in rows {
                println!("{}", crate::audit::event_json(row));
            }
        }
        ListFormat::Csv => print_csv(rows)?,
        ListFormat::Table => {
            println!(
                "{:>8}  {:<20}  {:<10}  {:<18}  {:<8}  {:<28}  {:<26}  {:<24}  AMOUNT",
                "ID", "TIME (UTC)", "ACTOR", "ACTION", "OUTCOME", "ERROR", "TOKEN", "CARD"
            );
            for r in rows {
                let amount = match (r.amount_minor, &r.currency) {
                    (Some(a), Some(c)) => crate::domain::Amount::display_minor(a, c),
                    _ => String::new(),
                };
                println!(
                    "{:>8}  {:<20}  {:<10}  {:<18}  {:<8}  {:<28}  {:<26}  {:<24}  {}",
                    r.id,
                    r.occurred_at.format("%Y-%m-%d %H:%M:%S"),
                    r.actor_kind,
                    r.action,
                    r.outcome,
                    r.error_code.as_deref().unwrap_or("-"),
                    r.token.as_deref().unwrap_or("-"),
                    r.masked_data.as_deref().unwrap_or("-"),
                    amount
                );
            }
        }
    }
    Ok(())
}

/// Audit events as CSV, for spreadsheets. Several columns hold text a caller chose (a
/// `transaction_id` of `=HYPERLINK(...)`, say), which a spreadsheet would run as a formula: every
/// text cell is neutralised as OWASP's CSV injection guidance says (see [`neutralise`]), and
/// every cell is quoted, so a `;` inside one cannot split it in locales that separate with `;`.
fn print_csv(rows: &[store::audit::AuditRow]) -> anyhow::Result<()> {
    let mut out = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(std::io::stdout().lock());
    out.write_record([
        "id",
        "occurred_at",
        "actor_kind",
        "actor_id",
        "action",
        "outcome",
        "error_code",
        "client_addr",
        "forwarded_for",
        "request_id",
        "token",
        "transaction_id",
        "masked_data",
        "amount_minor",
        "currency",
        "details",
        "tenant_id",
    ])?;
    for r in rows {
        let text = |v: Option<&str>| neutralise(v.unwrap_or_default());
        out.write_record([
            // Numbers and times payvault formats: left as they are (a negative amount stays a
            // number).
            r.id.to_string(),
            r.occurred_at.to_rfc3339(),
            text(Some(&r.actor_kind)),
            r.actor_id.map(|a| a.to_string()).unwrap_or_default(),
            text(Some(&r.action)),
            text(Some(&r.outcome)),
            text(r.error_code.as_deref()),
            text(r.client_addr.as_deref()),
            text(r.forwarded_for.as_deref()),
            text(r.request_id.as_deref()),
            text(r.token.as_deref()),
            text(r.transaction_id.as_deref()),
            text(r.masked_data.as_deref()),
            r.amount_minor.map(|a| a.to_string()).unwrap_or_default(),
            text(r.currency.as_deref()),
            text(Some(&r.details)),
            r.tenant_id.to_string(),
        ])?;
    }
    out.flush()?;
    Ok(())
}

/// A text cell a spreadsheet will not evaluate: one starting with `=`, `+`, `-`, `@`, a tab or
/// a carriage return gets a leading `'`, which spreadsheets show as text (OWASP, "CSV
/// Injection").
fn neutralise(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::neutralise;

    #[test]
    fn formula_leading_cells_are_neutralised() {
        for cell in [
            "=1+2",
            "+1",
            "-1+1",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "=HYPERLINK(\"x\")",
        ] {
            assert_eq!(neutralise(cell), format!("'{cell}"), "{cell:?}");
        }
        for cell in [
            "",
            "abc",
            "tok_abc",
            "visa 411111******1111",
            "{\"kind\":\"card\"}",
            "a=1",
        ] {
            assert_eq!(neutralise(cell), cell);
        }
    }
}

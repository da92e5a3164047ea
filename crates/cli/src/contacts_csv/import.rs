//! `keyflow contacts import FILE.csv --project ID` (SPEC §9): the header row
//! names the fields, each row is an upsert through the same operation as
//! `POST /v1/contacts/batch` (matched by external id, then email; audited
//! `via: csv_import`), 500 rows per transaction. The file is streamed: memory
//! holds one batch and at most [`LISTED`] rejections, whatever its size.

use std::io::IsTerminal;
use std::path::Path;

use keyflow_core::contacts::{ContactChanges, ContactInput, ContactLookup, validate_contact};
use keyflow_server::error::ApiError;
use keyflow_server::operations::Ctx;
use keyflow_store::Store;
use serde::Serialize;
use serde_json::{Map, json};

use super::{Column, columns_of};
use crate::failure::Failure;

/// Rows written per transaction.
const BATCH: usize = 500;
/// Bytes one row may take: far above what a valid contact can (properties
/// are at most 32 KiB), so a longer one is a broken file (an unclosed
/// quote makes the rest of the file one cell) and the import stops before
/// holding it in memory.
const MAX_ROW_BYTES: u64 = 1024 * 1024;
/// Rejections listed with their line and reason; past it they are counted.
const LISTED: usize = 1_000;

/// What an import did (or, with `--dry-run`, would do).
#[derive(Serialize, Default)]
pub struct Summary {
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub rejected: u64,
    pub dry_run: bool,
    /// The first [`LISTED`] rejected rows.
    pub rejections: Vec<Rejection>,
}

#[derive(Serialize)]
pub struct Rejection {
    /// The line of the file the row starts on (the header is line 1).
    pub line: u64,
    pub reason: String,
}

impl Summary {
    fn reject(&mut self, line: u64, reason: String) {
        self.rejected += 1;
        if self.rejections.len() < LISTED {
            self.rejections.push(Rejection { line, reason });
        }
    }

    /// The summary in words, with each listed rejection on its own line.
    pub fn text(&self, file: &Path) -> String {
        let verb = if self.dry_run {
            "Would import"
        } else {
            "Imported"
        };
        let mut text = format!(
            "{verb} {}: {} rows, {} created, {} updated, {} rejected.",
            file.display(),
            self.rows,
            self.created,
            self.updated,
            self.rejected
        );
        for r in &self.rejections {
            text.push_str(&format!("\n  line {}: {}", r.line, r.reason));
        }
        let unlisted = self.rejected - self.rejections.len() as u64;
        if unlisted > 0 {
            text.push_str(&format!("\n  … and {unlisted} more rejected rows."));
        }
        text
    }
}

/// Reads `file` and upserts its rows into `project_id`'s contacts.
pub async fn import(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    project_id: &str,
    file: &Path,
    dry_run: bool,
) -> Result<Summary, Failure> {
    let opened =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let size = opened.metadata().map(|m| m.len()).unwrap_or(0);
    let since_row = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let bounded = RowBound {
        inner: opened,
        since_row: since_row.clone(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(std::io::BufReader::new(bounded));
    let headers = reader
        .headers()
        .map_err(|e| format!("cannot read the header row of {}: {e}", file.display()))?
        .clone();
    let columns = columns_of(&headers).map_err(|e| format!("{}: {e}", file.display()))?;
    let progress = Progress::new(size);
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let target = Target {
        ctx,
        workspace_id,
        project_id,
        dry_run,
    };
    let mut batch: Vec<(u64, ContactChanges)> = Vec::with_capacity(BATCH);
    let mut record = csv::StringRecord::new();
    loop {
        since_row.set(0);
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                summary.rows += 1;
                let line = record.position().map_or(line, |p| p.line());
                match changes_of(&columns, &record) {
                    Ok(changes) => batch.push((line, changes)),
                    Err(reason) => summary.reject(line, reason),
                }
            }
            // A malformed row (a wrong number of cells, invalid UTF-8) is
            // rejected alone; a failure to read the file stops the import.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(format!(
                    "cannot read {} after line {line}: {e}. {} contacts were created and {} \
                     updated before that; re-running the import after fixing the file updates \
                     them rather than duplicating them",
                    file.display(),
                    summary.created,
                    summary.updated
                )
                .into());
            }
            Err(e) => {
                summary.rows += 1;
                let line = e.position().map_or(line, |p| p.line());
                summary.reject(line, format!("not a valid CSV row: {}", csv_reason(&e)));
            }
        }
        if batch.len() == BATCH {
            write(&target, &mut batch, &mut summary).await?;
        }
        progress.at(reader.position().byte(), summary.rows);
    }
    write(&target, &mut batch, &mut summary).await?;
    progress.done(summary.rows);
    Ok(summary)
}

/// The file, read with a bound on the bytes one row may take (reset by the
/// import at each row; the bound also covers the reader's read-ahead).
struct RowBound<R> {
    inner: R,
    since_row: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for RowBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.since_row.get() + n as u64;
        self.since_row.set(total);
        if total > MAX_ROW_BYTES + 64 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a row longer than {} KiB (an unclosed quote?)",
                    MAX_ROW_BYTES / 1024
                ),
            ));
        }
        Ok(n)
    }
}

/// One row as a contact change, or why it cannot be one.
fn changes_of(columns: &[Column], record: &csv::StringRecord) -> Result<ContactChanges, String> {
    let mut input = ContactInput::default();
    let mut properties = Map::new();
    for (column, cell) in columns.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::Email => input.email = Some(cell.to_string()),
            Column::ExternalId => input.external_id = Some(cell.to_string()),
            Column::FirstName => input.first_name = Some(Some(cell.to_string())),
            Column::LastName => input.last_name = Some(Some(cell.to_string())),
            Column::Subscribed => {
                input.subscribed = Some(match cell.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(format!("subscribed: must be true or false, not {cell:?}")),
                });
            }
            Column::Property(name) => {
                if let Some(value) = keyflow_core::typed_text::read(cell) {
                    properties.insert(name.clone(), value);
                }
            }
            Column::Ignored => {}
        }
    }
    if !properties.is_empty() {
        input.properties = Some(properties);
    }
    validate_contact(&input, true, "").map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Where the rows go.
struct Target<'a> {
    ctx: &'a Ctx<'a>,
    workspace_id: &'a str,
    project_id: &'a str,
    dry_run: bool,
}

/// Upserts a batch in one transaction (a dry run only looks the contacts
/// up) and counts each row's outcome.
async fn write(
    target: &Target<'_>,
    batch: &mut Vec<(u64, ContactChanges)>,
    summary: &mut Summary,
) -> Result<(), Failure> {
    let Target {
        ctx,
        workspace_id,
        project_id,
        dry_run,
    } = *target;
    if batch.is_empty() {
        return Ok(());
    }
    if dry_run {
        for (_, changes) in batch.drain(..) {
            if exists(ctx.store, project_id, &changes).await? {
                summary.updated += 1;
            } else {
                summary.created += 1;
            }
        }
        return Ok(());
    }
    let items: Vec<ContactChanges> = batch.iter().map(|(_, c)| c.clone()).collect();
    let outcomes = keyflow_server::operations::contacts::upsert_contacts(
        ctx,
        workspace_id,
        project_id,
        &items,
        json!({"via": "csv_import"}),
    )
    .await?;
    for ((line, _), outcome) in batch.drain(..).zip(outcomes) {
        match outcome {
            Ok(o) if o.created => summary.created += 1,
            Ok(_) => summary.updated += 1,
            Err(e) => summary.reject(line, ApiError::from(e).message),
        }
    }
    Ok(())
}

/// Whether the contact a row names exists (external id first, then email,
/// as the upsert matches).
async fn exists(
    store: &dyn Store,
    project_id: &str,
    changes: &ContactChanges,
) -> Result<bool, Failure> {
    let lookups = [
        changes.external_id.clone().map(ContactLookup::ExternalId),
        changes.email.clone().map(ContactLookup::Email),
    ];
    for lookup in lookups.into_iter().flatten() {
        if store.get_contact(project_id, &lookup).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} cells where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "it is not UTF-8 text".into(),
        _ => e.to_string(),
    }
}

/// Progress on stderr: a bar on a terminal, a line every 100 000 rows
/// otherwise (logs, CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    size: u64,
}

impl Progress {
    fn new(size: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, size }
    }

    fn at(&self, byte: u64, rows: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(byte);
                if rows.is_multiple_of(1_000) {
                    bar.set_message(format!("{rows} rows"));
                }
            }
            None if rows.is_multiple_of(100_000) && rows > 0 => {
                let percent = (byte * 100).checked_div(self.size).unwrap_or(100);
                eprintln!("keyflow: {rows} rows read ({percent}% of the file)");
            }
            None => {}
        }
    }

    fn done(&self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("{rows} rows"));
        }
    }
}

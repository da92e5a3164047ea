//! `keyflow contacts export --project ID [--output FILE.csv]` (SPEC §9):
//! every contact of a project, streamed a page at a time, in the columns
//! the import reads. A first pass learns the property names (the header
//! needs them before any row); the second writes the rows.
//!
//! A file is written owner-only next to its destination and renamed into
//! place when complete, so a failed export leaves no partial file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use keyflow_store::{Contact, Page, Store};
use serde::Serialize;

use super::FIELDS;
use crate::failure::Failure;

/// Contacts read per page.
const PAGE: u32 = 1_000;
/// Property columns at most: every row carries a cell for each, so a
/// project with very many distinct property names (ids used as names, say)
/// would make a file of mostly empty cells. Past it the export is refused.
const MAX_PROPERTY_COLUMNS: usize = 10_000;

#[derive(Serialize)]
pub struct Summary {
    pub contacts: u64,
    pub properties: usize,
    /// Property names that first appeared after the header was written
    /// (contacts changed during the export); their values are not in the file.
    pub late_properties: u64,
    pub output: Option<PathBuf>,
}

/// Writes the project's contacts as CSV to `output` (stdout when `None`).
pub async fn export(
    store: &dyn Store,
    project_id: &str,
    output: Option<&Path>,
) -> Result<Summary, Failure> {
    let mut names = BTreeSet::new();
    each_page(store, project_id, |contact| {
        names.extend(contact.fields.properties.keys().cloned());
        if names.len() > MAX_PROPERTY_COLUMNS {
            return Err(format!(
                "the project's contacts have more than {MAX_PROPERTY_COLUMNS} distinct property \
                 names, one column each: too many for a CSV file (read them through the API)"
            )
            .into());
        }
        Ok(())
    })
    .await?;
    let names: Vec<String> = names.into_iter().collect();
    let (sink, partial): (Box<dyn Write>, Option<PathBuf>) = match output {
        Some(path) => {
            let partial = partial_path(path);
            (Box::new(owner_only_file(&partial)?), Some(partial))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(sink));
    let written = write_all(store, project_id, &names, &mut writer).await;
    let flushed = written.and_then(|counts| {
        writer
            .flush()
            .map_err(|e| Failure::from(format!("cannot write the export: {e}")))?;
        Ok(counts)
    });
    drop(writer);
    let (contacts, late_properties) = match flushed {
        Ok(counts) => counts,
        Err(e) => {
            if let Some(partial) = &partial {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    if let (Some(partial), Some(path)) = (&partial, output) {
        std::fs::rename(partial, path)
            .map_err(|e| format!("cannot move the export to {}: {e}", path.display()))?;
    }
    Ok(Summary {
        contacts,
        properties: names.len(),
        late_properties,
        output: output.map(Path::to_path_buf),
    })
}

async fn write_all<W: Write>(
    store: &dyn Store,
    project_id: &str,
    names: &[String],
    writer: &mut csv::Writer<W>,
) -> Result<(u64, u64), Failure> {
    let header = FIELDS
        .iter()
        .map(|f| (*f).to_string())
        .chain(names.iter().map(|n| format!("properties.{n}")));
    writer
        .write_record(header)
        .map_err(|e| format!("cannot write the export: {e}"))?;
    let (mut contacts, mut late) = (0u64, 0u64);
    let mut row: Vec<String> = Vec::with_capacity(FIELDS.len() + names.len());
    each_page(store, project_id, |contact| {
        let f = &contact.fields;
        row.clear();
        row.push(f.email.clone().unwrap_or_default());
        row.push(f.external_id.clone().unwrap_or_default());
        row.push(f.first_name.clone().unwrap_or_default());
        row.push(f.last_name.clone().unwrap_or_default());
        row.push(f.subscribed.to_string());
        for name in names {
            row.push(
                f.properties
                    .get(name)
                    .map(keyflow_core::typed_text::write)
                    .unwrap_or_default(),
            );
        }
        late += f
            .properties
            .keys()
            .filter(|k| names.binary_search(k).is_err())
            .count() as u64;
        contacts += 1;
        writer
            .write_record(&row)
            .map_err(|e| Failure::from(format!("cannot write the export: {e}")))
    })
    .await?;
    Ok((contacts, late))
}

/// Calls `each` with every contact of the project, a page at a time.
async fn each_page(
    store: &dyn Store,
    project_id: &str,
    mut each: impl FnMut(&Contact) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut page = Page {
        limit: PAGE,
        cursor: None,
    };
    loop {
        let contacts = store.list_contacts(project_id, false, &page).await?;
        for contact in &contacts {
            each(contact)?;
        }
        match contacts.last() {
            Some(last) if contacts.len() == PAGE as usize => page.cursor = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Contacts are personal data: the file is readable by its owner only. It
/// is always a new file (a leftover or planted one is removed first, and
/// `create_new` refuses to follow a link), so no earlier permissions carry
/// over.
fn owner_only_file(path: &Path) -> Result<std::fs::File, Failure> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot replace {}: {e}", path.display()).into()),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

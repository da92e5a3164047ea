//! The embedded database's files: owner-only permissions (SPEC §7) and an
//! online backup that works while the server runs.
//!
//! The data of a running instance is partly in `keyflow.db-wal` until a
//! checkpoint, so copying `keyflow.db` alone gives a file without tables;
//! [`backup`] uses SQLite's `VACUUM INTO`, which writes one consistent,
//! self-contained file from a read transaction (writers go on meanwhile).

use std::path::{Path, PathBuf};

use crate::StoreError;

/// The file a `sqlite://PATH[?options]` URL names (`None` for in-memory ones).
pub fn path_of_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// Creates the database file readable by its owner only, before SQLite
/// creates it with the process umask; SQLite gives `-wal` and `-shm` the main
/// file's permissions. Existing files are narrowed too.
pub fn secure(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StoreError::Config(format!("cannot create {}: {e}", path.display()))
                })?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(
                    |e| StoreError::Config(format!("cannot restrict {}: {e}", file.display())),
                )?;
            }
        }
    }
    Ok(())
}

/// Writes a consistent copy of the database at `source` into `target` (which
/// must not exist yet), readable by its owner only.
pub fn backup(source: &Path, target: &Path) -> Result<(), StoreError> {
    if !source.is_file() {
        return Err(StoreError::Config(format!(
            "no Keyflow database at {}",
            source.display()
        )));
    }
    if target.exists() {
        return Err(StoreError::Config(format!(
            "{} already exists; a backup never overwrites a file",
            target.display()
        )));
    }
    // Created here, exclusively and owner-only, before SQLite writes into it
    // (VACUUM INTO accepts an empty file): no moment where the copy is
    // readable by others, and no file someone else planted first.
    create_private(target)?;
    // An absolute path, so SQLite (built with URI filenames) never reads a
    // name like `file:x.db` as a URI and writes somewhere else.
    let target = std::fs::canonicalize(target)
        .map_err(|e| StoreError::Config(format!("cannot resolve {}: {e}", target.display())))?;
    let target_text = target
        .to_str()
        .ok_or_else(|| StoreError::Config("the backup path is not valid UTF-8".into()))?;
    let conn = rusqlite::Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target_text]) {
        let _ = std::fs::remove_file(&target);
        return Err(e.into());
    }
    Ok(())
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", path.display())))
}

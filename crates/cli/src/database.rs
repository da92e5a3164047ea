//! Opening the database a command works on.

use std::path::PathBuf;
use std::sync::Arc;

use keyflow_server::Config;
use keyflow_store::Store;

use crate::failure::Failure;

/// Creates the data directory (owner-only) for the embedded database.
pub fn create_data_dir(config: &Config) -> Result<(), Failure> {
    if config.database_url.is_some() || config.data_dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The embedded database file this configuration names, if it is SQLite.
pub fn sqlite_file(config: &Config) -> Option<PathBuf> {
    keyflow_store::sqlite::files::path_of_url(config.effective_database_url().expose())
}

/// For commands that work on an existing instance (everything but `init`,
/// `migrate` and `serve`): refuse a SQLite file that does not exist rather
/// than create an empty one and then report "no project with id …".
pub async fn open_existing_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    if let Some(path) = sqlite_file(config)
        && !path.is_file()
    {
        return Err(Failure::from(format!(
            "no Keyflow database at {}: run this where `keyflow serve` runs, or pass the \
             same --data-dir / --database-url (KEYFLOW_DATA_DIR / KEYFLOW_DATABASE_URL); \
             `keyflow init` creates a new one",
            path.display()
        )));
    }
    open_store(config).await
}

pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    create_data_dir(config)?;
    let url = config.effective_database_url();
    let store = keyflow_store::connect(url.expose()).await.map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            keyflow_store::redact_url(url.expose())
        )
    })?;
    store.migrate().await?;
    Ok(store)
}

pub async fn open_store_without_migrating(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    create_data_dir(config)?;
    let url = config.effective_database_url();
    Ok(keyflow_store::connect(url.expose()).await.map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            keyflow_store::redact_url(url.expose())
        )
    })?)
}

//! The embedded default: one SQLite file in WAL mode.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::sql_store::{Migration, impl_sql_store};

pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl SqliteStore {
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "0001_foundation",
        sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
    }];

    /// Opens (creating if needed) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only an OS
            // crash can lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// SQLite runs one writer at a time; the migration transaction is enough.
    async fn lock_migrations(
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), crate::StoreError> {
        Ok(())
    }
}

impl_sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

//! The contract between the shared SQL (`crate::areas`) and each backend.
//!
//! Every statement both databases accept is written once, in the area files,
//! as ordinary code generic over two traits:
//!
//! - [`Db`]: the sqlx database (SQLite or PostgreSQL) — how to run a query on
//!   a connection, bind a value, decode a row. sqlx can express this only
//!   through a trait bound per value type; [`Value`] and [`Decode`] gather
//!   those bounds once, so generic code needs none of its own.
//! - [`Backend`]: the store itself — its pool, how it opens a transaction
//!   meant to write, what it must lock, and the paths it takes its own way
//!   (ingestion, the SQLite store's direct point reads).
//!
//! The area traits (`KeyStore`, `ContactStore`, …) are implemented once for
//! every `Backend`. A statement only one database accepts lives in that
//! backend's folder.

use std::future::Future;
use std::ops::DerefMut;

use keyflow_core::KeyDigest;
use keyflow_core::contacts::ContactLookup;
use keyflow_core::events::NewEvent;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Database, Encode, Executor, FromRow, Postgres, Sqlite, Type};

use crate::{AuthKey, Contact, EventOutcome, StoreResult};

/// A query with the database's own argument buffer.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// A connection of the backend's database.
pub(crate) type Conn<B> = <<B as Backend>::Db as Database>::Connection;

/// A value both databases can bind (`'v`: what it borrows, if anything).
pub(crate) trait Value<'v>:
    Send + Type<Sqlite> + Encode<'v, Sqlite> + Type<Postgres> + Encode<'v, Postgres>
{
}

impl<'v, T> Value<'v> for T where
    T: Send + Type<Sqlite> + Encode<'v, Sqlite> + Type<Postgres> + Encode<'v, Postgres>
{
}

/// A row shape both databases can decode (derive `sqlx::FromRow`).
pub(crate) trait Decode:
    Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>
{
}

impl<T> Decode for T where
    T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>
{
}

/// What the shared SQL needs from a database.
pub(crate) trait Db:
    Database<Arguments: sqlx::IntoArguments<Self>> + sqlx::database::HasStatementCache
{
    /// `"sqlite"` or `"postgres"`.
    const NAME: &'static str;
    fn exec(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self>;
    fn bind<'q, 'v, T: Value<'v>>(query: Query<'q, Self>, value: T) -> Query<'q, Self>;
    fn decode<T: Decode>(row: &Self::Row) -> Result<T, sqlx::Error>;
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

impl Db for Sqlite {
    const NAME: &'static str = "sqlite";
    fn exec(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self> {
        conn
    }
    fn bind<'q, 'v, T: Value<'v>>(query: Query<'q, Self>, value: T) -> Query<'q, Self> {
        query.bind(value)
    }
    fn decode<T: Decode>(row: &SqliteRow) -> Result<T, sqlx::Error> {
        T::from_row(row)
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl Db for Postgres {
    const NAME: &'static str = "postgres";
    fn exec(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self> {
        conn
    }
    fn bind<'q, 'v, T: Value<'v>>(query: Query<'q, Self>, value: T) -> Query<'q, Self> {
        query.bind(value)
    }
    fn decode<T: Decode>(row: &PgRow) -> Result<T, sqlx::Error> {
        T::from_row(row)
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Running a query on a connection, for any [`Db`].
pub(crate) trait Run<DB: Db>: Sized {
    /// Binds the next `$n` placeholder.
    fn arg<'v, T: Value<'v>>(self, value: T) -> Self;
    /// Runs the statement; the number of rows it changed.
    fn run(self, conn: &mut DB::Connection) -> impl Future<Output = StoreResult<u64>> + Send;
    fn optional<T: Decode>(
        self,
        conn: &mut DB::Connection,
    ) -> impl Future<Output = StoreResult<Option<T>>> + Send;
    fn one<T: Decode>(
        self,
        conn: &mut DB::Connection,
    ) -> impl Future<Output = StoreResult<T>> + Send;
    fn all<T: Decode>(
        self,
        conn: &mut DB::Connection,
    ) -> impl Future<Output = StoreResult<Vec<T>>> + Send;
}

impl<DB: Db> Run<DB> for Query<'_, DB> {
    fn arg<'v, T: Value<'v>>(self, value: T) -> Self {
        DB::bind(self, value)
    }

    async fn run(self, conn: &mut DB::Connection) -> StoreResult<u64> {
        let done = self.execute(DB::exec(conn)).await?;
        Ok(DB::rows_affected(&done))
    }

    async fn optional<T: Decode>(self, conn: &mut DB::Connection) -> StoreResult<Option<T>> {
        let row = self.fetch_optional(DB::exec(conn)).await?;
        Ok(row.map(|r| DB::decode(&r)).transpose()?)
    }

    async fn one<T: Decode>(self, conn: &mut DB::Connection) -> StoreResult<T> {
        let row = self.fetch_one(DB::exec(conn)).await?;
        Ok(DB::decode(&row)?)
    }

    async fn all<T: Decode>(self, conn: &mut DB::Connection) -> StoreResult<Vec<T>> {
        let rows = self.fetch_all(DB::exec(conn)).await?;
        Ok(rows.iter().map(DB::decode).collect::<Result<_, _>>()?)
    }
}

/// A transaction meant to write, from [`Backend::begin_write`].
pub(crate) trait WriteTx<DB: Db>: DerefMut<Target = DB::Connection> + Send {
    fn commit(self) -> impl Future<Output = StoreResult<()>> + Send;
}

impl<DB: Db> WriteTx<DB> for sqlx::Transaction<'static, DB> {
    async fn commit(self) -> StoreResult<()> {
        Ok(sqlx::Transaction::commit(self).await?)
    }
}

/// One embedded migration.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// What differs per store: everything else is shared.
pub(crate) trait Backend: Send + Sync + 'static {
    type Db: Db;
    type WriteTx: WriteTx<Self::Db>;

    /// The backend's schema, oldest first.
    const MIGRATIONS: &'static [Migration];

    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Opens a transaction that will write (on SQLite it also takes the
    /// instance's write turn and SQLite's write lock up front).
    fn begin_write(&self) -> impl Future<Output = StoreResult<Self::WriteTx>> + Send;

    /// Serialises concurrent migrators (several instances starting at once).
    fn lock_migrations(conn: &mut Conn<Self>) -> impl Future<Output = StoreResult<()>> + Send;

    /// What a job claim's inner `SELECT` ends with so that concurrent
    /// claimers pass over each other's rows (PostgreSQL: `FOR UPDATE SKIP
    /// LOCKED`; SQLite's one writer needs nothing).
    const SKIP_LOCKED: &'static str;

    /// Serialises the run starts of one workflow (reentry and the hourly cap
    /// are checked against the runs already started).
    fn lock_workflow(
        conn: &mut Conn<Self>,
        workflow_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Serialises membership changes of one workspace (the last-owner rule).
    fn lock_workspace(
        conn: &mut Conn<Self>,
        workspace_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Wake-ups for the workflow worker when writes queue jobs (see
    /// `crate::job_signals`).
    fn job_signals(&self) -> crate::JobSignals;

    /// The sizes and durations of this instance's event group commits.
    fn group_commit_stats(&self) -> &crate::ingest_queue::GroupCommitStats;

    /// Stores events durably, returning after their commit.
    fn ingest(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> impl Future<Output = StoreResult<Vec<EventOutcome>>> + Send;

    /// A key by digest without sqlx, where the backend has such a path
    /// (`None`: use the shared SQL).
    fn read_key_for_auth(&self, _digest: &KeyDigest) -> Option<StoreResult<Option<AuthKey>>> {
        None
    }

    /// Called inside a contact write's transaction, before its commit: a
    /// backend that caches who a contact is (SQLite's event writer) records
    /// the change in the database itself, so every process's cache sees it.
    fn contacts_changing(_conn: &mut Conn<Self>) -> impl Future<Output = StoreResult<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// A contact without sqlx, where the backend has such a path.
    fn read_contact(
        &self,
        _project_id: &str,
        _lookup: &ContactLookup,
    ) -> Option<StoreResult<Option<Contact>>> {
        None
    }
}

//! The embedded default: one SQLite file in WAL mode, with one writer task
//! that commits many requests' events in one transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::mpsc;

use crate::ingest_queue::{self, IngestJob};
use crate::sql_store::{Migration, impl_sql_store};

mod direct;
pub mod files;
mod reader;

pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// Whose turn it is to write: the event writer (per batch) and every
    /// other write transaction queue here, first come first served.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    ingest_queue: mpsc::Sender<IngestJob>,
    /// Point reads on the calling thread; `None` for in-memory databases.
    reader: Option<reader::Reader>,
}

/// Jobs taken into one transaction at most (bounded so one commit stays short).
const MAX_JOBS_PER_COMMIT: usize = 512;
const MAX_EVENTS_PER_COMMIT: usize = 20_000;
/// How long the writer may wait for more jobs when clients write
/// concurrently, in steps of `COMMIT_STEP` (see `run_writer`). Chosen by
/// measurement (docs/benchmarks.md): one fixed 200 µs wait left the CPU idle
/// while every client was already waiting; no wait commits ~10 jobs at a time.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(400);
const COMMIT_STEP: std::time::Duration = std::time::Duration::from_micros(50);

impl SqliteStore {
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "0001_foundation",
            sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
        },
        Migration {
            version: 2,
            name: "0002_customer_data",
            sql: include_str!("../../migrations/sqlite/0002_customer_data.sql"),
        },
        Migration {
            version: 3,
            name: "0003_sessions",
            sql: include_str!("../../migrations/sqlite/0003_sessions.sql"),
        },
        Migration {
            version: 4,
            name: "0004_key_usage",
            sql: include_str!("../../migrations/sqlite/0004_key_usage.sql"),
        },
        Migration {
            version: 5,
            name: "0005_project_settings",
            sql: include_str!("../../migrations/sqlite/0005_project_settings.sql"),
        },
        Migration {
            version: 6,
            name: "0006_metrics_credentials",
            sql: include_str!("../../migrations/sqlite/0006_metrics_credentials.sql"),
        },
        Migration {
            version: 7,
            name: "0007_events_by_project",
            sql: include_str!("../../migrations/sqlite/0007_events_by_project.sql"),
        },
        Migration {
            version: 8,
            name: "0008_events_contact_partial",
            sql: include_str!("../../migrations/sqlite/0008_events_contact_partial.sql"),
        },
        Migration {
            version: 9,
            name: "0009_key_rolled_at",
            sql: include_str!("../../migrations/sqlite/0009_key_rolled_at.sql"),
        },
        Migration {
            version: crate::sql_store::CONTACT_EMAILS_NFC,
            name: "0010_contact_emails_nfc",
            sql: include_str!("../../migrations/sqlite/0010_contact_emails_nfc.sql"),
        },
    ];

    /// Opens (creating if needed) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        // Owner-only files (SPEC §7): made before SQLite creates them.
        if let Some(path) = files::path_of_url(url) {
            files::secure(&path)?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, even across a
            // power loss. The writer task groups commits, so the fsync is shared.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A ping before every acquire is a round trip to the connection's
            // worker thread; a local file has no network to go stale.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let (ingest_queue, jobs) = mpsc::channel(4096);
        let write_turn = Arc::new(tokio::sync::Mutex::new(()));
        let path = options.get_filename().to_path_buf();
        // A plain file URL only: options such as `mode=ro`, `immutable` or a
        // VFS, and in-memory databases, are left to sqlx for everything.
        let on_disk = !url.contains('?') && !url.contains(":memory:") && path.is_file();
        let reader = on_disk.then(|| reader::Reader::new(path.clone()));
        let direct = on_disk.then(|| direct::DirectWriter::new(path));
        let (runtime, writer_pool, turn) = (
            tokio::runtime::Handle::current(),
            pool.clone(),
            write_turn.clone(),
        );
        std::thread::Builder::new()
            .name("keyflow-sqlite-writer".into())
            .spawn(move || run_writer(runtime, writer_pool, turn, direct, jobs))
            .map_err(|e| {
                crate::StoreError::Config(format!("cannot start the SQLite writer thread: {e}"))
            })?;
        Ok(Self {
            pool,
            write_turn,
            ingest_queue,
            reader,
        })
    }

    /// A key by digest through the direct reader (`None`: use sqlx).
    fn read_key_for_auth(
        &self,
        digest: &keyflow_core::KeyDigest,
    ) -> Option<crate::StoreResult<Option<crate::AuthKey>>> {
        self.reader.as_ref().map(|r| r.key_for_auth(digest))
    }

    /// A contact through the direct reader (`None`: use sqlx).
    fn read_contact(
        &self,
        project_id: &str,
        lookup: &keyflow_core::contacts::ContactLookup,
    ) -> Option<crate::StoreResult<Option<crate::Contact>>> {
        self.reader.as_ref().map(|r| r.contact(project_id, lookup))
    }

    /// Write transactions take SQLite's write lock at `BEGIN` (waiting under
    /// busy_timeout). A deferred transaction that reads first could not wait:
    /// its first write would fail at once with SQLITE_BUSY while the event
    /// writer holds the lock, or with SQLITE_BUSY_SNAPSHOT after it committed.
    ///
    /// First, though, the instance's write turn: SQLite's own busy waiting
    /// polls with growing sleeps, so a transaction waiting for the event
    /// writer (which takes the lock again right after each commit) could wait
    /// for seconds. The turn is a fair queue shared with the writer; the
    /// SQLite lock then only arbitrates with other processes (the CLI).
    async fn begin_write(&self) -> Result<WriteTx<'static>, sqlx::Error> {
        let turn = self.write_turn.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// SQLite runs one writer at a time, and a write transaction always works
    /// on the latest data: nothing to lock (see the PostgreSQL store).
    async fn lock_workspace(
        _conn: &mut SqliteConnection,
        _workspace_id: &str,
    ) -> Result<(), crate::StoreError> {
        Ok(())
    }

    /// SQLite runs one writer at a time; the migration transaction is enough.
    async fn lock_migrations(_conn: &mut SqliteConnection) -> Result<(), crate::StoreError> {
        Ok(())
    }

    /// Hands the events to the writer task and waits for their commit.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let stopped = || crate::StoreError::WriteFailed("the SQLite writer has stopped".into());
        ingest_queue::submit(&self.ingest_queue, project_id, events, now, stopped).await
    }
}

/// The single writer, on a thread of its own: takes every job waiting,
/// prepares each (claiming idempotency keys, resolving contacts), inserts all
/// their rows with one statement, commits once, then answers each job.
/// Nothing is acknowledged before its commit; a refused job fails alone.
///
/// Batches that need no lookups (anonymous events, the bulk of tracking) are
/// committed on this thread through its own connection ([`direct`]): no
/// round trip to a sqlx worker thread. Others go through sqlx (each
/// statement a round trip), driven from here with the runtime's handle. Both
/// hold the store's write turn, so other write transactions queue fairly.
fn run_writer(
    runtime: tokio::runtime::Handle,
    pool: sqlx::SqlitePool,
    write_turn: Arc<tokio::sync::Mutex<()>>,
    mut direct: Option<direct::DirectWriter>,
    mut jobs: mpsc::Receiver<IngestJob>,
) {
    let mut conn: Option<PoolConnection<Sqlite>> = None;
    // Jobs in the previous commit: more than one means clients are writing
    // concurrently, and waiting a moment lets more of them share the commit.
    let mut previous_jobs = 0;
    while let Some(first) = jobs.blocking_recv() {
        let mut count = first.events.len();
        let mut batch = vec![first];
        take_waiting(&mut jobs, &mut batch, &mut count);
        if batch.len() > 1 || previous_jobs > 1 {
            // Group commit (PostgreSQL's commit_delay): every commit costs
            // the same page writes and fsync whatever its size, so while
            // clients write concurrently the writer waits in short steps
            // for as long as jobs keep coming (up to COMMIT_DELAY): fewer,
            // larger commits leave the CPU to the requests. It commits as
            // soon as a step brings nothing; a lone client waits at most one
            // step, just after a busy period.
            let started = std::time::Instant::now();
            while batch.len() < MAX_JOBS_PER_COMMIT
                && count < MAX_EVENTS_PER_COMMIT
                && started.elapsed() < COMMIT_DELAY
            {
                std::thread::sleep(COMMIT_STEP);
                let before = batch.len();
                take_waiting(&mut jobs, &mut batch, &mut count);
                if batch.len() == before {
                    break;
                }
            }
        }
        previous_jobs = batch.len();
        let turn = write_turn.blocking_lock();
        let lookups = batch.iter().any(|job| {
            job.events
                .iter()
                .any(crate::sql_store::EventRow::needs_lookups)
        });
        if !lookups && let Some(direct) = direct.as_mut() {
            if let Err(e) = direct.commit(batch) {
                tracing::warn!(error = %e, "direct SQLite commit failed; reopening");
                direct.reset();
            }
            drop(turn);
            continue;
        }
        conn = runtime.block_on(async {
            let connection = match conn.take() {
                Some(c) => c,
                None => match pool.acquire().await {
                    Ok(c) => c,
                    Err(e) => {
                        fail_all(batch, &e.to_string());
                        return None;
                    }
                },
            };
            commit_batch(connection, batch, lookups).await
        });
        drop(turn);
    }
    // The queue closed (shutdown). A pooled connection goes back to its pool
    // through the runtime when dropped: drop it, and the pool, inside the
    // runtime's context, never on this bare thread (that panicked with "this
    // functionality requires a Tokio context" on every SIGTERM after an
    // identified event).
    let _context = runtime.enter();
    drop(conn);
    drop(pool);
}

/// Moves every queued job into `batch`, up to the per-commit bounds.
fn take_waiting(
    jobs: &mut mpsc::Receiver<IngestJob>,
    batch: &mut Vec<IngestJob>,
    count: &mut usize,
) {
    while batch.len() < MAX_JOBS_PER_COMMIT && *count < MAX_EVENTS_PER_COMMIT {
        match jobs.try_recv() {
            Ok(job) => {
                *count += job.events.len();
                batch.push(job);
            }
            Err(_) => return,
        }
    }
}

/// Fails every job with the same write failure.
pub(crate) fn fail_all(batch: Vec<IngestJob>, reason: &str) {
    ingest_queue::fail_all(batch, crate::StoreError::WriteFailed(reason.to_string()));
}

type Prepared = (Vec<crate::EventOutcome>, Vec<crate::sql_store::EventRow>);

/// Why a job was not prepared.
enum JobFailure {
    /// The job's own input is refused (an unknown contact id, a contact
    /// conflict). Whatever it wrote was rolled back to its savepoint; the
    /// other jobs of the batch go on.
    Rejected(crate::StoreError),
    /// SQLite itself failed: the transaction may be gone (SQLite rolls back
    /// on I/O errors, a full disk…), so the whole batch fails.
    Broken(crate::StoreError),
}

fn is_rejection(e: &crate::StoreError) -> bool {
    matches!(
        e,
        crate::StoreError::Invalid(_) | crate::StoreError::Conflict(_)
    )
}

/// Prepares one job inside the open transaction. A job whose preparation
/// writes (idempotency keys, new contacts) runs in a savepoint so that its
/// rejection leaves no trace; plain jobs only read, and skip the savepoint.
async fn prepare_job(conn: &mut SqliteConnection, job: &IngestJob) -> Result<Prepared, JobFailure> {
    let classify = |e: crate::StoreError| {
        if is_rejection(&e) {
            JobFailure::Rejected(e)
        } else {
            JobFailure::Broken(e)
        }
    };
    let broken = |e: sqlx::Error| JobFailure::Broken(e.into());
    if job.events.iter().all(crate::sql_store::EventRow::is_plain) {
        return prepare_events(conn, &job.project_id, &job.events, job.now)
            .await
            .map_err(classify);
    }
    sqlx::raw_sql("SAVEPOINT ingest_job")
        .execute(&mut *conn)
        .await
        .map_err(broken)?;
    match prepare_events(conn, &job.project_id, &job.events, job.now).await {
        Ok(prepared) => {
            sqlx::raw_sql("RELEASE ingest_job")
                .execute(&mut *conn)
                .await
                .map_err(broken)?;
            Ok(prepared)
        }
        Err(e) if is_rejection(&e) => {
            sqlx::raw_sql("ROLLBACK TO ingest_job; RELEASE ingest_job")
                .execute(&mut *conn)
                .await
                .map_err(broken)?;
            Err(JobFailure::Rejected(e))
        }
        Err(e) => Err(JobFailure::Broken(e)),
    }
}

/// A batch that cannot be committed: nothing of it is kept, every job is
/// told so, and the connection is closed rather than returned to the pool,
/// where a transaction sqlx does not know about could still be open.
async fn abandon(
    mut conn: PoolConnection<Sqlite>,
    batch: Vec<IngestJob>,
    reason: &str,
) -> Option<PoolConnection<Sqlite>> {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    conn.close_on_drop();
    fail_all(batch, reason);
    None
}

/// The rows of a commit as one JSON array, the single parameter of
/// [`INSERT_EVENTS`]. One prepared statement serves any row count, and one
/// bind replaces up to thousands (binding hundreds of parameters per
/// statement, and preparing a statement per row count, were the writer's main
/// costs).
pub(crate) fn rows_as_json(rows: &[crate::sql_store::EventRow]) -> String {
    let array: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!([
                r.id,
                r.project_id,
                r.name,
                r.contact_id,
                r.anonymous_id,
                r.properties,
                r.timestamp,
                r.received_at,
                r.idempotency_key
            ])
        })
        .collect();
    serde_json::Value::Array(array).to_string()
}

pub(crate) const INSERT_EVENTS: &str = "INSERT INTO events (id, project_id, name, contact_id, anonymous_id, \
     properties, timestamp, received_at, idempotency_key) \
     SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, e.value ->> 4, e.value ->> 5, \
     e.value ->> 6, e.value ->> 7, e.value ->> 8 FROM json_each(?1) AS e";

/// Commits one batch and answers its jobs. Returns the connection for the
/// next batch, or `None` after a failure (the next batch takes a fresh one).
async fn commit_batch(
    mut conn: PoolConnection<Sqlite>,
    batch: Vec<IngestJob>,
    with_lookups: bool,
) -> Option<PoolConnection<Sqlite>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    // IMMEDIATE: take the write lock up front (waiting under busy_timeout), so a
    // batch that starts by reading cannot fail later with SQLITE_BUSY_SNAPSHOT
    // when another connection committed in between. Without lookups, BEGIN
    // travels with the INSERT and COMMIT in one round trip.
    let begin_first = if with_lookups {
        ""
    } else {
        "BEGIN IMMEDIATE; "
    };
    if with_lookups && let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return abandon(conn, batch, &e.to_string()).await;
    }
    for job in &batch {
        match prepare_job(&mut conn, job).await {
            Ok((outcomes, mut job_rows)) => {
                rows.append(&mut job_rows);
                results.push(Ok(outcomes));
            }
            Err(JobFailure::Rejected(e)) => results.push(Err(e)),
            Err(JobFailure::Broken(e)) => return abandon(conn, batch, &e.to_string()).await,
        }
    }
    let statement = format!("{begin_first}{INSERT_EVENTS}; COMMIT");
    // Without lookups every job yields rows, so `rows` is empty only after
    // a transaction was begun above.
    let written = if rows.is_empty() {
        sqlx::raw_sql("COMMIT")
            .execute(&mut *conn)
            .await
            .map(|_| ())
    } else {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(rows_as_json(&rows))
            .execute(&mut *conn)
            .await
            .map(|_| ())
    };
    if let Err(e) = written {
        return abandon(conn, batch, &e.to_string()).await;
    }
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
    Some(conn)
}

/// A transaction meant to write, holding the instance's write turn until it
/// commits or is dropped (see `SqliteStore::begin_write`).
pub(crate) struct WriteTx<'a> {
    tx: sqlx::Transaction<'a, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx<'_> {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl_sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

#[cfg(test)]
mod tests {
    use super::SqliteStore;
    use crate::EventFilter;
    use crate::sql_store::list_events_sql;

    /// The plan SQLite picks for a filtered listing, on the real schema.
    fn plan(filter: &EventFilter, after_cursor: bool) -> String {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for migration in SqliteStore::MIGRATIONS {
            conn.execute_batch(migration.sql).unwrap();
        }
        let sql = list_events_sql(filter, after_cursor, true);
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = explain.parameter_count();
        let values: Vec<String> = (0..params).map(|i| i.to_string()).collect();
        let rows = explain
            .query_map(rusqlite::params_from_iter(values.iter()), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn filtered_event_listings_use_their_index() {
        let contact = EventFilter {
            contact_id: Some("c".into()),
            ..Default::default()
        };
        assert!(
            plan(&contact, true)
                .contains("INDEX events_contact (project_id=? AND contact_id=? AND id<?)")
        );
        let name = EventFilter {
            name: Some("signup".into()),
            since: Some(0),
            ..Default::default()
        };
        assert!(plan(&name, false).contains("INDEX events_name (project_id=? AND name=?)"));
        let both = EventFilter {
            contact_id: Some("c".into()),
            name: Some("signup".into()),
            until: Some(0),
            ..Default::default()
        };
        assert!(plan(&both, false).contains("INDEX events_contact"));
        let none = plan(&EventFilter::default(), true);
        assert!(
            none.contains("PRIMARY KEY (project_id=? AND id<?)"),
            "{none}"
        );
        assert!(
            !none.contains("TEMP B-TREE"),
            "sorted by the key, not afterwards: {none}"
        );
    }
}

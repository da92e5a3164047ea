//! The embedded default: one SQLite file in WAL mode, with one writer task
//! that commits many requests' events in one transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use crate::sql_store::{Migration, impl_sql_store};

pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    ingest_queue: mpsc::Sender<IngestJob>,
}

/// One request's events waiting for the writer, and where to send the result.
struct IngestJob {
    project_id: String,
    events: Vec<NewEvent>,
    now: i64,
    reply: oneshot::Sender<crate::StoreResult<Vec<crate::EventOutcome>>>,
}

/// Jobs taken into one transaction at most (bounded so one commit stays short).
const MAX_JOBS_PER_COMMIT: usize = 512;
const MAX_EVENTS_PER_COMMIT: usize = 20_000;

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
    ];

    /// Opens (creating if needed) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
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
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let (ingest_queue, jobs) = mpsc::channel(4096);
        tokio::spawn(run_writer(pool.clone(), jobs));
        Ok(Self { pool, ingest_queue })
    }

    /// SQLite runs one writer at a time; the migration transaction is enough.
    async fn lock_migrations(
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), crate::StoreError> {
        Ok(())
    }

    /// Hands the events to the writer task and waits for their commit.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            project_id: project_id.to_string(),
            events,
            now,
            reply,
        };
        let stopped = || crate::StoreError::WriteFailed("the SQLite writer has stopped".into());
        self.ingest_queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The single writer: takes every job waiting, prepares each (claiming
/// idempotency keys, resolving contacts), inserts all their rows with a few
/// multi-row INSERTs, commits once, then answers each job. Nothing is
/// acknowledged before its commit; one failing job fails alone.
async fn run_writer(pool: sqlx::SqlitePool, mut jobs: mpsc::Receiver<IngestJob>) {
    while let Some(first) = jobs.recv().await {
        let mut count = first.events.len();
        let mut batch = vec![first];
        // Group commit: requests that arrive together are parsed by other
        // tasks a moment apart. Yielding lets them reach the queue so they
        // share this commit's fsync instead of each paying for one; stop as
        // soon as a yield brings nothing new.
        let mut idle_yields = 0;
        while batch.len() < MAX_JOBS_PER_COMMIT && count < MAX_EVENTS_PER_COMMIT && idle_yields < 2
        {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    batch.push(job);
                    idle_yields = 0;
                }
                Err(_) => {
                    idle_yields += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        commit_batch(&pool, batch).await;
    }
}

/// Prepares one job. A job whose preparation writes (idempotency keys, new
/// contacts) runs in a savepoint so that its failure leaves no trace; plain
/// jobs (anonymous or contact-id events) only read, and skip the savepoint.
async fn prepare_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: &IngestJob,
) -> crate::StoreResult<(Vec<crate::EventOutcome>, Vec<crate::sql_store::EventRow>)> {
    if job.events.iter().all(crate::sql_store::EventRow::is_plain) {
        return prepare_events(tx, &job.project_id, &job.events, job.now).await;
    }
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    match prepare_events(&mut savepoint, &job.project_id, &job.events, job.now).await {
        Ok(prepared) => {
            savepoint.commit().await?;
            Ok(prepared)
        }
        Err(e) => {
            let _ = savepoint.rollback().await;
            Err(e)
        }
    }
}

/// Inserts every prepared row with one statement: the rows travel as one JSON
/// array parameter expanded by `json_each`. One prepared statement serves any
/// row count, and one bind replaces up to thousands (binding hundreds of
/// parameters per statement, and preparing a statement per row count, were the
/// writer's main costs).
async fn insert_event_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[crate::sql_store::EventRow],
) -> crate::StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
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
    sqlx::query(
        "INSERT INTO events (id, project_id, name, contact_id, anonymous_id, properties, timestamp, \
         received_at, idempotency_key) \
         SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, e.value ->> 4, e.value ->> 5, \
         e.value ->> 6, e.value ->> 7, e.value ->> 8 FROM json_each(?1) AS e",
    )
    .bind(serde_json::Value::Array(array).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn commit_batch(pool: &sqlx::SqlitePool, batch: Vec<IngestJob>) {
    let fail_all = |batch: Vec<IngestJob>, reason: String| {
        for job in batch {
            let _ = job
                .reply
                .send(Err(crate::StoreError::WriteFailed(reason.clone())));
        }
    };
    // IMMEDIATE: take the write lock up front (waiting under busy_timeout), so a
    // batch that starts by reading cannot fail later with SQLITE_BUSY_SNAPSHOT
    // when another connection committed in between.
    let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, e.to_string()),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    for job in &batch {
        match prepare_job(&mut tx, job).await {
            Ok((outcomes, mut job_rows)) => {
                rows.append(&mut job_rows);
                results.push(Ok(outcomes));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if let Err(e) = insert_event_rows(&mut tx, &rows).await {
        return fail_all(batch, e.to_string());
    }
    if let Err(e) = tx.commit().await {
        return fail_all(batch, e.to_string());
    }
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
}

impl_sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

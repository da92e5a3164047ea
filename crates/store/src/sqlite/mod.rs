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

/// The single writer: takes every job waiting, commits them in one
/// transaction (each in its own savepoint, so one bad job fails alone), then
/// answers each. Nothing is acknowledged before its commit.
async fn run_writer(pool: sqlx::SqlitePool, mut jobs: mpsc::Receiver<IngestJob>) {
    while let Some(first) = jobs.recv().await {
        let mut count = first.events.len();
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT && count < MAX_EVENTS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        commit_batch(&pool, batch).await;
    }
}

async fn commit_batch(pool: &sqlx::SqlitePool, batch: Vec<IngestJob>) {
    let fail_all = |batch: Vec<IngestJob>, reason: String| {
        for job in batch {
            let _ = job
                .reply
                .send(Err(crate::StoreError::WriteFailed(reason.clone())));
        }
    };
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, e.to_string()),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in &batch {
        let outcome = match sqlx::Connection::begin(&mut *tx).await {
            Ok(mut savepoint) => {
                match ingest_in_tx(&mut savepoint, &job.project_id, &job.events, job.now).await {
                    Ok(outcomes) => savepoint
                        .commit()
                        .await
                        .map(|_| outcomes)
                        .map_err(crate::StoreError::from),
                    Err(e) => {
                        let _ = savepoint.rollback().await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(crate::StoreError::from(e)),
        };
        results.push(outcome);
    }
    if let Err(e) = tx.commit().await {
        return fail_all(batch, e.to_string());
    }
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
}

impl_sql_store!(SqliteStore, sqlx::Sqlite, "sqlite");

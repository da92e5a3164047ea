//! The SQLite event writer: one thread that commits many requests' events
//! in one transaction (group commit) and answers each after the commit.

use std::sync::Arc;

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::mpsc;

use super::direct;
use crate::areas::events::prepare_events;
use crate::areas::metrics::{RollUps, SQLITE_ROLLUPS};
use crate::ingest_queue::{self, IngestJob};

/// Jobs taken into one transaction at most (bounded so one commit stays short).
const MAX_JOBS_PER_COMMIT: usize = 512;
const MAX_EVENTS_PER_COMMIT: usize = 20_000;
/// How long the writer may wait for more jobs when clients write
/// concurrently, in steps of `COMMIT_STEP` (see `Writer::run`). Chosen by
/// measurement (docs/benchmarks.md): one fixed 200 µs wait left the CPU idle
/// while every client was already waiting; no wait commits ~10 jobs at a time.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(400);
const COMMIT_STEP: std::time::Duration = std::time::Duration::from_micros(50);

/// The single writer, on a thread of its own: takes every job waiting,
/// prepares each (claiming idempotency keys, resolving contacts), inserts all
/// their rows with one statement, commits once, then answers each job.
/// Nothing is acknowledged before its commit; a refused job fails alone.
///
/// On-disk databases are committed on this thread through its own
/// connection ([`direct`]): no round trip to a sqlx worker thread. In-memory
/// databases (tests) go through sqlx, driven from here with the runtime's
/// handle. Both hold the store's write turn, so other write transactions
/// queue fairly. Each commit's size and duration go to `stats` (`/metrics`).
pub(super) struct Writer {
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) pool: sqlx::SqlitePool,
    pub(super) write_turn: Arc<tokio::sync::Mutex<()>>,
    pub(super) queued_jobs: Arc<crate::job_signals::QueuedJobs>,
    pub(super) stats: Arc<crate::ingest_queue::GroupCommitStats>,
}

impl Writer {
    pub(super) fn run(
        self,
        mut direct: Option<direct::DirectWriter>,
        mut jobs: mpsc::Receiver<IngestJob>,
    ) {
        let Writer {
            runtime,
            pool,
            write_turn,
            queued_jobs,
            stats,
        } = self;
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
            let committing = std::time::Instant::now();
            let newest = batch.iter().map(|job| job.now).max().unwrap_or_default();
            let lookups = batch.iter().any(|job| {
                job.events
                    .iter()
                    .any(crate::columns::EventRow::needs_lookups)
            });
            if let Some(direct) = direct.as_mut() {
                // Recorded before the jobs are answered: a client that has its
                // answer finds its commit in `/metrics`.
                let record = || stats.record(count, committing);
                let committed = if lookups {
                    direct.commit_with_lookups(batch, record)
                } else {
                    direct.commit(batch, record)
                };
                if let Err(e) = committed {
                    tracing::warn!(error = %e, "direct SQLite commit failed; reopening");
                    direct.reset();
                } else if lookups {
                    // Only events naming a contact add notes, and only they
                    // need lookups: anonymous batches skip the check.
                    direct.move_contact_notes_if_due();
                    direct.move_claims_if_due(newest);
                }
                // Still holding the write turn: the flag is this batch's.
                queued_jobs.committed();
                drop(turn);
                continue;
            }
            conn = runtime.block_on(async {
                let connection = match conn.take() {
                    Some(c) => c,
                    None => match pool.acquire().await {
                        Ok(c) => c,
                        Err(e) => {
                            stats.record(count, committing);
                            fail_all(batch, &e.to_string());
                            return None;
                        }
                    },
                };
                commit_batch(connection, batch, lookups, || {
                    stats.record(count, committing)
                })
                .await
            });
            queued_jobs.committed();
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

type Prepared = (Vec<crate::EventOutcome>, Vec<crate::columns::EventRow>);

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
    if job
        .events
        .iter()
        .all(crate::columns::EventRow::prepares_without_writing)
    {
        return prepare_events::<Sqlite>(conn, &job.project_id, &job.events, job.now)
            .await
            .map_err(classify);
    }
    sqlx::raw_sql("SAVEPOINT ingest_job")
        .execute(&mut *conn)
        .await
        .map_err(broken)?;
    match prepare_events::<Sqlite>(conn, &job.project_id, &job.events, job.now).await {
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
    answering: impl FnOnce(),
) -> Option<PoolConnection<Sqlite>> {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    conn.close_on_drop();
    answering();
    fail_all(batch, reason);
    None
}

/// The rows of a commit as one JSON array, the single parameter of
/// [`INSERT_EVENTS`]. One prepared statement serves any row count, and one
/// bind replaces up to thousands (binding hundreds of parameters per
/// statement, and preparing a statement per row count, were the writer's main
/// costs).
pub(crate) fn rows_as_json(rows: &[crate::columns::EventRow]) -> String {
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
///
/// `answering` runs once the batch is committed or given up, before any job
/// is answered.
async fn commit_batch(
    mut conn: PoolConnection<Sqlite>,
    batch: Vec<IngestJob>,
    with_lookups: bool,
    answering: impl FnOnce(),
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
        return abandon(conn, batch, &e.to_string(), answering).await;
    }
    for job in &batch {
        match prepare_job(&mut conn, job).await {
            Ok((outcomes, mut job_rows)) => {
                rows.append(&mut job_rows);
                results.push(Ok(outcomes));
            }
            Err(JobFailure::Rejected(e)) => results.push(Err(e)),
            Err(JobFailure::Broken(e)) => {
                return abandon(conn, batch, &e.to_string(), answering).await;
            }
        }
    }
    // Without lookups every job yields rows, so `rows` is empty only after
    // a transaction was begun above.
    let written = match RollUps::of(&rows) {
        Err(e) => return abandon(conn, batch, &e.to_string(), answering).await,
        Ok(None) => sqlx::raw_sql("COMMIT")
            .execute(&mut *conn)
            .await
            .map(|_| ()),
        Ok(Some(rollups)) => {
            // The events are ?1; the roll-up statements' ?1 and ?2 become ?2 and ?3.
            let rollup_sql: Vec<String> = SQLITE_ROLLUPS
                .iter()
                .map(|sql| sql.replace("?2", "?3").replace("?1", "?2"))
                .collect();
            let statement = format!(
                "{begin_first}{INSERT_EVENTS}; {}; COMMIT",
                rollup_sql.join("; ")
            );
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(rows_as_json(&rows))
                .bind(rollups.hours)
                .bind(rollups.presence)
                .execute(&mut *conn)
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = written {
        return abandon(conn, batch, &e.to_string(), answering).await;
    }
    answering();
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
    Some(conn)
}

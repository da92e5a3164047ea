//! The durable job queue (`jobs`) that advances workflows: a run's job,
//! and the jobs event and contact triggers write in their own transactions.
//! Workers claim due jobs with a lease (`locked_until`; `FOR UPDATE SKIP
//! LOCKED` on PostgreSQL) rather than a transaction held open during a
//! webhook call.

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;

use super::workflow_runs::WorkflowRun;
use crate::StoreResult;
use crate::backend::{Backend, Run, WriteTx};

/// The job kind that advances a run.
pub const RUN_JOB: &str = "workflow_run";
/// The job kind an event trigger writes with the event (migration 0020):
/// `subject_id` is `event id/workflow id`.
pub const EVENT_JOB: &str = "workflow_event";
/// The job kind a contact write makes for a contact trigger: `subject_id`
/// is `contact id/workflow id/unique`, `payload` what changed.
pub const CONTACT_JOB: &str = "workflow_contact";
/// The job queue at one moment, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobQueueStats {
    /// Every job, due or not (a run's `wait` keeps its job until then).
    pub queued: i64,
    /// Jobs due now that no worker holds.
    pub due: i64,
    /// Jobs a worker holds under a live lease.
    pub running: i64,
    /// When the longest-waiting due job became due.
    pub oldest_due_at: Option<UnixMillis>,
}

/// A claimed job.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub project_id: String,
    pub subject_id: String,
    /// Claims so far, this one included, that never finished.
    pub claims: i64,
    /// What a contact trigger saw (JSON), for `workflow_contact` jobs.
    pub payload: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    kind: String,
    project_id: String,
    subject_id: String,
    claims: i64,
    payload: Option<String>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Claims up to `limit` due jobs for `worker` until `now + lease_ms`,
    /// none of the projects in `skip` (those with their share running).
    async fn claim_jobs(
        &self,
        worker: &str,
        now: UnixMillis,
        lease_ms: i64,
        limit: i64,
        skip: &[String],
    ) -> StoreResult<Vec<Job>>;
    /// When the next job is due (to sleep until then), if any.
    async fn next_job_at(&self) -> StoreResult<Option<UnixMillis>>;
    /// How many jobs wait, are due or are held, and the oldest due one.
    async fn job_queue_stats(&self, now: UnixMillis) -> StoreResult<JobQueueStats>;
    /// Wakes the worker when a commit queued jobs (this process's on
    /// SQLite; any instance's on PostgreSQL).
    fn job_signals(&self) -> crate::JobSignals;
    /// Gives a job back without progress (its workflow is paused): due
    /// again at `at`, its claims reset.
    async fn release_job(&self, job: &Job, worker: &str, at: UnixMillis) -> StoreResult<()>;
    /// Removes a job whose run is gone or over.
    async fn drop_job(&self, job: &Job, worker: &str) -> StoreResult<()>;
}

/// Queues (or moves) the job that advances `run`, due at `at`.
pub(crate) async fn schedule<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    run: &WorkflowRun,
    at: UnixMillis,
) -> StoreResult<()> {
    sqlx::query::<DB>(
        "INSERT INTO jobs (id, kind, project_id, subject_id, run_at, locked_until, locked_by, \
         claims, created_at) VALUES ($1, $2, $3, $4, $5, NULL, NULL, 0, $5) \
         ON CONFLICT (kind, subject_id) DO UPDATE SET run_at = $5, locked_until = NULL, \
         locked_by = NULL, claims = 0",
    )
    .arg(crate::new_id())
    .arg(RUN_JOB)
    .arg(&run.project_id)
    .arg(&run.id)
    .arg(at)
    .run(conn)
    .await?;
    Ok(())
}

/// Removes the job of a run that is over.
pub(crate) async fn unschedule<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    run_id: &str,
) -> StoreResult<()> {
    sqlx::query::<DB>("DELETE FROM jobs WHERE kind = $1 AND subject_id = $2")
        .arg(RUN_JOB)
        .arg(run_id)
        .run(conn)
        .await?;
    Ok(())
}

/// Called in a contact write's transaction: a job for each active
/// workflow whose contact trigger the write sets off (`before`: the fields
/// before the write, `None` for a new contact).
pub(crate) async fn record_contact_triggers<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    contact: &crate::Contact,
    before: Option<&keyflow_core::contacts::ContactFields>,
    depth: i64,
) -> StoreResult<()> {
    let triggers: Vec<(String, Option<String>, Option<bool>)> = sqlx::query::<DB>(
        "SELECT workflow_id, property, subscribed FROM workflow_contact_triggers \
         WHERE project_id = $1",
    )
    .arg(&contact.project_id)
    .all(&mut *conn)
    .await?;
    for (workflow_id, property, subscribed) in triggers {
        let payload = match (property, subscribed) {
            (Some(property), _) => {
                let old = before.and_then(|b| b.properties.get(&property));
                let new = contact.fields.properties.get(&property);
                if old == new {
                    continue;
                }
                serde_json::json!({"depth": depth, "property": property, "value": new})
            }
            (None, Some(wanted)) => {
                let was = before.is_some_and(|b| b.subscribed);
                if was == contact.fields.subscribed || contact.fields.subscribed != wanted {
                    continue;
                }
                serde_json::json!({"depth": depth, "subscribed": wanted})
            }
            (None, None) => continue,
        };
        sqlx::query::<DB>(
            "INSERT INTO jobs (id, kind, project_id, subject_id, run_at, locked_until, \
             locked_by, claims, created_at, payload) VALUES ($1, $2, $3, $4, $5, NULL, NULL, 0, $5, $6)",
        )
        .arg(crate::new_id())
        .arg(CONTACT_JOB)
        .arg(&contact.project_id)
        .arg(format!("{}/{workflow_id}/{}", contact.id, crate::new_id()))
        .arg(contact.updated_at)
        .arg(payload.to_string())
        .run(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> JobStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn claim_jobs(
        &self,
        worker: &str,
        now: UnixMillis,
        lease_ms: i64,
        limit: i64,
        skip: &[String],
    ) -> StoreResult<Vec<Job>> {
        let mut tx = self.begin_write().await?;
        let skipped = (0..skip.len())
            .map(|i| format!("${}", i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE jobs SET locked_until = $1, locked_by = $2, claims = claims + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE run_at <= $3 \
             AND (locked_until IS NULL OR locked_until <= $3) {} ORDER BY run_at LIMIT $4 {}) \
             RETURNING id, kind, project_id, subject_id, claims, payload",
            if skip.is_empty() {
                String::new()
            } else {
                format!("AND project_id NOT IN ({skipped})")
            },
            B::SKIP_LOCKED
        );
        let mut query = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(now + lease_ms)
            .arg(worker)
            .arg(now)
            .arg(limit);
        for project in skip {
            query = query.arg(project);
        }
        let rows: Vec<JobRow> = query.all(&mut tx).await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| Job {
                id: r.id,
                kind: r.kind,
                project_id: r.project_id,
                subject_id: r.subject_id,
                claims: r.claims,
                payload: r.payload,
            })
            .collect())
    }

    fn job_signals(&self) -> crate::JobSignals {
        B::job_signals(self)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn next_job_at(&self) -> StoreResult<Option<UnixMillis>> {
        let mut conn = self.pool().acquire().await?;
        // Two reads an index answers (`jobs_due`, `jobs_leases`): the first
        // free job, and the first lease to run out. (One MIN over an
        // expression read the whole queue at every look of every worker.)
        let (free,): (Option<i64>,) =
            sqlx::query::<B::Db>("SELECT MIN(run_at) FROM jobs WHERE locked_until IS NULL")
                .one(&mut conn)
                .await?;
        let (leased,): (Option<i64>,) = sqlx::query::<B::Db>(
            "SELECT MIN(locked_until) FROM jobs WHERE locked_until IS NOT NULL",
        )
        .one(&mut conn)
        .await?;
        Ok(match (free, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn job_queue_stats(&self, now: UnixMillis) -> StoreResult<JobQueueStats> {
        let mut conn = self.pool().acquire().await?;
        // One pass over the queue, at scrape time only.
        let (queued, due, running, oldest): (i64, Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query::<B::Db>(
                "SELECT COUNT(*), \
                 SUM(CASE WHEN run_at <= $1 AND (locked_until IS NULL OR locked_until <= $1) \
                     THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN locked_until > $1 THEN 1 ELSE 0 END), \
                 MIN(CASE WHEN run_at <= $1 AND (locked_until IS NULL OR locked_until <= $1) \
                     THEN run_at END) \
                 FROM jobs",
            )
            .arg(now)
            .one(&mut conn)
            .await?;
        Ok(JobQueueStats {
            queued,
            due: due.unwrap_or(0),
            running: running.unwrap_or(0),
            oldest_due_at: oldest,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn release_job(&self, job: &Job, worker: &str, at: UnixMillis) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "UPDATE jobs SET run_at = $3, locked_until = NULL, locked_by = NULL, claims = 0 \
             WHERE id = $1 AND locked_by = $2",
        )
        .arg(&job.id)
        .arg(worker)
        .arg(at)
        .run(&mut tx)
        .await?;
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn drop_job(&self, job: &Job, worker: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>("DELETE FROM jobs WHERE id = $1 AND locked_by = $2")
            .arg(&job.id)
            .arg(worker)
            .run(&mut tx)
            .await?;
        tx.commit().await
    }
}

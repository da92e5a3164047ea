//! Workflow runs (SPEC §10): started with their job (see [`super::jobs`])
//! in one transaction; a worker that claimed the job saves each step's
//! outcome together with the job's next time, only while its lease is still
//! its own.

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;
use keyflow_core::workflows::Reentry;
use keyflow_core::workflows::runs::{RunStatus, StepPath};
use serde_json::Value;

use super::audit::{commit_if, write_audit};
use super::jobs::{Job, RUN_JOB, schedule, unschedule};

mod rows;
use crate::backend::{Backend, Run, WriteTx};
use crate::columns::{page_limit, to_json};
use crate::{AuditEntry, Page, StoreResult};
use rows::*;

/// How long an API trigger's `Idempotency-Key` replays its first answer.
pub const IDEMPOTENCY_MS: i64 = 24 * 3_600_000;

#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowRun {
    pub id: String,
    pub project_id: String,
    pub workflow_id: String,
    pub version: i64,
    pub contact_id: String,
    /// What started it, as the API shows it: `{"type", "event_id"?, "variables"?}`.
    pub trigger: Value,
    /// What the trigger knew, for conditions and templates: `{"event":
    /// {"name", "properties"}?, "variables"?}`.
    pub facts: Value,
    pub status: RunStatus,
    /// The step it runs next (`None` once finished).
    pub position: Option<StepPath>,
    /// How many workflow steps led to this run (loop guard).
    pub depth: i64,
    pub error: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
}

/// A step a run reached.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStep {
    pub path: String,
    pub step_type: String,
    /// `running`, `waiting`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<UnixMillis>,
    pub started_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
}

/// One try of a webhook step.
#[derive(Clone, Debug, PartialEq)]
pub struct RunAttempt {
    pub path: String,
    pub attempt: i64,
    pub at: UnixMillis,
    pub status_code: Option<i64>,
    pub duration_ms: i64,
    /// The first 1 KiB of the answer.
    pub response: Option<String>,
    pub error: Option<String>,
}

/// Why a run was not started.
#[derive(Clone, Debug, PartialEq)]
pub enum StartRefusal {
    /// `one_active_run`: this run of the contact is still going.
    ActiveRun(String),
    /// `once`: the contact has had a run.
    AlreadyRan,
    /// The contact started the cap's number of runs in the last hour.
    HourlyCap,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StartOutcome {
    Started,
    /// The same idempotency key started this run in the last 24 h.
    Replayed(Box<WorkflowRun>),
    Refused(StartRefusal),
}

/// What a worker saves after advancing a run: the run as it is now, the
/// step it worked on, the attempt it made, and what becomes of the job.
#[derive(Debug)]
pub struct Progress<'a> {
    pub run: &'a WorkflowRun,
    pub steps: &'a [RunStep],
    pub attempt: Option<&'a RunAttempt>,
    pub job: JobNext,
}

/// What becomes of a job after a save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobNext {
    /// The worker goes on with the run: its lease is extended to this time.
    Continue { lease_until: UnixMillis },
    /// Due again at this time (a wait, a retry); the lease ends.
    At(UnixMillis),
    /// The run is over: the job is removed.
    Done,
}

/// Which runs of a workflow to list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub contact_id: Option<String>,
}

#[async_trait]
pub trait WorkflowRunStore: Send + Sync {
    /// Starts `run` (with its job, due now) unless `reentry`, the hourly cap
    /// or a replayed `idempotency_key` says otherwise. Checked and written in
    /// one transaction, serialised per workflow.
    async fn start_run(
        &self,
        run: &WorkflowRun,
        reentry: Reentry,
        idempotency_key: Option<&str>,
        hourly_cap: i64,
    ) -> StoreResult<StartOutcome>;
    /// Saves a run's progress and its job's next time in one transaction,
    /// if `worker` still holds the job's lease (`false`: it does not; nothing
    /// written).
    async fn save_progress(
        &self,
        job: &Job,
        worker: &str,
        progress: Progress<'_>,
    ) -> StoreResult<bool>;
    async fn workflow_run(&self, project_id: &str, id: &str) -> StoreResult<Option<WorkflowRun>>;
    /// The steps a run reached and every attempt, in order.
    async fn run_steps(&self, run_id: &str) -> StoreResult<(Vec<RunStep>, Vec<RunAttempt>)>;
    /// A workflow's runs, newest first.
    async fn workflow_runs(
        &self,
        workflow_id: &str,
        filter: &RunFilter,
        page: &Page,
    ) -> StoreResult<Vec<WorkflowRun>>;
    /// Ends an active run as `cancelled` (its job removed), with its audit
    /// entry (none when `audit` is `None`: an archive cancels its runs
    /// under its own entry). `false`: it was not active.
    async fn cancel_run(
        &self,
        run: &WorkflowRun,
        now: UnixMillis,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<bool>;
    /// Cancels every active run of a workflow; how many.
    async fn cancel_workflow_runs(&self, workflow_id: &str, now: UnixMillis) -> StoreResult<u64>;
    /// Resumes a failed run at its failed step now. `false`: it was not failed.
    async fn retry_run(
        &self,
        run: &WorkflowRun,
        now: UnixMillis,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Deletes runs that finished before `before`, with their steps and
    /// attempts, and the versions no run needs any more; how many runs.
    async fn purge_runs(&self, before: UnixMillis, now: UnixMillis) -> StoreResult<u64>;
    /// The run an API trigger's `Idempotency-Key` started, if any.
    async fn run_by_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> StoreResult<Option<WorkflowRun>>;
    /// Runs of the project's workflows created since `since`, counted by
    /// workflow and status (the dashboard's last-24-hours figures).
    async fn run_counts_since(
        &self,
        project_id: &str,
        since: UnixMillis,
    ) -> StoreResult<Vec<(String, String, i64)>>;
    /// What an event trigger needs of a stored event: its name, contact and
    /// properties (JSON text).
    async fn trigger_event(
        &self,
        project_id: &str,
        event_id: &str,
    ) -> StoreResult<Option<(String, Option<String>, String)>>;
}

#[async_trait]
impl<B: Backend> WorkflowRunStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn start_run(
        &self,
        run: &WorkflowRun,
        reentry: Reentry,
        idempotency_key: Option<&str>,
        hourly_cap: i64,
    ) -> StoreResult<StartOutcome> {
        let mut tx = self.begin_write().await?;
        B::lock_workflow(&mut tx, &run.workflow_id).await?;
        if let Some(key) = idempotency_key {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE workflow_id = $1 AND idempotency_key = $2"
            );
            let earlier: Option<RunRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
                .arg(&run.workflow_id)
                .arg(key)
                .optional(&mut tx)
                .await?;
            if let Some(earlier) = earlier {
                if earlier.created_at > run.created_at - IDEMPOTENCY_MS {
                    return Ok(StartOutcome::Replayed(Box::new(earlier.into_model()?)));
                }
                // Older than a day: the key is free again.
                sqlx::query::<B::Db>(
                    "UPDATE workflow_runs SET idempotency_key = NULL WHERE id = $1",
                )
                .arg(&earlier.id)
                .run(&mut tx)
                .await?;
            }
        }
        let refusal = match reentry {
            Reentry::EveryTime => None,
            Reentry::OneActiveRun => sqlx::query::<B::Db>(
                "SELECT id FROM workflow_runs WHERE workflow_id = $1 AND contact_id = $2 \
                 AND status IN ('running', 'waiting') LIMIT 1",
            )
            .arg(&run.workflow_id)
            .arg(&run.contact_id)
            .optional::<(String,)>(&mut tx)
            .await?
            .map(|(id,)| StartRefusal::ActiveRun(id)),
            // Every run start is noted there, and outlives the runs' retention.
            Reentry::Once => sqlx::query::<B::Db>(
                "SELECT contact_id FROM workflow_entries WHERE workflow_id = $1 AND contact_id = $2",
            )
            .arg(&run.workflow_id)
            .arg(&run.contact_id)
            .optional::<(String,)>(&mut tx)
            .await?
            .map(|_| StartRefusal::AlreadyRan),
        };
        if let Some(refusal) = refusal {
            return Ok(StartOutcome::Refused(refusal));
        }
        let (recent,): (i64,) = sqlx::query::<B::Db>(
            "SELECT COUNT(*) FROM workflow_runs WHERE workflow_id = $1 AND contact_id = $2 \
             AND created_at > $3",
        )
        .arg(&run.workflow_id)
        .arg(&run.contact_id)
        .arg(run.created_at - 3_600_000)
        .one(&mut tx)
        .await?;
        if recent >= hourly_cap {
            return Ok(StartOutcome::Refused(StartRefusal::HourlyCap));
        }
        sqlx::query::<B::Db>(
            "INSERT INTO workflow_entries (workflow_id, contact_id, first_run_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .arg(&run.workflow_id)
        .arg(&run.contact_id)
        .arg(run.created_at)
        .run(&mut tx)
        .await?;
        sqlx::query::<B::Db>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO workflow_runs ({RUN_COLUMNS}, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )))
        .arg(&run.id)
        .arg(&run.project_id)
        .arg(&run.workflow_id)
        .arg(run.version)
        .arg(&run.contact_id)
        .arg(to_json(&run.trigger)?)
        .arg(to_json(&run.facts)?)
        .arg(run.status.as_str())
        .arg(position_json(run)?)
        .arg(run.depth)
        .arg(&run.error)
        .arg(run.created_at)
        .arg(run.updated_at)
        .arg(run.finished_at)
        .arg(idempotency_key)
        .run(&mut tx)
        .await?;
        schedule::<B::Db>(&mut tx, run, run.created_at).await?;
        tx.commit().await?;
        Ok(StartOutcome::Started)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn save_progress(
        &self,
        job: &Job,
        worker: &str,
        progress: Progress<'_>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        // Still ours? (A lease that ran out may have been claimed again.)
        let held = sqlx::query::<B::Db>(
            "UPDATE jobs SET locked_until = CASE WHEN $3 > 0 THEN $3 ELSE locked_until END \
             WHERE id = $1 AND locked_by = $2",
        )
        .arg(&job.id)
        .arg(worker)
        .arg(match progress.job {
            JobNext::Continue { lease_until } => lease_until,
            JobNext::At(_) | JobNext::Done => 0,
        })
        .run(&mut tx)
        .await?;
        if held != 1 {
            // The call was made all the same (a cancel or another worker
            // took the job meanwhile): keep its record with the run, and
            // its step where no worker recorded it yet.
            if let Some(attempt) = progress.attempt {
                for step in progress.steps {
                    write_step::<B::Db>(&mut tx, &progress.run.id, step, false).await?;
                }
                insert_attempt::<B::Db>(&mut tx, &progress.run.id, attempt).await?;
                tx.commit().await?;
            }
            return Ok(false);
        }
        write_run::<B::Db>(&mut tx, progress.run).await?;
        for step in progress.steps {
            write_step::<B::Db>(&mut tx, &progress.run.id, step, true).await?;
        }
        if let Some(attempt) = progress.attempt {
            insert_attempt::<B::Db>(&mut tx, &progress.run.id, attempt).await?;
        }
        match progress.job {
            JobNext::Continue { .. } => {}
            JobNext::At(at) => schedule::<B::Db>(&mut tx, progress.run, at).await?,
            JobNext::Done => unschedule::<B::Db>(&mut tx, &progress.run.id).await?,
        }
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn workflow_run(&self, project_id: &str, id: &str) -> StoreResult<Option<WorkflowRun>> {
        let mut conn = self.pool().acquire().await?;
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE project_id = $1 AND id = $2");
        let row: Option<RunRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(id)
            .optional(&mut conn)
            .await?;
        row.map(RunRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn run_steps(&self, run_id: &str) -> StoreResult<(Vec<RunStep>, Vec<RunAttempt>)> {
        let mut conn = self.pool().acquire().await?;
        let steps: Vec<StepRow> = sqlx::query::<B::Db>(
            "SELECT path, step_type, status, attempts, next_attempt_at, started_at, finished_at \
             FROM workflow_run_steps WHERE run_id = $1 ORDER BY started_at, path",
        )
        .arg(run_id)
        .all(&mut conn)
        .await?;
        let attempts: Vec<AttemptRow> = sqlx::query::<B::Db>(
            "SELECT path, attempt, at, status_code, duration_ms, response, error \
             FROM workflow_run_attempts WHERE run_id = $1 ORDER BY at, attempt",
        )
        .arg(run_id)
        .all(&mut conn)
        .await?;
        Ok((
            steps
                .into_iter()
                .map(|s| RunStep {
                    path: s.path,
                    step_type: s.step_type,
                    status: s.status,
                    attempts: s.attempts,
                    next_attempt_at: s.next_attempt_at,
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                })
                .collect(),
            attempts
                .into_iter()
                .map(|a| RunAttempt {
                    path: a.path,
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    duration_ms: a.duration_ms,
                    response: a.response,
                    error: a.error,
                })
                .collect(),
        ))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn workflow_runs(
        &self,
        workflow_id: &str,
        filter: &RunFilter,
        page: &Page,
    ) -> StoreResult<Vec<WorkflowRun>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE workflow_id = $1 \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR contact_id = $3) \
             AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        );
        let rows: Vec<RunRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(workflow_id)
            .arg(filter.status.map(RunStatus::as_str))
            .arg(&filter.contact_id)
            .arg(&page.cursor)
            .arg(page_limit(page.limit))
            .all(&mut conn)
            .await?;
        rows.into_iter().map(RunRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn cancel_run(
        &self,
        run: &WorkflowRun,
        now: UnixMillis,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        // The job first, then the run: the order a worker's save takes them
        // in, so the two cannot deadlock on PostgreSQL.
        unschedule::<B::Db>(&mut tx, &run.id).await?;
        let cancelled = sqlx::query::<B::Db>(
            "UPDATE workflow_runs SET status = 'cancelled', position = NULL, updated_at = $2, \
             finished_at = $2 WHERE id = $1 AND status IN ('running', 'waiting')",
        )
        .arg(&run.id)
        .arg(now)
        .run(&mut tx)
        .await?
            == 1;
        if !cancelled {
            // Not active (its job, if any, was stale): nothing else changes.
            tx.commit().await?;
            return Ok(false);
        }
        match audit {
            Some(audit) => commit_if::<B::Db>(tx, cancelled, audit).await,
            None => tx.commit().await.map(|()| cancelled),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn cancel_workflow_runs(&self, workflow_id: &str, now: UnixMillis) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "DELETE FROM jobs WHERE kind = $1 AND subject_id IN (SELECT id FROM workflow_runs \
             WHERE workflow_id = $2 AND status IN ('running', 'waiting'))",
        )
        .arg(RUN_JOB)
        .arg(workflow_id)
        .run(&mut tx)
        .await?;
        let cancelled = sqlx::query::<B::Db>(
            "UPDATE workflow_runs SET status = 'cancelled', position = NULL, updated_at = $2, \
             finished_at = $2 WHERE workflow_id = $1 AND status IN ('running', 'waiting')",
        )
        .arg(workflow_id)
        .arg(now)
        .run(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(cancelled)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn retry_run(
        &self,
        run: &WorkflowRun,
        now: UnixMillis,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let resumed = sqlx::query::<B::Db>(
            "UPDATE workflow_runs SET status = 'running', error = NULL, updated_at = $2, \
             finished_at = NULL WHERE id = $1 AND status = 'failed' AND position IS NOT NULL",
        )
        .arg(&run.id)
        .arg(now)
        .run(&mut tx)
        .await?
            == 1;
        if resumed {
            schedule::<B::Db>(&mut tx, run, now).await?;
            write_audit::<B::Db>(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(resumed)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn run_by_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> StoreResult<Option<WorkflowRun>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE workflow_id = $1 AND idempotency_key = $2"
        );
        let row: Option<RunRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(workflow_id)
            .arg(key)
            .optional(&mut conn)
            .await?;
        row.map(RunRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn run_counts_since(
        &self,
        project_id: &str,
        since: UnixMillis,
    ) -> StoreResult<Vec<(String, String, i64)>> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "SELECT workflow_id, status, COUNT(*) FROM workflow_runs \
             WHERE project_id = $1 AND created_at >= $2 GROUP BY workflow_id, status",
        )
        .arg(project_id)
        .arg(since)
        .all(&mut conn)
        .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn trigger_event(
        &self,
        project_id: &str,
        event_id: &str,
    ) -> StoreResult<Option<(String, Option<String>, String)>> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "SELECT name, contact_id, properties FROM events WHERE project_id = $1 AND id = $2",
        )
        .arg(project_id)
        .arg(event_id)
        .optional(&mut conn)
        .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn purge_runs(&self, before: UnixMillis, now: UnixMillis) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let old = "SELECT id FROM workflow_runs WHERE finished_at < $1";
        for table in ["workflow_run_attempts", "workflow_run_steps"] {
            sqlx::query::<B::Db>(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE run_id IN ({old})"
            )))
            .arg(before)
            .run(&mut tx)
            .await?;
        }
        let purged = sqlx::query::<B::Db>("DELETE FROM workflow_runs WHERE finished_at < $1")
            .arg(before)
            .run(&mut tx)
            .await?;
        // Versions no run needs any more: not the current one, none of the
        // remaining runs on it, replaced over an hour ago (a run that began
        // on it just before its replacement has committed by then).
        sqlx::query::<B::Db>(
            "DELETE FROM workflow_versions WHERE \
             version < (SELECT w.version FROM workflows w WHERE w.id = workflow_versions.workflow_id) \
             AND NOT EXISTS (SELECT 1 FROM workflow_runs r \
                 WHERE r.workflow_id = workflow_versions.workflow_id \
                 AND r.version = workflow_versions.version) \
             AND EXISTS (SELECT 1 FROM workflow_versions n \
                 WHERE n.workflow_id = workflow_versions.workflow_id \
                 AND n.version > workflow_versions.version AND n.created_at < $1)",
        )
        .arg(now - 3_600_000)
        .run(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(purged)
    }
}

//! A run's rows: how runs, steps and attempts are read back (decoded from
//! their columns) and written (a step's record, an attempt, the run).

use keyflow_core::workflows::runs::RunStatus;

use super::{RunAttempt, RunStep, WorkflowRun};
use crate::backend::Run;
use crate::columns::{from_json, to_json};
use crate::{StoreError, StoreResult};

pub(super) const RUN_COLUMNS: &str = "id, project_id, workflow_id, version, contact_id, trigger_json, \
     facts_json, status, position, depth, error, created_at, updated_at, finished_at";

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    pub(super) id: String,
    pub(super) project_id: String,
    pub(super) workflow_id: String,
    pub(super) version: i64,
    pub(super) contact_id: String,
    pub(super) trigger_json: String,
    pub(super) facts_json: String,
    pub(super) status: String,
    pub(super) position: Option<String>,
    pub(super) depth: i64,
    pub(super) error: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) finished_at: Option<i64>,
}

impl RunRow {
    pub(super) fn into_model(self) -> StoreResult<WorkflowRun> {
        Ok(WorkflowRun {
            status: RunStatus::parse(&self.status).ok_or_else(|| {
                StoreError::Corrupt(format!("run {}: status {:?}", self.id, self.status))
            })?,
            trigger: from_json("trigger_json", &self.trigger_json)?,
            facts: from_json("facts_json", &self.facts_json)?,
            position: self
                .position
                .as_deref()
                .map(|p| from_json("position", p))
                .transpose()?,
            id: self.id,
            project_id: self.project_id,
            workflow_id: self.workflow_id,
            version: self.version,
            contact_id: self.contact_id,
            depth: self.depth,
            error: self.error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct StepRow {
    pub(super) path: String,
    pub(super) step_type: String,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) next_attempt_at: Option<i64>,
    pub(super) started_at: i64,
    pub(super) finished_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub(super) struct AttemptRow {
    pub(super) path: String,
    pub(super) attempt: i64,
    pub(super) at: i64,
    pub(super) status_code: Option<i64>,
    pub(super) duration_ms: i64,
    pub(super) response: Option<String>,
    pub(super) error: Option<String>,
}

/// Records where a run's step is; `overwrite: false` keeps a record
/// already there (another worker's).
pub(super) async fn write_step<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    run_id: &str,
    step: &RunStep,
    overwrite: bool,
) -> StoreResult<()> {
    macro_rules! insert_step {
        () => {
            "INSERT INTO workflow_run_steps (run_id, path, step_type, status, attempts, \
             next_attempt_at, started_at, finished_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE EXISTS (SELECT 1 FROM workflow_runs WHERE id = $1) "
        };
    }
    let sql = if overwrite {
        concat!(
            insert_step!(),
            "ON CONFLICT (run_id, path) DO UPDATE SET status = $4, attempts = $5, \
             next_attempt_at = $6, finished_at = $8"
        )
    } else {
        concat!(insert_step!(), "ON CONFLICT DO NOTHING")
    };
    sqlx::query::<DB>(sql)
        .arg(run_id)
        .arg(&step.path)
        .arg(&step.step_type)
        .arg(&step.status)
        .arg(step.attempts)
        .arg(step.next_attempt_at)
        .arg(step.started_at)
        .arg(step.finished_at)
        .run(conn)
        .await?;
    Ok(())
}

/// Keeps one webhook attempt with its run (if the run is still there; an
/// attempt already kept under its number stays as it is).
pub(super) async fn insert_attempt<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    run_id: &str,
    attempt: &RunAttempt,
) -> StoreResult<()> {
    sqlx::query::<DB>(
        "INSERT INTO workflow_run_attempts (run_id, path, attempt, at, status_code, \
         duration_ms, response, error) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM workflow_runs WHERE id = $1) \
         ON CONFLICT DO NOTHING",
    )
    .arg(run_id)
    .arg(&attempt.path)
    .arg(attempt.attempt)
    .arg(attempt.at)
    .arg(attempt.status_code)
    .arg(attempt.duration_ms)
    .arg(&attempt.response)
    .arg(&attempt.error)
    .run(conn)
    .await?;
    Ok(())
}

pub(super) fn position_json(run: &WorkflowRun) -> StoreResult<Option<String>> {
    run.position.as_ref().map(to_json).transpose()
}

/// The run's changing columns, written as they are in `run`.
pub(super) async fn write_run<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    run: &WorkflowRun,
) -> StoreResult<()> {
    sqlx::query::<DB>(
        "UPDATE workflow_runs SET status = $2, position = $3, error = $4, updated_at = $5, \
         finished_at = $6 WHERE id = $1",
    )
    .arg(&run.id)
    .arg(run.status.as_str())
    .arg(position_json(run)?)
    .arg(&run.error)
    .arg(run.updated_at)
    .arg(run.finished_at)
    .run(conn)
    .await?;
    Ok(())
}

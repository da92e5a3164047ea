//! Workflow runs (SPEC §10): starting them, and the worker that advances
//! them from the durable job queue in the store.
//!
//! Every instance runs one worker. It claims due jobs with a lease, so a
//! run is advanced by one instance at a time and taken over if that
//! instance dies. It wakes at once when a commit queues jobs (an event or
//! contact write that triggers a workflow, an API trigger: the store's
//! [`keyflow_store::JobSignals`], on PostgreSQL from every instance), when
//! this instance retries a run, and when the next job falls due; otherwise
//! it looks every `Config::workflow_poll_ms`, in case a wake-up was lost.

pub mod delivery;
pub mod executor;
mod triggers;

use std::time::Duration;

use keyflow_core::workflows::Reentry;
use keyflow_core::workflows::runs::{self, RunStatus};
use keyflow_store::{StartOutcome, Workflow, WorkflowRun, new_id};
use serde_json::Value;

use crate::state::SharedState;

/// Jobs one instance advances at once, and of one project.
const CAPACITY: usize = 16;
const PER_PROJECT: usize = 4;
/// Runs one contact may start of one workflow in an hour (loop guard).
pub const HOURLY_CAP: i64 = 50;
/// How often finished runs past their retention are deleted.
const PURGE_EVERY_MS: i64 = 3_600_000;

/// What a new run starts from.
pub struct NewRun {
    pub contact_id: String,
    /// As the API shows it: `{"type", "event_id"?, "variables"?}`.
    pub trigger: Value,
    /// For conditions and templates: `{"event"?, "variables"?}`.
    pub facts: Value,
    pub depth: i64,
}

/// Starts a run of `workflow` (its current version) and wakes the worker.
pub async fn start(
    state: &SharedState,
    workflow: &Workflow,
    new: NewRun,
    idempotency_key: Option<&str>,
) -> keyflow_store::StoreResult<(WorkflowRun, StartOutcome)> {
    let now = state.now_ms();
    let run = WorkflowRun {
        id: new_id(),
        project_id: workflow.project_id.clone(),
        workflow_id: workflow.id.clone(),
        version: workflow.version,
        contact_id: new.contact_id,
        trigger: new.trigger,
        facts: new.facts,
        status: RunStatus::Running,
        position: runs::first(&workflow.steps),
        depth: new.depth,
        error: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    let reentry: Reentry = workflow.reentry;
    let outcome = state
        .store
        .start_run(&run, reentry, idempotency_key, HOURLY_CAP)
        .await?;
    if outcome == StartOutcome::Started {
        state.workflow_wake.notify_one();
    }
    Ok((run, outcome))
}

/// The worker: claims due jobs and advances their runs until `stop`. Up
/// to [`CAPACITY`] jobs run at once, at most [`PER_PROJECT`] of one
/// project's, and a free place is filled as soon as it frees up, so one
/// project's slow receivers cannot hold every other project's runs.
pub async fn run_worker(state: SharedState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let worker = format!("worker_{}", uuid::Uuid::new_v4().simple());
    let mut last_purge = 0;
    let mut running = tokio::task::JoinSet::new();
    let mut per_project: std::collections::HashMap<String, usize> = Default::default();
    let signals = state.store.job_signals();
    let poll = Duration::from_millis(state.config.workflow_poll_ms.max(20));
    loop {
        if *stop.borrow() {
            while running.join_next().await.is_some() {}
            return;
        }
        let now = state.now_ms();
        // A read first: claiming is a write, and most looks find nothing due.
        let next = state.store.next_job_at().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read the workflow job queue");
            None
        });
        let free = CAPACITY.saturating_sub(running.len());
        if free > 0 && next.is_some_and(|at| at <= now) {
            let limit = i64::try_from(free).unwrap_or(1);
            let saturated: Vec<String> = per_project
                .iter()
                .filter(|(_, n)| **n >= PER_PROJECT)
                .map(|(p, _)| p.clone())
                .collect();
            match state
                .store
                .claim_jobs(&worker, now, executor::LEASE_MS, limit, &saturated)
                .await
            {
                Ok(jobs) => {
                    for job in jobs {
                        let count = per_project.entry(job.project_id.clone()).or_default();
                        if *count >= PER_PROJECT {
                            // Its project has its share running: later (the
                            // next claims skip the project meanwhile).
                            if let Err(e) = state.store.release_job(&job, &worker, now).await {
                                tracing::warn!(error = %e, "could not give a workflow job back");
                            }
                            continue;
                        }
                        *count += 1;
                        let (state, worker, project) =
                            (state.clone(), worker.clone(), job.project_id.clone());
                        running.spawn(async move {
                            executor::advance(state, worker, job).await;
                            project
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim workflow jobs"),
            }
        }
        if now - last_purge > PURGE_EVERY_MS {
            last_purge = now;
            let days = i64::try_from(state.config.workflow_run_retention_days).unwrap_or(30);
            if let Err(e) = state.store.purge_runs(now - days * 86_400_000, now).await {
                tracing::warn!(error = %e, "could not delete old workflow runs");
            }
        }
        let until_due = match next {
            Some(at) if at > now => {
                Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(poll)
            }
            _ => poll,
        };
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(project) = done
                    && let Some(count) = per_project.get_mut(&project)
                {
                    *count = count.saturating_sub(1);
                }
            }
            () = state.workflow_wake.notified() => {}
            () = signals.next() => {}
            () = tokio::time::sleep(until_due.max(Duration::from_millis(20))) => {}
            _ = stop.changed() => {}
        }
    }
}

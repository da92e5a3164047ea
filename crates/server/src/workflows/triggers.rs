//! Runs started by what happens to contacts (SPEC §10). The store writes a
//! `workflow_event` job in the very transaction that stores a matching
//! event (migration 0020), so an acknowledged event never loses its run and
//! an idempotent repeat (no event stored) never starts a second one. Here
//! the worker takes that job: it checks the trigger's conditions on the
//! event and the contact, then starts the run under the reentry rule and
//! the loop guard.

use keyflow_core::contacts::ContactLookup;
use keyflow_core::workflows::{Trigger, WorkflowStatus, all_hold};
use keyflow_store::{Actor, AuditAction, AuditTarget, Job, StartOutcome, StartRefusal, new_id};
use serde_json::{Value, json};

use super::{NewRun, executor};
use crate::state::SharedState;

/// Starts the run an event job stands for, if it still should; the job
/// is removed either way.
pub async fn start_from_event(state: &SharedState, worker: &str, job: &Job) -> anyhow::Result<()> {
    let store = state.store.as_ref();
    if let Some((event_id, workflow_id)) = job.subject_id.split_once('/') {
        start(state, &job.project_id, event_id, workflow_id).await?;
    }
    store.drop_job(job, worker).await?;
    Ok(())
}

async fn start(
    state: &SharedState,
    project_id: &str,
    event_id: &str,
    workflow_id: &str,
) -> anyhow::Result<()> {
    let store = state.store.as_ref();
    let Some(workflow) = store.workflow(project_id, workflow_id).await? else {
        return Ok(());
    };
    let Some((name, Some(contact_id), properties)) =
        store.trigger_event(project_id, event_id).await?
    else {
        return Ok(());
    };
    // The workflow may have changed since the event was stored.
    let Trigger::Event { event, conditions } = &workflow.trigger else {
        return Ok(());
    };
    if workflow.status != WorkflowStatus::Active || *event != name {
        return Ok(());
    }
    let Some(contact) = store
        .get_contact(project_id, &ContactLookup::Id(contact_id.clone()))
        .await?
    else {
        return Ok(());
    };
    let properties: Value = serde_json::from_str(&properties).unwrap_or(Value::Null);
    let known = json!({"event": {"name": name, "properties": properties}});
    if !all_hold(conditions, &executor::facts(&contact, &known)) {
        return Ok(());
    }
    let new = NewRun {
        contact_id,
        trigger: json!({"type": "event", "event_id": event_id}),
        facts: known,
        depth: 0,
    };
    // The job's id keys the run, so a job taken twice (its lease ran out
    // mid-way) starts one run.
    let key = format!("event:{event_id}");
    let (_, outcome) = super::start(state, &workflow, new, Some(&key)).await?;
    if let StartOutcome::Refused(StartRefusal::HourlyCap) = outcome {
        skipped(state, &workflow, &contact.id, event_id, "hourly_cap").await?;
    }
    Ok(())
}

/// Says in the activity log why a run was not started (the loop guard).
async fn skipped(
    state: &SharedState,
    workflow: &keyflow_store::Workflow,
    contact_id: &str,
    event_id: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let Some(project) = state.store.get_project(&workflow.project_id).await? else {
        return Ok(());
    };
    let entry = keyflow_store::AuditEntry {
        id: new_id(),
        workspace_id: project.workspace_id,
        project_id: Some(project.id),
        at: state.now_ms(),
        actor: Actor::Workflow {
            id: workflow.id.clone(),
            name: workflow.name.clone(),
        },
        action: AuditAction::WorkflowRunSkipped.as_str().to_string(),
        target: AuditTarget {
            kind: "contact".into(),
            id: Some(contact_id.to_string()),
            name: None,
        },
        ip: None,
        details: json!({
            "reason": reason,
            "event_id": event_id,
            "message": "The contact started 50 runs of this workflow in the last hour (loop guard).",
        }),
    };
    state.store.insert_audit(&entry).await?;
    Ok(())
}

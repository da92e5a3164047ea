//! Runs started by what happens to contacts (SPEC §10). The store writes a
//! job in the very transaction that stores a matching event (a trigger on
//! `events`, migration 0020) or changes a contact's watched property or
//! subscription (the contact write itself), so an acknowledged write never
//! loses its run and an idempotent repeat (nothing stored) never starts a
//! second one. Here the worker takes that job: it checks the trigger's
//! conditions, then starts the run under the reentry rule and the loop
//! guard (5 levels of runs started by workflows' own changes; 50 runs per
//! contact, workflow and hour), noting in the activity log a run it skips.

use keyflow_core::contacts::ContactLookup;
use keyflow_core::workflows::{Trigger, WorkflowStatus, all_hold};

/// Levels of runs started by workflow steps' own changes (SPEC §10).
pub const MAX_DEPTH: i64 = 5;
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
        let mut details = hourly_cap();
        details["event_id"] = json!(event_id);
        skipped(state, &workflow, &contact.id, details).await?;
    }
    Ok(())
}

/// Starts the run a contact job stands for (a `contact_updated` or
/// `subscription_changed` trigger), if it still should; the job is
/// removed either way.
pub async fn start_from_contact(
    state: &SharedState,
    worker: &str,
    job: &Job,
) -> anyhow::Result<()> {
    let mut parts = job.subject_id.splitn(3, '/');
    if let (Some(contact_id), Some(workflow_id)) = (parts.next(), parts.next()) {
        let seen: Value = job
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Value::Null);
        from_contact(state, job, contact_id, workflow_id, &seen).await?;
    }
    state.store.drop_job(job, worker).await?;
    Ok(())
}

async fn from_contact(
    state: &SharedState,
    job: &Job,
    contact_id: &str,
    workflow_id: &str,
    seen: &Value,
) -> anyhow::Result<()> {
    let store = state.store.as_ref();
    let Some(workflow) = store.workflow(&job.project_id, workflow_id).await? else {
        return Ok(());
    };
    if workflow.status != WorkflowStatus::Active {
        return Ok(());
    }
    let kind = match &workflow.trigger {
        Trigger::ContactUpdated { property, to } => {
            let value = seen.get("value").cloned().unwrap_or(Value::Null);
            let same_property = seen.get("property").and_then(Value::as_str) == Some(property);
            if !same_property || to.as_ref().is_some_and(|to| *to != value) {
                return Ok(());
            }
            "contact_updated"
        }
        Trigger::SubscriptionChanged { subscribed } => {
            if seen.get("subscribed").and_then(Value::as_bool) != Some(*subscribed) {
                return Ok(());
            }
            "subscription_changed"
        }
        _ => return Ok(()),
    };
    // Changes made by a workflow's steps start runs one level deeper.
    let depth = seen.get("depth").and_then(Value::as_i64).unwrap_or(0);
    if depth > MAX_DEPTH {
        return skipped(
            state,
            &workflow,
            contact_id,
            json!({"reason": "depth", "depth": depth,
            "message": "Workflows changing contacts started runs 5 levels deep (loop guard)."}),
        )
        .await;
    }
    let new = NewRun {
        contact_id: contact_id.to_string(),
        trigger: json!({"type": kind}),
        facts: json!({}),
        depth,
    };
    let key = format!("change:{}", job.subject_id);
    let (_, outcome) = super::start(state, &workflow, new, Some(&key)).await?;
    if let StartOutcome::Refused(StartRefusal::HourlyCap) = outcome {
        skipped(state, &workflow, contact_id, hourly_cap()).await?;
    }
    Ok(())
}

fn hourly_cap() -> Value {
    json!({"reason": "hourly_cap",
           "message": "The contact started 50 runs of this workflow in the last hour (loop guard)."})
}

/// Says in the activity log why a run was not started (the loop guard),
/// once an hour per workflow, contact and reason on this instance.
async fn skipped(
    state: &SharedState,
    workflow: &keyflow_store::Workflow,
    contact_id: &str,
    details: Value,
) -> anyhow::Result<()> {
    let reason = details["reason"].as_str().unwrap_or_default();
    let noted = format!("{}/{contact_id}/{reason}", workflow.id);
    if state.workflow_skips.contains_key(&noted) {
        return Ok(());
    }
    state.workflow_skips.insert(noted, ());
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
        details,
    };
    state.store.insert_audit(&entry).await?;
    Ok(())
}

//! Workflows (SPEC §10): create, change, archive, rotate the signing
//! secret. Definitions are checked by `keyflow_core::workflows`; a change
//! of trigger or steps makes a new version (runs finish on the version they
//! started on). Changes apply to the revision they read: two racing
//! changes are applied one after the other, never one lost.

use base64::Engine;
use keyflow_core::workflows::{
    Reentry, Step, Trigger, WorkflowStatus, check_name, parse_steps, parse_trigger,
};
use keyflow_core::{ErrorCode, FieldError};
use keyflow_store::{AuditAction, AuditTarget, Project, Workflow, new_id};
use serde_json::{Value, json};

use super::Ctx;
use super::error::{OpError, OpResult};
use crate::changes::Change;

/// How long the previous secret keeps signing after a rotation (SPEC §10).
pub const PREVIOUS_SECRET_HOURS: i64 = 24;
/// Random bytes of a signing secret (Standard Webhooks: 24 to 64).
const SECRET_BYTES: usize = 32;
/// The most the steps of one version may take as JSON: every version is
/// kept (runs finish on theirs), so versions are kept small.
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;
/// Workflows a project may have that are not archived (each can start
/// runs for every event or contact change).
pub const MAX_WORKFLOWS: usize = 100;

fn json_size(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Attempts at a change that keeps meeting concurrent ones: each round
/// one of the racing changes lands, so N racing changes need at most N.
const ATTEMPTS: usize = 32;

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_signing_secret() -> OpResult<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| OpError::internal("secret generation", &e))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// What a secret is shown as once it has been revealed: `whsec_` and six
/// more characters, as keys show their first 12.
pub fn secret_prefix(secret: &str) -> &str {
    secret.get(..12).unwrap_or(secret)
}

/// A workflow's fields as a create or change request gives them (JSON as
/// sent, checked here).
#[derive(Debug, Default)]
pub struct WorkflowInput {
    pub name: Option<Value>,
    pub status: Option<Value>,
    pub reentry: Option<Value>,
    pub trigger: Option<Value>,
    pub steps: Option<Value>,
}

/// A checked change: `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct WorkflowChange {
    name: Option<String>,
    status: Option<WorkflowStatus>,
    reentry: Option<Reentry>,
    trigger: Option<Trigger>,
    steps: Option<Vec<Step>>,
}

/// Checks every given field, reporting every problem at once; `required`
/// fields must be present (creation: name, trigger, steps).
pub fn validate(input: &WorkflowInput, creating: bool) -> Result<WorkflowChange, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut change = WorkflowChange::default();
    let missing = |field: &str, errors: &mut Vec<FieldError>| {
        errors.push(FieldError::new(field, "is required"));
    };
    match &input.name {
        Some(Value::String(name)) => match check_name(name) {
            Ok(name) => change.name = Some(name),
            Err(e) => errors.push(e),
        },
        Some(_) => errors.push(FieldError::new("name", "must be text")),
        None if creating => missing("name", &mut errors),
        None => {}
    }
    match &input.status {
        Some(Value::String(text)) => match WorkflowStatus::parse(text) {
            Some(WorkflowStatus::Archived) => errors.push(FieldError::new(
                "status",
                "archive a workflow with DELETE /v1/workflows/{id}",
            )),
            Some(status) => change.status = Some(status),
            None => errors.push(FieldError::new("status", "must be draft, active or paused")),
        },
        Some(_) => errors.push(FieldError::new("status", "must be draft, active or paused")),
        None => {}
    }
    match &input.reentry {
        Some(Value::String(text)) if Reentry::parse(text).is_some() => {
            change.reentry = Reentry::parse(text);
        }
        Some(_) => errors.push(FieldError::new(
            "reentry",
            "must be every_time, one_active_run or once",
        )),
        None => {}
    }
    match input.trigger.as_ref().map(parse_trigger) {
        Some(Ok(trigger)) => change.trigger = Some(trigger),
        Some(Err(mut e)) => errors.append(&mut e),
        None if creating => missing("trigger", &mut errors),
        None => {}
    }
    match input.steps.as_ref().map(parse_steps) {
        Some(Ok(steps)) if json_size(&steps) > MAX_DEFINITION_BYTES => {
            errors.push(FieldError::new(
                "steps",
                format!(
                    "the steps take {} bytes as JSON; at most {MAX_DEFINITION_BYTES}",
                    json_size(&steps)
                ),
            ))
        }
        Some(Ok(steps)) => change.steps = Some(steps),
        Some(Err(mut e)) => errors.append(&mut e),
        None if creating => missing("steps", &mut errors),
        None => {}
    }
    if errors.is_empty() {
        Ok(change)
    } else {
        Err(errors)
    }
}

fn target(workflow: &Workflow) -> AuditTarget {
    AuditTarget {
        kind: "workflow".into(),
        id: Some(workflow.id.clone()),
        name: Some(workflow.name.clone()),
    }
}

fn announce(ctx: &Ctx<'_>, workflow: &Workflow) {
    ctx.bus.publish(Change::WorkflowChanged {
        project_id: workflow.project_id.clone(),
        workflow_id: workflow.id.clone(),
    });
}

/// A workflow just created or whose secret was rotated, with the secret,
/// shown once.
pub struct WithSecret {
    pub workflow: Workflow,
    pub secret: String,
}

impl std::fmt::Debug for WithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WithSecret({})", self.workflow.id)
    }
}

/// Creates a workflow (version 1, `draft` unless a status is given),
/// audited as `workflow.created`.
pub async fn create(
    ctx: &Ctx<'_>,
    project: &Project,
    change: WorkflowChange,
) -> OpResult<WithSecret> {
    let (Some(name), Some(trigger), Some(steps)) = (change.name, change.trigger, change.steps)
    else {
        return Err(OpError::new(
            ErrorCode::ValidationFailed,
            "A workflow needs a name, a trigger and steps.",
        ));
    };
    let page = keyflow_store::Page {
        limit: 1000,
        cursor: None,
    };
    let live = ctx
        .store
        .workflows(&project.id, &page)
        .await?
        .iter()
        .filter(|w| w.status != WorkflowStatus::Archived)
        .count();
    if live >= MAX_WORKFLOWS {
        return Err(OpError::new(
            ErrorCode::Conflict,
            format!("A project may have at most {MAX_WORKFLOWS} workflows that are not archived."),
        ));
    }
    let secret = new_signing_secret()?;
    let workflow = Workflow {
        id: new_id(),
        project_id: project.id.clone(),
        name,
        status: change.status.unwrap_or(WorkflowStatus::Draft),
        reentry: change.reentry.unwrap_or_default(),
        version: 1,
        revision: 1,
        trigger,
        steps,
        signing_secret: secret.clone(),
        previous_signing_secret: None,
        created_at: ctx.now,
        updated_at: ctx.now,
    };
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        AuditAction::WorkflowCreated,
        target(&workflow),
        json!({
            "status": workflow.status.as_str(),
            "version": 1,
            "trigger": trigger_type(&workflow.trigger),
            "signing_secret_prefix": secret_prefix(&secret),
        }),
    );
    ctx.store.create_workflow(&workflow, &entry).await?;
    announce(ctx, &workflow);
    Ok(WithSecret { workflow, secret })
}

/// The trigger's `type`.
pub fn trigger_type(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Event { .. } => "event",
        Trigger::ContactUpdated { .. } => "contact_updated",
        Trigger::SubscriptionChanged { .. } => "subscription_changed",
        Trigger::Api => "api",
    }
}

/// The project's workflow, or 404.
pub async fn find(
    store: &dyn keyflow_store::Store,
    project_id: &str,
    id: &str,
) -> OpResult<Workflow> {
    store
        .workflow(project_id, id)
        .await?
        .ok_or_else(|| OpError::not_found("workflow"))
}

/// Applies `edit` to the stored workflow and writes it, retrying on a
/// concurrent change; `edit` returns the audit action and details, or
/// `None` when there is nothing to write.
async fn apply<F>(ctx: &Ctx<'_>, project: &Project, id: &str, mut edit: F) -> OpResult<Workflow>
where
    F: FnMut(&mut Workflow) -> OpResult<Option<(AuditAction, Value)>>,
{
    for _ in 0..ATTEMPTS {
        let mut workflow = find(ctx.store, &project.id, id).await?;
        let Some((action, details)) = edit(&mut workflow)? else {
            return Ok(workflow);
        };
        workflow.revision += 1;
        workflow.updated_at = ctx.now.max(workflow.updated_at);
        let entry = ctx.audit(
            &project.workspace_id,
            Some(&project.id),
            action,
            target(&workflow),
            details,
        );
        if ctx.store.update_workflow(&workflow, &entry).await? {
            announce(ctx, &workflow);
            return Ok(workflow);
        }
    }
    Err(OpError::new(
        ErrorCode::Conflict,
        "The workflow kept changing while this change was applied; try again.",
    ))
}

fn refuse_archived(workflow: &Workflow) -> OpResult<()> {
    if workflow.status == WorkflowStatus::Archived {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "This workflow is archived; archived workflows cannot be changed.",
        ));
    }
    Ok(())
}

/// Changes a workflow; a new trigger or new steps make a new version.
/// Audited as `workflow.updated` with the fields that changed.
pub async fn update(
    ctx: &Ctx<'_>,
    project: &Project,
    id: &str,
    change: WorkflowChange,
) -> OpResult<Workflow> {
    apply(ctx, project, id, |workflow| {
        refuse_archived(workflow)?;
        let mut changed = Vec::new();
        if let Some(name) = &change.name
            && *name != workflow.name
        {
            workflow.name = name.clone();
            changed.push("name");
        }
        if let Some(status) = change.status
            && status != workflow.status
        {
            workflow.status = status;
            changed.push("status");
        }
        if let Some(reentry) = change.reentry
            && reentry != workflow.reentry
        {
            workflow.reentry = reentry;
            changed.push("reentry");
        }
        let mut new_version = false;
        if let Some(trigger) = &change.trigger
            && *trigger != workflow.trigger
        {
            workflow.trigger = trigger.clone();
            changed.push("trigger");
            new_version = true;
        }
        if let Some(steps) = &change.steps
            && *steps != workflow.steps
        {
            workflow.steps = steps.clone();
            changed.push("steps");
            new_version = true;
        }
        if changed.is_empty() {
            return Ok(None);
        }
        if new_version {
            workflow.version += 1;
        }
        Ok(Some((
            AuditAction::WorkflowUpdated,
            json!({
                "changed": changed,
                "status": workflow.status.as_str(),
                "version": workflow.version,
            }),
        )))
    })
    .await
}

/// Archives a workflow (no new runs; SPEC §10: running ones are
/// cancelled). Archiving an archived workflow changes nothing.
pub async fn archive(ctx: &Ctx<'_>, project: &Project, id: &str) -> OpResult<Workflow> {
    let archived = apply(ctx, project, id, |workflow| {
        if workflow.status == WorkflowStatus::Archived {
            return Ok(None);
        }
        let before = workflow.status;
        workflow.status = WorkflowStatus::Archived;
        Ok(Some((
            AuditAction::WorkflowArchived,
            json!({ "previous_status": before.as_str() }),
        )))
    })
    .await?;
    // Its running runs end (a worker that has one in hand cancels it when
    // it next looks at the workflow).
    ctx.store
        .cancel_workflow_runs(&archived.id, ctx.now)
        .await?;
    Ok(archived)
}

/// Replaces the signing secret; the previous one keeps signing for 24 h.
pub async fn rotate_secret(ctx: &Ctx<'_>, project: &Project, id: &str) -> OpResult<WithSecret> {
    let secret = new_signing_secret()?;
    let until = ctx.now + PREVIOUS_SECRET_HOURS * 3_600_000;
    let workflow = apply(ctx, project, id, |workflow| {
        refuse_archived(workflow)?;
        let previous = std::mem::replace(&mut workflow.signing_secret, secret.clone());
        let details = json!({
            "signing_secret_prefix": secret_prefix(&secret),
            "previous_prefix": secret_prefix(&previous),
            "previous_signs_until": keyflow_core::timefmt::format_rfc3339(until),
        });
        workflow.previous_signing_secret = Some((previous, until));
        Ok(Some((AuditAction::WorkflowSecretRotated, details)))
    })
    .await?;
    Ok(WithSecret { workflow, secret })
}

/// Why a trigger call started no run (`409`, with `details.reason`).
fn not_started(reason: &str, message: &str) -> OpError {
    OpError::new(ErrorCode::Conflict, message).with_details(json!({ "reason": reason }))
}

/// Checks that `workflow` may be started through the API now.
pub fn check_api_trigger(workflow: &Workflow) -> OpResult<()> {
    if workflow.trigger != Trigger::Api {
        return Err(not_started(
            "not_api_trigger",
            "This workflow starts on its own trigger, not through the API.",
        ));
    }
    if workflow.status != WorkflowStatus::Active {
        return Err(not_started(
            "not_active",
            "Only active workflows start runs; activate it first.",
        ));
    }
    Ok(())
}

/// Whether a trigger repeating an earlier run's `Idempotency-Key` asks for
/// the same thing: the same contact and variables. A different request with
/// a used key is refused, as Stripe does, rather than answered with a run
/// that is not its own.
pub fn same_trigger(
    earlier: &keyflow_store::WorkflowRun,
    contact_id: Option<&str>,
    variables: &serde_json::Map<String, serde_json::Value>,
) -> OpResult<()> {
    let same_variables = match earlier.trigger.get("variables") {
        Some(serde_json::Value::Object(before)) => before == variables,
        None | Some(serde_json::Value::Null) => variables.is_empty(),
        Some(_) => false,
    };
    if contact_id == Some(earlier.contact_id.as_str()) && same_variables {
        return Ok(());
    }
    Err(OpError::new(
        ErrorCode::Conflict,
        "This Idempotency-Key started a run for a different contact or variables in the last \
         24 hours; use a new key for a new request.",
    )
    .with_details(json!({"reason": "idempotency_key_reused", "run_id": earlier.id})))
}

/// The `409` for a run the store did not start.
pub fn refused_start(refusal: &keyflow_store::StartRefusal) -> OpError {
    match refusal {
        keyflow_store::StartRefusal::ActiveRun(run_id) => OpError::new(
            ErrorCode::Conflict,
            "The contact already has a running run of this workflow (reentry one_active_run).",
        )
        .with_details(json!({"reason": "active_run", "run_id": run_id})),
        keyflow_store::StartRefusal::AlreadyRan => not_started(
            "already_ran",
            "The contact has already had a run of this workflow (reentry once).",
        ),
        keyflow_store::StartRefusal::HourlyCap => not_started(
            "hourly_cap",
            "The contact has started 50 runs of this workflow in the last hour (loop guard).",
        ),
    }
}

fn run_target(run: &keyflow_store::WorkflowRun) -> AuditTarget {
    AuditTarget {
        kind: "workflow_run".into(),
        id: Some(run.id.clone()),
        name: None,
    }
}

/// Cancels an active run, audited as `workflow_run.cancelled`.
pub async fn cancel_run(
    ctx: &Ctx<'_>,
    project: &Project,
    run: &keyflow_store::WorkflowRun,
) -> OpResult<()> {
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        AuditAction::WorkflowRunCancelled,
        run_target(run),
        json!({"workflow_id": run.workflow_id, "previous_status": run.status.as_str()}),
    );
    if ctx.store.cancel_run(run, ctx.now, Some(&entry)).await? {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorCode::Conflict,
            "Only a running or waiting run can be cancelled.",
        ))
    }
}

/// Resumes a failed run at its failed step now, audited as
/// `workflow_run.retried`.
pub async fn retry_run(
    ctx: &Ctx<'_>,
    project: &Project,
    run: &keyflow_store::WorkflowRun,
) -> OpResult<()> {
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        AuditAction::WorkflowRunRetried,
        run_target(run),
        json!({"workflow_id": run.workflow_id}),
    );
    if ctx.store.retry_run(run, ctx.now, &entry).await? {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorCode::Conflict,
            "Only a failed run can be retried.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_follow_standard_webhooks() {
        let secret = new_signing_secret().unwrap();
        let encoded = secret.strip_prefix("whsec_").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(bytes.len(), SECRET_BYTES);
        assert_ne!(secret, new_signing_secret().unwrap());
        assert_eq!(secret_prefix(&secret).len(), 12);
    }
}

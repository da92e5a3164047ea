//! Workflow runs over the API (SPEC §10): start one through an `api`
//! trigger, list a workflow's runs, read one with its steps and attempts,
//! cancel, retry.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyflow_core::FieldError;
use keyflow_core::contacts::{ContactInput, ContactLookup, validate_contact};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::workflows::runs::RunStatus;
use keyflow_store::{RunAttempt, RunFilter, RunStep, StartOutcome, UpsertActions, WorkflowRun};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::keys::caller_project;
use super::views::ListPage;
use super::{page_from_query, page_response};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations::workflows as workflow_ops;
use crate::state::SharedState;
use crate::workflows::NewRun;

/// An `Idempotency-Key` at most this long.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A run as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = WorkflowRun)]
pub struct RunView<'a> {
    id: &'a str,
    /// Always `workflow_run`.
    object: &'static str,
    workflow_id: &'a str,
    /// The version of the workflow it follows to the end.
    version: i64,
    contact_id: &'a str,
    /// `{"type", "event_id"?, "variables"?}`.
    #[schema(value_type = Object)]
    trigger: &'a Value,
    /// `running`, `waiting`, `completed`, `failed` or `cancelled`.
    status: &'static str,
    /// Why it failed or was cancelled, when it says.
    error: Option<&'a str>,
    /// The steps it reached (on `GET /v1/workflow-runs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<StepView<'a>>>,
    created_at: String,
    finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = WorkflowRunStep)]
pub struct StepView<'a> {
    /// Where the step is in the definition, e.g. `2.then.0`.
    path: &'a str,
    #[serde(rename = "type")]
    step_type: &'a str,
    /// `succeeded`, `waiting`, `retrying` or `failed`.
    status: &'a str,
    attempts: i64,
    next_attempt_at: Option<String>,
    /// Each webhook attempt: time, status code, duration, the first 1 KiB
    /// of the answer, error.
    attempt_log: Vec<AttemptView<'a>>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = WorkflowRunAttempt)]
pub struct AttemptView<'a> {
    attempt: i64,
    at: String,
    status_code: Option<i64>,
    duration_ms: i64,
    response: Option<&'a str>,
    error: Option<&'a str>,
}

fn run_view<'a>(
    run: &'a WorkflowRun,
    steps: Option<(&'a [RunStep], &'a [RunAttempt])>,
) -> RunView<'a> {
    RunView {
        id: &run.id,
        object: "workflow_run",
        workflow_id: &run.workflow_id,
        version: run.version,
        contact_id: &run.contact_id,
        trigger: &run.trigger,
        status: run.status.as_str(),
        error: run.error.as_deref(),
        steps: steps.map(|(steps, attempts)| {
            steps
                .iter()
                .map(|s| StepView {
                    path: &s.path,
                    step_type: &s.step_type,
                    status: &s.status,
                    attempts: s.attempts,
                    next_attempt_at: s.next_attempt_at.map(format_rfc3339),
                    attempt_log: attempts
                        .iter()
                        .filter(|a| a.path == s.path)
                        .map(|a| AttemptView {
                            attempt: a.attempt,
                            at: format_rfc3339(a.at),
                            status_code: a.status_code,
                            duration_ms: a.duration_ms,
                            response: a.response.as_deref(),
                            error: a.error.as_deref(),
                        })
                        .collect(),
                })
                .collect()
        }),
        created_at: format_rfc3339(run.created_at),
        finished_at: run.finished_at.map(format_rfc3339),
    }
}

/// `POST /v1/workflows/{id}/trigger`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TriggerRequest {
    /// The contact: `{"id"}`, `{"email"}` or `{"external_id"}`; an unknown
    /// email or external id creates the contact.
    #[schema(value_type = Object)]
    contact: Value,
    /// Values for `variables.NAME` in conditions and templates.
    #[schema(value_type = Option<Object>)]
    variables: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct TriggeredView {
    run_id: String,
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/trigger",
    tag = "workflows",
    summary = "Start a run of an api-trigger workflow",
    description = "For an active workflow whose trigger is `{\"type\": \"api\"}` (else 409 with \
                   `details.reason`). An unknown email or external id creates the contact. An \
                   `Idempotency-Key` header replays the first answer for 24 hours \
                   (`Idempotent-Replayed: true`); the same key with another contact or other \
                   variables is refused (409, `idempotency_key_reused`). The reentry rule and the loop guard (50 runs \
                   per contact and workflow an hour) refuse with 409.",
    params(super::openapi::IdPath, ("Idempotency-Key" = Option<String>, Header, description = "At most 255 characters")),
    request_body = TriggerRequest,
    responses(
        (status = 202, description = "The run was started (or replayed)", body = TriggeredView),
        super::openapi::NotFound,
        (status = 409, description = "Not an active api-trigger workflow, the reentry rule or loop guard refused, or the Idempotency-Key was used for another request (details.reason)", body = crate::error::ErrorBody),
        super::openapi::Invalid,
    ),
)]
pub async fn trigger_workflow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TriggerRequest>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let (lookup, input) = contact_of(&body.contact)?;
    let variables = match body.variables {
        None => Map::new(),
        Some(Value::Object(map)) => {
            keyflow_core::json_limits::check_properties("variables", &map)
                .map_err(|e| ApiError::validation(vec![e]))?;
            map
        }
        Some(_) => return Err(ApiError::field("variables", "must be an object")),
    };
    let workflow = workflow_ops::find(state.store.as_ref(), caller.project_id(), &id).await?;
    workflow_ops::check_api_trigger(&workflow)?;
    // A repeat is answered before anything is written (no contact created).
    if let Some(key) = &key
        && let Some(earlier) = state
            .store
            .run_by_idempotency_key(&workflow.id, key)
            .await?
        && earlier.created_at > state.now_ms() - keyflow_store::areas::workflow_runs::IDEMPOTENCY_MS
    {
        // Who the trigger names, without creating anyone.
        let named = match &lookup {
            ContactLookup::Id(id) => Some(id.clone()),
            _ => state
                .store
                .get_contact(caller.project_id(), &lookup)
                .await?
                .map(|c| c.id),
        };
        workflow_ops::same_trigger(&earlier, named.as_deref(), &variables)?;
        return Ok(triggered(earlier.id, true));
    }
    let project = caller_project(&state, &caller).await?;
    let contact = match (&lookup, input) {
        (ContactLookup::Id(_), _) => state
            .store
            .get_contact(&project.id, &lookup)
            .await?
            .ok_or_else(|| ApiError::not_found("contact"))?,
        (_, Some(input)) => {
            let changes =
                validate_contact(&input, true, "contact.").map_err(ApiError::validation)?;
            crate::operations::contacts::upsert_contact(
                &caller.ctx(&state),
                &project.workspace_id,
                &project.id,
                &changes,
                UpsertActions::CONTACT,
                json!({"via": "workflow_trigger", "workflow_id": workflow.id}),
            )
            .await?
            .contact
        }
        (_, None) => return Err(ApiError::field("contact", "name the contact")),
    };
    let new = NewRun {
        contact_id: contact.id.clone(),
        trigger: json!({"type": "api", "variables": variables}),
        facts: json!({"variables": variables}),
        depth: 0,
    };
    let (run, outcome) = crate::workflows::start(&state, &workflow, new, key.as_deref()).await?;
    let (run_id, replayed) = match outcome {
        StartOutcome::Started => (run.id, false),
        StartOutcome::Replayed(earlier) => {
            workflow_ops::same_trigger(&earlier, Some(&contact.id), &variables)?;
            (earlier.id, true)
        }
        StartOutcome::Refused(refusal) => return Err(workflow_ops::refused_start(&refusal).into()),
    };
    Ok(triggered(run_id, replayed))
}

/// `202 {"run_id"}`, saying when it replays an earlier answer.
fn triggered(run_id: String, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(TriggeredView { run_id })).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(key.to_string())),
        _ => Err(ApiError::field(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

/// The contact a trigger names: exactly one of `id`, `email`, `external_id`.
fn contact_of(value: &Value) -> ApiResult<(ContactLookup, Option<ContactInput>)> {
    let bad = || {
        ApiError::validation(vec![FieldError::new(
            "contact",
            "must be {\"id\"}, {\"email\"} or {\"external_id\"}",
        )])
    };
    let object = value.as_object().filter(|o| o.len() == 1).ok_or_else(bad)?;
    let (name, text) = object.iter().next().ok_or_else(bad)?;
    let text = text.as_str().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    Ok(match name.as_str() {
        "id" => (ContactLookup::Id(text.to_string()), None),
        "email" => (
            ContactLookup::Email(text.to_string()),
            Some(ContactInput {
                email: Some(text.to_string()),
                ..ContactInput::default()
            }),
        ),
        "external_id" => (
            ContactLookup::ExternalId(text.to_string()),
            Some(ContactInput {
                external_id: Some(text.to_string()),
                ..ContactInput::default()
            }),
        ),
        _ => return Err(bad()),
    })
}

#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/runs",
    tag = "workflows",
    summary = "List a workflow's runs",
    description = "Newest first; `status` and `contact_id` filter.",
    params(
        super::openapi::IdPath,
        super::openapi::PageParams,
        ("status" = Option<String>, Query, description = "running, waiting, completed, failed or cancelled"),
        ("contact_id" = Option<String>, Query, description = "Only this contact's runs"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = ListPage<RunView>),
        super::openapi::NotFound,
        super::openapi::Invalid,
    ),
)]
pub async fn list_runs(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let status = query
        .get("status")
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                ApiError::field(
                    "status",
                    "must be running, waiting, completed, failed or cancelled",
                )
            })
        })
        .transpose()?;
    let workflow = workflow_ops::find(state.store.as_ref(), caller.project_id(), &id).await?;
    let filter = RunFilter {
        status,
        contact_id: query.get("contact_id").cloned(),
    };
    let runs = state
        .store
        .workflow_runs(&workflow.id, &filter, &page)
        .await?;
    Ok(page_response(
        &runs,
        &page,
        |r| &r.id,
        |r| run_view(r, None),
    ))
}

async fn load_run(state: &SharedState, caller: &Caller, id: &str) -> ApiResult<WorkflowRun> {
    state
        .store
        .workflow_run(caller.project_id(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("workflow run"))
}

async fn full_view(state: &SharedState, run: &WorkflowRun) -> ApiResult<Response> {
    let (steps, attempts) = state.store.run_steps(&run.id).await?;
    Ok(Json(run_view(run, Some((&steps, &attempts)))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/workflow-runs/{id}",
    tag = "workflows",
    summary = "Get a run with its steps and attempts",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The run", body = RunView),
        super::openapi::NotFound,
    ),
)]
pub async fn get_run(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &caller, &id).await?;
    full_view(&state, &run).await
}

#[utoipa::path(
    post,
    path = "/v1/workflow-runs/{id}/cancel",
    tag = "workflows",
    summary = "Cancel a running or waiting run",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The run, cancelled", body = RunView),
        super::openapi::NotFound,
        (status = 409, description = "The run is not running or waiting", body = crate::error::ErrorBody),
    ),
)]
pub async fn cancel_run(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    act_on_run(&state, &caller, &id, RunAction::Cancel).await
}

enum RunAction {
    Cancel,
    Retry,
}

/// Cancels or retries the caller's run `id`, and answers with it as it is now.
async fn act_on_run(
    state: &SharedState,
    caller: &Caller,
    id: &str,
    action: RunAction,
) -> ApiResult<Response> {
    let run = load_run(state, caller, id).await?;
    let project = caller_project(state, caller).await?;
    let ctx = caller.ctx(state);
    match action {
        RunAction::Cancel => workflow_ops::cancel_run(&ctx, &project, &run).await?,
        RunAction::Retry => {
            workflow_ops::retry_run(&ctx, &project, &run).await?;
            state.workflow_wake.notify_one();
        }
    }
    full_view(state, &load_run(state, caller, id).await?).await
}

#[utoipa::path(
    post,
    path = "/v1/workflow-runs/{id}/retry",
    tag = "workflows",
    summary = "Resume a failed run at its failed step now",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The run, running again", body = RunView),
        super::openapi::NotFound,
        (status = 409, description = "The run has not failed", body = crate::error::ErrorBody),
    ),
)]
pub async fn retry_run(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    act_on_run(&state, &caller, &id, RunAction::Retry).await
}

//! `/v1/workflows`: workflow definitions (SPEC §10), with the
//! `workflows:*` scopes. The signing secret is in the create and rotate
//! answers only.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::Workflow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::keys::caller_project;
use super::views::ListPage;
use super::{page_from_query, page_response};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations::workflows::{self as workflow_ops, WorkflowInput, secret_prefix};
use crate::state::SharedState;

/// A workflow as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Workflow)]
pub struct WorkflowView<'a> {
    id: &'a str,
    /// Always `workflow`.
    object: &'static str,
    name: &'a str,
    /// `draft`, `active`, `paused` or `archived`: only active workflows start runs.
    status: &'static str,
    /// `every_time`, `one_active_run` or `once`.
    reentry: &'static str,
    /// What starts a run (see docs/workflows.md, "Triggers").
    #[schema(value_type = Object)]
    trigger: Value,
    /// The steps a run takes, in order (see docs/workflows.md, "Steps"). Webhook header
    /// values read `[redacted]` for keys without `workflows:write`.
    #[schema(value_type = Vec<Object>)]
    steps: Value,
    /// 1, then +1 on each change of trigger or steps.
    version: i64,
    /// `whsec_` and the next six characters of the signing secret.
    signing_secret_prefix: &'a str,
    /// The whole signing secret: in the create and rotate answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_secret: Option<&'a str>,
    /// After a rotation, until when the previous secret also signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_signs_until: Option<String>,
    created_at: String,
    updated_at: String,
}

/// What replaces a webhook header's value for callers that may not change
/// workflows: receivers' credentials travel in headers (SPEC §10's advice),
/// and a read-only key must not learn them.
pub const REDACTED: &str = "[redacted]";

/// Replaces every webhook step's header values in `steps` (JSON) with
/// [`REDACTED`], in branches too.
pub fn redact_headers(steps: &mut Value) {
    match steps {
        Value::Array(items) => items.iter_mut().for_each(redact_headers),
        Value::Object(step) => {
            if let Some(Value::Object(headers)) = step.get_mut("headers") {
                for value in headers.values_mut() {
                    *value = Value::String(REDACTED.into());
                }
            }
            for side in ["then", "else"] {
                if let Some(list) = step.get_mut(side) {
                    redact_headers(list);
                }
            }
        }
        _ => {}
    }
}

fn can_write(caller: &Caller) -> bool {
    caller
        .key
        .key
        .scopes
        .contains(keyflow_core::Scope::WorkflowsWrite)
}

fn view<'a>(
    workflow: &'a Workflow,
    secret: Option<&'a str>,
    headers_shown: bool,
) -> WorkflowView<'a> {
    let mut steps = serde_json::to_value(&workflow.steps).unwrap_or(Value::Null);
    if !headers_shown {
        redact_headers(&mut steps);
    }
    WorkflowView {
        id: &workflow.id,
        object: "workflow",
        name: &workflow.name,
        status: workflow.status.as_str(),
        reentry: workflow.reentry.as_str(),
        trigger: serde_json::to_value(&workflow.trigger).unwrap_or(Value::Null),
        steps,
        version: workflow.version,
        signing_secret_prefix: secret_prefix(&workflow.signing_secret),
        signing_secret: secret,
        previous_secret_signs_until: workflow
            .previous_signing_secret
            .as_ref()
            .map(|(_, until)| format_rfc3339(*until)),
        created_at: format_rfc3339(workflow.created_at),
        updated_at: format_rfc3339(workflow.updated_at),
    }
}

/// `POST`/`PATCH /v1/workflows` bodies: every field as sent, checked by
/// the operations (unknown fields are ignored).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WorkflowRequest {
    /// 1 to 64 characters.
    name: Option<Value>,
    /// `draft` (default), `active` or `paused`.
    status: Option<Value>,
    /// `every_time`, `one_active_run` (default) or `once`.
    reentry: Option<Value>,
    /// `{"type": "event", "event", "where"?}`, `{"type": "contact_updated",
    /// "property", "to"?}`, `{"type": "subscription_changed", "subscribed"}`
    /// or `{"type": "api"}`.
    #[schema(value_type = Option<Object>)]
    trigger: Option<Value>,
    /// Up to 50 steps in all: `webhook`, `update_contact`, `subscribe`,
    /// `unsubscribe`, `wait`, `branch`, `exit`.
    #[schema(value_type = Option<Vec<Object>>)]
    steps: Option<Value>,
}

impl WorkflowRequest {
    fn input(self) -> WorkflowInput {
        WorkflowInput {
            name: self.name,
            status: self.status,
            reentry: self.reentry,
            trigger: self.trigger,
            steps: self.steps,
        }
    }
}

fn created(workflow: &Workflow, secret: &str, status: StatusCode) -> Response {
    (
        status,
        super::no_store(Json(view(workflow, Some(secret), true)).into_response()),
    )
        .into_response()
}

#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    summary = "Create a workflow",
    description = "Creates a workflow (version 1, `draft` unless `status` says otherwise). The \
                   answer carries the signing secret (`whsec_…`), shown only here.",
    request_body = WorkflowRequest,
    responses(
        (status = 201, description = "Created; `signing_secret` is shown only here", body = WorkflowView),
        super::openapi::Invalid,
    ),
)]
pub async fn create_workflow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<WorkflowRequest>,
) -> ApiResult<Response> {
    let change = workflow_ops::validate(&body.input(), true).map_err(ApiError::validation)?;
    let project = caller_project(&state, &caller).await?;
    let made = workflow_ops::create(&caller.ctx(&state), &project, change).await?;
    Ok(created(&made.workflow, &made.secret, StatusCode::CREATED))
}

#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    summary = "List workflows",
    description = "Newest first, archived ones included.",
    params(super::openapi::PageParams),
    responses(
        (status = 200, description = "A page of workflows", body = ListPage<WorkflowView>),
        super::openapi::Invalid,
    ),
)]
pub async fn list_workflows(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let workflows = state.store.workflows(caller.project_id(), &page).await?;
    let shown = can_write(&caller);
    Ok(page_response(
        &workflows,
        &page,
        |w| &w.id,
        |w| view(w, None, shown),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    summary = "Get a workflow",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        super::openapi::NotFound,
    ),
)]
pub async fn get_workflow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let workflow = workflow_ops::find(state.store.as_ref(), caller.project_id(), &id).await?;
    Ok(Json(view(&workflow, None, can_write(&caller))).into_response())
}

#[utoipa::path(
    patch,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    summary = "Change a workflow",
    description = "Name, status (`draft`, `active`, `paused`), trigger, steps, reentry. A \
                   change of trigger or steps makes a new version; runs finish on the version \
                   they started on. Archived workflows cannot be changed (409).",
    params(super::openapi::IdPath),
    request_body = WorkflowRequest,
    responses(
        (status = 200, description = "The workflow as changed", body = WorkflowView),
        super::openapi::NotFound,
        (status = 409, description = "The workflow is archived", body = crate::error::ErrorBody),
        super::openapi::Invalid,
    ),
)]
pub async fn update_workflow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<WorkflowRequest>,
) -> ApiResult<Response> {
    let change = workflow_ops::validate(&body.input(), false).map_err(ApiError::validation)?;
    let project = caller_project(&state, &caller).await?;
    let workflow = workflow_ops::update(&caller.ctx(&state), &project, &id, change).await?;
    Ok(Json(view(&workflow, None, true)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    summary = "Archive a workflow",
    description = "It starts no more runs and can no longer be changed; it stays listed. \
                   Archiving an archived workflow changes nothing.",
    params(super::openapi::IdPath),
    responses(
        (status = 204, description = "Archived"),
        super::openapi::NotFound,
    ),
)]
pub async fn archive_workflow(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let project = caller_project(&state, &caller).await?;
    workflow_ops::archive(&caller.ctx(&state), &project, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/signing-secret",
    tag = "workflows",
    summary = "Rotate a workflow's signing secret",
    description = "A new secret signs from now on, shown only in this answer; for 24 hours \
                   webhooks also carry a signature with the previous one.",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The workflow with its new `signing_secret`", body = WorkflowView),
        super::openapi::NotFound,
        (status = 409, description = "The workflow is archived", body = crate::error::ErrorBody),
    ),
)]
pub async fn rotate_signing_secret(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let project = caller_project(&state, &caller).await?;
    let rotated = workflow_ops::rotate_secret(&caller.ctx(&state), &project, &id).await?;
    Ok(created(&rotated.workflow, &rotated.secret, StatusCode::OK))
}

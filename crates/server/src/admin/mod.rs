//! The instance administration API (SPEC §8): `/admin/v1`, authenticated by
//! the instance's admin token and mounted only when one is configured.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyflow_core::key_settings::{CreateKeyRequest, validate_create};
use keyflow_core::{Environment, ErrorCode, Plan, Role};
use keyflow_store::Actor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::api::routes::ApiRoutes;
use crate::api::views::{
    KeyView, ListPage, OperatorView, ProjectView, WorkspaceView, issued_key_json, key_json,
    operator_json, project_json, workspace_json,
};
use crate::api::{bool_query, page_from_query, page_response, requests};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations::{keys as key_ops, tenancy};
use crate::state::SharedState;

/// The admin routes, documented, behind the admin token.
pub fn routes(state: &SharedState) -> ApiRoutes {
    let mut admin = ApiRoutes::new(utoipa::openapi::OpenApi::default())
        .admin(__path_create_workspace, create_workspace)
        .admin(__path_set_plan, set_plan)
        .admin(__path_create_project, create_project)
        .admin(__path_create_operator, create_operator)
        .admin(__path_create_key, create_key)
        .admin(__path_list_workspaces, list_workspaces)
        .admin(__path_get_workspace, get_workspace)
        .admin(__path_list_keys, list_keys)
        .admin(__path_revoke_key, revoke_key);
    admin.router = admin
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    admin
}

/// Compares digests in constant time, so neither content nor length leaks.
async fn require_admin(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let Some(expected) = &state.config.admin_token else {
        return ApiError::from_status(StatusCode::NOT_FOUND).into_response();
    };
    // Failed attempts are limited per client IP like failed key
    // authentications (SPEC §8), so the token cannot be guessed at speed.
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let ip = crate::auth::client_ip(&state, peer, req.headers());
    let now = state.now_ms();
    if crate::auth::failures_exhausted(&state, crate::auth::Failure::AdminToken, ip, now) {
        return crate::auth::too_many_failures(&state, crate::auth::Failure::AdminToken, ip, now)
            .into_response();
    }
    let presented = crate::auth::presented_key(req.headers(), false).unwrap_or_default();
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    if !bool::from(a.ct_eq(&b)) {
        return crate::auth::note_failure(
            &state,
            crate::auth::Failure::AdminToken,
            ip,
            ApiError::new(
                ErrorCode::Unauthorized,
                "Send the instance admin token as `Authorization: Bearer <token>`.",
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// The project `id`, or a 404.
async fn project(state: &SharedState, id: &str) -> ApiResult<keyflow_store::Project> {
    state
        .store
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))
}

/// `value`, or a 422 that says `field` is required.
fn required<T>(value: Option<T>, field: &str) -> ApiResult<T> {
    value.ok_or_else(|| ApiError::field(field, "is required"))
}

/// `text` parsed, `default` when absent, or a 422 naming `field` and what it accepts.
fn choice<T>(
    text: Option<&str>,
    default: Option<T>,
    parse: fn(&str) -> Option<T>,
    field: &str,
    accepted: &str,
) -> ApiResult<T> {
    match (text, default) {
        (None, Some(default)) => Ok(default),
        (text, _) => text
            .and_then(parse)
            .ok_or_else(|| ApiError::field(field, format!("must be {accepted}"))),
    }
}

const PLANS: &str = "free, pro or team";

#[derive(Deserialize, ToSchema)]
struct WorkspaceRequest {
    /// 1–100 printable characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 100)]
    name: Option<String>,
    #[schema(value_type = Option<PlanName>)]
    plan: Option<String>,
}

/// A workspace's plan.
#[derive(ToSchema)]
#[allow(dead_code)] // read only by the OpenAPI derive
#[schema(rename_all = "snake_case")]
enum PlanName {
    Free,
    Pro,
    Team,
}

#[utoipa::path(
    post,
    path = "/admin/v1/workspaces",
    summary = "Create a workspace",
    description = "`plan` defaults to `free`.",
    request_body = WorkspaceRequest,
    responses(
        (status = 201, description = "Created", body = WorkspaceView),
        crate::api::openapi::Invalid,
    ),
)]
async fn create_workspace(
    State(state): State<SharedState>,
    JsonBody(body): JsonBody<WorkspaceRequest>,
) -> ApiResult<Response> {
    let plan = choice(
        body.plan.as_deref(),
        Some(Plan::Free),
        Plan::parse,
        "plan",
        PLANS,
    )?;
    let name = required(body.name, "name")?;
    let workspace =
        tenancy::create_workspace(state.store.as_ref(), &name, plan, state.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(workspace_json(&workspace))).into_response())
}

#[derive(Deserialize, ToSchema)]
struct PlanRequest {
    #[schema(required = true, nullable = false, value_type = PlanName)]
    plan: Option<String>,
}

#[utoipa::path(
    put,
    path = "/admin/v1/workspaces/{id}/plan",
    summary = "Change a workspace's plan",
    description = "Below pro, the workspace's keys are refused with 403 `feature_not_allowed` at once.",
    params(("id" = String, Path, description = "Workspace id")),
    request_body = PlanRequest,
    responses(
        (status = 200, description = "The workspace", body = WorkspaceView),
        (status = 404, description = "No such workspace", body = crate::error::ErrorBody),
        crate::api::openapi::Invalid,
    ),
)]
async fn set_plan(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PlanRequest>,
) -> ApiResult<Response> {
    let plan = choice(body.plan.as_deref(), None, Plan::parse, "plan", PLANS)?;
    let (workspace, _) = tenancy::change_plan(
        &state.ctx(Actor::InstanceAdmin, None, state.now_ms()),
        &id,
        plan,
    )
    .await?;
    Ok(Json(workspace_json(&workspace)).into_response())
}

#[derive(Deserialize, ToSchema)]
struct ProjectRequest {
    /// 1–100 printable characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 100)]
    name: Option<String>,
    /// `live` (default) or `test`.
    #[schema(value_type = Option<EnvironmentName>)]
    environment: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)] // read only by the OpenAPI derive
#[schema(rename_all = "snake_case")]
enum EnvironmentName {
    Live,
    Test,
}

#[utoipa::path(
    post,
    path = "/admin/v1/workspaces/{id}/projects",
    summary = "Create a project",
    description = "`environment` defaults to `live`.",
    params(("id" = String, Path, description = "Workspace id")),
    request_body = ProjectRequest,
    responses(
        (status = 201, description = "Created", body = ProjectView),
        (status = 404, description = "No such workspace", body = crate::error::ErrorBody),
        crate::api::openapi::Invalid,
    ),
)]
async fn create_project(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ProjectRequest>,
) -> ApiResult<Response> {
    let environment = choice(
        body.environment.as_deref(),
        Some(Environment::Live),
        Environment::parse,
        "environment",
        "live or test",
    )?;
    let name = required(body.name, "name")?;
    let project = tenancy::create_project(
        state.store.as_ref(),
        &id,
        &name,
        environment,
        state.now_ms(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(project_json(&project))).into_response())
}

#[derive(Deserialize, ToSchema)]
struct OperatorRequest {
    #[schema(required = true, nullable = false, format = Email, max_length = 254)]
    email: Option<String>,
    /// At least 8 characters.
    #[schema(required = true, nullable = false, min_length = 8)]
    password: Option<String>,
    /// Default `member`.
    #[schema(value_type = Option<RoleName>)]
    role: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)] // read only by the OpenAPI derive
#[schema(rename_all = "snake_case")]
enum RoleName {
    Owner,
    Admin,
    Member,
}

#[utoipa::path(
    post,
    path = "/admin/v1/workspaces/{id}/operators",
    summary = "Add an operator (dashboard account) to a workspace",
    description = "`role` defaults to `member`.",
    params(("id" = String, Path, description = "Workspace id")),
    request_body = OperatorRequest,
    responses(
        (status = 201, description = "Created", body = OperatorView),
        (status = 404, description = "No such workspace", body = crate::error::ErrorBody),
        (status = 409, description = "An operator with this email exists", body = crate::error::ErrorBody),
        crate::api::openapi::Invalid,
    ),
)]
async fn create_operator(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OperatorRequest>,
) -> ApiResult<Response> {
    let role = choice(
        body.role.as_deref(),
        Some(Role::Member),
        Role::parse,
        "role",
        "owner, admin or member",
    )?;
    let email = required(body.email, "email")?;
    let password = required(body.password, "password")?;
    let created = tenancy::add_operator(
        &state.ctx(Actor::InstanceAdmin, None, state.now_ms()),
        &id,
        &email,
        password,
        role,
        tenancy::MemberAuthority::Instance,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(operator_json(&created.operator, &id, role)),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/admin/v1/projects/{id}/keys",
    summary = "Create a key in a project",
    description = "The body is the one of `POST /v1/keys`; the answer carries the full key, once.",
    params(("id" = String, Path, description = "Project id")),
    request_body = requests::CreateKey,
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = KeyView),
        (status = 404, description = "No such project", body = crate::error::ErrorBody),
        crate::api::openapi::Invalid,
    ),
)]
async fn create_key(
    State(state): State<SharedState>,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Response)> {
    let now = state.now_ms();
    let project = project(&state, &project_id).await?;
    let spec = validate_create(&body, now).map_err(ApiError::validation)?;
    let issued = key_ops::create_key(
        &state.ctx(Actor::InstanceAdmin, None, now),
        &project,
        spec,
        crate::operations::keys::KeyAuthority::Instance,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        crate::api::no_store(
            Json(issued_key_json(&issued.key, &issued.secret, &state.usage)).into_response(),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/admin/v1/workspaces",
    summary = "List workspaces",
    description = "Every workspace of the instance, newest first.",
    params(crate::api::openapi::PageParams),
    responses(
        (status = 200, description = "A page of workspaces", body = ListPage<WorkspaceView>),
        crate::api::openapi::Invalid,
    ),
)]
async fn list_workspaces(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let workspaces = state.store.list_workspaces(&page).await?;
    Ok(page_response(&workspaces, &page, |w| &w.id, workspace_json))
}

/// A workspace with its projects and operators.
#[derive(Serialize, ToSchema)]
struct WorkspaceDetail<'a> {
    #[serde(flatten)]
    workspace: WorkspaceView<'a>,
    projects: Vec<ProjectView<'a>>,
    operators: Vec<OperatorView<'a>>,
}

#[utoipa::path(
    get,
    path = "/admin/v1/workspaces/{id}",
    summary = "Get a workspace",
    description = "The workspace with its projects and its operators (and their roles).",
    params(("id" = String, Path, description = "The workspace id")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceDetail),
        (status = 404, description = "No such workspace", body = crate::error::ErrorBody),
    ),
)]
async fn get_workspace(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let workspace = state
        .store
        .get_workspace(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    let projects = state.store.list_projects(&id).await?;
    let members = state.store.list_members(&id).await?;
    Ok(Json(WorkspaceDetail {
        workspace: workspace_json(&workspace),
        projects: projects.iter().map(project_json).collect(),
        operators: members
            .iter()
            .map(|(operator, membership)| operator_json(operator, &id, membership.role))
            .collect(),
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/admin/v1/projects/{id}/keys",
    summary = "List a project's API keys",
    description = "Newest first; never the secret, which is shown only when a key is created.",
    params(
        ("id" = String, Path, description = "The project id"),
        crate::api::openapi::PageParams,
        ("include_revoked" = Option<bool>, Query, description = "Also list revoked keys"),
    ),
    responses(
        (status = 200, description = "A page of API keys", body = ListPage<KeyView>),
        (status = 404, description = "No such project", body = crate::error::ErrorBody),
        crate::api::openapi::Invalid,
    ),
)]
async fn list_keys(
    State(state): State<SharedState>,
    Path(project_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let include_revoked = bool_query(&query, "include_revoked")?;
    project(&state, &project_id).await?;
    let keys = state
        .store
        .list_api_keys(&project_id, include_revoked, &page)
        .await?;
    Ok(page_response(
        &keys,
        &page,
        |key| &key.id,
        |key| key_json(key, &state.usage),
    ))
}

#[utoipa::path(
    delete,
    path = "/admin/v1/projects/{id}/keys/{key_id}",
    summary = "Revoke an API key",
    description = "Takes effect on every instance at once; audited as `api_key.revoked` with \
                   the actor `{\"type\": \"instance_admin\"}`. Revoking a revoked key \
                   changes nothing.",
    params(
        ("id" = String, Path, description = "The project id"),
        ("key_id" = String, Path, description = "The key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such project or key", body = crate::error::ErrorBody),
    ),
)]
async fn revoke_key(
    State(state): State<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let now = state.now_ms();
    let project = project(&state, &project_id).await?;
    let key = state
        .store
        .get_api_key(&project_id, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    if key.revoked_at.is_none() {
        key_ops::revoke_key(
            &state.ctx(Actor::InstanceAdmin, None, now),
            &project.workspace_id,
            &key,
            crate::operations::keys::KeyAuthority::Instance,
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

//! The instance administration API (SPEC §8): `/admin/v1`, authenticated by
//! the instance's admin token and mounted only when one is configured.

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use keyflow_core::key_settings::{CreateKeyRequest, validate_create};
use keyflow_core::{Environment, ErrorCode, Plan, Role};
use keyflow_store::Actor;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::repr::{issued_key_json, operator_json, project_json, workspace_json};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations::{keys as key_ops, tenancy};
use crate::state::SharedState;

pub fn router(state: SharedState) -> Router<SharedState> {
    Router::new()
        .route("/admin/v1/workspaces", post(create_workspace))
        .route("/admin/v1/workspaces/{id}/plan", put(set_plan))
        .route("/admin/v1/workspaces/{id}/projects", post(create_project))
        .route("/admin/v1/workspaces/{id}/operators", post(create_operator))
        .route("/admin/v1/projects/{id}/keys", post(create_key))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
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
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
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

fn parse_plan(text: Option<&str>) -> ApiResult<Plan> {
    text.and_then(Plan::parse)
        .ok_or_else(|| ApiError::field("plan", "must be free, pro or team"))
}

#[derive(Deserialize)]
struct WorkspaceRequest {
    name: Option<String>,
    plan: Option<String>,
}

async fn create_workspace(
    State(state): State<SharedState>,
    JsonBody(body): JsonBody<WorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let plan = match body.plan.as_deref() {
        None => Plan::Free,
        some => parse_plan(some)?,
    };
    let name = body
        .name
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    let workspace =
        tenancy::create_workspace(state.store.as_ref(), &name, plan, state.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(workspace_json(&workspace))))
}

#[derive(Deserialize)]
struct PlanRequest {
    plan: Option<String>,
}

async fn set_plan(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PlanRequest>,
) -> ApiResult<Json<Value>> {
    let plan = parse_plan(body.plan.as_deref())?;
    let (workspace, _) = tenancy::change_plan(
        state.store.as_ref(),
        state.changes.as_ref(),
        &id,
        plan,
        &Actor::InstanceAdmin,
        None,
        state.now_ms(),
    )
    .await?;
    Ok(Json(workspace_json(&workspace)))
}

#[derive(Deserialize)]
struct ProjectRequest {
    name: Option<String>,
    environment: Option<String>,
}

async fn create_project(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ProjectRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let environment = match body.environment.as_deref() {
        None => Environment::Live,
        Some(text) => Environment::parse(text)
            .ok_or_else(|| ApiError::field("environment", "must be live or test"))?,
    };
    let name = body
        .name
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    let project = tenancy::create_project(
        state.store.as_ref(),
        &id,
        &name,
        environment,
        state.now_ms(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(project_json(&project))))
}

#[derive(Deserialize)]
struct OperatorRequest {
    email: Option<String>,
    password: Option<String>,
    role: Option<String>,
}

async fn create_operator(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OperatorRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let role = match body.role.as_deref() {
        None => Role::Member,
        Some(text) => Role::parse(text)
            .ok_or_else(|| ApiError::field("role", "must be owner, admin or member"))?,
    };
    let email = body
        .email
        .ok_or_else(|| ApiError::field("email", "is required"))?;
    let password = body
        .password
        .ok_or_else(|| ApiError::field("password", "is required"))?;
    let created = tenancy::add_operator(
        state.store.as_ref(),
        state.changes.as_ref(),
        &id,
        &email,
        password,
        role,
        tenancy::MemberAuthority::Instance,
        &Actor::InstanceAdmin,
        state.now_ms(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(operator_json(&created.operator, &id, role)),
    ))
}

async fn create_key(
    State(state): State<SharedState>,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Response)> {
    let now = state.now_ms();
    let project = state
        .store
        .get_project(&project_id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    let spec = validate_create(&body, now).map_err(ApiError::validation)?;
    let issued = key_ops::create_key(
        state.store.as_ref(),
        state.changes.as_ref(),
        &project,
        spec,
        &Actor::InstanceAdmin,
        crate::operations::keys::KeyAuthority::Instance,
        None,
        now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        crate::api::no_store(
            Json(issued_key_json(&issued.key, &issued.secret, &state.usage)).into_response(),
        ),
    ))
}

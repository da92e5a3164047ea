//! The Management API: `/v1/keys…` (secret keys with `keys:*`).

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::key_settings::{CreateKeyRequest, PatchKeyRequest, apply_patch, validate_create};
use keyflow_core::{ErrorCode, RateLimit};
use keyflow_store::{ApiKey, Project};
use serde::Deserialize;

use super::requests;
use super::views::{KeyView, ListPage, issued_key_json, key_json};
use super::{bool_query, page_from_query, page_response};
use crate::auth::{Caller, RateLimitTicket};
use crate::error::{ApiError, ApiResult};
use crate::json::{JsonBody, JsonOrEmpty};
use crate::operations::keys::{self as key_ops, KeyAuthority, MAX_ROLL_GRACE_SECONDS};
use crate::state::SharedState;

/// The caller's project (the key's), for operations that need its
/// workspace and environment.
pub(crate) async fn caller_project(state: &SharedState, caller: &Caller) -> ApiResult<Project> {
    state
        .store
        .get_project(caller.project_id())
        .await?
        .ok_or_else(|| ApiError::not_found("project"))
}

/// The calling key as stored now, for the checks of key and credential
/// management. Read again, not taken from the cache: a restriction narrowed
/// (or a revocation) on another instance a moment ago, whose change message
/// may still be on its way, binds at once. Management is rare; one read per
/// write is cheap for that guarantee.
pub(crate) async fn caller_as_stored(state: &SharedState, caller: &Caller) -> ApiResult<ApiKey> {
    let key = state
        .store
        .get_api_key(caller.project_id(), &caller.key.key.id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::KeyRevoked, "This API key has been revoked."))?;
    crate::auth::still_valid(&key, state.now_ms())?;
    Ok(key)
}

/// What binds the calling key when it manages keys: the key as it is
/// enforced — its rate limit the effective one (its own, else its
/// project's, else the plan's), so a key without an override cannot lift the
/// limit its project gives it — and the plan's limit.
async fn caller_bound(
    state: &SharedState,
    caller: &Caller,
) -> ApiResult<(ApiKey, RateLimit, RateLimit)> {
    let mut bound = caller_as_stored(state, caller).await?;
    let limits = caller.limits;
    bound.settings.rate_limit = Some(crate::auth::effective_quota(
        bound.settings.rate_limit,
        Some(limits.default),
        limits.plan,
    ));
    Ok((bound, limits.plan, limits.default))
}

fn authority<'a>(
    (key, plan_limit, default_limit): &'a (ApiKey, RateLimit, RateLimit),
) -> KeyAuthority<'a> {
    KeyAuthority::Key {
        key,
        plan_limit: *plan_limit,
        default_limit: *default_limit,
    }
}

/// Spends quota for an answer that is not a 401/403 refusal: on routes that
/// spend it themselves (to keep 403s free), a 404, 409 or 422 costs like any
/// request, so an exhausted key cannot probe ids for free.
pub(crate) async fn charged<T>(ticket: &RateLimitTicket, result: ApiResult<T>) -> ApiResult<T> {
    if result.is_err() {
        ticket.consume().await?;
    }
    result
}

async fn load_key(state: &SharedState, caller: &Caller, id: &str) -> ApiResult<ApiKey> {
    state
        .store
        .get_api_key(caller.project_id(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))
}

#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    summary = "Create an API key",
    request_body = requests::CreateKey,
    responses(
        (status = 201, description = "Created; `key` is shown only here", body = KeyView),
        super::openapi::Invalid,
    ),
)]
pub async fn create_key(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Response)> {
    let now = state.now_ms();
    let spec = charged(
        &ticket,
        validate_create(&body, now).map_err(ApiError::validation),
    )
    .await?;
    let bound = caller_bound(&state, &caller).await?;
    let authority = authority(&bound);
    // An escalation is a 403 and must not spend quota: check it first.
    let spec = key_ops::narrow_spec(spec, authority)?;
    ticket.consume().await?;
    let project = caller_project(&state, &caller).await?;
    let issued = key_ops::create_key(
        &state.ctx(caller.actor(), caller.ip_string(), now),
        &project,
        spec,
        authority,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        super::no_store(
            Json(issued_key_json(&issued.key, &issued.secret, &state.usage)).into_response(),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "List API keys",
    params(super::openapi::PageParams, ("include_revoked" = Option<bool>, Query, description = "Also list revoked keys")),
    responses(
        (status = 200, description = "A page of API keys", body = ListPage<KeyView>),
        super::openapi::Invalid,
    ),
)]
pub async fn list_keys(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let include_revoked = bool_query(&query, "include_revoked")?;
    let keys = state
        .store
        .list_api_keys(caller.project_id(), include_revoked, &page)
        .await?;
    Ok(page_response(
        &keys,
        &page,
        |row| &row.id,
        |key| key_json(key, &state.usage),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Get an API key",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The key object", body = KeyView),
        super::openapi::NotFound,
    ),
)]
pub async fn get_key(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let key = load_key(&state, &caller, &id).await?;
    Ok(Json(key_json(&key, &state.usage)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/keys/self",
    tag = "keys",
    summary = "The calling key",
    responses(
        (status = 200, description = "The key object", body = KeyView),
    ),
)]
/// `GET /v1/keys/self`: any valid key may read its own object. Answered from
/// the key the auth pipeline just verified (the same cached row it enforced),
/// with last-used data from memory: no database round trip on this hot path.
pub async fn get_self(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        caller.key.json(&state.usage),
    )
        .into_response()
}

#[utoipa::path(
    patch,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Change a key's settings",
    request_body = requests::PatchKey,
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The key object", body = KeyView),
        super::openapi::NotFound,
        super::openapi::Invalid,
        (status = 409, description = "The key is revoked", body = crate::error::ErrorBody),
    ),
)]
pub async fn update_key(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<PatchKeyRequest>,
) -> ApiResult<Response> {
    let now = state.now_ms();
    let key = charged(&ticket, load_key(&state, &caller, &id).await).await?;
    if key.revoked_at.is_some() {
        return charged(
            &ticket,
            Err(ApiError::new(
                keyflow_core::ErrorCode::Conflict,
                "This API key is revoked and can no longer change.",
            )),
        )
        .await;
    }
    let settings = charged(
        &ticket,
        apply_patch(&key.settings, key.key_type, &patch, now).map_err(ApiError::validation),
    )
    .await?;
    let bound = caller_bound(&state, &caller).await?;
    let authority = authority(&bound);
    // A refusal is a 403 and must not spend quota: check it first.
    key_ops::check_update(&key, &settings, authority, now)?;
    ticket.consume().await?;
    key_ops::update_key(
        &state.ctx(caller.actor(), caller.ip_string(), now),
        caller.workspace_id(),
        &key,
        &settings,
        authority,
    )
    .await?;
    let updated = ApiKey { settings, ..key };
    Ok(Json(key_json(&updated, &state.usage)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke an API key",
    params(super::openapi::IdPath),
    responses(
        (status = 204, description = "Revoked (at once, on every instance)"),
        super::openapi::NotFound,
    ),
)]
/// Revoke. Revoking an already revoked key is a no-op `204` (no new audit entry).
pub async fn revoke_key(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let key = charged(&ticket, load_key(&state, &caller, &id).await).await?;
    let bound = caller_bound(&state, &caller).await?;
    let authority = authority(&bound);
    // A refusal is a 403 and must not spend quota: check it first.
    authority.may_manage(&key)?;
    ticket.consume().await?;
    if key.revoked_at.is_none() {
        key_ops::revoke_key(&caller.ctx(&state), caller.workspace_id(), &key, authority).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
pub struct RollRequest {
    pub expires_in_seconds: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/v1/keys/{id}/roll",
    tag = "keys",
    summary = "Roll an API key",
    request_body = Option<requests::RollKey>,
    params(super::openapi::IdPath),
    responses(
        (status = 201, description = "The successor; `key` is shown only here", body = KeyView),
        super::openapi::NotFound,
        super::openapi::Invalid,
        (status = 409, description = "The key is revoked", body = crate::error::ErrorBody),
    ),
)]
pub async fn roll_key(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<RollRequest>,
) -> ApiResult<(StatusCode, Response)> {
    let grace = body.expires_in_seconds.unwrap_or(0);
    if !(0..=MAX_ROLL_GRACE_SECONDS).contains(&grace) {
        return charged(
            &ticket,
            Err(ApiError::field(
                "expires_in_seconds",
                format!("must be 0 to {MAX_ROLL_GRACE_SECONDS} (7 days)"),
            )),
        )
        .await;
    }
    let now = state.now_ms();
    let old = charged(&ticket, load_key(&state, &caller, &id).await).await?;
    let bound = caller_bound(&state, &caller).await?;
    let authority = authority(&bound);
    key_ops::successor_settings(&old, authority, now)?;
    ticket.consume().await?;
    let project = caller_project(&state, &caller).await?;
    let issued = key_ops::roll_key(
        &state.ctx(caller.actor(), caller.ip_string(), now),
        &project,
        &old,
        grace,
        authority,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        super::no_store(
            Json(issued_key_json(&issued.key, &issued.secret, &state.usage)).into_response(),
        ),
    ))
}

//! `/v1/metrics/credential`: the project's metrics credential (SPEC §4),
//! managed with a secret key's `keys:*` scopes.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::key_settings::IpRuleInput;
use serde::Deserialize;

use super::keys::{caller_project, charged};
use super::requests;
use super::views::{CredentialView, credential_json as view};
use crate::auth::{Caller, RateLimitTicket};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations::metrics_credential as credential_ops;
use crate::state::SharedState;

#[utoipa::path(
    post,
    path = "/v1/metrics/credential",
    tag = "metrics",
    summary = "Create or rotate the metrics credential",
    description = "The read scopes are needed because the credential reads contacts and \
                   events. Creates the project's metrics credential, or replaces it with a \
                   new id and client secret (outstanding tokens stop working). The client \
                   secret is in this answer only.",
    responses(
        (status = 201, description = "Created; `client_secret` is shown only here", body = CredentialView),
    ),
)]
pub async fn create_or_rotate(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
) -> ApiResult<(StatusCode, Response)> {
    let project = caller_project(&state, &caller).await?;
    let stored = super::keys::caller_as_stored(&state, &caller).await?;
    // A refusal (403) costs nothing: checked before the quota is spent.
    let rotation = credential_ops::prepare_rotation(
        state.store.as_ref(),
        &project,
        &stored.settings.ip_allowlist,
    )
    .await?;
    ticket.consume().await?;
    let issued = credential_ops::create_or_rotate(&caller.ctx(&state), &project, rotation).await?;
    let ttl = cache_ttl(&state, &project.id).await?;
    Ok((
        StatusCode::CREATED,
        super::no_store(Json(view(&issued.credential, ttl, Some(&issued.secret))).into_response()),
    ))
}

async fn cache_ttl(state: &SharedState, project_id: &str) -> ApiResult<i64> {
    Ok(state
        .store
        .project_settings(project_id)
        .await?
        .metrics_cache_ttl_minutes)
}

#[utoipa::path(
    get,
    path = "/v1/metrics/credential",
    tag = "metrics",
    summary = "The metrics credential (without its secret)",
    responses(
        (status = 200, description = "The metrics credential (without its secret)", body = CredentialView),
        (status = 404, description = "The project has no metrics credential yet", body = crate::error::ErrorBody),
    ),
)]
pub async fn get_credential(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let credential = state
        .store
        .metrics_credential(caller.project_id())
        .await?
        .ok_or_else(|| ApiError::not_found("metrics credential"))?;
    let ttl = cache_ttl(&state, caller.project_id()).await?;
    Ok(Json(view(&credential, ttl, None)).into_response())
}

/// `PATCH /v1/metrics/credential` body; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct PatchCredentialRequest {
    ip_allowlist: Option<Vec<IpRuleInput>>,
    cache_ttl_minutes: Option<i64>,
}

#[utoipa::path(
    patch,
    path = "/v1/metrics/credential",
    tag = "metrics",
    summary = "Change the credential's IP allow-list or the cache TTL",
    request_body = requests::PatchMetricsCredential,
    responses(
        (status = 200, description = "The metrics credential (without its secret)", body = CredentialView),
        (status = 404, description = "The project has no metrics credential yet", body = crate::error::ErrorBody),
        super::openapi::Invalid,
    ),
)]
pub async fn update_credential(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(patch): JsonBody<PatchCredentialRequest>,
) -> ApiResult<Response> {
    let change = charged(
        &ticket,
        credential_ops::validate_change(patch.ip_allowlist.as_deref(), patch.cache_ttl_minutes)
            .map_err(ApiError::validation),
    )
    .await?;
    let stored = super::keys::caller_as_stored(&state, &caller).await?;
    // A refusal (403) costs nothing: checked before the quota is spent.
    if let Some(rules) = &change.ip_allowlist {
        credential_ops::refuse_wider_allowlist(&stored.settings.ip_allowlist, rules)?;
    }
    ticket.consume().await?;
    let project = caller_project(&state, &caller).await?;
    let updated = credential_ops::update(
        &caller.ctx(&state),
        &project,
        &change,
        &stored.settings.ip_allowlist,
    )
    .await?;
    let ttl = cache_ttl(&state, &project.id).await?;
    Ok(Json(view(&updated, ttl, None)).into_response())
}

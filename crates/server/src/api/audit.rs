//! `GET /v1/audit`: the project's activity log, newest first.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::views::{AuditView, ListPage, audit_json};
use super::{list_body, page_from_query};
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::SharedState;

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    summary = "The activity log, newest first",
    description = "Scope: `audit:read`.",
    params(super::openapi::PageParams, ("action" = Option<String>, Query, description = "Only this action, e.g. api_key.revoked"), ("actor" = Option<String>, Query, description = "Only this actor: an id, an operator's email or a key's name")),
    responses(
        (status = 200, description = "A page of activity-log entries, newest first", body = ListPage<AuditView>),
        super::openapi::Invalid,
        super::openapi::KeyRefusals,
    ),
)]
pub async fn list_audit(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let entries = state
        .store
        .search_audit(
            caller.workspace_id(),
            caller.project_id(),
            &audit_filter(&query),
            &page,
        )
        .await?;
    let last = entries.last().map(|e| e.id.clone());
    Ok(Json(list_body(
        entries.iter().map(audit_json).collect(),
        &page,
        last,
    ))
    .into_response())
}

/// `?action=` and `?actor=` (empty values mean no filter).
pub fn audit_filter(query: &HashMap<String, String>) -> keyflow_store::AuditFilter {
    let get = |name: &str| {
        query
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    keyflow_store::AuditFilter {
        action: get("action"),
        actor: get("actor"),
    }
}

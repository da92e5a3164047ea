//! `GET /v1/audit`: the project's activity log, newest first.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;

use super::views::{AuditView, ListPage, audit_json};
use super::{page_from_query, page_response};
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::SharedState;

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    summary = "The activity log, newest first",
    params(super::openapi::PageParams, ("action" = Option<String>, Query, description = "Only this action, e.g. api_key.revoked"), ("actor" = Option<String>, Query, description = "Only this actor: an id, an operator's email or a key's name")),
    responses(
        (status = 200, description = "A page of activity-log entries, newest first", body = ListPage<AuditView>),
        super::openapi::Invalid,
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
    Ok(page_response(&entries, &page, |row| &row.id, audit_json))
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

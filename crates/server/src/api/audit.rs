//! `GET /v1/audit`: the project's activity log, newest first.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};

use super::repr::audit_json;
use super::{list_body, page_from_query};
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::SharedState;

pub async fn list_audit(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = page_from_query(&query)?;
    let entries = state
        .store
        .list_audit(caller.workspace_id(), caller.project_id(), &page)
        .await?;
    let last = entries.last().map(|e| e.id.clone());
    Ok(Json(list_body(
        entries.iter().map(audit_json).collect(),
        &page,
        last,
    )))
}

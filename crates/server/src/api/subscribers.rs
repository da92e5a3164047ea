//! Subscribers (`subscribers:*`): contacts with `subscribed = true`.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::contacts::{ContactChanges, ContactInput, lookup_from_path, validate_contact};
use keyflow_store::UpsertActions;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::contacts::upsert_status;
use super::requests;
use super::views::{ContactView, ListPage, contact_json};
use super::{page_from_query, page_response};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::state::SharedState;

#[utoipa::path(
    get,
    path = "/v1/subscribers",
    tag = "subscribers",
    summary = "List subscribers",
    params(super::openapi::PageParams),
    responses(
        (status = 200, description = "A page of contacts", body = ListPage<ContactView>),
        super::openapi::Invalid,
    ),
)]
pub async fn list_subscribers(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let contacts = state
        .store
        .list_contacts(caller.project_id(), true, &page)
        .await?;
    Ok(page_response(&contacts, &page, |row| &row.id, contact_json))
}

#[derive(Deserialize)]
pub struct SignupBody {
    email: Option<String>,
    first_name: Option<String>,
    properties: Option<Map<String, Value>>,
    source: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/subscribers",
    tag = "subscribers",
    summary = "Sign up a subscriber",
    request_body = requests::SubscriberSignup,
    responses(
        super::openapi::ContactWritten,
        super::openapi::Invalid,
    ),
)]
/// Server-side signup: creates or updates the contact and subscribes it.
pub async fn signup(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<SignupBody>,
) -> ApiResult<Response> {
    if body.email.is_none() {
        return Err(ApiError::field("email", "email is required"));
    }
    if body
        .source
        .as_ref()
        .is_some_and(|s| s.chars().count() > 255)
    {
        return Err(ApiError::field("source", "at most 255 characters"));
    }
    let input = ContactInput {
        email: body.email,
        first_name: body.first_name.map(Some),
        subscribed: Some(true),
        properties: body.properties,
        ..Default::default()
    };
    let changes = validate_contact(&input, true, "").map_err(ApiError::validation)?;
    let outcome = crate::operations::contacts::upsert_contact(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &changes,
        UpsertActions::SUBSCRIBER,
        json!({ "source": body.source }),
    )
    .await?;
    Ok((
        upsert_status(outcome.created),
        Json(contact_json(&outcome.contact)),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/subscribers/{email_or_id}",
    tag = "subscribers",
    summary = "Unsubscribe",
    params(("email_or_id" = String, Path, description = "An email (contains @) or a contact id")),
    responses(
        (status = 204, description = "Unsubscribed"),
        super::openapi::NotFound,
    ),
)]
/// Unsubscribe by email or contact id: `subscribed = false`, 204.
pub async fn unsubscribe(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(email_or_id): Path<String>,
) -> ApiResult<StatusCode> {
    let changes = ContactChanges {
        subscribed: Some(false),
        ..Default::default()
    };
    crate::operations::contacts::update_contact(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &lookup_from_path(&email_or_id),
        &changes,
        keyflow_store::AuditAction::SubscriberUnsubscribed,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("subscriber"))?;
    Ok(StatusCode::NO_CONTENT)
}

//! Contacts (`contacts:*`): create-or-update, get, look up, patch, delete, list, batch.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::contacts::{ContactInput, ContactLookup, validate_contact};
use keyflow_core::{ErrorCode, FieldError};
use keyflow_store::UpsertActions;
use serde::Deserialize;
use serde_json::{Value, json};

use super::requests;
use super::views::{ContactView, ListPage, contact_json};
use super::{page_from_query, page_response};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::state::SharedState;

pub const MAX_CONTACT_BATCH: usize = 1000;

/// 201 when created, 200 when updated.
pub fn upsert_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

#[utoipa::path(
    post,
    path = "/v1/contacts",
    tag = "contacts",
    summary = "Create or update a contact",
    request_body = requests::ContactInput,
    responses(
        super::openapi::ContactWritten,
        super::openapi::Invalid,
        (status = 409, description = "Email or external id belongs to another contact", body = crate::error::ErrorBody),
    ),
)]
pub async fn upsert_contact(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    JsonBody(input): JsonBody<ContactInput>,
) -> ApiResult<Response> {
    let changes = validate_contact(&input, true, "").map_err(ApiError::validation)?;
    let outcome = crate::operations::contacts::upsert_contact(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &changes,
        UpsertActions::CONTACT,
        json!({}),
    )
    .await?;
    Ok((
        upsert_status(outcome.created),
        Json(contact_json(&outcome.contact)),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/contacts/{id}",
    tag = "contacts",
    summary = "Get a contact",
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The contact", body = ContactView),
        super::openapi::NotFound,
    ),
)]
pub async fn get_contact(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let contact = state
        .store
        .get_contact(caller.project_id(), &ContactLookup::Id(id))
        .await?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    Ok(Json(contact_json(&contact)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/contacts",
    tag = "contacts",
    summary = "List contacts, or look one up",
    params(super::openapi::PageParams, ("email" = Option<String>, Query, description = "Look up by email (case-insensitive)"), ("external_id" = Option<String>, Query, description = "Look up by external id")),
    responses(
        (status = 200, description = "A page of contacts", body = ListPage<ContactView>),
        super::openapi::Invalid,
    ),
)]
/// `GET /v1/contacts`: the list, or with `?email=` / `?external_id=` the
/// (zero or one) matching contact in the same list shape.
pub async fn list_contacts(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    // The page parameters are checked whatever else is asked.
    let page = page_from_query(&query)?;
    for name in ["email", "external_id"] {
        if query.get(name).is_some_and(|v| v.is_empty()) {
            return Err(ApiError::field(name, "must not be empty"));
        }
    }
    let lookup = match (query.get("email"), query.get("external_id")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "email",
                "give email or external_id, not both",
            ));
        }
        (Some(email), None) => Some(ContactLookup::Email(email.clone())),
        (None, Some(x)) => Some(ContactLookup::ExternalId(x.clone())),
        (None, None) => None,
    };
    if let Some(lookup) = lookup {
        let found = state
            .store
            .get_contact(caller.project_id(), &lookup)
            .await?;
        let data = found.iter().map(contact_json).collect();
        let one = super::views::ListPage {
            data,
            next_cursor: None,
        };
        return Ok(Json(one).into_response());
    }
    let contacts = state
        .store
        .list_contacts(caller.project_id(), false, &page)
        .await?;
    Ok(page_response(&contacts, &page, |row| &row.id, contact_json))
}

#[utoipa::path(
    patch,
    path = "/v1/contacts/{id}",
    tag = "contacts",
    summary = "Update a contact",
    request_body = requests::ContactInput,
    params(super::openapi::IdPath),
    responses(
        (status = 200, description = "The contact", body = ContactView),
        super::openapi::NotFound,
        super::openapi::Invalid,
        (status = 409, description = "Email or external id belongs to another contact", body = crate::error::ErrorBody),
    ),
)]
pub async fn patch_contact(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<ContactInput>,
) -> ApiResult<Response> {
    let changes = validate_contact(&input, false, "").map_err(ApiError::validation)?;
    let contact = crate::operations::contacts::update_contact(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &ContactLookup::Id(id),
        &changes,
        keyflow_store::AuditAction::ContactUpdated,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("contact"))?;
    Ok(Json(contact_json(&contact)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/contacts/{id}",
    tag = "contacts",
    summary = "Delete a contact (its events stay, detached)",
    params(super::openapi::IdPath),
    responses(
        (status = 204, description = "Deleted"),
        super::openapi::NotFound,
    ),
)]
pub async fn delete_contact(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let deleted = crate::operations::contacts::delete_contact(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &id,
    )
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("contact"))
    }
}

#[derive(Deserialize)]
pub struct BatchBody {
    contacts: Vec<Value>,
}

#[utoipa::path(
    post,
    path = "/v1/contacts/batch",
    tag = "contacts",
    summary = "Create or update up to 1000 contacts",
    request_body = requests::ContactBatch,
    responses(
        (status = 200, description = "One result per item", body = BatchResults),
        super::openapi::Invalid,
    ),
)]
/// One result per item; valid items are applied even when others fail.
pub async fn batch_contacts(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<Response> {
    if body.contacts.is_empty() || body.contacts.len() > MAX_CONTACT_BATCH {
        return Err(ApiError::field(
            "contacts",
            format!("send 1 to {MAX_CONTACT_BATCH} contacts"),
        ));
    }
    let mut results: Vec<Option<BatchResult>> = Vec::new();
    results.resize_with(body.contacts.len(), || None);
    let mut valid = Vec::new();
    for (i, item) in body.contacts.into_iter().enumerate() {
        let prefix = format!("contacts[{i}].");
        let parsed = serde_path_to_error::deserialize::<_, ContactInput>(item).map_err(|e| {
            vec![FieldError::new(
                format!("{prefix}{}", e.path()),
                e.into_inner().to_string(),
            )]
        });
        match parsed.and_then(|input| validate_contact(&input, true, &prefix)) {
            Ok(changes) => valid.push((i, changes)),
            Err(fields) => results[i] = Some(item_error(i, ApiError::validation(fields))),
        }
    }
    let changes: Vec<_> = valid.iter().map(|(_, c)| c.clone()).collect();
    let outcomes = crate::operations::contacts::upsert_contacts(
        &caller.ctx(&state),
        caller.workspace_id(),
        caller.project_id(),
        &changes,
        json!({}),
    )
    .await?;
    for ((i, _), outcome) in valid.iter().zip(outcomes) {
        results[*i] = Some(match outcome {
            Ok(o) => BatchResult {
                index: *i,
                status: upsert_status(o.created).as_u16(),
                id: Some(o.contact.id),
                error: None,
            },
            Err(e) => item_error(*i, ApiError::from(e)),
        });
    }
    let results = results.into_iter().flatten().collect();
    Ok(Json(BatchResults { results }).into_response())
}

/// One item's outcome in a contacts batch.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ContactBatchResult)]
pub struct BatchResult {
    index: usize,
    /// 201 created, 200 updated, or the error's status.
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ContactBatchError)]
pub struct ItemError {
    code: &'static str,
    message: String,
    details: Value,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ContactBatchResults)]
pub struct BatchResults {
    results: Vec<BatchResult>,
}

fn item_error(index: usize, err: ApiError) -> BatchResult {
    let code: ErrorCode = err.code;
    BatchResult {
        index,
        status: code.http_status(),
        id: None,
        error: Some(ItemError {
            code: code.as_str(),
            message: err.message,
            details: err.details,
        }),
    }
}

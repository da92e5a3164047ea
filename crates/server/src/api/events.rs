//! Events (`events:*`): track one, track a batch, list.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyflow_core::ErrorCode;
use keyflow_core::events::{
    EventInput, NewEvent, first_disallowed, normalise_event_name, validate_batch, validate_event,
};
use keyflow_store::{EventFilter, EventOutcome};
use serde::Deserialize;
use serde_json::json;

use super::requests;
use super::views::{EventView, ListPage, event_json};
use super::{page_from_query, page_response};
use crate::auth::{Caller, RateLimitTicket};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::operations;
use crate::state::SharedState;

/// The checks every ingest path shares, in SPEC §2's order after the
/// middleware's: event names (403), then quota (429).
pub async fn check_and_spend(
    state: &SharedState,
    caller: &Caller,
    ticket: &RateLimitTicket,
    events: &[NewEvent],
) -> ApiResult<()> {
    if let Some(name) = first_disallowed(events, caller.key.key.settings.allowed_events.as_deref())
    {
        state
            .prometheus
            .count_auth_rejection(ErrorCode::EventNotAllowed);
        return Err(ApiError::new(
            ErrorCode::EventNotAllowed,
            format!("This API key may not track the event {name:?}; nothing was stored."),
        )
        .with_details(json!({ "event": name })));
    }
    ticket.consume().await
}

/// Checks, spends quota, then stores durably (answering after the commit).
/// Whether field errors name a single event (`name`) or batch items (`events[3].name`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Single,
    Many,
}

pub async fn ingest(
    state: &SharedState,
    caller: &Caller,
    ticket: &RateLimitTicket,
    events: Vec<NewEvent>,
    batch_prefix: Batch,
) -> ApiResult<Vec<EventOutcome>> {
    let single = events.len() == 1 && batch_prefix == Batch::Single;
    check_and_spend(state, caller, ticket, &events).await?;
    store_events(state, caller, events, single).await
}

pub async fn store_events(
    state: &SharedState,
    caller: &Caller,
    events: Vec<NewEvent>,
    single: bool,
) -> ApiResult<Vec<EventOutcome>> {
    let project_id = caller.project_id();
    Ok(operations::events::ingest(
        state.store.as_ref(),
        project_id,
        events,
        single,
        state.now_ms(),
    )
    .await?)
}

#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    summary = "Track an event",
    request_body = requests::EventInput,
    responses(
        (status = 202, description = "Durably stored", body = Accepted),
        (status = 200, description = "Idempotency key seen in the last 24 h: the first event's id", body = Accepted),
        super::openapi::Invalid,
    ),
)]
/// `202 {"id"}` once stored; a repeated idempotency key answers `200` with the first id.
pub async fn track(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(input): JsonBody<EventInput>,
) -> ApiResult<Response> {
    let event = validate_event(input, state.now_ms(), "").map_err(ApiError::validation)?;
    let outcome = ingest(&state, &caller, &ticket, vec![event], Batch::Single).await?;
    let first = outcome
        .first()
        .ok_or_else(|| ApiError::internal("ingest", &"no outcome for one event"))?;
    let status = if first.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(Accepted { id: &first.id })).into_response())
}

/// `{"id": …}` serialised straight from the outcome (no `Value` map on the hot path).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = EventAccepted)]
pub struct Accepted<'a> {
    id: &'a str,
}

/// The ids of a batch, in the order sent (a repeated idempotency key gives
/// the first event's id).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = EventBatchAccepted)]
pub struct BatchAccepted<'a> {
    ids: Vec<&'a str>,
}

#[derive(Deserialize)]
pub struct BatchBody {
    events: Vec<EventInput>,
}

#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "events",
    summary = "Track up to 1000 events (all or nothing)",
    request_body = requests::EventBatch,
    responses(
        (status = 202, description = "Durably stored", body = BatchAccepted),
        super::openapi::Invalid,
        (status = 413, description = "Body over 1 MiB", body = crate::error::ErrorBody),
    ),
)]
/// All-or-nothing: one invalid or disallowed event and nothing is stored.
pub async fn track_batch(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<Response> {
    let events = validate_batch(body.events, state.now_ms()).map_err(ApiError::validation)?;
    let outcomes = ingest(&state, &caller, &ticket, events, Batch::Many).await?;
    let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    Ok((StatusCode::ACCEPTED, Json(BatchAccepted { ids })).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "List events, newest first",
    params(super::openapi::PageParams, ("contact_id" = Option<String>, Query, description = "Events of one contact"), ("name" = Option<String>, Query, description = "Events with this name"), ("since" = Option<String>, Query, description = "RFC 3339, inclusive, on timestamp"), ("until" = Option<String>, Query, description = "RFC 3339, exclusive, on timestamp")),
    responses(
        (status = 200, description = "A page of events, newest first", body = ListPage<EventView>),
        super::openapi::Invalid,
    ),
)]
/// `GET /v1/events?contact_id=&name=&since=&until=`, newest first.
pub async fn list_events(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let page = page_from_query(&query)?;
    let filter = EventFilter {
        contact_id: query.get("contact_id").cloned(),
        name: query.get("name").map(|n| normalise_event_name(n)),
        since: super::time_query(&query, "since")?,
        until: super::time_query(&query, "until")?,
    };
    let events = state
        .store
        .list_events(caller.project_id(), &filter, &page)
        .await?;
    Ok(page_response(&events, &page, |row| &row.id, event_json))
}

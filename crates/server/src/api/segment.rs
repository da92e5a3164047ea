//! Drop-in compatibility with Segment's HTTP Tracking API (SPEC §5):
//! `/v1/track`, `/v1/identify`, `/v1/batch`, HTTP Basic with the key as user.
//! `track` becomes an event, `identify` a contact upsert; other message types
//! (page, screen, group, alias) are acknowledged and not stored.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use keyflow_core::contacts::{ContactChanges, ContactInput, validate_contact};
use keyflow_core::events::{EventInput, MAX_BATCH, NewEvent, validate_event};
use keyflow_core::{ErrorCode, FieldError, Scope};
use keyflow_store::UpsertActions;
use serde_json::{Map, Value, json};

use super::events::{Batch, check_and_spend, ingest, store_events};
use super::requests;
use crate::auth::{Caller, RateLimitTicket};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::state::SharedState;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn object(v: &Value) -> Option<Map<String, Value>> {
    v.as_object().cloned()
}

/// `event`→name, `userId`→external_id, `anonymousId`→anonymous_id,
/// `messageId`→idempotency_key, `properties`, `timestamp`.
fn track_to_event(msg: &Value, now: i64, prefix: &str) -> Result<NewEvent, Vec<FieldError>> {
    let input = EventInput {
        name: text(&msg["event"]),
        external_id: text(&msg["userId"]),
        anonymous_id: text(&msg["anonymousId"]),
        properties: object(&msg["properties"]),
        timestamp: text(&msg["timestamp"]),
        idempotency_key: text(&msg["messageId"]),
        ..Default::default()
    };
    validate_event(input, now, prefix)
}

/// `userId`→external_id, `traits.email`→email, first/last name traits, other traits→properties.
/// `None` for an anonymous identify (nothing to attach the traits to).
fn identify_to_contact(
    msg: &Value,
    prefix: &str,
) -> Result<Option<ContactChanges>, Vec<FieldError>> {
    let mut traits = object(&msg["traits"]).unwrap_or_default();
    let email = traits.remove("email").as_ref().and_then(text);
    let first = traits
        .remove("firstName")
        .or_else(|| traits.remove("first_name"));
    let last = traits
        .remove("lastName")
        .or_else(|| traits.remove("last_name"));
    let input = ContactInput {
        email,
        external_id: text(&msg["userId"]),
        first_name: first.as_ref().and_then(text).map(Some),
        last_name: last.as_ref().and_then(text).map(Some),
        properties: Some(traits),
        ..Default::default()
    };
    if input.email.is_none() && input.external_id.is_none() {
        return Ok(None);
    }
    validate_contact(&input, true, prefix).map(Some)
}

/// `{"success": true}`, Segment's answer to every accepted call.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = SegmentSuccess)]
pub struct Success {
    success: bool,
}

/// What every Segment call answers: `{"success": true}` or a refusal.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum Answers {
    #[response(status = 200, description = "Accepted")]
    Accepted(Success),
    #[response(status = 422, description = "Invalid fields (details.fields)")]
    Invalid(crate::error::ErrorBody),
}

fn success() -> Json<Success> {
    Json(Success { success: true })
}

#[utoipa::path(
    post,
    path = "/v1/track",
    operation_id = "segment_track",
    tag = "segment",
    summary = "Segment track",
    request_body = requests::SegmentMessage,
    responses(
        Answers,
    ),
)]
pub async fn track(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(msg): JsonBody<Value>,
) -> ApiResult<Json<Success>> {
    let event = track_to_event(&msg, state.now_ms(), "").map_err(ApiError::validation)?;
    ingest(&state, &caller, &ticket, vec![event], Batch::Single).await?;
    Ok(success())
}

#[utoipa::path(
    post,
    path = "/v1/identify",
    operation_id = "segment_identify",
    tag = "segment",
    summary = "Segment identify",
    request_body = requests::SegmentMessage,
    responses(
        Answers,
    ),
)]
pub async fn identify(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    JsonBody(msg): JsonBody<Value>,
) -> ApiResult<Json<Success>> {
    if let Some(changes) = identify_to_contact(&msg, "").map_err(ApiError::validation)? {
        crate::operations::contacts::upsert_contact(
            &caller.ctx(&state),
            caller.workspace_id(),
            caller.project_id(),
            &changes,
            UpsertActions::CONTACT,
            json!({ "via": "segment" }),
        )
        .await?;
    }
    Ok(success())
}

#[utoipa::path(
    post,
    path = "/v1/batch",
    operation_id = "segment_batch",
    tag = "segment",
    summary = "Segment batch",
    request_body = requests::SegmentBatch,
    responses(
        Answers,
    ),
)]
/// A batch is validated whole (all-or-nothing, like `/v1/events/batch`);
/// `identify` items need `contacts:write` as on `/v1/identify`.
pub async fn batch(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Extension(ticket): Extension<RateLimitTicket>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Success>> {
    let Some(items) = body["batch"].as_array() else {
        return Err(ApiError::field("batch", "must be an array of messages"));
    };
    if items.len() > MAX_BATCH {
        return Err(ApiError::field(
            "batch",
            format!("at most {MAX_BATCH} messages"),
        ));
    }
    let now = state.now_ms();
    let mut events = Vec::new();
    let mut contacts = Vec::new();
    let mut errors = Vec::new();
    for (i, msg) in items.iter().enumerate() {
        let prefix = format!("batch[{i}].");
        match msg["type"].as_str() {
            Some("track") => match track_to_event(msg, now, &prefix) {
                Ok(e) => events.push(e),
                Err(mut e) => errors.append(&mut e),
            },
            Some("identify") => match identify_to_contact(msg, &prefix) {
                Ok(Some(c)) => contacts.push(c),
                Ok(None) => {}
                Err(mut e) => errors.append(&mut e),
            },
            Some(_) => {}
            None => errors.push(FieldError::new(format!("{prefix}type"), "type is required")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if !contacts.is_empty() && !caller.key.key.scopes.contains(Scope::ContactsWrite) {
        return Err(ApiError::new(
            ErrorCode::InsufficientScope,
            "identify messages need the contacts:write scope.",
        )
        .with_details(json!({ "required_scope": "contacts:write" })));
    }
    check_and_spend(&state, &caller, &ticket, &events).await?;
    // Identify first, so a batch's track messages attach to the contact it describes.
    if !contacts.is_empty() {
        let results = crate::operations::contacts::upsert_contacts(
            &caller.ctx(&state),
            caller.workspace_id(),
            caller.project_id(),
            &contacts,
            json!({ "via": "segment" }),
        )
        .await?;
        for failure in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::warn!(error = %failure, "segment identify not applied");
        }
    }
    store_events(&state, &caller, events, false).await?;
    Ok(success())
}

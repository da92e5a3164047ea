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

/// Segment's message types: `track` and `identify` are stored, the others
/// acknowledged.
const SEGMENT_TYPES: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];
const TYPE_MESSAGE: &str = "must be track, identify, page, screen, group or alias";

/// A message's fields, read with Segment's names: a value of the wrong type
/// is an error naming the field as the client sent it (`batch[2].userId`),
/// never silently dropped.
struct Message<'a> {
    msg: &'a Value,
    prefix: &'a str,
    errors: Vec<FieldError>,
}

impl<'a> Message<'a> {
    /// Checks the type of every field a message may carry, whatever its
    /// type: a `page` with a broken `messageId` is refused like a `track`.
    fn new(msg: &'a Value, prefix: &'a str) -> Self {
        let mut m = Self {
            msg,
            prefix,
            errors: Vec::new(),
        };
        if !msg.is_object() {
            let field = prefix.trim_end_matches('.');
            m.errors.push(FieldError::new(
                if field.is_empty() { "body" } else { field },
                "must be a JSON object",
            ));
            return m;
        }
        let known = match &msg["type"] {
            Value::Null => true,
            Value::String(t) => SEGMENT_TYPES.contains(&t.as_str()),
            _ => false,
        };
        if !known {
            m.wrong("type", TYPE_MESSAGE);
        }
        for id in ["userId", "anonymousId", "messageId"] {
            if !matches!(msg[id], Value::Null | Value::String(_) | Value::Number(_)) {
                m.wrong(id, "must be a string or a number");
            }
        }
        if !matches!(msg["event"], Value::Null | Value::String(_)) {
            m.wrong("event", "must be a string");
        }
        match &msg["timestamp"] {
            Value::Null => {}
            Value::String(t) if keyflow_core::timefmt::parse_rfc3339(t).is_some() => {}
            _ => m.wrong(
                "timestamp",
                "must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z",
            ),
        }
        for object in ["properties", "traits", "context"] {
            if !matches!(msg[object], Value::Null | Value::Object(_)) {
                m.wrong(object, "must be an object");
            }
        }
        m
    }

    fn wrong(&mut self, name: &str, message: &str) {
        self.errors
            .push(FieldError::new(format!("{}{name}", self.prefix), message));
    }

    /// A field as text (ids may be numbers); `None` when absent or of
    /// another type (already an error from [`Message::new`]).
    fn text(&self, name: &str) -> Option<String> {
        match &self.msg[name] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn object(&self, name: &str) -> Option<Map<String, Value>> {
        self.msg[name].as_object().cloned()
    }

    /// The core's field errors renamed to the message's own fields.
    fn renamed(&mut self, errors: Vec<FieldError>, names: &[(&str, &str)]) {
        for e in errors {
            let (field, message) = match e.field.as_str() {
                "contact_id" => ("userId", "userId or anonymousId is required".to_string()),
                other => (
                    names
                        .iter()
                        .find(|(ours, _)| *ours == other)
                        .map_or(other, |(_, theirs)| *theirs),
                    e.message,
                ),
            };
            self.errors
                .push(FieldError::new(format!("{}{field}", self.prefix), message));
        }
    }

    fn done<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// `event`→name, `userId`→external_id, `anonymousId`→anonymous_id,
/// `messageId`→idempotency_key, `properties`, `timestamp`.
fn track_to_event(msg: &Value, now: i64, prefix: &str) -> Result<NewEvent, Vec<FieldError>> {
    let mut m = Message::new(msg, prefix);
    let input = EventInput {
        name: m.text("event"),
        external_id: m.text("userId"),
        anonymous_id: m.text("anonymousId"),
        properties: m.object("properties"),
        timestamp: m.text("timestamp"),
        idempotency_key: m.text("messageId"),
        ..Default::default()
    };
    if !m.errors.is_empty() {
        return Err(m.errors);
    }
    match validate_event(input, now, "") {
        Ok(event) => m.done(event),
        Err(errors) => {
            m.renamed(
                errors,
                &[
                    ("name", "event"),
                    ("external_id", "userId"),
                    ("anonymous_id", "anonymousId"),
                    ("idempotency_key", "messageId"),
                ],
            );
            Err(m.errors)
        }
    }
}

/// `userId`→external_id, `traits.email`→email, first/last name traits, other traits→properties.
/// `None` for an anonymous identify (nothing to attach the traits to).
fn identify_to_contact(
    msg: &Value,
    prefix: &str,
) -> Result<Option<ContactChanges>, Vec<FieldError>> {
    let mut m = Message::new(msg, prefix);
    let external_id = m.text("userId");
    let mut traits = m.object("traits").unwrap_or_default();
    let mut trait_text = |m: &mut Message, names: &[&str]| {
        let value = names.iter().find_map(|n| traits.remove(*n))?;
        match value {
            Value::Null => None,
            Value::String(s) => Some(s),
            _ => {
                m.wrong(&format!("traits.{}", names[0]), "must be a string");
                None
            }
        }
    };
    let email = trait_text(&mut m, &["email"]);
    let first = trait_text(&mut m, &["firstName", "first_name"]);
    let last = trait_text(&mut m, &["lastName", "last_name"]);
    if !m.errors.is_empty() {
        return Err(m.errors);
    }
    let input = ContactInput {
        email,
        external_id,
        first_name: first.map(Some),
        last_name: last.map(Some),
        properties: Some(traits),
        ..Default::default()
    };
    if input.email.is_none() && input.external_id.is_none() {
        return m.done(None);
    }
    match validate_contact(&input, true, "") {
        Ok(changes) => m.done(Some(changes)),
        Err(errors) => {
            m.renamed(
                errors,
                &[
                    ("email", "traits.email"),
                    ("external_id", "userId"),
                    ("first_name", "traits.firstName"),
                    ("last_name", "traits.lastName"),
                    ("properties", "traits"),
                ],
            );
            Err(m.errors)
        }
    }
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
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field(
            "batch",
            format!("must hold 1 to {MAX_BATCH} messages"),
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
            // Acknowledged, not stored; still checked, so a broken
            // message is not taken for a good one.
            Some("page" | "screen" | "group" | "alias") => {
                if let Err(mut e) = Message::new(msg, &prefix).done(()) {
                    errors.append(&mut e);
                }
            }
            Some(_) => errors.push(FieldError::new(format!("{prefix}type"), TYPE_MESSAGE)),
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

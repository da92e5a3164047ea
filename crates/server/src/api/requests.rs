//! Shapes of request bodies for the OpenAPI document. The handlers read
//! them through `keyflow_core`'s input types (which know nothing of OpenAPI);
//! these mirror those types, and the contract tests send every documented
//! shape. Responses need no copy: their schemas come from the types in
//! `views.rs` that are serialised.

#![allow(dead_code)] // read only by the OpenAPI derive

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct IpRule {
    /// IPv4 or IPv6 address or CIDR.
    #[schema(min_length = 1, max_length = 64)]
    cidr: String,
    #[schema(max_length = 200)]
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RateLimit {
    #[schema(minimum = 1, maximum = 1_000_000)]
    limit: u32,
    #[schema(minimum = 1, maximum = 86_400)]
    period_seconds: u32,
}

/// The types of key the API creates.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyTypeName {
    Secret,
    Client,
    ReadOnly,
}

#[derive(Serialize, ToSchema)]
pub struct CreateKey {
    /// 1–64 characters.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    #[serde(rename = "type")]
    key_type: KeyTypeName,
    /// Default: every scope the type may hold (`events:write` for client keys).
    scopes: Option<Vec<ScopeName>>,
    #[serde(flatten)]
    restrictions: KeyRestrictions,
}

/// Absent fields are unchanged, `null` clears (the name cannot be cleared);
/// `scopes` and `type` are refused.
#[derive(Serialize, ToSchema)]
pub struct PatchKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64, nullable = false)]
    name: Option<String>,
    #[serde(flatten)]
    restrictions: KeyRestrictions,
}

/// What limits a key: each may only narrow the creating key's.
#[derive(Serialize, ToSchema)]
pub struct KeyRestrictions {
    /// RFC 3339, in the future.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(max_items = 100)]
    ip_allowlist: Option<Vec<IpRule>>,
    /// Event names, each 1–128 characters.
    #[schema(max_items = 100)]
    allowed_events: Option<Vec<String>>,
    /// Client keys only: `https://host[:port]` or `http://host[:port]`.
    #[schema(max_items = 100)]
    allowed_origins: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
}

/// A permission a key may hold.
#[derive(Serialize, ToSchema)]
pub enum ScopeName {
    #[serde(rename = "contacts:read")]
    ContactsRead,
    #[serde(rename = "contacts:write")]
    ContactsWrite,
    #[serde(rename = "events:read")]
    EventsRead,
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "subscribers:read")]
    SubscribersRead,
    #[serde(rename = "subscribers:write")]
    SubscribersWrite,
    #[serde(rename = "keys:read")]
    KeysRead,
    #[serde(rename = "keys:write")]
    KeysWrite,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "workflows:read")]
    WorkflowsRead,
    #[serde(rename = "workflows:write")]
    WorkflowsWrite,
}

#[derive(Serialize, ToSchema)]
pub struct RollKey {
    /// Grace period of the old key, 0 (default) to 604800.
    #[schema(minimum = 0, maximum = 604_800)]
    expires_in_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactInput {
    /// Unique per project, compared case-insensitively. `POST` needs `email`
    /// or `external_id`.
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    /// Unique per project. Create-or-update matches it first, then `email`.
    #[schema(min_length = 1, max_length = 255)]
    external_id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    last_name: Option<String>,
    subscribed: Option<bool>,
    /// Merged into the stored properties; a `null` value removes a key. ≤ 32 KiB, ≤ 256 keys.
    properties: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactBatch {
    /// 1–1000 items, each like `POST /v1/contacts`.
    #[schema(min_items = 1, max_items = 1000)]
    contacts: Vec<ContactInput>,
}

#[derive(Serialize, ToSchema)]
pub struct EventInput {
    /// 1–128 characters, NFC-normalised.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// One of `contact_id`, `email`, `external_id` or `anonymous_id` says
    /// whom the event is about.
    #[schema(min_length = 1, max_length = 255)]
    contact_id: Option<String>,
    /// An unknown email creates the contact.
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    /// An unknown external id creates the contact.
    #[schema(min_length = 1, max_length = 255)]
    external_id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    anonymous_id: Option<String>,
    properties: Option<Map<String, Value>>,
    /// Client time, RFC 3339; default now.
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    /// Unique per project for 24 hours: a repeat returns the first id with 200.
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventBatch {
    /// 1–1000 events; validated all-or-nothing.
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<EventInput>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriberSignup {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 255)]
    first_name: Option<String>,
    properties: Option<Map<String, Value>>,
    /// Recorded in the activity log entry.
    source: Option<String>,
}

/// A message of Segment's HTTP Tracking API (`track`, `identify`; others are acknowledged).
#[derive(Serialize, ToSchema)]
pub struct SegmentMessage {
    /// Required in a batch; `/v1/track` and `/v1/identify` imply it.
    #[serde(rename = "type")]
    kind: Option<SegmentType>,
    /// A string or a number (as Segment's libraries send it).
    #[serde(rename = "userId")]
    #[schema(value_type = Option<SegmentId>)]
    user_id: Option<String>,
    #[serde(rename = "anonymousId")]
    #[schema(value_type = Option<SegmentId>)]
    anonymous_id: Option<String>,
    /// The event's name: required for `track` (1–128 characters), ignored otherwise.
    event: Option<String>,
    properties: Option<Map<String, Value>>,
    traits: Option<Map<String, Value>>,
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    #[serde(rename = "messageId")]
    #[schema(value_type = Option<SegmentId>)]
    message_id: Option<String>,
}

/// Segment's message types: `track` and `identify` are stored, the others
/// acknowledged.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SegmentType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

/// An id Segment's libraries send as a string or a number; 1–255 characters.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SegmentId {
    Text(String),
    Number(f64),
}

#[derive(Serialize, ToSchema)]
pub struct SegmentBatch {
    /// 1–1000 messages.
    #[schema(min_items = 1, max_items = 1000)]
    batch: Vec<SegmentMessage>,
}

/// Absent fields are unchanged.
#[derive(Serialize, ToSchema)]
pub struct PatchMetricsCredential {
    #[schema(max_items = 100)]
    ip_allowlist: Option<Vec<IpRule>>,
    #[schema(minimum = 5, maximum = 10_080)]
    cache_ttl_minutes: Option<i64>,
}

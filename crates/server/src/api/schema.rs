//! Shapes of request and response bodies for the OpenAPI document. They mirror
//! what the handlers accept (`keyflow_core` input types) and produce
//! (`repr.rs`); the snapshot test and the route test keep them honest.

#![allow(dead_code)] // read only by the OpenAPI derive

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `{"error": {...}}`, the body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// e.g. `insufficient_scope`, `validation_failed`.
    code: String,
    message: String,
    request_id: String,
    /// For `validation_failed`: `{"fields": [{"field", "message"}]}`.
    details: Value,
}

#[derive(Serialize, ToSchema)]
pub struct IpRule {
    /// IPv4 or IPv6 address or CIDR.
    cidr: String,
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RateLimit {
    limit: u32,
    period_seconds: u32,
}

#[derive(Serialize, ToSchema)]
pub struct CreateKey {
    /// 1–64 characters.
    name: String,
    /// `secret`, `client` or `read_only`.
    #[serde(rename = "type")]
    key_type: String,
    /// Default: every scope the type may hold (`events:write` for client keys).
    scopes: Option<Vec<String>>,
    /// RFC 3339, in the future.
    expires_at: Option<String>,
    ip_allowlist: Option<Vec<IpRule>>,
    allowed_events: Option<Vec<String>>,
    /// Client keys only.
    allowed_origins: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
}

/// Absent fields are unchanged, `null` clears; `scopes` and `type` are refused.
#[derive(Serialize, ToSchema)]
pub struct PatchKey {
    name: Option<String>,
    expires_at: Option<String>,
    ip_allowlist: Option<Vec<IpRule>>,
    allowed_events: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
}

#[derive(Serialize, ToSchema)]
pub struct RollKey {
    /// Grace period of the old key, 0 (default) to 604800.
    expires_in_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Creator {
    /// `operator`, `api_key` or `instance_admin`.
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct Key {
    id: String,
    name: String,
    #[serde(rename = "type")]
    key_type: String,
    scopes: Vec<String>,
    /// First 12 characters, e.g. `sk_live_AbCd`.
    prefix: String,
    created_at: String,
    created_by: Creator,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    ip_allowlist: Vec<IpRule>,
    allowed_events: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
}

/// A key object plus the full key, returned only by create and roll.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    key_object: Key,
    key: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    data: Vec<Key>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    id: String,
    at: String,
    /// `{"type": "operator", "id", "email"}`, `{"type": "api_key", "id", "name", "prefix"}` or `{"type": "instance_admin"}`.
    actor: Value,
    /// e.g. `api_key.created`, `contact.updated`, `plan.changed`.
    action: String,
    /// `{"type", "id", "name"?}`.
    target: Value,
    ip: Option<String>,
    details: Value,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    data: Vec<AuditEntry>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactInput {
    /// Unique per project, compared case-insensitively.
    email: Option<String>,
    /// Unique per project. Create-or-update matches it first, then `email`.
    external_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    subscribed: Option<bool>,
    /// Merged into the stored properties; a `null` value removes a key. ≤ 32 KiB, ≤ 256 keys.
    properties: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Contact {
    id: String,
    email: Option<String>,
    external_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    subscribed: bool,
    properties: Value,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ContactList {
    data: Vec<Contact>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactBatch {
    /// Up to 1000 items, each like `POST /v1/contacts`.
    contacts: Vec<ContactInput>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactBatchResult {
    index: usize,
    /// 201 created, 200 updated, or the error's status.
    status: u16,
    id: Option<String>,
    error: Option<ErrorObject>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactBatchResults {
    results: Vec<ContactBatchResult>,
}

#[derive(Serialize, ToSchema)]
pub struct EventInput {
    /// 1–128 characters, NFC-normalised.
    name: String,
    contact_id: Option<String>,
    /// An unknown email creates the contact.
    email: Option<String>,
    /// An unknown external id creates the contact.
    external_id: Option<String>,
    anonymous_id: Option<String>,
    properties: Option<Value>,
    /// Client time, RFC 3339; default now.
    timestamp: Option<String>,
    /// Unique per project for 24 hours: a repeat returns the first id with 200.
    idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventBatch {
    /// 1–1000 events; validated all-or-nothing.
    events: Vec<EventInput>,
}

#[derive(Serialize, ToSchema)]
pub struct EventAccepted {
    id: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventBatchAccepted {
    ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Event {
    id: String,
    name: String,
    contact_id: Option<String>,
    anonymous_id: Option<String>,
    properties: Value,
    timestamp: String,
    received_at: String,
    idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    data: Vec<Event>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriberSignup {
    email: String,
    first_name: Option<String>,
    properties: Option<Value>,
    /// Recorded in the activity log entry.
    source: Option<String>,
}

/// A message of Segment's HTTP Tracking API (`track`, `identify`; others are acknowledged).
#[derive(Serialize, ToSchema)]
pub struct SegmentMessage {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<String>,
    event: Option<String>,
    properties: Option<Value>,
    traits: Option<Value>,
    timestamp: Option<String>,
    #[serde(rename = "messageId")]
    message_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentBatch {
    batch: Vec<SegmentMessage>,
}

#[derive(Serialize, ToSchema)]
pub struct SegmentSuccess {
    success: bool,
}

/// The project's metrics credential (SPEC §4).
#[derive(Serialize, ToSchema)]
pub struct MetricsCredential {
    /// `mk_live_…` / `mk_test_…`: the public id sent as the bearer of `/v1/metrics/token`.
    id: String,
    /// Always `metrics_credential`.
    object: String,
    created_at: String,
    last_used_at: Option<String>,
    ip_allowlist: Vec<IpRule>,
    /// How long Metrics API results are cached (minutes, 5 to 10080).
    cache_ttl_minutes: i64,
}

/// Create/rotate answer: the credential plus its client secret, shown only here.
#[derive(Serialize, ToSchema)]
pub struct IssuedMetricsCredential {
    id: String,
    object: String,
    /// Shown once; only its SHA-256 is stored.
    client_secret: String,
    created_at: String,
    last_used_at: Option<String>,
    ip_allowlist: Vec<IpRule>,
    cache_ttl_minutes: i64,
}

/// Absent fields are unchanged.
#[derive(Serialize, ToSchema)]
pub struct PatchMetricsCredential {
    ip_allowlist: Option<Vec<IpRule>>,
    cache_ttl_minutes: Option<i64>,
}

//! Shapes of request bodies for the OpenAPI document. The handlers read
//! them through `keyflow_core`'s input types (which know nothing of OpenAPI);
//! these mirror those types, and the contract tests send every documented
//! shape. Responses need no copy: their schemas come from the types in
//! `views.rs` that are serialised.

#![allow(dead_code)] // read only by the OpenAPI derive

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

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
    #[serde(flatten)]
    restrictions: KeyRestrictions,
}

/// Absent fields are unchanged, `null` clears; `scopes` and `type` are refused.
#[derive(Serialize, ToSchema)]
pub struct PatchKey {
    name: Option<String>,
    #[serde(flatten)]
    restrictions: KeyRestrictions,
}

/// What limits a key: each may only narrow the creating key's.
#[derive(Serialize, ToSchema)]
pub struct KeyRestrictions {
    /// RFC 3339, in the future.
    expires_at: Option<String>,
    ip_allowlist: Option<Vec<IpRule>>,
    allowed_events: Option<Vec<String>>,
    /// Client keys only.
    allowed_origins: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
}

#[derive(Serialize, ToSchema)]
pub struct RollKey {
    /// Grace period of the old key, 0 (default) to 604800.
    expires_in_seconds: Option<i64>,
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
pub struct ContactBatch {
    /// Up to 1000 items, each like `POST /v1/contacts`.
    contacts: Vec<ContactInput>,
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

/// Absent fields are unchanged.
#[derive(Serialize, ToSchema)]
pub struct PatchMetricsCredential {
    ip_allowlist: Option<Vec<IpRule>>,
    cache_ttl_minutes: Option<i64>,
}

//! JSON representations of stored objects (SPEC §2/§3/§8 field names).

use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{IpRule, RateLimit};
use keyflow_store::{Actor, ApiKey, AuditEntry, Contact, Event, Operator, Project, Workspace};
use serde::Serialize;
use serde_json::{Value, json};

use crate::usage::UsageTracker;

/// Who created a key, as the key object shows it.
#[derive(Serialize)]
pub struct CreatorView<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<&'a str>,
    name: &'a str,
}

fn creator(actor: &Actor) -> CreatorView<'_> {
    match actor {
        Actor::Operator { id, email } => CreatorView {
            kind: "operator",
            id: Some(id),
            name: email,
        },
        Actor::ApiKey { id, name, .. } => CreatorView {
            kind: "api_key",
            id: Some(id),
            name,
        },
        Actor::InstanceAdmin => CreatorView {
            kind: "instance_admin",
            id: None,
            name: "instance admin",
        },
    }
}

/// The key object (SPEC §2), serialised straight from the stored key:
/// `GET /v1/keys/self` is on the hot path, and building a `serde_json::Value`
/// map first cost more than the rest of the handler.
#[derive(Serialize)]
pub struct KeyView<'a> {
    id: &'a str,
    object: &'static str,
    name: &'a str,
    #[serde(rename = "type")]
    key_type: &'static str,
    scopes: Vec<&'static str>,
    prefix: &'a str,
    created_at: String,
    created_by: CreatorView<'a>,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    ip_allowlist: &'a [IpRule],
    allowed_events: Option<&'a [String]>,
    allowed_origins: Option<&'a [String]>,
    rate_limit: Option<RateLimit>,
    /// The full key: only in the create/roll answer, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

/// The key object. Unflushed use from memory wins over the stored value.
pub fn key_json<'a>(key: &'a ApiKey, usage: &UsageTracker) -> KeyView<'a> {
    let (mut last_used_at, mut last_used_ip) = (key.last_used_at, key.last_used_ip.clone());
    if let Some((at, ip)) = usage.pending(&key.id)
        && last_used_at.is_none_or(|stored| stored < at)
    {
        last_used_at = Some(at);
        last_used_ip = ip.map(|ip| ip.to_string());
    }
    let s = &key.settings;
    KeyView {
        id: &key.id,
        object: "api_key",
        name: &s.name,
        key_type: key.key_type.as_str(),
        scopes: key.scopes.iter().map(|scope| scope.as_str()).collect(),
        prefix: &key.prefix,
        created_at: format_rfc3339(key.created_at),
        created_by: creator(&key.created_by),
        last_used_at: last_used_at.map(format_rfc3339),
        last_used_ip,
        expires_at: s.expires_at.map(format_rfc3339),
        revoked_at: key.revoked_at.map(format_rfc3339),
        ip_allowlist: &s.ip_allowlist,
        allowed_events: s.allowed_events.as_deref(),
        allowed_origins: s.allowed_origins.as_deref(),
        rate_limit: s.rate_limit,
        key: None,
    }
}

/// The create/roll answer: the key object plus the full key, this once.
pub fn issued_key_json<'a>(key: &'a ApiKey, secret: &'a str, usage: &UsageTracker) -> KeyView<'a> {
    KeyView {
        key: Some(secret),
        ..key_json(key, usage)
    }
}

pub fn audit_json(e: &AuditEntry) -> Value {
    let actor = match &e.actor {
        Actor::Operator { id, email } => json!({ "type": "operator", "id": id, "email": email }),
        Actor::ApiKey { id, name, prefix } => {
            json!({ "type": "api_key", "id": id, "name": name, "prefix": prefix })
        }
        Actor::InstanceAdmin => json!({ "type": "instance_admin" }),
    };
    let mut target = json!({ "type": e.target.kind, "id": e.target.id });
    if let (Some(name), Value::Object(map)) = (&e.target.name, &mut target) {
        map.insert("name".into(), Value::String(name.clone()));
    }
    json!({
        "id": e.id,
        "at": format_rfc3339(e.at),
        "actor": actor,
        "action": e.action,
        "target": target,
        "ip": e.ip,
        "project_id": e.project_id,
        "details": e.details,
    })
}

pub fn workspace_json(w: &Workspace) -> Value {
    json!({ "id": w.id, "object": "workspace", "name": w.name, "plan": w.plan.as_str(), "created_at": format_rfc3339(w.created_at) })
}

pub fn project_json(p: &Project) -> Value {
    json!({
        "id": p.id,
        "object": "project",
        "workspace_id": p.workspace_id,
        "name": p.name,
        "environment": p.environment.as_str(),
        "created_at": format_rfc3339(p.created_at),
    })
}

pub fn operator_json(o: &Operator, workspace_id: &str, role: keyflow_core::Role) -> Value {
    json!({
        "id": o.id,
        "object": "operator",
        "email": o.email,
        "workspace_id": workspace_id,
        "role": role.as_str(),
        "created_at": format_rfc3339(o.created_at),
    })
}

pub fn contact_json(c: &Contact) -> Value {
    let f = &c.fields;
    json!({
        "id": c.id,
        "object": "contact",
        "email": f.email,
        "external_id": f.external_id,
        "first_name": f.first_name,
        "last_name": f.last_name,
        "subscribed": f.subscribed,
        "properties": f.properties,
        "created_at": format_rfc3339(c.created_at),
        "updated_at": format_rfc3339(c.updated_at),
    })
}

pub fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id,
        "object": "event",
        "name": e.name,
        "contact_id": e.contact_id,
        "anonymous_id": e.anonymous_id,
        "properties": e.properties,
        "timestamp": format_rfc3339(e.timestamp),
        "received_at": format_rfc3339(e.received_at),
        "idempotency_key": e.idempotency_key,
    })
}

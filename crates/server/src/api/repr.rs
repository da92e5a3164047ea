//! JSON representations of stored objects (SPEC §2/§3/§8 field names).

use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::{Actor, ApiKey, AuditEntry, Contact, Event, Operator, Project, Workspace};
use serde_json::{Value, json};

use crate::usage::UsageTracker;

fn time(ms: Option<i64>) -> Value {
    ms.map(|t| Value::String(format_rfc3339(t)))
        .unwrap_or(Value::Null)
}

fn creator(actor: &Actor) -> Value {
    match actor {
        Actor::Operator { id, email } => json!({ "type": "operator", "id": id, "name": email }),
        Actor::ApiKey { id, name, .. } => json!({ "type": "api_key", "id": id, "name": name }),
        Actor::InstanceAdmin => {
            json!({ "type": "instance_admin", "id": null, "name": "instance admin" })
        }
    }
}

/// The key object. Unflushed use from memory wins over the stored value.
pub fn key_json(key: &ApiKey, usage: &UsageTracker) -> Value {
    let (mut last_used_at, mut last_used_ip) = (key.last_used_at, key.last_used_ip.clone());
    if let Some((at, ip)) = usage.pending(&key.id)
        && last_used_at.is_none_or(|stored| stored < at)
    {
        last_used_at = Some(at);
        last_used_ip = ip;
    }
    let s = &key.settings;
    json!({
        "id": key.id,
        "object": "api_key",
        "name": s.name,
        "type": key.key_type.as_str(),
        "scopes": key.scopes.to_strings(),
        "prefix": key.prefix,
        "created_at": time(Some(key.created_at)),
        "created_by": creator(&key.created_by),
        "last_used_at": time(last_used_at),
        "last_used_ip": last_used_ip,
        "expires_at": time(s.expires_at),
        "revoked_at": time(key.revoked_at),
        "ip_allowlist": s.ip_allowlist,
        "allowed_events": s.allowed_events,
        "allowed_origins": s.allowed_origins,
        "rate_limit": s.rate_limit,
    })
}

/// The create/roll answer: the key object plus the full key, this once.
pub fn issued_key_json(key: &ApiKey, secret: &str, usage: &UsageTracker) -> Value {
    let mut body = key_json(key, usage);
    if let Value::Object(map) = &mut body {
        map.insert("key".into(), Value::String(secret.to_string()));
    }
    body
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

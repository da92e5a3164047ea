//! The JSON objects the API answers with (SPEC §2/§3/§8 field names): each
//! is the type that is serialised, and its OpenAPI schema is derived from
//! it, so the document cannot drift from what is sent.

use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{IpRule, RateLimit};
use keyflow_store::{Actor, ApiKey, AuditEntry, Contact, Event, Operator, Project, Workspace};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::requests;

use crate::usage::UsageTracker;

/// Who created a key, as the key object shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Creator)]
pub struct CreatorView<'a> {
    /// `operator`, `api_key`, `instance_admin` or `workflow`.
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
        Actor::Workflow { id, name } => CreatorView {
            kind: "workflow",
            id: Some(id),
            name,
        },
    }
}

/// The key object, serialised straight from the stored key:
/// `GET /v1/keys/self` is on the hot path, and building a `serde_json::Value`
/// map first cost more than the rest of the handler.
#[derive(Serialize, ToSchema)]
#[schema(as = Key)]
pub struct KeyView<'a> {
    id: &'a str,
    object: &'static str,
    name: &'a str,
    #[serde(rename = "type")]
    key_type: &'static str,
    scopes: Vec<&'static str>,
    /// First 12 characters, e.g. `sk_live_AbCd`.
    prefix: &'a str,
    created_at: String,
    created_by: CreatorView<'a>,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    #[schema(value_type = Vec<requests::IpRule>)]
    ip_allowlist: &'a [IpRule],
    allowed_events: Option<&'a [String]>,
    /// Client keys only.
    allowed_origins: Option<&'a [String]>,
    #[schema(value_type = Option<requests::RateLimit>)]
    rate_limit: Option<RateLimit>,
    /// The full key: only in the create/roll answer, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

/// The key object. Unflushed use from memory wins over the stored value.
pub fn key_json<'a>(key: &'a ApiKey, usage: &UsageTracker) -> KeyView<'a> {
    let (last_used_at, last_used_ip) = last_used(key, usage);
    key_view(key, last_used_at, last_used_ip)
}

/// When and from where the key was last used: unflushed use from memory
/// wins over the stored value.
fn last_used(key: &ApiKey, usage: &UsageTracker) -> (Option<i64>, Option<String>) {
    let (mut last_used_at, mut last_used_ip) = (key.last_used_at, key.last_used_ip.clone());
    if let Some((at, ip)) = usage.pending(&key.id)
        && last_used_at.is_none_or(|stored| stored < at)
    {
        last_used_at = Some(at);
        last_used_ip = ip.map(|ip| ip.to_string());
    }
    (last_used_at, last_used_ip)
}

/// The last-used fields as serialised when both are empty: the only part of
/// a key object that changes without the key changing. An unescaped `"`
/// cannot occur inside a JSON string, so this text occurs once, as keys.
const LAST_USED_EMPTY: &str = r#""last_used_at":null,"last_used_ip":null"#;

/// The key object's JSON around its last-used fields, made once per cached
/// key (a change to the key replaces the cached key): `GET /v1/keys/self`
/// then copies two strings instead of serialising ~1 KB per request.
#[derive(Debug)]
pub struct KeyJsonParts {
    head: String,
    tail: String,
}

impl KeyJsonParts {
    pub fn of(key: &ApiKey) -> Option<KeyJsonParts> {
        let whole = serde_json::to_string(&key_view(key, None, None)).ok()?;
        let at = whole.find(LAST_USED_EMPTY)?;
        Some(KeyJsonParts {
            head: whole[..at].to_string(),
            tail: whole[at + LAST_USED_EMPTY.len()..].to_string(),
        })
    }

    /// The key object as [`key_json`] serialises it.
    pub fn body(&self, key: &ApiKey, usage: &UsageTracker) -> String {
        let (last_used_at, last_used_ip) = last_used(key, usage);
        let text = |value: Option<String>| {
            serde_json::to_string(&value).unwrap_or_else(|_| "null".to_string())
        };
        let at = text(last_used_at.map(format_rfc3339));
        let ip = text(last_used_ip);
        let mut out = String::with_capacity(self.head.len() + self.tail.len() + 80);
        out.push_str(&self.head);
        out.push_str(r#""last_used_at":"#);
        out.push_str(&at);
        out.push_str(r#","last_used_ip":"#);
        out.push_str(&ip);
        out.push_str(&self.tail);
        out
    }
}

fn key_view(key: &ApiKey, last_used_at: Option<i64>, last_used_ip: Option<String>) -> KeyView<'_> {
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

/// `{"data": [...], "next_cursor": …}`: one page of a list.
#[derive(Serialize, ToSchema)]
pub struct ListPage<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Who did something, in an audit entry.
#[derive(Serialize, ToSchema)]
#[schema(as = Actor)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActorView<'a> {
    Operator {
        id: &'a str,
        email: &'a str,
    },
    ApiKey {
        id: &'a str,
        name: &'a str,
        prefix: &'a str,
    },
    InstanceAdmin,
    Workflow {
        id: &'a str,
        name: &'a str,
    },
}

#[derive(Serialize, ToSchema)]
#[schema(as = Target)]
pub struct TargetView<'a> {
    /// e.g. `api_key`, `contact`, `operator`, `workspace`.
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// An activity log entry.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditView<'a> {
    id: &'a str,
    at: String,
    actor: ActorView<'a>,
    /// e.g. `api_key.created`, `contact.updated`, `plan.changed`.
    action: &'a str,
    target: TargetView<'a>,
    ip: Option<&'a str>,
    project_id: Option<&'a str>,
    details: &'a Value,
}

pub fn audit_json(e: &AuditEntry) -> AuditView<'_> {
    let actor = match &e.actor {
        Actor::Operator { id, email } => ActorView::Operator { id, email },
        Actor::ApiKey { id, name, prefix } => ActorView::ApiKey { id, name, prefix },
        Actor::InstanceAdmin => ActorView::InstanceAdmin,
        Actor::Workflow { id, name } => ActorView::Workflow { id, name },
    };
    AuditView {
        id: &e.id,
        at: format_rfc3339(e.at),
        actor,
        action: &e.action,
        target: TargetView {
            kind: &e.target.kind,
            id: e.target.id.as_deref(),
            name: e.target.name.as_deref(),
        },
        ip: e.ip.as_deref(),
        project_id: e.project_id.as_deref(),
        details: &e.details,
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Workspace)]
pub struct WorkspaceView<'a> {
    id: &'a str,
    /// Always `workspace`.
    object: &'static str,
    name: &'a str,
    /// `free`, `pro` or `team`.
    plan: &'static str,
    created_at: String,
}

pub fn workspace_json(w: &Workspace) -> WorkspaceView<'_> {
    WorkspaceView {
        id: &w.id,
        object: "workspace",
        name: &w.name,
        plan: w.plan.as_str(),
        created_at: format_rfc3339(w.created_at),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Project)]
pub struct ProjectView<'a> {
    id: &'a str,
    /// Always `project`.
    object: &'static str,
    workspace_id: &'a str,
    name: &'a str,
    /// `live` or `test`.
    environment: &'static str,
    created_at: String,
}

pub fn project_json(p: &Project) -> ProjectView<'_> {
    ProjectView {
        id: &p.id,
        object: "project",
        workspace_id: &p.workspace_id,
        name: &p.name,
        environment: p.environment.as_str(),
        created_at: format_rfc3339(p.created_at),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Operator)]
pub struct OperatorView<'a> {
    id: &'a str,
    /// Always `operator`.
    object: &'static str,
    email: &'a str,
    workspace_id: &'a str,
    /// `owner`, `admin` or `member`.
    role: &'static str,
    created_at: String,
}

pub fn operator_json<'a>(
    o: &'a Operator,
    workspace_id: &'a str,
    role: keyflow_core::Role,
) -> OperatorView<'a> {
    OperatorView {
        id: &o.id,
        object: "operator",
        email: &o.email,
        workspace_id,
        role: role.as_str(),
        created_at: format_rfc3339(o.created_at),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Contact)]
pub struct ContactView<'a> {
    id: &'a str,
    /// Always `contact`.
    object: &'static str,
    email: Option<&'a str>,
    external_id: Option<&'a str>,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    subscribed: bool,
    properties: &'a Map<String, Value>,
    created_at: String,
    updated_at: String,
}

pub fn contact_json(c: &Contact) -> ContactView<'_> {
    let f = &c.fields;
    ContactView {
        id: &c.id,
        object: "contact",
        email: f.email.as_deref(),
        external_id: f.external_id.as_deref(),
        first_name: f.first_name.as_deref(),
        last_name: f.last_name.as_deref(),
        subscribed: f.subscribed,
        properties: &f.properties,
        created_at: format_rfc3339(c.created_at),
        updated_at: format_rfc3339(c.updated_at),
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventView<'a> {
    id: &'a str,
    /// Always `event`.
    object: &'static str,
    name: &'a str,
    contact_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    properties: &'a Map<String, Value>,
    timestamp: String,
    received_at: String,
    idempotency_key: Option<&'a str>,
}

pub fn event_json(e: &Event) -> EventView<'_> {
    EventView {
        id: &e.id,
        object: "event",
        name: &e.name,
        contact_id: e.contact_id.as_deref(),
        anonymous_id: e.anonymous_id.as_deref(),
        properties: &e.properties,
        timestamp: format_rfc3339(e.timestamp),
        received_at: format_rfc3339(e.received_at),
        idempotency_key: e.idempotency_key.as_deref(),
    }
}

/// The project's metrics credential; `client_secret` only in the
/// create/rotate answer, once.
#[derive(Serialize, ToSchema)]
#[schema(as = MetricsCredential)]
pub struct CredentialView<'a> {
    /// `mk_live_…` / `mk_test_…`: the public id sent as the bearer of `/v1/metrics/token`.
    id: &'a str,
    /// Always `metrics_credential`.
    object: &'static str,
    /// Shown once; only its SHA-256 is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    created_at: String,
    last_used_at: Option<String>,
    #[schema(value_type = Vec<requests::IpRule>)]
    ip_allowlist: &'a [IpRule],
    /// How long Metrics API results are cached (minutes, 5 to 10080).
    cache_ttl_minutes: i64,
}

pub fn credential_json<'a>(
    credential: &'a keyflow_store::MetricsCredential,
    cache_ttl_minutes: i64,
    secret: Option<&'a str>,
) -> CredentialView<'a> {
    CredentialView {
        id: &credential.id,
        object: "metrics_credential",
        client_secret: secret,
        created_at: format_rfc3339(credential.created_at),
        last_used_at: credential.last_used_at.map(format_rfc3339),
        ip_allowlist: &credential.ip_allowlist,
        cache_ttl_minutes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_core::key_settings::KeySettings;
    use keyflow_core::{KeyDigest, KeyType, Scope, ScopeSet};

    fn key(name: &str, last_used: Option<(i64, &str)>) -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            project_id: "proj_1".into(),
            key_type: KeyType::Secret,
            scopes: ScopeSet::EMPTY
                .with(Scope::EventsWrite)
                .with(Scope::ContactsRead),
            prefix: "sk_live_AbCd".into(),
            digest: KeyDigest::of("sk_live_AbCd-not-a-real-key"),
            settings: KeySettings {
                name: name.into(),
                expires_at: Some(1_900_000_000_000),
                ip_allowlist: vec![IpRule {
                    cidr: "10.0.0.0/8".into(),
                    description: "office \"HQ\"".into(),
                }],
                allowed_events: Some(vec!["signup".into()]),
                allowed_origins: None,
                rate_limit: Some(RateLimit {
                    limit: 100,
                    period_seconds: 60,
                }),
            },
            created_at: 1_700_000_000_123,
            created_by: Actor::Operator {
                id: "op_1".into(),
                email: "ada@example.com".into(),
            },
            last_used_at: last_used.map(|(at, _)| at),
            last_used_ip: last_used.map(|(_, ip)| ip.to_string()),
            revoked_at: None,
            rolled_at: None,
        }
    }

    /// `GET /v1/keys/self` copies the key object made once; it must be the
    /// object `key_json` serialises, whatever the key's text and last use.
    #[test]
    fn the_cached_key_object_is_the_serialised_one() {
        let usage = UsageTracker::default();
        let tricky = format!("x {LAST_USED_EMPTY} \\\" {{}}");
        for name in ["ci", tricky.as_str(), "ünïcødé 🔑"] {
            for last_used in [None, Some((1_700_000_500_000, "10.1.2.3"))] {
                let key = key(name, last_used);
                let parts = KeyJsonParts::of(&key).unwrap();
                let expected = serde_json::to_string(&key_json(&key, &usage)).unwrap();
                assert_eq!(parts.body(&key, &usage), expected);
                // Unflushed use from memory wins, as in `key_json`.
                usage.record(
                    &key.id,
                    1_800_000_000_000,
                    Some("192.0.2.7".parse().unwrap()),
                );
                let expected = serde_json::to_string(&key_json(&key, &usage)).unwrap();
                assert!(expected.contains("192.0.2.7"));
                assert_eq!(parts.body(&key, &usage), expected);
            }
        }
    }
}

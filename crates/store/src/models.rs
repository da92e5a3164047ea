//! What the Store persists. Plain data; JSON shapes belong to the server.

use keyflow_core::clock::UnixMillis;
use keyflow_core::key_settings::KeySettings;
use keyflow_core::{Environment, KeyDigest, KeyType, Plan, Role, ScopeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub environment: Environment,
    pub created_at: UnixMillis,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: UnixMillis,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("id", &self.id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub workspace_id: String,
    pub operator_id: String,
    pub role: Role,
    pub created_at: UnixMillis,
}

/// Who did something: the actor of an audit entry and the creator of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator {
        id: String,
        email: String,
    },
    ApiKey {
        id: String,
        name: String,
        prefix: String,
    },
    InstanceAdmin,
    /// A workflow's step (SPEC §10: its changes are audited with the
    /// workflow as actor).
    Workflow {
        id: String,
        name: String,
    },
}

impl Actor {
    pub fn type_name(&self) -> &'static str {
        match self {
            Actor::Operator { .. } => "operator",
            Actor::ApiKey { .. } => "api_key",
            Actor::InstanceAdmin => "instance_admin",
            Actor::Workflow { .. } => "workflow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub project_id: String,
    pub key_type: KeyType,
    pub scopes: ScopeSet,
    /// First 12 characters, for display.
    pub prefix: String,
    pub digest: KeyDigest,
    pub settings: KeySettings,
    pub created_at: UnixMillis,
    pub created_by: Actor,
    pub last_used_at: Option<UnixMillis>,
    pub last_used_ip: Option<String>,
    pub revoked_at: Option<UnixMillis>,
    /// Set once the key has been rolled: its expiry is final from then on.
    pub rolled_at: Option<UnixMillis>,
}

/// A key found by digest, with what authentication needs besides the key.
#[derive(Debug, Clone)]
pub struct AuthKey {
    pub key: ApiKey,
    pub workspace_id: String,
    pub environment: Environment,
}

/// Aggregated last-use of one key, flushed periodically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: String,
    pub last_used_at: UnixMillis,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTarget {
    pub kind: String,
    pub id: Option<String>,
    pub name: Option<String>,
}

/// What an activity-log entry records (SPEC §3): one variant per action, so
/// a typo cannot write an action nobody filters for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    ApiKeyCreated,
    ApiKeyUpdated,
    ApiKeyRolled,
    ApiKeyRevoked,
    ContactCreated,
    ContactUpdated,
    ContactDeleted,
    SubscriberCreated,
    SubscriberUpdated,
    SubscriberUnsubscribed,
    MemberAdded,
    MemberRoleChanged,
    MemberRemoved,
    PlanChanged,
    OperatorSignedIn,
    ProjectSettingsChanged,
    MetricsCredentialCreated,
    MetricsCredentialRotated,
    MetricsCredentialUpdated,
    WorkflowCreated,
    WorkflowUpdated,
    WorkflowArchived,
    WorkflowSecretRotated,
    WorkflowRunCancelled,
    WorkflowRunRetried,
    WorkflowRunSkipped,
}

impl AuditAction {
    pub const ALL: [AuditAction; 26] = [
        AuditAction::ApiKeyCreated,
        AuditAction::ApiKeyUpdated,
        AuditAction::ApiKeyRolled,
        AuditAction::ApiKeyRevoked,
        AuditAction::ContactCreated,
        AuditAction::ContactUpdated,
        AuditAction::ContactDeleted,
        AuditAction::SubscriberCreated,
        AuditAction::SubscriberUpdated,
        AuditAction::SubscriberUnsubscribed,
        AuditAction::MemberAdded,
        AuditAction::MemberRoleChanged,
        AuditAction::MemberRemoved,
        AuditAction::PlanChanged,
        AuditAction::OperatorSignedIn,
        AuditAction::ProjectSettingsChanged,
        AuditAction::MetricsCredentialCreated,
        AuditAction::MetricsCredentialRotated,
        AuditAction::MetricsCredentialUpdated,
        AuditAction::WorkflowCreated,
        AuditAction::WorkflowUpdated,
        AuditAction::WorkflowArchived,
        AuditAction::WorkflowSecretRotated,
        AuditAction::WorkflowRunCancelled,
        AuditAction::WorkflowRunRetried,
        AuditAction::WorkflowRunSkipped,
    ];

    /// The wire name (`api_key.created`, …), as stored and filtered on.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ApiKeyCreated => "api_key.created",
            AuditAction::ApiKeyUpdated => "api_key.updated",
            AuditAction::ApiKeyRolled => "api_key.rolled",
            AuditAction::ApiKeyRevoked => "api_key.revoked",
            AuditAction::ContactCreated => "contact.created",
            AuditAction::ContactUpdated => "contact.updated",
            AuditAction::ContactDeleted => "contact.deleted",
            AuditAction::SubscriberCreated => "subscriber.created",
            AuditAction::SubscriberUpdated => "subscriber.updated",
            AuditAction::SubscriberUnsubscribed => "subscriber.unsubscribed",
            AuditAction::MemberAdded => "member.added",
            AuditAction::MemberRoleChanged => "member.role_changed",
            AuditAction::MemberRemoved => "member.removed",
            AuditAction::PlanChanged => "plan.changed",
            AuditAction::OperatorSignedIn => "operator.signed_in",
            AuditAction::ProjectSettingsChanged => "project.settings_changed",
            AuditAction::MetricsCredentialCreated => "metrics_credential.created",
            AuditAction::MetricsCredentialRotated => "metrics_credential.rotated",
            AuditAction::MetricsCredentialUpdated => "metrics_credential.updated",
            AuditAction::WorkflowCreated => "workflow.created",
            AuditAction::WorkflowUpdated => "workflow.updated",
            AuditAction::WorkflowArchived => "workflow.archived",
            AuditAction::WorkflowSecretRotated => "workflow.secret_rotated",
            AuditAction::WorkflowRunCancelled => "workflow_run.cancelled",
            AuditAction::WorkflowRunRetried => "workflow_run.retried",
            AuditAction::WorkflowRunSkipped => "workflow_run.skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub workspace_id: String,
    /// `None` for workspace-wide events (plan changes, members).
    pub project_id: Option<String>,
    pub at: UnixMillis,
    pub actor: Actor,
    pub action: String,
    pub target: AuditTarget,
    pub ip: Option<String>,
    pub details: serde_json::Value,
}

/// A new time-ordered id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: String,
    pub project_id: String,
    pub fields: keyflow_core::contacts::ContactFields,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub contact_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub timestamp: UnixMillis,
    pub received_at: UnixMillis,
    pub idempotency_key: Option<String>,
}

/// What ingesting one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    pub id: String,
    /// A repeat of an idempotency key seen in the last 24 h: nothing was stored.
    pub duplicate: bool,
}

/// Who is changing customer data, for the audit entry the Store writes with it.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub workspace_id: String,
    pub actor: Actor,
    pub ip: Option<String>,
    /// Extra facts for the entry's `details` (e.g. a signup's `source`).
    pub details: serde_json::Value,
    /// How many workflow steps led to this write (0: none): the runs it
    /// starts are one level deeper (SPEC §10's loop guard).
    pub workflow_depth: i64,
}

/// Result of a create-or-update.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsertOutcome {
    pub contact: Contact,
    pub created: bool,
    /// Whether `subscribed` differs from before (a new contact was not
    /// subscribed before).
    pub subscription_changed: bool,
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub contact_id: Option<String>,
    pub name: Option<String>,
    pub since: Option<UnixMillis>,
    pub until: Option<UnixMillis>,
}

/// Which audit actions an upsert writes (contacts vs subscribers).
#[derive(Debug, Clone, Copy)]
pub struct UpsertActions {
    pub created: AuditAction,
    pub updated: AuditAction,
}

impl UpsertActions {
    pub const CONTACT: Self = Self {
        created: AuditAction::ContactCreated,
        updated: AuditAction::ContactUpdated,
    };
    pub const SUBSCRIBER: Self = Self {
        created: AuditAction::SubscriberCreated,
        updated: AuditAction::SubscriberUpdated,
    };
}

/// A dashboard session. `id_hash` is the SHA-256 (hex) of the cookie value.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: String,
    pub operator_id: String,
    pub csrf_token: String,
    pub created_at: UnixMillis,
    pub last_seen_at: UnixMillis,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("operator_id", &self.operator_id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Requests of one key on one UTC day (`day` = days since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DailyUsage {
    pub day: i64,
    pub requests: i64,
    pub errors: i64,
    pub rate_limited: i64,
}

/// Filters of the activity log. `actor` matches an actor's id, or its name
/// (an operator's email, a key's name) exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
}

/// A project's settings (dashboard → Settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectSettings {
    /// Overrides the plan's default quota for every key of the project
    /// (a key's own `rate_limit` still wins).
    pub rate_limit: Option<keyflow_core::RateLimit>,
    /// How long Metrics API results are cached (minutes, at least 5).
    pub metrics_cache_ttl_minutes: i64,
}

impl Default for ProjectSettings {
    fn default() -> Self {
        Self {
            rate_limit: None,
            metrics_cache_ttl_minutes: 5,
        }
    }
}

/// A project's metrics credential (SPEC §4). `id` is the public `mk_<env>_…`
/// identifier; the client secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsCredential {
    pub project_id: String,
    pub id: String,
    pub secret_digest: keyflow_core::KeyDigest,
    pub ip_allowlist: Vec<keyflow_core::IpRule>,
    pub created_at: UnixMillis,
    pub last_used_at: Option<UnixMillis>,
}

#[cfg(test)]
mod audit_action_tests {
    use super::AuditAction;

    #[test]
    fn every_action_has_its_own_dotted_name() {
        let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|n| n.split('.').count() == 2));
        // SPEC §3's examples are among them.
        for spec in [
            "api_key.created",
            "api_key.revoked",
            "api_key.updated",
            "api_key.rolled",
            "contact.created",
            "contact.updated",
            "contact.deleted",
            "subscriber.created",
            "member.added",
            "plan.changed",
            "metrics_credential.rotated",
            "operator.signed_in",
        ] {
            assert!(names.contains(&spec), "{spec}");
        }
    }
}

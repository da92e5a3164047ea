//! How models map to columns, for both backends: column lists, the row
//! shapes sqlx decodes (`FromRow`), and the conversions between those rows
//! and the models (JSON columns, enums stored as text). Plain functions over
//! already-read values: the direct SQLite paths (`sqlite::reader`,
//! `sqlite::direct`) share them with sqlx.

mod customer_data;
mod keys;

pub(crate) use customer_data::*;
pub(crate) use keys::*;

use keyflow_core::{Environment, KeyDigest, Plan, Role};

use crate::{
    Actor, AuditEntry, AuditTarget, Membership, MetricsCredential, Operator, Project,
    ProjectSettings, Session, StoreError, StoreResult, Workspace,
};

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (id, workspace_id, project_id, at, actor_type, \
     actor_id, actor_name, actor_prefix, action, target_type, target_id, target_name, ip, details) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

pub(crate) const AUDIT_COLUMNS: &str = "id, workspace_id, project_id, at, actor_type, actor_id, actor_name, \
     actor_prefix, action, target_type, target_id, target_name, ip, details";

/// The columns of an actor: (type, id, name, prefix).
pub(crate) fn actor_columns(
    actor: &Actor,
) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    match actor {
        Actor::Operator { id, email } => ("operator", Some(id), Some(email), None),
        Actor::ApiKey { id, name, prefix } => ("api_key", Some(id), Some(name), Some(prefix)),
        Actor::InstanceAdmin => ("instance_admin", None, None, None),
        Actor::Workflow { id, name } => ("workflow", Some(id), Some(name), None),
    }
}

pub(crate) fn actor_from_columns(
    kind: &str,
    id: Option<String>,
    name: Option<String>,
    prefix: Option<String>,
) -> StoreResult<Actor> {
    Ok(match kind {
        "operator" => Actor::Operator {
            id: id.unwrap_or_default(),
            email: name.unwrap_or_default(),
        },
        "api_key" => Actor::ApiKey {
            id: id.unwrap_or_default(),
            name: name.unwrap_or_default(),
            prefix: prefix.unwrap_or_default(),
        },
        "instance_admin" => Actor::InstanceAdmin,
        "workflow" => Actor::Workflow {
            id: id.unwrap_or_default(),
            name: name.unwrap_or_default(),
        },
        other => return Err(StoreError::Corrupt(format!("unknown actor type {other:?}"))),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// The raw columns of an `audit_log` row ([`AUDIT_COLUMNS`]).
#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub id: String,
    pub workspace_id: String,
    pub project_id: Option<String>,
    pub at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub actor_prefix: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub ip: Option<String>,
    pub details: String,
}

impl AuditRow {
    pub(crate) fn into_model(self) -> StoreResult<AuditEntry> {
        Ok(AuditEntry {
            id: self.id,
            workspace_id: self.workspace_id,
            project_id: self.project_id,
            at: self.at,
            actor: actor_from_columns(
                &self.actor_type,
                self.actor_id,
                self.actor_name,
                self.actor_prefix,
            )?,
            action: self.action,
            target: AuditTarget {
                kind: self.target_type,
                id: self.target_id,
                name: self.target_name,
            },
            ip: self.ip,
            details: from_json("details", &self.details)?,
        })
    }
}

pub(crate) fn parse_plan(text: &str) -> StoreResult<Plan> {
    Plan::parse(text).ok_or_else(|| StoreError::Corrupt(format!("plan {text:?}")))
}

pub(crate) fn parse_role(text: &str) -> StoreResult<Role> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("role {text:?}")))
}

pub(crate) fn parse_environment(text: &str) -> StoreResult<Environment> {
    Environment::parse(text).ok_or_else(|| StoreError::Corrupt(format!("environment {text:?}")))
}

pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}

#[derive(sqlx::FromRow)]
pub(crate) struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub created_at: i64,
}

impl WorkspaceRow {
    pub(crate) fn into_model(self) -> StoreResult<Workspace> {
        Ok(Workspace {
            plan: parse_plan(&self.plan)?,
            id: self.id,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

pub(crate) const PROJECT_COLUMNS: &str = "id, workspace_id, name, environment, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectRow {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub environment: String,
    pub created_at: i64,
}

impl ProjectRow {
    pub(crate) fn into_model(self) -> StoreResult<Project> {
        Ok(Project {
            environment: parse_environment(&self.environment)?,
            id: self.id,
            workspace_id: self.workspace_id,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

pub(crate) const OPERATOR_COLUMNS: &str = "id, email, password_hash, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct OperatorRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
}

impl From<OperatorRow> for Operator {
    fn from(r: OperatorRow) -> Self {
        Operator {
            id: r.id,
            email: r.email,
            password_hash: r.password_hash,
            created_at: r.created_at,
        }
    }
}

pub(crate) const MEMBERSHIP_COLUMNS: &str = "workspace_id, operator_id, role, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct MembershipRow {
    pub workspace_id: String,
    pub operator_id: String,
    pub role: String,
    pub created_at: i64,
}

impl MembershipRow {
    pub(crate) fn into_model(self) -> StoreResult<Membership> {
        Ok(Membership {
            role: parse_role(&self.role)?,
            workspace_id: self.workspace_id,
            operator_id: self.operator_id,
            created_at: self.created_at,
        })
    }
}

/// A member with their account: a membership joined with its operator,
/// whose `created_at` is read as `o_created_at`.
#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub o_created_at: i64,
    #[sqlx(flatten)]
    pub membership: MembershipRow,
}

impl MemberRow {
    pub(crate) fn into_model(self) -> StoreResult<(Operator, Membership)> {
        let operator = Operator {
            id: self.id,
            email: self.email,
            password_hash: self.password_hash,
            created_at: self.o_created_at,
        };
        Ok((operator, self.membership.into_model()?))
    }
}

pub(crate) const SESSION_COLUMNS: &str =
    "id_hash, operator_id, csrf_token, created_at, last_seen_at";

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub id_hash: String,
    pub operator_id: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            id_hash: r.id_hash,
            operator_id: r.operator_id,
            csrf_token: r.csrf_token,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectSettingsRow {
    pub rate_limit: Option<String>,
    pub metrics_cache_ttl_minutes: i64,
}

impl ProjectSettingsRow {
    pub(crate) fn into_model(self) -> StoreResult<ProjectSettings> {
        Ok(ProjectSettings {
            rate_limit: self
                .rate_limit
                .as_deref()
                .map(|t| from_json("rate_limit", t))
                .transpose()?,
            metrics_cache_ttl_minutes: self.metrics_cache_ttl_minutes,
        })
    }
}

/// JSON text of a value that always serialises (rules, limits, maps).
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) const CREDENTIAL_COLUMNS: &str =
    "project_id, id, secret_digest, ip_allowlist, created_at, last_used_at";

#[derive(sqlx::FromRow)]
pub(crate) struct CredentialRow {
    pub project_id: String,
    pub id: String,
    pub secret_digest: String,
    pub ip_allowlist: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A credential row with its project's workspace (token exchange).
#[derive(sqlx::FromRow)]
pub(crate) struct CredentialAuthRow {
    #[sqlx(flatten)]
    pub credential: CredentialRow,
    pub workspace_id: String,
}

impl CredentialRow {
    pub(crate) fn into_model(self) -> StoreResult<MetricsCredential> {
        Ok(MetricsCredential {
            secret_digest: KeyDigest::from_hex(&self.secret_digest)
                .ok_or_else(|| StoreError::Corrupt("metrics credential digest".into()))?,
            ip_allowlist: from_json("ip_allowlist", &self.ip_allowlist)?,
            project_id: self.project_id,
            id: self.id,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
        })
    }
}

//! Operations shared by the HTTP API, the admin API and the CLI. They talk to
//! the Store and write the audit trail; callers own caches and HTTP.

pub mod contacts;
mod error;
pub mod events;
pub mod keys;
pub mod metrics_credential;
pub mod sessions;
pub mod tenancy;
pub mod workflows;

pub use error::{OpError, OpResult};

use keyflow_core::clock::UnixMillis;
use keyflow_store::{Actor, AuditAction, AuditContext, AuditEntry, AuditTarget, Store, new_id};

use crate::changes::ChangeBus;

/// Who makes a change, from where and when, and where the operation
/// reports it: every audited mutation takes one. (The request id needs no
/// field: it is in the request's task-local scope, which every log line and
/// error body already carries.)
pub struct Ctx<'a> {
    pub store: &'a dyn Store,
    pub bus: &'a dyn ChangeBus,
    pub actor: Actor,
    /// The client's address, when the change came over HTTP.
    pub ip: Option<String>,
    pub now: UnixMillis,
    /// How many workflow steps led to this change (0 unless a workflow
    /// makes it): contact writes pass it on to the runs they start.
    pub workflow_depth: i64,
}

impl Ctx<'_> {
    /// The audit entry of this change; `project_id = None` for workspace-wide changes.
    pub fn audit(
        &self,
        workspace_id: &str,
        project_id: Option<&str>,
        action: AuditAction,
        target: AuditTarget,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            id: new_id(),
            workspace_id: workspace_id.to_string(),
            project_id: project_id.map(str::to_string),
            at: self.now,
            actor: self.actor.clone(),
            action: action.as_str().to_string(),
            target,
            ip: self.ip.clone(),
            details,
        }
    }

    /// What the store needs to audit a contact write.
    pub fn contact_audit(&self, workspace_id: &str, details: serde_json::Value) -> AuditContext {
        AuditContext {
            workspace_id: workspace_id.to_string(),
            actor: self.actor.clone(),
            ip: self.ip.clone(),
            details,
            workflow_depth: self.workflow_depth,
        }
    }
}

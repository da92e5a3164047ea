//! Operations shared by the HTTP API, the admin API and the CLI. They talk to
//! the Store and write the audit trail; callers own caches and HTTP.

pub mod contacts;
mod error;
pub mod events;
pub mod keys;
pub mod metrics_credential;
pub mod tenancy;

pub use error::{OpError, OpResult};

use keyflow_core::clock::UnixMillis;
use keyflow_store::{Actor, AuditEntry, AuditTarget, new_id};

/// Builds an audit entry; `project_id = None` for workspace-wide events.
#[allow(clippy::too_many_arguments)]
pub fn audit_entry(
    workspace_id: &str,
    project_id: Option<&str>,
    actor: &Actor,
    action: keyflow_store::AuditAction,
    target: AuditTarget,
    ip: Option<String>,
    details: serde_json::Value,
    at: UnixMillis,
) -> AuditEntry {
    AuditEntry {
        id: new_id(),
        workspace_id: workspace_id.to_string(),
        project_id: project_id.map(str::to_string),
        at,
        actor: actor.clone(),
        action: action.as_str().to_string(),
        target,
        ip,
        details,
    }
}

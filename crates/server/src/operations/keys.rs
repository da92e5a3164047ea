//! Minting, changing, rolling and revoking API keys.

use keyflow_core::clock::UnixMillis;
use keyflow_core::key_settings::{KeySettings, NewKeySpec};
use keyflow_core::keys::generate_key;
use keyflow_core::{ErrorCode, KeyType, ScopeSet};
use keyflow_store::{Actor, ApiKey, AuditTarget, Project, Store, new_id};
use serde_json::json;

use super::audit_entry;
use crate::error::{ApiError, ApiResult};

/// A key just minted: the stored record and the full text, shown once.
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedKey({}…)", self.key.prefix)
    }
}

/// The longest grace period of a roll.
pub const MAX_ROLL_GRACE_SECONDS: i64 = 7 * 24 * 3600;

fn target(key: &ApiKey) -> AuditTarget {
    AuditTarget {
        kind: "api_key".into(),
        id: Some(key.id.clone()),
        name: Some(key.settings.name.clone()),
    }
}

fn mint(
    project: &Project,
    key_type: KeyType,
    scopes: ScopeSet,
    settings: KeySettings,
    actor: &Actor,
    now: UnixMillis,
) -> ApiResult<IssuedKey> {
    let minted = generate_key(key_type, project.environment)
        .map_err(|e| ApiError::internal("key generation", &e))?;
    let key = ApiKey {
        id: new_id(),
        project_id: project.id.clone(),
        key_type,
        scopes,
        prefix: minted.prefix.clone(),
        digest: minted.digest,
        settings,
        created_at: now,
        created_by: actor.clone(),
        last_used_at: None,
        last_used_ip: None,
        revoked_at: None,
    };
    Ok(IssuedKey {
        key,
        secret: minted.text,
    })
}

/// Creates a key. `creator_scopes` is `Some` when the creator is itself a key:
/// the new key may not hold a scope the creator lacks (no escalation), and a
/// request without scopes gets the type's default narrowed to the creator's.
#[allow(clippy::too_many_arguments)]
pub async fn create_key(
    store: &dyn Store,
    project: &Project,
    spec: NewKeySpec,
    scopes_requested: bool,
    actor: &Actor,
    creator_scopes: Option<ScopeSet>,
    ip: Option<String>,
    now: UnixMillis,
) -> ApiResult<IssuedKey> {
    let scopes = resolve_scopes(spec.scopes, scopes_requested, creator_scopes)?;
    let issued = mint(project, spec.key_type, scopes, spec.settings, actor, now)?;
    let entry = audit_entry(
        &project.workspace_id,
        Some(&project.id),
        actor,
        "api_key.created",
        target(&issued.key),
        ip,
        json!({ "type": spec.key_type.as_str(), "scopes": scopes.to_strings(), "prefix": issued.key.prefix }),
        now,
    );
    store.insert_api_key(&issued.key, &entry).await?;
    Ok(issued)
}

/// The scopes a new key gets. When a key creates it (`creator`), requested
/// scopes must be a subset of the creator's, and the type's default is
/// narrowed to them.
pub fn resolve_scopes(
    scopes: ScopeSet,
    requested: bool,
    creator: Option<ScopeSet>,
) -> ApiResult<ScopeSet> {
    let Some(creator) = creator else {
        return Ok(scopes);
    };
    if requested {
        refuse_escalation(scopes, creator)?;
        return Ok(scopes);
    }
    let narrowed = scopes.intersect(creator);
    if narrowed.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InsufficientScope,
            "The calling key holds none of the scopes a key of this type may hold.",
        ));
    }
    Ok(narrowed)
}

pub fn refuse_escalation(wanted: ScopeSet, creator: ScopeSet) -> ApiResult<()> {
    let missing = wanted.minus(creator);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InsufficientScope,
        format!(
            "A key cannot grant scopes it does not hold: {}.",
            missing.to_strings().join(", ")
        ),
    )
    .with_details(json!({ "missing_scopes": missing.to_strings() })))
}

/// Names of the settings that differ, for the audit entry.
pub fn changed_fields(before: &KeySettings, after: &KeySettings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if before.name != after.name {
        changed.push("name");
    }
    if before.expires_at != after.expires_at {
        changed.push("expires_at");
    }
    if before.ip_allowlist != after.ip_allowlist {
        changed.push("ip_allowlist");
    }
    if before.allowed_events != after.allowed_events {
        changed.push("allowed_events");
    }
    if before.allowed_origins != after.allowed_origins {
        changed.push("allowed_origins");
    }
    if before.rate_limit != after.rate_limit {
        changed.push("rate_limit");
    }
    changed
}

pub async fn update_key(
    store: &dyn Store,
    workspace_id: &str,
    key: &ApiKey,
    settings: &KeySettings,
    actor: &Actor,
    ip: Option<String>,
    now: UnixMillis,
) -> ApiResult<()> {
    let changed = changed_fields(&key.settings, settings);
    let mut after = key.clone();
    after.settings = settings.clone();
    let entry = audit_entry(
        workspace_id,
        Some(&key.project_id),
        actor,
        "api_key.updated",
        target(&after),
        ip,
        json!({ "changed": changed, "prefix": key.prefix }),
        now,
    );
    if !store
        .update_api_key_settings(&key.project_id, &key.id, settings, &entry)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "This API key is revoked and can no longer change.",
        ));
    }
    Ok(())
}

/// Revokes; `Ok(false)` if it was already revoked (nothing written).
pub async fn revoke_key(
    store: &dyn Store,
    workspace_id: &str,
    key: &ApiKey,
    actor: &Actor,
    ip: Option<String>,
    now: UnixMillis,
) -> ApiResult<bool> {
    let entry = audit_entry(
        workspace_id,
        Some(&key.project_id),
        actor,
        "api_key.revoked",
        target(key),
        ip,
        json!({ "prefix": key.prefix }),
        now,
    );
    Ok(store
        .revoke_api_key(&key.project_id, &key.id, now, &entry)
        .await?)
}

/// Mints a successor with the same type, scopes and settings; the old key
/// expires after `grace_seconds` (0 = now).
pub async fn roll_key(
    store: &dyn Store,
    project: &Project,
    old: &ApiKey,
    grace_seconds: i64,
    actor: &Actor,
    ip: Option<String>,
    now: UnixMillis,
) -> ApiResult<IssuedKey> {
    let issued = mint(
        project,
        old.key_type,
        old.scopes,
        old.settings.clone(),
        actor,
        now,
    )?;
    let old_expires_at = now + grace_seconds * 1000;
    let entry = audit_entry(
        &project.workspace_id,
        Some(&project.id),
        actor,
        "api_key.rolled",
        target(old),
        ip,
        json!({
            "old_prefix": old.prefix,
            "new_key_id": issued.key.id,
            "new_prefix": issued.key.prefix,
            "grace_seconds": grace_seconds,
        }),
        now,
    );
    if !store
        .roll_api_key(&project.id, &old.id, old_expires_at, &issued.key, &entry)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "This API key is revoked and cannot be rolled.",
        ));
    }
    Ok(issued)
}

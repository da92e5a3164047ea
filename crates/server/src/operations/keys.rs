//! Minting, changing, rolling and revoking API keys.

use keyflow_core::clock::UnixMillis;
use keyflow_core::key_settings::{KeySettings, NewKeySpec};
use keyflow_core::keys::generate_key;
use keyflow_core::restrictions::{Restriction, expiry_is_final, looser_than};
use keyflow_core::{ErrorCode, KeyType, RateLimit, ScopeSet};
use keyflow_store::{Actor, ApiKey, AuditTarget, Project, new_id};
use serde_json::json;

use super::Ctx;
use super::error::{OpError, OpResult};
use crate::changes::Change;

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
) -> OpResult<IssuedKey> {
    let minted = generate_key(key_type, project.environment)
        .map_err(|e| OpError::internal("key generation", &e))?;
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
        rolled_at: None,
    };
    Ok(IssuedKey {
        key,
        secret: minted.text,
    })
}

/// Who asks for a key change, and what binds them (SPEC §2).
#[derive(Clone, Copy)]
pub enum KeyAuthority<'a> {
    /// The instance admin (admin API, CLI): bound by nothing.
    Instance,
    /// An operator on the dashboard: tenant rate limits stay under the plan's.
    Operator { plan_limit: RateLimit },
    /// A key through the Management API: its own scopes and restrictions,
    /// and the plan's rate limit.
    Key {
        /// The calling key as enforced: its rate limit the effective one.
        key: &'a ApiKey,
        plan_limit: RateLimit,
        /// What a key without its own rate limit gets (project's, else plan's).
        default_limit: RateLimit,
    },
}

impl KeyAuthority<'_> {
    fn plan_limit(&self) -> Option<RateLimit> {
        match self {
            KeyAuthority::Instance => None,
            KeyAuthority::Operator { plan_limit } | KeyAuthority::Key { plan_limit, .. } => {
                Some(*plan_limit)
            }
        }
    }

    /// `settings` as they would be enforced: no rate limit of its own means
    /// the project's or plan's, which must be within the bound too.
    fn effective(&self, settings: &KeySettings) -> KeySettings {
        let mut effective = settings.clone();
        if let KeyAuthority::Key { default_limit, .. } = self
            && effective.rate_limit.is_none()
        {
            effective.rate_limit = Some(*default_limit);
        }
        effective
    }

    fn key(&self) -> Option<&ApiKey> {
        match self {
            KeyAuthority::Key { key, .. } => Some(key),
            _ => None,
        }
    }

    /// A key may act only on keys whose scopes are a subset of its own.
    pub fn may_manage(&self, target: &ApiKey) -> OpResult<()> {
        match self.key() {
            Some(caller) => refuse_escalation(target.scopes, caller.scopes).map_err(|_| {
                OpError::new(
                    ErrorCode::InsufficientScope,
                    "A key may manage only keys whose scopes are a subset of its own.",
                )
                .with_details(json!({
                    "missing_scopes": target.scopes.minus(caller.scopes).to_strings()
                }))
            }),
            None => Ok(()),
        }
    }

    /// `settings` (for the `which` restrictions) must be no freer than the
    /// calling key, and any rate limit no higher than the plan's.
    fn check(&self, settings: &KeySettings, which: &[Restriction]) -> OpResult<()> {
        if let (Some(ceiling), Some(rl)) = (self.plan_limit(), settings.rate_limit)
            && which.contains(&Restriction::RateLimit)
            && !rl.at_most(ceiling)
        {
            return Err(above_plan("rate_limit", ceiling));
        }
        let Some(caller) = self.key() else {
            return Ok(());
        };
        let looser = looser_than(&caller.settings, &self.effective(settings), which);
        if looser.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = looser.iter().map(|f| f.field.as_str()).collect();
        Err(OpError::new(
            ErrorCode::InsufficientScope,
            format!(
                "A key cannot make a key freer than itself: {}.",
                names.join(", ")
            ),
        )
        .with_details(json!({ "fields": looser })))
    }
}

/// `422` for a tenant rate limit above the plan's.
pub fn above_plan(field: &str, ceiling: RateLimit) -> OpError {
    OpError::field(
        field,
        format!(
            "must be at most the plan's limit of {} requests per {} s",
            ceiling.limit, ceiling.period_seconds
        ),
    )
}

/// Creates a key. A key as creator may not grant a scope it lacks; scopes
/// and restrictions the request leaves out are narrowed to (inherited from)
/// the creator's; the ones it names must be within the creator's.
pub async fn create_key(
    ctx: &Ctx<'_>,
    project: &Project,
    spec: NewKeySpec,
    authority: KeyAuthority<'_>,
) -> OpResult<IssuedKey> {
    let spec = narrow_spec(spec, authority)?;
    let scopes = spec.scopes;
    let issued = mint(
        project,
        spec.key_type,
        scopes,
        spec.settings,
        &ctx.actor,
        ctx.now,
    )?;
    let entry = ctx.audit(&project.workspace_id, Some(&project.id), keyflow_store::AuditAction::ApiKeyCreated, target(&issued.key), json!({ "type": spec.key_type.as_str(), "scopes": scopes.to_strings(), "prefix": issued.key.prefix }));
    ctx.store.insert_api_key(&issued.key, &entry).await?;
    ctx.bus.publish(Change::KeyCreated {
        digest: issued.key.digest,
    });
    Ok(issued)
}

/// The spec as `authority` may create it: what was left out narrowed to a
/// calling key's scopes and restrictions, what was named checked against
/// them. Idempotent; handlers call it before spending quota, since a refusal
/// is a 403 that must cost nothing.
pub fn narrow_spec(mut spec: NewKeySpec, authority: KeyAuthority<'_>) -> OpResult<NewKeySpec> {
    if let Some(creator) = authority.key() {
        spec.scopes = resolve_scopes(spec.scopes, spec.given.scopes, Some(creator.scopes))?;
        for r in Restriction::ALL {
            if !spec.given.has(r)
                && !r.within(&creator.settings, &authority.effective(&spec.settings))
            {
                r.copy(&creator.settings, &mut spec.settings);
            }
        }
    }
    authority.check(&spec.settings, &Restriction::ALL)?;
    Ok(spec)
}

/// The scopes a new key gets. When a key creates it (`creator`), requested
/// scopes must be a subset of the creator's, and the type's default is
/// narrowed to them.
pub fn resolve_scopes(
    scopes: ScopeSet,
    requested: bool,
    creator: Option<ScopeSet>,
) -> OpResult<ScopeSet> {
    let Some(creator) = creator else {
        return Ok(scopes);
    };
    if requested {
        refuse_escalation(scopes, creator)?;
        return Ok(scopes);
    }
    let narrowed = scopes.intersect(creator);
    if narrowed.is_empty() {
        return Err(OpError::new(
            ErrorCode::InsufficientScope,
            "The calling key holds none of the scopes a key of this type may hold.",
        ));
    }
    Ok(narrowed)
}

pub fn refuse_escalation(wanted: ScopeSet, creator: ScopeSet) -> OpResult<()> {
    let missing = wanted.minus(creator);
    if missing.is_empty() {
        return Ok(());
    }
    Err(OpError::new(
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
    let (b, a) = (before, after);
    [
        ("name", b.name != a.name),
        ("expires_at", b.expires_at != a.expires_at),
        ("ip_allowlist", b.ip_allowlist != a.ip_allowlist),
        ("allowed_events", b.allowed_events != a.allowed_events),
        ("allowed_origins", b.allowed_origins != a.allowed_origins),
        ("rate_limit", b.rate_limit != a.rate_limit),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect()
}

/// Whether `authority` may give `key` these `settings`. Idempotent;
/// handlers call it before spending quota, since a refusal is a 403.
pub fn check_update(
    key: &ApiKey,
    settings: &KeySettings,
    authority: KeyAuthority<'_>,
    now: UnixMillis,
) -> OpResult<()> {
    authority.may_manage(key)?;
    if settings.expires_at != key.settings.expires_at
        && expiry_is_final(&key.settings, key.rolled_at, now)
    {
        return Err(OpError::field(
            "expires_at",
            "this key has expired or been rolled; its expiry is final (create a new key instead)",
        ));
    }
    let changed: Vec<Restriction> = Restriction::ALL
        .into_iter()
        .filter(|r| !r.same(&key.settings, settings))
        .collect();
    authority.check(settings, &changed)
}

/// Changes a key's settings. A changed restriction must stay within the
/// calling key's (which also stops a key loosening its own); once a key has
/// expired or been rolled, its expiry is final.
pub async fn update_key(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    key: &ApiKey,
    settings: &KeySettings,
    authority: KeyAuthority<'_>,
) -> OpResult<()> {
    check_update(key, settings, authority, ctx.now)?;
    let changed = changed_fields(&key.settings, settings);
    let mut after = key.clone();
    after.settings = settings.clone();
    let entry = ctx.audit(
        workspace_id,
        Some(&key.project_id),
        keyflow_store::AuditAction::ApiKeyUpdated,
        target(&after),
        json!({ "changed": changed, "prefix": key.prefix }),
    );
    if !ctx
        .store
        .update_api_key_settings(&key.project_id, &key.id, key, settings, &entry)
        .await?
    {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "This API key was revoked or rolled meanwhile; read it again before changing it.",
        ));
    }
    ctx.bus.publish(Change::KeyUpdated { digest: key.digest });
    Ok(())
}

/// Revokes; `Ok(false)` if it was already revoked (nothing written).
pub async fn revoke_key(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    key: &ApiKey,
    authority: KeyAuthority<'_>,
) -> OpResult<bool> {
    authority.may_manage(key)?;
    let entry = ctx.audit(
        workspace_id,
        Some(&key.project_id),
        keyflow_store::AuditAction::ApiKeyRevoked,
        target(key),
        json!({ "prefix": key.prefix }),
    );
    let revoked = ctx
        .store
        .revoke_api_key(&key.project_id, &key.id, ctx.now, &entry)
        .await?;
    if revoked {
        ctx.bus.publish(Change::KeyRevoked { digest: key.digest });
    }
    Ok(revoked)
}

/// The settings of `old`'s successor, or why `authority` may not roll it.
/// Handlers call it before spending quota.
pub fn successor_settings(
    old: &ApiKey,
    authority: KeyAuthority<'_>,
    now: UnixMillis,
) -> OpResult<KeySettings> {
    authority.may_manage(old)?;
    if old.rolled_at.is_some() {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "This API key has already been rolled; roll its successor instead.",
        ));
    }
    if expiry_is_final(&old.settings, old.rolled_at, now) {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "This API key has expired and cannot be rolled; create a new key.",
        ));
    }
    let mut settings = old.settings.clone();
    settings.expires_at = authority.key().and_then(|k| k.settings.expires_at);
    // An override above the plan's limit (set before a downgrade) is not
    // enforced (the plan's applies); the successor does without it.
    if let (Some(ceiling), Some(rl)) = (authority.plan_limit(), settings.rate_limit)
        && !rl.at_most(ceiling)
    {
        settings.rate_limit = None;
    }
    authority.check(&settings, &Restriction::ALL)?;
    Ok(settings)
}

/// Mints a successor with the same type, scopes and settings, except the
/// deadline: the successor never inherits the old key's expiry (when a key
/// rolls it, it gets that key's own expiry, being at most as free). The old
/// key expires after `grace_seconds` (0 = now). An expired or already rolled
/// key cannot be rolled.
pub async fn roll_key(
    ctx: &Ctx<'_>,
    project: &Project,
    old: &ApiKey,
    grace_seconds: i64,
    authority: KeyAuthority<'_>,
) -> OpResult<IssuedKey> {
    let settings = successor_settings(old, authority, ctx.now)?;
    let issued = mint(
        project,
        old.key_type,
        old.scopes,
        settings,
        &ctx.actor,
        ctx.now,
    )?;
    let old_expires_at = ctx.now + grace_seconds * 1000;
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        keyflow_store::AuditAction::ApiKeyRolled,
        target(old),
        json!({
            "old_prefix": old.prefix,
            "new_key_id": issued.key.id,
            "new_prefix": issued.key.prefix,
            "grace_seconds": grace_seconds,
        }),
    );
    if !ctx
        .store
        .roll_api_key(&project.id, &old.id, old_expires_at, &issued.key, &entry)
        .await?
    {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "This API key is revoked or already rolled and cannot be rolled.",
        ));
    }
    ctx.bus.publish(Change::KeyRolled {
        old: old.digest,
        new: issued.key.digest,
    });
    Ok(issued)
}

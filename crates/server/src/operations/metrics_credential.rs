//! The project's metrics credential (SPEC §4): create or rotate (the client
//! secret is returned once), read, and change its allow-list and cache TTL.
//! Shared by `/v1/metrics/credential` and the dashboard.

use keyflow_core::key_settings::{IpRuleInput, METRICS_CACHE_TTL_MINUTES, validate_allowlist};
use keyflow_core::keys::{display_prefix, generate_key, random_base62};
use keyflow_core::{FieldError, IpRule, KeyDigest, KeyType};
use keyflow_store::{AuditTarget, MetricsCredential, Project, Store};
use serde_json::json;

use super::Ctx;
use super::error::{OpError, OpResult};

/// Length of a client secret: 43 base62 characters, over 256 bits.
const SECRET_LEN: usize = 43;

/// A credential just created or rotated, with its secret, shown once.
pub struct IssuedCredential {
    pub credential: MetricsCredential,
    pub secret: String,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedCredential({})", self.credential.id)
    }
}

/// The credential as the activity log names it: by its display prefix
/// (`mk_live_AbCd`), like keys — members and `audit:read` keys read the log,
/// and may not see credentials.
fn target(id: &str) -> AuditTarget {
    AuditTarget {
        kind: "metrics_credential".into(),
        id: None,
        name: Some(display_prefix(id).to_string()),
    }
}

/// A checked rotation: the credential being replaced (if any) and the
/// allow-list a new one gets, from [`prepare_rotation`].
pub struct Rotation {
    previous: Option<MetricsCredential>,
    bound: Vec<IpRule>,
}

/// Reads the current credential and checks that a caller whose own
/// allow-list is `bound` (empty for operators and unrestricted keys) may
/// replace it: no credential usable from outside `bound` is rotated (no
/// escalation, SPEC §2). Handlers call it before spending quota.
pub async fn prepare_rotation(
    store: &dyn Store,
    project: &Project,
    bound: &[IpRule],
) -> OpResult<Rotation> {
    let previous = store.metrics_credential(&project.id).await?;
    if let Some(old) = &previous {
        refuse_wider_allowlist(bound, &old.ip_allowlist)?;
    }
    Ok(Rotation {
        previous,
        bound: bound.to_vec(),
    })
}

/// Creates the project's credential, or rotates it: a new id and secret
/// replace the old ones (so tokens issued for the old id stop working), the
/// stored allow-list is kept (a new credential gets the caller's own, from
/// the [`Rotation`]). Audited as `metrics_credential.created` /
/// `.rotated` (two rotations racing may both name the same previous prefix;
/// the stored result is still exactly one credential).
pub async fn create_or_rotate(
    ctx: &Ctx<'_>,
    project: &Project,
    rotation: Rotation,
) -> OpResult<IssuedCredential> {
    let Rotation { previous, bound } = rotation;
    let id = generate_key(KeyType::Metrics, project.environment)
        .map_err(|e| OpError::internal("credential id generation", &e))?
        .text;
    let secret =
        random_base62(SECRET_LEN).map_err(|e| OpError::internal("secret generation", &e))?;
    let credential = MetricsCredential {
        project_id: project.id.clone(),
        id,
        secret_digest: KeyDigest::of(&secret),
        // A new credential's: the caller's own; a rotation keeps the stored one.
        ip_allowlist: bound,
        created_at: ctx.now,
        last_used_at: None,
    };
    let prefix = display_prefix(&credential.id);
    let (action, details) = match &previous {
        Some(old) => (
            keyflow_store::AuditAction::MetricsCredentialRotated,
            json!({ "prefix": prefix, "previous_prefix": display_prefix(&old.id) }),
        ),
        None => (
            keyflow_store::AuditAction::MetricsCredentialCreated,
            json!({ "prefix": prefix }),
        ),
    };
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        action,
        target(&credential.id),
        details,
    );
    let credential = ctx
        .store
        .put_metrics_credential(&credential, &entry)
        .await?;
    ctx.bus
        .publish(crate::changes::Change::MetricsCredentialChanged {
            project_id: project.id.clone(),
        });
    Ok(IssuedCredential { credential, secret })
}

/// `403` when `wanted` would let the credential be used from addresses the
/// calling key's own allow-list (`bound`; empty: unrestricted) does not cover.
pub fn refuse_wider_allowlist(bound: &[IpRule], wanted: &[IpRule]) -> OpResult<()> {
    if keyflow_core::restrictions::allowlist_covers(bound, wanted) {
        return Ok(());
    }
    Err(OpError::new(
        keyflow_core::ErrorCode::InsufficientScope,
        "A key with an IP allow-list cannot make the metrics credential usable from addresses outside it.",
    )
    .with_details(json!({"fields": [{"field": "ip_allowlist", "message": "must lie within the calling key's IP allow-list"}]})))
}

/// A validated change: `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct CredentialChange {
    pub ip_allowlist: Option<Vec<IpRule>>,
    pub cache_ttl_minutes: Option<i64>,
}

/// Validates the PATCH body's fields; every bad field is reported at once.
pub fn validate_change(
    ip_allowlist: Option<&[IpRuleInput]>,
    cache_ttl_minutes: Option<i64>,
) -> Result<CredentialChange, Vec<FieldError>> {
    let mut errors = Vec::new();
    let rules = match ip_allowlist.map(validate_allowlist) {
        Some(Ok(rules)) => Some(rules),
        Some(Err(mut e)) => {
            errors.append(&mut e);
            None
        }
        None => None,
    };
    if let Some(ttl) = cache_ttl_minutes
        && !METRICS_CACHE_TTL_MINUTES.contains(&ttl)
    {
        errors.push(FieldError::new(
            "cache_ttl_minutes",
            format!(
                "must be {} to {} minutes",
                METRICS_CACHE_TTL_MINUTES.start(),
                METRICS_CACHE_TTL_MINUTES.end()
            ),
        ));
    }
    if errors.is_empty() {
        Ok(CredentialChange {
            ip_allowlist: rules,
            cache_ttl_minutes,
        })
    } else {
        Err(errors)
    }
}

/// Applies a validated change, audited as `metrics_credential.updated` with
/// the changed field names. 404 when the project has no credential yet.
pub async fn update(
    ctx: &Ctx<'_>,
    project: &Project,
    change: &CredentialChange,
    bound: &[IpRule],
) -> OpResult<MetricsCredential> {
    if let Some(rules) = &change.ip_allowlist {
        refuse_wider_allowlist(bound, rules)?;
    }
    let current = ctx
        .store
        .metrics_credential(&project.id)
        .await?
        .ok_or_else(|| OpError::not_found("metrics credential"))?;
    let mut fields = Vec::new();
    if change.ip_allowlist.is_some() {
        fields.push("ip_allowlist");
    }
    if change.cache_ttl_minutes.is_some() {
        fields.push("cache_ttl_minutes");
    }
    if fields.is_empty() {
        return Ok(current);
    }
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        keyflow_store::AuditAction::MetricsCredentialUpdated,
        target(&current.id),
        json!({ "fields": fields }),
    );
    let updated = ctx
        .store
        .update_metrics_credential(
            &project.id,
            change.ip_allowlist.as_deref(),
            change.cache_ttl_minutes,
            &entry,
        )
        .await?;
    if !updated {
        return Err(OpError::not_found("metrics credential"));
    }
    ctx.bus
        .publish(crate::changes::Change::MetricsCredentialChanged {
            project_id: project.id.clone(),
        });
    let mut updated = current;
    if let Some(rules) = &change.ip_allowlist {
        updated.ip_allowlist = rules.clone();
    }
    Ok(updated)
}

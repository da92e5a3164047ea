//! Workspaces, projects, operators and plans.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use keyflow_core::clock::UnixMillis;
use keyflow_core::{Environment, ErrorCode, Plan, Role};
use keyflow_store::{AuditTarget, Membership, Operator, Project, Store, Workspace, new_id};
use serde_json::json;

use super::Ctx;
use super::error::{OpError, OpResult};

pub const MIN_PASSWORD_CHARS: usize = 8;

pub fn check_name(field: &str, name: &str) -> OpResult<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || keyflow_core::text::has_forbidden_name_chars(name) {
        return Err(OpError::field(
            field,
            "must be 1 to 100 printable characters",
        ));
    }
    Ok(name.to_string())
}

pub fn check_email(email: &str) -> OpResult<String> {
    let email = keyflow_core::text::nfc_email(email).to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(OpError::field(
            "email",
            "must be an email address like ops@example.com",
        ));
    }
    Ok(email)
}

/// Argon2id holds about 19 MiB per hash for ~30 ms of a core: at most this
/// many run at once, so memory stays bounded whatever arrives (SPEC §6).
pub const HASHING_PERMITS: usize = 2;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHING_PERMITS);

/// Argon2id with the crate's defaults (19 MiB, 2 passes), off the async
/// threads, waiting its turn among [`HASHING_PERMITS`].
pub async fn hash_password(password: String) -> OpResult<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(OpError::field(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| OpError::internal("password hashing permit", &e))?;
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| OpError::internal("password hashing task", &e))?
}

fn hash_now(password: &str) -> OpResult<String> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|e| OpError::internal("random salt", &e))?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| OpError::internal("salt encoding", &e))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OpError::internal("password hashing", &e))
}

/// A hash of a random password, verified against when an email is unknown so
/// that a sign-in takes as long whether or not the account exists.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = keyflow_core::keys::random_base62(24).unwrap_or_default();
        hash_now(&format!("dummy-{random}")).unwrap_or_default()
    })
}

/// A turn to hash a password now, or `None` when every permit is taken: a
/// flood of sign-ins is refused, not queued.
pub fn try_hashing_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    HASHING.try_acquire().ok()
}

/// Checks `password` against `hash` under `permit`, or against a dummy hash
/// when the account does not exist (`None`; then always `false`, in the
/// same time), so timing does not tell whether an account exists.
pub async fn verify_password(
    permit: tokio::sync::SemaphorePermit<'static>,
    password: String,
    hash: Option<String>,
) -> bool {
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let matches = PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && matches
    })
    .await
    .unwrap_or(false)
}

pub async fn create_workspace(
    store: &dyn Store,
    name: &str,
    plan: Plan,
    now: UnixMillis,
) -> OpResult<Workspace> {
    let workspace = Workspace {
        id: new_id(),
        name: check_name("name", name)?,
        plan,
        created_at: now,
    };
    store.create_workspace(&workspace).await?;
    Ok(workspace)
}

pub async fn create_project(
    store: &dyn Store,
    workspace_id: &str,
    name: &str,
    environment: Environment,
    now: UnixMillis,
) -> OpResult<Project> {
    if store.get_workspace(workspace_id).await?.is_none() {
        return Err(OpError::not_found("workspace"));
    }
    let project = Project {
        id: new_id(),
        workspace_id: workspace_id.to_string(),
        name: check_name("name", name)?,
        environment,
        created_at: now,
    };
    store.create_project(&project).await?;
    Ok(project)
}

pub struct NewOperator {
    pub operator: Operator,
    pub membership: Membership,
}

/// Who changes a workspace's members: the instance admin (bound by
/// nothing), or one of its operators with their role there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAuthority {
    Instance,
    Member(Role),
}

impl MemberAuthority {
    /// Only owners make, unmake or remove owners.
    fn may_touch_owners(self) -> bool {
        matches!(
            self,
            MemberAuthority::Instance | MemberAuthority::Member(Role::Owner)
        )
    }
}

fn owners_only(what: &str) -> OpError {
    OpError::new(
        ErrorCode::InsufficientScope,
        format!("Only owners can {what}."),
    )
}

fn last_owner() -> OpError {
    OpError::new(ErrorCode::Conflict, "A workspace needs at least one owner.")
}

pub async fn add_operator(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    email: &str,
    password: String,
    role: Role,
    authority: MemberAuthority,
) -> OpResult<NewOperator> {
    if role == Role::Owner && !authority.may_touch_owners() {
        return Err(owners_only("add owners"));
    }
    if ctx.store.get_workspace(workspace_id).await?.is_none() {
        return Err(OpError::not_found("workspace"));
    }
    let email = check_email(email)?;
    if ctx.store.find_operator_by_email(&email).await?.is_some() {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "An operator with this email already exists.",
        ));
    }
    let operator = Operator {
        id: new_id(),
        email,
        password_hash: hash_password(password).await?,
        created_at: ctx.now,
    };
    let membership = Membership {
        workspace_id: workspace_id.to_string(),
        operator_id: operator.id.clone(),
        role,
        created_at: ctx.now,
    };
    let entry = ctx.audit(
        workspace_id,
        None,
        keyflow_store::AuditAction::MemberAdded,
        AuditTarget {
            kind: "operator".into(),
            id: Some(operator.id.clone()),
            name: Some(operator.email.clone()),
        },
        json!({ "role": role.as_str() }),
    );
    ctx.store
        .create_operator(&operator, &membership, Some(&entry))
        .await?;
    ctx.bus
        .publish(membership_changed(workspace_id, &operator.id));
    Ok(NewOperator {
        operator,
        membership,
    })
}

/// Changes a workspace's plan (audited as `plan.changed`). Returns the workspace
/// and its previous plan.
pub async fn change_plan(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    plan: Plan,
) -> OpResult<(Workspace, Plan)> {
    let Some(workspace) = ctx.store.get_workspace(workspace_id).await? else {
        return Err(OpError::not_found("workspace"));
    };
    let entry = ctx.audit(
        workspace_id,
        None,
        keyflow_store::AuditAction::PlanChanged,
        AuditTarget {
            kind: "workspace".into(),
            id: Some(workspace.id.clone()),
            name: Some(workspace.name.clone()),
        },
        json!({ "from": workspace.plan.as_str(), "to": plan.as_str() }),
    );
    let previous = ctx
        .store
        .set_workspace_plan(workspace_id, plan, &entry)
        .await?
        .ok_or_else(|| OpError::not_found("workspace"))?;
    ctx.bus.publish(crate::changes::Change::PlanChanged {
        workspace_id: workspace_id.to_string(),
    });
    Ok((Workspace { plan, ..workspace }, previous))
}

/// Changes a member's role: only owners make or unmake owners, and the last
/// owner stays an owner (the store's statement guards that too, against a
/// concurrent change).
pub async fn change_member_role(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    member: &Operator,
    current: Role,
    role: Role,
    authority: MemberAuthority,
) -> OpResult<()> {
    if (current == Role::Owner || role == Role::Owner) && !authority.may_touch_owners() {
        return Err(owners_only("change who is an owner"));
    }
    let entry = ctx.audit(
        workspace_id,
        None,
        keyflow_store::AuditAction::MemberRoleChanged,
        member_target(member),
        json!({"from": current.as_str(), "to": role.as_str()}),
    );
    if !ctx
        .store
        .set_member_role(workspace_id, &member.id, role, &entry)
        .await?
    {
        return Err(last_owner());
    }
    ctx.bus
        .publish(membership_changed(workspace_id, &member.id));
    Ok(())
}

/// Removes a member: only owners remove owners; never the last owner.
pub async fn remove_member(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    member: &Operator,
    current: Role,
    authority: MemberAuthority,
) -> OpResult<()> {
    if current == Role::Owner && !authority.may_touch_owners() {
        return Err(owners_only("remove an owner"));
    }
    let entry = ctx.audit(
        workspace_id,
        None,
        keyflow_store::AuditAction::MemberRemoved,
        member_target(member),
        json!({"role": current.as_str()}),
    );
    if !ctx
        .store
        .remove_member(workspace_id, &member.id, &entry)
        .await?
    {
        return Err(last_owner());
    }
    ctx.bus
        .publish(membership_changed(workspace_id, &member.id));
    Ok(())
}

fn membership_changed(workspace_id: &str, operator_id: &str) -> crate::changes::Change {
    crate::changes::Change::MembershipChanged {
        workspace_id: workspace_id.to_string(),
        operator_id: operator_id.to_string(),
    }
}

fn member_target(member: &Operator) -> AuditTarget {
    AuditTarget {
        kind: "operator".into(),
        id: Some(member.id.clone()),
        name: Some(member.email.clone()),
    }
}

/// Sets a project's settings (rate limit, metrics cache TTL), audited as
/// `project.settings_changed`.
pub async fn change_project_settings(
    ctx: &Ctx<'_>,
    project: &Project,
    settings: &keyflow_store::ProjectSettings,
) -> OpResult<()> {
    let entry = ctx.audit(
        &project.workspace_id,
        Some(&project.id),
        keyflow_store::AuditAction::ProjectSettingsChanged,
        AuditTarget {
            kind: "project".into(),
            id: Some(project.id.clone()),
            name: Some(project.name.clone()),
        },
        json!({
            "rate_limit": settings.rate_limit,
            "metrics_cache_ttl_minutes": settings.metrics_cache_ttl_minutes,
        }),
    );
    ctx.store
        .set_project_settings(&project.id, settings, &entry)
        .await?;
    ctx.bus
        .publish(crate::changes::Change::ProjectSettingsChanged {
            project_id: project.id.clone(),
        });
    Ok(())
}

/// `keyflow init`: first workspace, project and owner in one go.
pub struct Bootstrap {
    pub workspace: Workspace,
    pub project: Project,
    pub owner: Operator,
}

/// What `keyflow init` and the setup page ask for.
pub struct NewInstance<'a> {
    pub email: &'a str,
    pub password: String,
    pub workspace_name: &'a str,
    pub project_name: &'a str,
    pub environment: Environment,
    pub plan: Plan,
}

pub async fn bootstrap(
    store: &dyn Store,
    new: NewInstance<'_>,
    now: UnixMillis,
) -> OpResult<Bootstrap> {
    let NewInstance {
        email,
        password,
        workspace_name,
        project_name,
        environment,
        plan,
    } = new;
    // Every field is checked before anything is created: a refused project
    // name once left its workspace behind.
    let email = check_email(email)?;
    let workspace_name = check_name("workspace", workspace_name)?;
    let project_name = check_name("project", project_name)?;
    let password_hash = hash_password(password).await?;
    if store.find_operator_by_email(&email).await?.is_some() {
        return Err(OpError::new(
            ErrorCode::Conflict,
            "An operator with this email already exists.",
        ));
    }
    let workspace = create_workspace(store, &workspace_name, plan, now).await?;
    let project = create_project(store, &workspace.id, &project_name, environment, now).await?;
    let owner = Operator {
        id: new_id(),
        email,
        password_hash,
        created_at: now,
    };
    let membership = Membership {
        workspace_id: workspace.id.clone(),
        operator_id: owner.id.clone(),
        role: Role::Owner,
        created_at: now,
    };
    store.create_operator(&owner, &membership, None).await?;
    Ok(Bootstrap {
        workspace,
        project,
        owner,
    })
}

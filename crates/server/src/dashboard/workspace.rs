//! Members, Plan and Settings: owners and admins (members get 403 pages);
//! only owners change the plan.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::{Plan, RateLimit, Role};
use keyflow_store::{Membership, Operator, ProjectSettings, Workspace};

use super::activity::Choice;
use super::extract::{Manager, ManagerForm, Viewer};
use super::form_errors::FormErrors;
use super::page::{Chrome, PageError, PageResult, render};
use crate::error::ApiError;
use crate::operations::{OpError, OpResult, tenancy};
use crate::state::SharedState;

struct MemberRow {
    id: String,
    email: String,
    /// The role, as text when the viewer may not change it.
    role: &'static str,
    /// The roles the viewer may give this member (empty: no role form).
    roles: Vec<Choice>,
    /// Whether the viewer may remove this member.
    removable: bool,
    since: String,
}

#[derive(Template)]
#[template(path = "members.html")]
struct MembersPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    members: Vec<MemberRow>,
    /// Why the last change was refused (a refused add keeps its email and role).
    errors: FormErrors,
    typed_email: &'a str,
    typed_role: &'a str,
    /// The roles the viewer may give a new member.
    new_roles: Vec<&'static str>,
}

/// What the viewer may do to a member with `role`: admins neither touch
/// owners nor make anyone an owner (the operations refuse it anyway; the
/// page does not offer it).
fn may_manage(viewer: Role, member: Role) -> bool {
    viewer == Role::Owner || member != Role::Owner
}

fn assignable(viewer: Role) -> Vec<Role> {
    Role::ALL
        .into_iter()
        .filter(|r| viewer == Role::Owner || *r != Role::Owner)
        .collect()
}

fn members_page(
    viewer: &Viewer,
    status: StatusCode,
    members: &[(Operator, Membership)],
    refused: Option<(FormErrors, &ManagerForm)>,
) -> Response {
    let me = viewer.membership.role;
    // A refused add keeps its email and role (never the password).
    let (errors, added) = match refused {
        Some((errors, form)) => (errors, Some(form).filter(|f| f.field("do") == "add")),
        None => (FormErrors::default(), None),
    };
    let rows = members
        .iter()
        .map(|(op, m)| {
            let manageable = may_manage(me, m.role);
            MemberRow {
                id: op.id.clone(),
                email: op.email.clone(),
                role: m.role.as_str(),
                roles: if manageable {
                    assignable(me)
                        .into_iter()
                        .map(|r| Choice {
                            value: r.as_str(),
                            selected: r == m.role,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                removable: manageable,
                since: super::page::shown_time(m.created_at),
            }
        })
        .collect();
    let page = MembersPage {
        chrome: viewer.chrome("/members", "Members"),
        csrf: viewer.csrf(),
        members: rows,
        typed_email: added.map_or("", |form| form.field("email")),
        typed_role: added.map_or("", |form| form.field("role")),
        errors,
        new_roles: assignable(me).into_iter().map(Role::as_str).collect(),
    };
    render(status, &page)
}

#[derive(Template)]
#[template(path = "member_remove.html")]
struct RemovePage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    id: &'a str,
    email: &'a str,
}

pub async fn members(Manager(viewer): Manager, State(state): State<SharedState>) -> PageResult {
    let list = state.store.list_members(viewer.workspace_id()).await?;
    Ok(members_page(&viewer, StatusCode::OK, &list, None))
}

/// Add, change the role of, or remove a member. The rules (only owners touch
/// owners, never the last owner) live in the operations; this page only
/// picks the operation and shows its answer.
pub async fn change_members(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    let workspace = viewer.workspace_id();
    let members = state.store.list_members(workspace).await?;
    let role = Role::parse(form.field("role"));
    let target = members
        .iter()
        .find(|(op, _)| op.id == form.field("operator"));
    let authority = tenancy::MemberAuthority::Member(viewer.membership.role);
    let ctx = form.ctx(&state);
    let outcome: OpResult<()> = match (form.field("do"), role, target) {
        ("add", Some(role), _) => {
            let (email, password) = (form.field("email"), form.field("password").to_string());
            let added = tenancy::add_operator(&ctx, workspace, email, password, role, authority);
            added.await.map(|_| ())
        }
        ("role", Some(role), Some((op, m))) => {
            let changed = tenancy::change_member_role(&ctx, workspace, op, m.role, role, authority);
            changed.await
        }
        ("remove", _, Some((op, _))) if form.field("confirm") != "yes" => {
            // First a confirmation page; its own form removes.
            return Ok(render(
                StatusCode::OK,
                &RemovePage {
                    chrome: viewer.chrome("/members", "Remove member"),
                    csrf: viewer.csrf(),
                    id: &op.id,
                    email: &op.email,
                },
            ));
        }
        ("remove", _, Some((op, m))) => {
            let removed = tenancy::remove_member(&ctx, workspace, op, m.role, authority);
            removed.await
        }
        _ => Err(OpError::new(
            keyflow_core::ErrorCode::ValidationFailed,
            "That change is not valid (unknown member or role).",
        )),
    };
    match outcome {
        Ok(()) => {
            let done = match form.field("do") {
                "add" => "added",
                "role" => "role",
                _ => "removed",
            };
            Ok(Redirect::to(&format!("/members?done={done}")).into_response())
        }
        Err(e) => {
            let list = state.store.list_members(workspace).await.unwrap_or(members);
            let refused = Some((FormErrors::from_refusal(e), &form));
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(members_page(viewer, status, &list, refused))
        }
    }
}

/// What the plan page offers the viewer.
enum PlanControl {
    /// The plan is set by the instance's operator (admin API): read-only.
    ManagedByInstance,
    /// An admin: may look, not change.
    OwnersOnly,
    /// An owner: a preview of the chosen plan, then the change.
    Change { preview: Option<PlanPreview> },
}

struct PlanPreview {
    target: &'static str,
    effect: String,
}

#[derive(Template)]
#[template(path = "plan.html")]
struct PlanPage<'a> {
    chrome: Chrome,
    workspace: &'a Workspace,
    control: PlanControl,
    plans: Vec<&'static str>,
    /// The plan the select shows: the one previewed, else the current one.
    selected: &'static str,
    csrf: &'a str,
}

/// `/plan`: the plan, and for owners a form to change it with a preview of
/// how many keys a downgrade below pro suspends.
pub async fn plan(
    Manager(viewer): Manager,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let workspace = state
        .store
        .get_workspace(viewer.workspace_id())
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    let control = if state.config.admin_token.is_some() {
        PlanControl::ManagedByInstance
    } else if viewer.membership.role != Role::Owner {
        PlanControl::OwnersOnly
    } else {
        let preview = match query.get("preview").and_then(|p| Plan::parse(p)) {
            Some(target) => {
                let active = state
                    .store
                    .count_active_keys(&workspace.id, state.now_ms())
                    .await?;
                Some(PlanPreview {
                    target: target.as_str(),
                    effect: downgrade_effect(workspace.plan, target, active),
                })
            }
            None => None,
        };
        PlanControl::Change { preview }
    };
    let selected = match &control {
        PlanControl::Change {
            preview: Some(preview),
        } => preview.target,
        _ => workspace.plan.as_str(),
    };
    let page = PlanPage {
        chrome: viewer.chrome("/plan", "Plan"),
        workspace: &workspace,
        control,
        plans: Plan::ALL.map(Plan::as_str).to_vec(),
        selected,
        csrf: viewer.csrf(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// What changing from `from` to `to` does to the workspace's `active` keys.
fn downgrade_effect(from: Plan, to: Plan, active: i64) -> String {
    if !to.allows_api() && from.allows_api() {
        format!(
            "{active} active API keys will be suspended: every request with them gets 403 \
             feature_not_allowed until the plan allows API access again."
        )
    } else if to.allows_api() && !from.allows_api() {
        format!("{active} active API keys will work again at once.")
    } else {
        "No API key changes.".to_string()
    }
}

pub async fn change_plan(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    if viewer.membership.role != Role::Owner {
        return Err(PageError::Forbidden {
            chrome: Box::new(viewer.chrome("/plan", "Forbidden")),
            heading: "Owners only",
            text: "Only an owner can change the plan.",
        });
    }
    if state.config.admin_token.is_some() {
        return Err(PageError::Forbidden {
            chrome: Box::new(viewer.chrome("/plan", "Forbidden")),
            heading: "Plan managed by the instance",
            text: "The plan of this workspace is managed by the operator of this Keyflow \
                   instance. Nothing was changed.",
        });
    }
    let plan = Plan::parse(form.field("plan"))
        .ok_or_else(|| ApiError::field("plan", "must be free, pro or team"))?;
    tenancy::change_plan(&form.ctx(&state), viewer.workspace_id(), plan).await?;
    Ok(Redirect::to("/plan?done=plan").into_response())
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    project_name: &'a str,
    limit: String,
    period: String,
    ttl: String,
    errors: FormErrors,
}

/// The settings form's three values, as stored or as a refused form held them.
struct SettingsForm {
    limit: String,
    period: String,
    ttl: String,
}

impl SettingsForm {
    fn stored(settings: &ProjectSettings) -> Self {
        let (limit, period) = settings
            .rate_limit
            .map(|rl| (rl.limit.to_string(), rl.period_seconds.to_string()))
            .unwrap_or_default();
        Self {
            limit,
            period,
            ttl: settings.metrics_cache_ttl_minutes.to_string(),
        }
    }

    fn typed(form: &ManagerForm) -> Self {
        Self {
            limit: form.field("limit").to_string(),
            period: form.field("period_seconds").to_string(),
            ttl: form.field("metrics_cache_ttl_minutes").to_string(),
        }
    }
}

fn settings_page(
    viewer: &Viewer,
    status: StatusCode,
    values: SettingsForm,
    errors: FormErrors,
) -> Response {
    let page = SettingsPage {
        chrome: viewer.chrome("/settings", "Settings"),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        project_name: &viewer.project.name,
        limit: values.limit,
        period: values.period,
        ttl: values.ttl,
        errors,
    };
    render(status, &page)
}

/// `/settings`: owners and admins set the project's rate limit and metrics cache TTL.
pub async fn settings(Manager(viewer): Manager, State(state): State<SharedState>) -> PageResult {
    let settings = state.store.project_settings(&viewer.project.id).await?;
    let values = SettingsForm::stored(&settings);
    Ok(settings_page(
        &viewer,
        StatusCode::OK,
        values,
        FormErrors::default(),
    ))
}

pub async fn save_settings(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    // A tenant's override never goes above its plan's limit (SPEC §2).
    let plan = state
        .plan_of(viewer.workspace_id())
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    let ceiling = state.config.plan_rate_limit(plan);
    let new = match parse_settings(&form, ceiling) {
        Ok(s) => s,
        Err(errors) => {
            // What was typed stays in the form; nothing is saved.
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return Ok(settings_page(
                viewer,
                status,
                SettingsForm::typed(&form),
                errors,
            ));
        }
    };
    tenancy::change_project_settings(&form.ctx(&state), &viewer.project, &new).await?;
    let to = format!("/settings?project={}&done=saved", viewer.project.id);
    Ok(Redirect::to(&to).into_response())
}

/// The settings form, checked; what is wrong with it otherwise (every
/// field's problem at once).
fn parse_settings(form: &ManagerForm, ceiling: RateLimit) -> Result<ProjectSettings, FormErrors> {
    let field = |name: &str| form.field(name).trim();
    let mut errors = FormErrors::default();
    let rate_limit = match (field("limit"), field("period_seconds")) {
        ("", "") => None,
        (l, p) => {
            let limit = l.parse::<u32>();
            let period = p.parse::<u32>();
            if limit.is_err() {
                errors.push("limit", "Rate limit: requests", "Must be a whole number.");
            }
            if period.is_err() {
                errors.push(
                    "period_seconds",
                    "Rate limit: period",
                    "Must be a whole number of seconds.",
                );
            }
            match (limit, period) {
                (Ok(limit), Ok(period_seconds)) => {
                    let rl = RateLimit {
                        limit,
                        period_seconds,
                    };
                    if !rl.is_valid() {
                        errors.push(
                            "limit",
                            "Rate limit",
                            format!(
                                "Must be 1 to {} requests per 1 to {} seconds.",
                                RateLimit::MAX_LIMIT,
                                RateLimit::MAX_PERIOD_SECONDS
                            ),
                        );
                    } else if !rl.at_most(ceiling) {
                        errors.push(
                            "limit",
                            "Rate limit",
                            format!(
                                "Must be at most the plan's {} requests per {} seconds.",
                                ceiling.limit, ceiling.period_seconds
                            ),
                        );
                    }
                    Some(rl)
                }
                _ => None,
            }
        }
    };
    let ttl = match field("metrics_cache_ttl_minutes").parse::<i64>() {
        Ok(ttl) if (5..=10_080).contains(&ttl) => ttl,
        Ok(_) => {
            errors.push("ttl", "Cache TTL", "Must be 5 minutes to 7 days (10080).");
            0
        }
        Err(_) => {
            errors.push("ttl", "Cache TTL", "Must be a whole number of minutes.");
            0
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ProjectSettings {
        rate_limit,
        metrics_cache_ttl_minutes: ttl,
    })
}

//! Members, Plan and Settings: owners and admins (members get 403 pages);
//! only owners change the plan.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{Plan, Role};
use keyflow_store::Actor;

use super::html::{error_box, escape, page};
use super::keys::{manager, manager_post};
use super::session;
use super::{error_page, html, refused_cross_site};
use crate::operations::tenancy;
use crate::state::SharedState;

fn members_body(
    csrf: &str,
    members: &[(keyflow_store::Operator, keyflow_store::Membership)],
    message: Option<&str>,
) -> String {
    let mut body = format!(
        "<div class=\"card\"><h1>Members</h1>{}<table><thead><tr><th>Email</th><th>Role</th><th>Since</th><th></th></tr></thead><tbody>",
        error_box(message)
    );
    for (op, m) in members {
        let mut options = String::new();
        for role in Role::ALL {
            let selected = if role == m.role { " selected" } else { "" };
            let _ = write!(options, "<option{selected}>{}</option>", role.as_str());
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td><form method=\"post\" action=\"/members\" class=\"row\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"operator\" value=\"{id}\">\
             <select name=\"role\" aria-label=\"Role of {email}\">{options}</select><button type=\"submit\" name=\"do\" value=\"role\">Change</button></form></td>\
             <td>{}</td><td><form method=\"post\" action=\"/members\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"operator\" value=\"{id}\"><button type=\"submit\" name=\"do\" value=\"remove\" class=\"danger\">Remove</button></form></td></tr>",
            escape(&op.email),
            format_rfc3339(m.created_at),
            csrf = escape(csrf),
            id = escape(&op.id),
            email = escape(&op.email),
        );
    }
    let _ = write!(
        body,
        "</tbody></table><h2>Add a member</h2><form method=\"post\" action=\"/members\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"do\" value=\"add\">\
         <label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" required>\
         <label for=\"password\">Initial password (8 characters or more)</label><input id=\"password\" name=\"password\" type=\"password\" minlength=\"8\" required>\
         <label for=\"role\">Role</label><select id=\"role\" name=\"role\"><option>member</option><option>admin</option><option>owner</option></select>\
         <button type=\"submit\">Add member</button></form></div>",
        escape(csrf)
    );
    body
}

pub async fn members(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let ctx = match manager(&state, &headers, None).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match state.store.list_members(&ctx.membership.workspace_id).await {
        Ok(list) => {
            let body = members_body(&ctx.signed_in.session.csrf_token, &list, None);
            html(StatusCode::OK, ctx.render_at("/members", "Members", &body))
        }
        Err(e) => error_page(e.into()),
    }
}

pub async fn change_members(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Members forms carry no `project`: the workspace's first one, as before.
    let ctx = match manager_post(&state, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let workspace = ctx.membership.workspace_id.clone();
    let actor = Actor::Operator {
        id: ctx.signed_in.operator.id.clone(),
        email: ctx.signed_in.operator.email.clone(),
    };
    let now = state.now_ms();
    let members = match state.store.list_members(&workspace).await {
        Ok(m) => m,
        Err(e) => return error_page(e.into()),
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let role = Role::parse(field("role"));
    let target = members.iter().find(|(op, _)| op.id == field("operator"));
    // The rules (only owners touch owners, never the last owner) live in
    // the operations; this page only picks the operation and shows its answer.
    let authority = tenancy::MemberAuthority::Member(ctx.membership.role);
    let outcome: crate::operations::OpResult<()> = match (field("do"), role, target) {
        ("add", Some(role), _) => tenancy::add_operator(
            state.store.as_ref(),
            state.changes.as_ref(),
            &workspace,
            field("email"),
            field("password").to_string(),
            role,
            authority,
            &actor,
            now,
        )
        .await
        .map(|_| ()),
        ("role", Some(role), Some((op, m))) => {
            tenancy::change_member_role(
                state.store.as_ref(),
                state.changes.as_ref(),
                &workspace,
                op,
                m.role,
                role,
                authority,
                &actor,
                now,
            )
            .await
        }
        ("remove", _, Some((op, m))) => {
            tenancy::remove_member(
                state.store.as_ref(),
                state.changes.as_ref(),
                &workspace,
                op,
                m.role,
                authority,
                &actor,
                now,
            )
            .await
        }
        _ => Err(crate::operations::OpError::new(
            keyflow_core::ErrorCode::ValidationFailed,
            "That change is not valid (unknown member or role).",
        )),
    };
    let outcome = outcome.map_err(|e| crate::error::ApiError::from(e).message);
    match outcome {
        Ok(()) => Redirect::to("/members").into_response(),
        Err(message) => {
            let list = state
                .store
                .list_members(&workspace)
                .await
                .unwrap_or(members);
            let body = members_body(&ctx.signed_in.session.csrf_token, &list, Some(&message));
            html(
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.render_at("/members", "Members", &body),
            )
        }
    }
}

/// `/plan`: the plan, and for owners a form to change it with a preview of
/// how many keys a downgrade below pro suspends.
pub async fn plan(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // Owners and admins see the plan (members get a 403 page); owners change it.
    let signed_in = match manager(&state, &headers, None).await {
        Ok(ctx) => ctx.signed_in,
        Err(r) => return r,
    };
    let render = async {
        let membership = state
            .store
            .list_memberships(&signed_in.operator.id)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| crate::error::ApiError::not_found("workspace"))?;
        let workspace = state
            .store
            .get_workspace(&membership.workspace_id)
            .await?
            .ok_or_else(|| crate::error::ApiError::not_found("workspace"))?;
        let active = state
            .store
            .count_active_keys(&workspace.id, state.now_ms())
            .await?;
        let mut body = format!(
            "<div class=\"card\"><h1>Plan</h1><p>Workspace <strong>{}</strong> is on the <strong>{}</strong> plan. API access needs pro or team.</p>",
            escape(&workspace.name),
            workspace.plan.as_str()
        );
        if state.config.admin_token.is_some() {
            // The instance is run for customers whose billing decides their
            // plan (SPEC §1): read-only here.
            body.push_str("<p class=\"muted\">The plan is managed by the operator of this Keyflow instance.</p>");
        } else if membership.role == Role::Owner {
            let _ = write!(
                body,
                "<form method=\"get\" action=\"/plan\" class=\"row\"><select name=\"preview\" aria-label=\"New plan\">"
            );
            for p in Plan::ALL {
                let _ = write!(body, "<option>{}</option>", p.as_str());
            }
            body.push_str("</select><button type=\"submit\">Preview</button></form>");
            if let Some(target) = query.get("preview").and_then(|p| Plan::parse(p)) {
                let effect = if !target.allows_api() && workspace.plan.allows_api() {
                    format!(
                        "{active} active API keys will be suspended: every request with them gets 403 feature_not_allowed until the plan allows API access again."
                    )
                } else if target.allows_api() && !workspace.plan.allows_api() {
                    format!("{active} active API keys will work again at once.")
                } else {
                    "No API key changes.".to_string()
                };
                let _ = write!(
                    body,
                    "<p class=\"warning\">Changing to <strong>{}</strong>: {}</p><form method=\"post\" action=\"/plan\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"plan\" value=\"{}\">\
                     <button type=\"submit\">Change plan to {}</button></form>",
                    target.as_str(),
                    escape(&effect),
                    escape(&signed_in.session.csrf_token),
                    target.as_str(),
                    target.as_str()
                );
            }
        } else {
            body.push_str("<p class=\"muted\">Only owners can change the plan.</p>");
        }
        body.push_str("</div>");
        Ok::<_, crate::error::ApiError>(body)
    };
    match render.await {
        Ok(body) => html(
            StatusCode::OK,
            page(
                "Plan",
                "/plan",
                Some((&signed_in.operator.email, &signed_in.session.csrf_token)),
                &body,
            ),
        ),
        Err(e) => error_page(e),
    }
}

pub async fn change_plan(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !session::same_origin(&headers) {
        return refused_cross_site();
    }
    let signed_in = match session::current(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/signin").into_response(),
        Err(e) => return error_page(e),
    };
    if !session::csrf_ok(&signed_in.session, form.get("csrf").map(String::as_str)) {
        return refused_cross_site();
    }
    let membership = match state.store.list_memberships(&signed_in.operator.id).await {
        Ok(m) => m.into_iter().next(),
        Err(e) => return error_page(e.into()),
    };
    let forbidden = |body: &str| {
        html(
            StatusCode::FORBIDDEN,
            page(
                "Forbidden",
                "/plan",
                Some((&signed_in.operator.email, &signed_in.session.csrf_token)),
                body,
            ),
        )
    };
    let Some(membership) = membership.filter(|m| m.role == Role::Owner) else {
        return forbidden(
            "<div class=\"card narrow\"><h1>Owners only</h1><p>Only an owner can change the plan.</p></div>",
        );
    };
    if state.config.admin_token.is_some() {
        return forbidden(
            "<div class=\"card narrow\"><h1>Plan managed by the instance</h1><p>The plan of this workspace is managed by the operator of this Keyflow instance. Nothing was changed.</p></div>",
        );
    }
    let Some(plan) = form.get("plan").and_then(|p| Plan::parse(p)) else {
        return error_page(crate::error::ApiError::field(
            "plan",
            "must be free, pro or team",
        ));
    };
    let actor = Actor::Operator {
        id: signed_in.operator.id.clone(),
        email: signed_in.operator.email.clone(),
    };
    match tenancy::change_plan(
        state.store.as_ref(),
        state.changes.as_ref(),
        &membership.workspace_id,
        plan,
        &actor,
        None,
        state.now_ms(),
    )
    .await
    {
        Ok(_) => Redirect::to("/plan").into_response(),
        Err(e) => error_page(e.into()),
    }
}

fn settings_body(
    ctx: &super::keys::ManagerContext,
    settings: &keyflow_store::ProjectSettings,
    message: Option<&str>,
) -> String {
    let (limit, period) = settings
        .rate_limit
        .map(|rl| (rl.limit.to_string(), rl.period_seconds.to_string()))
        .unwrap_or_default();
    format!(
        "<div class=\"card\"><h1>Settings · {}</h1>{}<form method=\"post\" action=\"/settings\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"project\" value=\"{}\">\
         <h2>Rate limit for this project's keys</h2><p class=\"muted\">Per key and per category. Empty: the plan's default. A key's own limit still wins.</p>\
         <div class=\"row\"><input name=\"limit\" inputmode=\"numeric\" placeholder=\"requests\" value=\"{}\" aria-label=\"Requests\">\
         <input name=\"period_seconds\" inputmode=\"numeric\" placeholder=\"per seconds\" value=\"{}\" aria-label=\"Period in seconds\"></div>\
         <h2>Metrics cache</h2><label for=\"ttl\">Cache TTL (minutes, at least 5)</label>\
         <input id=\"ttl\" name=\"metrics_cache_ttl_minutes\" inputmode=\"numeric\" value=\"{}\">\
         <button type=\"submit\">Save</button></form></div>",
        escape(&ctx.project.name),
        error_box(message),
        escape(&ctx.signed_in.session.csrf_token),
        escape(&ctx.project.id),
        escape(&limit),
        escape(&period),
        settings.metrics_cache_ttl_minutes
    )
}

/// `/settings`: owners and admins set the project's rate limit and metrics cache TTL.
pub async fn settings(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match state.store.project_settings(&ctx.project.id).await {
        Ok(settings) => html(
            StatusCode::OK,
            ctx.render_at(
                "/settings",
                "Settings",
                &settings_body(&ctx, &settings, None),
            ),
        ),
        Err(e) => error_page(e.into()),
    }
}

pub async fn save_settings(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ctx = match manager_post(&state, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // A tenant's override never goes above its plan's limit (SPEC §2).
    let ceiling = match state.plan_of(&ctx.membership.workspace_id).await {
        Ok(Some(plan)) => state.config.plan_rate_limit(plan),
        Ok(None) => return error_page(crate::error::ApiError::not_found("workspace")),
        Err(e) => return error_page(e.into()),
    };
    let field = |name: &str| form.get(name).map(|v| v.trim()).unwrap_or("");
    let parsed: Result<keyflow_store::ProjectSettings, String> = (|| {
        let rate_limit = match (field("limit"), field("period_seconds")) {
            ("", "") => None,
            (l, p) => {
                let rl = keyflow_core::RateLimit {
                    limit: l
                        .parse()
                        .map_err(|_| "The limit must be a whole number.".to_string())?,
                    period_seconds: p
                        .parse()
                        .map_err(|_| "The period must be a whole number of seconds.".to_string())?,
                };
                if !rl.is_valid() {
                    return Err(format!(
                        "The limit must be 1 to {} requests per 1 to {} seconds.",
                        keyflow_core::RateLimit::MAX_LIMIT,
                        keyflow_core::RateLimit::MAX_PERIOD_SECONDS
                    ));
                }
                if !rl.at_most(ceiling) {
                    return Err(format!(
                        "The limit must be at most the plan's {} requests per {} seconds.",
                        ceiling.limit, ceiling.period_seconds
                    ));
                }
                Some(rl)
            }
        };
        let ttl: i64 = field("metrics_cache_ttl_minutes")
            .parse()
            .map_err(|_| "The cache TTL must be a whole number of minutes.".to_string())?;
        if !(5..=10_080).contains(&ttl) {
            return Err("The cache TTL must be 5 minutes to 7 days.".into());
        }
        Ok(keyflow_store::ProjectSettings {
            rate_limit,
            metrics_cache_ttl_minutes: ttl,
        })
    })();
    let new = match parsed {
        Ok(s) => s,
        Err(message) => {
            let current = state
                .store
                .project_settings(&ctx.project.id)
                .await
                .unwrap_or_default();
            let body = settings_body(&ctx, &current, Some(&message));
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.render_at("/settings", "Settings", &body),
            );
        }
    };
    let actor = Actor::Operator {
        id: ctx.signed_in.operator.id.clone(),
        email: ctx.signed_in.operator.email.clone(),
    };
    if let Err(e) = tenancy::change_project_settings(
        state.store.as_ref(),
        state.changes.as_ref(),
        &ctx.project,
        &new,
        &actor,
        None,
        state.now_ms(),
    )
    .await
    {
        return error_page(e.into());
    }
    Redirect::to(&format!("/settings?project={}", ctx.project.id)).into_response()
}

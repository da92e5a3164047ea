//! Settings → API Keys: list, create (with a one-time reveal), roll, revoke.
//! Owners and admins only. Works without JavaScript except the Copy button.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::key_settings::{CreateKeyRequest, IpRuleInput, validate_create};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{KeyType, Scope, ScopeSet};
use keyflow_store::{Actor, ApiKey, Membership, Page, Project};

use super::html::{error_box, escape, page, relative_time};
use super::session::{self, SignedIn};
use super::{error_page, html, refused_cross_site};
use crate::error::ApiError;
use crate::operations::keys as key_ops;
use crate::state::SharedState;

/// What every keys page needs: the operator, their workspace role and the project.
pub struct ManagerContext {
    pub signed_in: SignedIn,
    pub membership: Membership,
    pub project: Project,
    pub projects: Vec<Project>,
}

/// An operator's authority over keys: not bound by any key, but tenant
/// rate limits stay under the workspace plan's.
pub(crate) async fn operator_authority(
    state: &SharedState,
    ctx: &ManagerContext,
) -> Result<key_ops::KeyAuthority<'static>, Response> {
    match state.plan_of(&ctx.membership.workspace_id).await {
        Ok(Some(plan)) => Ok(key_ops::KeyAuthority::Operator {
            plan_limit: state.config.plan_rate_limit(plan),
        }),
        Ok(None) => Err(error_page(ApiError::not_found("workspace"))),
        Err(e) => Err(error_page(e.into())),
    }
}

/// Signed in and a project of their workspace (any role); otherwise the
/// response to send instead (sign-in redirect or 404 page).
pub async fn workspace_context(
    state: &SharedState,
    headers: &HeaderMap,
    project: Option<&String>,
) -> Result<ManagerContext, Response> {
    let signed_in = match session::current(state, headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Redirect::to("/signin").into_response()),
        Err(e) => return Err(error_page(e)),
    };
    let memberships = state
        .store
        .list_memberships(&signed_in.operator.id)
        .await
        .map_err(|e| error_page(e.into()))?;
    let Some(membership) = memberships.into_iter().next() else {
        return Err(error_page(ApiError::not_found("workspace")));
    };
    let projects = state
        .store
        .list_projects(&membership.workspace_id)
        .await
        .map_err(|e| error_page(e.into()))?;
    let chosen = match project {
        Some(id) => projects.iter().find(|p| &p.id == id).cloned(),
        None => projects.first().cloned(),
    };
    let Some(project) = chosen else {
        return Err(error_page(ApiError::not_found("project")));
    };
    Ok(ManagerContext {
        signed_in,
        membership,
        project,
        projects,
    })
}

/// [`workspace_context`] for owners and admins; members get a 403 page.
pub async fn manager(
    state: &SharedState,
    headers: &HeaderMap,
    project: Option<&String>,
) -> Result<ManagerContext, Response> {
    let ctx = workspace_context(state, headers, project).await?;
    if !ctx.membership.role.can_manage() {
        let body = "<div class=\"card narrow\"><h1>Owners and admins only</h1><p>Ask an owner or admin of this workspace for access to this page.</p></div>";
        return Err(html(StatusCode::FORBIDDEN, ctx.render("Forbidden", body)));
    }
    Ok(ctx)
}

/// [`manager`] for a form post: the same-origin check first (a cross-site post
/// learns nothing), then session and role, then the form's CSRF token.
pub async fn manager_post(
    state: &SharedState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<ManagerContext, Response> {
    if !session::same_origin(headers) {
        return Err(refused_cross_site());
    }
    let ctx = manager(state, headers, form.get("project")).await?;
    if !session::csrf_ok(&ctx.signed_in.session, form.get("csrf").map(String::as_str)) {
        return Err(refused_cross_site());
    }
    Ok(ctx)
}

impl ManagerContext {
    fn render(&self, title: &str, body: &str) -> String {
        self.render_at("/keys", title, body)
    }
    /// A full page with `current` highlighted in the navigation.
    pub(crate) fn render_at(&self, current: &str, title: &str, body: &str) -> String {
        page(
            title,
            current,
            Some((
                &self.signed_in.operator.email,
                &self.signed_in.session.csrf_token,
            )),
            body,
        )
    }
    pub(crate) fn actor(&self) -> Actor {
        Actor::Operator {
            id: self.signed_in.operator.id.clone(),
            email: self.signed_in.operator.email.clone(),
        }
    }
    pub(crate) fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            escape(&self.signed_in.session.csrf_token)
        )
    }
    pub(crate) fn project_q(&self) -> String {
        format!("project={}", escape(&self.project.id))
    }
}

/// "Full access", or the scopes' descriptions in words.
pub fn access_summary(key_type: KeyType, scopes: ScopeSet) -> String {
    if scopes == ScopeSet::allowed_for(key_type) && key_type == KeyType::Secret {
        return "Full access".into();
    }
    let words: Vec<&str> = scopes.iter().map(Scope::description).collect();
    let mut text = words.join(", ");
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    text
}

pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let keys = match state
        .store
        .list_api_keys(
            &ctx.project.id,
            false,
            &Page {
                limit: 1000,
                cursor: None,
            },
        )
        .await
    {
        Ok(k) => k,
        Err(e) => return error_page(e.into()),
    };
    let now = state.now_ms();
    let mut body =
        String::from("<div class=\"card\"><h1>API keys</h1><p class=\"muted\">Project: ");
    for p in &ctx.projects {
        if p.id == ctx.project.id {
            let _ = write!(
                body,
                "<strong>{}</strong> ({}) ",
                escape(&p.name),
                p.environment.as_str()
            );
        } else {
            let _ = write!(
                body,
                "<a href=\"/keys?project={}\">{}</a> ",
                escape(&p.id),
                escape(&p.name)
            );
        }
    }
    let _ = write!(
        body,
        "</p><p><a href=\"/keys/new?{}&amp;type=secret\">Create API key</a></p>",
        ctx.project_q()
    );
    body.push_str("<table><thead><tr><th>Name</th><th>Type</th><th>Access</th><th>Key</th><th>Last used</th><th>Created</th><th>Expires</th><th></th></tr></thead><tbody>");
    for k in &keys {
        let last_used = match k.last_used_at.max(state.usage.pending(&k.id).map(|p| p.0)) {
            Some(at) => format!(
                "<time datetime=\"{t}\" title=\"{t}\">{}</time>",
                relative_time(at, now),
                t = format_rfc3339(at)
            ),
            None => "Never".into(),
        };
        let expires = k
            .settings
            .expires_at
            .map(format_rfc3339)
            .unwrap_or_else(|| "Never".into());
        let _ = write!(
            body,
            "<tr><td><a href=\"/keys/{id}?{q}\">{}</a></td><td>{}</td><td>{}</td><td><code>{}…</code></td><td>{last_used}</td><td>{}</td><td>{}</td>\
             <td class=\"actions\"><a href=\"/keys/{id}/roll?{q}\">Roll</a><a href=\"/keys/{id}/revoke?{q}\">Revoke</a></td></tr>",
            escape(&k.settings.name),
            k.key_type.as_str(),
            escape(&access_summary(k.key_type, k.scopes)),
            escape(&k.prefix),
            format_rfc3339(k.created_at),
            escape(&expires),
            id = escape(&k.id),
            q = ctx.project_q(),
        );
    }
    if keys.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">No active keys.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    html(StatusCode::OK, ctx.render("API keys", &body))
}

fn new_key_form(
    ctx: &ManagerContext,
    key_type: KeyType,
    rows: usize,
    values: &HashMap<String, String>,
    message: Option<&str>,
) -> String {
    let value = |name: &str| escape(values.get(name).map(String::as_str).unwrap_or(""));
    let mut body = format!(
        "<div class=\"card\"><h1>Create API key</h1>{}<p>Type: ",
        error_box(message)
    );
    for t in KeyType::API_TYPES {
        if t == key_type {
            let _ = write!(body, "<strong>{}</strong> ", t.as_str());
        } else {
            let _ = write!(
                body,
                "<a href=\"/keys/new?{}&amp;type={}\">{}</a> ",
                ctx.project_q(),
                t.as_str(),
                t.as_str()
            );
        }
    }
    let _ = write!(
        body,
        "</p><form method=\"post\" action=\"/keys/new\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">\
         <input type=\"hidden\" name=\"type\" value=\"{}\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" maxlength=\"64\" value=\"{}\" required>\
         <fieldset><legend>Permissions</legend>",
        ctx.csrf_field(),
        escape(&ctx.project.id),
        key_type.as_str(),
        value("name")
    );
    let defaults = ScopeSet::default_for(key_type);
    for scope in ScopeSet::allowed_for(key_type).iter() {
        let checked = if values.is_empty() && defaults.contains(scope)
            || values.contains_key(&format!("scope:{}", scope.as_str()))
        {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<label><input type=\"checkbox\" name=\"scope\" value=\"{s}\"{checked}> {} <code>{s}</code></label>",
            escape(scope.description()),
            s = scope.as_str()
        );
    }
    let _ = write!(
        body,
        "</fieldset><label for=\"expires_at\">Expires (UTC, optional)</label>\
         <input id=\"expires_at\" name=\"expires_at\" type=\"datetime-local\" value=\"{}\">\
         <fieldset><legend>IP allow-list (empty: any address)</legend>",
        value("expires_at")
    );
    for i in 0..rows {
        let _ = write!(
            body,
            "<div class=\"row\"><input name=\"cidr_{i}\" placeholder=\"203.0.113.0/24 or 2001:db8::1\" value=\"{}\" aria-label=\"Address or CIDR {n}\">\
             <input name=\"description_{i}\" placeholder=\"Description\" value=\"{}\" aria-label=\"Description {n}\"></div>",
            value(&format!("cidr_{i}")),
            value(&format!("description_{i}")),
            n = i + 1
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\" name=\"more_rows\" value=\"{}\" class=\"link\">Add a row</button></fieldset>\
         <label for=\"allowed_events\">Allowed events (comma-separated; empty: all)</label>\
         <input id=\"allowed_events\" name=\"allowed_events\" value=\"{}\">\
         <button type=\"submit\">Create</button></form></div>",
        rows + 1,
        value("allowed_events")
    );
    body
}

pub async fn new_form(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key_type = query
        .get("type")
        .and_then(|t| KeyType::parse_api_type(t))
        .unwrap_or(KeyType::Secret);
    html(
        StatusCode::OK,
        ctx.render(
            "Create API key",
            &new_key_form(&ctx, key_type, 1, &HashMap::new(), None),
        ),
    )
}

/// The submitted form as a map (checkbox scopes become `scope:<name>` entries).
fn form_values(pairs: &[(String, String)]) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for (k, v) in pairs {
        if k == "scope" {
            values.insert(format!("scope:{v}"), "on".into());
        } else {
            values.insert(k.clone(), v.clone());
        }
    }
    values
}

pub async fn create(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let values = form_values(&pairs);
    let ctx = match manager_post(&state, &headers, &values).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key_type = values
        .get("type")
        .and_then(|t| KeyType::parse_api_type(t))
        .unwrap_or(KeyType::Secret);
    let rows = values
        .keys()
        .filter(|k| k.starts_with("cidr_"))
        .count()
        .max(1);
    // "Add a row" re-renders the form with one more allow-list row; nothing is created.
    if let Some(more) = values
        .get("more_rows")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let form = new_key_form(&ctx, key_type, more.min(100), &values, None);
        return html(StatusCode::OK, ctx.render("Create API key", &form));
    }
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let ip_allowlist = ip_rows_from_form(&values, rows);
    let request = CreateKeyRequest {
        name: values.get("name").cloned(),
        key_type: Some(key_type.as_str().to_string()),
        scopes: Some(scopes),
        // datetime-local has no zone; the form says UTC.
        expires_at: expiry_from_form(&values),
        ip_allowlist: Some(ip_allowlist),
        allowed_events: list_field(&values, "allowed_events").flatten(),
        ..Default::default()
    };
    let now = state.now_ms();
    let spec = match validate_create(&request, now) {
        Ok(spec) => spec,
        Err(fields) => {
            let message = fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; ");
            let form = new_key_form(&ctx, key_type, rows, &values, Some(&message));
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.render("Create API key", &form),
            );
        }
    };
    let ip = crate::auth::client_ip(&state, Some(peer), &headers).map(|i| i.to_string());
    let authority = match operator_authority(&state, &ctx).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match key_ops::create_key(
        state.store.as_ref(),
        state.changes.as_ref(),
        &ctx.project,
        spec,
        &ctx.actor(),
        authority,
        ip,
        now,
    )
    .await
    {
        Ok(issued) => reveal(&ctx, &issued.key, &issued.secret),
        Err(e) => {
            let message = ApiError::from(e).message;
            let form = new_key_form(&ctx, key_type, rows, &values, Some(&message));
            html(
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.render("Create API key", &form),
            )
        }
    }
}

/// The one-time reveal: the only page that ever shows the full key.
fn reveal(ctx: &ManagerContext, key: &ApiKey, secret: &str) -> Response {
    let body = format!(
        "<div class=\"card\"><h1>Your new API key</h1>\
         <p class=\"warning\" role=\"alert\">Copy this key now. It will not be shown again: Keyflow stores only a digest of it.</p>\
         <p class=\"secret\" id=\"new-key\">{}</p><button type=\"button\" data-copy=\"new-key\">Copy</button>\
         <p class=\"muted\">{} key <strong>{}</strong> ({}).</p><p><a href=\"/keys?{}\">Done</a></p></div>",
        escape(secret),
        key.key_type.as_str(),
        escape(&key.settings.name),
        escape(&access_summary(key.key_type, key.scopes)),
        ctx.project_q()
    );
    html(StatusCode::OK, ctx.render("New API key", &body))
}

async fn key_of(state: &SharedState, ctx: &ManagerContext, id: &str) -> Result<ApiKey, Response> {
    match state.store.get_api_key(&ctx.project.id, id).await {
        Ok(Some(k)) if k.revoked_at.is_none() => Ok(k),
        Ok(_) => Err(error_page(ApiError::not_found("API key"))),
        Err(e) => Err(error_page(e.into())),
    }
}

pub async fn confirm(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = match key_of(&state, &ctx, &id).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let (title, detail, extra, button) = match action.as_str() {
        "revoke" => (
            "Revoke API key",
            "Requests with this key will be refused at once (401 key_revoked). This cannot be undone.",
            String::new(),
            "<button type=\"submit\" class=\"danger\">Revoke</button>",
        ),
        "roll" => (
            "Roll API key",
            "A new key with the same settings is created and shown once; the old key stops working after the grace period.",
            "<label for=\"grace\">Old key keeps working for</label><select id=\"grace\" name=\"grace\">\
             <option value=\"0\">0 (stop now)</option><option value=\"3600\">1 hour</option>\
             <option value=\"86400\">24 hours</option><option value=\"604800\">7 days</option></select>"
                .to_string(),
            "<button type=\"submit\">Roll</button>",
        ),
        _ => return error_page(ApiError::not_found("page")),
    };
    let body = format!(
        "<div class=\"card narrow\"><h1>{title}</h1><p><strong>{}</strong> <code>{}…</code></p><p>{detail}</p>\
         <form method=\"post\" action=\"/keys/{}/{action}\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">{extra}{button}</form>\
         <p><a href=\"/keys?{}\">Cancel</a></p></div>",
        escape(&key.settings.name),
        escape(&key.prefix),
        escape(&key.id),
        ctx.csrf_field(),
        escape(&ctx.project.id),
        ctx.project_q()
    );
    html(StatusCode::OK, ctx.render(title, &body))
}

pub async fn act(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ctx = match manager_post(&state, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = match key_of(&state, &ctx, &id).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let ip = crate::auth::client_ip(&state, Some(peer), &headers).map(|i| i.to_string());
    let now = state.now_ms();
    let authority = match operator_authority(&state, &ctx).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let result = match action.as_str() {
        "revoke" => key_ops::revoke_key(
            state.store.as_ref(),
            state.changes.as_ref(),
            &ctx.membership.workspace_id,
            &key,
            authority,
            &ctx.actor(),
            ip,
            now,
        )
        .await
        .map(|_| None),
        "roll" => {
            let grace = form
                .get("grace")
                .and_then(|g| g.parse::<i64>().ok())
                .unwrap_or(0)
                .clamp(0, key_ops::MAX_ROLL_GRACE_SECONDS);
            key_ops::roll_key(
                state.store.as_ref(),
                state.changes.as_ref(),
                &ctx.project,
                &key,
                grace,
                authority,
                &ctx.actor(),
                ip,
                now,
            )
            .await
            .map(Some)
        }
        _ => return error_page(ApiError::not_found("page")),
    };
    match result {
        Ok(Some(issued)) => reveal(&ctx, &issued.key, &issued.secret),
        Ok(None) => Redirect::to(&format!("/keys?project={}", ctx.project.id)).into_response(),
        Err(e) => error_page(e.into()),
    }
}

/// A 30-day bar chart of requests per day (errors and rate-limited overlaid),
/// drawn on the server as SVG: no script, no external library.
pub fn usage_chart(days: &[keyflow_store::DailyUsage], today: i64) -> String {
    const DAYS: i64 = 30;
    let (bar, gap, height) = (18i64, 4i64, 120i64);
    let by_day: HashMap<i64, keyflow_store::DailyUsage> =
        days.iter().map(|d| (d.day, *d)).collect();
    let max = days.iter().map(|d| d.requests).max().unwrap_or(0).max(1);
    let scale = |n: i64| n * height / max;
    let width = DAYS * (bar + gap);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {}\" width=\"100%\" role=\"img\" aria-label=\"Requests per day, last 30 days\">",
        height + 16
    );
    for i in 0..DAYS {
        let day = today - (DAYS - 1 - i);
        let u = by_day.get(&day).copied().unwrap_or_default();
        let x = i * (bar + gap);
        let date = format_rfc3339(day * 86_400_000);
        let date = date.get(..10).unwrap_or(&date);
        let _ = write!(
            svg,
            "<g><title>{date}: {} requests, {} errors, {} rate-limited</title>\
             <rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{}\" fill=\"#bac8ff\"/>\
             <rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{}\" fill=\"#ff8787\"/>\
             <rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{}\" fill=\"#ffc078\"/></g>",
            u.requests,
            u.errors,
            u.rate_limited,
            height - scale(u.requests),
            scale(u.requests),
            height - scale(u.errors),
            scale(u.errors),
            height - scale(u.rate_limited),
            scale(u.rate_limited),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"10\" fill=\"#5f6b7a\">30 days ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#5f6b7a\" text-anchor=\"end\">today · max {max}/day</text></svg>",
        height + 14,
        width,
        height + 14
    );
    svg
}

fn detail_page(
    state: &SharedState,
    ctx: &ManagerContext,
    key: &ApiKey,
    usage: &[keyflow_store::DailyUsage],
    message: Option<&str>,
) -> String {
    let s = &key.settings;
    let now = state.now_ms();
    let mut body = format!(
        "<div class=\"card\"><h1>{}</h1>{}<p class=\"muted\">{} key <code>{}…</code> · {} · created {}</p>",
        escape(&s.name),
        error_box(message),
        key.key_type.as_str(),
        escape(&key.prefix),
        escape(&access_summary(key.key_type, key.scopes)),
        format_rfc3339(key.created_at)
    );
    let pending = state.usage.pending(&key.id);
    let last_at = key.last_used_at.max(pending.as_ref().map(|p| p.0));
    let last_ip = pending
        .and_then(|p| p.1)
        .map(|ip| ip.to_string())
        .or_else(|| key.last_used_ip.clone());
    let _ = write!(
        body,
        "<p>Last used: {} · from {}</p><h2>Usage, last 30 days</h2>{}",
        last_at
            .map(|t| relative_time(t, now))
            .unwrap_or_else(|| "never".into()),
        escape(last_ip.as_deref().unwrap_or("—")),
        usage_chart(usage, now.div_euclid(86_400_000))
    );
    let rows = s.ip_allowlist.len() + 1;
    let expiry_final =
        keyflow_core::restrictions::expiry_is_final(s, key.rolled_at, state.now_ms());
    let _ = write!(
        body,
        "<h2>Settings</h2><form method=\"post\" action=\"/keys/{}/edit\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" maxlength=\"64\" value=\"{}\" required>\
         <label for=\"expires_at\">Expires (UTC, empty: never{})</label><input id=\"expires_at\" name=\"expires_at\" type=\"datetime-local\" value=\"{}\"{}>\
         <fieldset><legend>IP allow-list (empty: any address)</legend>",
        escape(&key.id),
        ctx.csrf_field(),
        escape(&ctx.project.id),
        escape(&s.name),
        if expiry_final {
            "; final, since the key has expired or been rolled"
        } else {
            ""
        },
        s.expires_at
            .map(|t| format_rfc3339(t).get(..16).unwrap_or("").to_string())
            .unwrap_or_default(),
        if expiry_final { " disabled" } else { "" },
    );
    for i in 0..rows {
        let rule = s.ip_allowlist.get(i);
        let _ = write!(
            body,
            "<div class=\"row\"><input name=\"cidr_{i}\" value=\"{}\" aria-label=\"Address or CIDR {n}\"><input name=\"description_{i}\" value=\"{}\" aria-label=\"Description {n}\"></div>",
            escape(rule.map(|r| r.cidr.as_str()).unwrap_or("")),
            escape(rule.map(|r| r.description.as_str()).unwrap_or("")),
            n = i + 1
        );
    }
    let _ = write!(
        body,
        "</fieldset><label for=\"allowed_events\">Allowed events (comma-separated; empty: all)</label>\
         <input id=\"allowed_events\" name=\"allowed_events\" value=\"{}\">",
        escape(
            &s.allowed_events
                .as_ref()
                .map(|e| e.join(", "))
                .unwrap_or_default()
        )
    );
    if key.key_type == KeyType::Client {
        let _ = write!(
            body,
            "<label for=\"allowed_origins\">Allowed origins (comma-separated; empty: any)</label>\
             <input id=\"allowed_origins\" name=\"allowed_origins\" value=\"{}\">",
            escape(
                &s.allowed_origins
                    .as_ref()
                    .map(|o| o.join(", "))
                    .unwrap_or_default()
            )
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\">Save</button></form><p><a href=\"/keys?{}\">Back to keys</a></p></div>",
        ctx.project_q()
    );
    body
}

pub async fn detail(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = match key_of(&state, &ctx, &id).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    match usage_of(&state, &key).await {
        Ok(usage) => html(
            StatusCode::OK,
            ctx.render(
                &key.settings.name,
                &detail_page(&state, &ctx, &key, &usage, None),
            ),
        ),
        Err(e) => error_page(e),
    }
}

/// Stored daily totals plus what is still counted in memory.
async fn usage_of(
    state: &SharedState,
    key: &ApiKey,
) -> Result<Vec<keyflow_store::DailyUsage>, ApiError> {
    let today = state.now_ms().div_euclid(86_400_000);
    let mut usage = state.store.daily_usage(&key.id, today - 29).await?;
    for extra in state.usage.pending_counts(&key.id) {
        match usage.iter_mut().find(|u| u.day == extra.day) {
            Some(u) => {
                u.requests += extra.requests;
                u.errors += extra.errors;
                u.rate_limited += extra.rate_limited;
            }
            None => usage.push(extra),
        }
    }
    Ok(usage)
}

fn list_field(values: &HashMap<String, String>, name: &str) -> Option<Option<Vec<String>>> {
    let text = values.get(name)?;
    let items: Vec<String> = text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Some((!items.is_empty()).then_some(items))
}

pub async fn edit(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(values): Form<HashMap<String, String>>,
) -> Response {
    use keyflow_core::key_settings::{PatchKeyRequest, apply_patch};
    let ctx = match manager_post(&state, &headers, &values).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = match key_of(&state, &ctx, &id).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let rows = values.keys().filter(|k| k.starts_with("cidr_")).count();
    let ip_rows = ip_rows_from_form(&values, rows);
    let patch = PatchKeyRequest {
        name: Some(values.get("name").cloned()),
        // A final expiry is not the form's to change (its field is disabled).
        expires_at: (!keyflow_core::restrictions::expiry_is_final(
            &key.settings,
            key.rolled_at,
            state.now_ms(),
        ))
        .then(|| expiry_from_form(&values)),
        ip_allowlist: Some(Some(ip_rows)),
        allowed_events: list_field(&values, "allowed_events"),
        allowed_origins: if key.key_type == KeyType::Client {
            list_field(&values, "allowed_origins")
        } else {
            None
        },
        ..Default::default()
    };
    let now = state.now_ms();
    let usage = usage_of(&state, &key).await.unwrap_or_default();
    let settings = match apply_patch(&key.settings, key.key_type, &patch, now) {
        Ok(s) => s,
        Err(fields) => {
            let message = fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; ");
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                ctx.render(
                    &key.settings.name,
                    &detail_page(&state, &ctx, &key, &usage, Some(&message)),
                ),
            );
        }
    };
    let ip = crate::auth::client_ip(&state, Some(peer), &headers).map(|i| i.to_string());
    let authority = match operator_authority(&state, &ctx).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(e) = key_ops::update_key(
        state.store.as_ref(),
        state.changes.as_ref(),
        &ctx.membership.workspace_id,
        &key,
        &settings,
        authority,
        &ctx.actor(),
        ip,
        now,
    )
    .await
    {
        return error_page(e.into());
    }
    Redirect::to(&format!("/keys/{}?project={}", key.id, ctx.project.id)).into_response()
}

/// The IP allow-list rows of a form (`cidr_N`, `description_N`); empty rows are dropped.
pub(crate) fn ip_rows_from_form(values: &HashMap<String, String>, rows: usize) -> Vec<IpRuleInput> {
    (0..rows)
        .filter_map(|i| {
            let cidr = values
                .get(&format!("cidr_{i}"))
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())?;
            Some(IpRuleInput {
                cidr,
                description: values.get(&format!("description_{i}")).cloned(),
            })
        })
        .collect()
}

/// `expires_at` from a `datetime-local` input, which has no zone: the form says UTC.
fn expiry_from_form(values: &HashMap<String, String>) -> Option<String> {
    values.get("expires_at").filter(|e| !e.is_empty()).map(|e| {
        if e.len() == 16 {
            format!("{e}:00Z")
        } else {
            format!("{e}Z")
        }
    })
}

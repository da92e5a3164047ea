//! The operator dashboard (SPEC §6), server-rendered. This first part:
//! first-run setup, sign-in (rate limited per account and per IP, audited as
//! `operator.signed_in`), sign-out, and the activity log page.

mod data;
mod html;
pub mod keys;
mod metrics;
pub mod session;
pub mod signin;
mod workspace;

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{Environment, Plan};
use keyflow_store::{Actor, AuditTarget, Page};
use serde_json::json;

use self::html::{error_box, escape, page};
use self::session::SignedIn;
use crate::error::ApiError;
use crate::operations::{audit_entry, tenancy};
use crate::state::SharedState;

pub const STYLESHEET: &str = include_str!("../../assets/app.css");

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/", get(home))
        .route("/signin", get(signin_form).post(signin::signin))
        .route("/signout", post(signout))
        .route("/setup", get(setup_form).post(setup))
        .route("/activity", get(activity))
        .route("/contacts", get(data::contacts))
        .route("/contacts/{id}", get(data::contact))
        .route("/events", get(data::events))
        .route(
            "/members",
            get(workspace::members).post(workspace::change_members),
        )
        .route("/plan", get(workspace::plan).post(workspace::change_plan))
        .route(
            "/settings",
            get(workspace::settings).post(workspace::save_settings),
        )
        .route(
            "/metrics-credential",
            get(metrics::credential).post(metrics::update),
        )
        .route(
            "/metrics-credential/rotate",
            get(metrics::confirm_rotate).post(metrics::rotate),
        )
        .route("/keys", get(keys::list))
        .route("/keys/new", get(keys::new_form).post(keys::create))
        .route("/keys/{id}", get(keys::detail))
        .route("/keys/{id}/edit", post(keys::edit))
        .route("/keys/{id}/{action}", get(keys::confirm).post(keys::act))
        .route("/assets/app.css", get(stylesheet))
        .route("/assets/app.js", get(script))
        .layer(from_fn(security_headers))
}

/// CSP without inline scripts, no framing, no sniffing, no cross-origin referrers.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

pub const SCRIPT: &str = include_str!("../../assets/app.js");

async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLESHEET,
    )
        .into_response()
}

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    // An error page is already in its final form: the JSON error shape of the
    // API must not replace it.
    response
        .extensions_mut()
        .insert(crate::error::RenderedError);
    response
}

/// An error as a page (the dashboard never answers with JSON or a 500 body).
pub(crate) fn error_page(err: ApiError) -> Response {
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "<div class=\"card narrow\"><h1>Something went wrong</h1>{}</div>",
        error_box(Some(&err.message))
    );
    html(status, page("Error", "", None, &body))
}

fn client_ip(
    state: &SharedState,
    req_headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> Option<String> {
    crate::auth::client_ip(state, Some(peer), req_headers).map(|ip| ip.to_string())
}

async fn home(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    match session::current(&state, &headers).await {
        Ok(Some(_)) => Redirect::to("/activity").into_response(),
        Ok(None) => Redirect::to("/signin").into_response(),
        Err(e) => error_page(e),
    }
}

fn signin_page(status: StatusCode, email: &str, message: Option<&str>) -> Response {
    let body = format!(
        "<div class=\"card narrow\"><h1>Sign in</h1>{}<form method=\"post\" action=\"/signin\">\
         <label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" value=\"{}\" required autofocus>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" required>\
         <button type=\"submit\">Sign in</button></form></div>",
        error_box(message),
        escape(email)
    );
    html(status, page("Sign in", "/signin", None, &body))
}

async fn signin_form() -> Response {
    signin_page(StatusCode::OK, "", None)
}

pub(crate) fn refused_cross_site() -> Response {
    let body = format!(
        "<div class=\"card narrow\"><h1>Request refused</h1>{}</div>",
        error_box(Some(
            "This form was posted from another site. Nothing was changed."
        ))
    );
    html(StatusCode::FORBIDDEN, page("Refused", "", None, &body))
}

/// Creates a session for `operator_id` (rotating any previous one), audits the
/// sign-in in each of the operator's workspaces, and redirects to the dashboard.
async fn start_session(
    state: &SharedState,
    headers: &HeaderMap,
    operator: &keyflow_store::Operator,
    ip: Option<String>,
) -> Result<Response, ApiError> {
    session::end(state, headers).await?;
    let now = state.now_ms();
    let (id, new_session) = session::new_session(&operator.id, now)?;
    let actor = Actor::Operator {
        id: operator.id.clone(),
        email: operator.email.clone(),
    };
    let entries: Vec<_> = state
        .store
        .list_memberships(&operator.id)
        .await?
        .iter()
        .map(|m| {
            audit_entry(
                &m.workspace_id,
                None,
                &actor,
                keyflow_store::AuditAction::OperatorSignedIn,
                AuditTarget {
                    kind: "operator".into(),
                    id: Some(operator.id.clone()),
                    name: Some(operator.email.clone()),
                },
                ip.clone(),
                json!({}),
                now,
            )
        })
        .collect();
    state.store.create_session(&new_session, &entries).await?;
    let mut response = Redirect::to("/activity").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&id, session::is_https(headers)),
    );
    Ok(response)
}

async fn signout(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !session::same_origin(&headers) {
        return refused_cross_site();
    }
    match session::current(&state, &headers).await {
        Ok(Some(signed_in))
            if session::csrf_ok(&signed_in.session, form.get("csrf").map(String::as_str)) =>
        {
            if let Err(e) = session::end(&state, &headers).await {
                return error_page(e);
            }
        }
        Ok(Some(_)) => return refused_cross_site(),
        Ok(None) => {}
        Err(e) => return error_page(e),
    }
    let mut response = Redirect::to("/signin").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

fn setup_page(status: StatusCode, token: &str, message: Option<&str>) -> Response {
    let body = format!(
        "<div class=\"card narrow\"><h1>Set up Keyflow</h1><p class=\"muted\">Create the owner account, the first workspace and its first project.</p>{}\
         <form method=\"post\" action=\"/setup\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
         <label for=\"email\">Your email</label><input id=\"email\" name=\"email\" type=\"email\" required>\
         <label for=\"password\">Password (8 characters or more)</label><input id=\"password\" name=\"password\" type=\"password\" minlength=\"8\" required>\
         <label for=\"workspace\">Workspace</label><input id=\"workspace\" name=\"workspace\" required>\
         <label for=\"project\">First project</label><input id=\"project\" name=\"project\" value=\"Production\" required>\
         <label for=\"environment\">Environment</label><select id=\"environment\" name=\"environment\"><option value=\"live\">live</option><option value=\"test\">test</option></select>\
         <label for=\"plan\">Plan (API access needs pro or team)</label><select id=\"plan\" name=\"plan\"><option value=\"free\">free</option><option value=\"pro\">pro</option><option value=\"team\" selected>team</option></select>\
         <button type=\"submit\">Create</button></form></div>",
        error_box(message),
        escape(token)
    );
    html(status, page("Set up", "/setup", None, &body))
}

/// Setup is for an empty instance only: once an operator exists (from the
/// link, `keyflow init` or the admin API), the link stops working.
async fn no_operators_yet(state: &SharedState) -> bool {
    state.store.count_operators().await.is_ok_and(|n| n == 0)
}

fn setup_unavailable() -> Response {
    let body = "<div class=\"card narrow\"><h1>Setup is not available</h1><p>This instance is already set up, or the link is not valid. Use the link printed by <code>keyflow serve</code> on first start.</p></div>";
    html(StatusCode::NOT_FOUND, page("Setup", "", None, body))
}

async fn setup_form(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("token") {
        Some(token) if state.setup_token_matches(token) && no_operators_yet(&state).await => {
            setup_page(StatusCode::OK, token, None)
        }
        _ => setup_unavailable(),
    }
}

async fn setup(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !session::same_origin(&headers) {
        return refused_cross_site();
    }
    let token = form.get("token").cloned().unwrap_or_default();
    if !state.setup_token_matches(&token) || !no_operators_yet(&state).await {
        return setup_unavailable();
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let environment = Environment::parse(field("environment")).unwrap_or(Environment::Live);
    // The form preselects team; a post without the field means the same.
    let plan = match field("plan") {
        "" => Some(Plan::Team),
        p => Plan::parse(p),
    };
    let Some(plan) = plan else {
        return setup_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &token,
            Some("Choose a plan: free, pro or team."),
        );
    };
    let created = tenancy::bootstrap(
        state.store.as_ref(),
        field("email"),
        field("password").to_string(),
        field("workspace"),
        field("project"),
        environment,
        plan,
        state.now_ms(),
    )
    .await;
    match created {
        Ok(boot) => {
            state.consume_setup_token();
            let ip = client_ip(&state, &headers, peer);
            start_session(&state, &headers, &boot.owner, ip)
                .await
                .unwrap_or_else(error_page)
        }
        Err(e) => {
            let message = ApiError::from(e).message;
            setup_page(StatusCode::UNPROCESSABLE_ENTITY, &token, Some(&message))
        }
    }
}

/// `/activity`: the activity log of one project (and its workspace), newest first.
async fn activity(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let signed_in = match session::current(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/signin").into_response(),
        Err(e) => return error_page(e),
    };
    match render_activity(&state, &signed_in, &query).await {
        Ok(body) => html(
            StatusCode::OK,
            page(
                "Activity",
                "/activity",
                Some((&signed_in.operator.email, &signed_in.session.csrf_token)),
                &body,
            ),
        ),
        Err(e) => error_page(e),
    }
}

async fn render_activity(
    state: &SharedState,
    signed_in: &SignedIn,
    query: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let memberships = state.store.list_memberships(&signed_in.operator.id).await?;
    let Some(membership) = memberships.first() else {
        return Ok("<div class=\"card\"><h1>Activity</h1><p>You are not a member of any workspace yet.</p></div>".into());
    };
    let projects = state.store.list_projects(&membership.workspace_id).await?;
    let project = match query.get("project") {
        Some(id) => projects
            .iter()
            .find(|p| &p.id == id)
            .ok_or_else(|| ApiError::not_found("project"))?,
        None => projects
            .first()
            .ok_or_else(|| ApiError::not_found("project"))?,
    };
    let page_query = Page {
        limit: 50,
        cursor: query.get("cursor").cloned(),
    };
    let filter = crate::api::audit::audit_filter(query);
    let entries = state
        .store
        .search_audit(&membership.workspace_id, &project.id, &filter, &page_query)
        .await?;
    let mut body =
        String::from("<div class=\"card\"><h1>Activity</h1><p class=\"muted\">Project: ");
    for p in &projects {
        if p.id == project.id {
            let _ = write!(body, "<strong>{}</strong> ", escape(&p.name));
        } else {
            let _ = write!(
                body,
                "<a href=\"/activity?project={}\">{}</a> ",
                escape(&p.id),
                escape(&p.name)
            );
        }
    }
    body.push_str("</p>");
    // Filters: a plain GET form, so they work without JavaScript and can be bookmarked.
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/activity\" class=\"row\"><input type=\"hidden\" name=\"project\" value=\"{}\">\
         <select name=\"action\" aria-label=\"Action\"><option value=\"\">All actions</option>",
        escape(&project.id)
    );
    for action in keyflow_store::AuditAction::ALL.map(keyflow_store::AuditAction::as_str) {
        let selected = if filter.action.as_deref() == Some(action) {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{action}</option>");
    }
    let _ = write!(
        body,
        "</select><input name=\"actor\" placeholder=\"Actor: email or key name\" value=\"{}\" aria-label=\"Actor\">\
         <button type=\"submit\">Filter</button></form>",
        escape(filter.actor.as_deref().unwrap_or(""))
    );
    body.push_str("<table><thead><tr><th>Actor</th><th>Action</th><th>Target</th><th>Time</th><th>IP</th></tr></thead><tbody>");
    for e in &entries {
        let actor = match &e.actor {
            Actor::Operator { email, .. } => escape(email),
            Actor::ApiKey { name, prefix, .. } => format!(
                "{} <span class=\"badge\">API key</span> <span class=\"muted\">{}…</span>",
                escape(name),
                escape(prefix)
            ),
            Actor::InstanceAdmin => "Instance admin".to_string(),
        };
        let target = e
            .target
            .name
            .as_deref()
            .or(e.target.id.as_deref())
            .unwrap_or("");
        let _ = write!(
            body,
            "<tr><td>{actor}</td><td>{}</td><td>{} <span class=\"muted\">{}</span></td><td><time datetime=\"{time}\">{time}</time></td><td>{}</td></tr>",
            escape(&e.action),
            escape(target),
            escape(&e.target.kind),
            escape(e.ip.as_deref().unwrap_or("")),
            time = format_rfc3339(e.at),
        );
    }
    body.push_str("</tbody></table>");
    if entries.len() == page_query.limit as usize
        && let Some(last) = entries.last()
    {
        let _ = write!(
            body,
            "<p><a href=\"/activity?project={}&amp;action={}&amp;actor={}&amp;cursor={}\">Older entries</a></p>",
            escape(&project.id),
            escape(&url_encode(filter.action.as_deref().unwrap_or(""))),
            escape(&url_encode(filter.actor.as_deref().unwrap_or(""))),
            escape(&last.id)
        );
    }
    body.push_str("</div>");
    Ok(body)
}

/// Percent-encodes a query value (everything but unreserved characters).
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

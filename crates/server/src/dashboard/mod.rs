//! The operator dashboard (SPEC §6), server-rendered from templates
//! (`crates/server/templates/`). Handlers name who may see them through the
//! extractors in [`extract`] and answer with a page or a [`page::PageError`].

mod activity;
mod credential;
mod customer_data;
mod extract;
mod form_errors;
mod key_detail;
pub mod keys;
mod metrics;
pub(crate) mod page;
pub mod session;
mod setup;
pub mod signin;
mod trigger_form;
mod workflows;
mod workspace;

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};

use self::page::{Chrome, PageError, PageResult, render};
use crate::error::ApiError;
use crate::operations::sessions::{self, NewSession};
use crate::state::SharedState;

pub const STYLESHEET: &str = include_str!("../../assets/app.css");

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/", get(home))
        .route("/signin", get(signin_form).post(signin::signin))
        .route("/signout", post(signout))
        .route("/setup", get(setup::form).post(setup::submit))
        .route("/activity", get(activity::page))
        .route("/contacts", get(customer_data::contacts))
        .route("/contacts/{id}", get(customer_data::contact))
        .route("/events", get(customer_data::events))
        .route("/analytics", get(metrics::page).post(metrics::run_sql))
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
            get(credential::credential).post(credential::update),
        )
        .route(
            "/metrics-credential/rotate",
            get(credential::confirm_rotate).post(credential::rotate),
        )
        .route("/workflows", get(workflows::list))
        .route(
            "/workflows/new",
            get(workflows::new_form).post(workflows::create),
        )
        .route(
            "/workflows/{id}",
            get(workflows::detail).post(workflows::change),
        )
        .route(
            "/workflow-runs/{id}",
            get(workflows::run).post(workflows::act_on_run),
        )
        .route("/keys", get(keys::list))
        .route("/keys/new", get(keys::new_form).post(keys::create))
        .route("/keys/{id}", get(key_detail::detail))
        .route("/keys/{id}/edit", post(key_detail::edit))
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

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage<'a> {
    chrome: Chrome,
    email: &'a str,
    /// Where to go after signing in (a path of this site), carried by the form.
    next: &'a str,
    message: Option<&'a str>,
}

pub(crate) fn signin_page(
    status: StatusCode,
    email: &str,
    next: &str,
    message: Option<&str>,
) -> Response {
    let page = SigninPage {
        chrome: Chrome::public("Sign in"),
        email,
        next: page::safe_next(next).unwrap_or(""),
        message,
    };
    render(status, &page)
}

async fn signin_form(Query(query): Query<HashMap<String, String>>) -> Response {
    let next = query.get("next").map(String::as_str).unwrap_or("");
    signin_page(StatusCode::OK, "", next, None)
}

async fn home(State(state): State<SharedState>, headers: HeaderMap) -> PageResult {
    Ok(match session::current(&state, &headers).await? {
        Some(_) => Redirect::to("/activity").into_response(),
        None => Redirect::to("/signin").into_response(),
    })
}

/// Creates a session for `operator_id` (rotating any previous one), audits the
/// sign-in in each of the operator's workspaces, and redirects to `to` (a
/// checked path of this site) or the dashboard.
async fn start_session(
    state: &SharedState,
    headers: &HeaderMap,
    operator: &keyflow_store::Operator,
    ip: Option<String>,
    to: Option<&str>,
) -> Result<Response, ApiError> {
    let actor = sessions::operator_actor(operator);
    let ctx = state.ctx(actor, ip, state.now_ms());
    let replaced = session::cookie_value(headers);
    let NewSession { id, .. } = sessions::sign_in(&ctx, operator, replaced.as_deref()).await?;
    let to = to.and_then(page::safe_next).unwrap_or("/activity");
    let mut response = Redirect::to(to).into_response();
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
) -> PageResult {
    if !session::same_origin(&headers) {
        return Err(PageError::CrossSite);
    }
    if let Some(signed_in) = session::current(&state, &headers).await? {
        if !session::csrf_ok(&signed_in.session, form.get("csrf").map(String::as_str)) {
            return Err(PageError::CrossSite);
        }
        session::end(&state, &headers).await?;
    }
    let mut response = Redirect::to("/signin").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    Ok(response)
}

fn client_ip(
    state: &SharedState,
    req_headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> Option<String> {
    crate::auth::client_ip(state, Some(peer), req_headers).map(|ip| ip.to_string())
}

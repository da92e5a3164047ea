//! First-run setup (`/setup?token=…`): the owner account, the first
//! workspace and its first project, from the link `keyflow serve` prints.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keyflow_core::{Environment, Plan};

use super::form_errors::FormErrors;
use super::page::{Chrome, MessagePage, PageError, PageResult, render};
use super::{client_ip, session, start_session};
use crate::operations::tenancy;
use crate::state::SharedState;

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage<'a> {
    chrome: Chrome,
    token: &'a str,
    errors: FormErrors,
    /// What a refused form held (never the password).
    typed: &'a HashMap<String, String>,
}

impl SetupPage<'_> {
    fn typed(&self, name: &str, default: &'static str) -> String {
        self.typed
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
}

fn setup_page(
    status: StatusCode,
    token: &str,
    errors: FormErrors,
    typed: &HashMap<String, String>,
) -> Response {
    let page = SetupPage {
        chrome: Chrome::public("Set up"),
        token,
        errors,
        typed,
    };
    render(status, &page)
}

/// Setup is for an empty instance only: once an operator exists (from the
/// link, `keyflow init` or the admin API), the link stops working.
async fn no_operators_yet(state: &SharedState) -> bool {
    state.store.count_operators().await.is_ok_and(|n| n == 0)
}

fn unavailable() -> Response {
    render(
        StatusCode::NOT_FOUND,
        &MessagePage {
            chrome: Chrome::public("Setup"),
            heading: "Setup is not available",
            text: "This instance is already set up, or the link is not valid. \
                   Use the link printed by keyflow serve on first start.",
            alert: false,
        },
    )
}

pub async fn form(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("token") {
        Some(token) if state.setup_token_matches(token) && no_operators_yet(&state).await => {
            setup_page(
                StatusCode::OK,
                token,
                FormErrors::default(),
                &HashMap::new(),
            )
        }
        _ => unavailable(),
    }
}

pub async fn submit(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    if !session::same_origin(&headers) {
        return Err(PageError::CrossSite);
    }
    let token = form.get("token").cloned().unwrap_or_default();
    // Taken before anything else: a second setup running at the same time
    // finds no token (and a failed setup puts it back below).
    if !state.take_setup_token(&token) {
        return Ok(unavailable());
    }
    if !no_operators_yet(&state).await {
        return Ok(unavailable());
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let environment = Environment::parse(field("environment")).unwrap_or(Environment::Live);
    // The form preselects team; a post without the field means the same.
    let plan = match field("plan") {
        "" => Some(Plan::Team),
        p => Plan::parse(p),
    };
    let Some(plan) = plan else {
        state.restore_setup_token(token.clone());
        let errors = FormErrors::one("plan", "Plan", "Choose free, pro or team.");
        return Ok(setup_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &token,
            errors,
            &form,
        ));
    };
    let new = tenancy::NewInstance {
        email: field("email"),
        password: field("password").to_string(),
        workspace_name: field("workspace"),
        project_name: field("project"),
        environment,
        plan,
    };
    let created = tenancy::bootstrap(state.store.as_ref(), new, state.now_ms()).await;
    match created {
        Ok(boot) => {
            let ip = client_ip(&state, &headers, peer);
            // Straight to the first key, with the plan said (free has no API).
            let welcome = match boot.workspace.plan {
                keyflow_core::Plan::Free => "/keys/new?type=secret&done=welcome-free",
                keyflow_core::Plan::Pro => "/keys/new?type=secret&done=welcome-pro",
                keyflow_core::Plan::Team => "/keys/new?type=secret&done=welcome-team",
            };
            Ok(start_session(&state, &headers, &boot.owner, ip, Some(welcome)).await?)
        }
        Err(e) => {
            state.restore_setup_token(token.clone());
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(setup_page(
                status,
                &token,
                FormErrors::from_refusal(e),
                &form,
            ))
        }
    }
}

//! Metrics credential page (owners and admins): create or rotate the
//! project's credential behind a confirmation, a one-time reveal of the client
//! secret, and its IP allow-list and cache TTL.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_store::MetricsCredential;

use super::extract::{Manager, ManagerForm, Viewer};
use super::form_errors::FormErrors;
use super::keys::{IpRow, ip_rows_from_form};
use super::page::{Chrome, PageResult, relative_time, render};
use crate::operations::metrics_credential as credential_ops;
use crate::state::SharedState;

#[derive(Template)]
#[template(path = "credential.html")]
struct CredentialPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    project_name: &'a str,
    credential: Option<MetricsCredential>,
    created: String,
    /// (RFC 3339, "3 minutes ago").
    last_used: Option<(String, String)>,
    rows: Vec<IpRow>,
    /// As stored, or as typed when the form came back with an error.
    ttl: String,
    errors: FormErrors,
}

/// The page, from what is stored, or (`typed`) from a form that came back
/// with an error, so nothing typed is lost and nothing stale is re-saved.
async fn show(
    state: &SharedState,
    viewer: &Viewer,
    status: StatusCode,
    typed: Option<(&std::collections::HashMap<String, String>, FormErrors)>,
) -> PageResult {
    let (typed, errors) = match typed {
        Some((values, errors)) => (Some(values), errors),
        None => (None, FormErrors::default()),
    };
    let credential = state.store.metrics_credential(&viewer.project.id).await?;
    let ttl = state
        .store
        .project_settings(&viewer.project.id)
        .await?
        .metrics_cache_ttl_minutes;
    let now = state.now_ms();
    let page = CredentialPage {
        chrome: viewer.chrome("/metrics-credential", "Metrics credential"),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        project_name: &viewer.project.name,
        created: credential
            .as_ref()
            .map(|c| super::page::shown_time(c.created_at))
            .unwrap_or_default(),
        last_used: credential
            .as_ref()
            .and_then(|c| c.last_used_at)
            .map(|t| (super::page::shown_time(t), relative_time(t, now))),
        rows: match typed {
            Some(values) => IpRow::from_form(values, super::keys::row_count(values).max(1)),
            None => credential
                .as_ref()
                .map(|c| IpRow::with_empty_row(&c.ip_allowlist))
                .unwrap_or_default(),
        },
        credential,
        ttl: typed
            .and_then(|values| values.get("cache_ttl_minutes").cloned())
            .unwrap_or_else(|| ttl.to_string()),
        errors,
    };
    Ok(render(status, &page))
}

/// `GET /metrics-credential`.
pub async fn credential(Manager(viewer): Manager, State(state): State<SharedState>) -> PageResult {
    show(&state, &viewer, StatusCode::OK, None).await
}

#[derive(Template)]
#[template(path = "credential_rotate.html")]
struct RotatePage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
}

/// `GET /metrics-credential/rotate`: the confirmation (rotation breaks the
/// integrations that use the current secret).
pub async fn confirm_rotate(Manager(viewer): Manager) -> Response {
    let page = RotatePage {
        chrome: viewer.chrome("/metrics-credential", "Rotate the metrics credential"),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "credential_reveal.html")]
struct RevealPage<'a> {
    chrome: Chrome,
    id: &'a str,
    secret: &'a str,
    project_id: &'a str,
}

/// `POST /metrics-credential/rotate`: create or rotate, then the one-time reveal.
pub async fn rotate(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    // Operators are bound by no key's allow-list.
    let rotation =
        credential_ops::prepare_rotation(state.store.as_ref(), &viewer.project, &[]).await?;
    let issued =
        credential_ops::create_or_rotate(&form.ctx(&state), &viewer.project, rotation).await?;
    let page = RevealPage {
        chrome: viewer.chrome("/metrics-credential", "Metrics credential"),
        id: &issued.credential.id,
        secret: &issued.secret,
        project_id: &viewer.project.id,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /metrics-credential`: the allow-list and cache TTL.
pub async fn update(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let ip_rows = ip_rows_from_form(&form.values);
    let checked = match form.field("cache_ttl_minutes").trim().parse::<i64>() {
        Ok(ttl) => credential_ops::validate_change(Some(&ip_rows), Some(ttl))
            .map_err(|fields| FormErrors::from_fields(&fields)),
        Err(_) => Err(FormErrors::one(
            "ttl",
            "Cache TTL",
            "Must be a whole number of minutes.",
        )),
    };
    let change = match checked {
        Ok(change) => change,
        Err(errors) => {
            let typed = Some((&form.values, errors));
            return show(&state, viewer, unprocessable, typed).await;
        }
    };
    credential_ops::update(&form.ctx(&state), &viewer.project, &change, &[]).await?;
    let to = format!(
        "/metrics-credential?project={}&done=saved",
        viewer.project.id
    );
    Ok(Redirect::to(&to).into_response())
}

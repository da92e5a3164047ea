//! Metrics credential page (owners and admins): create or rotate the
//! project's credential behind a confirmation, a one-time reveal of the client
//! secret, and its IP allow-list and cache TTL.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::MetricsCredential;

use super::html::{error_box, escape, relative_time};
use super::keys::{ManagerContext, ip_rows_from_form, manager, manager_post};
use super::{error_page, html};
use crate::operations::metrics_credential as credential_ops;
use crate::state::SharedState;

const PATH: &str = "/metrics-credential";

fn credential_body(
    state: &SharedState,
    ctx: &ManagerContext,
    credential: Option<&MetricsCredential>,
    ttl: i64,
    message: Option<&str>,
) -> String {
    let mut body = format!(
        "<div class=\"card\"><h1>Metrics credential · {}</h1>{}\
         <p class=\"muted\">Server-to-server access to this project's metrics: the id and client secret \
         are exchanged for short-lived tokens at <code>POST /v1/metrics/token</code>.</p>",
        escape(&ctx.project.name),
        error_box(message)
    );
    let Some(c) = credential else {
        let _ = write!(
            body,
            "<p>This project has no metrics credential yet.</p>\
             <form method=\"post\" action=\"{PATH}/rotate\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">\
             <button type=\"submit\">Create credential</button></form></div>",
            ctx.csrf_field(),
            escape(&ctx.project.id)
        );
        return body;
    };
    let now = state.now_ms();
    let _ = write!(
        body,
        "<dl><dt>Id</dt><dd><code id=\"credential-id\">{}</code></dd>\
         <dt>Created</dt><dd>{}</dd><dt>Last used</dt><dd>{}</dd></dl>\
         <p><a class=\"button\" href=\"{PATH}/rotate?{}\">Rotate…</a></p>\
         <h2>Settings</h2><form method=\"post\" action=\"{PATH}\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">\
         <fieldset><legend>IP allow-list (empty: any address)</legend>",
        escape(&c.id),
        format_rfc3339(c.created_at),
        c.last_used_at
            .map(|t| format!(
                "<time datetime=\"{0}\" title=\"{0}\">{1}</time>",
                format_rfc3339(t),
                relative_time(t, now)
            ))
            .unwrap_or_else(|| "never".into()),
        ctx.project_q(),
        ctx.csrf_field(),
        escape(&ctx.project.id),
    );
    for i in 0..c.ip_allowlist.len() + 1 {
        let rule = c.ip_allowlist.get(i);
        let _ = write!(
            body,
            "<div class=\"row\"><input name=\"cidr_{i}\" placeholder=\"203.0.113.0/24 or 2001:db8::1\" value=\"{}\" aria-label=\"Address or CIDR {n}\">\
             <input name=\"description_{i}\" placeholder=\"Description\" value=\"{}\" aria-label=\"Description {n}\"></div>",
            escape(rule.map(|r| r.cidr.as_str()).unwrap_or("")),
            escape(rule.map(|r| r.description.as_str()).unwrap_or("")),
            n = i + 1
        );
    }
    let _ = write!(
        body,
        "</fieldset><label for=\"ttl\">Cache TTL (minutes, 5 to 10080)</label>\
         <input id=\"ttl\" name=\"cache_ttl_minutes\" inputmode=\"numeric\" value=\"{ttl}\">\
         <button type=\"submit\">Save</button></form></div>"
    );
    body
}

async fn show(
    state: &SharedState,
    ctx: &ManagerContext,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let credential = match state.store.metrics_credential(&ctx.project.id).await {
        Ok(c) => c,
        Err(e) => return error_page(e.into()),
    };
    let ttl = match state.store.project_settings(&ctx.project.id).await {
        Ok(s) => s.metrics_cache_ttl_minutes,
        Err(e) => return error_page(e.into()),
    };
    let body = credential_body(state, ctx, credential.as_ref(), ttl, message);
    html(status, ctx.render_at(PATH, "Metrics credential", &body))
}

/// `GET /metrics-credential`.
pub async fn credential(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match manager(&state, &headers, query.get("project")).await {
        Ok(ctx) => show(&state, &ctx, StatusCode::OK, None).await,
        Err(r) => r,
    }
}

/// `GET /metrics-credential/rotate`: the confirmation (rotation breaks the
/// integrations that use the current secret).
pub async fn confirm_rotate(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ctx = match manager(&state, &headers, query.get("project")).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = format!(
        "<div class=\"card narrow\"><h1>Rotate the metrics credential</h1>\
         <p>A new id and client secret replace the current ones. Tokens issued with the current \
         credential stop working at once; update every integration that uses it.</p>\
         <form method=\"post\" action=\"{PATH}/rotate\">{}<input type=\"hidden\" name=\"project\" value=\"{}\">\
         <button type=\"submit\" class=\"danger\">Rotate</button></form><p><a href=\"{PATH}?{}\">Cancel</a></p></div>",
        ctx.csrf_field(),
        escape(&ctx.project.id),
        ctx.project_q()
    );
    html(
        StatusCode::OK,
        ctx.render_at(PATH, "Rotate the metrics credential", &body),
    )
}

/// `POST /metrics-credential/rotate`: create or rotate, then the one-time reveal.
pub async fn rotate(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ctx = match manager_post(&state, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ip = crate::auth::client_ip(&state, Some(peer), &headers).map(|i| i.to_string());
    // Operators are bound by no key's allow-list.
    let rotation =
        match credential_ops::prepare_rotation(state.store.as_ref(), &ctx.project, &[]).await {
            Ok(r) => r,
            Err(e) => return error_page(e.into()),
        };
    let issued = match credential_ops::create_or_rotate(
        state.store.as_ref(),
        state.changes.as_ref(),
        &ctx.project,
        rotation,
        &ctx.actor(),
        ip,
        state.now_ms(),
    )
    .await
    {
        Ok(i) => i,
        Err(e) => return error_page(e.into()),
    };
    // The only page that ever shows the client secret.
    let body = format!(
        "<div class=\"card\"><h1>Your metrics credential</h1>\
         <p class=\"warning\" role=\"alert\">Copy the client secret now. It will not be shown again: Keyflow stores only a digest of it.</p>\
         <h2>Id</h2><p class=\"secret\" id=\"credential-id\">{}</p><button type=\"button\" data-copy=\"credential-id\">Copy</button>\
         <h2>Client secret</h2><p class=\"secret\" id=\"client-secret\">{}</p><button type=\"button\" data-copy=\"client-secret\">Copy</button>\
         <p><a href=\"{PATH}?{}\">Done</a></p></div>",
        escape(&issued.credential.id),
        escape(&issued.secret),
        ctx.project_q()
    );
    html(
        StatusCode::OK,
        ctx.render_at(PATH, "Metrics credential", &body),
    )
}

/// `POST /metrics-credential`: the allow-list and cache TTL.
pub async fn update(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ctx = match manager_post(&state, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rows = form.keys().filter(|k| k.starts_with("cidr_")).count();
    let ip_rows = ip_rows_from_form(&form, rows);
    let ttl_text = form
        .get("cache_ttl_minutes")
        .map(|t| t.trim())
        .unwrap_or("");
    let Ok(ttl) = ttl_text.parse::<i64>() else {
        return show(
            &state,
            &ctx,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("The cache TTL must be a whole number of minutes."),
        )
        .await;
    };
    let change = match credential_ops::validate_change(Some(&ip_rows), Some(ttl)) {
        Ok(c) => c,
        Err(fields) => {
            let message = fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; ");
            return show(
                &state,
                &ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&message),
            )
            .await;
        }
    };
    let ip = crate::auth::client_ip(&state, Some(peer), &headers).map(|i| i.to_string());
    if let Err(e) = credential_ops::update(
        state.store.as_ref(),
        state.changes.as_ref(),
        &ctx.project,
        &change,
        &[],
        &ctx.actor(),
        ip,
        state.now_ms(),
    )
    .await
    {
        return error_page(e.into());
    }
    Redirect::to(&format!("{PATH}?{}", ctx.project_q())).into_response()
}

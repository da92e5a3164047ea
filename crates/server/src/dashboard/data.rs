//! Contacts and Events pages (every member may browse data).

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keyflow_core::contacts::ContactLookup;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::{EventFilter, Page, Project};

use super::html::{escape, page};
use super::session::SignedIn;
use super::{error_page, html};
use crate::error::ApiError;
use crate::state::SharedState;

/// The signed-in operator and the chosen project of their workspace (any role).
async fn member_project(
    state: &SharedState,
    headers: &HeaderMap,
    project: Option<&String>,
) -> Result<(SignedIn, Project, Vec<Project>), Response> {
    let ctx = super::keys::workspace_context(state, headers, project).await?;
    Ok((ctx.signed_in, ctx.project, ctx.projects))
}

fn render(signed_in: &SignedIn, current: &str, title: &str, body: &str) -> Response {
    html(
        StatusCode::OK,
        page(
            title,
            current,
            Some((&signed_in.operator.email, &signed_in.session.csrf_token)),
            body,
        ),
    )
}

fn project_links(path: &str, project: &Project, projects: &[Project]) -> String {
    let mut out = String::from("<p class=\"muted\">Project: ");
    for p in projects {
        if p.id == project.id {
            let _ = write!(out, "<strong>{}</strong> ", escape(&p.name));
        } else {
            let _ = write!(
                out,
                "<a href=\"{path}?project={}\">{}</a> ",
                escape(&p.id),
                escape(&p.name)
            );
        }
    }
    out.push_str("</p>");
    out
}

pub async fn contacts(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (signed_in, project, projects) =
        match member_project(&state, &headers, query.get("project")).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let email = query
        .get("email")
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    let found = match &email {
        Some(e) => state
            .store
            .get_contact(&project.id, &ContactLookup::Email(e.clone()))
            .await
            .map(|c| c.into_iter().collect()),
        None => {
            state
                .store
                .list_contacts(
                    &project.id,
                    false,
                    &Page {
                        limit: 100,
                        cursor: query.get("cursor").cloned(),
                    },
                )
                .await
        }
    };
    let contacts = match found {
        Ok(c) => c,
        Err(e) => return error_page(e.into()),
    };
    let mut body = format!(
        "<div class=\"card\"><h1>Contacts</h1>{}<form method=\"get\" action=\"/contacts\" class=\"row\">\
         <input type=\"hidden\" name=\"project\" value=\"{}\"><input name=\"email\" type=\"search\" placeholder=\"Search by email\" value=\"{}\" aria-label=\"Email\">\
         <button type=\"submit\">Search</button></form><table><thead><tr><th>Email</th><th>External id</th><th>Name</th><th>Subscribed</th><th>Updated</th></tr></thead><tbody>",
        project_links("/contacts", &project, &projects),
        escape(&project.id),
        escape(email.as_deref().unwrap_or(""))
    );
    for c in &contacts {
        let f = &c.fields;
        let name = [f.first_name.as_deref(), f.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            body,
            "<tr><td><a href=\"/contacts/{}?project={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.id),
            escape(&project.id),
            escape(f.email.as_deref().unwrap_or("—")),
            escape(f.external_id.as_deref().unwrap_or("")),
            escape(&name),
            if f.subscribed { "yes" } else { "no" },
            format_rfc3339(c.updated_at)
        );
    }
    if contacts.is_empty() {
        body.push_str("<tr><td colspan=\"5\" class=\"muted\">No contacts.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    render(&signed_in, "/contacts", "Contacts", &body)
}

pub async fn contact(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (signed_in, project, _) = match member_project(&state, &headers, query.get("project")).await
    {
        Ok(v) => v,
        Err(r) => return r,
    };
    let contact = match state
        .store
        .get_contact(&project.id, &ContactLookup::Id(id.clone()))
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => return error_page(ApiError::not_found("contact")),
        Err(e) => return error_page(e.into()),
    };
    let filter = EventFilter {
        contact_id: Some(id),
        ..Default::default()
    };
    let events = match state
        .store
        .list_events(
            &project.id,
            &filter,
            &Page {
                limit: 20,
                cursor: None,
            },
        )
        .await
    {
        Ok(e) => e,
        Err(e) => return error_page(e.into()),
    };
    let f = &contact.fields;
    let properties = serde_json::to_string_pretty(&f.properties).unwrap_or_default();
    let mut body = format!(
        "<div class=\"card\"><h1>{}</h1><p>External id: {} · subscribed: {} · created {}</p><h2>Properties</h2><pre>{}</pre><h2>Recent events</h2>",
        escape(
            f.email
                .as_deref()
                .or(f.external_id.as_deref())
                .unwrap_or("Contact")
        ),
        escape(f.external_id.as_deref().unwrap_or("—")),
        if f.subscribed { "yes" } else { "no" },
        format_rfc3339(contact.created_at),
        escape(&properties)
    );
    body.push_str(&events_table(&events));
    body.push_str("</div>");
    render(&signed_in, "/contacts", "Contact", &body)
}

fn events_table(events: &[keyflow_store::Event]) -> String {
    let mut out = String::from(
        "<table><thead><tr><th>Name</th><th>Time</th><th>Contact</th><th>Properties</th></tr></thead><tbody>",
    );
    for e in events {
        let props = serde_json::Value::Object(e.properties.clone()).to_string();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&e.name),
            format_rfc3339(e.timestamp),
            escape(
                e.contact_id
                    .as_deref()
                    .or(e.anonymous_id.as_deref())
                    .unwrap_or("")
            ),
            escape(&props)
        );
    }
    if events.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"muted\">No events.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

pub async fn events(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (signed_in, project, projects) =
        match member_project(&state, &headers, query.get("project")).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    let name = query
        .get("name")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    let filter = EventFilter {
        name: name
            .as_deref()
            .map(keyflow_core::events::normalise_event_name),
        ..Default::default()
    };
    let events = match state
        .store
        .list_events(
            &project.id,
            &filter,
            &Page {
                limit: 100,
                cursor: None,
            },
        )
        .await
    {
        Ok(e) => e,
        Err(e) => return error_page(e.into()),
    };
    let body = format!(
        "<div class=\"card\"><h1>Events</h1>{}<form method=\"get\" action=\"/events\" class=\"row\">\
         <input type=\"hidden\" name=\"project\" value=\"{}\"><input name=\"name\" type=\"search\" placeholder=\"Event name\" value=\"{}\" aria-label=\"Event name\">\
         <button type=\"submit\">Filter</button></form>{}</div>",
        project_links("/events", &project, &projects),
        escape(&project.id),
        escape(name.as_deref().unwrap_or("")),
        events_table(&events)
    );
    render(&signed_in, "/events", "Events", &body)
}

//! Contacts and Events pages (every member may browse data).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use keyflow_core::contacts::ContactLookup;
use keyflow_store::{Contact, Event, EventFilter, Page, Project};

use super::extract::Viewer;
use super::page::{Chrome, PageResult, render};
use crate::error::ApiError;
use crate::state::SharedState;

/// A contact as a row of the list.
struct ContactRow {
    id: String,
    email: String,
    external_id: String,
    name: String,
    subscribed: &'static str,
    updated: String,
}

impl From<&Contact> for ContactRow {
    fn from(c: &Contact) -> Self {
        let f = &c.fields;
        let name = [f.first_name.as_deref(), f.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            id: c.id.clone(),
            email: f.email.clone().unwrap_or_else(|| "—".into()),
            external_id: f.external_id.clone().unwrap_or_default(),
            name,
            subscribed: yes_no(f.subscribed),
            updated: super::page::shown_time(c.updated_at),
        }
    }
}

/// An event as a row of an events table.
struct EventRow {
    name: String,
    time: String,
    who: String,
    properties: String,
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> Self {
        Self {
            name: e.name.clone(),
            time: super::page::shown_time(e.timestamp),
            who: e
                .contact_id
                .clone()
                .or_else(|| e.anonymous_id.clone())
                .unwrap_or_default(),
            properties: serde_json::Value::Object(e.properties.clone()).to_string(),
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[derive(Template)]
#[template(path = "contacts.html")]
struct ContactsPage<'a> {
    chrome: Chrome,
    project: &'a Project,
    projects: &'a [Project],
    email: &'a str,
    contacts: Vec<ContactRow>,
}

pub async fn contacts(
    viewer: Viewer,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let project = &viewer.project;
    let email = query.get("email").map(|e| e.trim()).unwrap_or("");
    let found: Vec<Contact> = if email.is_empty() {
        let page = Page {
            limit: 100,
            cursor: query.get("cursor").cloned(),
        };
        state.store.list_contacts(&project.id, false, &page).await?
    } else {
        let lookup = ContactLookup::Email(email.to_string());
        let one = state.store.get_contact(&project.id, &lookup).await?;
        one.into_iter().collect()
    };
    let page = ContactsPage {
        chrome: viewer.chrome("/contacts", "Contacts"),
        project,
        projects: &viewer.projects,
        email,
        contacts: found.iter().map(ContactRow::from).collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "contact.html")]
struct ContactPage {
    chrome: Chrome,
    heading: String,
    external_id: String,
    subscribed: &'static str,
    created: String,
    properties: String,
    events: Vec<EventRow>,
}

pub async fn contact(
    viewer: Viewer,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> PageResult {
    let project_id = &viewer.project.id;
    let lookup = ContactLookup::Id(id.clone());
    let contact = state
        .store
        .get_contact(project_id, &lookup)
        .await?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    let filter = EventFilter {
        contact_id: Some(id),
        ..Default::default()
    };
    let recent = Page {
        limit: 20,
        cursor: None,
    };
    let events = state
        .store
        .list_events(project_id, &filter, &recent)
        .await?;
    let f = &contact.fields;
    let page = ContactPage {
        chrome: viewer.chrome("/contacts", "Contact"),
        heading: f
            .email
            .clone()
            .or_else(|| f.external_id.clone())
            .unwrap_or_else(|| "Contact".into()),
        external_id: f.external_id.clone().unwrap_or_else(|| "—".into()),
        subscribed: yes_no(f.subscribed),
        created: super::page::shown_time(contact.created_at),
        properties: serde_json::to_string_pretty(&f.properties).unwrap_or_default(),
        events: events.iter().map(EventRow::from).collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage<'a> {
    chrome: Chrome,
    project: &'a Project,
    projects: &'a [Project],
    name: &'a str,
    events: Vec<EventRow>,
}

pub async fn events(
    viewer: Viewer,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let name = query.get("name").map(|n| n.trim()).unwrap_or("");
    let filter = EventFilter {
        name: (!name.is_empty()).then(|| keyflow_core::events::normalise_event_name(name)),
        ..Default::default()
    };
    let newest = Page {
        limit: 100,
        cursor: None,
    };
    let events = state
        .store
        .list_events(&viewer.project.id, &filter, &newest)
        .await?;
    let page = EventsPage {
        chrome: viewer.chrome("/events", "Events"),
        project: &viewer.project,
        projects: &viewer.projects,
        name,
        events: events.iter().map(EventRow::from).collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

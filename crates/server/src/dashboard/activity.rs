//! `/activity`: the activity log of one project (and its workspace), newest
//! first, filtered by action and actor.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use keyflow_store::{Actor, AuditAction, AuditEntry, Page, Project};

use super::extract::Viewer;
use super::page::{Chrome, PageResult, render};
use crate::state::SharedState;

/// One option of a `<select>`.
pub struct Choice {
    pub value: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage<'a> {
    chrome: Chrome,
    project: &'a Project,
    projects: &'a [Project],
    actions: Vec<Choice>,
    actor: &'a str,
    /// An action or actor filter is applied (an empty page then says so).
    filtered: bool,
    entries: Vec<AuditEntry>,
    older: Option<String>,
}

impl ActivityPage<'_> {
    fn time(&self, at: i64) -> String {
        super::page::shown_time(at)
    }
}

const PAGE_SIZE: u32 = 50;

pub async fn page(
    viewer: Viewer,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let page_query = Page {
        limit: PAGE_SIZE,
        cursor: query.get("cursor").cloned(),
    };
    let filter = crate::api::audit::audit_filter(&query);
    let entries = state
        .store
        .search_audit(
            viewer.workspace_id(),
            &viewer.project.id,
            &filter,
            &page_query,
        )
        .await?;
    let older = match entries.last() {
        Some(last) if entries.len() == PAGE_SIZE as usize => Some(format!(
            "/activity?project={}&action={}&actor={}&cursor={}",
            url_encode(&viewer.project.id),
            url_encode(filter.action.as_deref().unwrap_or("")),
            url_encode(filter.actor.as_deref().unwrap_or("")),
            url_encode(&last.id)
        )),
        _ => None,
    };
    let actions = AuditAction::ALL
        .map(AuditAction::as_str)
        .into_iter()
        .map(|value| Choice {
            value,
            selected: filter.action.as_deref() == Some(value),
        })
        .collect();
    let page = ActivityPage {
        chrome: viewer.chrome("/activity", "Activity"),
        project: &viewer.project,
        projects: &viewer.projects,
        actions,
        actor: filter.actor.as_deref().unwrap_or(""),
        filtered: filter.action.is_some() || filter.actor.is_some(),
        entries,
        older,
    };
    Ok(render(StatusCode::OK, &page))
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

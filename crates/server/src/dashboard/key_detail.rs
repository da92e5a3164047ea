//! One API key: its usage over 30 days (an SVG chart drawn on the server:
//! no script, no external library) and its settings form.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::KeyType;
use keyflow_core::key_settings::{PatchKeyRequest, apply_patch};
use keyflow_core::restrictions::expiry_is_final;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::{ApiKey, DailyUsage};

use super::extract::{Manager, ManagerForm, Viewer};
use super::form_errors::FormErrors;
use super::keys::{
    IpRow, access_summary, expiry_from_form, ip_rows_from_form, key_of, list_field,
    operator_authority, row_count,
};
use super::page::{Chrome, PageResult, relative_time, render};
use crate::error::ApiError;
use crate::operations::keys as key_ops;
use crate::state::SharedState;

const DAY_MS: i64 = 86_400_000;
const CHART_DAYS: i64 = 30;

/// The usage chart: one bar per day, errors and rate-limited overlaid.
pub struct Chart {
    pub width: i64,
    pub height: i64,
    pub bar: i64,
    pub max: i64,
    pub bars: Vec<Bar>,
}

pub struct Bar {
    pub x: i64,
    pub date: String,
    pub requests: i64,
    pub errors: i64,
    pub rate_limited: i64,
    /// (y, height, fill) of the requests, errors and rate-limited rectangles.
    pub rects: [(i64, i64, &'static str); 3],
}

impl Chart {
    pub fn of(days: &[DailyUsage], today: i64) -> Self {
        let (bar, gap, height) = (18, 4, 120);
        let by_day: HashMap<i64, DailyUsage> = days.iter().map(|d| (d.day, *d)).collect();
        let max = days.iter().map(|d| d.requests).max().unwrap_or(0).max(1);
        let scale = |n: i64| n * height / max;
        let rect = |n: i64, fill| (height - scale(n), scale(n), fill);
        let bars = (0..CHART_DAYS)
            .map(|i| {
                let day = today - (CHART_DAYS - 1 - i);
                let u = by_day.get(&day).copied().unwrap_or_default();
                let date = format_rfc3339(day * DAY_MS);
                Bar {
                    x: i * (bar + gap),
                    date: date.get(..10).unwrap_or(&date).to_string(),
                    requests: u.requests,
                    errors: u.errors,
                    rate_limited: u.rate_limited,
                    rects: [
                        rect(u.requests, "#bac8ff"),
                        rect(u.errors, "#ff8787"),
                        rect(u.rate_limited, "#ffc078"),
                    ],
                }
            })
            .collect();
        Self {
            width: CHART_DAYS * (bar + gap),
            height,
            bar,
            max,
            bars,
        }
    }
}

#[derive(Template)]
#[template(path = "key_detail.html")]
struct DetailPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    id: &'a str,
    name: &'a str,
    key_type: &'static str,
    prefix: &'a str,
    access: String,
    created: String,
    last_used: String,
    last_ip: String,
    chart: Chart,
    expiry_final: bool,
    expires_at: String,
    rows: Vec<IpRow>,
    allowed_events: String,
    /// Client keys only.
    allowed_origins: Option<String>,
    /// The name field's value: the stored name, or what a refused form held.
    form_name: String,
    errors: FormErrors,
    state: super::keys::KeyState,
}

/// A settings form that was refused: what it held, and why.
struct Refused<'a> {
    values: &'a HashMap<String, String>,
    errors: FormErrors,
}

fn detail_page(
    state: &SharedState,
    viewer: &Viewer,
    status: StatusCode,
    key: &ApiKey,
    usage: &[DailyUsage],
    refused: Option<Refused<'_>>,
) -> Response {
    let s = &key.settings;
    // A refused form shows what was typed, not what is stored.
    let typed = |name: &str| {
        refused
            .as_ref()
            .map(|r| r.values.get(name).cloned().unwrap_or_default())
    };
    let now = state.now_ms();
    let pending = state.usage.pending(&key.id);
    let last_at = key.last_used_at.max(pending.as_ref().map(|p| p.0));
    let last_ip = pending
        .and_then(|p| p.1)
        .map(|ip| ip.to_string())
        .or_else(|| key.last_used_ip.clone());
    let page = DetailPage {
        chrome: viewer.chrome("/keys", &s.name),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        id: &key.id,
        name: &s.name,
        key_type: key.key_type.as_str(),
        prefix: &key.prefix,
        access: access_summary(key.key_type, key.scopes),
        created: super::page::shown_time(key.created_at),
        last_used: last_at.map_or_else(|| "never".into(), |t| relative_time(t, now)),
        last_ip: last_ip.unwrap_or_else(|| "—".into()),
        chart: Chart::of(usage, now.div_euclid(DAY_MS)),
        expiry_final: expiry_is_final(s, key.rolled_at, now),
        // datetime-local wants minutes, no zone (the form says UTC).
        expires_at: typed("expires_at").unwrap_or_else(|| {
            s.expires_at
                .map(|t| format_rfc3339(t).get(..16).unwrap_or("").to_string())
                .unwrap_or_default()
        }),
        rows: match &refused {
            Some(r) => IpRow::from_form(r.values, row_count(r.values).max(1)),
            None => IpRow::with_empty_row(&s.ip_allowlist),
        },
        allowed_events: typed("allowed_events").unwrap_or_else(|| {
            s.allowed_events
                .as_ref()
                .map(|e| e.join(", "))
                .unwrap_or_default()
        }),
        allowed_origins: (key.key_type == KeyType::Client).then(|| {
            typed("allowed_origins").unwrap_or_else(|| {
                s.allowed_origins
                    .as_ref()
                    .map(|o| o.join(", "))
                    .unwrap_or_default()
            })
        }),
        form_name: typed("name").unwrap_or_else(|| s.name.clone()),
        errors: refused.map(|r| r.errors).unwrap_or_default(),
        state: super::keys::key_state(key, now),
    };
    render(status, &page)
}

pub async fn detail(
    Manager(viewer): Manager,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> PageResult {
    // Revoked keys too: read-only, so their history stays visible.
    let key = state
        .store
        .get_api_key(&viewer.project.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    let usage = usage_of(&state, &key).await?;
    Ok(detail_page(
        &state,
        &viewer,
        StatusCode::OK,
        &key,
        &usage,
        None,
    ))
}

/// Stored daily totals plus what is still counted in memory.
async fn usage_of(state: &SharedState, key: &ApiKey) -> Result<Vec<DailyUsage>, ApiError> {
    let today = state.now_ms().div_euclid(DAY_MS);
    let mut usage = state
        .store
        .daily_usage(&key.id, today - (CHART_DAYS - 1))
        .await?;
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

pub async fn edit(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    form: ManagerForm,
) -> PageResult {
    let (viewer, values) = (&form.viewer, &form.values);
    let key = key_of(&state, viewer, &id).await?;
    let now = state.now_ms();
    let patch = PatchKeyRequest {
        name: Some(values.get("name").cloned()),
        // A final expiry is not the form's to change (its field is disabled).
        expires_at: (!expiry_is_final(&key.settings, key.rolled_at, now))
            .then(|| expiry_from_form(values)),
        ip_allowlist: Some(Some(ip_rows_from_form(values))),
        allowed_events: list_field(values, "allowed_events"),
        allowed_origins: if key.key_type == KeyType::Client {
            list_field(values, "allowed_origins")
        } else {
            None
        },
        ..Default::default()
    };
    let settings = match apply_patch(&key.settings, key.key_type, &patch, now) {
        Ok(s) => s,
        Err(fields) => {
            let usage = usage_of(&state, &key).await.unwrap_or_default();
            let refused = Refused {
                values,
                errors: FormErrors::from_fields(&fields),
            };
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            let page = detail_page(&state, viewer, status, &key, &usage, Some(refused));
            return Ok(page);
        }
    };
    let authority = operator_authority(&state, viewer).await?;
    key_ops::update_key(
        &form.ctx(&state),
        viewer.workspace_id(),
        &key,
        &settings,
        authority,
    )
    .await?;
    let to = format!("/keys/{}?project={}&done=saved", key.id, viewer.project.id);
    Ok(Redirect::to(&to).into_response())
}

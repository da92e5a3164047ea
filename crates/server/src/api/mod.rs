//! The `/v1` API: one module per resource, plus the JSON shapes they share.

pub mod audit;
pub mod browser;
pub mod contacts;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod metrics_access;
pub mod metrics_credential;
pub mod metrics_query;
pub mod openapi;
pub mod requests;
pub mod routes;
pub mod segment;
pub mod subscribers;
pub mod views;
pub mod workflow_runs;
pub mod workflows;

use std::collections::HashMap;

use keyflow_store::Page;

use crate::error::{ApiError, ApiResult};

/// Marks a response that carries a secret (a new key, a client secret) as
/// never to be stored by caches or proxies.
pub fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `?limit=` (1–1000, default 100) and `?cursor=`.
pub fn page_from_query(query: &HashMap<String, String>) -> ApiResult<Page> {
    let limit = match query.get("limit") {
        None => 100,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    "must be an integer from 1 to 1000",
                ));
            }
        },
    };
    let cursor = query.get("cursor").filter(|c| !c.is_empty()).cloned();
    if cursor.as_ref().is_some_and(|c| c.len() > 64) {
        return Err(ApiError::field(
            "cursor",
            "is not a cursor this API returned",
        ));
    }
    Ok(Page { limit, cursor })
}

/// One page of a list as the answer: each row rendered, and the last row's
/// id as `next_cursor` when the page is full (there may be more).
pub fn page_response<'r, T, V: serde::Serialize>(
    rows: &'r [T],
    page: &Page,
    id: impl Fn(&T) -> &str,
    render: impl Fn(&'r T) -> V,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    axum::Json(list_page(rows, page, id, render)).into_response()
}

/// One page of a list: each row rendered, and the last row's id as
/// `next_cursor` when the page is full (there may be more).
pub fn list_page<'r, T, V>(
    rows: &'r [T],
    page: &Page,
    id: impl Fn(&T) -> &str,
    render: impl Fn(&'r T) -> V,
) -> views::ListPage<V> {
    let next_cursor = rows
        .last()
        .filter(|_| rows.len() as u32 == page.limit)
        .map(|last| id(last).to_string());
    views::ListPage {
        data: rows.iter().map(render).collect(),
        next_cursor,
    }
}

/// `?name=` as an RFC 3339 time, if given.
pub fn time_query(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    query
        .get(name)
        .map(|t| {
            keyflow_core::timefmt::parse_rfc3339(t).ok_or_else(|| {
                ApiError::field(name, "must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z")
            })
        })
        .transpose()
}

pub fn bool_query(query: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match query.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(ApiError::field(name, "must be true or false")),
    }
}

//! Tenant SQL over the Metrics API (SPEC §4): `POST /v1/metrics/query` and
//! `GET /v1/metrics/schema`, behind the same access token as the metrics.
//!
//! The isolation is the store's (`keyflow_store::tenant_sql`: a parser
//! allow-list, then each engine's own). This module adds what protects the
//! instance and the other tenants: at most two queries at once per
//! project and a global cap, answers cached per (project, normal form of
//! the query) for the project's TTL, and errors in SPEC's shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keyflow_core::ErrorCode;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::tenant_sql::{self, Limits, QueryFailure, QueryOutput};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::metrics_access::MetricsCaller;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

/// Queries one project may run at once.
pub const QUERIES_PER_PROJECT: usize = 2;

/// How long past its limit a query's client waits for the answer; the
/// store cancels at the limit, then once more a second later.
const ANSWER_GRACE: Duration = Duration::from_millis(2_000);

/// Who is running queries now: a global cap (so tenant SQL never takes every
/// core from ingest), [`QUERIES_PER_PROJECT`] per project, and half the
/// global cap (at least [`QUERIES_PER_PROJECT`]) per workspace, so neither
/// one project nor a workspace of many projects takes every global slot.
pub struct QuerySlots {
    global: Arc<tokio::sync::Semaphore>,
    per_workspace: usize,
    running: Arc<Mutex<Running>>,
}

/// Queries running now, by project and by workspace.
#[derive(Default)]
struct Running {
    projects: HashMap<String, usize>,
    workspaces: HashMap<String, usize>,
}

fn release(counts: &mut HashMap<String, usize>, id: &str) {
    if let Some(n) = counts.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            counts.remove(id);
        }
    }
}

/// A slot held for one running query, until the query's work is over (not
/// merely until its client went away).
struct Slot {
    running: Arc<Mutex<Running>>,
    workspace_id: String,
    project_id: String,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut running.projects, &self.project_id);
        release(&mut running.workspaces, &self.workspace_id);
    }
}

impl QuerySlots {
    pub fn new(global: usize) -> Self {
        let global = global.max(1);
        Self {
            global: Arc::new(tokio::sync::Semaphore::new(global)),
            per_workspace: (global / 2).max(QUERIES_PER_PROJECT),
            running: Arc::default(),
        }
    }

    /// Queries one workspace's projects may run at once, together.
    pub fn per_workspace(&self) -> usize {
        self.per_workspace
    }

    /// A slot now, or the refusal: 429 when the project or its workspace
    /// already runs its share, 503 when the instance runs all it may.
    fn take(&self, workspace_id: &str, project_id: &str) -> ApiResult<Slot> {
        let retry = |e: ApiError| e.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let project = running.projects.get(project_id).copied().unwrap_or(0);
        if project >= QUERIES_PER_PROJECT {
            return Err(retry(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "This project already runs {QUERIES_PER_PROJECT} queries; send the next when one has finished."
                ),
            )));
        }
        let workspace = running.workspaces.get(workspace_id).copied().unwrap_or(0);
        if workspace >= self.per_workspace {
            return Err(retry(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "The projects of this workspace already run {} queries; send the next when one has finished.",
                    self.per_workspace
                ),
            )));
        }
        let Ok(global) = self.global.clone().try_acquire_owned() else {
            return Err(retry(ApiError::new(
                ErrorCode::Unavailable,
                "This instance runs as many queries as it may; retry shortly.",
            )));
        };
        running.projects.insert(project_id.to_string(), project + 1);
        running
            .workspaces
            .insert(workspace_id.to_string(), workspace + 1);
        Ok(Slot {
            running: self.running.clone(),
            workspace_id: workspace_id.to_string(),
            project_id: project_id.to_string(),
            _global: global,
        })
    }
}

/// A computed answer, kept for later identical queries.
#[derive(Debug)]
pub struct CachedAnswer {
    output: QueryOutput,
    /// `columns` and `rows` as JSON, written once and shared by every
    /// answer sent from this entry (a client that reads slowly holds a
    /// reference, not a copy).
    columns_json: bytes::Bytes,
    rows_json: bytes::Bytes,
    computed_at: i64,
    valid_until: i64,
    weight: u32,
}

impl CachedAnswer {
    pub fn output(&self) -> &QueryOutput {
        &self.output
    }

    pub fn computed_at(&self) -> i64 {
        self.computed_at
    }
}

impl super::metrics::Cached for CachedAnswer {
    fn computed_at(&self) -> i64 {
        self.computed_at
    }
    fn valid_until(&self) -> i64 {
        self.valid_until
    }
    fn weight(&self) -> u32 {
        self.weight
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One `SELECT` (or `WITH … SELECT`) over `events` and `contacts`, at most 100 KB.
    #[schema(min_length = 1, max_length = 102_400)]
    sql: String,
}

/// The answer's shape, for the document (the body is written by
/// [`answer_body`] around the cached entry's shared JSON, in this order).
#[derive(Serialize, ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct QueryView {
    /// The column names, in order (repeats kept).
    columns: Vec<String>,
    /// Each row's values in column order, as JSON values.
    #[schema(value_type = Vec<Vec<Object>>)]
    rows: Vec<Vec<Value>>,
    row_count: usize,
    /// The row limit (10 000) or the size limit cut the answer short.
    truncated: bool,
    /// Whether this answer comes from the cache (then `Age` says how old it is).
    cached: bool,
    computed_at: String,
    /// Time spent answering this request, in milliseconds.
    elapsed_ms: u64,
}

/// The limits queries run under on this instance.
pub fn limits(state: &SharedState) -> Limits {
    Limits {
        timeout: Duration::from_millis(state.config.query_timeout_ms),
        max_memory_bytes: state.config.query_max_memory_bytes,
        max_wal_bytes: state.config.query_wal_limit_bytes,
        ..Limits::default()
    }
}

#[utoipa::path(
    post,
    path = "/v1/metrics/query",
    tag = "metrics",
    summary = "Run a SQL query over the project's events and contacts",
    description = "One `SELECT` or `WITH … SELECT` in the store's dialect (`GET /v1/metrics/schema` \
                   says which, and lists the columns, functions and limits). The query sees two \
                   relations, `events` and `contacts`, holding this project's rows only, and can \
                   read nothing else and write nothing. Stopped after the time limit (default \
                   5 s); at most 10 000 rows (`truncated`). A refused query is a 422 that says \
                   what was refused and where (`details.position`). Answers are cached per \
                   project and normalised query for the project's cache TTL (`Age` on a cached \
                   answer). At most two queries run at once per project, and half the instance's cap (at least two) per workspace (429 past either).",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "The rows", body = QueryView),
        (status = 401, description = "Missing, invalid, rotated-away or expired access token", body = crate::error::ErrorBody),
        (status = 403, description = "Plan or IP allow-list refused", body = crate::error::ErrorBody),
        super::openapi::Invalid,
        (status = 429, description = "Rate limited, or the project (two) or its workspace already running all the queries it may (see Retry-After)", body = crate::error::ErrorBody),
        (status = 503, description = "Queries cannot run on this store as configured (the message says why), or the instance runs all the queries it may", body = crate::error::ErrorBody),
    ),
    security(("metrics_token" = []))
)]
pub async fn run_query(
    State(state): State<SharedState>,
    axum::Extension(caller): axum::Extension<MetricsCaller>,
    crate::json::JsonBody(request): crate::json::JsonBody<QueryRequest>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let now = state.now_ms();
    let (entry, cached) = answer(
        &state,
        &caller.credential.workspace_id,
        caller.project_id(),
        &request.sql,
    )
    .await?;
    let body = answer_body(&entry, cached, super::metrics::elapsed_ms(started));
    Ok(super::metrics::with_age(
        body,
        cached,
        now,
        entry.computed_at,
    ))
}

/// `QueryView` as JSON: its own fields around the entry's shared
/// `columns` and `rows`.
fn answer_body(entry: &CachedAnswer, cached: bool, elapsed_ms: u64) -> Response {
    let tail = format!(
        ",\"row_count\":{},\"truncated\":{},\"cached\":{cached},\"computed_at\":\"{}\",\"elapsed_ms\":{elapsed_ms}}}",
        entry.output.rows.len(),
        entry.output.truncated,
        format_rfc3339(entry.computed_at),
    );
    let chunks: [Result<bytes::Bytes, std::convert::Infallible>; 5] = [
        Ok(bytes::Bytes::from_static(b"{\"columns\":")),
        Ok(entry.columns_json.clone()),
        Ok(bytes::Bytes::from_static(b",\"rows\":")),
        Ok(entry.rows_json.clone()),
        Ok(bytes::Bytes::from(tail)),
    ];
    let mut response =
        axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to `sql` over `project_id`'s rows, from the cache or
/// computed now (`true`: from the cache). Shared by the API and the
/// dashboard's console.
pub async fn answer(
    state: &SharedState,
    workspace_id: &str,
    project_id: &str,
    sql: &str,
) -> ApiResult<(Arc<CachedAnswer>, bool)> {
    let now = state.now_ms();
    // The same text again is answered from the cache without a check or a
    // slot (a dashboard polling while the project's two slots are busy).
    let exact_key = format!("{project_id}|exact|{sql}");
    if let Some(entry) = state.query_cache.get(&exact_key)
        && entry.valid_until > now
    {
        return Ok((entry, true));
    }
    // The check counts as the query's work: a project floods no more checks
    // than it may run queries (a 100 KB check can take a good part of a
    // second of CPU).
    let slot = state.query_slots.take(workspace_id, project_id)?;
    // Parsing is CPU work: off the runtime's threads.
    let (text, dialect) = (sql.to_string(), state.store.tenant_dialect());
    let checked = tokio::task::spawn_blocking(move || tenant_sql::check(&text, dialect))
        .await
        .map_err(|e| ApiError::internal("tenant query check", &e))?
        .map_err(refusal)?;
    let cache_key = format!("{project_id}|normal|{}", checked.normalized());
    if let Some(entry) = state.query_cache.get(&cache_key)
        && entry.valid_until > now
    {
        state.query_cache.insert(exact_key, entry.clone());
        return Ok((entry, true));
    }
    // On its own task: a client that hangs up does not stop the query's
    // clean-up, nor free its slot before the work is over.
    let (store, project, query, limits) = (
        state.store.clone(),
        project_id.to_string(),
        checked,
        limits(state),
    );
    // The slot is held until the store's work is over, which may be past
    // the answer: work PostgreSQL cannot cancel keeps its reader connection
    // until it ends, and counts against the project's two queries meanwhile.
    let timeout = limits.timeout;
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _slot = slot;
        let _ = answer.send(store.run_tenant_query(&project, &query, limits).await);
    });
    let output = match tokio::time::timeout(timeout + ANSWER_GRACE, answered).await {
        Ok(Ok(result)) => result.map_err(refusal)?,
        Ok(Err(_)) => {
            return Err(ApiError::internal(
                "tenant query task",
                &"ended without an answer",
            ));
        }
        Err(_) => return Err(refusal(tenant_sql::QueryFailure::TimedOut(timeout))),
    };
    let ttl_minutes = state
        .store
        .project_settings(project_id)
        .await?
        .metrics_cache_ttl_minutes;
    let columns_json = serde_json::to_vec(&output.columns)
        .map_err(|e| ApiError::internal("answer columns", &e))?;
    let rows_json =
        serde_json::to_vec(&output.rows).map_err(|e| ApiError::internal("answer rows", &e))?;
    let (columns_json, rows_json) = (
        bytes::Bytes::from(columns_json),
        bytes::Bytes::from(rows_json),
    );
    let weight = u32::try_from(
        output
            .rows
            .iter()
            .flatten()
            .map(tenant_sql::json_size)
            .sum::<usize>()
            + rows_json.len(),
    )
    .unwrap_or(u32::MAX);
    let entry = Arc::new(CachedAnswer {
        output,
        columns_json,
        rows_json,
        computed_at: now,
        valid_until: now + ttl_minutes * 60_000,
        weight,
    });
    state.query_cache.insert(cache_key, entry.clone());
    state.query_cache.insert(exact_key, entry.clone());
    Ok((entry, false))
}

/// A query's failure in SPEC's error shape: 422 for what the query did
/// (with `details.reason`: `refused`, `timeout` or `error`), 503 when the
/// store cannot run queries.
pub fn refusal(failure: QueryFailure) -> ApiError {
    let invalid = |reason: &str, message: String, position: Option<tenant_sql::Position>| {
        let mut details = json!({
            "reason": reason,
            "fields": [{"field": "sql", "message": message}],
        });
        if let Some(p) = position {
            details["position"] = json!({"line": p.line, "column": p.column});
        }
        ApiError::new(
            ErrorCode::ValidationFailed,
            format!("The query was not run: {message}."),
        )
        .with_details(details)
    };
    match failure {
        QueryFailure::Refused { reason, position } => invalid("refused", reason, position),
        QueryFailure::TimedOut(limit) => invalid(
            "timeout",
            format!(
                "it ran for longer than the {} s limit and was stopped",
                limit.as_secs_f64()
            ),
            None,
        ),
        QueryFailure::OutOfMemory(limit) => invalid(
            "memory",
            format!(
                "it needed more than the {} MiB of memory a query may use and was stopped",
                limit / (1024 * 1024)
            ),
            None,
        ),
        QueryFailure::Failed(message) => invalid("error", message, None),
        QueryFailure::Unavailable(message) => ApiError::new(ErrorCode::Unavailable, message)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("30")),
        QueryFailure::Store(e) => e.into(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct SchemaColumn {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub description: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct SchemaRelation {
    pub name: &'static str,
    pub columns: Vec<SchemaColumn>,
}

#[derive(Serialize, ToSchema)]
pub struct SchemaLimits {
    pub timeout_ms: u64,
    pub max_rows: usize,
    pub max_result_bytes: usize,
    pub max_sql_bytes: usize,
    pub max_columns: usize,
    /// The largest text or JSON value a query may build (SQLite 100 000,
    /// PostgreSQL 262 144 bytes); numbers on PostgreSQL: operands of at
    /// most 4 KiB.
    pub max_value_bytes: usize,
    /// Memory one query may use (SQLite); `null` on PostgreSQL, whose
    /// sorts and hashes spill to temporary files of at most 1 GB.
    pub max_memory_bytes: Option<usize>,
    pub concurrent_queries_per_project: usize,
    /// Queries the projects of one workspace may run at once, together.
    pub concurrent_queries_per_workspace: usize,
}

#[derive(Serialize, ToSchema)]
pub struct SchemaView {
    /// `sqlite` or `postgresql`: the store's own dialect.
    pub dialect: &'static str,
    pub relations: Vec<SchemaRelation>,
    /// The functions a query may call.
    pub functions: Vec<&'static str>,
    pub limits: SchemaLimits,
}

#[utoipa::path(
    get,
    path = "/v1/metrics/schema",
    tag = "metrics",
    summary = "What a SQL query may use",
    description = "The dialect, the two relations with their columns and types, the functions \
                   allowed and the limits (a query cannot read the catalogues).",
    responses(
        (status = 200, description = "The schema", body = SchemaView),
        (status = 401, description = "Missing, invalid, rotated-away or expired access token", body = crate::error::ErrorBody),
        (status = 403, description = "Plan or IP allow-list refused", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = crate::error::ErrorBody),
    ),
    security(("metrics_token" = []))
)]
pub async fn get_schema(
    State(state): State<SharedState>,
    axum::Extension(_caller): axum::Extension<MetricsCaller>,
) -> Json<SchemaView> {
    Json(schema(&state))
}

/// The schema as the API and the dashboard show it.
pub fn schema(state: &SharedState) -> SchemaView {
    let dialect = state.store.tenant_dialect();
    let limits = limits(state);
    SchemaView {
        dialect: dialect.as_str(),
        relations: tenant_sql::RELATIONS
            .iter()
            .map(|(name, columns)| SchemaRelation {
                name,
                columns: columns
                    .iter()
                    .map(|c| SchemaColumn {
                        name: c.name,
                        type_name: match dialect {
                            tenant_sql::Dialect::Sqlite => c.sqlite_type,
                            tenant_sql::Dialect::Postgres => c.postgres_type,
                        },
                        description: c.about,
                    })
                    .collect(),
            })
            .collect(),
        functions: dialect.functions(),
        limits: SchemaLimits {
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            max_rows: limits.max_rows,
            max_result_bytes: limits.max_bytes,
            max_sql_bytes: tenant_sql::MAX_SQL_BYTES,
            max_columns: tenant_sql::MAX_COLUMNS,
            max_value_bytes: dialect.max_value_bytes(),
            max_memory_bytes: (dialect == tenant_sql::Dialect::Sqlite)
                .then_some(limits.max_memory_bytes),
            concurrent_queries_per_project: QUERIES_PER_PROJECT,
            concurrent_queries_per_workspace: state.query_slots.per_workspace(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_body_is_the_documented_shape() {
        let output = QueryOutput {
            columns: vec!["name".into(), "n".into()],
            rows: vec![
                vec![json!("a\u{1}\"b"), json!(2)],
                vec![Value::Null, json!(1.5)],
            ],
            truncated: true,
        };
        let entry = CachedAnswer {
            columns_json: serde_json::to_vec(&output.columns).unwrap().into(),
            rows_json: serde_json::to_vec(&output.rows).unwrap().into(),
            output,
            computed_at: 1_700_000_000_000,
            valid_until: 0,
            weight: 0,
        };
        let response = answer_body(&entry, true, 7);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let view = QueryView {
            columns: entry.output.columns.clone(),
            rows: entry.output.rows.clone(),
            row_count: 2,
            truncated: true,
            cached: true,
            computed_at: format_rfc3339(entry.computed_at),
            elapsed_ms: 7,
        };
        assert_eq!(body, serde_json::to_vec(&view).unwrap());
        // The size that is charged is the size that is sent.
        for value in entry.output.rows.iter().flatten() {
            assert_eq!(
                tenant_sql::json_size(value) - tenant_sql::VALUE_OVERHEAD,
                serde_json::to_string(value).unwrap().len()
            );
        }
    }
}

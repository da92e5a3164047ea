//! The router (which doubles as the index of every endpoint), the
//! request-context middleware, and the serve loop with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::api::browser;
use crate::error::{ApiError, REQUEST_ID, RenderedError};
use crate::state::{AppState, SharedState};

pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

pub fn router(state: SharedState) -> Router {
    let timeout = Duration::from_secs(state.config.request_timeout_secs.max(1));
    let api = api_routes(&state);
    let openapi = crate::api::openapi::serve(&api.doc);
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    if state.config.metrics_listen.is_none() {
        // With its own listener, `/metrics` is served there only.
        router = router.route("/metrics", get(metrics));
    }
    router
        .route("/embed.js", get(browser::embed_js))
        .route("/openapi.json", get(openapi))
        .merge(api.router)
        .merge(crate::dashboard::router())
        .fallback(crate::dashboard::page::not_found)
        .layer(from_fn(browser::cors_preflight))
        // The 1 MiB limit applies to the decompressed body (SPEC §7): the
        // limit reads the stream the decompression layer produces, so a gzip
        // bomb stops at 1 MiB; the outer limit bounds the compressed bytes.
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(RequestDecompressionLayer::new().gzip(true).deflate(true))
        .layer(RequestBodyLimitLayer::new(2 * BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // Panics are caught inside the request context, so even their 500
        // carries X-Request-Id and is logged.
        .layer(from_fn(catch_panics_as_500))
        .layer(from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// The `/v1` API and, when an admin token is configured, `/admin/v1`. The
/// admin API is documented either way (it is part of the contract); without
/// a token every `/admin` path is 404, whatever the method.
fn api_routes(state: &SharedState) -> crate::api::routes::ApiRoutes {
    let admin = crate::admin::routes(state);
    let mut api = crate::api::routes::v1(state);
    if state.config.admin_token.is_some() {
        api = api.merge(admin);
    } else {
        api.doc.merge(admin.doc);
    }
    api
}

/// Assigns the request id, makes every error our JSON shape (also the
/// framework's 404/405/413/415/408), counts and logs the response.
async fn request_context(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let method = req.method().clone();
    let path = crate::redact::redact_keys(req.uri().path());
    // The route template, not the path: one series per endpoint.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched
        .as_ref()
        .map_or(crate::prometheus::UNMATCHED_ROUTE, MatchedPath::as_str);
    let started = Instant::now();
    let id_for_scope = request_id.clone();
    // Off by default (debug): with KEYFLOW_LOG=debug the store's spans nest
    // under the request they served.
    let span = tracing::debug_span!("request", request_id = %request_id);
    let mut response = REQUEST_ID
        .scope(
            id_for_scope.clone(),
            async move {
                if let Some(refused) = refuse_before_routing(&req) {
                    return refused.into_response();
                }
                let response = next.run(req).await;
                let status = response.status();
                if (status.is_client_error() || status.is_server_error())
                    && response.extensions().get::<RenderedError>().is_none()
                {
                    let mut normalised = ApiError::from_status(status).into_response();
                    for name in [header::ALLOW, header::RETRY_AFTER] {
                        if let Some(v) = response.headers().get(&name) {
                            normalised.headers_mut().insert(name, v.clone());
                        }
                    }
                    normalised
                } else {
                    response
                }
            }
            .instrument(span),
        )
        .await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .prometheus
        .count_request(route, &method, status, elapsed);
    // The path is logged, never headers or bodies: keys travel only in
    // headers. An authenticated request names its project and its key's
    // public prefix.
    let key = response
        .extensions()
        .get::<crate::auth::AuthenticatedKey>()
        .map(|k| k.0.clone());
    tracing::info!(
        request_id = %request_id,
        method = %method,
        path = %path,
        route = %route,
        status,
        elapsed_us = elapsed.as_micros() as u64,
        project_id = key.as_ref().map(|k| k.key.project_id.as_str()),
        key_prefix = key.as_ref().map(|k| k.key.prefix.as_str()),
        "request"
    );
    response
}

/// Header fields a request may carry, and their total size. Larger header
/// blocks (up to the HTTP parser's own bounds) get a 431 in our error shape.
pub const MAX_HEADER_COUNT: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Checks every request gets before routing: oversized header blocks (431),
/// and NUL characters, which PostgreSQL cannot store in text and which no
/// id, filter or cursor ever contains — refused in this one place so both
/// stores answer alike: a path with NUL is no resource (404), a query
/// parameter with NUL is invalid (422). Bodies are checked where JSON is
/// parsed ([`crate::json::parse_json`]).
fn refuse_before_routing(req: &Request) -> Option<ApiError> {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADER_COUNT || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            keyflow_core::ErrorCode::HeadersTooLarge,
            format!(
                "The request headers are too large (at most {MAX_HEADER_COUNT} fields and {} KiB).",
                MAX_HEADER_BYTES / 1024
            ),
        ));
    }
    let has_nul = |text: &str| {
        text.as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
    };
    if has_nul(req.uri().path()) {
        return Some(ApiError::from_status(StatusCode::NOT_FOUND));
    }
    if let Some(query) = req.uri().query()
        && has_nul(query)
    {
        let field = query
            .split('&')
            .find(|pair| has_nul(pair))
            .and_then(|pair| pair.split('=').next())
            .filter(|name| !has_nul(name))
            .unwrap_or("query");
        return Some(ApiError::field(
            field,
            "must not contain the NUL character (%00)",
        ));
    }
    None
}

/// A panic in a handler becomes a 500 in our shape instead of a dropped connection.
async fn catch_panics_as_500(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => ApiError::internal("handler panicked", &"panic").into_response(),
    }
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<SharedState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            let mut body =
                serde_json::json!({ "status": "ready", "database": state.store.backend_name() });
            // Redis down fails no request (SPEC §11): ready, and said so.
            if let Some(link) = &state.redis {
                body["redis"] = serde_json::json!(if link.is_connected() {
                    "connected"
                } else {
                    "unreachable"
                });
            }
            if let Some(limiter) = &state.redis_limiter {
                body["rate_limits"] = serde_json::json!(if limiter.is_reachable() {
                    "shared"
                } else {
                    "per_instance"
                });
            }
            Json(body).into_response()
        }
        _ => ApiError::new(
            keyflow_core::ErrorCode::Unavailable,
            "The database is not reachable.",
        )
        .into_response(),
    }
}

async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::prometheus::scrape(&state).await,
    )
        .into_response()
}

/// Flushes last-used data every `last_used_flush_secs` and prunes idle
/// rate-limit buckets; runs until the server stops.
async fn background_flush(state: SharedState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = Duration::from_secs(state.config.last_used_flush_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        flush_usage(&state).await;
        compact_rollups(&state).await;
        state.local_limiter.prune(state.now_ms());
        state.failed_auth.prune(state.now_ms());
        state.signin.prune(state.now_ms());
    }
}

/// Folds the Metrics API's roll-up slots of closed buckets (see
/// `MetricsStore::compact_rollups`), so reads stay at one row per bucket.
async fn compact_rollups(state: &AppState) {
    if let Err(e) = state.store.compact_rollups(state.now_ms()).await {
        tracing::warn!(error = %e, "could not fold the metrics roll-ups; will retry");
    }
}

pub async fn flush_usage(state: &AppState) {
    if let Err(e) = state.usage.flush(state.store.as_ref()).await {
        state
            .prometheus
            .usage_flush_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(error = %e, "could not flush last-used data; will retry");
    }
}

/// Runs the server on `listener` until `shutdown` resolves, then drains
/// in-flight requests, flushes last-used data and returns.
pub async fn launch_with_listener(
    state: SharedState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let redis = state
        .redis
        .clone()
        .map(|link| tokio::spawn(link.run(state.cache.clone(), stop_rx.clone())));
    let redis_limits = state
        .redis_limiter
        .clone()
        .map(|limiter| tokio::spawn(limiter.maintain(stop_rx.clone())));
    let metrics_listener = match state.config.metrics_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {address} for /metrics: {e}"),
            )
        })?),
        None => None,
    };
    let metrics_server = metrics_listener
        .map(|listener| tokio::spawn(serve_metrics(state.clone(), listener, stop_rx.clone())));
    let worker = tokio::spawn(crate::workflows::run_worker(state.clone(), stop_rx.clone()));
    let flusher = tokio::spawn(background_flush(state.clone(), stop_rx));
    let app = router(state.clone());
    let limits = crate::serve::ConnectionLimits {
        header_read_timeout: Duration::from_secs(state.config.header_read_timeout_secs.max(1)),
        write_stall_timeout: Duration::from_secs(state.config.request_timeout_secs.max(1)),
        max_connections: crate::serve::raise_fd_limit_and_cap(state.config.max_connections),
        max_connections_per_ip: state.config.max_connections_per_ip,
        shutdown_timeout: Duration::from_secs(state.config.shutdown_timeout_secs),
    };
    let trusted = state.config.trusted_proxies.clone();
    let result = crate::serve::serve(listener, app, limits, trusted, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = flusher.await;
    let _ = worker.await;
    for task in [redis, redis_limits, metrics_server].into_iter().flatten() {
        let _ = task.await;
    }
    flush_usage(&state).await;
    result
}

/// `/metrics` alone on its own listener (`metrics_listen`), so it can stay
/// off the public address; `/livez` too, for the probe of whoever scrapes.
async fn serve_metrics(
    state: SharedState,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(metrics_address = %address, "metrics listening");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .with_state(state);
    let stopped = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

/// Builds the shared state around a store (migrated by the caller).
pub fn build_state(
    config: crate::config::Config,
    store: Arc<dyn keyflow_store::Store>,
    clock: Arc<dyn keyflow_core::Clock>,
) -> SharedState {
    Arc::new(AppState::new(config, store, clock))
}

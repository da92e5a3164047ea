//! What `GET /metrics` reports, in Prometheus' text format: counters and
//! histograms kept in atomics on the request path, and gauges read when
//! scraped (database, job queue, Redis; see [`scrape`]).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::Method;
use keyflow_core::ErrorCode;
use keyflow_core::histogram::{Histogram, SECONDS, label_value};

use crate::limits::Category;
use crate::state::AppState;

#[derive(Default)]
pub struct Prometheus {
    pub key_cache_hits: AtomicU64,
    /// Keys not in the cache, looked up in the store.
    pub key_cache_misses: AtomicU64,
    auth_rejections: [AtomicU64; AUTH_CODES.len()],
    rate_limited: [AtomicU64; CATEGORIES.len()],
    pub usage_flush_failures: AtomicU64,
    routes: Routes,
}

/// The auth outcomes counted separately.
pub const AUTH_CODES: [ErrorCode; 11] = [
    ErrorCode::MissingApiKey,
    ErrorCode::InvalidApiKey,
    ErrorCode::KeyRevoked,
    ErrorCode::KeyExpired,
    ErrorCode::FeatureNotAllowed,
    ErrorCode::IpNotAllowed,
    ErrorCode::InsufficientScope,
    ErrorCode::EventNotAllowed,
    ErrorCode::InsecureKeyUsage,
    ErrorCode::OriginNotAllowed,
    ErrorCode::RateLimited,
];

const CATEGORIES: [Category; 5] = [
    Category::Ingest,
    Category::Read,
    Category::Write,
    Category::Management,
    Category::Metrics,
];

/// The route label of a request that matched no route: one series for
/// every unknown path, so scanners cannot grow the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Requests by route template (`/v1/keys/{id}`, never the concrete path)
/// and method: a count per status class and a latency histogram. A read
/// lock and a map lookup per request; the write lock only the first time a
/// route and method are seen.
#[derive(Default)]
struct Routes(RwLock<RouteMap>);

/// Route template → the methods seen on it, each with its stats.
type RouteMap = HashMap<Box<str>, Vec<(Method, Arc<RouteStats>)>>;

struct RouteStats {
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    classes: [AtomicU64; 5],
    latency: Histogram,
}

fn find<'m>(map: &'m RouteMap, route: &str, method: &Method) -> Option<&'m Arc<RouteStats>> {
    map.get(route)?
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, stats)| stats)
}

impl Routes {
    /// Runs `count` on the stats of `route` and `method` under the read lock
    /// (no reference count touched on the request path); the write lock
    /// only the first time they are seen.
    fn with_stats(&self, route: &str, method: &Method, count: impl Fn(&RouteStats)) {
        if let Some(stats) = find(
            &self.0.read().unwrap_or_else(|p| p.into_inner()),
            route,
            method,
        ) {
            count(stats);
            return;
        }
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if find(&map, route, method).is_none() {
            let stats = Arc::new(RouteStats {
                classes: Default::default(),
                latency: Histogram::new(SECONDS),
            });
            map.entry(route.into())
                .or_default()
                .push((method.clone(), stats));
        }
        if let Some(stats) = find(&map, route, method) {
            count(stats);
        }
    }

    /// Every (route, method, stats), sorted so scrapes read alike.
    fn snapshot(&self) -> Vec<(String, Method, Arc<RouteStats>)> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .flat_map(|(route, methods)| {
                methods
                    .iter()
                    .map(|(m, s)| (route.to_string(), m.clone(), s.clone()))
            })
            .collect();
        all.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        all
    }
}

impl Prometheus {
    /// Counts one answered request under its route template.
    pub fn count_request(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        self.routes.with_stats(route, method, |stats| {
            if let Some(class) = (status / 100).checked_sub(1).map(usize::from)
                && let Some(counter) = stats.classes.get(class)
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            stats.latency.observe_duration(elapsed);
        });
    }

    pub fn count_auth_rejection(&self, code: ErrorCode) {
        if let Some(i) = AUTH_CODES.iter().position(|c| *c == code) {
            self.auth_rejections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request refused 429 by its key's (or credential's) quota.
    pub fn count_rate_limited(&self, category: Category) {
        if let Some(i) = CATEGORIES.iter().position(|c| *c == category) {
            self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count_auth_rejection(ErrorCode::RateLimited);
    }

    /// The counters and histograms kept in memory.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let routes = self.routes.snapshot();
        type_line(
            &mut out,
            "keyflow_http_requests_total",
            "counter",
            "Answered requests by route template, method and status class.",
        );
        for (route, method, stats) in &routes {
            for (i, c) in stats.classes.iter().enumerate() {
                let n = get(c);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keyflow_http_requests_total{{route=\"{}\",method=\"{method}\",class=\"{}xx\"}} {n}",
                        label_value(route),
                        i + 1
                    );
                }
            }
        }
        type_line(
            &mut out,
            "keyflow_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its answer, by route template and method.",
        );
        for (route, method, stats) in &routes {
            let labels = format!("route=\"{}\",method=\"{method}\"", label_value(route));
            stats
                .latency
                .render(&mut out, "keyflow_http_request_duration_seconds", &labels);
        }
        type_line(
            &mut out,
            "keyflow_auth_rejections_total",
            "counter",
            "Requests refused by authentication or a key's restrictions, by error code.",
        );
        for (code, c) in AUTH_CODES.iter().zip(&self.auth_rejections) {
            let _ = writeln!(
                out,
                "keyflow_auth_rejections_total{{code=\"{}\"}} {}",
                code.as_str(),
                get(c)
            );
        }
        type_line(
            &mut out,
            "keyflow_rate_limited_total",
            "counter",
            "Requests refused 429 by a key's quota, by endpoint category.",
        );
        for (category, c) in CATEGORIES.iter().zip(&self.rate_limited) {
            let _ = writeln!(
                out,
                "keyflow_rate_limited_total{{category=\"{}\"}} {}",
                category.as_str(),
                get(c)
            );
        }
        for (name, help, c) in [
            (
                "keyflow_key_cache_hits_total",
                "Authentications answered from the key cache.",
                &self.key_cache_hits,
            ),
            (
                "keyflow_key_cache_misses_total",
                "Authentications that looked the key up in the database.",
                &self.key_cache_misses,
            ),
            (
                "keyflow_usage_flush_failures_total",
                "Failed writes of last-used data (retried at the next flush).",
                &self.usage_flush_failures,
            ),
        ] {
            type_line(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(c));
        }
        out
    }
}

fn type_line(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    type_line(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole `/metrics` page: the in-memory counters, then what is read at
/// scrape time — the database's health, the ingest group commits, the job
/// queue and Redis.
pub async fn scrape(state: &AppState) -> String {
    let mut out = state.prometheus.render();
    let started = Instant::now();
    let ping = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let up = matches!(ping, Ok(Ok(())));
    gauge(
        &mut out,
        "keyflow_database_up",
        "1 when the database answered a ping within 2 s.",
        u8::from(up),
    );
    gauge(
        &mut out,
        "keyflow_database_ping_seconds",
        "How long the database took to answer that ping.",
        started.elapsed().as_secs_f64(),
    );
    let commits = state.store.group_commit_stats();
    type_line(
        &mut out,
        "keyflow_ingest_commit_events",
        "histogram",
        "Events written per ingest group commit.",
    );
    commits
        .events_per_commit
        .render(&mut out, "keyflow_ingest_commit_events", "");
    type_line(
        &mut out,
        "keyflow_ingest_commit_seconds",
        "histogram",
        "Duration of each ingest group commit.",
    );
    commits
        .commit_seconds
        .render(&mut out, "keyflow_ingest_commit_seconds", "");
    if up {
        job_queue(state, &mut out).await;
    }
    out += &redis(state);
    out
}

async fn job_queue(state: &AppState, out: &mut String) {
    let now = state.now_ms();
    let stats = match state.store.job_queue_stats(now).await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the job queue for /metrics");
            return;
        }
    };
    gauge(
        out,
        "keyflow_jobs_queued",
        "Workflow jobs in the queue, due or not.",
        stats.queued,
    );
    gauge(
        out,
        "keyflow_jobs_due",
        "Workflow jobs due now that no worker holds.",
        stats.due,
    );
    gauge(
        out,
        "keyflow_jobs_running",
        "Workflow jobs a worker holds.",
        stats.running,
    );
    let age = stats
        .oldest_due_at
        .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
    gauge(
        out,
        "keyflow_jobs_oldest_due_age_seconds",
        "How long the longest-waiting due job has waited (0 when none).",
        age,
    );
}

/// Redis' state, when Redis is configured.
fn redis(state: &AppState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    if let Some(link) = &state.redis {
        gauge(
            &mut out,
            "keyflow_redis_connected",
            "1 while the change subscription to Redis is connected.",
            u8::from(link.is_connected()),
        );
        type_line(
            &mut out,
            "keyflow_redis_changes_received_total",
            "counter",
            "Changes (revocations, plan changes) received from other instances.",
        );
        let _ = writeln!(
            out,
            "keyflow_redis_changes_received_total {}",
            link.received.load(Relaxed)
        );
    }
    if let Some(limiter) = &state.redis_limiter {
        gauge(
            &mut out,
            "keyflow_redis_limits_shared",
            "1 while rate limits are decided in Redis (0: per instance).",
            u8::from(limiter.is_reachable()),
        );
        type_line(
            &mut out,
            "keyflow_rate_limit_decisions_total",
            "counter",
            "Rate-limit decisions, by where they were made.",
        );
        let _ = writeln!(
            out,
            "keyflow_rate_limit_decisions_total{{by=\"redis\"}} {}\n\
             keyflow_rate_limit_decisions_total{{by=\"instance\"}} {}",
            limiter.redis_calls.load(Relaxed),
            limiter.local_decisions.load(Relaxed),
        );
        type_line(
            &mut out,
            "keyflow_redis_limiter_calls_total",
            "counter",
            "Calls to the rate-limit script in Redis.",
        );
        let _ = writeln!(
            out,
            "keyflow_redis_limiter_calls_total {}",
            limiter.script_calls.load(Relaxed)
        );
    }
    out
}

//! The Metrics API's predefined metrics (SPEC §4): `GET /v1/metrics/{metric}`
//! answered from the hourly counters and daily presence rows, and the answer
//! caches shared with tenant SQL ([`crate::api::metrics_query`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keyflow_core::ErrorCode;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::Buckets;
use keyflow_store::areas::metrics::{DAY_MS, HOUR_MS, bucket_start};
use serde::Serialize;
use utoipa::ToSchema;

use super::metrics_access::MetricsCaller;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

/// The predefined metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    EventsCount,
    UniqueContacts,
    ContactsCreated,
    TopEvents,
}

impl Metric {
    const ALL: [Metric; 4] = [
        Metric::EventsCount,
        Metric::UniqueContacts,
        Metric::ContactsCreated,
        Metric::TopEvents,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Metric::EventsCount => "events.count",
            Metric::UniqueContacts => "events.unique_contacts",
            Metric::ContactsCreated => "contacts.created",
            Metric::TopEvents => "events.top",
        }
    }
    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

/// The most buckets one series may have.
pub const MAX_BUCKETS: i64 = 1000;

/// A metric request, checked: what the answer and its cache entry are of.
#[derive(Debug, PartialEq, Eq)]
struct SeriesRequest {
    metric: Metric,
    buckets: Buckets,
    event: Option<String>,
}

fn parse_request(
    metric: &str,
    query: &std::collections::HashMap<String, String>,
    now: i64,
) -> ApiResult<SeriesRequest> {
    let metric = Metric::parse(metric).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "No metric named {metric:?}; the metrics are {}.",
                Metric::ALL.map(Metric::as_str).join(", ")
            ),
        )
    })?;
    let width = match query.get("interval").map(String::as_str) {
        None | Some("day") => DAY_MS,
        Some("hour") => HOUR_MS,
        Some(_) => return Err(ApiError::field("interval", "must be hour or day")),
    };
    let to = super::time_query(query, "to")?.unwrap_or(now);
    let default_span = if width == DAY_MS { 30 * DAY_MS } else { DAY_MS };
    let from = super::time_query(query, "from")?.unwrap_or(to.saturating_sub(default_span));
    if from >= to {
        return Err(ApiError::field("from", "must be before to"));
    }
    // Whole buckets: `from` down to its bucket's start, `to` (exclusive) up to its bucket's end.
    let buckets = Buckets {
        from: bucket_start(from, width),
        to: bucket_start(to - 1, width) + width,
        width,
    };
    // Both edges must be writable as RFC 3339 (years 0000 to 9999).
    for (field, edge) in [("from", buckets.from), ("to", buckets.to - 1)] {
        if format_rfc3339(edge).is_empty() || format_rfc3339(edge + 1).is_empty() {
            return Err(ApiError::field(
                field,
                "must lie between the years 0000 and 9999",
            ));
        }
    }
    if (buckets.to - buckets.from) / width > MAX_BUCKETS {
        return Err(ApiError::field(
            "from",
            format!(
                "a series has at most {MAX_BUCKETS} buckets: narrow the range or use a wider interval"
            ),
        ));
    }
    if metric == Metric::UniqueContacts && width != DAY_MS {
        return Err(ApiError::field(
            "interval",
            "events.unique_contacts is kept per day: use interval=day",
        ));
    }
    let event = match query
        .get("event")
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        None => None,
        Some(_) if matches!(metric, Metric::ContactsCreated | Metric::TopEvents) => {
            return Err(ApiError::field(
                "event",
                format!("{} does not take an event", metric.as_str()),
            ));
        }
        Some(name) => Some(
            keyflow_core::events::check_event_name(
                "event",
                &keyflow_core::events::normalise_event_name(name),
            )
            .map_err(|e| ApiError::validation(vec![e]))?,
        ),
    };
    Ok(SeriesRequest {
        metric,
        buckets,
        event,
    })
}

/// One bucket of an answer (`name` only in `events.top`).
#[derive(Clone, Serialize, ToSchema)]
pub struct PointView {
    /// The bucket's start (RFC 3339, UTC).
    t: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    value: i64,
}

/// A computed series, kept for later requests (see [`SeriesRequest`]).
#[derive(Debug)]
pub struct CachedSeries {
    series: Vec<(i64, Option<String>, i64)>,
    computed_at: i64,
    /// Not served from this time on: the project's TTL, or the end of a
    /// bucket that was still open when computed, whichever comes first.
    valid_until: i64,
}

impl Cached for CachedSeries {
    fn computed_at(&self) -> i64 {
        self.computed_at
    }
    fn valid_until(&self) -> i64 {
        self.valid_until
    }
    /// Roughly the bytes it holds (the cache's weight).
    fn weight(&self) -> u32 {
        let names: usize = self
            .series
            .iter()
            .map(|(_, name, _)| name.as_ref().map_or(0, String::len))
            .sum();
        u32::try_from(64 + self.series.len() * 48 + names).unwrap_or(u32::MAX)
    }
}

/// An answer the Metrics API keeps for later identical requests.
pub trait Cached: Send + Sync + 'static {
    fn computed_at(&self) -> i64;
    /// Not served from this time on.
    fn valid_until(&self) -> i64;
    /// Roughly the bytes it holds.
    fn weight(&self) -> u32;
}

/// Bytes of answers of one kind one instance keeps: the least recently used go first.
const ANSWER_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// An answer cache: bounded by the answers' size, and each entry dropped
/// when it may no longer be served (a lowered TTL applies to answers
/// computed from then on).
pub fn answer_cache<T: Cached>() -> moka::sync::Cache<String, Arc<T>> {
    struct UntilInvalid;
    impl<T: Cached> moka::Expiry<String, Arc<T>> for UntilInvalid {
        fn expire_after_create(
            &self,
            _key: &String,
            value: &Arc<T>,
            _created_at: std::time::Instant,
        ) -> Option<std::time::Duration> {
            let ms = (value.valid_until() - value.computed_at()).max(0);
            Some(std::time::Duration::from_millis(ms.unsigned_abs()))
        }
    }
    moka::sync::Cache::builder()
        .max_capacity(ANSWER_CACHE_BYTES)
        .weigher(|key: &String, value: &Arc<T>| {
            value
                .weight()
                .saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
        })
        .expire_after(UntilInvalid)
        .build()
}

#[derive(Serialize, ToSchema)]
pub struct SeriesView {
    metric: &'static str,
    /// `hour` or `day`.
    interval: &'static str,
    /// The first bucket's start.
    from: String,
    /// The end of the last bucket (exclusive).
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    series: Vec<PointView>,
    /// Whether this answer comes from the cache (then `Age` says how old it is).
    cached: bool,
    computed_at: String,
    /// Time spent answering this request, in milliseconds.
    elapsed_ms: u64,
}

#[utoipa::path(
    get,
    path = "/v1/metrics/{metric}",
    tag = "metrics",
    summary = "A predefined metric",
    description = "`events.count` (events per bucket, of one `event` or all), \
                   `events.unique_contacts` (distinct contacts with an event that day; \
                   `interval=day` only), `contacts.created`, `events.top` (the 10 most \
                   frequent event names of each bucket). Buckets are UTC hours or days from \
                   the events' own timestamps; a range has at most 1000 buckets (default: the \
                   last 30 days, or 24 hours with `interval=hour`). Answers are cached per \
                   project for its cache TTL, never past the end of a bucket still open when \
                   computed; a cached answer carries `Age`.",
    params(
        ("metric" = String, Path, description = "events.count, events.unique_contacts, contacts.created or events.top"),
        ("interval" = Option<String>, Query, description = "hour or day (default day)"),
        ("from" = Option<String>, Query, description = "RFC 3339; rounded down to its bucket"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive; rounded up to its bucket's end (default now)"),
        ("event" = Option<String>, Query, description = "Only this event name (events.count, events.unique_contacts)"),
    ),
    responses(
        (status = 200, description = "The series", body = SeriesView),
        (status = 401, description = "Missing, invalid, rotated-away or expired access token", body = crate::error::ErrorBody),
        (status = 403, description = "Plan or IP allow-list refused", body = crate::error::ErrorBody),
        (status = 404, description = "No such metric", body = crate::error::ErrorBody),
        super::openapi::Invalid,
        (status = 429, description = "Rate limited (see Retry-After)", body = crate::error::ErrorBody),
    ),
    security(("metrics_token" = []))
)]
pub async fn get_metric(
    State(state): State<SharedState>,
    axum::Extension(caller): axum::Extension<MetricsCaller>,
    Path(metric): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let now = state.now_ms();
    let request = parse_request(&metric, &query, now)?;
    let project_id = caller.project_id();
    let cache_key = format!(
        "{project_id}|{}|{}|{}|{}|{}",
        request.metric.as_str(),
        request.buckets.width,
        request.buckets.from,
        request.buckets.to,
        request.event.as_deref().unwrap_or("")
    );
    let (entry, cached) = match state.series_cache.get(&cache_key) {
        Some(entry) if entry.valid_until > now => (entry, true),
        _ => {
            let entry = Arc::new(compute(&state, project_id, &request, now).await?);
            state.series_cache.insert(cache_key, entry.clone());
            (entry, false)
        }
    };
    let view = SeriesView {
        metric: request.metric.as_str(),
        interval: if request.buckets.width == DAY_MS {
            "day"
        } else {
            "hour"
        },
        from: format_rfc3339(request.buckets.from),
        to: format_rfc3339(request.buckets.to),
        event: request.event,
        series: entry
            .series
            .iter()
            .map(|(t, name, value)| PointView {
                t: format_rfc3339(*t),
                name: name.clone(),
                value: *value,
            })
            .collect(),
        cached,
        computed_at: format_rfc3339(entry.computed_at),
        elapsed_ms: elapsed_ms(started),
    };
    Ok(with_age(
        Json(view).into_response(),
        cached,
        now,
        entry.computed_at,
    ))
}

/// Milliseconds since `started`, for `elapsed_ms`.
pub fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A cached answer says how old it is in `Age` (seconds).
pub fn with_age(mut response: Response, cached: bool, now: i64, computed_at: i64) -> Response {
    if cached {
        let age = (now - computed_at).max(0) / 1000;
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
    }
    response
}

async fn compute(
    state: &SharedState,
    project_id: &str,
    request: &SeriesRequest,
    now: i64,
) -> ApiResult<CachedSeries> {
    let buckets = request.buckets;
    let event = request.event.as_deref();
    let store = state.store.as_ref();
    let series: Vec<(i64, Option<String>, i64)> = match request.metric {
        Metric::EventsCount => plain(store.event_counts(project_id, buckets, event).await?),
        Metric::UniqueContacts => plain(store.unique_contacts(project_id, buckets, event).await?),
        Metric::ContactsCreated => plain(store.contacts_created(project_id, buckets).await?),
        Metric::TopEvents => store
            .top_events(project_id, buckets)
            .await?
            .into_iter()
            .map(|p| (p.t, Some(p.name), p.value))
            .collect(),
    };
    let ttl_minutes = state
        .store
        .project_settings(project_id)
        .await?
        .metrics_cache_ttl_minutes;
    Ok(CachedSeries {
        series,
        computed_at: now,
        valid_until: valid_until(buckets, now, ttl_minutes),
    })
}

/// The project's TTL from `now`, cut at the end of the bucket holding `now`
/// when that bucket is part of the series (it is still filling up).
fn valid_until(buckets: Buckets, now: i64, ttl_minutes: i64) -> i64 {
    let by_ttl = now + ttl_minutes * 60_000;
    if buckets.from <= now && now < buckets.to {
        by_ttl.min(bucket_start(now, buckets.width) + buckets.width)
    } else {
        by_ttl
    }
}

fn plain(points: Vec<keyflow_store::Point>) -> Vec<(i64, Option<String>, i64)> {
    points.into_iter().map(|p| (p.t, None, p.value)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use keyflow_core::timefmt::parse_rfc3339;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranges_snap_to_whole_buckets_and_stay_bounded() {
        let now = parse_rfc3339("2030-01-31T12:30:00Z").unwrap();
        let r = parse_request("events.count", &query(&[]), now).unwrap();
        assert_eq!(format_rfc3339(r.buckets.from), "2030-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(r.buckets.to), "2030-02-01T00:00:00Z");
        assert_eq!(r.buckets.starts().count(), 31);
        let hourly = parse_request("events.count", &query(&[("interval", "hour")]), now).unwrap();
        assert_eq!(hourly.buckets.starts().count(), 25);
        let wide = query(&[("interval", "hour"), ("from", "2029-01-01T00:00:00Z")]);
        assert!(parse_request("events.count", &wide, now).is_err());
        let backwards = query(&[
            ("from", "2030-02-01T00:00:00Z"),
            ("to", "2030-01-01T00:00:00Z"),
        ]);
        assert!(parse_request("events.count", &backwards, now).is_err());
        assert!(
            parse_request(
                "events.unique_contacts",
                &query(&[("interval", "hour")]),
                now
            )
            .is_err()
        );
        assert!(parse_request("events.top", &query(&[("event", "x")]), now).is_err());
        assert!(parse_request("events.sum", &query(&[]), now).is_err());
        assert!(parse_request("events.count", &query(&[("interval", "week")]), now).is_err());
        // Edges that RFC 3339 cannot write: refused, not answered with "".
        let late = query(&[
            ("from", "9999-12-01T00:00:00Z"),
            ("to", "9999-12-31T23:59:59Z"),
        ]);
        assert!(parse_request("events.count", &late, now).is_err());
        let early = query(&[("to", "0000-01-05T00:00:00Z")]);
        assert!(parse_request("events.count", &early, now).is_err());
        let fine = query(&[
            ("from", "9999-12-01T00:00:00Z"),
            ("to", "9999-12-30T00:00:00Z"),
        ]);
        assert!(parse_request("events.count", &fine, now).is_ok());
    }

    #[test]
    fn an_open_bucket_ends_the_cache_entry() {
        let day = Buckets {
            from: 0,
            to: 2 * DAY_MS,
            width: DAY_MS,
        };
        // Computed at 23:58 of the last day: recomputed from midnight on.
        let late = 2 * DAY_MS - 2 * 60_000;
        assert_eq!(valid_until(day, late, 5), 2 * DAY_MS);
        // Early in the day: the TTL decides.
        assert_eq!(valid_until(day, DAY_MS, 5), DAY_MS + 5 * 60_000);
        // A range wholly in the past: the TTL decides.
        assert_eq!(valid_until(day, 10 * DAY_MS, 5), 10 * DAY_MS + 5 * 60_000);
    }
}

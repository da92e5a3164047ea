//! The Metrics API (SPEC §4). `POST /v1/metrics/token` exchanges the
//! project's metrics credential (`Bearer mk_…` and its client secret) for a
//! short-lived access token ([`crate::metrics_token`]); the metric routes
//! take that token. Server-to-server only: a browser's request (one with
//! `Origin`) is refused. Both check, in SPEC §2's order, the workspace's
//! plan, the credential's IP allow-list and the project's `metrics` rate
//! limit, and answer with the rate-limit headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyflow_core::keys::parse_key;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_core::{ErrorCode, GcraDecision, IpAllowList, KeyType, RateLimit};
use keyflow_store::areas::metrics::{DAY_MS, HOUR_MS, bucket_start};
use keyflow_store::{Buckets, MetricsCredential};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::{
    Failure, client_ip, effective_quota, failures_exhausted, note_failure, presented_key,
};
use crate::error::{ApiError, ApiResult};
use crate::limits::{Category, write_headers};
use crate::metrics_token;
use crate::state::SharedState;

/// A credential as the metrics pipeline needs it, cached for a few seconds.
#[derive(Debug)]
pub struct CachedCredential {
    pub credential: MetricsCredential,
    pub workspace_id: String,
    pub allowlist: IpAllowList,
}

/// A request the metrics pipeline let through.
#[derive(Clone, Debug)]
pub struct MetricsCaller {
    pub credential: Arc<CachedCredential>,
}

impl MetricsCaller {
    pub fn project_id(&self) -> &str {
        &self.credential.credential.project_id
    }
}

/// The credential with this id (cached); `None` if there is none. A lookup
/// that must reach the database is refused once `ip` has used up its failed
/// guesses (429), as for keys: cached, genuine credentials keep working.
async fn credential(
    state: &SharedState,
    id: &str,
    ip: Option<IpAddr>,
) -> ApiResult<Option<Arc<CachedCredential>>> {
    if let Some(found) = state.cache.credential(id) {
        return Ok(Some(found));
    }
    let now = state.now_ms();
    if failures_exhausted(state, Failure::MetricsToken, ip, now) {
        return Err(crate::auth::too_many_failures(
            state,
            Failure::MetricsToken,
            ip,
            now,
        ));
    }
    let Some((credential, workspace_id)) = state.store.credential_for_auth(id).await? else {
        return Ok(None);
    };
    let cached = Arc::new(CachedCredential {
        allowlist: IpAllowList::from_rules(&credential.ip_allowlist),
        credential,
        workspace_id,
    });
    state
        .cache
        .insert_credential(id.to_string(), cached.clone());
    Ok(Some(cached))
}

/// The checks after authentication: plan, IP allow-list, rate limit (which
/// is spent only when the others pass). Returns the refusal, if any, and
/// what the rate-limit headers report.
async fn admit(
    state: &SharedState,
    credential: &CachedCredential,
    ip: Option<IpAddr>,
    now: i64,
) -> (Result<(), ApiError>, RateLimit, GcraDecision) {
    // Per project, so a rotation (a new credential id) starts no new quota.
    let project_id = &credential.credential.project_id;
    let bucket = format!("{project_id}:{}", Category::Metrics.as_str());
    let plan = match state.plan_of(&credential.workspace_id).await {
        Ok(Some(plan)) => plan,
        Ok(None) => keyflow_core::Plan::Free,
        Err(e) => {
            let quota = state.config.default_rate_limit;
            let decision = state.limiter.check(&bucket, quota, now, false).await;
            return (Err(e.into()), quota, decision);
        }
    };
    let project_limit = match state.project_rate_limit(project_id).await {
        Ok(limit) => limit,
        Err(e) => {
            let quota = state.config.default_rate_limit;
            let decision = state.limiter.check(&bucket, quota, now, false).await;
            return (Err(e.into()), quota, decision);
        }
    };
    let quota = effective_quota(None, project_limit, state.config.plan_rate_limit(plan));
    let refusal = crate::auth::plan_and_address(
        plan,
        &credential.allowlist,
        ip,
        "The Metrics API",
        "the metrics credential's",
    );
    if let Some(refusal) = refusal {
        state.prometheus.count_auth_rejection(refusal.code);
        let decision = state.limiter.check(&bucket, quota, now, false).await;
        return (Err(refusal), quota, decision);
    }
    let decision = state.limiter.check(&bucket, quota, now, true).await;
    if !decision.allowed {
        state
            .prometheus
            .count_auth_rejection(ErrorCode::RateLimited);
        let limited = crate::auth::rate_limited(&quota, decision.retry_after_seconds());
        return (Err(limited), quota, decision);
    }
    // Last use, at most one write a minute per credential.
    if state
        .cache
        .note_credential_use(&credential.credential.id, now)
    {
        let (store, id) = (state.store.clone(), credential.credential.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.mark_credential_used(&id, now).await {
                tracing::warn!(error = %e, "could not record the metrics credential's last use");
            }
        });
    }
    (Ok(()), quota, decision)
}

fn with_headers(
    mut response: Response,
    quota: RateLimit,
    decision: &GcraDecision,
    now: i64,
) -> Response {
    let limited = response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS;
    write_headers(
        response.headers_mut(),
        Category::Metrics,
        quota,
        decision,
        now,
        limited,
    );
    response
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The client secret shown when the credential was created or rotated.
    client_secret: Option<String>,
    /// Lifetime in seconds, 60 to 3600 (default 900).
    expires_in: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token stops working.
    expires_in: i64,
}

/// `403 insecure_key_usage` for a request a browser sent (SPEC §4: server to
/// server only), like a secret key's.
fn refuse_browsers(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::new(
            ErrorCode::InsecureKeyUsage,
            "The Metrics API is server-to-server: never use the metrics credential or its tokens from a browser.",
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/metrics/token",
    tag = "metrics",
    summary = "Exchange the metrics credential for an access token",
    description = "`Authorization: Bearer mk_…` (the credential id) and the client secret in the \
                   body. The token works on every instance until it expires or the credential is \
                   rotated. Checked like a key: plan, the credential's IP allow-list, the \
                   project's `metrics` rate limit. Server-to-server only (a request with `Origin` \
                   is refused).",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "An access token", body = TokenView),
        (status = 401, description = "Missing or unknown credential id, or wrong client secret", body = crate::error::ErrorBody),
        (status = 403, description = "Plan, IP allow-list or browser origin refused", body = crate::error::ErrorBody),
        super::openapi::Invalid,
        (status = 429, description = "Rate limited (see Retry-After)", body = crate::error::ErrorBody),
    ),
    security(("metrics_credential" = []))
)]
pub async fn exchange(
    State(state): State<SharedState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    crate::json::JsonBody(request): crate::json::JsonBody<TokenRequest>,
) -> Response {
    if let Err(refused) = refuse_browsers(&headers) {
        return refused.into_response();
    }
    // The body is read (by the extractor) and checked before the credential,
    // so its errors say nothing about whether an id exists, and cost no quota.
    let ttl = request
        .expires_in
        .unwrap_or(metrics_token::DEFAULT_TTL_SECS);
    if !(metrics_token::MIN_TTL_SECS..=metrics_token::MAX_TTL_SECS).contains(&ttl) {
        return ApiError::field(
            "expires_in",
            format!(
                "must be {} to {} seconds",
                metrics_token::MIN_TTL_SECS,
                metrics_token::MAX_TTL_SECS
            ),
        )
        .into_response();
    }
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = client_ip(&state, peer, &headers);
    let now = state.now_ms();
    let Some(presented) = presented_key(&headers, false) else {
        return ApiError::new(
            ErrorCode::MissingApiKey,
            "Send the metrics credential id as `Authorization: Bearer mk_…`.",
        )
        .into_response();
    };
    let refuse = |state: &SharedState| {
        let invalid = ApiError::new(
            ErrorCode::InvalidApiKey,
            "The metrics credential id or client secret is not valid.",
        );
        note_failure(state, Failure::MetricsToken, ip, invalid).into_response()
    };
    if !parse_key(&presented).is_ok_and(|k| k.key_type == KeyType::Metrics) {
        return refuse(&state);
    }
    let found = match credential(&state, &presented, ip).await {
        Ok(Some(found)) => found,
        Ok(None) => return refuse(&state),
        Err(e) => return e.into_response(),
    };
    let secret = request.client_secret.unwrap_or_default();
    let digest = keyflow_core::KeyDigest::of(&secret);
    if !bool::from(digest.0.ct_eq(&found.credential.secret_digest.0)) {
        return refuse(&state);
    }
    let (admitted, quota, decision) = admit(&state, &found, ip, now).await;
    let answer = match admitted {
        Ok(()) => issue(&state, &found.credential, ttl, now).await,
        Err(refusal) => Err(refusal),
    };
    let response = answer.unwrap_or_else(IntoResponse::into_response);
    with_headers(response, quota, &decision, now)
}

/// Mints a token for `credential`, stores its digest, and answers with it.
async fn issue(
    state: &SharedState,
    credential: &MetricsCredential,
    ttl: i64,
    now: i64,
) -> ApiResult<Response> {
    let (token, digest) = metrics_token::mint()
        .ok_or_else(|| ApiError::internal("access token", &"the random source failed"))?;
    let expires_at = now + ttl * 1000;
    state
        .store
        .put_metrics_token(
            &digest,
            &credential.id,
            &credential.project_id,
            expires_at,
            now,
        )
        .await?;
    state
        .cache
        .insert_token(digest, credential.id.clone(), expires_at);
    Ok(super::no_store(
        Json(TokenView {
            access_token: token,
            token_type: "Bearer",
            expires_in: ttl,
        })
        .into_response(),
    ))
}

/// The pipeline of the metric routes: the access token, then [`admit`].
pub async fn require_token(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Err(refused) = refuse_browsers(req.headers()) {
        return refused.into_response();
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(&state, peer, req.headers());
    let now = state.now_ms();
    let Some(presented) = presented_key(req.headers(), false) else {
        return ApiError::new(
            ErrorCode::MissingApiKey,
            "Send an access token from POST /v1/metrics/token as `Authorization: Bearer <token>`.",
        )
        .into_response();
    };
    let invalid = || ApiError::new(ErrorCode::InvalidApiKey, "The access token is not valid.");
    let Some(digest) = metrics_token::digest_of(&presented) else {
        return note_failure(&state, Failure::MetricsToken, ip, invalid()).into_response();
    };
    let (credential_id, expires_at) = match state.cache.token(&digest) {
        Some(known) => known,
        None => {
            if failures_exhausted(&state, Failure::MetricsToken, ip, now) {
                return crate::auth::too_many_failures(&state, Failure::MetricsToken, ip, now)
                    .into_response();
            }
            match state.store.metrics_token(&digest).await {
                Ok(Some((id, expires_at))) => {
                    state.cache.insert_token(digest, id.clone(), expires_at);
                    (id, expires_at)
                }
                Ok(None) => {
                    return note_failure(&state, Failure::MetricsToken, ip, invalid())
                        .into_response();
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    // A genuine token past its time, or of a rotated-away credential, is
    // not a guess: refused without counting against the address.
    if expires_at <= now {
        return ApiError::new(
            ErrorCode::KeyExpired,
            "The access token has expired; exchange the credential for a new one.",
        )
        .into_response();
    }
    let found = match credential(&state, &credential_id, ip).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return ApiError::new(
                ErrorCode::KeyRevoked,
                "The metrics credential of this access token was rotated; exchange the new one.",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let (admitted, quota, decision) = admit(&state, &found, ip, now).await;
    let response = match admitted {
        Ok(()) => {
            req.extensions_mut()
                .insert(MetricsCaller { credential: found });
            next.run(req).await
        }
        Err(refusal) => refusal.into_response(),
    };
    with_headers(response, quota, &decision, now)
}

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

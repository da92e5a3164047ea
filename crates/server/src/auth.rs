//! The one auth pipeline of every `/v1` route, in SPEC §2's order:
//! authenticate (401s) → plan, IP, scope (403s) → rate limit (429) → handler.
//! Each route states its scope and category once, in the router.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Request};
use axum::handler::Handler;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use keyflow_core::keys::parse_key;
use keyflow_core::{ErrorCode, GcraDecision, IpAllowList, RateLimit, Scope, ScopeSet};
use keyflow_store::Actor;

use crate::error::ApiError;
use crate::limits::{Category, write_headers};
use crate::state::{CachedKey, SharedState};

/// The authenticated caller, available to handlers as `Extension<Caller>`.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Arc<CachedKey>,
    pub client_ip: Option<IpAddr>,
    /// The limits the pipeline resolved for this request (the quota it
    /// enforced and what it came from), so handlers need not look them up again.
    pub limits: CallerLimits,
}

/// A caller's rate limits, as the pipeline resolved them.
#[derive(Clone, Copy, Debug)]
pub struct CallerLimits {
    /// What this key runs on: its own, else its project's, else the plan's,
    /// never above the plan's.
    pub effective: RateLimit,
    /// What a key of this project without its own limit runs on.
    pub default: RateLimit,
    /// The plan's limit, the ceiling of every tenant override.
    pub plan: RateLimit,
}

impl Caller {
    pub fn project_id(&self) -> &str {
        &self.key.key.project_id
    }
    pub fn workspace_id(&self) -> &str {
        &self.key.workspace_id
    }
    pub fn actor(&self) -> Actor {
        Actor::ApiKey {
            id: self.key.key.id.clone(),
            name: self.key.key.settings.name.clone(),
            prefix: self.key.key.prefix.clone(),
        }
    }
    pub fn ip_string(&self) -> Option<String> {
        self.client_ip.map(|ip| ip.to_string())
    }
    /// The context of a change this caller makes now.
    pub fn ctx<'s>(&self, state: &'s crate::state::AppState) -> crate::operations::Ctx<'s> {
        state.ctx(self.actor(), self.ip_string(), state.now_ms())
    }
}

/// What a route requires: its scope (none for `/v1/keys/self`) and category.
#[derive(Clone)]
pub struct Guard {
    pub state: SharedState,
    pub scope: Option<Scope>,
    /// Scopes needed besides `scope` (creating the metrics credential also
    /// needs the read scopes of the data it will read).
    pub also: ScopeSet,
    pub category: Category,
    /// Also accept HTTP Basic with the key as user name (Segment's libraries).
    pub allow_basic: bool,
    /// The handler spends quota itself (after checks that must come first,
    /// such as `event_not_allowed`) through the request's [`RateLimitTicket`].
    pub quota_spent_by_handler: bool,
}

impl Guard {
    pub fn new(state: &SharedState, scope: Option<Scope>, category: Category) -> Self {
        Self {
            state: state.clone(),
            scope,
            also: ScopeSet::EMPTY,
            category,
            allow_basic: false,
            quota_spent_by_handler: false,
        }
    }
    /// Also requires `scope`.
    pub fn also(mut self, scope: Scope) -> Self {
        self.also = self.also.with(scope);
        self
    }
    pub fn basic_auth(mut self) -> Self {
        self.allow_basic = true;
        self
    }
    /// The handler spends the request's quota itself (see `quota_spent_by_handler`).
    pub fn quota_spent_by_handler(mut self) -> Self {
        self.quota_spent_by_handler = true;
        self
    }
    /// `handler` behind this guard's checks (see [`Guarded`]).
    pub fn wrap<H>(self, handler: H) -> Guarded<H> {
        Guarded {
            guard: self,
            handler,
        }
    }
}

/// The client address per SPEC §2 (socket peer, or X-Forwarded-For behind a trusted proxy).
pub fn client_ip(
    state: &SharedState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    keyflow_core::ip::client_ip(peer, &hops, &state.config.trusted_proxies)
}

/// The presented key: `Bearer <key>`, or (where allowed) Basic with the key as user name.
pub(crate) fn presented_key(headers: &HeaderMap, allow_basic: bool) -> Option<Cow<'_, str>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Cow::Borrowed(token.trim()));
    }
    if allow_basic && scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return Some(Cow::Owned(user.to_string()));
    }
    None
}

/// Quota for a request whose handler decides when to spend it. Cloning
/// shares it (the pipeline keeps one to read the decision for the headers).
#[derive(Clone)]
pub struct RateLimitTicket(Arc<Ticket>);

struct Ticket {
    state: SharedState,
    bucket: String,
    category: Category,
    quota: RateLimit,
    now: i64,
    spent: std::sync::Mutex<Option<GcraDecision>>,
}

impl RateLimitTicket {
    fn new(
        state: &SharedState,
        key_id: &str,
        category: Category,
        quota: RateLimit,
        now: i64,
    ) -> Self {
        // `<key id>:<category>`, the limiter's bucket.
        let name = category.as_str();
        let mut bucket = String::with_capacity(key_id.len() + 1 + name.len());
        bucket.push_str(key_id);
        bucket.push(':');
        bucket.push_str(name);
        Self(Arc::new(Ticket {
            state: state.clone(),
            bucket,
            category,
            quota,
            now,
            spent: std::sync::Mutex::new(None),
        }))
    }

    /// Spends one request of quota; a `429 rate_limited` error when exhausted.
    pub async fn consume(&self) -> Result<(), ApiError> {
        let t = &self.0;
        let decision = t.state.limiter.check(&t.bucket, t.quota, t.now, true).await;
        *t.spent.lock().unwrap_or_else(|p| p.into_inner()) = Some(decision);
        if decision.allowed {
            return Ok(());
        }
        t.state.prometheus.count_rate_limited(t.category);
        Err(rate_limited(&t.quota, decision.retry_after_seconds()))
    }

    async fn decision_for_headers(&self) -> GcraDecision {
        let t = &self.0;
        let spent = *t.spent.lock().unwrap_or_else(|p| p.into_inner());
        match spent {
            Some(d) => d,
            None => {
                t.state
                    .limiter
                    .check(&t.bucket, t.quota, t.now, false)
                    .await
            }
        }
    }
}

fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|o| o.trim().to_ascii_lowercase())
}

/// Browser rules of SPEC §5: secret and read-only keys are refused when a
/// browser sends them (an `Origin` header); client keys honour `allowed_origins`.
fn check_origin(key: &CachedKey, origin: Option<&str>) -> Result<(), ApiError> {
    let Some(origin) = origin else { return Ok(()) };
    match key.key.key_type {
        keyflow_core::KeyType::Client => {
            let allowed = key.key.settings.allowed_origins.as_ref();
            if allowed.is_some_and(|list| !list.iter().any(|o| o == origin)) {
                return Err(ApiError::new(
                    ErrorCode::OriginNotAllowed,
                    format!("The origin {origin} is not in this key's allowed_origins."),
                ));
            }
            Ok(())
        }
        _ => Err(ApiError::new(
            ErrorCode::InsecureKeyUsage,
            "Secret and read-only keys must never be used from a browser; use a client key (ck_…).",
        )),
    }
}

/// CORS answer headers for a client key used from an allowed origin.
fn allow_origin(response: &mut Response, origin: &str) {
    if let Ok(v) = axum::http::HeaderValue::from_str(origin) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(header::VARY, axum::http::HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            axum::http::HeaderValue::from_static(
                "x-request-id, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, retry-after",
            ),
        );
    }
}

/// A handler behind the auth pipeline, made by [`Guard::wrap`] in the router.
///
/// The pipeline runs inside the handler rather than as a per-route
/// middleware layer: a layer costs each request a clone of the boxed inner
/// service, a boxed `Next` and a boxed future (measured: docs/benchmarks.md).
#[derive(Clone)]
pub struct Guarded<H> {
    guard: Guard,
    handler: H,
}

impl<H, T, S> Handler<T, S> for Guarded<H>
where
    H: Handler<T, S>,
    S: Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Response> + Send>>;

    fn call(self, req: Request, state: S) -> Self::Future {
        let Guarded { guard, handler } = self;
        Box::pin(async move { require(&guard, req, move |req| handler.call(req, state)).await })
    }
}

/// SPEC §2's pipeline around `handler`: it runs only when every check
/// passes, and every answer (the handler's or a refusal) leaves with the
/// rate-limit headers and, for allowed browser origins, CORS headers.
async fn require<F, Fut>(guard: &Guard, mut req: Request, handler: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let state = &guard.state;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(state, peer, req.headers());
    let key = match authenticate(state, req.headers(), ip, guard.allow_basic).await {
        Ok(key) => key,
        Err(err) => {
            state.prometheus.count_auth_rejection(err.code);
            return err.into_response();
        }
    };
    let origin = origin_of(req.headers());
    let now = state.now_ms();
    let (plan, project_limit) = match plan_and_project_limit(state, &key, now).await {
        Ok(limits) => limits,
        Err(refused) => return refused.into_response(),
    };
    let plan_limit = state.config.plan_rate_limit(plan);
    let limits = CallerLimits {
        effective: effective_quota(key.key.settings.rate_limit, project_limit, plan_limit),
        default: effective_quota(None, project_limit, plan_limit),
        plan: plan_limit,
    };
    let quota = limits.effective;
    let ticket = RateLimitTicket::new(state, &key.key.id, guard.category, quota, now);
    // The caller takes `key`; this handle counts the response afterwards.
    let counted = key.clone();
    let origin_check = check_origin(&key, origin.as_deref());
    let browser_ok =
        matches!(key.key.key_type, keyflow_core::KeyType::Client) && origin_check.is_ok();

    let denial = if let Err(e) = origin_check {
        Some(e)
    } else if let Some(refused) =
        plan_and_address(plan, &key.allowlist, ip, "API access", "this key's")
    {
        Some(refused)
    } else {
        // The route's scope first, then any other it also needs.
        let missing = guard.scope.filter(|s| !key.key.scopes.contains(*s));
        missing
            .or_else(|| guard.also.minus(key.key.scopes).iter().next())
            .map(|s| {
                ApiError::new(
                    ErrorCode::InsufficientScope,
                    format!("This API key lacks the {s} scope."),
                )
                .with_details(serde_json::json!({ "required_scope": s.as_str() }))
            })
    };
    let mut response = if let Some(err) = denial {
        // Authenticated but refused: the quota is reported, not spent.
        state.prometheus.count_auth_rejection(err.code);
        err.into_response()
    } else if !guard.quota_spent_by_handler
        && let Err(limited) = ticket.consume().await
    {
        limited.into_response()
    } else {
        state.usage.record(&key.key.id, now, ip);
        req.extensions_mut().insert(Caller {
            key,
            client_ip: ip,
            limits,
        });
        req.extensions_mut().insert(ticket.clone());
        handler(req).await
    };
    let decision = ticket.decision_for_headers().await;
    let limited = response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS;
    state
        .usage
        .count(&counted.key.id, now, response.status().as_u16());
    write_headers(
        response.headers_mut(),
        guard.category,
        quota,
        &decision,
        now,
        limited,
    );
    if let (true, Some(origin)) = (browser_ok, origin.as_deref()) {
        allow_origin(&mut response, origin);
    }
    response.extensions_mut().insert(AuthenticatedKey(counted));
    response
}

/// The workspace's plan and the project's quota override: carried on the
/// cached key from a request less than a second ago (the plan and quota
/// caches' lifetime) unless either was invalidated since, else looked up.
async fn plan_and_project_limit(
    state: &SharedState,
    key: &CachedKey,
    now: i64,
) -> Result<(keyflow_core::Plan, Option<RateLimit>), ApiError> {
    let epoch = state.cache.limits_epoch();
    if let Some(carried) = key.limits(now, epoch) {
        return Ok(carried);
    }
    let plan = match state.plan_of(&key.workspace_id).await {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::InvalidApiKey,
                "This API key's workspace no longer exists.",
            ));
        }
        Err(e) => return Err(ApiError::from(e)),
    };
    // A key's own limit, else its project's, else the plan's default.
    let project_limit = state
        .project_rate_limit(&key.key.project_id)
        .await
        .map_err(ApiError::from)?;
    key.carry_limits(plan, project_limit, now, epoch);
    Ok((plan, project_limit))
}

/// The key a request authenticated with, on its response, for the request
/// log: its project id and public prefix are logged, never the key.
#[derive(Clone)]
pub struct AuthenticatedKey(pub Arc<CachedKey>);

/// SPEC §2's plan and IP steps for `what` (named in the refusal) from `ip`
/// against `whose` allow-list; `None` when both pass.
pub(crate) fn plan_and_address(
    plan: keyflow_core::Plan,
    allowlist: &IpAllowList,
    ip: Option<IpAddr>,
    what: &str,
    whose: &str,
) -> Option<ApiError> {
    if !plan.allows_api() {
        return Some(ApiError::new(
            ErrorCode::FeatureNotAllowed,
            format!(
                "{what} needs the pro or team plan; this workspace is on {}.",
                plan.as_str()
            ),
        ));
    }
    if !allowlist.allows(ip) {
        return Some(ApiError::new(
            ErrorCode::IpNotAllowed,
            format!(
                "Requests from {} are not on {whose} IP allow-list.",
                ip.map(|i| i.to_string())
                    .unwrap_or_else(|| "an unknown address".into())
            ),
        ));
    }
    None
}

/// A key's own limit, else its project's, else the plan's; never above the
/// plan's (SPEC §2): an override set before a downgrade, or before the
/// operator lowered the plan's limit, gets the plan's limit from then on.
pub fn effective_quota(
    key_limit: Option<RateLimit>,
    project_limit: Option<RateLimit>,
    plan_limit: RateLimit,
) -> RateLimit {
    key_limit
        .or(project_limit)
        .filter(|limit| limit.at_most(plan_limit))
        .unwrap_or(plan_limit)
}

pub(crate) fn rate_limited(quota: &RateLimit, retry_after: i64) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!(
            "Rate limit of {} requests per {} s exceeded; retry in {retry_after} s.",
            quota.limit, quota.period_seconds
        ),
    )
}

/// Steps 1–4 of the table: header, format and checksum, lookup, revoked, expired.
/// Public for the micro-benchmarks (`benches/hot_path.rs`).
pub async fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    allow_basic: bool,
) -> Result<Arc<CachedKey>, ApiError> {
    let Some(token) = presented_key(headers, allow_basic) else {
        return Err(ApiError::new(
            ErrorCode::MissingApiKey,
            "Send your API key as `Authorization: Bearer <key>`.",
        ));
    };
    let invalid = || ApiError::new(ErrorCode::InvalidApiKey, "The API key is not valid.");
    // Format and checksum first: a typo or a guess never reaches cache or database.
    let parsed = match parse_key(&token) {
        Ok(p) if p.key_type != keyflow_core::KeyType::Metrics => p,
        _ => return Err(note_failure(state, Failure::Key, ip, invalid())),
    };
    let digest = parsed.digest();
    let now = state.now_ms();
    let key = match state.cache.get(&digest) {
        Some(key) => {
            state
                .prometheus
                .key_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            key
        }
        None => {
            if state.cache.is_known_unknown(&digest) {
                return Err(note_failure(state, Failure::Key, ip, invalid()));
            }
            if failures_exhausted(state, Failure::Key, ip, now) {
                return Err(too_many_failures(state, Failure::Key, ip, now));
            }
            state
                .prometheus
                .key_cache_misses
                .fetch_add(1, Ordering::Relaxed);
            match state.store.find_key_for_auth(&digest).await? {
                Some(found) => {
                    let cached = Arc::new(CachedKey::new(found.key, found.workspace_id));
                    state.cache.insert(digest, cached.clone());
                    cached
                }
                None => {
                    state.cache.insert_unknown(digest);
                    return Err(note_failure(state, Failure::Key, ip, invalid()));
                }
            }
        }
    };
    // A revoked or expired key is not a guess (SPEC §2): one service still
    // using a stale key must not lock every other key out of its address.
    still_valid(&key.key, now)?;
    Ok(key)
}

/// `401 key_revoked` / `key_expired` for a key that is no longer usable.
pub(crate) fn still_valid(key: &keyflow_store::ApiKey, now: i64) -> Result<(), ApiError> {
    if key.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::KeyRevoked,
            "This API key has been revoked.",
        ));
    }
    if key.settings.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::new(
            ErrorCode::KeyExpired,
            "This API key has expired.",
        ));
    }
    Ok(())
}

fn failure_quota(state: &SharedState) -> RateLimit {
    RateLimit::per_minute(state.config.failed_auth_per_minute.max(1))
}

/// What failed: a key (guessed keys) or the instance admin token. Each has
/// its own budget per address, so guesses at one do not lock out the other.
#[derive(Clone, Copy)]
pub(crate) enum Failure {
    Key,
    AdminToken,
    /// Metrics credential ids, client secrets and access tokens.
    MetricsToken,
}

/// Per client IP, IPv6 per /64 (SPEC §2).
fn failure_bucket(kind: Failure, ip: Option<IpAddr>) -> String {
    let kind = match kind {
        Failure::Key => "auth-failures",
        Failure::AdminToken => "admin-failures",
        Failure::MetricsToken => "metrics-failures",
    };
    match ip {
        Some(ip) => format!("{kind}:{}", keyflow_core::ip::limiter_subject(ip)),
        None => format!("{kind}:unknown"),
    }
}

pub(crate) fn failures_exhausted(
    state: &SharedState,
    kind: Failure,
    ip: Option<IpAddr>,
    now: i64,
) -> bool {
    !state
        .failed_auth
        .decide(&failure_bucket(kind, ip), failure_quota(state), now, false)
        .allowed
}

/// Counts a failed authentication against the client IP; past the limit the
/// answer becomes 429 so keys cannot be guessed at speed.
pub(crate) fn note_failure(
    state: &SharedState,
    kind: Failure,
    ip: Option<IpAddr>,
    err: ApiError,
) -> ApiError {
    let now = state.now_ms();
    let d = state
        .failed_auth
        .decide(&failure_bucket(kind, ip), failure_quota(state), now, true);
    if d.allowed {
        err
    } else {
        too_many_failures(state, kind, ip, now)
    }
}

pub(crate) fn too_many_failures(
    state: &SharedState,
    kind: Failure,
    ip: Option<IpAddr>,
    now: i64,
) -> ApiError {
    let quota = failure_quota(state);
    let d = state
        .failed_auth
        .decide(&failure_bucket(kind, ip), quota, now, false);
    let retry = d.retry_after_seconds();
    ApiError::new(
        ErrorCode::RateLimited,
        format!("Too many failed authentications from this address; retry in {retry} s."),
    )
    .with_header(header::RETRY_AFTER, axum::http::HeaderValue::from(retry))
}

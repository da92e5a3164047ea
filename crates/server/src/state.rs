//! Shared state of one `keyflow serve` instance.

use std::sync::Arc;
use std::time::Duration;

use keyflow_core::{Clock, IpAllowList, KeyDigest, Plan};
use keyflow_store::{ApiKey, Store, StoreResult};
use moka::sync::Cache;

use crate::config::Config;
use crate::limits::{LocalRateLimiter, RateLimiter};
use crate::prometheus::Prometheus;
use crate::usage::UsageTracker;

/// A key as the auth pipeline needs it, resolved once and cached.
#[derive(Debug)]
pub struct CachedKey {
    pub key: ApiKey,
    pub workspace_id: String,
    pub allowlist: IpAllowList,
    /// The key object's JSON, made on first use (`GET /v1/keys/self`).
    json: std::sync::OnceLock<Option<crate::api::views::KeyJsonParts>>,
    /// The workspace's plan and the project's quota override as last read
    /// for this key (see [`CachedKey::limits`]).
    limits: std::sync::Mutex<Option<CarriedLimits>>,
}

/// A plan and quota override carried on a cached key, so that a request
/// needs no lookup of either: valid as long as they would have been in the
/// plan and quota caches (1 s), and not past any invalidation of those.
#[derive(Debug, Clone, Copy)]
struct CarriedLimits {
    plan: Plan,
    project_limit: Option<keyflow_core::RateLimit>,
    read_at: i64,
    epoch: u64,
}

/// How long a carried plan and quota serve: the plan and quota caches' TTL.
const CARRIED_LIMITS_MS: i64 = 1_000;

impl CachedKey {
    pub fn new(key: ApiKey, workspace_id: String) -> Self {
        Self {
            allowlist: IpAllowList::from_rules(&key.settings.ip_allowlist),
            workspace_id,
            key,
            json: std::sync::OnceLock::new(),
            limits: std::sync::Mutex::new(None),
        }
    }

    /// The plan and quota override carried from an earlier request, if still
    /// valid at `now` under the caches' `epoch`.
    pub fn limits(&self, now: i64, epoch: u64) -> Option<(Plan, Option<keyflow_core::RateLimit>)> {
        let carried = (*self.limits.lock().unwrap_or_else(|p| p.into_inner()))?;
        (carried.epoch == epoch && (0..CARRIED_LIMITS_MS).contains(&(now - carried.read_at)))
            .then_some((carried.plan, carried.project_limit))
    }

    pub fn carry_limits(
        &self,
        plan: Plan,
        project_limit: Option<keyflow_core::RateLimit>,
        now: i64,
        epoch: u64,
    ) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some(CarriedLimits {
            plan,
            project_limit,
            read_at: now,
            epoch,
        });
    }

    /// The key object as JSON, with last-used data from `usage`.
    pub fn json(&self, usage: &UsageTracker) -> String {
        match self
            .json
            .get_or_init(|| crate::api::views::KeyJsonParts::of(&self.key))
        {
            Some(parts) => parts.body(&self.key, usage),
            None => serde_json::to_string(&crate::api::views::key_json(&self.key, usage))
                .unwrap_or_default(),
        }
    }
}

/// `digest → key` and `workspace → plan`, bounded, invalidated on this
/// instance at once by revoke/update/roll/plan change.
/// How long a plan or quota read from the store serves while the database
/// is unavailable.
const KNOWN_WHILE_DATABASE_DOWN: Duration = Duration::from_secs(60);

pub struct KeyCache {
    keys: Cache<KeyDigest, Arc<CachedKey>>,
    /// Digests that matched no key, so a flood of one bad key stays off the database.
    unknown: Cache<KeyDigest, ()>,
    /// Short TTL: a plan change made elsewhere (CLI, another instance) is seen within 1 s.
    plans: Cache<String, Plan>,
    /// Per-project quota overrides, 1-second TTL like plans.
    project_limits: Cache<String, Option<keyflow_core::RateLimit>>,
    /// The last plan and quota override read from the store, kept a minute:
    /// used only while the database is unavailable, so keys already cached
    /// keep authenticating meanwhile (SPEC §11).
    plans_known: Cache<String, Plan>,
    project_limits_known: Cache<String, Option<keyflow_core::RateLimit>>,
    /// Metrics credentials by id, 5-second TTL: a rotation elsewhere (the
    /// CLI, another instance) stops the old id's tokens within 5 s.
    credentials: Cache<String, Arc<crate::api::metrics_access::CachedCredential>>,
    /// When each credential's last use was last written (see
    /// [`KeyCache::note_credential_use`]).
    credential_uses: Cache<String, i64>,
    /// Access token digest → (credential id, expiry): fixed for a token's
    /// life, so kept up to the longest lifetime; a rotation is seen through
    /// `credentials` (the old id is gone).
    tokens: Cache<KeyDigest, (String, i64)>,
    /// Moves on every plan or quota invalidation: plans and quotas carried
    /// on cached keys are dropped with the caches'.
    limits_epoch: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(5))
                .build(),
            plans: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(1))
                .build(),
            project_limits: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(1))
                .build(),
            credentials: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(5))
                .build(),
            plans_known: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(KNOWN_WHILE_DATABASE_DOWN)
                .build(),
            project_limits_known: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(KNOWN_WHILE_DATABASE_DOWN)
                .build(),
            credential_uses: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(60))
                .build(),
            tokens: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            limits_epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn get(&self, digest: &KeyDigest) -> Option<Arc<CachedKey>> {
        self.keys.get(digest)
    }
    pub fn is_known_unknown(&self, digest: &KeyDigest) -> bool {
        self.unknown.contains_key(digest)
    }
    pub fn insert(&self, digest: KeyDigest, key: Arc<CachedKey>) {
        self.keys.insert(digest, key);
    }
    pub fn insert_unknown(&self, digest: KeyDigest) {
        self.unknown.insert(digest, ());
    }
    /// Forget everything (another instance's changes may have been missed).
    pub fn clear_all(&self) {
        self.keys.invalidate_all();
        self.unknown.invalidate_all();
        self.plans.invalidate_all();
        self.project_limits.invalidate_all();
        self.credentials.invalidate_all();
        self.next_limits_epoch();
    }

    /// See [`CachedKey::limits`].
    pub fn limits_epoch(&self) -> u64 {
        self.limits_epoch.load(std::sync::atomic::Ordering::Acquire)
    }
    fn next_limits_epoch(&self) {
        self.limits_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Forget everything about one key (it changed or was just created).
    pub fn invalidate(&self, digest: &KeyDigest) {
        self.keys.invalidate(digest);
        self.unknown.invalidate(digest);
    }
    pub fn invalidate_plan(&self, workspace_id: &str) {
        self.plans.invalidate(workspace_id);
        self.plans_known.invalidate(workspace_id);
        self.next_limits_epoch();
    }
    pub fn cached_plan(&self, workspace_id: &str) -> Option<Plan> {
        self.plans.get(workspace_id)
    }
    pub fn insert_plan(&self, workspace_id: String, plan: Plan) {
        self.plans_known.insert(workspace_id.clone(), plan);
        self.plans.insert(workspace_id, plan);
    }
    pub fn invalidate_project(&self, project_id: &str) {
        self.project_limits.invalidate(project_id);
        self.project_limits_known.invalidate(project_id);
        self.next_limits_epoch();
    }
    pub fn credential(
        &self,
        id: &str,
    ) -> Option<Arc<crate::api::metrics_access::CachedCredential>> {
        self.credentials.get(id)
    }
    pub fn insert_credential(
        &self,
        id: String,
        credential: Arc<crate::api::metrics_access::CachedCredential>,
    ) {
        self.credentials.insert(id, credential);
    }
    /// Forget every cached credential (one was created, rotated or changed;
    /// they are few, and keyed by id rather than project).
    pub fn invalidate_credentials(&self) {
        self.credentials.invalidate_all();
    }
    pub fn token(&self, digest: &KeyDigest) -> Option<(String, i64)> {
        self.tokens.get(digest)
    }
    pub fn insert_token(&self, digest: KeyDigest, credential_id: String, expires_at: i64) {
        self.tokens.insert(digest, (credential_id, expires_at));
    }
    /// Whether a use of credential `id` at `now` should be written: the
    /// first in a minute is, the rest are not.
    pub fn note_credential_use(&self, id: &str, now: i64) -> bool {
        if self
            .credential_uses
            .get(id)
            .is_some_and(|at| now - at < 60_000)
        {
            return false;
        }
        self.credential_uses.insert(id.to_string(), now);
        true
    }
}

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub cache: Arc<KeyCache>,
    /// Committed changes are published here (see [`crate::changes`]).
    pub changes: Arc<crate::changes::LocalChangeBus>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Failed authentications per client IP (always local: a guessing client
    /// hits one instance's socket at a time).
    pub failed_auth: LocalRateLimiter,
    pub local_limiter: Arc<LocalRateLimiter>,
    pub usage: UsageTracker,
    pub prometheus: Prometheus,
    /// Failed dashboard sign-ins and the browsers known to have signed in.
    pub signin: crate::dashboard::signin::SigninThrottle,
    /// The one-time first-run setup token, while the instance has no operator.
    setup_token: std::sync::Mutex<Option<String>>,
    /// Metric answers per (project, request), bounded by their size (see
    /// `api::metrics::answer_cache`).
    pub series_cache: Cache<String, Arc<crate::api::metrics::CachedSeries>>,
    /// Query answers per (project, normal form of the query), the same way.
    pub query_cache: Cache<String, Arc<crate::api::metrics_query::CachedAnswer>>,
    /// Tenant queries running now (see `api::metrics_query::QuerySlots`).
    pub query_slots: crate::api::metrics_query::QuerySlots,
    /// Redis, when configured: changes shared with other instances.
    pub redis: Option<Arc<crate::redis_link::RedisLink>>,
    /// Redis, when configured: rate limits shared with other instances.
    pub redis_limiter: Option<Arc<crate::redis_limiter::RedisRateLimiter>>,
    /// Wakes this instance's workflow worker (a run was started here).
    pub workflow_wake: tokio::sync::Notify,
    /// Skipped runs already noted in the activity log this hour, per
    /// workflow, contact and reason: the loop guard says why once, not for
    /// every refused start.
    pub workflow_skips: Cache<String, ()>,
    /// TLS for webhook calls (rustls with ring, the Mozilla roots).
    pub webhook_tls: Option<Arc<rustls::ClientConfig>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// The context of a change made by `actor` (from `ip`, at `now`).
    pub fn ctx(
        &self,
        actor: keyflow_store::Actor,
        ip: Option<String>,
        now: keyflow_core::clock::UnixMillis,
    ) -> crate::operations::Ctx<'_> {
        crate::operations::Ctx {
            store: self.store.as_ref(),
            bus: self.changes.as_ref(),
            actor,
            ip,
            now,
            workflow_depth: 0,
        }
    }

    /// An unreadable Redis URL is logged and Redis left unused: `keyflow
    /// serve` checks it first with [`crate::redis_link::RedisLink::new`].
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let cache = Arc::new(KeyCache::new(
            config.key_cache_capacity,
            Duration::from_secs(config.key_cache_ttl_secs),
        ));
        let changes = Arc::new(crate::changes::LocalChangeBus::default());
        changes.subscribe(crate::changes::invalidate_caches(cache.clone()));
        let redis =
            config.redis_url.as_ref().and_then(|url| {
                match crate::redis_link::RedisLink::new(url.expose()) {
                    Ok(link) => Some(Arc::new(link)),
                    Err(e) => {
                        tracing::error!(error = %e, "Redis is not used");
                        None
                    }
                }
            });
        if let Some(link) = &redis {
            let link = link.clone();
            changes.subscribe(move |change| link.forward(change));
        }
        let local_limiter = Arc::new(LocalRateLimiter::default());
        let redis_limiter = config.redis_url.as_ref().and_then(|url| {
            crate::redis_limiter::RedisRateLimiter::new(
                url.expose(),
                local_limiter.clone(),
                crate::redis_limiter::MAX_BATCH,
            )
            .ok()
            .map(Arc::new)
        });
        let limiter: Arc<dyn RateLimiter> = match &redis_limiter {
            Some(shared) => shared.clone(),
            None => local_limiter.clone(),
        };
        let config_queries = config.max_concurrent_queries;
        Self {
            config,
            store,
            clock,
            cache,
            changes,
            limiter,
            failed_auth: LocalRateLimiter::default(),
            local_limiter,
            usage: UsageTracker::default(),
            prometheus: Prometheus::default(),
            signin: Default::default(),
            setup_token: std::sync::Mutex::new(None),
            series_cache: crate::api::metrics::answer_cache(),
            query_cache: crate::api::metrics::answer_cache(),
            query_slots: crate::api::metrics_query::QuerySlots::new(config_queries),
            redis,
            redis_limiter,
            workflow_wake: tokio::sync::Notify::new(),
            workflow_skips: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            webhook_tls: crate::workflows::delivery::tls_config()
                .inspect_err(|e| tracing::error!(error = %e, "webhooks cannot use TLS"))
                .ok()
                .map(Arc::new),
        }
    }

    /// Mints the first-run setup token (call when the store has no operator).
    pub fn issue_setup_token(&self) -> Result<String, keyflow_core::KeyFormatError> {
        let token = keyflow_core::keys::random_base62(32)?;
        *self.setup_token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    pub fn setup_token_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let guard = self.setup_token.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented.as_bytes())))
    }

    /// Takes the token if `presented` matches it: of two concurrent setups
    /// only one gets it. Put it back with [`Self::restore_setup_token`] if
    /// the setup then fails.
    pub fn take_setup_token(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let mut guard = self.setup_token.lock().unwrap_or_else(|p| p.into_inner());
        let matches = guard
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented.as_bytes())));
        if matches {
            *guard = None;
        }
        matches
    }

    /// A setup that took the token failed: the link works again.
    pub fn restore_setup_token(&self, token: String) {
        let mut guard = self.setup_token.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(token);
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A project's quota override, from the 1-second cache or the store.
    pub async fn project_rate_limit(
        &self,
        project_id: &str,
    ) -> StoreResult<Option<keyflow_core::RateLimit>> {
        if let Some(limit) = self.cache.project_limits.get(project_id) {
            return Ok(limit);
        }
        let limit = match self.store.project_settings(project_id).await {
            Ok(settings) => settings.rate_limit,
            Err(e) if e.is_unavailable() => {
                return match self.cache.project_limits_known.get(project_id) {
                    Some(limit) => Ok(limit),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.cache
            .project_limits_known
            .insert(project_id.to_string(), limit);
        self.cache
            .project_limits
            .insert(project_id.to_string(), limit);
        Ok(limit)
    }

    /// The workspace's plan, from the 1-second cache or the store.
    pub async fn plan_of(&self, workspace_id: &str) -> StoreResult<Option<Plan>> {
        if let Some(plan) = self.cache.cached_plan(workspace_id) {
            return Ok(Some(plan));
        }
        let plan = match self.store.get_workspace(workspace_id).await {
            Ok(workspace) => workspace.map(|w| w.plan),
            Err(e) if e.is_unavailable() => {
                return match self.cache.plans_known.get(workspace_id) {
                    Some(plan) => Ok(Some(plan)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if let Some(plan) = plan {
            self.cache.insert_plan(workspace_id.to_string(), plan);
        }
        Ok(plan)
    }
}

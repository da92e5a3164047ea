//! Rate limiting: per key and endpoint category, GCRA behind one trait so a
//! Redis implementation (exact across instances) can replace the in-process
//! one without touching the auth pipeline.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use keyflow_core::clock::UnixMillis;
use keyflow_core::rate_limit::gcra;
use keyflow_core::{GcraDecision, RateLimit};

/// SPEC §2's endpoint categories; each has its own quota per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Ingest,
    Read,
    Write,
    Management,
    Metrics,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Ingest => "ingest",
            Category::Read => "read",
            Category::Write => "write",
            Category::Management => "management",
            Category::Metrics => "metrics",
        }
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Decides one request for `bucket` at `now_ms`; with `consume = false`
    /// only reports the state (used for responses that must not cost quota).
    async fn check(
        &self,
        bucket: &str,
        quota: RateLimit,
        now_ms: UnixMillis,
        consume: bool,
    ) -> GcraDecision;
}

const SHARDS: usize = 16;

/// In-process GCRA: one TAT per bucket, in sharded maps so concurrent requests
/// for different keys rarely contend.
pub struct LocalRateLimiter {
    shards: Vec<Mutex<HashMap<String, i64>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl LocalRateLimiter {
    fn shard(&self, bucket: &str) -> &Mutex<HashMap<String, i64>> {
        &self.shards[(self.hasher.hash_one(bucket) as usize) % SHARDS]
    }

    /// Synchronous form of [`RateLimiter::check`].
    pub fn decide(
        &self,
        bucket: &str,
        quota: RateLimit,
        now_ms: UnixMillis,
        consume: bool,
    ) -> GcraDecision {
        let now_us = now_ms.saturating_mul(1000);
        let mut map = self.shard(bucket).lock().unwrap_or_else(|p| p.into_inner());
        let decision = gcra(map.get(bucket).copied(), now_us, quota, consume);
        if consume && decision.allowed {
            match map.get_mut(bucket) {
                Some(tat) => *tat = decision.new_tat_us,
                None => {
                    map.insert(bucket.to_string(), decision.new_tat_us);
                }
            }
        }
        decision
    }

    /// Drops buckets whose quota is full again (their TAT is in the past): they
    /// carry no information, and this keeps memory bounded by active keys.
    pub fn prune(&self, now_ms: UnixMillis) {
        let now_us = now_ms.saturating_mul(1000);
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| *tat > now_us);
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(
        &self,
        bucket: &str,
        quota: RateLimit,
        now_ms: UnixMillis,
        consume: bool,
    ) -> GcraDecision {
        self.decide(bucket, quota, now_ms, consume)
    }
}

/// Writes `X-RateLimit-*` and the IETF `RateLimit-Policy` / `RateLimit` fields.
pub fn write_headers(
    headers: &mut HeaderMap,
    category: Category,
    quota: RateLimit,
    d: &GcraDecision,
    now_ms: UnixMillis,
    rate_limited: bool,
) {
    let now_us = now_ms.saturating_mul(1000);
    // Numbers convert without formatting through a String.
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from(d.limit),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(d.remaining),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from(d.reset_unix_seconds(now_us)),
    );
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put(
        "ratelimit-policy",
        format!(
            "\"{}\";q={};w={}",
            category.as_str(),
            quota.limit,
            quota.period_seconds
        ),
    );
    put(
        "ratelimit",
        format!(
            "\"{}\";r={};t={}",
            category.as_str(),
            d.remaining,
            d.reset_after_seconds()
        ),
    );
    // Retry-After belongs to a 429 only: a 403 (refused before the limiter)
    // reports the quota but nothing to wait for.
    if !d.allowed && rate_limited {
        put("retry-after", d.retry_after_seconds().to_string());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_independent_and_prunable() {
        let limiter = LocalRateLimiter::default();
        let quota = RateLimit::per_minute(2);
        assert!(limiter.decide("a", quota, 0, true).allowed);
        assert!(limiter.decide("a", quota, 0, true).allowed);
        assert!(!limiter.decide("a", quota, 0, true).allowed);
        assert!(limiter.decide("b", quota, 0, true).allowed);
        limiter.prune(120_000);
        assert!(limiter.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}

//! Rate limiting: per key and endpoint category, GCRA behind one trait so a
//! Redis implementation (exact across instances) can replace the in-process
//! one without touching the auth pipeline.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use keyflow_core::clock::UnixMillis;
use keyflow_core::rate_limit::{gcra, gcra_refund};
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

    /// Gives back one request charged to `bucket` (see [`gcra_refund`]).
    pub fn refund(&self, bucket: &str, quota: RateLimit, now_ms: UnixMillis) {
        let now_us = now_ms.saturating_mul(1000);
        let mut map = self.shard(bucket).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(bucket) {
            *tat = gcra_refund(*tat, now_us, quota);
        }
    }

    /// Number of buckets held (tests check that pruning empties it).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `"<category>";<a>=<x>;<b>=<y>`, the shape of both IETF fields. Built by
/// hand: this runs on every authenticated response.
fn ietf_field(category: Category, a: &str, x: u64, b: &str, y: u64) -> Option<HeaderValue> {
    let mut numbers = itoa::Buffer::new();
    let mut value = String::with_capacity(48);
    value.push('"');
    value.push_str(category.as_str());
    value.push_str("\";");
    value.push_str(a);
    value.push('=');
    value.push_str(numbers.format(x));
    value.push(';');
    value.push_str(b);
    value.push('=');
    value.push_str(numbers.format(y));
    HeaderValue::try_from(value).ok()
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
    headers.reserve(6);
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(d.reset_unix_seconds(now_us)),
    );
    let policy = ietf_field(
        category,
        "q",
        quota.limit.into(),
        "w",
        quota.period_seconds.into(),
    );
    if let Some(v) = policy {
        headers.insert(RATELIMIT_POLICY, v);
    }
    let reset_after = u64::try_from(d.reset_after_seconds()).unwrap_or(0);
    if let Some(v) = ietf_field(category, "r", d.remaining.into(), "t", reset_after) {
        headers.insert(RATELIMIT, v);
    }
    // Retry-After belongs to a 429 only: a 403 (refused before the limiter)
    // reports the quota but nothing to wait for.
    if !d.allowed && rate_limited {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(d.retry_after_seconds()),
        );
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

//! Shared, exact rate limits for several instances (SPEC §11): GCRA in one
//! Lua script on Redis' own clock, so all instances together admit what one
//! would.
//!
//! - One Redis round trip per decision; none for a request refused while a
//!   refusal is known: the retry time Redis returned is remembered here (per
//!   bucket and quota), and until then the bucket cannot admit anyone (its
//!   TAT only grows), so refusing locally stays exact.
//! - A stored state keeps the interval it was computed with; a changed limit
//!   rescales it at once, so nobody stays refused under an old, lower limit.
//! - Keys expire by themselves when their quota is full again.
//! - Redis unreachable or slow (over [`CALL_TIMEOUT`]): the instance's own
//!   limiter decides, so no request fails or waits for Redis; a background
//!   task reconnects.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;
use keyflow_core::{GcraDecision, RateLimit};
use tokio::sync::watch;

use crate::limits::{LocalRateLimiter, RateLimiter};

/// The longest a request waits for Redis before its own instance decides.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Refusals remembered at most (buckets).
const REMEMBERED_REFUSALS: u64 = 100_000;

/// KEYS[1]: the bucket. ARGV: emission interval (µs), period (µs), consume
/// (1/0). Returns {allowed, reset_after_us, retry_after_us}. The state is
/// "TAT:interval" in µs on Redis' clock.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local consume = ARGV[3] == '1'
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, ':', 1, true)
  if sep then
    local old_tat = tonumber(string.sub(stored, 1, sep - 1))
    local old_interval = tonumber(string.sub(stored, sep + 1))
    if old_tat and old_interval and old_interval > 0 and old_tat > now then
      tat = now + math.floor((old_tat - now) * interval / old_interval)
    end
  end
end
if consume then
  local new_tat = tat + interval
  if new_tat - now <= period then
    redis.call('SET', KEYS[1], string.format('%.0f:%.0f', new_tat, interval),
               'PX', math.ceil((new_tat - now) / 1000) + 1)
    return {1, new_tat - now, 0}
  end
  return {0, tat - now, new_tat - now - period}
end
if tat + interval - now <= period then
  return {1, tat - now, 0}
end
return {0, tat - now, tat + interval - now - period}
";

pub struct RedisRateLimiter {
    client: redis::Client,
    script: redis::Script,
    connection: RwLock<Option<redis::aio::MultiplexedConnection>>,
    /// Decides while Redis cannot.
    local: Arc<LocalRateLimiter>,
    /// bucket → (quota, refused until, full again at): known refusals.
    refused: moka::sync::Cache<String, (RateLimit, Instant, Instant)>,
    /// Whether the last call reached Redis (for `/readyz`, `/metrics`).
    reachable: AtomicBool,
    /// Decisions Redis made / the instance made alone.
    pub redis_calls: AtomicU64,
    pub local_decisions: AtomicU64,
}

impl RedisRateLimiter {
    pub fn new(url: &str, local: Arc<LocalRateLimiter>) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|_| "the Redis URL is not valid (expected redis://host:port[/db])")?;
        Ok(Self {
            client,
            script: redis::Script::new(GCRA),
            connection: RwLock::new(None),
            local,
            refused: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED_REFUSALS)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            reachable: AtomicBool::new(false),
            redis_calls: AtomicU64::new(0),
            local_decisions: AtomicU64::new(0),
        })
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Keeps a connection open until `stop`: reconnects whenever a call
    /// found it broken.
    pub async fn maintain(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let missing = self
                .connection
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_none();
            if missing {
                let connected = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    self.client.get_multiplexed_async_connection(),
                )
                .await;
                if let Ok(Ok(conn)) = connected {
                    *self.connection.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    self.reachable.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                } else {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            let wait = if missing {
                backoff
            } else {
                Duration::from_millis(100)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lost_connection(&self) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "Redis did not answer a rate-limit decision: this instance decides alone until \
                 it is back (limits are per instance meanwhile)"
            );
        }
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn decide_locally(
        &self,
        bucket: &str,
        quota: RateLimit,
        now_ms: UnixMillis,
        consume: bool,
    ) -> GcraDecision {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        self.local.decide(bucket, quota, now_ms, consume)
    }
}

/// A decision from what the script returned: (reset, retry) in µs.
fn decision(
    quota: RateLimit,
    now_ms: UnixMillis,
    allowed: bool,
    reset_us: i64,
    retry_us: i64,
) -> GcraDecision {
    let interval = quota.emission_interval_us();
    let remaining = if allowed {
        let spare = (quota.period_us() - reset_us) / interval;
        u32::try_from(spare.max(0)).unwrap_or(0).min(quota.limit)
    } else {
        0
    };
    GcraDecision {
        allowed,
        new_tat_us: now_ms.saturating_mul(1000) + reset_us,
        limit: quota.limit,
        remaining,
        reset_after_us: reset_us.max(0),
        retry_after_us: retry_us.max(0),
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(
        &self,
        bucket: &str,
        quota: RateLimit,
        now_ms: UnixMillis,
        consume: bool,
    ) -> GcraDecision {
        if let Some((known, until, full_at)) = self.refused.get(bucket) {
            let now = Instant::now();
            let left = until.saturating_duration_since(now);
            if known == quota && !left.is_zero() {
                let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                let reset_us = micros(full_at.saturating_duration_since(now));
                return decision(quota, now_ms, false, reset_us, micros(left));
            }
        }
        let Some(mut conn) = self.connection() else {
            return self.decide_locally(bucket, quota, now_ms, consume);
        };
        let mut call = self.script.key(format!("keyflow:rl:{bucket}"));
        call.arg(quota.emission_interval_us())
            .arg(quota.period_us())
            .arg(u8::from(consume));
        let answer: Result<redis::RedisResult<(i64, i64, i64)>, _> =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn)).await;
        let Ok(Ok((allowed, reset_us, retry_us))) = answer else {
            self.lost_connection();
            return self.decide_locally(bucket, quota, now_ms, consume);
        };
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        let allowed = allowed == 1;
        if !allowed && consume && retry_us > 0 {
            let now = Instant::now();
            let after = |us: i64| now + Duration::from_micros(u64::try_from(us).unwrap_or(0));
            self.refused.insert(
                bucket.to_string(),
                (quota, after(retry_us), after(reset_us)),
            );
        }
        decision(quota, now_ms, allowed, reset_us, retry_us)
    }
}

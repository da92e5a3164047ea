//! Shared, exact rate limits for several instances (SPEC §11): GCRA in one
//! Lua script on Redis' own clock, so all instances together admit what one
//! would.
//!
//! - Decisions of concurrent requests share one script call: requests queue,
//!   and a sender takes up to [`MAX_BATCH`] of them per call, with at most
//!   [`CALLS_IN_FLIGHT`] calls out at once. Nothing waits for a batch to
//!   fill: at low load each call carries one decision; under load, requests
//!   arriving while calls are out go together in the next one. The script
//!   decides them one after another, in queue order, atomically.
//! - None for a request refused while a refusal is known: the retry time
//!   Redis returned is remembered here (per bucket and quota), and until then
//!   the bucket cannot admit anyone (its TAT only grows), so refusing locally
//!   stays exact.
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
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};

use crate::limits::{LocalRateLimiter, RateLimiter};

/// The longest a request waits for Redis before its own instance decides.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Refusals remembered at most (buckets).
const REMEMBERED_REFUSALS: u64 = 100_000;
/// Decisions per script call at most.
pub const MAX_BATCH: usize = 64;
/// Script calls out at once per instance; more requests wait in the queue
/// and go in the next call.
const CALLS_IN_FLIGHT: usize = 2;
/// Requests waiting for a call at most; beyond, a request waits for room
/// (within [`CALL_TIMEOUT`]).
const QUEUE_CAPACITY: usize = 16_384;

/// One decision per key, in order: KEYS[i] is a bucket, ARGV[3i-2..3i] its
/// emission interval (µs), period (µs) and consume (1/0). Returns, per
/// bucket, allowed, reset_after_us, retry_after_us. The state is
/// "TAT:interval" in µs on Redis' clock.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local consume = ARGV[3 * i] == '1'
  local tat = now
  local stored = redis.call('GET', KEYS[i])
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
  local allowed, reset, retry
  if consume then
    local new_tat = tat + interval
    if new_tat - now <= period then
      redis.call('SET', KEYS[i], string.format('%.0f:%.0f', new_tat, interval),
                 'PX', math.ceil((new_tat - now) / 1000) + 1)
      allowed, reset, retry = 1, new_tat - now, 0
    else
      allowed, reset, retry = 0, tat - now, new_tat - now - period
    end
  elseif tat + interval - now <= period then
    allowed, reset, retry = 1, tat - now, 0
  else
    allowed, reset, retry = 0, tat - now, tat + interval - now - period
  end
  out[#out + 1] = allowed
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
";

/// What the script answered for one bucket: (allowed, reset µs, retry µs).
type Answer = (i64, i64, i64);

/// A decision waiting for a script call.
struct Pending {
    bucket: String,
    quota: RateLimit,
    consume: bool,
    /// `None` when the call failed: the caller decides locally.
    reply: oneshot::Sender<Option<Answer>>,
}

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
    /// Script calls made (one per batch).
    pub script_calls: AtomicU64,
    /// Decisions per call at most; 1 sends each request's own call.
    batch: usize,
    queue: mpsc::Sender<Pending>,
    /// Taken by the task that sends batches ([`Self::maintain`]).
    queued: Mutex<Option<mpsc::Receiver<Pending>>>,
}

impl RedisRateLimiter {
    /// `batch`: decisions per script call at most ([`MAX_BATCH`] in
    /// production; 1 makes one call per request, for comparison).
    pub fn new(url: &str, local: Arc<LocalRateLimiter>, batch: usize) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|_| "the Redis URL is not valid (expected redis://host:port[/db])")?;
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
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
            script_calls: AtomicU64::new(0),
            batch: batch.clamp(1, MAX_BATCH),
            queue,
            queued: Mutex::new(Some(queued)),
        })
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Until `stop`: keeps a connection open and sends queued decisions.
    pub async fn maintain(self: Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::join!(
            self.clone().keep_connected(stop.clone()),
            self.send_batches(stop)
        );
    }

    /// Reconnects whenever a call found the connection broken.
    async fn keep_connected(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
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

    /// Takes queued decisions, up to `batch` per script call, with at most
    /// [`CALLS_IN_FLIGHT`] calls out.
    async fn send_batches(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut queued) = self.queued.lock().await.take() else {
            return;
        };
        let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let first = tokio::select! {
                first = queued.recv() => first,
                _ = stop.changed() => None,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < self.batch {
                match queued.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                let answers = this.call(&batch).await;
                for (i, pending) in batch.into_iter().enumerate() {
                    let answer = answers.as_ref().and_then(|a| a.get(i).copied());
                    let _ = pending.reply.send(answer);
                }
                drop(permit);
            });
        }
    }

    /// One script call deciding `batch` in order; `None` when Redis did not
    /// answer in time (the connection is then dropped and rebuilt).
    async fn call(&self, batch: &[Pending]) -> Option<Vec<Answer>> {
        let mut conn = self.connection()?;
        let mut call = self.script.prepare_invoke();
        for p in batch {
            call.key(format!("keyflow:rl:{}", p.bucket))
                .arg(p.quota.emission_interval_us())
                .arg(p.quota.period_us())
                .arg(u8::from(p.consume));
        }
        let answer: Result<redis::RedisResult<Vec<i64>>, _> =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn)).await;
        self.script_calls.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(Ok(flat)) if flat.len() == 3 * batch.len() => {
                self.redis_calls
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Some(flat.chunks_exact(3).map(|a| (a[0], a[1], a[2])).collect())
            }
            _ => {
                self.lost_connection();
                None
            }
        }
    }

    /// One decision from Redis: its own call when batching is off, else
    /// through the queue. `None` when Redis could not decide in time.
    async fn ask_redis(&self, bucket: &str, quota: RateLimit, consume: bool) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            bucket: bucket.to_string(),
            quota,
            consume,
            reply,
        };
        if self.batch == 1 {
            return self
                .call(std::slice::from_ref(&pending))
                .await?
                .first()
                .copied();
        }
        self.connection()?;
        let queued = async {
            self.queue.send(pending).await.ok()?;
            answer.await.ok()?
        };
        // The call itself is bounded by CALL_TIMEOUT; this also bounds the
        // wait for a place in the queue.
        tokio::time::timeout(CALL_TIMEOUT * 2, queued)
            .await
            .ok()
            .flatten()
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
        let Some((allowed, reset_us, retry_us)) = self.ask_redis(bucket, quota, consume).await
        else {
            return self.decide_locally(bucket, quota, now_ms, consume);
        };
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

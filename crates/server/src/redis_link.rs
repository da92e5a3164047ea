//! Several instances (SPEC §11): committed changes cross instances through
//! Redis pub/sub, so a key revoked on one instance stops working on all of
//! them at once rather than when their caches expire.
//!
//! Every change this instance publishes on its bus is also sent to the
//! channel [`CHANNEL`]; every change another instance sends there drops the
//! matching entries of this instance's caches. A message from Redis can only
//! ever make this instance forget a cached entry (and read it again from the
//! database), never grant or change anything, so a forged message costs a
//! database read at most.
//!
//! Pub/sub keeps no backlog, so whenever the subscription is (re)made the
//! instance drops all its caches: it may have missed messages. While Redis
//! is unreachable nothing fails; the instance drops its caches every
//! [`UNREACHABLE_CACHE_LIFETIME`] instead, says so in its log, in `/readyz`
//! and in `/metrics`, and keeps trying to reconnect. Rate limits are still
//! kept per instance (a shared limiter is the next step).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::changes::Change;
use crate::state::KeyCache;

/// The pub/sub channel every instance of a deployment shares.
pub const CHANNEL: &str = "keyflow:changes";

/// How long a cached key may live while Redis is unreachable (SPEC §11).
pub const UNREACHABLE_CACHE_LIFETIME: Duration = Duration::from_secs(5);

/// Changes waiting to be sent at most; past it the instance tells the others
/// to drop everything once it can send again.
const OUTBOX: usize = 10_000;

/// How often the subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What crosses Redis: a change, or (none) "drop every cache".
#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    /// The sending instance, so it ignores its own messages.
    from: String,
    change: Option<Change>,
}

pub struct RedisLink {
    client: redis::Client,
    /// This instance's id on the channel (random per start).
    instance: String,
    outbox: mpsc::Sender<String>,
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<String>>>,
    /// A change could not be queued: the others must drop everything.
    missed: AtomicBool,
    subscribed: AtomicBool,
    /// Changes received from other instances (for `/metrics`).
    pub received: AtomicU64,
}

impl RedisLink {
    /// Parses the URL; connects only when [`RedisLink::run`] starts.
    pub fn new(url: &str) -> Result<Self, String> {
        if url.starts_with("rediss://") {
            return Err(
                "TLS to Redis (rediss://) is not supported by this build: use redis:// \
                        on a private network or through a TLS tunnel"
                    .into(),
            );
        }
        let client = redis::Client::open(url).map_err(|_| {
            "the Redis URL is not valid (expected redis://[user:password@]host:port[/db])"
                .to_string()
        })?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        Ok(Self {
            client,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(outbox_rx)),
            missed: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            received: AtomicU64::new(0),
        })
    }

    /// Whether this instance currently hears other instances' changes.
    pub fn is_connected(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Queues a committed change for the other instances (a bus listener:
    /// must not block).
    pub fn forward(&self, change: &Change) {
        let message = Message {
            from: self.instance.clone(),
            change: Some(change.clone()),
        };
        let Ok(text) = serde_json::to_string(&message) else {
            return;
        };
        if self.outbox.try_send(text).is_err() {
            self.missed.store(true, Ordering::Relaxed);
        }
    }

    /// Runs the sender and the listener until `stop` turns true.
    pub async fn run(self: Arc<Self>, cache: Arc<KeyCache>, stop: watch::Receiver<bool>) {
        let outbox = self
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(outbox) = outbox else {
            return;
        };
        let sender = tokio::spawn(self.clone().send_changes(outbox, stop.clone()));
        self.listen(cache, stop).await;
        let _ = sender.await;
    }

    /// Publishes queued changes, reconnecting as needed; a change that could
    /// not be sent is sent again after the reconnect.
    async fn send_changes(
        self: Arc<Self>,
        mut outbox: mpsc::Receiver<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut pending: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = tokio::select! {
                c = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection()) => c,
                _ = stop.changed() => return,
            };
            let mut conn = match connected {
                Ok(Ok(conn)) => conn,
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                if self.missed.swap(false, Ordering::Relaxed) {
                    pending = Some(self.drop_everything_message());
                }
                let text = match pending.take() {
                    Some(text) => text,
                    None => tokio::select! {
                        next = outbox.recv() => match next {
                            Some(text) => text,
                            None => return,
                        },
                        _ = stop.changed() => return,
                    },
                };
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(&text)
                    .query_async(&mut conn)
                    .await;
                if sent.is_err() {
                    pending = Some(text);
                    break;
                }
            }
        }
    }

    fn drop_everything_message(&self) -> String {
        let message = Message {
            from: self.instance.clone(),
            change: None,
        };
        serde_json::to_string(&message).unwrap_or_default()
    }

    /// Sends `changes` to every instance once, from a process that is not
    /// one (the CLI): they drop what the changes make stale at once.
    pub async fn publish_once(url: &str, changes: &[Change]) -> Result<(), String> {
        let link = Self::new(url)?;
        let unreachable = |e: &dyn std::fmt::Display| format!("Redis did not take the change: {e}");
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 5,
            link.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
        let publish = async {
            for change in changes {
                let message = Message {
                    from: format!("cli_{}", link.instance),
                    change: Some(change.clone()),
                };
                let text = serde_json::to_string(&message).map_err(|e| unreachable(&e))?;
                let _listeners: i64 = redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(&text)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unreachable(&e))?;
            }
            Ok(())
        };
        // A Redis that takes the connection but never answers must not
        // hold the command.
        tokio::time::timeout(CONNECT_TIMEOUT * 5, publish)
            .await
            .map_err(|e| unreachable(&e))?
    }

    /// Subscribes and applies other instances' changes to `cache`; while the
    /// subscription is down, drops the caches every few seconds and retries.
    async fn listen(&self, cache: Arc<KeyCache>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut told_unreachable = false;
        let mut last_clear = tokio::time::Instant::now();
        loop {
            match self.listen_once(&cache, &mut stop).await {
                Listened::Stopped => return,
                Listened::Lost(reason) => {
                    self.subscribed.store(false, Ordering::Relaxed);
                    cache.clear_all();
                    last_clear = tokio::time::Instant::now();
                    backoff = Duration::from_millis(100);
                    warn_unreachable(&reason);
                    told_unreachable = true;
                }
                Listened::Failed(reason) => {
                    if !told_unreachable {
                        warn_unreachable(&reason);
                        told_unreachable = true;
                    }
                }
            }
            if last_clear.elapsed() >= UNREACHABLE_CACHE_LIFETIME {
                cache.clear_all();
                last_clear = tokio::time::Instant::now();
            }
            let wait = backoff.min(UNREACHABLE_CACHE_LIFETIME.saturating_sub(last_clear.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn listen_once(&self, cache: &KeyCache, stop: &mut watch::Receiver<bool>) -> Listened {
        // Bounded: a host that drops packets must not hold the loop that
        // expires caches while Redis is away.
        let pubsub = tokio::select! {
            p = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()) => p,
            _ = stop.changed() => return Listened::Stopped,
        };
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Listened::Failed(e.to_string()),
            Err(_) => return Listened::Failed("no answer within 1 s".into()),
        };
        if let Err(e) = pubsub.subscribe(CHANNEL).await {
            return Listened::Failed(e.to_string());
        }
        // Whatever was published while we were not listening is lost.
        cache.clear_all();
        self.subscribed.store(true, Ordering::Relaxed);
        tracing::info!("Redis connected: changes made on other instances reach this one at once");
        let (mut sink, mut messages) = pubsub.split();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Listened::Lost("the subscription closed".into());
                    };
                    let Ok(text) = message.get_payload::<String>() else { continue };
                    self.apply(cache, &text);
                }
                _ = ping.tick() => {
                    // Subscribed, Redis answers PING with ["pong", ""].
                    let answered = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return Listened::Lost("Redis did not answer a PING within 1 s".into());
                    }
                }
                _ = stop.changed() => return Listened::Stopped,
            }
        }
    }

    /// One message from the channel: drops what it names, nothing else.
    fn apply(&self, cache: &KeyCache, text: &str) {
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            return;
        };
        if message.from == self.instance {
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        match message.change {
            Some(change) => crate::changes::drop_cached(cache, &change),
            None => cache.clear_all(),
        }
    }
}

fn warn_unreachable(reason: &str) {
    tracing::warn!(
        reason = %reason,
        "Redis is unreachable: changes from other instances arrive only as cached keys \
         expire (at most every 5 s) until it is back; rate limits are per instance"
    );
}

enum Listened {
    Stopped,
    /// Was subscribed, then lost it.
    Lost(String),
    /// Could not subscribe.
    Failed(String),
}

//! `keyflow-limiter-bench`: the Redis rate limiter (SPEC §11) deciding for
//! concurrent requests, one script call per request against batched calls,
//! with one, two and three limiters ("instances") on one Redis. Starts its
//! own `redis-server` on a free loopback port unless `--redis-url` is given.
//! See docs/benchmarks.md ("Shared rate limits").
//!
//! The mix: `--tasks` concurrent requests per instance, each deciding for
//! one of `--keys` keys (category `read`, a limit high enough to admit all),
//! back to back for `--seconds`; then one key under 10× its limit, to count
//! Redis decisions per refused request.

mod redis_server;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use keyflow_core::RateLimit;
use keyflow_server::limits::{LocalRateLimiter, RateLimiter};
use keyflow_server::redis_limiter::{MAX_BATCH, RedisRateLimiter};

#[derive(Parser)]
struct Args {
    /// Redis to use; by default a throwaway `redis-server` is started.
    #[arg(long)]
    redis_url: Option<String>,
    /// Seconds per figure.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent requests per instance.
    #[arg(long, default_value_t = 256)]
    tasks: usize,
    /// Distinct keys the requests are spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

/// Redis' own CPU time so far (user + system), from `INFO cpu`.
fn redis_cpu_seconds(url: &str) -> Result<f64> {
    let port = url.rsplit(':').next().context("Redis URL without a port")?;
    let out = Command::new("redis-cli")
        .args(["-p", port.trim_end_matches('/'), "info", "cpu"])
        .output()
        .context("redis-cli must be installed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

type Instance = (Arc<RedisRateLimiter>, tokio::sync::watch::Sender<bool>);

async fn instances(url: &str, n: usize, batch: usize) -> Result<Vec<Instance>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let limiter = Arc::new(
            RedisRateLimiter::new(url, Arc::new(LocalRateLimiter::default()), batch)
                .map_err(anyhow::Error::msg)?,
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(limiter.clone().maintain(stopped));
        let started = Instant::now();
        while !limiter.is_reachable() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("Redis unreachable");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.push((limiter, stop));
    }
    Ok(out)
}

struct Figure {
    decisions: u64,
    /// Redis CPU seconds spent during the figure.
    redis_cpu: f64,
    calls: u64,
    local: u64,
    p50: Duration,
    p99: Duration,
}

/// `tasks` requests per instance deciding back to back for `seconds`.
async fn admitted(args: &Args, url: &str, n: usize, batch: usize, run: &str) -> Result<Figure> {
    let instances = instances(url, n, batch).await?;
    let quota = RateLimit::per_minute(1_000_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let cpu_before = redis_cpu_seconds(url)?;
    let mut tasks = Vec::new();
    for (i, (limiter, _)) in instances.iter().enumerate() {
        for t in 0..args.tasks {
            let (limiter, stop, counter) = (limiter.clone(), stop.clone(), counter.clone());
            let keys = args.keys;
            let run = run.to_string();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = (i * 7919 + t) % keys;
                while !stop.load(Ordering::Relaxed) {
                    let bucket = format!("{run}-k{n}:read");
                    let asked = Instant::now();
                    let decision = limiter.check(&bucket, quota, 0, true).await;
                    latencies.push(asked.elapsed());
                    assert!(decision.allowed, "the limit admits everyone");
                    counter.fetch_add(1, Ordering::Relaxed);
                    n = (n + 1) % keys;
                }
                latencies
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let redis_cpu = redis_cpu_seconds(url)? - cpu_before;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let sum = |f: fn(&RedisRateLimiter) -> &AtomicU64| {
        instances
            .iter()
            .map(|(l, _)| f(l).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let figure = Figure {
        decisions: counter.load(Ordering::Relaxed),
        redis_cpu,
        calls: sum(|l| &l.script_calls),
        local: sum(|l| &l.local_decisions),
        p50: at(0.5),
        p99: at(0.99),
    };
    for (_, stop) in instances {
        let _ = stop.send(true);
    }
    Ok(figure)
}

/// One key, limit 1 000 per hour, 10 000 requests from `tasks` clients over
/// `n` instances: (admitted, Redis decisions, script calls).
async fn overload(url: &str, n: usize, batch: usize, run: &str) -> Result<(u64, u64, u64)> {
    let instances = instances(url, n, batch).await?;
    let quota = RateLimit {
        limit: 1_000,
        period_seconds: 3_600,
    };
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..48 {
        let limiter = instances[c % n].0.clone();
        let admitted = admitted.clone();
        let bucket = format!("{run}-overload:read");
        tasks.push(tokio::spawn(async move {
            for _ in 0..10_000 / 48 + 1 {
                if limiter.check(&bucket, quota, 0, true).await.allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let decided: u64 = instances
        .iter()
        .map(|(l, _)| l.redis_calls.load(Ordering::Relaxed))
        .sum();
    let calls: u64 = instances
        .iter()
        .map(|(l, _)| l.script_calls.load(Ordering::Relaxed))
        .sum();
    for (_, stop) in instances {
        let _ = stop.send(true);
    }
    Ok((admitted.load(Ordering::Relaxed), decided, calls))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (_server, url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let (server, url) = redis_server::start()?;
            (Some(server), url)
        }
    };
    println!(
        "{} requests in flight per instance over {} keys, {} s per figure",
        args.tasks, args.keys, args.seconds
    );
    println!(
        "| instances | decisions per call | decisions/s | script calls per decision | Redis CPU per decision | one Redis core's ceiling | p50 | p99 | decided locally |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [1, 2, 3] {
        for batch in [1, MAX_BATCH] {
            let run = format!("{}-{n}-{batch}", std::process::id());
            let f = admitted(&args, &url, n, batch, &run).await?;
            let cpu_per_decision = f.redis_cpu / f.decisions.max(1) as f64;
            println!(
                "| {n} | {} | {:.0} | {:.3} | {:.2} µs | {:.0} k/s | {:.2} ms | {:.2} ms | {} |",
                if batch == 1 {
                    "1".to_string()
                } else {
                    format!("≤ {batch}")
                },
                f.decisions as f64 / args.seconds as f64,
                f.calls as f64 / f.decisions.max(1) as f64,
                cpu_per_decision * 1e6,
                1.0 / cpu_per_decision.max(1e-12) / 1e3,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.local
            );
        }
    }
    println!();
    println!(
        "| instances | decisions per call | sent | admitted (limit 1 000) | Redis decisions | script calls |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [1, 3] {
        for batch in [1, MAX_BATCH] {
            let run = format!("{}-o{n}-{batch}", std::process::id());
            let (admitted, decided, calls) = overload(&url, n, batch, &run).await?;
            println!(
                "| {n} | {} | {} | {admitted} | {decided} | {calls} |",
                if batch == 1 {
                    "1".to_string()
                } else {
                    format!("≤ {batch}")
                },
                48 * (10_000 / 48 + 1)
            );
        }
    }
    Ok(())
}

//! `keyflow-bench`: starts a real `keyflow serve` (release build) on a fresh
//! data dir, drives it over loopback and prints a table of figures measured in
//! the same run, so the ratios hold on whatever machine runs it:
//!
//! - `GET /livez` — the binary's own HTTP ceiling;
//! - `POST /v1/events`, one event per request — ratio to `/livez`;
//! - `POST /v1/events/batch`, 100 events per request — events/s, and the ratio
//!   to a raw SQLite insert of the same rows (one transaction per 100 rows,
//!   WAL, `synchronous=FULL`: the same durability Keyflow acknowledges with).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The keyflow binary to benchmark (build it with --release).
    #[arg(long, default_value = "target/release/keyflow")]
    keyflow: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

struct Figure {
    requests: u64,
    elapsed: Duration,
    p50_us: u64,
    p99_us: u64,
}

impl Figure {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_server(binary: &str) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let child = Command::new(binary)
        .args(["--data-dir", &dir.path().display().to_string(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KEYFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!("cannot start {binary}; build it with `cargo build --release -p keyflow`")
        })?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("keyflow did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Server {
        child,
        base,
        _dir: dir,
    })
}

async fn admin(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Result<Value> {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("{path}: {}", r.text().await?);
    }
    Ok(r.json().await?)
}

/// A secret key whose quota the benchmark cannot exhaust.
async fn bench_key(base: &str) -> Result<String> {
    let client = reqwest::Client::new();
    let ws = admin(
        &client,
        base,
        "/admin/v1/workspaces",
        json!({"name": "bench", "plan": "pro"}),
    )
    .await?;
    let ws_id = ws["id"].as_str().context("workspace id")?;
    let project = admin(
        &client,
        base,
        &format!("/admin/v1/workspaces/{ws_id}/projects"),
        json!({"name": "bench"}),
    )
    .await?;
    let project_id = project["id"].as_str().context("project id")?;
    let key = admin(
        &client,
        base,
        &format!("/admin/v1/projects/{project_id}/keys"),
        json!({"name": "bench", "type": "secret", "rate_limit": {"limit": 1_000_000, "period_seconds": 1}}),
    )
    .await?;
    Ok(key["key"].as_str().context("key")?.to_string())
}

fn event(i: u64) -> Value {
    json!({"name": "page_view", "anonymous_id": format!("visitor-{}", i % 1000), "properties": {"path": "/pricing", "n": i}})
}

/// Drives `make_request` from `connections` concurrent tasks for `seconds`.
async fn drive<F>(connections: usize, seconds: u64, make_request: F) -> Result<Figure>
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let make_request = Arc::new(make_request);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (client, make_request) = (client.clone(), make_request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker as u64 * 1_000_000;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = make_request(&client, i).send().await?;
                if !response.status().is_success() {
                    bail!(
                        "request failed: {} {}",
                        response.status(),
                        response.text().await?
                    );
                }
                response.bytes().await?;
                latencies.push(sent.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Figure {
        requests: all.len() as u64,
        elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

/// The same rows straight into SQLite: one transaction per 100 events.
async fn raw_sqlite_events_per_second(seconds: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("raw.db").display());
    let store = keyflow_store::connect(&url).await?;
    store.migrate().await?;
    drop(store);
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("INSERT INTO workspaces (id, name, plan, created_at) VALUES ('w', 'w', 'pro', 0)")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO projects (id, workspace_id, name, environment, created_at) VALUES ('p', 'w', 'p', 'live', 0)")
        .execute(&mut conn)
        .await?;
    let values: Vec<String> = (0..100)
        .map(|r| {
            format!(
                "(${}, 'p', 'page_view', NULL, ${}, ${}, 0, 0, NULL)",
                r * 3 + 1,
                r * 3 + 2,
                r * 3 + 3
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO events (id, project_id, name, contact_id, anonymous_id, properties, timestamp, received_at, idempotency_key) VALUES {}",
        values.join(", ")
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut rows = 0u64;
    while Instant::now() < deadline {
        let mut tx = sqlx::Connection::begin(&mut conn).await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for _ in 0..100 {
            let e = event(rows);
            q = q
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(e["anonymous_id"].as_str().unwrap_or_default().to_string())
                .bind(e["properties"].to_string());
            rows += 1;
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = start_server(&args.keyflow).await?;
    let key = bench_key(&server.base).await?;
    let base = server.base.clone();
    println!(
        "keyflow-bench: {} s per figure, {} connections, binary {}",
        args.seconds, args.connections, args.keyflow
    );

    let b = base.clone();
    let livez = drive(args.connections, args.seconds, move |c, _| {
        c.get(format!("{b}/livez"))
    })
    .await?;
    let (b, k) = (base.clone(), key.clone());
    let single = drive(args.connections, args.seconds, move |c, i| {
        c.post(format!("{b}/v1/events"))
            .bearer_auth(&k)
            .json(&event(i))
    })
    .await?;
    let (b, k) = (base.clone(), key.clone());
    let batch = drive(args.connections, args.seconds, move |c, i| {
        let events: Vec<Value> = (0..100).map(|j| event(i * 100 + j)).collect();
        c.post(format!("{b}/v1/events/batch"))
            .bearer_auth(&k)
            .json(&json!({"events": events}))
    })
    .await?;
    drop(server);
    let raw = raw_sqlite_events_per_second(args.seconds).await?;

    let batch_events = batch.per_second() * 100.0;
    println!();
    println!("| figure | rate | p50 | p99 | ratio | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `GET /livez` | {:.0} req/s | {} µs | {} µs | 1.00 | — |",
        livez.per_second(),
        livez.p50_us,
        livez.p99_us
    );
    println!(
        "| `POST /v1/events` (1 event) | {:.0} req/s | {} µs | {} µs | {:.2} of /livez | ≥ 0.40 |",
        single.per_second(),
        single.p50_us,
        single.p99_us,
        single.per_second() / livez.per_second()
    );
    println!(
        "| `POST /v1/events/batch` (100 events) | {:.0} events/s | {} µs | {} µs | {:.2} of raw SQLite | ≥ 0.50 |",
        batch_events,
        batch.p50_us,
        batch.p99_us,
        batch_events / raw
    );
    println!("| raw SQLite insert, 100 rows per transaction | {raw:.0} events/s | | | 1.00 | — |");
    Ok(())
}

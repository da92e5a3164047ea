//! `keyflow-metrics-bench`: loads a project with millions of events through
//! the store's own ingest path (the one `/v1/events/batch` uses, roll-ups
//! included), then times the predefined metrics' queries uncached, on SQLite
//! (an on-disk file) and on PostgreSQL (a scratch database, dropped after).
//! See docs/benchmarks.md ("Metrics API").
//!
//! The mix: a fifth of the events name one of `--users` users by
//! `external_id` (contacts created on first sight, like server-side
//! tracking), the rest are anonymous; `--names` event names with skewed
//! frequencies; timestamps spread over the last `--days` days.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use keyflow_core::events::{EventIdentity, NewEvent};
use keyflow_core::{Environment, Plan};
use keyflow_store::areas::metrics::{DAY_MS, bucket_start};
use keyflow_store::{Buckets, Project, Store, Workspace, new_id};

#[derive(Parser)]
struct Args {
    /// Events to load per backend.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Distinct identified users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Distinct event names.
    #[arg(long, default_value_t = 20)]
    names: u64,
    /// Days the timestamps cover (and the series asks for).
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Events per ingest call.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Ingest calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Timed runs per query.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Timed runs per tenant SQL query (`POST /v1/metrics/query`'s path).
    #[arg(long, default_value_t = 5)]
    sql_runs: usize,
    #[arg(
        long,
        env = "KEYFLOW_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    #[arg(long)]
    no_postgres: bool,
    #[arg(long)]
    no_sqlite: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.no_sqlite {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("metrics.db").display());
        run("SQLite", &url, &args).await?;
    }
    if !args.no_postgres {
        let admin = sqlx::PgPool::connect(&args.postgres_url)
            .await
            .context("connecting to PostgreSQL (--no-postgres skips it)")?;
        let db = format!("keyflow_metrics_bench_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await?;
        let base = args
            .postgres_url
            .rsplit_once('/')
            .map_or(args.postgres_url.as_str(), |(base, _)| base);
        let result = run("PostgreSQL", &format!("{base}/{db}"), &args).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        // The tenant SQL reader role the server made for that database.
        let role: String = sqlx::query_scalar("SELECT 'keyflow_tenant_' || left(md5($1), 12)")
            .bind(&db)
            .fetch_one(&admin)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS \"{role}\""
        )))
        .execute(&admin)
        .await?;
        result?;
    }
    Ok(())
}

async fn run(label: &str, url: &str, args: &Args) -> Result<()> {
    let store: Arc<dyn Store> = keyflow_store::connect(url).await?;
    store.migrate().await?;
    let workspace = Workspace {
        id: new_id(),
        name: "bench".into(),
        plan: Plan::Team,
        created_at: 0,
    };
    store.create_workspace(&workspace).await?;
    let project = Project {
        id: new_id(),
        workspace_id: workspace.id.clone(),
        name: "bench".into(),
        environment: Environment::Live,
        created_at: 0,
    };
    store.create_project(&project).await?;
    let now = now_ms();
    let start = bucket_start(now, DAY_MS) - (args.days - 1) * DAY_MS;
    let span = now - start;

    let loading = Instant::now();
    let batches = args.events.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (store, next, project_id) = (store.clone(), next.clone(), project.id.clone());
        let (events, batch, users, names) = (args.events, args.batch, args.users, args.names);
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= batches {
                    return Ok::<_, anyhow::Error>(());
                }
                let first = b * batch;
                let last = (first + batch).min(events);
                let batch: Vec<NewEvent> = (first..last)
                    .map(|i| event(i, events, users, names, start, span))
                    .collect();
                store.ingest_events(&project_id, batch, now).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let load = loading.elapsed();
    println!(
        "\n## {label}: {} events loaded in {:.1} s ({:.0} events/s through the store's ingest, roll-ups included; {} concurrent calls of {})",
        args.events,
        load.as_secs_f64(),
        args.events as f64 / load.as_secs_f64(),
        args.concurrency,
        args.batch
    );

    // What the server does every 30 s: fold the slots of closed buckets.
    let folding = Instant::now();
    let mut folded = 0;
    loop {
        let n = store.compact_rollups(now_ms()).await?;
        folded += n;
        if n == 0 {
            break;
        }
    }
    println!(
        "(then {folded} roll-up rows folded from slots in {:.1} s, as the server does every 30 s)",
        folding.elapsed().as_secs_f64()
    );

    let days = Buckets {
        from: start,
        to: start + args.days * DAY_MS,
        width: DAY_MS,
    };
    let popular = name(0);
    println!(
        "\n| query ({} daily buckets, uncached) | p50 | p99 | max |",
        args.days
    );
    println!("|---|---|---|---|");
    let p = project.id.as_str();
    time(args.runs, "events.count, all events", || async {
        store.event_counts(p, days, None).await.map(|_| ())
    })
    .await?;
    time(args.runs, "events.count, one event name", || async {
        store
            .event_counts(p, days, Some(&popular))
            .await
            .map(|_| ())
    })
    .await?;
    time(args.runs, "events.unique_contacts, any event", || async {
        store.unique_contacts(p, days, None).await.map(|_| ())
    })
    .await?;
    time(
        args.runs,
        "events.unique_contacts, one event name",
        || async {
            store
                .unique_contacts(p, days, Some(&popular))
                .await
                .map(|_| ())
        },
    )
    .await?;
    time(args.runs, "events.top", || async {
        store.top_events(p, days).await.map(|_| ())
    })
    .await?;
    time(args.runs, "contacts.created", || async {
        store.contacts_created(p, days).await.map(|_| ())
    })
    .await?;
    let total: i64 = store
        .event_counts(p, days, None)
        .await?
        .iter()
        .map(|point| point.value)
        .sum();
    anyhow::ensure!(
        total == args.events as i64,
        "the roll-ups count {total} events, {} were loaded",
        args.events
    );
    println!("\n(check: the daily series adds up to the {total} events loaded)");

    // Tenant SQL reads the events themselves (through the project's views),
    // not the roll-ups: what a query costs grows with what it touches.
    println!(
        "\n| tenant SQL (`POST /v1/metrics/query`, uncached, no time limit) | p50 | p99 | max |"
    );
    println!("|---|---|---|---|");
    let dialect = store.tenant_dialect();
    let limits = keyflow_store::tenant_sql::Limits {
        timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let one_user = "SELECT count(*) FROM events WHERE contact_id = \
                    (SELECT id FROM contacts WHERE external_id = 'user-42')";
    let last_day = format!(
        "SELECT count(*) FROM events WHERE name = '{popular}' AND timestamp >= {}",
        days.to - DAY_MS
    );
    for (label, sql) in [
        ("one user's events (index on contact)", one_user.to_string()),
        (
            "count of contacts",
            "SELECT count(*) FROM contacts".to_string(),
        ),
        (
            "count of all events",
            "SELECT count(*) FROM events".to_string(),
        ),
        ("one name over the last day (scans the project)", last_day),
        (
            "events per name (scans the project)",
            "SELECT name, count(*) AS n FROM events GROUP BY name ORDER BY n DESC".to_string(),
        ),
    ] {
        let query = keyflow_store::tenant_sql::check(&sql, dialect)
            .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        time(args.sql_runs, label, || async {
            store
                .run_tenant_query(p, &query, limits)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{sql}: {e}"))
        })
        .await?;
    }
    Ok(())
}

fn print_row(label: &str, mut took: Vec<Duration>) {
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| {label} | {} | {} | {} |",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}

/// Event `i` of `n`: every fifth names a user, the rest are anonymous;
/// names skewed (the bit length of a hash: about half the events share one
/// name, a quarter the next, and so on); timestamps spread evenly over
/// `span` from `start`.
fn event(i: u64, n: u64, users: u64, names: u64, start: i64, span: i64) -> NewEvent {
    let skew = (i.wrapping_mul(2_654_435_761) % 1024).leading_zeros() as u64;
    let name_index = (64 - skew).min(names - 1) % names;
    let identity = if i.is_multiple_of(5) {
        EventIdentity::ExternalId {
            external_id: format!("user-{}", (i / 5).wrapping_mul(7919) % users),
            email: None,
        }
    } else {
        EventIdentity::Anonymous
    };
    let anonymous_id =
        matches!(identity, EventIdentity::Anonymous).then(|| format!("visitor-{}", i % 50_000));
    NewEvent {
        name: name(name_index),
        identity,
        anonymous_id,
        properties: r#"{"path":"/pricing","plan":"pro"}"#.to_string(),
        timestamp: start + (span as u128 * u128::from(i) / u128::from(n)) as i64,
        idempotency_key: None,
    }
}

fn name(k: u64) -> String {
    format!("event_{k:02}")
}

async fn time<F, Fut, E>(runs: usize, label: &str, query: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
    anyhow::Error: From<E>,
{
    query().await?;
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let began = Instant::now();
        query().await?;
        took.push(began.elapsed());
    }
    print_row(label, took);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

//! `keyflow-bench`: starts a real `keyflow serve` (release build) on a fresh
//! SQLite data dir and then on a fresh PostgreSQL database, creates a key and
//! a contact through the admin API, drives each route with `wrk` over
//! loopback and prints tables of figures measured in the same run, so the
//! ratios hold on whatever machine runs it. See docs/benchmarks.md.

mod import_bench;
mod instances;
mod raw;
mod redis_server;
mod server;
mod workflows_bench;
mod wrk;

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use server::{Backend, Server};
use wrk::{Figure, Load, Wrk};

#[derive(Parser)]
struct Args {
    /// The keyflow binary to benchmark (build it with --release).
    #[arg(long, default_value = "target/release/keyflow")]
    keyflow: String,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per route figure: each round runs `/livez`, then the route,
    /// back to back; the round with the median ratio is reported. On a
    /// shared machine whose speed drifts, a ratio of two runs seconds apart
    /// is far steadier than two figures measured minutes apart.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads (each takes CPU from the server on a small machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// PostgreSQL server for the second half; a scratch database is created
    /// on it and dropped afterwards.
    #[arg(
        long,
        env = "KEYFLOW_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Skip the PostgreSQL half.
    #[arg(long)]
    no_postgres: bool,
    /// Fresh starts timed for the start-to-ready figure (the median is shown).
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Instead of the tables above: 1, 2 and 3 instances on one PostgreSQL
    /// database and one Redis (a throwaway `redis-server`), authenticated
    /// reads and identified batches spread over them (SPEC §11).
    #[arg(long)]
    instances: bool,
    /// Instead of the tables above: batch ingest with no workflow, 10 that
    /// do not match and one that matches; trigger-to-webhook latency; webhook
    /// steps per second (issue 15).
    #[arg(long)]
    workflows: bool,
    /// Instead of the tables above: `keyflow contacts import` of generated
    /// files of these sizes (comma-separated row counts), again, and
    /// `export`: rows per second and peak memory (issue 17).
    #[arg(long, value_delimiter = ',')]
    import: Vec<usize>,
}

/// The single event sent by every `POST /v1/events`, and 100 of them per batch.
const EVENT: &str = r#"{"name":"page_view","anonymous_id":"visitor-1","properties":{"path":"/pricing","plan":"pro"}}"#;
const ANONYMOUS_ID: &str = "visitor-1";
const PROPERTIES: &str = r#"{"path":"/pricing","plan":"pro"}"#;

/// What server-side clients send (SPEC §3, Segment's libraries): an
/// `external_id` from a population of 1 000 users (`index`, a Lua expression
/// over `n`, `t` and `i`), an idempotency key (`key`, a Lua expression: a
/// fresh random UUID per event, as those libraries make them, or a repeat),
/// two properties. See `wrk::generated`.
fn identified_event(index: &str, key: &str) -> String {
    format!(
        "string.format('{{\"name\":\"purchase\",\"external_id\":\"user-%d\",\
         \"idempotency_key\":\"%s\",\"properties\":{{\"plan\":\"pro\",\"amount\":%d}}}}', \
         ({index}) % 1000, {key}, n)"
    )
}

/// A fresh random idempotency key per event (see `wrk::generated`).
const FRESH_KEY: &str = "uuid()";
/// One of 1 000 keys sent over and over (retries, replays): after the first
/// 1 000 requests every event is a duplicate.
const SEEN_KEY: &str = "string.format('seen-%d', n % 1000)";

/// 100 identified events per request with fresh keys, as `/v1/events/batch`
/// takes them.
fn identified_batch() -> String {
    let one = identified_event("n * 100 + i", FRESH_KEY);
    format!(
        "(function() local e = {{}}; for i = 1, 100 do e[i] = {one} end; \
         return '{{\"events\":[' .. table.concat(e, ',') .. ']}}' end)()"
    )
}

/// 100 identified events per request, each for a user never seen before
/// (a new contact per event), with fresh idempotency keys: what a matching
/// workflow costs when no loop guard stops its runs.
fn fresh_users_batch(run: &str) -> String {
    format!(
        "(function() local e = {{}}; for i = 1, 100 do e[i] = string.format(\
         '{{\"name\":\"purchase\",\"external_id\":\"{run}-%d-%d-%d\",\
         \"idempotency_key\":\"%s\",\"properties\":{{\"plan\":\"pro\",\"amount\":%d}}}}', \
         t, n, i, uuid(), n) end; \
         return '{{\"events\":[' .. table.concat(e, ',') .. ']}}' end)()"
    )
}

/// The same 100 events as Segment `track` messages (`userId`, `messageId`).
fn segment_batch() -> String {
    "(function() local e = {}; for i = 1, 100 do e[i] = string.format(\
     '{\"type\":\"track\",\"event\":\"purchase\",\"userId\":\"user-%d\",\
     \"messageId\":\"%s\",\"properties\":{\"plan\":\"pro\",\"amount\":%d}}', \
     (n * 100 + i) % 1000, uuid(), n) end; \
     return '{\"batch\":[' .. table.concat(e, ',') .. ']}' end)()"
        .to_string()
}

/// A route measured against `/livez` in alternating rounds (see `--rounds`).
struct Paired {
    route: Figure,
    livez: Figure,
    /// Every round's ratio, in run order.
    ratios: Vec<f64>,
}

impl Paired {
    fn ratio(&self) -> f64 {
        self.route.requests_per_second / self.livez.requests_per_second
    }
}

fn paired(wrk: &Wrk<'_>, rounds: usize, livez: &Load, route: &Load) -> Result<Paired> {
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        let l = wrk.run(livez)?;
        let r = wrk.run(route)?;
        runs.push((r.requests_per_second / l.requests_per_second, l, r));
    }
    let ratios = runs.iter().map(|(ratio, _, _)| *ratio).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let middle = runs.len() / 2;
    let (_, livez, route) = runs.swap_remove(middle);
    Ok(Paired {
        route,
        livez,
        ratios,
    })
}

struct BackendFigures {
    key_self: Paired,
    contact: Paired,
    single: Paired,
    batch: Figure,
    /// The shapes real clients send (see `identified_event`).
    identified: Paired,
    repeats: Paired,
    identified_batch: Figure,
    segment_batch: Figure,
    rss_idle: u64,
    rss_peak: u64,
    start_to_ready: Duration,
}

async fn measure(args: &Args, wrk: &Wrk<'_>, backend: &Backend) -> Result<BackendFigures> {
    let server = Server::start(&args.keyflow, backend).await?;
    let fixture = server::fixture(&server.base).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle, _) = server.rss()?;
    let url = |path: &str| format!("{}{path}", server.base);
    let key = Some(fixture.key.as_str());
    let livez = Load {
        url: url("/livez"),
        key: None,
        body: None,
        script: None,
    };
    let key_self = paired(
        wrk,
        args.rounds,
        &livez,
        &Load {
            url: url("/v1/keys/self"),
            key,
            body: None,
            script: None,
        },
    )?;
    let contact = paired(
        wrk,
        args.rounds,
        &livez,
        &Load {
            url: url(&format!("/v1/contacts/{}", fixture.contact_id)),
            key,
            body: None,
            script: None,
        },
    )?;
    let single = paired(
        wrk,
        args.rounds,
        &livez,
        &Load {
            url: url("/v1/events"),
            key,
            body: Some(EVENT.to_string()),
            script: None,
        },
    )?;
    let batch = wrk.run(&Load {
        url: url("/v1/events/batch"),
        key,
        body: Some(format!("{{\"events\":[{}]}}", vec![EVENT; 100].join(","))),
        script: None,
    })?;
    let script = |lua_body: String, path: &str| Load {
        url: url(path),
        key,
        body: None,
        script: Some(wrk::generated(&lua_body)),
    };
    let identified = paired(
        wrk,
        args.rounds,
        &livez,
        &script(identified_event("n * 7 + t", FRESH_KEY), "/v1/events"),
    )?;
    // Keys already seen: 1 000 of them, over and over (retries, replays).
    let repeats = paired(
        wrk,
        args.rounds,
        &livez,
        &script(identified_event("n", SEEN_KEY), "/v1/events"),
    )?;
    // Batches at 16 connections, as issue 12 states its p99 target.
    let batches = Wrk {
        connections: 16,
        ..*wrk
    };
    let identified_batch = batches.run(&script(identified_batch(), "/v1/events/batch"))?;
    let segment_batch = batches.run(&script(segment_batch(), "/v1/batch"))?;
    let (_, rss_peak) = server.rss()?;
    Ok(BackendFigures {
        key_self,
        contact,
        single,
        batch,
        identified,
        repeats,
        identified_batch,
        segment_batch,
        rss_idle,
        rss_peak,
        start_to_ready: server.start_to_ready,
    })
}

/// Median time from spawn to `/readyz` 200 over `starts` fresh data dirs.
async fn start_to_ready(args: &Args) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..args.starts.max(1) {
        times.push(
            Server::start(&args.keyflow, &Backend::Sqlite)
                .await?
                .start_to_ready,
        );
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// Raw inserts of the same rows, events/s (see `raw::Rows`).
struct Raw {
    anonymous: f64,
    identified: f64,
}

const ANONYMOUS_ROWS: raw::Rows<'static> = raw::Rows::Anonymous {
    anonymous_id: ANONYMOUS_ID,
    properties: PROPERTIES,
};
const IDENTIFIED_ROWS: raw::Rows<'static> = raw::Rows::Identified {
    properties: PROPERTIES,
};

fn print_table(name: &str, f: &BackendFigures, raw: Raw, raw_label: &str) {
    let raw_events = raw.anonymous;
    let row = |label: &str, fig: &Figure, unit: &str, ratio: String, target: &str| {
        println!(
            "| {label} | {:.0} {unit} | {:.0} µs | {:.0} µs | {ratio} | {target} |",
            fig.requests_per_second, fig.p50_us, fig.p99_us
        );
    };
    let paired_rows = |label: &str, p: &Paired, target: f64| {
        let rounds: Vec<String> = p.ratios.iter().map(|r| format!("{r:.2}")).collect();
        row(
            "↳ `GET /livez`, same round",
            &p.livez,
            "req/s",
            "1.00".into(),
            "—",
        );
        row(
            label,
            &p.route,
            "req/s",
            format!(
                "**{:.2}× /livez** (rounds: {})",
                p.ratio(),
                rounds.join(", ")
            ),
            &format!("≥ {target:.2} — {}", verdict(p.ratio() >= target)),
        );
    };
    println!("\n### {name}\n");
    println!("| figure | rate | p50 | p99 | ratio | target |");
    println!("|---|---|---|---|---|---|");
    paired_rows("`GET /v1/keys/self`", &f.key_self, 0.9);
    paired_rows("`GET /v1/contacts/{id}`", &f.contact, 0.9);
    paired_rows("`POST /v1/events` (1 event)", &f.single, 0.4);
    let batch_events = Figure {
        requests_per_second: f.batch.requests_per_second * 100.0,
        p50_us: f.batch.p50_us,
        p99_us: f.batch.p99_us,
    };
    let r = batch_events.requests_per_second / raw_events;
    row(
        "`POST /v1/events/batch` (100 events)",
        &batch_events,
        "events/s",
        format!("{r:.2}× raw"),
        &format!("≥ 0.50 — {}", verdict(r >= 0.5)),
    );
    println!("| {raw_label} | {raw_events:.0} events/s | | | 1.00 | — |");
    paired_rows(
        "`POST /v1/events` (1 identified event, fresh idempotency key)",
        &f.identified,
        if name.starts_with("SQLite") {
            0.3
        } else {
            0.15
        },
    );
    let vs_anonymous = f.identified.route.requests_per_second / f.single.route.requests_per_second;
    println!(
        "| ↳ identified / anonymous single event | | | | {vs_anonymous:.2} | ≥ 0.80 — {} |",
        verdict(vs_anonymous >= 0.8)
    );
    paired_rows(
        "`POST /v1/events` (1 event, an idempotency key seen before)",
        &f.repeats,
        0.0,
    );
    let per_event = |fig: &Figure| Figure {
        requests_per_second: fig.requests_per_second * 100.0,
        p50_us: fig.p50_us,
        p99_us: fig.p99_us,
    };
    let identified_batch = per_event(&f.identified_batch);
    let vs_batch = identified_batch.requests_per_second / batch_events.requests_per_second;
    row(
        "`POST /v1/events/batch` (100 identified events, 16 connections)",
        &identified_batch,
        "events/s",
        format!("{vs_batch:.2}× anonymous batch"),
        &format!(
            "≥ 0.60 — {}; p99 < 50 ms — {}",
            verdict(vs_batch >= 0.6),
            verdict(identified_batch.p99_us < 50_000.0)
        ),
    );
    println!(
        "| ↳ the same rows written raw (a contact among 1 000, a random key; no lookups) | {:.0} events/s | | | {:.2}× raw | — |",
        raw.identified,
        identified_batch.requests_per_second / raw.identified
    );
    let segment = per_event(&f.segment_batch);
    let vs_identified = segment.requests_per_second / identified_batch.requests_per_second;
    row(
        "Segment `/v1/batch` (the same 100 events as `track` with `userId` + `messageId`)",
        &segment,
        "events/s",
        format!("{vs_identified:.2}× `/v1/events/batch`"),
        &format!("≥ 0.90 — {}", verdict(vs_identified >= 0.9)),
    );
    println!(
        "| RSS idle / peak | {:.1} MiB / {:.1} MiB | | | | ≤ 64 / ≤ 256 MiB — {} |",
        mib(f.rss_idle),
        mib(f.rss_peak),
        verdict(f.rss_idle <= 64 << 20 && f.rss_peak <= 256 << 20)
    );
    println!(
        "| start to `/readyz` 200 (this run) | {:.0} ms | | | | < 200 ms — {} |",
        f.start_to_ready.as_secs_f64() * 1000.0,
        verdict(f.start_to_ready < Duration::from_millis(200))
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let wrk = Wrk {
        seconds: args.seconds,
        connections: args.connections,
        threads: args.threads,
        scratch: scratch.path(),
    };
    println!(
        "keyflow-bench: {} · wrk -t{} -c{} -d{}s · {} rounds per route · binary {}",
        machine(),
        args.threads,
        args.connections,
        args.seconds,
        args.rounds,
        args.keyflow
    );

    if args.instances {
        return instances::run(&args, &wrk).await;
    }
    if args.workflows {
        return workflows_bench::run(&args, &wrk).await;
    }
    if !args.import.is_empty() {
        return import_bench::run(&args, &args.import).await;
    }
    let sqlite = measure(&args, &wrk, &Backend::Sqlite).await?;
    let raw_sqlite = Raw {
        anonymous: raw::sqlite_events_per_second(args.seconds, ANONYMOUS_ROWS).await?,
        identified: raw::sqlite_events_per_second(args.seconds, IDENTIFIED_ROWS).await?,
    };
    let ready = start_to_ready(&args).await?;
    print_table(
        "SQLite (embedded default)",
        &sqlite,
        raw_sqlite,
        "raw SQLite insert, 100 rows per transaction, WAL, synchronous=FULL",
    );
    println!(
        "\nStart to `/readyz` 200 on a fresh SQLite data dir (migrations included), median of {}: {:.0} ms (target < 200 ms — {}).",
        args.starts.max(1),
        ready.as_secs_f64() * 1000.0,
        verdict(ready < Duration::from_millis(200))
    );

    if !args.no_postgres {
        let db = raw::ScratchDatabase::create(&args.postgres_url, "serve").await?;
        let pg = measure(&args, &wrk, &Backend::Postgres(db.url.clone())).await;
        db.drop_now().await?;
        let pg = pg?;
        let mut raw_pg = Raw {
            anonymous: 0.0,
            identified: 0.0,
        };
        for (rows, into) in [
            (ANONYMOUS_ROWS, &mut raw_pg.anonymous),
            (IDENTIFIED_ROWS, &mut raw_pg.identified),
        ] {
            let db = raw::ScratchDatabase::create(&args.postgres_url, "raw").await?;
            let measured = raw::postgres_events_per_second(&db.url, args.seconds, 16, rows).await;
            db.drop_now().await?;
            *into = measured?;
        }
        print_table(
            "PostgreSQL",
            &pg,
            raw_pg,
            "raw PostgreSQL multi-row INSERT, 100 rows per transaction, 16 connections",
        );
    }
    Ok(())
}

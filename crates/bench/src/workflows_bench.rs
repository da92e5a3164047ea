//! `keyflow-bench --workflows`: what workflows cost and how fast they run
//! (issue 15), on SQLite and then PostgreSQL:
//! - batch ingest of identified events (the shape of `--`'s table: 100
//!   events per request, 1 000 users, fresh idempotency keys, 16
//!   connections) with no workflow, with 10 active workflows whose event
//!   does not match, and with one that matches every event;
//! - the same batches with a new user in every event (a contact created
//!   per event, so no loop guard stops the matching workflow's runs),
//!   without and with a workflow that matches every event;
//! - trigger-to-webhook latency on an idle instance, until a loopback
//!   receiver has the signed request (sequential): from an api trigger,
//!   and from a single identified event (`POST /v1/events`);
//! - steps per second: 50 runs of 20 webhook steps each to the receiver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{Backend, Server};
use crate::wrk::{Load, Wrk, generated};
use crate::{Args, fresh_users_batch, identified_batch, raw};

/// A loopback webhook receiver: answers `200` to everything and notes when
/// each request arrived.
#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Receiver {
    async fn start() -> Result<(Receiver, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let receiver = Receiver::default();
        let arrivals = receiver.arrivals.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let arrivals = arrivals.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 8192];
                    // Headers, then as much body as Content-Length says.
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(end) = find(&seen, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if seen.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    if let Ok(mut a) = arrivals.lock() {
                        a.push(Instant::now());
                    }
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Ok((receiver, url))
    }

    fn count(&self) -> usize {
        self.arrivals.lock().map_or(0, |a| a.len())
    }

    fn last(&self) -> Option<Instant> {
        self.arrivals.lock().ok().and_then(|a| a.last().copied())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn create(client: &reqwest::Client, base: &str, key: &str, body: Value) -> Result<String> {
    let r = client
        .post(format!("{base}/v1/workflows"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating a workflow: {}", r.text().await?);
    }
    let made: Value = r.json().await?;
    Ok(made["id"].as_str().context("workflow id")?.to_string())
}

/// Sends `body` and waits until the receiver has one more request; the
/// time that took, in milliseconds.
async fn until_webhook(
    receiver: &Receiver,
    send: impl std::future::Future<Output = Result<()>>,
) -> Result<f64> {
    let before = receiver.count();
    let sent = Instant::now();
    send.await?;
    while receiver.count() == before {
        if sent.elapsed() > Duration::from_secs(10) {
            bail!("no webhook within 10 s");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let arrived = receiver.last().context("arrival")?;
    Ok(arrived.duration_since(sent).as_secs_f64() * 1000.0)
}

async fn track(client: &reqwest::Client, base: &str, key: &str, user: &str) -> Result<()> {
    let r = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&json!({"name": "latency_event", "external_id": user, "idempotency_key": user}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("event: {}", r.text().await?);
    }
    Ok(())
}

async fn trigger(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    workflow: &str,
    contact: &str,
) -> Result<()> {
    let r = client
        .post(format!("{base}/v1/workflows/{workflow}/trigger"))
        .bearer_auth(key)
        .json(&json!({"contact": {"external_id": contact}}))
        .send()
        .await?;
    if r.status().as_u16() != 202 {
        bail!("trigger: {}", r.text().await?);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(args: &Args, wrk: &Wrk<'_>) -> Result<()> {
    let mut backends = vec![("SQLite", None)];
    let mut scratch = None;
    if !args.no_postgres {
        let db = raw::ScratchDatabase::create(&args.postgres_url, "workflows").await?;
        backends.push(("PostgreSQL", Some(db.url.clone())));
        scratch = Some(db);
    }
    println!(
        "\n| store | identified batches, no workflow | 10 workflows, none matching | 1 workflow matching every event | trigger → webhook p50 / p99 | webhook steps per second |"
    );
    println!("|---|---|---|---|---|---|");
    let mut second_table = Vec::new();
    for (name, url) in backends {
        let backend = match url {
            Some(url) => Backend::Postgres(url),
            None => Backend::Sqlite,
        };
        let server = Server::start_with_args(
            &args.keyflow,
            &backend,
            None,
            &["--webhook-allow-private-networks", "127.0.0.1/32"],
        )
        .await?;
        let fixture = crate::server::fixture(&server.base).await?;
        let key = fixture.key.as_str();
        let client = reqwest::Client::new();
        let batches = Wrk {
            connections: 16,
            ..*wrk
        };
        let load = || Load {
            url: format!("{}/v1/events/batch", server.base),
            key: Some(key),
            body: None,
            script: Some(generated(&identified_batch())),
        };
        let per_event = |f: &crate::wrk::Figure| f.requests_per_second * 100.0;
        let none = batches.run(&load())?;
        let mut others = Vec::new();
        for i in 0..10 {
            let id = create(
                &client,
                &server.base,
                key,
                json!({"name": format!("other {i}"), "status": "active",
                       "trigger": {"type": "event", "event": format!("other_{i}")},
                       "steps": [{"type": "exit"}]}),
            )
            .await?;
            others.push(id);
        }
        let ten = batches.run(&load())?;
        // The same load with the 10 archived: the database is as large as
        // for the run with them, so this separates their cost from growth.
        for id in &others {
            client
                .delete(format!("{}/v1/workflows/{id}", server.base))
                .bearer_auth(key)
                .send()
                .await?
                .error_for_status()?;
        }
        let none_again = batches.run(&load())?;

        // Latency on an idle instance: one run at a time.
        let (receiver, hook) = Receiver::start().await?;
        let one_hook = create(
            &client,
            &server.base,
            key,
            json!({"name": "latency", "status": "active", "reentry": "every_time",
                   "trigger": {"type": "api"},
                   "steps": [{"type": "webhook", "url": format!("{hook}/latency")}]}),
        )
        .await?;
        let mut latencies = Vec::new();
        for i in 0..200 {
            let contact = format!("lat-{i}");
            let sent = trigger(&client, &server.base, key, &one_hook, &contact);
            latencies.push(until_webhook(&receiver, sent).await?);
        }
        latencies.sort_by(f64::total_cmp);
        create(
            &client,
            &server.base,
            key,
            json!({"name": "event latency", "status": "active", "reentry": "every_time",
                   "trigger": {"type": "event", "event": "latency_event"},
                   "steps": [{"type": "webhook", "url": format!("{hook}/event")}]}),
        )
        .await?;
        let mut event_latencies = Vec::new();
        for i in 0..200 {
            let user = format!("lat-event-{i}");
            let sent = track(&client, &server.base, key, &user);
            event_latencies.push(until_webhook(&receiver, sent).await?);
        }
        event_latencies.sort_by(f64::total_cmp);

        // Steps per second: 50 runs of 20 webhook steps.
        let steps: Vec<Value> = (0..20)
            .map(|i| json!({"type": "webhook", "url": format!("{hook}/step/{i}")}))
            .collect();
        let many = create(
            &client,
            &server.base,
            key,
            json!({"name": "steps", "status": "active", "reentry": "every_time",
                   "trigger": {"type": "api"}, "steps": steps}),
        )
        .await?;
        let before = receiver.count();
        let started = Instant::now();
        for i in 0..50 {
            trigger(&client, &server.base, key, &many, &format!("steps-{i}")).await?;
        }
        while receiver.count() < before + 1_000 {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("1 000 steps did not run within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let steps_per_second = 1_000.0 / started.elapsed().as_secs_f64();

        let fresh_load = |run: &str| Load {
            url: format!("{}/v1/events/batch", server.base),
            key: Some(key),
            body: None,
            script: Some(generated(&fresh_users_batch(run))),
        };
        let fresh_none = batches.run(&fresh_load("wf-fresh-none"))?;

        // Last: a workflow started by every event (the loop guard caps each
        // of the 1 000 users at 50 runs an hour; the rest are noted skipped).
        create(
            &client,
            &server.base,
            key,
            json!({"name": "every purchase", "status": "active", "reentry": "every_time",
                   "trigger": {"type": "event", "event": "purchase"},
                   "steps": [{"type": "exit"}]}),
        )
        .await?;
        let matching = batches.run(&load())?;
        let fresh_one = batches.run(&fresh_load("wf-fresh-one"))?;
        second_table.push(format!(
            "| {name} | {:.0} ev/s, then {:.0} ev/s with them archived ({:.2}×) | {:.0} ev/s (p99 {:.0} ms) | {:.0} ev/s (p99 {:.0} ms), {:.2}× | {:.1} / {:.1} ms |",
            per_event(&ten),
            per_event(&none_again),
            ten.requests_per_second / none_again.requests_per_second,
            per_event(&fresh_none),
            fresh_none.p99_us / 1000.0,
            per_event(&fresh_one),
            fresh_one.p99_us / 1000.0,
            fresh_one.requests_per_second / fresh_none.requests_per_second,
            percentile(&event_latencies, 0.5),
            percentile(&event_latencies, 0.99),
        ));
        println!(
            "| {name} | {:.0} ev/s (p99 {:.0} ms) | {:.0} ev/s (p99 {:.0} ms), {:.2}× | {:.0} ev/s (p99 {:.0} ms), {:.2}× | {:.1} / {:.1} ms | {:.0} |",
            per_event(&none),
            none.p99_us / 1000.0,
            per_event(&ten),
            ten.p99_us / 1000.0,
            ten.requests_per_second / none.requests_per_second,
            per_event(&matching),
            matching.p99_us / 1000.0,
            matching.requests_per_second / none.requests_per_second,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            steps_per_second,
        );
        drop(server);
    }
    println!(
        "\n| store | 10 not matching, then archived | new user per event, no matching workflow | new user per event, 1 workflow matching every event | event → webhook p50 / p99 |"
    );
    println!("|---|---|---|---|---|");
    for row in second_table {
        println!("{row}");
    }
    drop(scratch);
    Ok(())
}

//! `keyflow-bench --instances`: throughput of 1, 2 and 3 `keyflow serve`
//! instances on one PostgreSQL database and one Redis (SPEC §11). Load is
//! split evenly: one `wrk` per instance, run at the same time, with the
//! connections divided between them; the figure is the sum.
//!
//! On one small machine the instances, PostgreSQL, Redis and wrk share the
//! same cores, so more instances cannot add capacity here: the figures show
//! what coordination costs (Redis decisions, change messages, shared
//! database), not how far it scales on separate machines.

use anyhow::{Result, bail};

use crate::server::{Backend, Server};
use crate::wrk::{Figure, Load, Wrk};
use crate::{Args, identified_batch, raw};

/// Runs `load(i)` against every instance at once, `connections` split
/// between them; sums the rates and keeps the worst p50/p99.
fn spread<'k>(
    wrk: &Wrk<'_>,
    servers: &[Server],
    connections: usize,
    load: impl Fn(usize, &Server) -> Load<'k> + Sync,
) -> Result<Figure> {
    let scratches: Vec<tempfile::TempDir> = servers
        .iter()
        .map(|_| tempfile::tempdir())
        .collect::<std::io::Result<_>>()?;
    let figures: Vec<Result<Figure>> = std::thread::scope(|scope| {
        let runs: Vec<_> = servers
            .iter()
            .zip(&scratches)
            .enumerate()
            .map(|(i, (server, scratch))| {
                let load = &load;
                scope.spawn(move || {
                    Wrk {
                        connections: (connections / servers.len()).max(1),
                        scratch: scratch.path(),
                        ..*wrk
                    }
                    .run(&load(i, server))
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().unwrap_or_else(|_| bail!("wrk thread panicked")))
            .collect()
    });
    let mut total = Figure {
        requests_per_second: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
    };
    for figure in figures {
        let figure = figure?;
        total.requests_per_second += figure.requests_per_second;
        total.p50_us = total.p50_us.max(figure.p50_us);
        total.p99_us = total.p99_us.max(figure.p99_us);
    }
    Ok(total)
}

pub async fn run(args: &Args, wrk: &Wrk<'_>) -> Result<()> {
    let (_redis, redis_url) = crate::redis_server::start()?;
    println!(
        "\n| instances | `GET /v1/keys/self` ({} connections) | p99 | `/v1/events/batch`, 100 identified events ({} connections) | p99 |",
        args.connections, 16
    );
    println!("|---|---|---|---|---|");
    for (n, shared) in [(1, false), (1, true), (2, true), (3, true)] {
        let db = raw::ScratchDatabase::create(&args.postgres_url, "instances").await?;
        let backend = Backend::Postgres(db.url.clone());
        let mut servers = Vec::new();
        for _ in 0..n {
            let redis = shared.then_some(redis_url.as_str());
            servers.push(Server::start_with(&args.keyflow, &backend, redis).await?);
        }
        let fixture = crate::server::fixture(&servers[0].base).await?;
        let key = fixture.key.as_str();
        let reads = spread(wrk, &servers, args.connections, |_, server| Load {
            url: format!("{}/v1/keys/self", server.base),
            key: Some(key),
            body: None,
            script: None,
        })?;
        let batches = spread(wrk, &servers, 16, |_, server| Load {
            url: format!("{}/v1/events/batch", server.base),
            key: Some(key),
            body: None,
            script: Some(crate::wrk::generated(&identified_batch())),
        })?;
        println!(
            "| {n}{} | {:.0} req/s | {:.1} ms | {:.0} events/s | {:.1} ms |",
            if shared { "" } else { ", no Redis" },
            reads.requests_per_second,
            reads.p99_us / 1000.0,
            batches.requests_per_second * 100.0,
            batches.p99_us / 1000.0
        );
        drop(servers);
        db.drop_now().await?;
    }
    Ok(())
}

//! `keyflow-bench --import ROWS,ROWS…`: `keyflow contacts import` and
//! `export` as an operator runs them (issue 17), on SQLite and then
//! PostgreSQL. For each size: a generated file of new contacts (email,
//! external id, names, subscribed, three properties) imported into an empty
//! project, the same file again (every row an update), and the export of
//! the result. Figures: rows per second and the process's peak resident
//! memory (VmHWM, sampled every 20 ms while it runs).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Args, raw};

/// One run of the binary: its JSON answer, wall time and peak RSS (MiB).
fn measured(keyflow: &str, url: &str, args: &[&str]) -> Result<(Value, Duration, f64)> {
    let started = Instant::now();
    let mut child = Command::new(keyflow)
        .arg("--database-url")
        .arg(url)
        .args(args)
        .arg("--json")
        .env_remove("KEYFLOW_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run keyflow")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    while child.try_wait()?.is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "keyflow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((value, elapsed, peak_kib as f64 / 1024.0))
}

fn write_file(path: &Path, rows: usize) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "email,external_id,first_name,last_name,subscribed,plan,company,seats"
    )?;
    for i in 0..rows {
        writeln!(
            out,
            "user{i}@example.com,ext-{i},Ada {i},Lovelace,{},{},\"Acme, Inc. {}\",{}",
            i % 3 != 0,
            ["free", "pro", "team"][i % 3],
            i % 997,
            i % 50
        )?;
    }
    out.flush()?;
    Ok(())
}

pub async fn run(args: &Args, sizes: &[usize]) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    println!(
        "\n| store | rows | import (all new) | again (all updates) | export | peak RSS import / export |"
    );
    println!("|---|---|---|---|---|---|");
    for &rows in sizes {
        let file = scratch.path().join(format!("contacts-{rows}.csv"));
        write_file(&file, rows)?;
        let file_arg = file.to_str().context("path")?;
        let mut stores = vec![("SQLite", None)];
        if !args.no_postgres {
            stores.push(("PostgreSQL", Some(())));
        }
        for (name, postgres) in stores {
            let (url, pg) = match postgres {
                Some(()) => {
                    let db = raw::ScratchDatabase::create(&args.postgres_url, "import").await?;
                    (db.url.clone(), Some(db))
                }
                None => {
                    let dir = scratch.path().join(format!("sqlite-{rows}"));
                    std::fs::create_dir_all(&dir)?;
                    (
                        format!("sqlite://{}", dir.join("keyflow.db").display()),
                        None,
                    )
                }
            };
            let password = scratch.path().join("password");
            std::fs::write(&password, "a long bench password")?;
            let (init, _, _) = measured(
                &args.keyflow,
                &url,
                &[
                    "init",
                    "--email",
                    "bench@example.com",
                    "--password-file",
                    password.to_str().context("path")?,
                    "--workspace",
                    "Bench",
                    "--project",
                    "Import",
                ],
            )?;
            let project = init["project"]["id"]
                .as_str()
                .context("project id")?
                .to_string();
            let import = ["contacts", "import", file_arg, "--project", &project];
            let (first, first_time, first_peak) = measured(&args.keyflow, &url, &import)?;
            let (again, again_time, again_peak) = measured(&args.keyflow, &url, &import)?;
            if first["created"].as_u64() != Some(rows as u64)
                || again["updated"].as_u64() != Some(rows as u64)
            {
                bail!("unexpected import results: {first} then {again}");
            }
            let exported = scratch.path().join("export.csv");
            let _ = std::fs::remove_file(&exported);
            let export = [
                "contacts",
                "export",
                "--project",
                &project,
                "--output",
                exported.to_str().context("path")?,
            ];
            let (_, export_time, export_peak) = measured(&args.keyflow, &url, &export)?;
            let per_second = |t: Duration| rows as f64 / t.as_secs_f64();
            println!(
                "| {name} | {rows} | {:.0} rows/s ({:.1} s) | {:.0} rows/s ({:.1} s) | {:.0} rows/s ({:.1} s) | {:.0} / {:.0} MiB |",
                per_second(first_time),
                first_time.as_secs_f64(),
                per_second(again_time),
                again_time.as_secs_f64(),
                per_second(export_time),
                export_time.as_secs_f64(),
                first_peak.max(again_peak),
                export_peak,
            );
            drop(pg);
        }
    }
    Ok(())
}

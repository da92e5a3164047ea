//! A real `keyflow serve` child process: start, readiness time, memory, setup.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// Which database the server runs on.
pub enum Backend {
    /// A fresh SQLite data dir.
    Sqlite,
    /// A fresh PostgreSQL database at this URL.
    Postgres(String),
}

pub struct Server {
    child: Child,
    pub base: String,
    /// Time from `spawn` to the first `200` from `/readyz`.
    pub start_to_ready: Duration,
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

impl Server {
    pub async fn start(binary: &str, backend: &Backend) -> Result<Server> {
        Self::start_with(binary, backend, None).await
    }

    /// With `redis_url`: one of several instances sharing limits and changes.
    pub async fn start_with(
        binary: &str,
        backend: &Backend,
        redis_url: Option<&str>,
    ) -> Result<Server> {
        Self::start_with_args(binary, backend, redis_url, &[]).await
    }

    /// With more `serve` arguments.
    pub async fn start_with_args(
        binary: &str,
        backend: &Backend,
        redis_url: Option<&str>,
        extra: &[&str],
    ) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command.args(["--data-dir", &dir.path().display().to_string()]);
        if let Backend::Postgres(url) = backend {
            command.args(["--database-url", url]);
        }
        command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        command.args(extra);
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
        command
            // The plan's limit is the ceiling of a key's override (SPEC §2):
            // the bench key's 1 000 000/s needs a plan that allows it.
            .args(["--rate-limit", "1000000/1"])
            // wrk opens all its connections from one address.
            .args(["--max-connections-per-ip", "0"])
            .env("KEYFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEYFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let spawned = Instant::now();
        let child = command.spawn().with_context(|| {
            format!("cannot start {binary}; build it with `cargo build --release -p keyflow`")
        })?;
        let mut server = Server {
            child,
            base,
            start_to_ready: Duration::ZERO,
            _dir: dir,
        };
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
                && r.status().is_success()
            {
                server.start_to_ready = spawned.elapsed();
                return Ok(server);
            }
            if spawned.elapsed() > Duration::from_secs(30) {
                bail!("keyflow did not become ready within 30 s");
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("keyflow exited during start-up: {status}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(current, peak)` resident set size in bytes, from /proc.
    pub fn rss(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing from /proc status"))?;
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .context("malformed /proc status")?
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
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

/// What the load needs: a secret key and a contact to read.
pub struct Fixture {
    pub key: String,
    pub contact_id: String,
}

/// Ten allow-list rows; loopback is the last, so every request walks them all.
pub const ALLOWLIST: [&str; 10] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "203.0.113.0/24",
    "2001:db8::/32",
    "fd00::/8",
    "::1/128",
    "127.0.0.0/8",
];

/// Workspace on the pro plan, a project, a secret key with a 10-CIDR
/// allow-list and a quota the load cannot exhaust, and one contact.
pub async fn fixture(base: &str) -> Result<Fixture> {
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
    let allowlist: Vec<Value> = ALLOWLIST
        .iter()
        .map(|cidr| json!({"cidr": cidr, "description": "bench"}))
        .collect();
    let key = admin(
        &client,
        base,
        &format!("/admin/v1/projects/{project_id}/keys"),
        json!({
            "name": "bench",
            "type": "secret",
            "ip_allowlist": allowlist,
            "rate_limit": {"limit": 1_000_000, "period_seconds": 1},
        }),
    )
    .await?;
    let key = key["key"].as_str().context("key")?.to_string();
    let contact: Value = client
        .post(format!("{base}/v1/contacts"))
        .bearer_auth(&key)
        .json(&json!({"email": "ada@example.com", "first_name": "Ada", "properties": {"plan": "pro", "seats": 12}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let contact_id = contact["id"].as_str().context("contact id")?.to_string();
    Ok(Fixture { key, contact_id })
}

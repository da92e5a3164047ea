//! Faults (SPEC §11): PostgreSQL stopping under a running instance. A
//! throwaway cluster of its own (initdb/pg_ctl in a temp dir, on a free
//! port), never the machine's server.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{TestApp, TestDb};

/// A PostgreSQL cluster in a temp dir; stopped on drop.
struct ThrowawayPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// initdb and postgres refuse to run as root: run them as `postgres`.
    as_postgres: bool,
}

impl ThrowawayPostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .find(|bin| bin.join("initdb").exists())
            })
            .or_else(|| which("initdb").and_then(|p| p.parent().map(PathBuf::from)))
            .expect("PostgreSQL's initdb must be installed for the fault tests");
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(&[
            "initdb",
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command.args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    fn stop(&self) {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        };
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
    })
}

/// PostgreSQL down: what needs the database answers `503 unavailable` with
/// `Retry-After` (never 401 or 500), keys already cached keep
/// authenticating, `/readyz` says so, nothing acknowledged is lost, and the
/// instance recovers by itself when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_503_and_recovers() {
    let cluster = ThrowawayPostgres::start();
    let config = keyflow_server::config::Config {
        admin_token: Some(keyflow_server::config::Secret::new(
            crate::harness::ADMIN_TOKEN,
        )),
        ..Default::default()
    };
    let mut app = TestApp::launch("127.0.0.1:0", TestDb::existing(&cluster.url()), config).await;
    let t = app.tenant().await;
    let (_, unused) = app
        .create_key(
            &t.key,
            json!({"name": "never used", "type": "secret", "scopes": ["keys:read"]}),
        )
        .await;
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let reply = app
            .post(
                "/v1/events",
                &t.key,
                json!({"name": "before", "external_id": "u1", "idempotency_key": format!("b{i}")}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        acknowledged.push(reply.body["id"].as_str().unwrap().to_string());
    }

    cluster.stop();
    // Needs the database: 503 with Retry-After, never 401 or 500.
    let started = Instant::now();
    let refused = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "during", "anonymous_id": "a"}),
        )
        .await;
    refused.assert_error(503, "unavailable");
    assert!(refused.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 503 took {:?}",
        started.elapsed()
    );
    let contacts = app.get("/v1/contacts", &t.key).await;
    contacts.assert_error(503, "unavailable");
    // A key not in the cache cannot be checked: 503, not 401.
    app.get("/v1/keys/self", &unused)
        .await
        .assert_error(503, "unavailable");
    // A cached key still authenticates.
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    assert_eq!(app.get("/readyz", "").await.status, 503);

    // Back: the instance recovers by itself.
    cluster.pg_ctl_start();
    let started = Instant::now();
    loop {
        if app.get("/readyz", "").await.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "after", "external_id": "u1", "idempotency_key": "b0"}),
        )
        .await;
    assert_eq!(after.status, 200, "a repeat: {}", after.body);
    assert_eq!(after.body["id"], acknowledged[0].as_str());
    assert_eq!(app.get("/v1/keys/self", &unused).await.status, 200);
    let listed = app.get("/v1/events?limit=100", &t.key).await;
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(ids.contains(&id.as_str()), "{id} lost");
    }
    app.stop().await;
}

//! The `keyflow` binary itself: CLI commands with `--json`, and `serve` as a
//! real process (SIGTERM, exit 0, logs that never contain a key).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::harness::{Backend, TestDb};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_keyflow");

pub(crate) fn keyflow(db: &TestDb, args: &[&str]) -> (bool, Value, String) {
    let (ok, stdout, stderr) = keyflow_text(db, args);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (ok, json, stderr)
}

/// The command's success, stdout and stderr.
pub(crate) fn keyflow_text(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--database-url")
        .arg(&db.url)
        .args(args)
        .env_remove("KEYFLOW_DATABASE_URL")
        .output()
        .expect("run keyflow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub(crate) fn password_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "a long password\n").unwrap();
    file
}

async fn init_keys_plan_and_migrate_commands(backend: Backend) {
    let db = TestDb::create(backend).await;
    let (ok, migrated, err) = keyflow(&db, &["migrate", "--json"]);
    assert!(ok, "{err}");
    let expected = crate::harness::migration_names(backend);
    assert_eq!(migrated["applied"], json!(expected));
    let (_, again, _) = keyflow(&db, &["migrate", "--json"]);
    assert_eq!(again["applied"], json!([]));
    let pw = password_file();
    let pw_path = pw.path().to_str().unwrap();
    let (ok, init, err) = keyflow(
        &db,
        &[
            "init",
            "--email",
            "owner@example.com",
            "--password-file",
            pw_path,
            "--workspace",
            "Acme",
            "--project",
            "Prod",
            "--environment",
            "test",
            "--plan",
            "pro",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(init["workspace"]["plan"], "pro");
    assert_eq!(init["project"]["environment"], "test");
    assert_eq!(init["owner"]["email"], "owner@example.com");
    let project = init["project"]["id"].as_str().unwrap();
    let workspace = init["workspace"]["id"].as_str().unwrap();
    let (ok, key, err) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            project,
            "--name",
            "ci",
            "--type",
            "read_only",
            "--scope",
            "contacts:read",
            "--scope",
            "audit:read",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert!(key["key"].as_str().unwrap().starts_with("ro_test_"));
    assert_eq!(key["scopes"], json!(["contacts:read", "audit:read"]));
    // Listing, for an operator who lost an id: as the admin API answers.
    let (ok, workspaces, err) = keyflow(&db, &["workspaces", "list", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(workspaces["data"][0]["id"], workspace);
    assert_eq!(workspaces["next_cursor"], Value::Null);
    let (ok, projects, err) = keyflow(
        &db,
        &["projects", "list", "--workspace", workspace, "--json"],
    );
    assert!(ok, "{err}");
    assert_eq!(projects["data"][0]["id"], project);
    let (ok, keys, err) = keyflow(&db, &["keys", "list", "--project", project, "--json"]);
    assert!(ok, "{err}");
    assert_eq!(keys["data"][0]["id"], key["id"]);
    assert!(keys["data"][0].get("key").is_none());
    let (ok, text, err) =
        keyflow_text(&db, &["keys", "list", "--project", project, "--limit", "1"]);
    assert!(ok, "{err}");
    assert!(text.contains(key["id"].as_str().unwrap()), "{text}");
    assert!(
        text.contains("--cursor"),
        "a full page says how to get the next: {text}"
    );
    assert!(!text.contains(key["key"].as_str().unwrap()), "{text}");
    let (ok, _, err) = keyflow(&db, &["projects", "list", "--workspace", "nope"]);
    assert!(!ok && err.contains("no workspace"), "{err}");
    let (ok, _, _) = keyflow(&db, &["workspaces", "list", "--limit", "0"]);
    assert!(!ok);
    // Bad input: a scope the type may not hold, an unknown project, a bad plan.
    let (ok, refused, _) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            project,
            "--name",
            "x",
            "--type",
            "client",
            "--scope",
            "keys:write",
            "--json",
        ],
    );
    assert!(!ok);
    assert_eq!(refused["error"]["code"], "validation_failed");
    let (ok, _, err) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            "nope",
            "--name",
            "x",
            "--type",
            "secret",
        ],
    );
    assert!(!ok && err.contains("no project"), "{err}");
    let (ok, _, _) = keyflow(
        &db,
        &["workspace", "plan", "--workspace", workspace, "gold"],
    );
    assert!(!ok);
    let (ok, plan, err) = keyflow(
        &db,
        &[
            "workspace",
            "plan",
            "--workspace",
            workspace,
            "free",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        (plan["plan"].as_str(), plan["previous_plan"].as_str()),
        (Some("free"), Some("pro"))
    );
    // Human output prints the key once, on its own line.
    let (ok, _, _) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            project,
            "--name",
            "human",
            "--type",
            "secret",
        ],
    );
    assert!(ok);
    // Same email twice is refused.
    let (ok, dup, _) = keyflow(
        &db,
        &[
            "init",
            "--email",
            "OWNER@example.com",
            "--password-file",
            pw_path,
            "--workspace",
            "B",
            "--project",
            "P",
            "--json",
        ],
    );
    assert!(!ok);
    assert_eq!(dup["error"]["code"], "conflict");
}

/// A `keyflow serve` child process and its captured log lines.
pub(crate) struct ServerProcess {
    pub(crate) child: std::process::Child,
    pub(crate) base: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
    _config: tempfile::NamedTempFile,
}

/// Starts `keyflow serve` on an ephemeral port.
fn spawn_server(db: &TestDb, token: &str) -> ServerProcess {
    spawn_server_with(db, token, &[])
}

/// [`spawn_server`] with more environment variables.
pub(crate) fn spawn_server_with(db: &TestDb, token: &str, env: &[(&str, &str)]) -> ServerProcess {
    // A short drain, so the shutdown test with a stuck client stays quick.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "shutdown_timeout_secs = 2\n").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
            config.path().to_str().unwrap(),
        ])
        .env("KEYFLOW_ADMIN_TOKEN", token)
        .envs(env.iter().copied())
        .env_remove("KEYFLOW_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyflow serve");
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = v["fields"]["address"].as_str()
            {
                let _ = tx.send(addr.to_string());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "server did not report its address: {:?}",
                lines.lock().unwrap()
            )
        });
    ServerProcess {
        child,
        base: format!("http://{addr}"),
        lines,
        reader,
        _config: config,
    }
}

async fn serve_process_never_logs_or_stores_a_key(backend: Backend) {
    let db = TestDb::create(backend).await;
    let token = "cli-admin-token-0123456789abcdef";
    // /metrics on a listener of its own (a port free a moment ago).
    let metrics_address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let ServerProcess {
        mut child,
        base,
        lines,
        reader,
        _config,
    } = spawn_server_with(
        &db,
        token,
        &[
            ("KEYFLOW_METRICS_LISTEN", &metrics_address),
            // The store's spans and the request span on too: no key in them either.
            (
                "KEYFLOW_LOG",
                "info,keyflow_store=debug,keyflow_server::app=debug",
            ),
        ],
    );
    let http = reqwest::Client::new();
    let admin = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let ws: Value = admin(
        "/admin/v1/workspaces",
        json!({"name": "Acme", "plan": "pro"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let project: Value = admin(
        &format!(
            "/admin/v1/workspaces/{}/projects",
            ws["id"].as_str().unwrap()
        ),
        json!({"name": "P"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let root: Value = admin(
        &format!(
            "/admin/v1/projects/{}/keys",
            project["id"].as_str().unwrap()
        ),
        json!({"name": "root", "type": "secret"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let root_key = root["key"].as_str().unwrap().to_string();
    let mut secrets = vec![root_key.clone()];
    // Create, use, roll, revoke, and fail with near-miss keys.
    let created: Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(&root_key)
        .json(&json!({"name": "svc", "type": "client"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_key = created["key"].as_str().unwrap().to_string();
    secrets.push(client_key.clone());
    let me = http
        .get(format!("{base}/v1/keys/self"))
        .bearer_auth(&client_key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let rolled: Value = http
        .post(format!(
            "{base}/v1/keys/{}/roll",
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(&root_key)
        .json(&json!({"expires_in_seconds": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rolled_key = rolled["key"].as_str().unwrap().to_string();
    secrets.push(rolled_key.clone());
    let old = http
        .get(format!("{base}/v1/keys/self"))
        .bearer_auth(&client_key)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let mut near_miss = rolled_key.clone();
    let last = near_miss.pop();
    near_miss.push(if last == Some('x') { 'y' } else { 'x' });
    secrets.push(near_miss.clone());
    let miss = http
        .get(format!("{base}/v1/keys/self"))
        .bearer_auth(&near_miss)
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 401);
    let revoke = http
        .delete(format!("{base}/v1/keys/{}", rolled["id"].as_str().unwrap()))
        .bearer_auth(&root_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 204);
    let audit: Value = http
        .get(format!("{base}/v1/audit"))
        .bearer_auth(&root_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(audit["data"].as_array().unwrap().len() >= 4);
    // Only the metrics listener answers /metrics; it counts by route template.
    let public = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    let scraped = http
        .get(format!("http://{metrics_address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    let scraped = scraped.text().await.unwrap();
    assert!(
        scraped.contains(
            "keyflow_http_requests_total{route=\"/v1/keys/{id}/roll\",method=\"POST\",class=\"2xx\"} 1"
        ),
        "{scraped}"
    );
    // Identified events with idempotency keys (the writer's lookup path,
    // whose pooled connection once panicked at shutdown).
    for (path, body) in [
        (
            "/v1/events",
            json!({"name": "signup", "external_id": "u1", "idempotency_key": "m1"}),
        ),
        (
            "/v1/events",
            json!({"name": "signup", "email": "a@x.io", "idempotency_key": "m2"}),
        ),
        (
            "/v1/events/batch",
            json!({"events": [{"name": "x", "external_id": "u2", "idempotency_key": "m3"}]}),
        ),
    ] {
        let reply = http
            .post(format!("{base}{path}"))
            .bearer_auth(&root_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
    }
    // Keys pasted into paths in disguise never reach the log.
    let underscored = root_key.replacen('_', "%5F", 2);
    for path in [
        format!("/v1/keys/Bearer%20{root_key}"),
        format!("/v1/keys/{root_key}%0A"),
        format!("/v1/keys/{root_key}.json"),
        format!("/v1/keys/{root_key},"),
        format!("/v1/keys/prefix{root_key}"),
        format!("/v1/keys/{underscored}"),
    ] {
        http.get(format!("{base}{path}"))
            .bearer_auth(&root_key)
            .send()
            .await
            .unwrap();
    }
    // A client stuck half-way through its headers does not hold shutdown up.
    let addr = base.trim_start_matches("http://").to_string();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stuck, b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // SIGTERM: drain (bounded), flush, exit 0, no panic.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();
    // Bounded wait: a shutdown that hangs fails here instead of hanging the run.
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > std::time::Duration::from_secs(8) {
            let _ = child.kill();
            panic!("keyflow serve did not stop within 8 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "keyflow serve exited with {exit:?}");
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(8),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    drop(stuck);
    reader.join().unwrap(); // every line up to EOF

    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("keyflow stopped cleanly"), "{log}");
    // JSON lines without colour codes (stderr is a pipe); an authenticated
    // request names its project and key prefix, never the key.
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    let request_line = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["path"] == "/v1/audit")
        .unwrap_or_else(|| panic!("no JSON line for /v1/audit: {log}"));
    let fields = &request_line["fields"];
    assert!(fields["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(fields["route"], "/v1/audit");
    assert_eq!(fields["project_id"], project["id"]);
    assert_eq!(fields["key_prefix"], root["prefix"]);
    assert_eq!(fields["status"], 200);
    // Store calls are spans, closed with their duration, under the request.
    let store_span = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("keyflow_store::"))
                && v["fields"]["message"] == "close"
                && v["spans"][0]["name"] == "request"
        })
        .unwrap_or_else(|| panic!("no closed store span under a request: {log}"));
    assert!(
        store_span["fields"]["time.busy"].is_string(),
        "{store_span}"
    );
    assert!(
        store_span["spans"][0]["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_")),
        "{store_span}"
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("/v1/keys/self"), "requests are logged: {log}");
    let audit_text = audit.to_string();
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a key leaked into the log");
        assert!(
            !audit_text.contains(secret.as_str()),
            "a key leaked into the audit log"
        );
        // Also no 40-char stretch of it (a truncated leak).
        assert!(!log.contains(&secret[..40]));
    }
    // The last-used data reached the database on shutdown.
    let store = db.store().await;
    let stored = store
        .get_api_key(
            project["id"].as_str().unwrap(),
            root["id"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(stored.last_used_at.is_some());
    // On SQLite, the database file holds digests only.
    if backend == Backend::Sqlite {
        let path = db.url.trim_start_matches("sqlite://");
        let mut bytes = std::fs::read(path).unwrap();
        if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
            bytes.extend(wal);
        }
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a full key is stored in the database file"
            );
        }
        assert!(
            text.contains(&root_key[..12]),
            "the prefix is stored for display"
        );
    }
}

async fn serve_refuses_bad_configuration(backend: Backend) {
    let db = TestDb::create(backend).await;
    let out = Command::new(BIN)
        .args([
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trusted-proxies",
            "10.0.0.0/8,bogus",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted_proxies"));
}

async fn serve_prints_a_one_time_setup_link_on_an_empty_database(backend: Backend) {
    let db = TestDb::create(backend).await;
    let mut child = Command::new(BIN)
        .args([
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("KEYFLOW_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no link in {line:?}"))
        .to_string();
    assert!(url.contains("/setup?token="), "{line}");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    let wrong = reqwest::get(format!("{}x", url)).await.unwrap();
    assert_eq!(wrong.status(), 404);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Text logs into a pipe carry no colour codes (those are for terminals).
    let log = log_reader.join().unwrap();
    assert!(log.contains("keyflow listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a piped log: {log:?}"
    );
}

/// `config check` shows each value with the layer that set it (flag over
/// env over file), hides secrets, and fails on a bad value like `serve`.
#[test]
fn config_check_names_each_source_and_hides_secrets() {
    // Removed when the test ends.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyflow.toml");
    let token = dir.path().join("token");
    std::fs::write(&token, "admin-token-0123456789abcdef\n").unwrap();
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:9000\"\nrate_limit = \"10/60\"\nlog_format = \"json\"\n\
             database_url = \"postgres://u:hunter2@db/k\"\nadmin_token_file = {:?}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    let run = |extra_env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "--config",
                file.to_str().unwrap(),
                "--json",
                "config",
                "check",
            ])
            .args(args)
            .env_clear()
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(
        &[
            ("KEYFLOW_LISTEN", "127.0.0.1:9100"),
            ("KEYFLOW_RATE_LIMIT", "30/60"),
            ("KEYFLOW_REDIS_URL", "redis://:hunter3@127.0.0.1:6379"),
        ],
        &["--listen", "127.0.0.1:9200"],
    );
    assert!(ok, "{stderr}");
    let value: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(value["valid"], true);
    let line = |key: &str| {
        value["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == key)
            .unwrap_or_else(|| panic!("no {key}: {stdout}"))
            .clone()
    };
    let listen = line("listen");
    assert_eq!(
        (&listen["value"], &listen["source"], &listen["from"]),
        (&json!("127.0.0.1:9200"), &json!("flag"), &json!("--listen"))
    );
    let rate = line("rate_limit");
    assert_eq!(
        (&rate["value"], &rate["source"], &rate["from"]),
        (&json!("30/60"), &json!("env"), &json!("KEYFLOW_RATE_LIMIT"))
    );
    let format = line("log_format");
    assert_eq!(
        (&format["value"], &format["source"]),
        (&json!("json"), &json!("file"))
    );
    let admin = line("admin_token");
    assert_eq!(
        (&admin["source"], &admin["from"]),
        (&json!("file"), &json!("admin_token_file"))
    );
    assert_eq!(line("shutdown_timeout_secs")["source"], "default");
    assert_eq!(line("database_url")["value"], "postgres://u:***@db/k");
    assert_eq!(line("redis_url")["value"], "redis://:***@127.0.0.1:6379");
    for secret in ["hunter2", "hunter3", "admin-token-0123456789abcdef"] {
        assert!(!stdout.contains(secret), "{stdout}");
    }
    // A bad value: exit 1, the option named, nothing printed on stdout.
    let (ok, stdout, stderr) = run(&[("KEYFLOW_MAX_CONNECTIONS_PER_IP", "many")], &[]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("max-connections-per-ip") || stderr.contains("max_connections_per_ip"),
        "{stderr}"
    );
    // With --json the refusal is the CLI's JSON error.
    let (ok, stdout, _) = run(&[], &["--shutdown-timeout-secs", "0"]);
    assert!(!ok);
    let error: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutdown_timeout_secs"),
        "{stdout}"
    );
}

/// Commands on an existing instance refuse a database that is not there
/// (instead of creating an empty one and reporting "no project").
#[test]
fn commands_refuse_a_missing_database_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    for args in [
        vec![
            "keys",
            "create",
            "--project",
            "p",
            "--name",
            "n",
            "--type",
            "secret",
        ],
        vec!["workspace", "plan", "--workspace", "w", "pro"],
        vec!["backup", "/tmp/never-written.db"],
    ] {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .env_remove("KEYFLOW_DATABASE_URL")
            .env_remove("KEYFLOW_DATA_DIR")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&data.join("keyflow.db").display().to_string()),
            "{args:?}: {err}"
        );
        assert!(
            !data.join("keyflow.db").exists(),
            "{args:?} created a database"
        );
    }
}

/// A PostgreSQL that refuses, or a database that does not exist, is named
/// as such at once (not "pool timed out" after 5 s).
#[test]
fn postgres_connection_failures_name_their_cause() {
    let base = crate::harness::postgres_base_url();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let missing = format!("{prefix}/kf_missing_{}", uuid::Uuid::new_v4().simple());
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A server that accepts but never answers: bounded, and said so.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("postgres://postgres@{}/x", silent.local_addr().unwrap());
    for (url, expected, within_secs) in [
        (
            format!("postgres://postgres@127.0.0.1:{closed_port}/x"),
            "refused the connection",
            4,
        ),
        (missing, "does not exist", 4),
        (silent_url, "timed out", 9),
    ] {
        let started = std::time::Instant::now();
        let out = Command::new(BIN)
            .args(["--database-url", &url, "migrate"])
            .env_remove("KEYFLOW_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{url}: {err}");
        assert!(!err.contains("line "), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(within_secs),
            "{err}"
        );
    }
    drop(silent);
}

/// The embedded database's files are the owner's alone, and `keyflow backup`
/// writes a consistent copy while the server runs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private_and_backups_work_while_serving() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pw = password_file();
    let init = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["--json", "init", "--email", "o@x.io", "--password-file"])
        .arg(pw.path())
        .args(["--workspace", "W", "--project", "P", "--plan", "pro"])
        .env_remove("KEYFLOW_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let url = format!("sqlite://{}", data.join("keyflow.db").display());
    let db = TestDb::existing(&url);
    let ServerProcess {
        mut child,
        base,
        reader,
        _config,
        ..
    } = spawn_server(&db, "backup-test-admin-token-0123456789");
    let init: Value = serde_json::from_slice(&init.stdout).unwrap();
    let project = init["project"]["id"].as_str().unwrap();
    let key: Value = reqwest::Client::new()
        .post(format!("{base}/admin/v1/projects/{project}/keys"))
        .bearer_auth("backup-test-admin-token-0123456789")
        .json(&json!({"name": "k", "type": "secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(key["key"].is_string());
    // Every file of the database, WAL included, is owner-only; so is the directory.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for name in ["keyflow.db", "keyflow.db-wal", "keyflow.db-shm"] {
        let path = data.join(name);
        assert!(path.exists(), "{name}");
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    // Online backup while serving: the new key is in it, though it is in the WAL.
    let copy = dir.path().join("backup.db");
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("backup")
        .arg(&copy)
        .env_remove("KEYFLOW_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&copy), 0o600);
    let again = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("backup")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!again.status.success(), "a backup never overwrites");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let restored = keyflow_store::connect(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    let keys = restored
        .list_api_keys(
            project,
            false,
            &keyflow_store::Page {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].settings.name, "k");
}

/// `kill -9` during sustained ingest, ten times, then SIGTERM under the same
/// load (SPEC §11, issue 14): every acknowledged event is stored exactly
/// once, sending it again with its idempotency key stores nothing new and
/// answers with the first event, and SIGTERM exits 0 after flushing
/// last-used data.
async fn kill_9_during_ingest_loses_nothing_acknowledged(backend: Backend) {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    let db = TestDb::create(backend).await;
    let pw = password_file();
    let (ok, init, err) = keyflow(
        &db,
        &[
            "init",
            "--email",
            "o@example.com",
            "--password-file",
            pw.path().to_str().unwrap(),
            "--workspace",
            "Crash",
            "--project",
            "Crash",
            "--plan",
            "pro",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let project = init["project"]["id"].as_str().unwrap().to_string();
    let (ok, key, err) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            &project,
            "--name",
            "ingest",
            "--type",
            "secret",
            "--scope",
            "events:write",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let key_id = key["id"].as_str().unwrap().to_string();
    let key = key["key"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let env = [("KEYFLOW_RATE_LIMIT", "1000000/60")];
    // Ten SIGKILLs, then one SIGTERM under the same load.
    for round in 0..11 {
        let mut server = spawn_server_with(&db, "crash-admin-token-0123456789", &env);
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for sender in 0..6 {
            let (client, base, key, acked, stop) = (
                client.clone(),
                server.base.clone(),
                key.clone(),
                acked.clone(),
                stop.clone(),
            );
            senders.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let events: Vec<Value> = (0..if sender % 2 == 0 { 1 } else { 20 })
                        .map(|j| {
                            json!({
                                "name": "crash",
                                "external_id": format!("user{}", (i + j) % 40),
                                "idempotency_key": format!("r{round}-s{sender}-{i}-{j}"),
                            })
                        })
                        .collect();
                    let Ok(reply) = client
                        .post(format!("{base}/v1/events/batch"))
                        .bearer_auth(&key)
                        .json(&json!({"events": events}))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    if reply.status() != 202 {
                        continue;
                    }
                    let Ok(body) = reply.json::<Value>().await else {
                        continue;
                    };
                    let ids = body["ids"].as_array().cloned().unwrap_or_default();
                    assert_eq!(ids.len(), events.len(), "{body}");
                    let mut acked = acked.lock().unwrap();
                    for (event, id) in events.iter().zip(ids) {
                        let key = event["idempotency_key"].as_str().unwrap().to_string();
                        acked.insert(key, id.as_str().unwrap().to_string());
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        if round < 10 {
            server.child.kill().unwrap(); // SIGKILL
            let _ = server.child.wait();
        } else {
            // SIGTERM under load: in-flight requests finish, last-used data
            // is flushed, exit 0, within the drain bound.
            let signalled = Command::new("kill")
                .args(["-TERM", &server.child.id().to_string()])
                .status()
                .unwrap();
            assert!(signalled.success());
            let started = std::time::Instant::now();
            let status = loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(15),
                    "keyflow serve did not stop within 15 s of SIGTERM under load"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            assert!(status.success(), "exit status after SIGTERM: {status}");
        }
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            sender.await.unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 200,
        "only {} events acknowledged",
        acked.len()
    );

    // Every acknowledged event is there, once.
    let store = db.store().await;
    let stored_events = || async {
        let mut stored: HashMap<String, usize> = HashMap::new();
        let mut cursor = None;
        loop {
            let page = keyflow_store::Page {
                limit: 1000,
                cursor: cursor.clone(),
            };
            let batch = store
                .list_events(&project, &keyflow_store::EventFilter::default(), &page)
                .await
                .unwrap();
            cursor = batch.last().map(|e| e.id.clone());
            let done = batch.len() < 1000;
            for event in batch {
                *stored.entry(event.id).or_default() += 1;
            }
            if done {
                return stored;
            }
        }
    };
    let stored = stored_events().await;
    assert!(stored.values().all(|n| *n == 1), "an event stored twice");
    let used = store.get_api_key(&project, &key_id).await.unwrap().unwrap();
    assert!(
        used.last_used_at.is_some(),
        "last-used data flushed on SIGTERM"
    );
    let missing: Vec<&String> = acked
        .values()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost",
        missing.len()
    );

    // Sent again after the crashes: the first event answers, nothing new.
    let server = spawn_server_with(&db, "crash-admin-token-0123456789", &env);
    let sample: Vec<(&String, &String)> = acked.iter().take(50).collect();
    let events: Vec<Value> = sample
        .iter()
        .map(|(k, _)| json!({"name": "crash", "external_id": "again", "idempotency_key": k}))
        .collect();
    let reply: Value = client
        .post(format!("{}/v1/events/batch", server.base))
        .bearer_auth(&key)
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = reply["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let first: Vec<&str> = sample.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, first, "retries answer with the first events");
    let mut server = server;
    server.child.kill().unwrap();
    let _ = server.child.wait();
    assert_eq!(
        stored_events().await.len(),
        stored.len(),
        "nothing new stored by the retries"
    );
    eprintln!(
        "kill -9 x10 then SIGTERM ({backend:?}): {} events acknowledged, all stored once",
        acked.len()
    );
}

/// `keyflow migrate --to postgres://…` (SPEC §9): an embedded instance with
/// keys, contacts, events, audit entries, a session and settings is copied
/// whole into an empty PostgreSQL database, row counts verified; served from
/// PostgreSQL, the same keys work and the same data answers. A second copy
/// into the now non-empty database is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_postgres_copies_everything() {
    let sqlite = TestDb::create(Backend::Sqlite).await;
    let sqlite_url = sqlite.url.clone();
    let mut app = crate::harness::TestApp::launch(
        "127.0.0.1:0",
        sqlite,
        keyflow_server::config::Config {
            admin_token: Some(keyflow_server::config::Secret::new(
                crate::harness::ADMIN_TOKEN,
            )),
            ..Default::default()
        },
    )
    .await;
    let workspace = crate::dashboard::operator(&app, "owner@example.com").await;
    let session = crate::dashboard::sign_in(&app, "owner@example.com").await;
    let t = app.tenant().await;
    let (_, reader) = app
        .create_key(
            &t.key,
            json!({"name": "reader", "type": "read_only", "scopes": ["contacts:read", "events:read"]}),
        )
        .await;
    for i in 0..30 {
        let reply = app
            .post(
                "/v1/contacts",
                &t.key,
                json!({"email": format!("c{i}@example.com"), "subscribed": i % 2 == 0, "properties": {"n": i}}),
            )
            .await;
        assert!(reply.status < 300, "{}", reply.body);
    }
    let events: Vec<Value> = (0..120)
        .map(|i| json!({"name": "copied", "external_id": format!("u{}", i % 7), "idempotency_key": format!("k{i}"), "properties": {"i": i}}))
        .collect();
    let stored = app
        .post("/v1/events/batch", &t.key, json!({"events": events}))
        .await;
    assert_eq!(stored.status, 202, "{}", stored.body);
    let first_event = stored.body["ids"][0].as_str().unwrap().to_string();
    // Project settings, saved through the dashboard.
    let project = app.store.list_projects(&workspace).await.unwrap()[0]
        .id
        .clone();
    let page = crate::dashboard::get_page(
        &app,
        &format!("/settings?project={project}"),
        Some(&session),
    )
    .await;
    let csrf = crate::dashboard::csrf_of(&crate::dashboard::text(&page));
    let saved = crate::dashboard::post_form(
        &app,
        "/settings",
        Some(&session),
        &[
            ("csrf", &csrf),
            ("project", &project),
            ("limit", "7"),
            ("period_seconds", "60"),
            ("metrics_cache_ttl_minutes", "15"),
        ],
    )
    .await;
    assert_eq!(saved.status, 303);
    app.stop().await;

    let postgres = TestDb::create(Backend::Postgres).await;
    let out = Command::new(BIN)
        .args([
            "--database-url",
            &sqlite_url,
            "--json",
            "migrate",
            "--to",
            &postgres.url,
        ])
        .env_remove("KEYFLOW_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows_of = |table: &str| {
        report["copied"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .map(|t| t["rows"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("{table} not copied: {report}"))
    };
    assert_eq!(rows_of("contacts"), 30 + 7, "30 by the API, 7 by events");
    assert_eq!(rows_of("events"), 120);
    assert_eq!(rows_of("event_idempotency"), 120);
    assert!(rows_of("api_keys") >= 2);
    assert!(rows_of("audit_log") > 0);
    assert!(rows_of("sessions") >= 1);
    assert_eq!(rows_of("project_settings"), 1);
    assert!(!report.to_string().contains("password"), "{report}");

    // Served from PostgreSQL: the same keys, the same answers.
    let pg_url = postgres.url.clone();
    let mut served = crate::harness::TestApp::launch(
        "127.0.0.1:0",
        postgres,
        keyflow_server::config::Config::default(),
    )
    .await;
    assert_eq!(served.get("/v1/keys/self", &t.key).await.status, 200);
    let contacts = served.get("/v1/contacts?limit=100", &reader).await;
    assert_eq!(contacts.status, 200, "{}", contacts.body);
    assert_eq!(contacts.body["data"].as_array().unwrap().len(), 37);
    let again = served
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "copied", "external_id": "u0", "idempotency_key": "k0"}),
        )
        .await;
    assert_eq!(again.status, 200, "a repeat after the move: {}", again.body);
    assert_eq!(again.body["id"], first_event.as_str());
    let fresh = served
        .post(
            "/v1/contacts",
            &t.key,
            json!({"email": "after@example.com"}),
        )
        .await;
    assert!(
        fresh.status < 300,
        "new rows after the copy: {}",
        fresh.body
    );
    let moved = served.store.project_settings(&project).await.unwrap();
    assert_eq!(moved.metrics_cache_ttl_minutes, 15);
    served.stop().await;

    // Not into a database that holds data.
    let refused = Command::new(BIN)
        .args(["--database-url", &sqlite_url, "migrate", "--to", &pg_url])
        .env_remove("KEYFLOW_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already holds data"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A workflow run waiting when its `keyflow serve` process is killed with
/// SIGKILL finishes after a restart: its wait and then its webhook.
async fn a_waiting_run_survives_kill_9(backend: Backend) {
    let db = TestDb::create(backend).await;
    let pw = password_file();
    let (ok, init, err) = keyflow(
        &db,
        &[
            "init",
            "--email",
            "o@example.com",
            "--password-file",
            pw.path().to_str().unwrap(),
            "--workspace",
            "W",
            "--project",
            "P",
            "--plan",
            "pro",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let project = init["project"]["id"].as_str().unwrap().to_string();
    let (ok, key, err) = keyflow(
        &db,
        &[
            "keys",
            "create",
            "--project",
            &project,
            "--name",
            "wf",
            "--type",
            "secret",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let key = key["key"].as_str().unwrap().to_string();
    let (receiver, hook) = crate::workflow_runs::Receiver::start().await;
    let env = [("KEYFLOW_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "127.0.0.1/32")];
    let mut server = spawn_server_with(&db, "admin-token-for-tests-0123", &env);
    let client = reqwest::Client::new();
    let post = |base: &str, path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let made: Value = post(
        &server.base,
        "/v1/workflows",
        json!({"name": "w", "status": "active", "trigger": {"type": "api"},
               "steps": [{"type": "wait", "seconds": 2}, {"type": "webhook", "url": format!("{hook}/after")}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let workflow = made["id"].as_str().unwrap();
    let started: Value = post(
        &server.base,
        &format!("/v1/workflows/{workflow}/trigger"),
        json!({"contact": {"email": "ada@example.com"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let run = started["run_id"].as_str().unwrap().to_string();
    let status = |base: String| {
        let (client, key, run) = (client.clone(), key.clone(), run.clone());
        async move {
            let got: Value = client
                .get(format!("{base}/v1/workflow-runs/{run}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            got["status"].as_str().unwrap_or_default().to_string()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(server.base.clone()).await != "waiting" {
        assert!(std::time::Instant::now() < deadline, "the run never waited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    let _ = server.child.wait();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert!(
        receiver.requests().is_empty(),
        "nothing ran while it was down"
    );
    let mut restarted = spawn_server_with(&db, "admin-token-for-tests-0123", &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while status(restarted.base.clone()).await != "completed" {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not complete after the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.requests().len(), 1);
    restarted.child.kill().unwrap();
    let _ = restarted.child.wait();
}

backend_tests!(
    a_waiting_run_survives_kill_9,
    kill_9_during_ingest_loses_nothing_acknowledged,
    serve_prints_a_one_time_setup_link_on_an_empty_database,
    init_keys_plan_and_migrate_commands,
    serve_process_never_logs_or_stores_a_key,
    serve_refuses_bad_configuration,
);

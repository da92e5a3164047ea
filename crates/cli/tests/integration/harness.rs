//! The test harness: a real Keyflow server on an ephemeral loopback port, on a
//! fresh SQLite file or a fresh PostgreSQL database, with an injected clock.

use std::net::SocketAddr;
use std::sync::Arc;

use keyflow_core::{Clock, ManualClock};
use keyflow_server::{Config, SharedState};
use keyflow_store::Store;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Three instances on one PostgreSQL database and one throwaway Redis
    /// (SPEC §11), sharing one clock; requests go round-robin over them.
    ThreeInstances,
}

/// Runs each listed `async fn name(backend: Backend)` once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Runs each listed `async fn name(backend: Backend)` on three instances
/// sharing one PostgreSQL database and one Redis, with requests spread
/// round-robin: the results must be those of one instance (issue 14).
#[macro_export]
macro_rules! three_instance_tests {
    ($($name:ident),* $(,)?) => {
        mod three_instances {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::ThreeInstances).await
                }
            )*
        }
    };
}

/// Runs each listed test on SQLite, on PostgreSQL and on three instances.
#[macro_export]
macro_rules! every_deployment_tests {
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!($($name),*);
        $crate::three_instance_tests!($($name),*);
    };
}

/// A throwaway `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn run(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh database: a temp SQLite file, or a new PostgreSQL database dropped
/// when this value is dropped.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

/// The PostgreSQL server tests use. Unset, the local default is tried; a
/// server that cannot be reached fails the test (never a silent skip).
pub fn postgres_base_url() -> String {
    std::env::var("KEYFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{db}")
}

impl TestDb {
    /// A database made elsewhere (a test's own SQLite file), not dropped here.
    pub fn existing(url: &str) -> Self {
        Self {
            url: url.to_string(),
            _dir: None,
            pg: None,
        }
    }

    /// PostgreSQL only: drops the database now (closing every connection to
    /// it), to test behaviour while the database is gone.
    pub async fn drop_postgres_now(&self) {
        let (base, name) = self.pg.as_ref().expect("a PostgreSQL test database");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(base)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }

    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("keyflow.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres | Backend::ThreeInstances => {
                let base = postgres_base_url();
                let name = format!("kf_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL tests need a server: set KEYFLOW_TEST_DATABASE_URL \
                             (tried {}): {e}",
                            keyflow_store::redact_url(&base)
                        )
                    });
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                Self {
                    url: with_database(&base, &name),
                    _dir: None,
                    pg: Some((base, name)),
                }
            }
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        let store = keyflow_store::connect(&self.url)
            .await
            .expect("connect store");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside async; a small runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&base).await
                {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    // The tenant SQL reader role Keyflow made for that database.
                    let role: Result<String, _> =
                        sqlx::query_scalar("SELECT 'keyflow_tenant_' || left(md5($1), 12)")
                            .bind(&name)
                            .fetch_one(&mut conn)
                            .await;
                    if let Ok(role) = role {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP ROLE IF EXISTS \"{role}\""
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub base_url: String,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub state: SharedState,
    pub store: Arc<dyn Store>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Kept so the database lives as long as the server.
    pub db: TestDb,
    /// [`Backend::ThreeInstances`]: the other two instances, which take
    /// turns with this one in answering [`Self::request`].
    pub peers: Vec<TestApp>,
    turn: std::sync::atomic::AtomicUsize,
    redis: Option<RedisServer>,
}

/// A seeded tenant: a pro workspace, a live project and a secret key with every scope.
pub struct Tenant {
    pub workspace_id: String,
    pub project_id: String,
    pub key: String,
    pub key_id: String,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// Asserts SPEC §2's error shape, status and code, and the request id.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.error_code(), code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(
            self.body["error"]["details"].is_object(),
            "details: {}",
            self.body
        );
        let id = self.body["error"]["request_id"].as_str().unwrap_or("");
        assert!(!id.is_empty());
        assert_eq!(self.header("x-request-id"), Some(id));
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_on("127.0.0.1:0", backend, configure).await
    }

    pub async fn start_on(
        bind: &str,
        backend: Backend,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let db = TestDb::create(backend).await;
        let mut config = Config {
            admin_token: Some(keyflow_server::config::Secret::new(ADMIN_TOKEN)),
            ..Config::default()
        };
        if backend == Backend::ThreeInstances {
            return Self::three_instances(bind, db, config, configure).await;
        }
        configure(&mut config);
        Self::launch(bind, db, config).await
    }

    /// This instance on `bind` and two peers, one database, one Redis, one
    /// clock. Keys stay cached a minute, so only Redis can make a peer see
    /// a change sooner.
    async fn three_instances(
        bind: &str,
        db: TestDb,
        mut config: Config,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let redis = RedisServer::start();
        config.redis_url = Some(keyflow_server::config::Secret::new(redis.url()));
        config.key_cache_ttl_secs = 60;
        configure(&mut config);
        let url = db.url.clone();
        let clock = ManualClock::starting_now();
        let mut app = Self::launch_with_clock(bind, db, config.clone(), clock.clone()).await;
        for _ in 0..2 {
            let peer = Self::launch_with_clock(
                "127.0.0.1:0",
                TestDb::existing(&url),
                config.clone(),
                clock.clone(),
            )
            .await;
            app.peers.push(peer);
        }
        for instance in std::iter::once(&app).chain(&app.peers) {
            let started = std::time::Instant::now();
            while !instance
                .state
                .redis_limiter
                .as_ref()
                .is_some_and(|l| l.is_reachable())
                || !instance
                    .state
                    .redis
                    .as_ref()
                    .is_some_and(|l| l.is_connected())
            {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "Redis unreachable"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        app.redis = Some(redis);
        app
    }

    /// The base URL whose turn it is: this instance's, or in turn each
    /// peer's ([`Backend::ThreeInstances`]).
    pub fn next_base(&self) -> String {
        if self.peers.is_empty() {
            return self.base_url.clone();
        }
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match turn % (self.peers.len() + 1) {
            0 => self.base_url.clone(),
            i => self.peers[i - 1].base_url.clone(),
        }
    }

    /// A second instance on this one's database: its own caches, limiter
    /// and clock (SPEC §11's several instances).
    pub async fn another_instance(&self) -> Self {
        let mut config = self.state.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("address");
        Self::launch("127.0.0.1:0", TestDb::existing(&self.db.url), config).await
    }

    pub async fn launch(bind: &str, db: TestDb, config: Config) -> Self {
        Self::launch_with_clock(bind, db, config, ManualClock::starting_now()).await
    }

    async fn launch_with_clock(bind: &str, db: TestDb, config: Config, clock: ManualClock) -> Self {
        let store = db.store().await;
        let state = keyflow_server::build_state(config, store.clone(), Arc::new(clock.clone()));
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(keyflow_server::launch_with_listener(
            state.clone(),
            listener,
            async {
                let _ = rx.await;
            },
        ));
        let host = if addr.is_ipv6() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        Self {
            base_url: format!("http://{host}:{}", addr.port()),
            addr,
            client: reqwest::Client::new(),
            clock,
            state,
            store,
            shutdown: Some(tx),
            server: Some(server),
            db,
            peers: Vec::new(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            redis: None,
        }
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server the way SIGTERM does (drain, flush) and waits for it.
    pub async fn stop(&mut self) {
        for peer in &mut self.peers {
            Box::pin(peer.stop()).await;
        }
        self.begin_shutdown();
        if let Some(handle) = self.server.take() {
            handle.await.expect("server task").expect("server result");
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.next_base()));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::reply(req).await
    }

    pub async fn reply(req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.request(Method::GET, path, Some(key), None).await
    }
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(key), Some(body))
            .await
    }
    pub async fn patch(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(Method::PATCH, path, Some(key), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str, key: &str) -> Reply {
        self.request(Method::DELETE, path, Some(key), None).await
    }
    /// A bodiless admin request (GET, DELETE) with the admin token.
    pub async fn admin_call(&self, method: Method, path: &str) -> Reply {
        self.request(method, path, Some(ADMIN_TOKEN), None).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Value) -> Reply {
        self.request(method, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    /// Creates a workspace on `plan`, a live project and an all-scopes secret key.
    pub async fn tenant_on(&self, plan: &str) -> Tenant {
        let ws = self
            .admin(
                Method::POST,
                "/admin/v1/workspaces",
                json!({"name": "Acme", "plan": plan}),
            )
            .await;
        assert_eq!(ws.status, 201, "{}", ws.body);
        let workspace_id = ws.body["id"].as_str().unwrap().to_string();
        let project = self
            .admin(
                Method::POST,
                &format!("/admin/v1/workspaces/{workspace_id}/projects"),
                json!({"name": "Production", "environment": "live"}),
            )
            .await;
        assert_eq!(project.status, 201, "{}", project.body);
        let project_id = project.body["id"].as_str().unwrap().to_string();
        let key = self
            .admin(
                Method::POST,
                &format!("/admin/v1/projects/{project_id}/keys"),
                json!({"name": "root", "type": "secret"}),
            )
            .await;
        assert_eq!(key.status, 201, "{}", key.body);
        Tenant {
            workspace_id,
            project_id,
            key: key.body["key"].as_str().unwrap().to_string(),
            key_id: key.body["id"].as_str().unwrap().to_string(),
        }
    }

    pub async fn tenant(&self) -> Tenant {
        self.tenant_on("pro").await
    }

    /// Creates a key through the Management API with `creator`; asserts 201.
    pub async fn create_key(&self, creator: &str, body: Value) -> (String, String) {
        let reply = self.post("/v1/keys", creator, body).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_string(),
            reply.body["key"].as_str().unwrap().to_string(),
        )
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// The test Python that `scripts/test` prepares (a virtualenv with
/// segment-analytics-python and openapi-spec-validator), or `None` — a loud
/// skip — outside CI. Under CI a missing one fails the test.
pub fn test_python() -> Option<String> {
    match std::env::var("KEYFLOW_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("KEYFLOW_TEST_PYTHON must name the test Python under CI (scripts/test sets it)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: KEYFLOW_TEST_PYTHON is not set; run scripts/test for the Python-based tests"
            );
            None
        }
    }
}

/// The migrations a fresh database of `backend` applies, in order (SQLite
/// has its contact index off the ingest path, 0018; PostgreSQL its job
/// notifications, 0021).
pub fn migration_names(backend: Backend) -> Vec<&'static str> {
    let mut names = vec![
        "0001_foundation",
        "0002_customer_data",
        "0003_sessions",
        "0004_key_usage",
        "0005_project_settings",
        "0006_metrics_credentials",
        "0007_events_by_project",
        "0008_events_contact_partial",
        "0009_key_rolled_at",
        "0010_contact_emails_nfc",
        "0011_idempotency_without_rowid",
        "0012_generations",
        "0013_metrics_rollups",
        "0014_metrics_tokens",
        "0015_tenant_sql",
        "0016_form_nonces",
        "0017_tenant_sql_value_caps",
    ];
    if backend == Backend::Sqlite {
        names.push("0018_event_contacts");
    }
    names.push("0019_workflows");
    names.push("0020_workflow_runs");
    if backend != Backend::Sqlite {
        names.push("0021_job_wakeups");
    }
    names.push("0022_workflow_entries");
    names.push("0023_contacts_by_project");
    if backend == Backend::Sqlite {
        names.push("0024_idempotency_runs");
    }
    names
}

//! Health, metrics, request ids, framework errors in our shape, last-used
//! aggregation and graceful shutdown.

use reqwest::Method;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

async fn health_endpoints_and_request_ids(backend: Backend) {
    let app = TestApp::start(backend).await;
    let live = app.request(Method::GET, "/livez", None, None).await;
    assert_eq!(live.status, 200);
    assert!(live.header("x-request-id").unwrap().starts_with("req_"));
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.body["database"],
        if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    let a = app.request(Method::GET, "/livez", None, None).await;
    assert_ne!(a.header("x-request-id"), live.header("x-request-id"));
}

async fn framework_errors_use_the_error_shape(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.request(Method::GET, "/nowhere", None, None)
        .await
        .assert_error(404, "not_found");
    let wrong_method = app.request(Method::PUT, "/livez", None, None).await;
    wrong_method.assert_error(405, "method_not_allowed");
    assert!(wrong_method.header("allow").is_some());
    // A /v1 path answers a method it lacks like an unknown path: before
    // authentication, so without a key too, and naming the methods it has.
    let wrong_v1 = app.request(Method::PUT, "/v1/events", None, None).await;
    wrong_v1.assert_error(405, "method_not_allowed");
    let allow = wrong_v1.header("allow").unwrap_or_default().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let bad_query = app
        .request(Method::GET, "/v1/keys/self?x=%ZZ", None, None)
        .await;
    assert!(bad_query.status == 401 || bad_query.status == 400);
    assert!(bad_query.body["error"]["code"].is_string());
}

async fn metrics_are_prometheus_text(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    app.get("/v1/keys/self", &t.key).await;
    app.get("/v1/keys/self", &t.key).await;
    app.get("/v1/keys/self", "sk_live_bad").await;
    app.get("/nowhere/at/all", &t.key).await;
    let (_, limited) = app
        .create_key(
            &t.key,
            json!({"name": "tight", "type": "secret", "rate_limit": {"limit": 1, "period_seconds": 60}}),
        )
        .await;
    for _ in 0..2 {
        app.post(
            "/v1/events",
            &limited,
            json!({"name": "signup", "external_id": "u1"}),
        )
        .await;
    }
    let resp = app
        .client
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let samples = prometheus_text::parse(&text);
    let value =
        |name: &str, labels: &[(&str, &str)]| prometheus_text::value(&samples, name, labels);

    // Requests by route template and status class, with a latency histogram.
    assert_eq!(
        value(
            "keyflow_http_requests_total",
            &[
                ("route", "/v1/keys/self"),
                ("method", "GET"),
                ("class", "2xx")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            "keyflow_http_requests_total",
            &[
                ("route", "/v1/keys/self"),
                ("method", "GET"),
                ("class", "4xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "keyflow_http_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("class", "4xx")]
        ),
        Some(1.0),
        "an unknown path is counted under one label, not its own"
    );
    assert!(!text.contains("/nowhere"), "{text}");
    assert_eq!(
        value(
            "keyflow_http_request_duration_seconds_count",
            &[("route", "/v1/keys/self"), ("method", "GET")]
        ),
        Some(3.0)
    );
    // Refusals by code, 429s by category, the key cache.
    assert_eq!(
        value(
            "keyflow_auth_rejections_total",
            &[("code", "invalid_api_key")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("keyflow_rate_limited_total", &[("category", "ingest")]),
        Some(1.0)
    );
    assert_eq!(
        value("keyflow_rate_limited_total", &[("category", "read")]),
        Some(0.0)
    );
    assert_eq!(value("keyflow_key_cache_misses_total", &[]), Some(2.0));
    assert!(value("keyflow_key_cache_hits_total", &[]).unwrap() >= 2.0);
    // The accepted event went through one group commit of one event.
    assert_eq!(value("keyflow_ingest_commit_events_count", &[]), Some(1.0));
    assert_eq!(
        value("keyflow_ingest_commit_events_bucket", &[("le", "1")]),
        Some(1.0)
    );
    assert_eq!(value("keyflow_ingest_commit_seconds_count", &[]), Some(1.0));
    // Health read at scrape time.
    assert_eq!(value("keyflow_database_up", &[]), Some(1.0));
    assert_eq!(value("keyflow_jobs_queued", &[]), Some(0.0));
    assert_eq!(value("keyflow_jobs_oldest_due_age_seconds", &[]), Some(0.0));
}

/// A strict reader of Prometheus' text format (0.0.4), enough to check what
/// `/metrics` writes: every sample's metric has a `# TYPE` line before it,
/// label values are quoted, values are numbers, and each histogram's
/// buckets are cumulative and end at `+Inf` = `_count`.
mod prometheus_text {
    use std::collections::{BTreeMap, HashMap};

    pub struct Sample {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub value: f64,
    }

    pub fn parse(text: &str) -> Vec<Sample> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE given twice: {line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample and value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    labels(rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
                ),
                None => (series, BTreeMap::new()),
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE before {line}");
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        check_histograms(&samples, &types);
        samples
    }

    fn labels(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            assert!(out.insert(name.to_string(), value).is_none(), "{text}");
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        out
    }

    type Bucket = (f64, f64);

    fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket = format!("{family}_bucket");
            // Labels but `le` → (le, cumulative count) per bucket.
            let mut series: BTreeMap<Vec<(String, String)>, Vec<Bucket>> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.name == bucket) {
                let mut key: Vec<_> = s.labels.clone().into_iter().collect();
                key.retain(|(k, _)| k != "le");
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in series {
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{family} {key:?}: buckets not cumulative"
                );
                let last = buckets.last().unwrap();
                assert_eq!(last.0, f64::INFINITY, "{family} {key:?}: no +Inf bucket");
                let labels: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let count = value(samples, &format!("{family}_count"), &labels);
                assert_eq!(count, Some(last.1), "{family} {key:?}: +Inf != _count");
            }
        }
    }

    /// The value of the one sample of `name` whose labels are exactly `labels`.
    pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let first = found.next()?;
        assert!(found.next().is_none(), "{name} {labels:?} twice");
        Some(first.value)
    }
}

async fn last_used_is_aggregated_not_written_per_request(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let t = app.tenant().await;
    for _ in 0..3 {
        assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    }
    // Nothing written yet: the store still has no last_used_at...
    let stored = app
        .store
        .get_api_key(&t.project_id, &t.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_used_at, None);
    // ...while the API already reports it from memory.
    let me = app.get(&format!("/v1/keys/{}", t.key_id), &t.key).await;
    assert!(me.body["last_used_at"].is_string());
    // Shutdown flushes, in one batch.
    app.stop().await;
    let stored = app
        .store
        .get_api_key(&t.project_id, &t.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_used_at, Some(app.now_ms()));
    assert_eq!(stored.last_used_ip.as_deref(), Some("127.0.0.1"));
}

async fn periodic_flush_writes_usage(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.last_used_flush_secs = 1).await;
    let t = app.tenant().await;
    app.get("/v1/keys/self", &t.key).await;
    // The flusher runs every second; wait for it (bounded), no fixed sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stored = app
            .store
            .get_api_key(&t.project_id, &t.key_id)
            .await
            .unwrap()
            .unwrap();
        if stored.last_used_at.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage was not flushed within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn graceful_shutdown_finishes_in_flight_requests(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = TestApp::start(backend).await;
    let t = app.tenant().await;
    // A request whose headers are in but whose body is not: it is in flight.
    let body = json!({"name": "late", "type": "secret"}).to_string();
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.key,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Wait (bounded) until the server has authenticated it and is reading the body.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.state.usage.pending(&t.key_id).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "request never reached the handler"
        );
        tokio::task::yield_now().await;
    }
    app.begin_shutdown();
    // Shutdown has begun once new connections are refused (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(app.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "server kept accepting"
        );
        tokio::task::yield_now().await;
    }
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    app.stop().await;
    // And what it did is stored.
    let keys = app
        .store
        .list_api_keys(
            &t.project_id,
            false,
            &keyflow_store::Page {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.settings.name == "late"));
}

/// SPEC §7: `/readyz` reports an unreachable database with 503 `unavailable`
/// while `/livez` (no I/O) stays 200. PostgreSQL only: an open SQLite file
/// cannot be taken away from a running process.
#[tokio::test]
async fn readyz_is_503_when_the_database_is_gone() {
    let app = TestApp::start(Backend::Postgres).await;
    assert_eq!(
        app.request(Method::GET, "/readyz", None, None).await.status,
        200
    );
    app.db.drop_postgres_now().await;
    app.request(Method::GET, "/readyz", None, None)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(
        app.request(Method::GET, "/livez", None, None).await.status,
        200
    );
}

/// A NUL character reaches no store (PostgreSQL cannot hold it in text):
/// refused in one place with 422 (404 in a path), the same on both stores,
/// never a 503.
async fn nul_characters_are_refused_everywhere(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    for path in [
        "/v1/contacts?email=a%00b@x.io",
        "/v1/contacts?external_id=x%00",
        "/v1/contacts?cursor=%00",
        "/v1/events?name=a%00",
        "/v1/events?contact_id=%00",
        "/v1/audit?actor=%00",
        "/v1/keys?cursor=abc%00",
    ] {
        let reply = app.get(path, &t.key).await;
        reply.assert_error(422, "validation_failed");
        assert!(reply.body["error"]["details"]["fields"][0]["field"].is_string());
    }
    for path in ["/v1/contacts/a%00b", "/v1/keys/%00", "/v1/events%00"] {
        app.get(path, &t.key).await.assert_error(404, "not_found");
    }
    for (path, body) in [
        (
            "/v1/events",
            json!({"name": "x", "anonymous_id": "a", "idempotency_key": "k\u{0}"}),
        ),
        ("/v1/events", json!({"name": "x", "external_id": "\u{0}"})),
        (
            "/v1/contacts",
            json!({"email": "a@x.io", "properties": {"k": "v\u{0}"}}),
        ),
    ] {
        app.post(path, &t.key, body)
            .await
            .assert_error(422, "validation_failed");
    }
    // Segment, with a client key over Basic auth.
    let (_, client) = app
        .create_key(&t.key, json!({"name": "web", "type": "client"}))
        .await;
    let segment = TestApp::reply(
        app.client
            .post(format!("{}/v1/track", app.base_url))
            .basic_auth(&client, Some(""))
            .json(&json!({"event": "x", "anonymousId": "a", "messageId": "m\u{0}"})),
    )
    .await;
    segment.assert_error(422, "validation_failed");
    // The dashboard's filters and sign-in.
    let page = TestApp::reply(app.client.get(format!("{}/events?name=%00", app.base_url))).await;
    assert_eq!(page.status, 422);
    let events = app.get("/v1/events", &t.key).await;
    assert_eq!(events.body["data"], json!([]));
}

backend_tests!(
    nul_characters_are_refused_everywhere,
    health_endpoints_and_request_ids,
    framework_errors_use_the_error_shape,
    metrics_are_prometheus_text,
    last_used_is_aggregated_not_written_per_request,
    periodic_flush_writes_usage,
    graceful_shutdown_finishes_in_flight_requests,
);

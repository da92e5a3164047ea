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
    app.get("/v1/keys/self", "sk_live_bad").await;
    let resp = app
        .client
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("keyflow_auth_rejections_total{code=\"invalid_api_key\"} 1"),
        "{text}"
    );
    assert!(text.contains("keyflow_key_store_lookups_total 1"), "{text}");
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

//! Connection handling with real sockets (SPEC §7): header-read and idle
//! timeouts, the connection cap, the open-file limit, bounded shutdown,
//! oversized headers in our error shape, and gzip bodies.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

/// Waits until the server closes `stream` (EOF or reset); how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

async fn half_sent(app: &TestApp) -> TcpStream {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

async fn slow_and_idle_clients_are_cut_off(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.header_read_timeout_secs = 1).await;
    // Half a request: closed after the header-read timeout.
    let mut slow = half_sent(&app).await;
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(800)),
        "{took:?}"
    );
    // A keep-alive connection that goes quiet after a request: closed too.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );
    // The open-file soft limit was raised to the hard limit at start.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert_eq!(soft, hard);
}

/// Past the cap, a new client waits for a slot (freed here by the
/// header-read timeout) instead of exhausting descriptors; it is then served.
async fn connections_are_capped(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.header_read_timeout_secs = 1;
        c.max_connections = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(half_sent(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .get(format!("{}/livez", app.base_url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served at once: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

/// One address cannot take every slot: past its cap its new connections are
/// closed at once, while other addresses (and trusted proxies) go on.
async fn one_address_cannot_take_every_slot(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(half_sent(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = TcpStream::connect(app.addr).await.unwrap();
    let _ = refused
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let answer = tokio::time::timeout(Duration::from_secs(3), refused.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(answer, Ok(0) | Err(_)), "{answer:?}");
    // A slot freed is a slot again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = reqwest::Client::new()
        .get(format!("{}/livez", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // A trusted proxy carries many clients: no per-address cap for it.
    let proxied = TestApp::start_with(backend, |c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let _a = half_sent(&proxied).await;
    let _b = half_sent(&proxied).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ok = reqwest::Client::new()
        .get(format!("{}/livez", proxied.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A client that pipelines requests and never reads the answers cannot hold
/// its slot: the write stalls, and after `request_timeout_secs` the
/// connection is dropped, so the next client (cap 1 here) is served.
async fn clients_that_never_read_lose_their_slot(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.request_timeout_secs = 1;
        c.max_connections = 1;
    })
    .await;
    let mut hog = TcpStream::connect(app.addr).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    // Written from a task: the server stops reading once its writes stall.
    let writer = tokio::spawn(async move {
        let _ = hog.write_all(&request).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(hog);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .get(format!("{}/livez", app.base_url))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    writer.abort();
}

/// Shutdown waits for in-flight requests at most the shutdown timeout, even
/// with a client stuck half-way through its headers.
async fn shutdown_is_bounded(backend: Backend) {
    let mut app = TestApp::start_with(backend, |c| {
        c.header_read_timeout_secs = 60;
        c.shutdown_timeout_secs = 1;
    })
    .await;
    let _stuck = half_sent(&app).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown finished");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Oversized header blocks get a 431 in the error shape, with a request id.
async fn oversized_headers_get_the_error_shape(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut many = reqwest::Client::new().get(format!("{}/v1/keys/self", app.base_url));
    for i in 0..80 {
        many = many.header(format!("x-filler-{i}"), "v");
    }
    TestApp::reply(many)
        .await
        .assert_error(431, "request_header_fields_too_large");
    let big = reqwest::Client::new()
        .get(format!("{}/v1/keys/self", app.base_url))
        .header("x-big", "a".repeat(40 * 1024));
    TestApp::reply(big)
        .await
        .assert_error(431, "request_header_fields_too_large");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Tracking libraries gzip their bodies; the 1 MiB limit applies to the
/// decompressed body, so a gzip bomb is refused without being inflated.
async fn gzip_bodies_are_accepted_within_the_limit(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let body = serde_json::to_vec(&json!({"name": "signup", "anonymous_id": "a1"})).unwrap();
    let post = |bytes: Vec<u8>, encoding: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/v1/events", app.base_url))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(bytes)
    };
    let ok = TestApp::reply(post(gzip(&body), "gzip")).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(&body).unwrap();
    let ok = TestApp::reply(post(deflate.finish().unwrap(), "deflate")).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    // 64 MiB of spaces inside a JSON string, ~64 KiB compressed.
    let mut bomb = b"{\"name\": \"x\", \"anonymous_id\": \"".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 * 1024 * 1024));
    bomb.extend(b"\"}");
    let compressed = gzip(&bomb);
    drop(bomb);
    assert!(compressed.len() < 1024 * 1024);
    TestApp::reply(post(compressed, "gzip"))
        .await
        .assert_error(413, "payload_too_large");
    TestApp::reply(post(body.clone(), "br"))
        .await
        .assert_error(415, "unsupported_media_type");
    // The way tracking libraries send it: a gzipped Segment batch of
    // identified events with message ids, over Basic auth.
    let batch = serde_json::to_vec(&json!({"batch": [
        {"type": "track", "event": "signup", "userId": "u1", "messageId": "m1"},
        {"type": "identify", "userId": "u1", "traits": {"email": "u1@x.io"}},
    ]}))
    .unwrap();
    let segment = TestApp::reply(
        reqwest::Client::new()
            .post(format!("{}/v1/batch", app.base_url))
            .basic_auth(&t.key, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gzip(&batch)),
    )
    .await;
    assert_eq!(segment.status, 200, "{}", segment.body);
    let contact = app.get("/v1/contacts?external_id=u1", &t.key).await;
    assert_eq!(contact.body["data"][0]["email"], "u1@x.io");
}

backend_tests!(
    slow_and_idle_clients_are_cut_off,
    connections_are_capped,
    one_address_cannot_take_every_slot,
    clients_that_never_read_lose_their_slot,
    shutdown_is_bounded,
    oversized_headers_get_the_error_shape,
    gzip_bodies_are_accepted_within_the_limit,
);

//! Drop-in Segment compatibility, exercised with the real `segment-analytics-python`
//! library (installed by `scripts/test` into a virtualenv named by KEYFLOW_TEST_PYTHON).

use std::process::Command;

use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

const SCRIPT: &str = r#"
import sys
import segment.analytics as analytics

errors = []
analytics.write_key = sys.argv[1]
analytics.host = sys.argv[2]
analytics.max_retries = 0
analytics.on_error = lambda error, items: errors.append(repr(error))

analytics.identify("user-1", {"email": "ada@example.com", "firstName": "Ada", "plan": "pro"})
analytics.track("user-1", "Signed Up", {"plan": "pro"})
analytics.track(anonymous_id="anon-9", event="Viewed Pricing", properties={"tier": 2})
analytics.page("user-1", "Docs", "Quickstart")
analytics.flush()
analytics.shutdown()
if errors:
    print("\n".join(errors))
    sys.exit(1)
"#;

fn run_python(python: &str, key: &str, host: &str) -> std::process::Output {
    Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(key)
        .arg(host)
        .output()
        .expect("run python")
}

async fn official_segment_library_works_unchanged(backend: Backend) {
    let Some(python) = crate::harness::test_python() else {
        return;
    };
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(&t.key, json!({"name": "segment", "type": "client", "scopes": ["events:write", "contacts:write"]}))
        .await;
    let out = tokio::task::spawn_blocking({
        let (python, key, host) = (python.clone(), key.clone(), app.base_url.clone());
        move || run_python(&python, &key, &host)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // identify → contact (userId → external_id, traits.email → email, other traits → properties).
    let contact = app.get("/v1/contacts?external_id=user-1", &t.key).await;
    let c = &contact.body["data"][0];
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["first_name"], "Ada");
    assert_eq!(c["properties"], json!({"plan": "pro"}));
    // track → events; page is acknowledged but not stored.
    let events = app.get("/v1/events", &t.key).await;
    let data = events.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{}", events.body);
    let signed_up = data.iter().find(|e| e["name"] == "Signed Up").unwrap();
    assert_eq!(signed_up["contact_id"], c["id"]);
    assert_eq!(signed_up["properties"], json!({"plan": "pro"}));
    assert!(
        signed_up["idempotency_key"].is_string(),
        "messageId becomes the idempotency key"
    );
    let viewed = data.iter().find(|e| e["name"] == "Viewed Pricing").unwrap();
    assert_eq!(viewed["anonymous_id"], "anon-9");
    // The library's identify went through the key: audited with it.
    let audit = app.get("/v1/audit", &t.key).await;
    assert!(
        audit.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "contact.created" && e["actor"]["name"] == "segment")
    );
    // A key without contacts:write: the library reports the 403.
    let (_, events_only) = app
        .create_key(&t.key, json!({"name": "events-only", "type": "client"}))
        .await;
    let refused = tokio::task::spawn_blocking({
        let host = app.base_url.clone();
        move || run_python(&python, &events_only, &host)
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

async fn segment_endpoints_with_basic_auth(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "s", "type": "client", "allowed_events": ["Order Completed"]}),
        )
        .await;
    let post = |path: &str, body: serde_json::Value| {
        app.client
            .post(format!("{}{path}", app.base_url))
            .basic_auth(&key, Some(""))
            .json(&body)
    };
    let ok = TestApp::reply(post("/v1/track", json!({"userId": 42, "event": "Order Completed", "messageId": "m-1", "timestamp": "2026-11-23T10:00:00.123456+00:00"}))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, json!({"success": true}));
    // Same messageId: stored once.
    TestApp::reply(post(
        "/v1/track",
        json!({"userId": 42, "event": "Order Completed", "messageId": "m-1"}),
    ))
    .await;
    TestApp::reply(post(
        "/v1/track",
        json!({"userId": 42, "event": "Refunded"}),
    ))
    .await
    .assert_error(403, "event_not_allowed");
    TestApp::reply(post(
        "/v1/identify",
        json!({"userId": "42", "traits": {"email": "x@y.io"}}),
    ))
    .await
    .assert_error(403, "insufficient_scope");
    TestApp::reply(post("/v1/batch", json!({"batch": [{"type": "track", "anonymousId": "a", "event": "Order Completed"}, {"type": "identify", "userId": "42"}]})))
        .await
        .assert_error(403, "insufficient_scope");
    TestApp::reply(post(
        "/v1/batch",
        json!({"batch": [{"type": "track", "anonymousId": "a"}]}),
    ))
    .await
    .assert_error(422, "validation_failed");
    // Bearer still works; Basic is not accepted on other endpoints.
    let basic_elsewhere = TestApp::reply(
        app.client
            .post(format!("{}/v1/events", app.base_url))
            .basic_auth(&key, Some(""))
            .json(&json!({"name": "x", "anonymous_id": "a"})),
    )
    .await;
    basic_elsewhere.assert_error(401, "missing_api_key");
    let events = app.get("/v1/events", &t.key).await;
    let data = events.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["timestamp"], "2026-11-23T10:00:00.123Z");
    let contact = app.get("/v1/contacts?external_id=42", &t.key).await;
    assert_eq!(data[0]["contact_id"], contact.body["data"][0]["id"]);
}

/// A `/v1/batch` is checked whole before anything is applied: an invalid,
/// refused or rate-limited batch leaves its `identify` items unapplied.
async fn a_failing_batch_applies_no_identify(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "seg", "type": "secret", "allowed_events": ["ok"],
                   "rate_limit": {"limit": 3, "period_seconds": 60}}),
        )
        .await;
    let batch = |track: serde_json::Value| {
        app.client
            .post(format!("{}/v1/batch", app.base_url))
            .basic_auth(&key, Some(""))
            .json(&json!({"batch": [
                {"type": "identify", "userId": "u1", "traits": {"email": "u1@x.io"}},
                track,
            ]}))
    };
    let invalid =
        TestApp::reply(batch(json!({"type": "track", "userId": "u1", "event": ""}))).await;
    invalid.assert_error(422, "validation_failed");
    let refused = TestApp::reply(batch(
        json!({"type": "track", "userId": "u1", "event": "nope"}),
    ))
    .await;
    refused.assert_error(403, "event_not_allowed");
    for _ in 0..3 {
        TestApp::reply(
            app.client
                .post(format!("{}/v1/track", app.base_url))
                .basic_auth(&key, Some(""))
                .json(&json!({"event": "ok", "anonymousId": "a"})),
        )
        .await;
    }
    let limited = TestApp::reply(batch(
        json!({"type": "track", "userId": "u1", "event": "ok"}),
    ))
    .await;
    limited.assert_error(429, "rate_limited");
    let found = app.get("/v1/contacts?external_id=u1", &t.key).await;
    assert_eq!(found.body["data"], json!([]), "{}", found.body);
}

backend_tests!(
    official_segment_library_works_unchanged,
    segment_endpoints_with_basic_auth,
    a_failing_batch_applies_no_identify,
);

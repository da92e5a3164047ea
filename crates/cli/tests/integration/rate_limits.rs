//! Per-key, per-category GCRA with consistent headers; failed-auth limiting per IP.

use keyflow_core::keys::generate_key;
use keyflow_core::{Environment, KeyType};
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, Reply, TestApp};

fn num(reply: &Reply, name: &str) -> i64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .parse()
        .unwrap()
}

async fn burst_then_429_with_consistent_headers(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(&t.key, json!({"name": "tight", "type": "secret", "rate_limit": {"limit": 3, "period_seconds": 60}}))
        .await;
    let now_s = app.now_ms() / 1000;
    let mut remaining = vec![];
    for _ in 0..3 {
        let r = app.get("/v1/keys/self", &key).await;
        assert_eq!(r.status, 200);
        assert_eq!(num(&r, "x-ratelimit-limit"), 3);
        let reset = num(&r, "x-ratelimit-reset");
        assert!(
            reset > now_s && reset <= now_s + 61,
            "reset {reset} is Unix seconds within the period"
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"management\";q=3;w=60")
        );
        remaining.push(num(&r, "x-ratelimit-remaining"));
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    let limited = app.get("/v1/keys/self", &key).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(num(&limited, "x-ratelimit-remaining"), 0);
    let retry = num(&limited, "retry-after");
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.header("cache-control"), Some("no-store"));
    assert!(
        limited
            .header("ratelimit")
            .unwrap()
            .starts_with("\"management\";r=0;t=")
    );
    // Smooth refill: one interval (20 s) later exactly one more request passes.
    app.clock.advance_ms(20_000);
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 429);
}

async fn rejected_requests_do_not_consume_quota(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "ro", "type": "read_only", "rate_limit": {"limit": 2, "period_seconds": 60}}),
        )
        .await;
    for _ in 0..5 {
        let r = app.get("/v1/keys", &key).await; // lacks keys:read
        r.assert_error(403, "insufficient_scope");
        assert_eq!(num(&r, "x-ratelimit-remaining"), 2);
    }
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 429);
    // With the quota exhausted, a 403 still reports it but says nothing about retrying.
    let refused = app.get("/v1/keys", &key).await;
    refused.assert_error(403, "insufficient_scope");
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.header("retry-after").is_none());
}

async fn plan_default_applies_per_category(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(2);
    })
    .await;
    let t = app.tenant().await;
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    assert_eq!(app.get("/v1/audit", &t.key).await.status, 200);
    // Both are `management`: the third request of the category is refused.
    app.get("/v1/keys", &t.key)
        .await
        .assert_error(429, "rate_limited");
    // Another key has its own bucket.
    let other = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
            json!({"name": "other", "type": "secret"}),
        )
        .await;
    assert_eq!(
        app.get("/v1/keys/self", other.body["key"].as_str().unwrap())
            .await
            .status,
        200
    );
}

async fn failed_authentications_are_limited_per_ip(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.failed_auth_per_minute = 5).await;
    let t = app.tenant().await;
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200); // cached from here on
    for _ in 0..5 {
        let guess = generate_key(KeyType::Secret, Environment::Live).unwrap();
        app.get("/v1/keys/self", &guess.text)
            .await
            .assert_error(401, "invalid_api_key");
    }
    let guess = generate_key(KeyType::Secret, Environment::Live).unwrap();
    let limited = app.get("/v1/keys/self", &guess.text).await;
    limited.assert_error(429, "rate_limited");
    assert!(num(&limited, "retry-after") >= 1);
    let lookups = app
        .state
        .metrics
        .key_store_lookups
        .load(std::sync::atomic::Ordering::Relaxed);
    let another = generate_key(KeyType::Secret, Environment::Live).unwrap();
    app.get("/v1/keys/self", &another.text)
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(
        app.state
            .metrics
            .key_store_lookups
            .load(std::sync::atomic::Ordering::Relaxed),
        lookups,
        "an address over its failure budget gets no more database lookups"
    );
    // A valid, already-cached key from the same address still works.
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    app.clock.advance_ms(60_000);
    let later = generate_key(KeyType::Secret, Environment::Live).unwrap();
    app.get("/v1/keys/self", &later.text)
        .await
        .assert_error(401, "invalid_api_key");
}

backend_tests!(
    burst_then_429_with_consistent_headers,
    rejected_requests_do_not_consume_quota,
    plan_default_applies_per_category,
    failed_authentications_are_limited_per_ip,
);

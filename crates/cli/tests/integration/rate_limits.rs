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
        .prometheus
        .key_cache_misses
        .load(std::sync::atomic::Ordering::Relaxed);
    let another = generate_key(KeyType::Secret, Environment::Live).unwrap();
    app.get("/v1/keys/self", &another.text)
        .await
        .assert_error(429, "rate_limited");
    assert_eq!(
        app.state
            .prometheus
            .key_cache_misses
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

/// Only guesses count (SPEC §2): a service still using a revoked or expired
/// key at speed does not lock the other keys of its address out.
async fn stale_keys_are_not_guesses(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.failed_auth_per_minute = 5).await;
    let t = app.tenant().await;
    let (revoked_id, revoked) = app
        .create_key(&t.key, json!({"name": "old", "type": "secret"}))
        .await;
    app.delete(&format!("/v1/keys/{revoked_id}"), &t.key).await;
    let soon = keyflow_core::timefmt::format_rfc3339(app.now_ms() + 1_000);
    let (_, expired) = app
        .create_key(
            &t.key,
            json!({"name": "exp", "type": "secret", "expires_at": soon}),
        )
        .await;
    app.clock.advance_ms(2_000);
    for _ in 0..20 {
        app.get("/v1/keys/self", &revoked)
            .await
            .assert_error(401, "key_revoked");
        app.get("/v1/keys/self", &expired)
            .await
            .assert_error(401, "key_expired");
    }
    // A key not yet cached, from the same address, still gets looked up.
    let (_, fresh) = app
        .create_key(&t.key, json!({"name": "fresh", "type": "secret"}))
        .await;
    assert_eq!(app.get("/v1/keys/self", &fresh).await.status, 200);
}

/// Failed guesses from one IPv6 /64 share one budget (SPEC §2); failed
/// admin-token attempts are limited like failed key authentications (§8).
async fn ipv6_per_64_and_admin_token_guesses_are_limited(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.failed_auth_per_minute = 5;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for i in 0..5 {
        let guess = generate_key(KeyType::Secret, Environment::Live).unwrap();
        let reply = TestApp::reply(
            app.client
                .get(format!("{}/v1/keys/self", app.base_url))
                .bearer_auth(&guess.text)
                .header("x-forwarded-for", format!("2001:db8:5:5::{i:x}")),
        )
        .await;
        reply.assert_error(401, "invalid_api_key");
    }
    let guess = generate_key(KeyType::Secret, Environment::Live).unwrap();
    TestApp::reply(
        app.client
            .get(format!("{}/v1/keys/self", app.base_url))
            .bearer_auth(&guess.text)
            .header("x-forwarded-for", "2001:db8:5:5:ffff::1"),
    )
    .await
    .assert_error(429, "rate_limited");
    // Another /64 has its own budget.
    TestApp::reply(
        app.client
            .get(format!("{}/v1/keys/self", app.base_url))
            .bearer_auth(&guess.text)
            .header("x-forwarded-for", "2001:db8:5:6::1"),
    )
    .await
    .assert_error(401, "invalid_api_key");
    // Admin token guesses.
    let admin = |token: &'static str| {
        app.client
            .post(format!("{}/admin/v1/workspaces", app.base_url))
            .bearer_auth(token)
            .header("x-forwarded-for", "198.51.100.9")
            .json(&json!({"name": "x", "plan": "pro"}))
    };
    for _ in 0..5 {
        TestApp::reply(admin("wrong-token"))
            .await
            .assert_error(401, "unauthorized");
    }
    let limited = TestApp::reply(admin("wrong-token")).await;
    limited.assert_error(429, "rate_limited");
    assert!(num(&limited, "retry-after") >= 1);
    // Even the right token waits out the lockout from that address ...
    TestApp::reply(admin(crate::harness::ADMIN_TOKEN))
        .await
        .assert_error(429, "rate_limited");
    // ... while keys from it are not locked out by the admin-token guesses.
    let guess = generate_key(KeyType::Secret, Environment::Live).unwrap();
    TestApp::reply(
        app.client
            .get(format!("{}/v1/keys/self", app.base_url))
            .bearer_auth(&guess.text)
            .header("x-forwarded-for", "198.51.100.9"),
    )
    .await
    .assert_error(401, "invalid_api_key");
}

/// The plan's limit is a ceiling at run time too: an override set on a
/// higher plan stops counting after a downgrade (SPEC §2).
async fn overrides_above_the_plan_are_not_enforced(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.plan_rate_limits.insert(
            keyflow_core::Plan::Team,
            keyflow_core::RateLimit::per_minute(1000),
        );
    })
    .await;
    let t = app.tenant_on("team").await;
    let (_, key) = app
        .create_key(&t.key, json!({"name": "fast", "type": "secret", "rate_limit": {"limit": 500, "period_seconds": 60}}))
        .await;
    assert_eq!(
        num(&app.get("/v1/keys/self", &key).await, "x-ratelimit-limit"),
        500
    );
    app.admin(
        reqwest::Method::PUT,
        &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
        json!({"plan": "pro"}),
    )
    .await;
    app.clock.advance_ms(2_000); // past the 1-second plan cache
    assert_eq!(
        num(&app.get("/v1/keys/self", &key).await, "x-ratelimit-limit"),
        100
    );
}

backend_tests!(
    overrides_above_the_plan_are_not_enforced,
    stale_keys_are_not_guesses,
    ipv6_per_64_and_admin_token_guesses_are_limited,
    burst_then_429_with_consistent_headers,
    rejected_requests_do_not_consume_quota,
    plan_default_applies_per_category,
    failed_authentications_are_limited_per_ip,
);

//! Every row of SPEC §2's authentication table, in order, plus the client-IP rules.

use keyflow_core::keys::generate_key;
use keyflow_core::{Environment, KeyType};
use reqwest::Method;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

fn lookups(app: &TestApp) -> u64 {
    app.state
        .prometheus
        .key_cache_misses
        .load(std::sync::atomic::Ordering::Relaxed)
}

async fn missing_or_non_bearer_header_is_missing_api_key(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    app.request(Method::GET, "/v1/keys/self", None, None)
        .await
        .assert_error(401, "missing_api_key");
    let basic = app
        .client
        .get(format!("{}/v1/keys/self", app.base_url))
        .basic_auth(&t.key, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let body: serde_json::Value = basic.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    // The scheme is case-insensitive (RFC 7235).
    let lower = app
        .client
        .get(format!("{}/v1/keys/self", app.base_url))
        .header("authorization", format!("bearer {}", t.key))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
}

async fn malformed_and_bad_checksum_keys_never_reach_the_database(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let before = lookups(&app);
    // One character changed: the checksum fails.
    let mut tampered: Vec<char> = t.key.chars().collect();
    tampered[20] = if tampered[20] == 'a' { 'b' } else { 'a' };
    let tampered: String = tampered.into_iter().collect();
    for bad in [
        "nonsense",
        "sk_live_short",
        tampered.as_str(),
        "mk_live_0000000000000000000000000000000000000",
    ] {
        app.get("/v1/keys/self", bad)
            .await
            .assert_error(401, "invalid_api_key");
    }
    // A metrics credential id is never a /v1 bearer key, even with a valid checksum.
    let mk = generate_key(KeyType::Metrics, Environment::Live).unwrap();
    app.get("/v1/keys/self", &mk.text)
        .await
        .assert_error(401, "invalid_api_key");
    assert_eq!(
        lookups(&app),
        before,
        "no lookup for keys failing format or checksum"
    );
}

async fn unknown_key_is_invalid_and_negatively_cached(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.tenant().await;
    let unknown = generate_key(KeyType::Secret, Environment::Live).unwrap();
    let before = lookups(&app);
    app.get("/v1/keys/self", &unknown.text)
        .await
        .assert_error(401, "invalid_api_key");
    app.get("/v1/keys/self", &unknown.text)
        .await
        .assert_error(401, "invalid_api_key");
    assert_eq!(
        lookups(&app),
        before + 1,
        "the second attempt is answered from the negative cache"
    );
}

async fn revoked_key_is_rejected_at_once_even_when_cached(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (id, key) = app
        .create_key(&t.key, json!({"name": "doomed", "type": "read_only"}))
        .await;
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200); // now cached
    assert_eq!(
        app.delete(&format!("/v1/keys/{id}"), &t.key).await.status,
        204
    );
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(401, "key_revoked");
    // Revoked stays revoked; the row is listed with include_revoked.
    let listed = app.get("/v1/keys?include_revoked=true", &t.key).await;
    assert!(
        listed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str() && !k["revoked_at"].is_null())
    );
    let active = app.get("/v1/keys", &t.key).await;
    assert!(
        !active.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str())
    );
}

async fn expired_key_with_injected_clock(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let expires = keyflow_core::timefmt::format_rfc3339(app.now_ms() + 3_600_000);
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "short-lived", "type": "secret", "expires_at": expires}),
        )
        .await;
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
    app.clock.advance_ms(3_600_000);
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(401, "key_expired");
}

async fn plan_downgrade_forbids_and_upgrade_restores(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    let down = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
            json!({"plan": "free"}),
        )
        .await;
    assert_eq!(down.status, 200, "{}", down.body);
    assert_eq!(down.body["plan"], "free");
    let refused = app.get("/v1/keys/self", &t.key).await;
    refused.assert_error(403, "feature_not_allowed");
    assert!(
        refused.header("x-ratelimit-limit").is_some(),
        "authenticated 403s carry quota headers"
    );
    app.admin(
        Method::PUT,
        &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
        json!({"plan": "team"}),
    )
    .await;
    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    // Both changes are in the activity log as plan.changed by the instance admin.
    let audit = app.get("/v1/audit", &t.key).await;
    let changes: Vec<_> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "plan.changed")
        .collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["details"], json!({"from": "free", "to": "team"}));
    assert_eq!(changes[0]["actor"]["type"], "instance_admin");
}

async fn free_workspace_keys_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_on("free").await;
    app.get("/v1/keys/self", &t.key)
        .await
        .assert_error(403, "feature_not_allowed");
}

async fn ip_allowlist_allows_and_denies(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, inside) = app
        .create_key(
            &t.key,
            json!({"name": "office", "type": "secret", "ip_allowlist": [{"cidr": "10.0.0.0/8"}, {"cidr": "127.0.0.0/8", "description": "loopback"}]}),
        )
        .await;
    assert_eq!(app.get("/v1/keys/self", &inside).await.status, 200);
    let (_, outside) = app
        .create_key(
            &t.key,
            json!({"name": "vpn", "type": "secret", "ip_allowlist": [{"cidr": "203.0.113.0/24"}]}),
        )
        .await;
    app.get("/v1/keys/self", &outside)
        .await
        .assert_error(403, "ip_not_allowed");
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let spoofed = TestApp::reply(
        app.client
            .get(format!("{}/v1/keys/self", app.base_url))
            .bearer_auth(&outside)
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await;
    spoofed.assert_error(403, "ip_not_allowed");
    let (_, v6) = app
        .create_key(
            &t.key,
            json!({"name": "v6", "type": "secret", "ip_allowlist": [{"cidr": "::1/128"}]}),
        )
        .await;
    app.get("/v1/keys/self", &v6)
        .await
        .assert_error(403, "ip_not_allowed");
}

async fn trusted_proxy_forwarded_for_is_used(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(&t.key, json!({"name": "behind-lb", "type": "secret", "ip_allowlist": [{"cidr": "198.51.100.7"}]}))
        .await;
    let via = |xff: &'static str| {
        app.client
            .get(format!("{}/v1/keys/self", app.base_url))
            .bearer_auth(&key)
            .header("x-forwarded-for", xff)
    };
    // Right-most hop that is not a trusted proxy.
    assert_eq!(
        TestApp::reply(via("1.1.1.1, 198.51.100.7")).await.status,
        200
    );
    assert_eq!(
        TestApp::reply(via("198.51.100.7, 127.0.0.1")).await.status,
        200
    );
    // A client prepending the allowed address does not get through.
    TestApp::reply(via("198.51.100.7, 9.9.9.9"))
        .await
        .assert_error(403, "ip_not_allowed");
    // Mapped IPv6 in the header matches the IPv4 entry.
    assert_eq!(TestApp::reply(via("::ffff:198.51.100.7")).await.status, 200);
    // Without the header the peer itself (the proxy) is the client.
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(403, "ip_not_allowed");
    // The recorded last-used IP is the resolved client address.
    let me = TestApp::reply(via("198.51.100.7")).await;
    assert_eq!(me.body["last_used_ip"], "198.51.100.7");
}

async fn ipv4_mapped_ipv6_peer_matches_ipv4_entry(backend: Backend) {
    // Dual-stack listener: an IPv4 client appears as ::ffff:127.0.0.1.
    let app = TestApp::start_on("[::]:0", backend, |_| {}).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "mapped", "type": "secret", "ip_allowlist": [{"cidr": "127.0.0.1"}]}),
        )
        .await;
    let me = app.get("/v1/keys/self", &key).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["last_used_ip"], "127.0.0.1");
}

async fn missing_scope_is_insufficient_scope(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, reader) = app
        .create_key(&t.key, json!({"name": "reader", "type": "read_only"}))
        .await;
    let reply = app.get("/v1/keys", &reader).await;
    reply.assert_error(403, "insufficient_scope");
    assert_eq!(
        reply.body["error"]["details"]["required_scope"],
        "keys:read"
    );
    let (_, no_audit) = app
        .create_key(
            &t.key,
            json!({"name": "keys-only", "type": "secret", "scopes": ["keys:read"]}),
        )
        .await;
    app.get("/v1/audit", &no_audit)
        .await
        .assert_error(403, "insufficient_scope");
    // Any valid key may read itself.
    let (_, client) = app
        .create_key(&t.key, json!({"name": "web", "type": "client"}))
        .await;
    let me = app.get("/v1/keys/self", &client).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["type"], "client");
}

async fn checks_run_in_spec_order(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_on("free").await;
    // Free plan AND outside the allow-list AND lacking the scope: the plan wins.
    let reader = app
        .admin(
            Method::POST,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
            json!({"name": "r", "type": "read_only", "ip_allowlist": [{"cidr": "203.0.113.1"}]}),
        )
        .await;
    let reader = reader.body["key"].as_str().unwrap().to_string();
    app.get("/v1/keys", &reader)
        .await
        .assert_error(403, "feature_not_allowed");
    app.admin(
        Method::PUT,
        &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
        json!({"plan": "pro"}),
    )
    .await;
    // Then the IP, then the scope.
    app.get("/v1/keys", &reader)
        .await
        .assert_error(403, "ip_not_allowed");
    // Revoked beats everything after it, expired included.
    let revoked = app
        .admin(
            Method::POST,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
            json!({"name": "x", "type": "secret", "expires_at": keyflow_core::timefmt::format_rfc3339(app.now_ms() + 1000)}),
        )
        .await;
    let id = revoked.body["id"].as_str().unwrap();
    app.delete(&format!("/v1/keys/{id}"), &t.key).await;
    app.clock.advance_ms(5_000);
    app.get("/v1/keys/self", revoked.body["key"].as_str().unwrap())
        .await
        .assert_error(401, "key_revoked");
}

backend_tests!(
    missing_or_non_bearer_header_is_missing_api_key,
    malformed_and_bad_checksum_keys_never_reach_the_database,
    unknown_key_is_invalid_and_negatively_cached,
    revoked_key_is_rejected_at_once_even_when_cached,
    expired_key_with_injected_clock,
    plan_downgrade_forbids_and_upgrade_restores,
    free_workspace_keys_are_refused,
    ip_allowlist_allows_and_denies,
    trusted_proxy_forwarded_for_is_used,
    ipv4_mapped_ipv6_peer_matches_ipv4_entry,
    missing_scope_is_insufficient_scope,
    checks_run_in_spec_order,
);

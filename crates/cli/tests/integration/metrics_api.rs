//! `/v1/metrics/credential` (SPEC §4): create, read without the secret,
//! change allow-list and cache TTL, rotate; scopes; audit without secrets.

use keyflow_core::keys::parse_key;
use keyflow_core::{KeyDigest, KeyType};
use reqwest::Method;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

const PATH: &str = "/v1/metrics/credential";

async fn create_read_update_rotate(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    app.get(PATH, &t.key).await.assert_error(404, "not_found");
    app.patch(PATH, &t.key, json!({"cache_ttl_minutes": 10}))
        .await
        .assert_error(404, "not_found");

    let created = app.post(PATH, &t.key, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let secret = created.body["client_secret"].as_str().unwrap().to_string();
    assert!(id.starts_with("mk_live_"), "{id}");
    assert_eq!(parse_key(&id).unwrap().key_type, KeyType::Metrics);
    assert!(secret.len() >= 43);
    assert_eq!(created.body["object"], "metrics_credential");
    assert_eq!(created.body["ip_allowlist"], json!([]));
    assert_eq!(created.body["cache_ttl_minutes"], 5);
    assert!(created.body["last_used_at"].is_null());
    assert_eq!(
        created.header("cache-control"),
        Some("no-store"),
        "a response with a secret is never cached"
    );
    let stored = app
        .store
        .metrics_credential(&t.project_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id, id);
    assert_eq!(
        stored.secret_digest,
        KeyDigest::of(&secret),
        "only the digest is kept"
    );

    let read = app.get(PATH, &t.key).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], id.as_str());
    assert!(read.body.get("client_secret").is_none());
    // A credential id is never a /v1 bearer key.
    app.get("/v1/keys/self", &id)
        .await
        .assert_error(401, "invalid_api_key");

    let patched = app
        .patch(
            PATH,
            &t.key,
            json!({"ip_allowlist": [{"cidr": "10.0.0.0/8", "description": "vpn"}], "cache_ttl_minutes": 30}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        patched.body["ip_allowlist"],
        json!([{"cidr": "10.0.0.0/8", "description": "vpn"}])
    );
    assert_eq!(patched.body["cache_ttl_minutes"], 30);
    assert_eq!(
        app.store
            .project_settings(&t.project_id)
            .await
            .unwrap()
            .metrics_cache_ttl_minutes,
        30
    );

    // Bad input: every field reported, nothing changed.
    let refused = app
        .patch(
            PATH,
            &t.key,
            json!({"ip_allowlist": [{"cidr": "nope"}], "cache_ttl_minutes": 4}),
        )
        .await;
    refused.assert_error(422, "validation_failed");
    let fields: Vec<&str> = refused.body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["ip_allowlist[0].cidr", "cache_ttl_minutes"]);
    app.patch(PATH, &t.key, json!({"cache_ttl_minutes": "soon"}))
        .await
        .assert_error(422, "validation_failed");
    app.patch(
        PATH,
        &t.key,
        json!({"ip_allowlist": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.0.0.0/8"}]}),
    )
    .await
    .assert_error(422, "validation_failed");
    let unchanged = app.get(PATH, &t.key).await;
    assert_eq!(unchanged.body["cache_ttl_minutes"], 30);
    assert_eq!(unchanged.body["ip_allowlist"][0]["cidr"], "10.0.0.0/8");

    // Rotation: new id and secret, the allow-list stays.
    let rotated = app.post(PATH, &t.key, json!({})).await;
    assert_eq!(rotated.status, 201);
    let new_secret = rotated.body["client_secret"].as_str().unwrap();
    assert_ne!(rotated.body["id"], id.as_str());
    assert_ne!(new_secret, secret);
    assert_eq!(rotated.body["ip_allowlist"][0]["cidr"], "10.0.0.0/8");
    let stored = app
        .store
        .metrics_credential(&t.project_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.secret_digest, KeyDigest::of(new_secret));

    // Audited with the key as actor; no secret in the activity log.
    let audit = app.get("/v1/audit?limit=100", &t.key).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("metrics_credential."))
        .collect();
    assert_eq!(
        actions,
        [
            "metrics_credential.rotated",
            "metrics_credential.updated",
            "metrics_credential.created"
        ]
    );
    let log = audit.body.to_string();
    assert!(!log.contains(&secret) && !log.contains(new_secret));
    assert!(log.contains("\"api_key\""));
    // Members and audit:read keys read the log: credentials appear by prefix only.
    assert!(
        !log.contains(&id),
        "no full credential id in the activity log"
    );
    assert!(log.contains(&id[..12]));
}

async fn scopes_guard_the_credential(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let limited = |scopes: serde_json::Value| {
        let app = &app;
        let project = t.project_id.clone();
        async move {
            let k = app
                .admin(
                    Method::POST,
                    &format!("/admin/v1/projects/{project}/keys"),
                    json!({"name": "limited", "type": "secret", "scopes": scopes}),
                )
                .await;
            assert_eq!(k.status, 201, "{}", k.body);
            k.body["key"].as_str().unwrap().to_string()
        }
    };
    let reader = limited(json!(["keys:read"])).await;
    let contacts_only = limited(json!(["contacts:read"])).await;
    app.post(PATH, &reader, json!({}))
        .await
        .assert_error(403, "insufficient_scope");
    app.post(PATH, &t.key, json!({})).await;
    assert_eq!(app.get(PATH, &reader).await.status, 200);
    app.patch(PATH, &reader, json!({"cache_ttl_minutes": 9}))
        .await
        .assert_error(403, "insufficient_scope");
    app.get(PATH, &contacts_only)
        .await
        .assert_error(403, "insufficient_scope");
}

async fn needs_an_api_plan(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_on("free").await;
    app.post(PATH, &t.key, json!({}))
        .await
        .assert_error(403, "feature_not_allowed");
    assert!(
        app.store
            .metrics_credential(&t.project_id)
            .await
            .unwrap()
            .is_none()
    );
}

/// A credential of `t`'s project and a token for it: `(id, secret, token)`.
pub(crate) async fn credential_and_token(app: &TestApp, key: &str) -> (String, String, String) {
    let created = app.post(PATH, key, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let secret = created.body["client_secret"].as_str().unwrap().to_string();
    let token = exchange(app, &id, json!({"client_secret": secret})).await;
    assert_eq!(token.status, 200, "{}", token.body);
    let token = token.body["access_token"].as_str().unwrap().to_string();
    (id, secret, token)
}

async fn exchange(app: &TestApp, id: &str, body: serde_json::Value) -> crate::harness::Reply {
    app.post("/v1/metrics/token", id, body).await
}

async fn token_exchange_and_its_refusals(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (id, secret, _) = credential_and_token(&app, &t.key).await;
    let answer = exchange(&app, &id, json!({"client_secret": secret})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let token = answer.body["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("mt_"), "{token}");
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 900);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(answer.header("x-ratelimit-limit").is_some());
    assert!(
        answer
            .header("ratelimit-policy")
            .unwrap()
            .contains("metrics")
    );

    // Wrong, missing or misplaced credentials.
    exchange(&app, &id, json!({"client_secret": "nope"}))
        .await
        .assert_error(401, "invalid_api_key");
    exchange(&app, &id, json!({}))
        .await
        .assert_error(401, "invalid_api_key");
    exchange(&app, &t.key, json!({"client_secret": secret}))
        .await
        .assert_error(401, "invalid_api_key");
    let stranger =
        keyflow_core::keys::generate_key(KeyType::Metrics, keyflow_core::Environment::Live)
            .unwrap();
    exchange(&app, &stranger.text, json!({"client_secret": secret}))
        .await
        .assert_error(401, "invalid_api_key");
    app.request(
        Method::POST,
        "/v1/metrics/token",
        None,
        Some(json!({"client_secret": secret})),
    )
    .await
    .assert_error(401, "missing_api_key");
    exchange(
        &app,
        &id,
        json!({"client_secret": secret, "expires_in": 7200}),
    )
    .await
    .assert_error(422, "validation_failed");
    let hour = exchange(
        &app,
        &id,
        json!({"client_secret": secret, "expires_in": 3600}),
    )
    .await;
    assert_eq!(hour.body["expires_in"], 3600, "{}", hour.body);

    // The token opens the metric routes, and nothing else does.
    let series = app.get("/v1/metrics/events.count", &token).await;
    assert_eq!(series.status, 200, "{}", series.body);
    assert!(series.header("x-ratelimit-remaining").is_some());
    app.get("/v1/metrics/events.count", &t.key)
        .await
        .assert_error(401, "invalid_api_key");
    app.get("/v1/metrics/events.count", &id)
        .await
        .assert_error(401, "invalid_api_key");
    app.request(Method::GET, "/v1/metrics/events.count", None, None)
        .await
        .assert_error(401, "missing_api_key");
    app.get("/v1/keys/self", &token)
        .await
        .assert_error(401, "invalid_api_key");
    // Tampered: one character of the MAC changed.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    app.get("/v1/metrics/events.count", &forged)
        .await
        .assert_error(401, "invalid_api_key");

    // Used: the credential says when.
    let mut used = serde_json::Value::Null;
    for _ in 0..50 {
        used = app.get(PATH, &t.key).await.body["last_used_at"].clone();
        if !used.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(used.is_string(), "last_used_at: {used}");

    // Expired after its lifetime.
    app.clock.advance_ms(901_000);
    app.get("/v1/metrics/events.count", &token)
        .await
        .assert_error(401, "key_expired");
    // Rotated away: the old credential's tokens stop at once.
    let fresh = exchange(&app, &id, json!({"client_secret": secret})).await;
    let fresh = fresh.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.get("/v1/metrics/events.count", &fresh).await.status,
        200
    );
    assert_eq!(app.post(PATH, &t.key, json!({})).await.status, 201);
    app.get("/v1/metrics/events.count", &fresh)
        .await
        .assert_error(401, "key_revoked");
    exchange(&app, &id, json!({"client_secret": secret}))
        .await
        .assert_error(401, "invalid_api_key");
}

/// Tokens are kept as digests only; the exchange reads its body first (so a
/// bad body says nothing about the credential) and refuses browsers; a
/// failed-guess budget spent by one client of an address neither blocks a
/// genuine token nor counts stale (expired, rotated-away) ones.
async fn tokens_are_digests_and_guesses_are_bounded(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.failed_auth_per_minute = 3).await;
    let t = app.tenant().await;
    let (id, secret, token) = credential_and_token(&app, &t.key).await;
    let stored = app
        .store
        .metrics_token(&KeyDigest::of(&token))
        .await
        .unwrap()
        .expect("the token's digest is stored");
    assert_eq!(stored.0, id);
    // The body first: the same answer for a live and an unknown id.
    let stranger =
        keyflow_core::keys::generate_key(KeyType::Metrics, keyflow_core::Environment::Live)
            .unwrap();
    for who in [id.as_str(), stranger.text.as_str()] {
        let bare = app
            .client
            .post(format!("{}/v1/metrics/token", app.base_url))
            .bearer_auth(who)
            .header("content-type", "application/json")
            .body(format!("\"{secret}\""));
        let reply = TestApp::reply(bare).await;
        reply.assert_error(422, "validation_failed");
        assert!(!reply.body.to_string().contains(&secret), "{}", reply.body);
        let text = app
            .client
            .post(format!("{}/v1/metrics/token", app.base_url))
            .bearer_auth(who)
            .header("content-type", "text/plain")
            .body(json!({"client_secret": secret}).to_string());
        TestApp::reply(text)
            .await
            .assert_error(415, "unsupported_media_type");
        exchange(&app, who, json!({"client_secret": secret, "expires_in": 5}))
            .await
            .assert_error(422, "validation_failed");
    }
    // Browsers are refused, with a credential or a token.
    let from_browser = app
        .client
        .get(format!("{}/v1/metrics/events.count", app.base_url))
        .bearer_auth(&token)
        .header("origin", "https://app.example");
    TestApp::reply(from_browser)
        .await
        .assert_error(403, "insecure_key_usage");
    let exchange_from_browser = app
        .client
        .post(format!("{}/v1/metrics/token", app.base_url))
        .bearer_auth(&id)
        .header("origin", "https://app.example")
        .json(&json!({"client_secret": secret}));
    TestApp::reply(exchange_from_browser)
        .await
        .assert_error(403, "insecure_key_usage");

    // Guesses: three allowed, then 429 for more guesses from this address…
    let guess = format!("mt_{}", "A".repeat(43));
    for _ in 0..3 {
        app.get("/v1/metrics/events.count", &guess)
            .await
            .assert_error(401, "invalid_api_key");
    }
    app.get("/v1/metrics/events.count", &guess)
        .await
        .assert_error(429, "rate_limited");
    // …while the genuine token keeps working.
    let ok = app.get("/v1/metrics/events.count", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    app.clock.advance_ms(60_000);
    // A rotated-away token is not a guess: always 401 key_revoked, never 429.
    assert_eq!(app.post(PATH, &t.key, json!({})).await.status, 201);
    for _ in 0..5 {
        app.get("/v1/metrics/events.count", &token)
            .await
            .assert_error(401, "key_revoked");
    }
    let _ = secret;
}

async fn plan_allowlist_and_rate_limit_apply(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.plan_rate_limits.insert(
            keyflow_core::Plan::Pro,
            keyflow_core::RateLimit::per_minute(4),
        );
    })
    .await;
    let t = app.tenant().await;
    let (id, secret, token) = credential_and_token(&app, &t.key).await;
    // One request spent (the exchange); three left, then 429.
    for _ in 0..3 {
        let allowed = app.get("/v1/metrics/events.count", &token).await;
        assert_eq!(allowed.status, 200, "{}", allowed.body);
    }
    let limited = app.get("/v1/metrics/events.count", &token).await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    exchange(&app, &id, json!({"client_secret": secret}))
        .await
        .assert_error(429, "rate_limited");
    app.clock.advance_ms(60_000);

    // The credential's own IP allow-list: this client is 127.0.0.1.
    let narrowed = app
        .patch(
            PATH,
            &t.key,
            json!({"ip_allowlist": [{"cidr": "10.0.0.0/8"}]}),
        )
        .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.body);
    app.get("/v1/metrics/events.count", &token)
        .await
        .assert_error(403, "ip_not_allowed");
    exchange(&app, &id, json!({"client_secret": secret}))
        .await
        .assert_error(403, "ip_not_allowed");
    let widened = app.patch(PATH, &t.key, json!({"ip_allowlist": []})).await;
    assert_eq!(widened.status, 200, "{}", widened.body);
    assert_eq!(
        app.get("/v1/metrics/events.count", &token).await.status,
        200
    );

    // Below pro: refused, like keys.
    let down = app
        .admin(
            Method::PUT,
            &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
            json!({"plan": "free"}),
        )
        .await;
    assert_eq!(down.status, 200, "{}", down.body);
    app.get("/v1/metrics/events.count", &token)
        .await
        .assert_error(403, "feature_not_allowed");
    exchange(&app, &id, json!({"client_secret": secret}))
        .await
        .assert_error(403, "feature_not_allowed");
}

/// The predefined metrics answer from what the API stored, for the token's
/// project only; answers are cached for the project's TTL, then recomputed.
async fn predefined_metrics_answer_from_ingested_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let other = app.tenant().await;
    let day0 = keyflow_core::timefmt::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
    app.clock.set_ms(day0 + 2 * 86_400_000 + 3_600_000);
    let (_, _, token) = credential_and_token(&app, &t.key).await;
    let (_, _, other_token) = credential_and_token(&app, &other.key).await;
    let events = json!({"events": [
        {"name": "signup", "external_id": "u1", "idempotency_key": "a", "timestamp": "2030-01-01T10:00:00Z"},
        {"name": "signup", "external_id": "u1", "idempotency_key": "a", "timestamp": "2030-01-01T10:00:00Z"},
        {"name": "view", "external_id": "u1", "timestamp": "2030-01-01T11:00:00Z"},
        {"name": "view", "email": "b@x.io", "timestamp": "2030-01-02T09:00:00Z"},
        {"name": "view", "anonymous_id": "v", "timestamp": "2030-01-02T09:30:00Z"},
    ]});
    let stored = app.post("/v1/events/batch", &t.key, events).await;
    assert!(stored.status < 300, "{}", stored.body);
    let range = "from=2030-01-01T00:00:00Z&to=2030-01-03T00:00:00Z";
    let values = |reply: &crate::harness::Reply| -> Vec<i64> {
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_i64().unwrap())
            .collect()
    };
    let count = app
        .get(&format!("/v1/metrics/events.count?{range}"), &token)
        .await;
    assert_eq!(values(&count), [2, 2]);
    assert_eq!(count.body["series"][0]["t"], "2030-01-01T00:00:00Z");
    assert_eq!(count.body["metric"], "events.count");
    assert_eq!(count.body["interval"], "day");
    assert_eq!(count.body["cached"], false);
    assert!(count.body["elapsed_ms"].is_u64());
    assert!(count.header("age").is_none());
    let views = app
        .get(
            &format!("/v1/metrics/events.count?{range}&event=view"),
            &token,
        )
        .await;
    assert_eq!(values(&views), [1, 2]);
    let unique = app
        .get(
            &format!("/v1/metrics/events.unique_contacts?{range}"),
            &token,
        )
        .await;
    assert_eq!(values(&unique), [1, 1]);
    let created = app
        .get(&format!("/v1/metrics/contacts.created?{range}"), &token)
        .await;
    assert_eq!(values(&created), [0, 0], "created at ingest time, on day 3");
    let top = app
        .get(&format!("/v1/metrics/events.top?{range}"), &token)
        .await;
    assert_eq!(top.status, 200, "{}", top.body);
    assert_eq!(
        top.body["series"],
        json!([
            {"t": "2030-01-01T00:00:00Z", "name": "signup", "value": 1},
            {"t": "2030-01-01T00:00:00Z", "name": "view", "value": 1},
            {"t": "2030-01-02T00:00:00Z", "name": "view", "value": 2},
        ])
    );
    let hourly = app
        .get(
            "/v1/metrics/events.count?interval=hour&from=2030-01-01T09:00:00Z&to=2030-01-01T12:00:00Z",
            &token,
        )
        .await;
    assert_eq!(values(&hourly), [0, 1, 1]);
    // Another project's token sees only its own (empty) project.
    let theirs = app
        .get(&format!("/v1/metrics/events.count?{range}"), &other_token)
        .await;
    assert_eq!(values(&theirs), [0, 0]);

    // Cached: the same request within the TTL, with its age.
    app.clock.advance_ms(30_000);
    let more = json!({"events": [{"name": "view", "anonymous_id": "w", "timestamp": "2030-01-02T10:00:00Z"}]});
    assert!(app.post("/v1/events/batch", &t.key, more).await.status < 300);
    let again = app
        .get(&format!("/v1/metrics/events.count?{range}"), &token)
        .await;
    assert_eq!(values(&again), [2, 2]);
    assert_eq!(again.body["cached"], true);
    assert_eq!(again.header("age"), Some("30"));
    // Past the project's TTL (5 minutes): recomputed.
    app.clock.advance_ms(5 * 60_000);
    let fresh = app
        .get(&format!("/v1/metrics/events.count?{range}"), &token)
        .await;
    assert_eq!(values(&fresh), [2, 3]);
    assert_eq!(fresh.body["cached"], false);

    // Refusals name the parameter.
    for (query, field) in [
        ("interval=week", "interval"),
        ("from=2030-01-03T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
        ("from=yesterday", "from"),
        ("interval=hour&from=2029-01-01T00:00:00Z", "from"),
    ] {
        let refused = app
            .get(&format!("/v1/metrics/events.count?{query}"), &token)
            .await;
        refused.assert_error(422, "validation_failed");
        assert_eq!(
            refused.body["error"]["details"]["fields"][0]["field"], field,
            "{query}"
        );
    }
    app.get("/v1/metrics/events.unique_contacts?interval=hour", &token)
        .await
        .assert_error(422, "validation_failed");
    app.get("/v1/metrics/events.top?event=view", &token)
        .await
        .assert_error(422, "validation_failed");
    app.get("/v1/metrics/events.sum", &token)
        .await
        .assert_error(404, "not_found");
}

/// The dashboard's Metrics page: any member sees the project's charts
/// (values in each bar's title), the picker, the most frequent events; a
/// bad event name is a message next to the field; other projects' events
/// never show.
async fn dashboard_metrics_page(backend: Backend) {
    use crate::dashboard::{get_page, sign_in, text};
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let other = app.tenant().await;
    app.admin(
        Method::POST,
        &format!("/admin/v1/workspaces/{}/operators", t.workspace_id),
        json!({"email": "member@acme.io", "password": crate::dashboard::PASSWORD, "role": "member"}),
    )
    .await;
    let now = app.now_ms();
    let today = keyflow_core::timefmt::format_rfc3339(now);
    let events = json!({"events": [
        {"name": "signup", "external_id": "u1", "timestamp": today},
        {"name": "view", "external_id": "u1", "timestamp": today},
        {"name": "view", "anonymous_id": "v", "timestamp": today},
    ]});
    assert!(app.post("/v1/events/batch", &t.key, events).await.status < 300);
    let theirs = json!({"events": [{"name": "their_secret_event", "anonymous_id": "x"}]});
    assert!(
        app.post("/v1/events/batch", &other.key, theirs)
            .await
            .status
            < 300
    );

    let cookie = sign_in(&app, "member@acme.io").await;
    let page = get_page(
        &app,
        &format!("/analytics?project={}", t.project_id),
        Some(&cookie),
    )
    .await;
    assert_eq!(page.status, 200);
    let html = text(&page);
    assert!(
        html.contains("aria-current=\"page\">Metrics<"),
        "the nav marks the page"
    );
    let day = &today[..10];
    assert!(
        html.contains(&format!("<title>{day}: 3</title>")),
        "today's events: {html}"
    );
    assert!(html.contains("Unique contacts"));
    assert!(
        html.contains(&format!("<title>{day}: 1</title>")),
        "one unique contact"
    );
    assert!(html.contains("<td class=\"name\"><bdi>view</bdi></td><td>2</td>"));
    assert!(!html.contains("their_secret_event"));
    // Another tenant's project id is not a way in.
    let theirs = get_page(
        &app,
        &format!("/analytics?project={}", other.project_id),
        Some(&cookie),
    )
    .await;
    assert_eq!(theirs.status, 404);
    assert!(!text(&theirs).contains("their_secret_event"));
    // Hourly, one event name.
    let hourly = text(
        &get_page(
            &app,
            &format!(
                "/analytics?project={}&interval=hour&range=2&event=view",
                t.project_id
            ),
            Some(&cookie),
        )
        .await,
    );
    assert!(
        hourly.contains("<option value=\"2\" selected>48 hours"),
        "{hourly}"
    );
    assert!(hourly.contains(": 2</title>"), "two views this hour");
    assert!(!hourly.contains("<h2>Unique contacts"), "kept per day only");
    assert!(hourly.contains("unique contacts are kept per day"));
    // Hourly over 90 days would be 2 160 bars: daily instead, and said so.
    let long = text(
        &get_page(
            &app,
            &format!("/analytics?project={}&interval=hour&range=90", t.project_id),
            Some(&cookie),
        )
        .await,
    );
    assert!(long.contains("so this range is daily"), "{long}");
    assert!(long.contains("<option value=\"day\" selected>"));
    // A bad name: a message tied to the field, nothing else breaks.
    let bad = get_page(
        &app,
        &format!("/analytics?project={}&event=%01", t.project_id),
        Some(&cookie),
    )
    .await;
    assert_eq!(bad.status, 422);
    let bad = text(&bad);
    assert!(bad.contains("role=\"alert\" id=\"event-error\""));
    assert!(bad.contains("aria-describedby=\"event-error\""));
    assert!(
        !bad.contains("<svg"),
        "no charts for a filter that was not applied"
    );
    // Signed out: to the sign-in page.
    let anonymous = get_page(&app, "/analytics", None).await;
    assert_eq!(anonymous.status, 303);
}

/// A token works on every instance on the database, and a rotation made on
/// one stops it on the others within their credential cache's 5 seconds.
async fn tokens_work_on_every_instance(backend: Backend) {
    let a = TestApp::start(backend).await;
    let b = a.another_instance().await;
    let t = a.tenant().await;
    let (_, _, token) = credential_and_token(&a, &t.key).await;
    let on_b = b.get("/v1/metrics/events.count", &token).await;
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    assert_eq!(a.post(PATH, &t.key, json!({})).await.status, 201);
    a.get("/v1/metrics/events.count", &token)
        .await
        .assert_error(401, "key_revoked");
    let started = std::time::Instant::now();
    loop {
        let reply = b.get("/v1/metrics/events.count", &token).await;
        if reply.status == 401 {
            reply.assert_error(401, "key_revoked");
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(7),
            "the other instance still accepts a rotated-away token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

backend_tests!(
    tokens_work_on_every_instance,
    dashboard_metrics_page,
    create_read_update_rotate,
    scopes_guard_the_credential,
    needs_an_api_plan,
    token_exchange_and_its_refusals,
    plan_allowlist_and_rate_limit_apply,
    predefined_metrics_answer_from_ingested_events,
    tokens_are_digests_and_guesses_are_bounded
);

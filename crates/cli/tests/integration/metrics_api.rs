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

backend_tests!(
    create_read_update_rotate,
    scopes_guard_the_credential,
    needs_an_api_plan
);

//! The instance admin API (SPEC §8).

use reqwest::Method;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

async fn admin_api_is_404_without_a_token(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.admin_token = None).await;
    app.admin(
        Method::POST,
        "/admin/v1/workspaces",
        json!({"name": "x", "plan": "pro"}),
    )
    .await
    .assert_error(404, "not_found");
}

async fn wrong_or_missing_admin_token_is_401(backend: Backend) {
    let app = TestApp::start(backend).await;
    for token in [Some("test-admin-token-012345678"), Some(""), None] {
        let reply = app
            .request(
                Method::POST,
                "/admin/v1/workspaces",
                token,
                Some(json!({"name": "x", "plan": "pro"})),
            )
            .await;
        reply.assert_error(401, "unauthorized");
    }
}

async fn workspace_project_operator_and_key(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ws = app
        .admin(
            Method::POST,
            "/admin/v1/workspaces",
            json!({"name": "Globex", "plan": "team"}),
        )
        .await;
    assert_eq!(ws.status, 201);
    assert_eq!(ws.body["plan"], "team");
    let ws_id = ws.body["id"].as_str().unwrap();
    let project = app
        .admin(
            Method::POST,
            &format!("/admin/v1/workspaces/{ws_id}/projects"),
            json!({"name": "Prod", "environment": "live"}),
        )
        .await;
    assert_eq!(project.status, 201);
    assert_eq!(project.body["environment"], "live");
    let op = app
        .admin(
            Method::POST,
            &format!("/admin/v1/workspaces/{ws_id}/operators"),
            json!({"email": "Ops@Globex.com", "password": "correct horse battery", "role": "admin"}),
        )
        .await;
    assert_eq!(op.status, 201, "{}", op.body);
    assert_eq!(op.body["email"], "ops@globex.com");
    assert_eq!(op.body["role"], "admin");
    assert!(!op.body.to_string().contains("correct horse"));
    let dup = app
        .admin(
            Method::POST,
            &format!("/admin/v1/workspaces/{ws_id}/operators"),
            json!({"email": "OPS@globex.com", "password": "another password", "role": "member"}),
        )
        .await;
    dup.assert_error(409, "conflict");
    let key = app
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/projects/{}/keys",
                project.body["id"].as_str().unwrap()
            ),
            json!({"name": "first", "type": "secret", "scopes": ["audit:read"]}),
        )
        .await;
    assert_eq!(key.status, 201);
    assert_eq!(key.header("cache-control"), Some("no-store"));
    assert_eq!(key.body["created_by"]["type"], "instance_admin");
    let audit = app
        .get("/v1/audit", key.body["key"].as_str().unwrap())
        .await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["api_key.created", "member.added"]);
}

async fn admin_bad_input(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let ws = &t.workspace_id;
    let cases = [
        (
            Method::POST,
            "/admin/v1/workspaces".to_string(),
            json!({"name": "x", "plan": "gold"}),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/workspaces".to_string(),
            json!({"plan": "pro"}),
            422,
        ),
        (
            Method::PUT,
            format!("/admin/v1/workspaces/{ws}/plan"),
            json!({"plan": "platinum"}),
            422,
        ),
        (
            Method::PUT,
            "/admin/v1/workspaces/nope/plan".to_string(),
            json!({"plan": "pro"}),
            404,
        ),
        (
            Method::POST,
            format!("/admin/v1/workspaces/{ws}/projects"),
            json!({"name": "x", "environment": "prod"}),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/workspaces/nope/projects".to_string(),
            json!({"name": "x"}),
            404,
        ),
        (
            Method::POST,
            format!("/admin/v1/workspaces/{ws}/operators"),
            json!({"email": "not-an-email", "password": "long enough pw"}),
            422,
        ),
        (
            Method::POST,
            format!("/admin/v1/workspaces/{ws}/operators"),
            json!({"email": "a@b.co", "password": "short"}),
            422,
        ),
        (
            Method::POST,
            format!("/admin/v1/workspaces/{ws}/operators"),
            json!({"email": "a@b.co", "password": "long enough pw", "role": "king"}),
            422,
        ),
        (
            Method::POST,
            "/admin/v1/projects/nope/keys".to_string(),
            json!({"name": "x", "type": "secret"}),
            404,
        ),
        (
            Method::POST,
            format!("/admin/v1/projects/{}/keys", t.project_id),
            json!({"name": "x", "type": "client", "scopes": ["keys:read"]}),
            422,
        ),
    ];
    for (method, path, body, status) in cases {
        let reply = app.admin(method.clone(), &path, body.clone()).await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body}: {}",
            reply.body
        );
        assert!(reply.body["error"]["code"].is_string());
    }
    // Nothing was created by the refused requests.
    let keys = app.get("/v1/keys", &t.key).await;
    assert_eq!(keys.body["data"].as_array().unwrap().len(), 1);
    let audit = app.get("/v1/audit", &t.key).await;
    assert_eq!(audit.body["data"].as_array().unwrap().len(), 1);
}

/// Listing for operators who lost an id (SPEC §8): workspaces page by page,
/// one workspace with its projects and operators, a project's keys, and
/// revoking one — which stops it at once and is audited as the instance
/// admin. Unknown ids are 404, bad paging 422, and nothing works without the
/// admin token.
async fn listing_and_revoking_for_operators(backend: Backend) {
    let app = TestApp::start(backend).await;
    let tenants = [app.tenant().await, app.tenant().await, app.tenant().await];
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/workspaces?limit=2&cursor={c}"),
            None => "/admin/v1/workspaces?limit=2".to_string(),
        };
        let page = app.admin_call(Method::GET, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for w in page.body["data"].as_array().unwrap() {
            assert_eq!(w["object"], "workspace");
            seen.push(w["id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut expected: Vec<String> = tenants.iter().map(|t| t.workspace_id.clone()).collect();
    expected.sort();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");

    let t = &tenants[0];
    let owner = app
        .admin(
            Method::POST,
            &format!("/admin/v1/workspaces/{}/operators", t.workspace_id),
            json!({"email": "owner@acme.io", "password": "a long password here", "role": "owner"}),
        )
        .await;
    assert_eq!(owner.status, 201, "{}", owner.body);
    let detail = app
        .admin_call(
            Method::GET,
            &format!("/admin/v1/workspaces/{}", t.workspace_id),
        )
        .await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert_eq!(detail.body["id"], t.workspace_id.as_str());
    assert_eq!(detail.body["plan"], "pro");
    assert_eq!(detail.body["projects"][0]["id"], t.project_id.as_str());
    assert_eq!(detail.body["operators"][0]["email"], "owner@acme.io");
    assert_eq!(detail.body["operators"][0]["role"], "owner");
    assert!(!detail.body.to_string().contains("a long password"));
    assert!(!detail.body.to_string().contains("argon2"));

    let keys = app
        .admin_call(
            Method::GET,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
        )
        .await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    assert_eq!(keys.body["data"][0]["id"], t.key_id.as_str());
    assert!(keys.body["data"][0].get("key").is_none());
    assert!(!keys.body.to_string().contains(&t.key));

    assert_eq!(app.get("/v1/keys/self", &t.key).await.status, 200);
    let path = format!("/admin/v1/projects/{}/keys/{}", t.project_id, t.key_id);
    for _ in 0..2 {
        let revoked = app.admin_call(Method::DELETE, &path).await;
        assert_eq!(revoked.status, 204, "{}", revoked.body);
    }
    app.get("/v1/keys/self", &t.key)
        .await
        .assert_error(401, "key_revoked");
    let listed = app
        .admin_call(
            Method::GET,
            &format!(
                "/admin/v1/projects/{}/keys?include_revoked=true",
                t.project_id
            ),
        )
        .await;
    assert!(
        listed.body["data"][0]["revoked_at"].is_string(),
        "{}",
        listed.body
    );
    let active = app
        .admin_call(
            Method::GET,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
        )
        .await;
    assert_eq!(active.body["data"], json!([]));
    // Audited once, by the instance admin, in the workspace's log.
    let auditor = app
        .admin(
            Method::POST,
            &format!("/admin/v1/projects/{}/keys", t.project_id),
            json!({"name": "auditor", "type": "secret", "scopes": ["audit:read"]}),
        )
        .await;
    let log = app
        .get(
            "/v1/audit?action=api_key.revoked",
            auditor.body["key"].as_str().unwrap(),
        )
        .await;
    let entries = log.body["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", log.body);
    assert_eq!(entries[0]["actor"]["type"], "instance_admin");
    assert_eq!(entries[0]["target"]["id"], t.key_id.as_str());
    let other = &tenants[1];
    let (_, reader) = app
        .create_key(
            &other.key,
            json!({"name": "r", "type": "secret", "scopes": ["audit:read"]}),
        )
        .await;
    let theirs = app.get("/v1/audit", &reader).await;
    assert!(
        !theirs.body.to_string().contains(&t.key_id),
        "another workspace's log shows nothing of it"
    );

    // Another project's key through this project's path is not found.
    let foreign = format!("/admin/v1/projects/{}/keys/{}", t.project_id, other.key_id);
    app.admin_call(Method::DELETE, &foreign)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.get("/v1/keys/self", &other.key).await.status, 200);
    for path in [
        "/admin/v1/workspaces/nope".to_string(),
        "/admin/v1/projects/nope/keys".to_string(),
        "/admin/v1/projects/nope/keys/nope".to_string(),
    ] {
        let method = if path.matches('/').count() == 6 {
            Method::DELETE
        } else {
            Method::GET
        };
        app.admin_call(method, &path)
            .await
            .assert_error(404, "not_found");
    }
    app.admin_call(Method::GET, "/admin/v1/workspaces?limit=0")
        .await
        .assert_error(422, "validation_failed");
    for token in [None, Some("wrong-token-wrong-token-1234")] {
        app.request(Method::GET, "/admin/v1/workspaces", token, None)
            .await
            .assert_error(401, "unauthorized");
    }
}

backend_tests!(
    listing_and_revoking_for_operators,
    admin_api_is_404_without_a_token,
    wrong_or_missing_admin_token_is_401,
    workspace_project_operator_and_key,
    admin_bad_input,
);

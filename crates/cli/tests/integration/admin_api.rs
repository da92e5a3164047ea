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

backend_tests!(
    admin_api_is_404_without_a_token,
    wrong_or_missing_admin_token_is_401,
    workspace_project_operator_and_key,
    admin_bad_input,
);

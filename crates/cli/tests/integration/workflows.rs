//! `/v1/workflows` (SPEC §10): definitions, versions, the signing secret,
//! scopes, and other projects' ids — on every deployment.

use serde_json::{Value, json};

use crate::every_deployment_tests;
use crate::harness::{Backend, TestApp};

fn definition() -> Value {
    json!({
        "name": "Trial ended",
        "trigger": {"type": "event", "event": "trial_ended",
                    "where": [{"field": "event.properties.plan", "op": "eq", "value": "pro"}]},
        "steps": [
            {"type": "webhook", "url": "https://billing.example.com/hooks/trial",
             "body": {"email": "{{contact.email}}"}},
            {"type": "wait", "seconds": 259200},
            {"type": "branch", "if": [{"field": "contact.properties.paid", "op": "not_exists"}],
             "then": [{"type": "update_contact", "properties": {"status": "churned"}}],
             "else": [{"type": "exit"}]}
        ]
    })
}

/// Create → the secret once; get/list without it; PATCH of name or status
/// keeps the version, of steps makes a new one; rotate shows the new secret
/// once and says until when the old one signs; DELETE archives (listed,
/// unchangeable, a second DELETE is still 204); each change is audited.
async fn workflows_are_created_changed_and_archived(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let created = app.post("/v1/workflows", &t.key, definition()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let w = &created.body;
    let id = w["id"].as_str().unwrap().to_string();
    assert_eq!(w["object"], "workflow");
    assert_eq!(w["status"], "draft");
    assert_eq!(w["reentry"], "one_active_run");
    assert_eq!(w["version"], 1);
    assert_eq!(w["trigger"], definition()["trigger"]);
    assert_eq!(w["steps"][2]["else"], json!([{"type": "exit"}]));
    // Defaults written out: the webhook's method.
    assert_eq!(w["steps"][0]["method"], "POST");
    let secret = w["signing_secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(w["signing_secret_prefix"], &secret[..12]);
    assert_eq!(created.header("cache-control"), Some("no-store"));

    let path = format!("/v1/workflows/{id}");
    let got = app.get(&path, &t.key).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.get("signing_secret").is_none(), "{}", got.body);
    assert!(!got.body.to_string().contains(&secret));
    let listed = app.get("/v1/workflows", &t.key).await;
    assert_eq!(listed.body["data"][0]["id"], id.as_str());
    assert!(!listed.body.to_string().contains(&secret));

    let renamed = app
        .patch(
            &path,
            &t.key,
            json!({"name": "Trial over", "status": "active"}),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["version"], 1);
    assert_eq!(renamed.body["status"], "active");
    let same_steps = app
        .patch(&path, &t.key, json!({"steps": definition()["steps"]}))
        .await;
    assert_eq!(
        same_steps.body["version"], 1,
        "unchanged steps make no version"
    );
    let new_steps = app
        .patch(
            &path,
            &t.key,
            json!({"steps": [{"type": "subscribe"}], "reentry": "once"}),
        )
        .await;
    assert_eq!(new_steps.status, 200, "{}", new_steps.body);
    assert_eq!(new_steps.body["version"], 2);
    assert_eq!(new_steps.body["reentry"], "once");

    let rotated = app
        .post(&format!("{path}/signing-secret"), &t.key, json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_secret = rotated.body["signing_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated.body["previous_secret_signs_until"].is_string());
    assert_eq!(rotated.header("cache-control"), Some("no-store"));

    let archived = app.delete(&path, &t.key).await;
    assert_eq!(archived.status, 204, "{}", archived.body);
    assert_eq!(app.delete(&path, &t.key).await.status, 204);
    assert_eq!(app.get(&path, &t.key).await.body["status"], "archived");
    app.patch(&path, &t.key, json!({"name": "again"}))
        .await
        .assert_error(409, "conflict");
    app.post(&format!("{path}/signing-secret"), &t.key, json!({}))
        .await
        .assert_error(409, "conflict");

    let audit = app.get("/v1/audit?limit=20", &t.key).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| a.starts_with("workflow"))
        .collect();
    assert_eq!(
        actions,
        [
            "workflow.archived",
            "workflow.secret_rotated",
            "workflow.updated",
            "workflow.updated",
            "workflow.created"
        ],
        "{}",
        audit.body
    );
    // The audit log names secrets by their prefix only.
    let audit = audit.body.to_string();
    assert!(!audit.contains(&secret) && !audit.contains(new_secret));
    assert!(audit.contains(&secret[..12]));
}

/// Bad definitions are 422 with every problem at its path, and nothing is
/// stored; `archived` is not a status a PATCH sets.
async fn bad_definitions_say_where(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let mut bad = definition();
    bad["steps"][2]["then"][0] = json!({"type": "webhook", "url": "file:///etc/passwd"});
    bad["steps"][1]["seconds"] = json!(0);
    bad["trigger"]["where"][0]["op"] = json!("like");
    let reply = app.post("/v1/workflows", &t.key, bad).await;
    reply.assert_error(422, "validation_failed");
    let fields: Vec<&str> = reply.body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "trigger.where[0].op",
            "steps[1].seconds",
            "steps[2].then[0].url"
        ],
        "{}",
        reply.body
    );
    let missing = app
        .post("/v1/workflows", &t.key, json!({"name": "x"}))
        .await;
    missing.assert_error(422, "validation_failed");
    assert_eq!(
        missing.body["error"]["details"]["fields"],
        json!([
            {"field": "trigger", "message": "is required"},
            {"field": "steps", "message": "is required"}
        ])
    );
    let listed = app.get("/v1/workflows", &t.key).await;
    assert_eq!(listed.body["data"], json!([]), "nothing was stored");
    let made = app.post("/v1/workflows", &t.key, definition()).await;
    let path = format!("/v1/workflows/{}", made.body["id"].as_str().unwrap());
    app.patch(&path, &t.key, json!({"status": "archived"}))
        .await
        .assert_error(422, "validation_failed");
    app.patch(&path, &t.key, json!({"steps": []}))
        .await
        .assert_error(422, "validation_failed");
    assert_eq!(app.get(&path, &t.key).await.body["version"], 1);
}

/// `workflows:write` on secret keys only, `workflows:read` on secret and
/// read-only keys; another project's workflow is 404 for every verb.
async fn scopes_and_projects_fence_workflows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let other = app.tenant().await;
    let made = app.post("/v1/workflows", &t.key, definition()).await;
    let id = made.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/workflows/{id}");

    let (_, ro) = app
        .create_key(&t.key, json!({"name": "ro", "type": "read_only"}))
        .await;
    assert_eq!(app.get(&path, &ro).await.status, 200);
    app.post("/v1/workflows", &ro, definition())
        .await
        .assert_error(403, "insufficient_scope");
    app.delete(&path, &ro)
        .await
        .assert_error(403, "insufficient_scope");
    let refused = app
        .post(
            "/v1/keys",
            &t.key,
            json!({"name": "c", "type": "client", "scopes": ["workflows:read"]}),
        )
        .await;
    refused.assert_error(422, "validation_failed");
    let refused = app
        .post(
            "/v1/keys",
            &t.key,
            json!({"name": "r", "type": "read_only", "scopes": ["workflows:write"]}),
        )
        .await;
    refused.assert_error(422, "validation_failed");
    let (_, narrow) = app
        .create_key(
            &t.key,
            json!({"name": "n", "type": "secret", "scopes": ["contacts:read"]}),
        )
        .await;
    app.get("/v1/workflows", &narrow)
        .await
        .assert_error(403, "insufficient_scope");

    for reply in [
        app.get(&path, &other.key).await,
        app.patch(&path, &other.key, json!({"name": "mine"})).await,
        app.delete(&path, &other.key).await,
        app.post(&format!("{path}/signing-secret"), &other.key, json!({}))
            .await,
    ] {
        reply.assert_error(404, "not_found");
    }
    assert!(
        app.get("/v1/workflows", &other.key).await.body["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let still = app.get(&path, &t.key).await;
    assert_eq!(still.body["name"], "Trial ended");
    assert_eq!(still.body["status"], "draft");
}

/// Changes racing on one workflow are applied one after the other: every
/// one lands, versions count each steps change once.
async fn racing_changes_are_all_applied(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let made = app.post("/v1/workflows", &t.key, definition()).await;
    let path = format!("/v1/workflows/{}", made.body["id"].as_str().unwrap());
    let client = reqwest::Client::new();
    let changes: Vec<_> = (1..=6)
        .map(|i| {
            let request = client
                .patch(format!("{}{path}", app.next_base()))
                .bearer_auth(&t.key)
                .json(&json!({"steps": [{"type": "wait", "seconds": i}]}));
            tokio::spawn(TestApp::reply(request))
        })
        .collect();
    for change in changes {
        let reply = change.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(app.get(&path, &t.key).await.body["version"], 7);
}

/// A project has at most 100 workflows that are not archived: the 101st is
/// `409 conflict`, and archiving one makes room again.
async fn workflows_per_project_are_capped(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(10_000);
    })
    .await;
    let t = app.tenant().await;
    let mut first = String::new();
    for i in 0..100 {
        let mut body = definition();
        body["name"] = json!(format!("w{i}"));
        let made = app.post("/v1/workflows", &t.key, body).await;
        assert_eq!(made.status, 201, "{i}: {}", made.body);
        if i == 0 {
            first = made.body["id"].as_str().unwrap().to_string();
        }
    }
    let refused = app.post("/v1/workflows", &t.key, definition()).await;
    refused.assert_error(409, "conflict");
    assert_eq!(
        app.delete(&format!("/v1/workflows/{first}"), &t.key)
            .await
            .status,
        204
    );
    let made = app.post("/v1/workflows", &t.key, definition()).await;
    assert_eq!(made.status, 201, "{}", made.body);
}

every_deployment_tests!(
    workflows_per_project_are_capped,
    workflows_are_created_changed_and_archived,
    bad_definitions_say_where,
    scopes_and_projects_fence_workflows,
    racing_changes_are_all_applied,
);

//! The API against its own document: schemathesis (PyPI) generates requests
//! from `/openapi.json` for every `/v1` and `/admin/v1` operation and checks
//! each answer against it (`scripts/contract-fuzz`); and what it found once
//! stays fixed, on both stores.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::harness::{ADMIN_TOKEN, Backend, Reply, TestApp};

/// A raw body (not necessarily an object) with a bearer credential.
async fn send_raw(app: &TestApp, method: Method, path: &str, token: &str, body: &str) -> Reply {
    TestApp::reply(
        app.client
            .request(method, format!("{}{path}", app.base_url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

fn fields(reply: &Reply) -> Vec<String> {
    reply.body["error"]["details"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn contract_findings_stay_fixed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;

    // A body is an object: serde would have read `["team"]` as {"plan": "team"}.
    let plan_path = format!("/admin/v1/workspaces/{}/plan", t.workspace_id);
    for body in [r#"["team"]"#, "42", "null", r#""team""#] {
        let reply = send_raw(&app, Method::PUT, &plan_path, ADMIN_TOKEN, body).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(fields(&reply), ["body"], "{body}");
    }
    let made = send_raw(
        &app,
        Method::POST,
        "/admin/v1/workspaces",
        ADMIN_TOKEN,
        r#"["x", "pro"]"#,
    )
    .await;
    made.assert_error(422, "validation_failed");
    let workspace = app
        .admin_call(
            Method::GET,
            &format!("/admin/v1/workspaces/{}", t.workspace_id),
        )
        .await;
    assert_eq!(workspace.body["plan"], "pro", "the plan did not change");
    send_raw(&app, Method::POST, "/v1/contacts", &t.key, "[1,")
        .await
        .assert_error(400, "invalid_json");

    // A roll's body may be JSON's null: the defaults.
    let (id, _) = app
        .create_key(&t.key, json!({"name": "rolled", "type": "secret"}))
        .await;
    let rolled = send_raw(
        &app,
        Method::POST,
        &format!("/v1/keys/{id}/roll"),
        &t.key,
        "null",
    )
    .await;
    assert_eq!(rolled.status, 201, "{}", rolled.body);

    // Segment messages: a wrong type is refused under the client's own
    // field name, never silently dropped.
    let cases: [(&str, Value, &str); 8] = [
        (
            "/v1/identify",
            json!({"userId": {}, "traits": {}}),
            "userId",
        ),
        (
            "/v1/identify",
            json!({"userId": "u1", "traits": [1]}),
            "traits",
        ),
        (
            "/v1/identify",
            json!({"userId": "u1", "messageId": {}}),
            "messageId",
        ),
        (
            "/v1/identify",
            json!({"userId": "u1", "timestamp": "2024-01-01T12:99:00Z"}),
            "timestamp",
        ),
        (
            "/v1/identify",
            json!({"type": "AAA", "userId": "u1"}),
            "type",
        ),
        ("/v1/track", json!({"userId": "u1", "event": ""}), "event"),
        (
            "/v1/track",
            json!({"userId": "u1", "event": "x", "messageId": ""}),
            "messageId",
        ),
        ("/v1/track", json!({"event": "x"}), "userId"),
    ];
    for (path, body, field) in cases {
        let reply = app.post(path, &t.key, body.clone()).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(fields(&reply), [field], "{path} {body}");
    }
    for (body, field) in [
        (json!({"batch": []}), "batch"),
        (json!({"batch": [{"type": "nope"}]}), "batch[0].type"),
        (
            json!({"batch": [{"type": "page", "messageId": {}}]}),
            "batch[0].messageId",
        ),
    ] {
        let reply = app.post("/v1/batch", &t.key, body.clone()).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(fields(&reply), [field], "{body}");
    }
    let contacts = app.get("/v1/contacts", &t.key).await;
    assert_eq!(contacts.body["data"], json!([]), "nothing was stored");

    // A contact lookup checks the page parameters and empty values too.
    app.get("/v1/contacts?limit=abc&email=a%40b.co", &t.key)
        .await
        .assert_error(422, "validation_failed");
    let empty = app.get("/v1/contacts?email=", &t.key).await;
    empty.assert_error(422, "validation_failed");
    assert_eq!(fields(&empty), ["email"]);

    // What a route with a body can refuse is in the document.
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let responses = &doc["paths"]["/v1/contacts"]["post"]["responses"];
    for status in ["400", "413", "415"] {
        assert!(responses[status].is_object(), "{status}: {responses}");
    }
    let limit = doc["paths"]["/v1/keys"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1, "{limit}");
}

backend_tests!(contract_findings_stay_fixed);

/// The schemathesis CLI from the test venv (scripts/test installs it).
fn schemathesis() -> Option<String> {
    let from_python = std::env::var("KEYFLOW_TEST_PYTHON")
        .ok()
        .and_then(|python| {
            let st = std::path::Path::new(&python).with_file_name("st");
            st.exists().then(|| st.display().to_string())
        });
    if let Some(st) = std::env::var("KEYFLOW_TEST_SCHEMATHESIS")
        .ok()
        .or(from_python)
    {
        return Some(st);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the contract fuzz needs schemathesis under CI (scripts/test installs it next to \
             KEYFLOW_TEST_PYTHON, or set KEYFLOW_TEST_SCHEMATHESIS)"
        );
    }
    eprintln!("SKIPPED: no schemathesis; run scripts/test, or set KEYFLOW_TEST_SCHEMATHESIS");
    None
}

/// schemathesis against a live server: at least 5 000 generated requests
/// over every operation, and not one failed check (server errors, answers
/// the document does not describe, requests it forbids yet accepted, …).
#[test]
fn schemathesis_finds_nothing() {
    let Some(st) = schemathesis() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/contract-fuzz");
    let out = std::process::Command::new(script)
        .args([crate::cli::BIN, st.as_str()])
        .env("KEYFLOW_FUZZ_TIME_LIMIT", "540")
        .output()
        .expect("run scripts/contract-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    };
    assert!(
        out.status.success(),
        "contract fuzz failed:\n{}\n{}",
        tail(&stdout),
        tail(&stderr)
    );
    let number_after = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.split_once(label).map(|(_, n)| n.trim().to_string()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in:\n{}", tail(&stdout)))
    };
    let generated = number_after("test cases generated:");
    let answered = number_after("(keyflow_http_requests_total):");
    assert!(generated >= 5_000, "only {generated} test cases");
    assert!(
        answered >= 5_000,
        "only {answered} requests reached the server"
    );
}

//! `/openapi.json`: a snapshot keeps the document from drifting, and every
//! documented operation must exist behind the auth pipeline.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp};

fn snapshot_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

async fn document(app: &TestApp) -> Value {
    let reply = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200);
    reply.body
}

#[tokio::test]
async fn openapi_matches_the_snapshot() {
    let app = TestApp::start(Backend::Sqlite).await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var("KEYFLOW_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::write(snapshot_path(), &pretty).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(snapshot_path()).unwrap_or_default();
    assert!(
        stored == pretty,
        "the OpenAPI document changed; review it and run \
         `KEYFLOW_UPDATE_SNAPSHOTS=1 cargo nextest run openapi_matches_the_snapshot` to accept it"
    );
}

/// The document validates as OpenAPI 3.1 with a standard validator
/// (openapi-spec-validator from PyPI, installed by scripts/test).
#[tokio::test]
async fn the_document_validates_as_openapi() {
    let Some(python) = crate::harness::test_python() else {
        return;
    };
    let app = TestApp::start(Backend::Sqlite).await;
    let doc = document(&app).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             doc, _ = read_from_filename(sys.argv[1])\n\
             validate(doc)\n\
             print('valid')",
        ])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The route list registers each route with its document entry: every
/// documented operation answers (behind its credential), and on a
/// documented path every other method is 405, so nothing is routed there
/// undocumented.
#[tokio::test]
async fn every_documented_operation_exists_behind_auth() {
    let app = TestApp::start(Backend::Sqlite).await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "some-id")
            .replace("{key_id}", "some-key-id")
            .replace("{metric}", "events.count")
            .replace("{email_or_id}", "a@b.co");
        let admin = path.starts_with("/admin/v1/");
        assert!(admin || path.starts_with("/v1/"), "{path}");
        let refusal = if admin {
            "unauthorized"
        } else {
            "missing_api_key"
        };
        let documented = item.as_object().unwrap();
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            // A JSON body, so routes that read it before the credential
            // (the metrics token exchange) reach their credential check.
            let reply = app
                .request(method.clone(), &concrete, None, Some(serde_json::json!({})))
                .await;
            let Some(op) = documented.get(&method.as_str().to_lowercase()) else {
                // The admin API checks its token before the method.
                let reply = if admin {
                    app.admin(method.clone(), &concrete, serde_json::json!({}))
                        .await
                } else {
                    reply
                };
                assert_eq!(reply.status, 405, "{method} {path} is not documented");
                continue;
            };
            assert_eq!(
                reply.status, 401,
                "{method} {path} should exist and need a credential: {}",
                reply.body
            );
            assert_eq!(reply.error_code(), refusal, "{method} {path}");
            // Each operation names its responses and its security.
            assert!(
                op["responses"]
                    .as_object()
                    .is_some_and(|r| r.contains_key("401") && r.contains_key("429")),
                "{method} {path}"
            );
            // Its own security, or the document's (a key).
            let security = op.get("security").or(doc.get("security"));
            assert!(
                security.is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty())),
                "{method} {path}"
            );
            operations += 1;
        }
    }
    assert_eq!(
        operations, 50,
        "every /v1 and /admin/v1 operation is documented"
    );
}

/// The route list writes each `/v1` operation's "Scope: …" sentence from the
/// guard that enforces it, so the document and the checks cannot disagree:
/// a key missing any one named scope is refused with `insufficient_scope`,
/// and a key holding exactly the named scopes is not. Every operation also
/// carries one of the document's declared tags.
#[tokio::test]
async fn documented_scopes_are_the_enforced_ones() {
    const ALL: [&str; 11] = [
        "contacts:read",
        "contacts:write",
        "events:read",
        "events:write",
        "subscribers:read",
        "subscribers:write",
        "keys:read",
        "keys:write",
        "audit:read",
        "workflows:read",
        "workflows:write",
    ];
    let app = TestApp::start(Backend::Sqlite).await;
    let tenant = app.tenant_on("team").await;
    let doc = document(&app).await;
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let key_with = |scopes: Vec<&'static str>| {
        let app = &app;
        let creator = tenant.key.clone();
        async move {
            app.create_key(
                &creator,
                json!({"name": "probe", "type": "secret", "scopes": scopes}),
            )
            .await
            .1
        }
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tag = op["tags"][0].as_str().unwrap_or_default();
            assert!(tags.contains(&tag), "{method} {path}: tag {tag:?}");
            if !path.starts_with("/v1/") {
                continue;
            }
            let description = op["description"].as_str().unwrap_or_default();
            let sentence = description.split('.').next().unwrap_or_default();
            let named: Vec<&str> = ALL
                .into_iter()
                .filter(|s| sentence.contains(&format!("`{s}`")))
                .collect();
            // The Metrics API takes its credential or an access token, not a key.
            if op["security"].to_string().contains("metrics_") {
                assert!(path.starts_with("/v1/metrics/"), "{path}");
                continue;
            }
            if path == "/v1/keys/self" {
                assert!(named.is_empty(), "any key may read itself");
                continue;
            }
            assert!(
                sentence.starts_with("Scope"),
                "{method} {path} names no scope: {description}"
            );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = path
                .replace("{id}", "some-id")
                .replace("{metric}", "events.count")
                .replace("{email_or_id}", "a@b.co");
            for missing in &named {
                let key = key_with(ALL.into_iter().filter(|s| s != missing).collect()).await;
                let reply = app
                    .request(method.clone(), &concrete, Some(&key), Some(json!({})))
                    .await;
                reply.assert_error(403, "insufficient_scope");
            }
            let key = key_with(named.clone()).await;
            let reply = app
                .request(method.clone(), &concrete, Some(&key), Some(json!({})))
                .await;
            assert_ne!(
                reply.error_code(),
                "insufficient_scope",
                "{method} {path} with {named:?}: {}",
                reply.body
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 36, "every /v1 operation but keys/self");
}

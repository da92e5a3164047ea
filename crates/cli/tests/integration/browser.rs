//! Browser tracking in a real browser: Debian's headless Chromium loads a page
//! from another origin that uses `/embed.js`; we check what was stored.

use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

fn chromium() -> Option<String> {
    let path =
        std::env::var("KEYFLOW_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "browser tests need Chromium at {path} under CI (scripts/test installs Debian's chromium)"
        );
    }
    eprintln!(
        "SKIPPED: no Chromium at {path}; install Debian's chromium or set KEYFLOW_TEST_CHROMIUM"
    );
    None
}

/// Serves the test pages on `listener`: a different origin from the API.
fn serve_pages(listener: tokio::net::TcpListener, api: String, key: String) {
    let tracking = format!(
        r#"<!doctype html><html><body><p id="status">pending</p>
<script src="{api}/embed.js"></script>
<script>
keyflow.init("{key}", {{ host: "{api}" }});
keyflow.identify("browser-user@example.com", {{ source: "landing" }}).then(function (ok) {{
  keyflow.track("page_view", {{ path: "/pricing" }});
  keyflow.track("clicked_signup", {{ button: "hero" }});
  return keyflow.flush().then(function (sent) {{
    document.getElementById("status").textContent = "identified:" + ok + " flushed:" + JSON.stringify(sent);
  }});
}});
</script></body></html>"#
    );
    let leaving = format!(
        r#"<!doctype html><html><body>
<script src="{api}/embed.js"></script>
<script>
keyflow.init("{key}", {{ host: "{api}" }});
keyflow.track("left_page", {{ via: "pagehide" }});
// No flush: navigating away must send the queue (keepalive on page hide).
location.replace("/done");
</script></body></html>"#
    );
    let app = Router::new()
        .route("/", get(move || async move { Html(tracking) }))
        .route("/leave", get(move || async move { Html(leaving) }))
        .route("/done", get(|| async { Html("<p id=\"status\">done</p>") }));
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// Loads `url` headless and returns the final DOM. `wait_for_scripts` lets
/// timers and fetches settle (virtual time); it must be off for a page that
/// navigates away, which would otherwise never finish.
async fn dump_dom(chromium: &str, url: &str, wait_for_scripts: bool) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--dump-dom",
        ])
        .args(wait_for_scripts.then_some("--virtual-time-budget=10000"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium ran");
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn embed_js_tracks_from_a_real_browser(backend: Backend) {
    let Some(chromium) = chromium() else { return };
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    // The page origin is known before the key, so the key allows exactly it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages = format!("http://{}", listener.local_addr().unwrap());
    let page_origin = pages.clone();
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "website", "type": "client", "scopes": ["events:write", "contacts:write"], "allowed_origins": [page_origin]}),
        )
        .await;
    serve_pages(listener, app.base_url.clone(), key.clone());
    let dom = dump_dom(&chromium, &format!("{pages}/"), true).await;
    assert!(
        dom.contains("identified:true flushed:[true]"),
        "page said: {dom}"
    );
    let events = app.get("/v1/events", &t.key).await;
    let names: Vec<&str> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{}", events.body);
    assert!(names.contains(&"page_view") && names.contains(&"clicked_signup"));
    let contact = app
        .get("/v1/contacts?email=browser-user%40example.com", &t.key)
        .await;
    let contact_id = contact.body["data"][0]["id"]
        .as_str()
        .expect("identify created the contact")
        .to_string();
    assert_eq!(
        contact.body["data"][0]["properties"],
        json!({"source": "landing"})
    );
    for e in events.body["data"].as_array().unwrap() {
        assert_eq!(e["contact_id"], contact_id.as_str());
        assert!(e["anonymous_id"].is_string());
    }
    // Leaving the page flushes the queue with keepalive.
    let dom = dump_dom(&chromium, &format!("{pages}/leave"), false).await;
    assert!(dom.contains("done"), "navigation happened: {dom}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = app.get("/v1/events?name=left_page", &t.key).await;
        if left.body["data"].as_array().is_some_and(|d| d.len() == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page-hide flush never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

backend_tests!(embed_js_tracks_from_a_real_browser);

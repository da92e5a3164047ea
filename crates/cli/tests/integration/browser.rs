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

/// What the flaky stand-in for the API answered, in order.
type ProxyLog = std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>;

/// A stand-in for the API on its own origin: `/flaky/…` answers the first
/// batch `503` (`Retry-After: 1`), the second `429` (`Retry-After: 2`), and
/// forwards the rest to the real API; `/down/…` answers every batch `503`
/// without `Retry-After`. Both answer CORS like the API (the browser must be
/// able to read `Retry-After`).
fn serve_flaky_api(listener: tokio::net::TcpListener, api: String, log: ProxyLog) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    let http = reqwest::Client::new();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, api, log) = (http.clone(), api.clone(), log.clone());
        async move {
            let origin = headers
                .get("origin")
                .cloned()
                .unwrap_or(HeaderValue::from_static("*"));
            let cors = |mut r: Response| {
                let h = r.headers_mut();
                h.insert("access-control-allow-origin", origin.clone());
                h.insert(
                    "access-control-expose-headers",
                    HeaderValue::from_static("retry-after"),
                );
                r
            };
            if method == Method::OPTIONS {
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                h.insert(
                    "access-control-allow-methods",
                    HeaderValue::from_static("POST"),
                );
                h.insert(
                    "access-control-allow-headers",
                    HeaderValue::from_static("authorization, content-type"),
                );
                return cors(r);
            }
            let path = uri.path().to_string();
            let seen = {
                let log = log.lock().unwrap();
                log.iter().filter(|(p, _)| p.starts_with("/flaky")).count()
            };
            let refuse = |status: StatusCode, retry_after: Option<&'static str>| {
                let mut r = (status, "{\"error\":{\"code\":\"unavailable\"}}").into_response();
                if let Some(after) = retry_after {
                    r.headers_mut()
                        .insert("retry-after", HeaderValue::from_static(after));
                }
                cors(r)
            };
            let answer = if path.starts_with("/down") {
                refuse(StatusCode::SERVICE_UNAVAILABLE, None)
            } else if seen == 0 {
                refuse(StatusCode::SERVICE_UNAVAILABLE, Some("1"))
            } else if seen == 1 {
                refuse(StatusCode::TOO_MANY_REQUESTS, Some("2"))
            } else {
                let mut forward = http.post(format!("{api}{}", path.trim_start_matches("/flaky")));
                for name in ["authorization", "content-type", "origin"] {
                    if let Some(v) = headers.get(name) {
                        forward = forward.header(name, v.as_bytes());
                    }
                }
                let reply = forward.body(body).send().await.unwrap();
                let status = StatusCode::from_u16(reply.status().as_u16()).unwrap();
                let text = reply.text().await.unwrap();
                cors((status, text).into_response())
            };
            log.lock().unwrap().push((path, answer.status().as_u16()));
            answer
        }
    };
    let app = Router::new().fallback(handler);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// `/embed.js` when the API cannot take events: a `503` and a `429` are
/// retried after their `Retry-After` (measured in the page's own clock) and
/// the events arrive once; an API that stays down is retried with a growing
/// backoff, not in a loop, while the queue stays bounded at 1000 events.
async fn embed_js_retries_and_backs_off_in_a_real_browser(backend: Backend) {
    let Some(chromium) = chromium() else { return };
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let pages_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages = format!("http://{}", pages_listener.local_addr().unwrap());
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", proxy_listener.local_addr().unwrap());
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "website", "type": "client", "scopes": ["events:write"], "allowed_origins": [pages.clone()]}),
        )
        .await;
    let log = ProxyLog::default();
    serve_flaky_api(proxy_listener, app.base_url.clone(), log.clone());
    // The page notes when each batch request was answered, in its own
    // (virtual) milliseconds, and how many events are still queued.
    let page = |host: &str, events: usize| {
        format!(
            r#"<!doctype html><html><body><p id="status">pending</p>
<script>
var started = Date.now(), answers = [];
var realFetch = window.fetch;
window.fetch = function (url, options) {{
  return realFetch(url, options).then(function (r) {{
    answers.push([Date.now() - started, r.status]);
    return r;
  }});
}};
</script>
<script src="{api}/embed.js"></script>
<script>
keyflow.init("{key}", {{ host: "{host}" }});
for (var i = 0; i < {events}; i++) {{ keyflow.track("retried", {{ n: i }}); }}
keyflow.flush();
setInterval(function () {{
  document.getElementById("status").textContent =
    JSON.stringify({{ queued: keyflow.queued(), answers: answers }});
}}, 200);
</script></body></html>"#,
            api = app.base_url
        )
    };
    let flaky_page = page(&format!("{proxy}/flaky"), 2);
    let down_page = page(&format!("{proxy}/down"), 1500);
    let pages_app = Router::new()
        .route("/flaky", get(move || async move { Html(flaky_page) }))
        .route("/down", get(move || async move { Html(down_page) }));
    tokio::spawn(async move { axum::serve(pages_listener, pages_app).await });
    let status = |dom: &str| -> serde_json::Value {
        let start = dom.find("<p id=\"status\">").expect("status") + "<p id=\"status\">".len();
        let end = start + dom[start..].find("</p>").unwrap();
        serde_json::from_str(&dom[start..end].replace("&quot;", "\""))
            .unwrap_or_else(|_| panic!("page said: {dom}"))
    };

    let seen = status(&dump_dom(&chromium, &format!("{pages}/flaky"), true).await);
    let answers = seen["answers"].as_array().unwrap();
    let statuses: Vec<u64> = answers.iter().map(|a| a[1].as_u64().unwrap()).collect();
    assert_eq!(statuses, [503, 429, 202], "{seen}");
    let at: Vec<u64> = answers.iter().map(|a| a[0].as_u64().unwrap()).collect();
    assert!(
        at[1] - at[0] >= 1000,
        "retried before Retry-After: 1 ({seen})"
    );
    assert!(
        at[2] - at[1] >= 2000,
        "retried before Retry-After: 2 ({seen})"
    );
    assert_eq!(seen["queued"], 0);
    let stored = app.get("/v1/events?name=retried", &t.key).await;
    assert_eq!(
        stored.body["data"].as_array().unwrap().len(),
        2,
        "each event stored once: {}",
        stored.body
    );

    // Down for the page's whole 10 s: a few spaced retries, a bounded queue.
    let seen = status(&dump_dom(&chromium, &format!("{pages}/down"), true).await);
    let at: Vec<u64> = seen["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[0].as_u64().unwrap())
        .collect();
    assert!(
        (3..=6).contains(&at.len()),
        "expected a backoff of ~1, 2, 4 s: {seen}"
    );
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 500), "{seen}");
    assert!(
        gaps.last().unwrap() > gaps.first().unwrap(),
        "the wait grows: {seen}"
    );
    assert_eq!(seen["queued"], 1000, "the queue keeps the newest 1000");
    let downs = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/down"))
        .count();
    // What the page saw, plus at most its page-hide flush as Chromium
    // closes it (the 1000 queued events in batches of 100).
    assert!(
        (at.len()..=at.len() + 10).contains(&downs),
        "{downs} requests for {} answers seen",
        at.len()
    );
}

/// At a phone's 390 px every dashboard page fits the width (nothing scrolls
/// sideways) and lists keep every column and action: a key can be revoked
/// from its card in the list.
async fn dashboard_at_phone_width(backend: Backend) {
    let Some(browser) = crate::webdriver::Browser::start().await else {
        return;
    };
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    let base = app.base_url.clone();
    set_up_first_owner(&browser, &base, &token, None).await;
    browser.set_viewport(390, 844).await;
    browser.goto(&format!("{base}/keys/new?type=secret")).await;
    browser
        .type_into("#name", "phone key with a rather long name to wrap")
        .await;
    browser.click("#create-key").await;
    let key = browser.text("#new-key").await;
    assert_eq!(
        browser.text("#try-key").await,
        format!("curl {base}/v1/keys/self -H \"Authorization: Bearer {key}\"")
    );
    for page in [
        "/keys",
        "/activity",
        "/members",
        "/contacts",
        "/events",
        "/analytics",
        "/workflows",
        "/workflows/new",
        "/plan",
        "/metrics-credential",
        "/settings",
        "/keys/new",
    ] {
        browser.goto(&format!("{base}{page}")).await;
        let widths = browser
            .execute("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        let (content, viewport) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
        assert_eq!(viewport, 390, "{page}");
        assert!(
            content <= viewport,
            "{page} scrolls sideways at 390 px: {content} px wide"
        );
    }
    browser.goto(&format!("{base}/keys")).await;
    browser.screenshot("phone-keys").await;
    // Every column is there, labelled; the Revoke action is on screen.
    let shown = browser
        .execute(
            "const cell = document.querySelector('td[data-label=\"Key\"]');
             const revoke = document.querySelector(\"a[href*='/revoke']\");
             const box = revoke.getBoundingClientRect();
             return [getComputedStyle(cell).display, getComputedStyle(cell, '::before').content,
                     box.width > 0 && box.right <= window.innerWidth];",
        )
        .await;
    assert_eq!(shown, json!(["block", "\"Key: \"", true]), "{shown}");
    browser.click("a[href*='/revoke']").await;
    browser.click("button.danger").await;
    browser.wait_for_url("/keys?project=").await;
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(401, "key_revoked");
}

/// axe-core (npm, installed by scripts/test into target/axe; injected by
/// WebDriver, no CDN) on the dashboard's pages as an owner sees them.
fn axe_source() -> Option<String> {
    let path = std::env::var("KEYFLOW_TEST_AXE").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/axe/node_modules/axe-core/axe.min.js"
        )
        .to_string()
    });
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "the accessibility test needs axe-core at {path} under CI (scripts/test installs it)"
            )
        }
        Err(_) => {
            eprintln!("SKIPPED: no axe-core at {path}; run scripts/test or set KEYFLOW_TEST_AXE");
            None
        }
    }
}

/// Every dashboard page an owner opens, with a key, a contact, an event, a
/// workflow and a refused form among them, has no accessibility violation of
/// serious or critical impact by axe-core's rules (WCAG 2.1 A and AA).
/// axe-core's rules for WCAG 2.1 A and AA; the violations of serious or
/// critical impact, for the page on screen.
const AXE_RUN: &str = "const done = arguments[arguments.length - 1];
    axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
       .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => ({target: n.target}))}))))
       .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));";

async fn axe_violations(browser: &crate::webdriver::Browser, axe: &str) -> serde_json::Value {
    browser.execute(&format!("{axe}\nreturn null;")).await;
    browser.execute_async(AXE_RUN).await
}

async fn dashboard_pages_pass_axe(backend: Backend) {
    let Some(axe) = axe_source() else { return };
    let Some(browser) = crate::webdriver::Browser::start().await else {
        return;
    };
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    let base = app.base_url.clone();
    set_up_first_owner(&browser, &base, &token, None).await;
    browser.goto(&format!("{base}/keys/new?type=secret")).await;
    browser.type_into("#name", "server").await;
    browser.click("#create-key").await;
    let key = browser.text("#new-key").await;
    // The one-time reveal, while it is on screen.
    let reveal = axe_violations(&browser, &axe).await;
    assert_eq!(
        app.post(
            "/v1/events",
            &key,
            json!({"name": "signup", "email": "ada@example.com"})
        )
        .await
        .status,
        202
    );
    let contact = app.get("/v1/contacts", &key).await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key_id = app.get("/v1/keys/self", &key).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pages = [
        "/keys".to_string(),
        "/keys/new?type=client".into(),
        format!("/keys/{key_id}"),
        format!("/keys/{key_id}/roll"),
        format!("/keys/{key_id}/revoke"),
        "/activity".into(),
        "/members".into(),
        "/contacts".into(),
        format!("/contacts/{contact}"),
        "/events".into(),
        "/analytics".into(),
        "/workflows".into(),
        "/workflows/new".into(),
        "/plan".into(),
        "/metrics-credential".into(),
        "/settings".into(),
    ];
    let mut found = Vec::new();
    let mut check = |page: String, result: serde_json::Value| {
        for v in result.as_array().unwrap() {
            found.push(format!(
                "{page}: {} ({}) {} at {}",
                v["id"].as_str().unwrap_or(""),
                v["impact"].as_str().unwrap_or(""),
                v["help"].as_str().unwrap_or(""),
                v["nodes"]
                    .as_array()
                    .map(|n| n
                        .iter()
                        .take(3)
                        .map(|n| n["target"].to_string())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ));
        }
    };

    // axe really runs: an image without alt text on a page is found.
    browser.goto(&format!("{base}/keys")).await;
    browser
        .execute(&format!(
            "{axe}\ndocument.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\"x.png\">');\nreturn null;"
        ))
        .await;
    let canary = browser.execute_async(AXE_RUN).await;
    assert!(
        canary.to_string().contains("image-alt"),
        "axe-core did not run: {canary}"
    );
    check("the reveal page".into(), reveal);
    // Beyond axe's rules: form control borders at 3:1 against the page, a
    // focus ring, and a skip link as the first stop of the keyboard.
    browser.goto(&format!("{base}/keys/new?type=secret")).await;
    let looks = browser
        .execute(
            "const lum = c => { const [r, g, b] = c.match(/\\d+/g).slice(0, 3).map(v => {
                 v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
               return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
             const input = document.querySelector('#name');
             const border = lum(getComputedStyle(input).borderTopColor);
             input.focus();
             const ring = getComputedStyle(input).outlineStyle;
             const first = document.querySelector('a[href], button, input:not([type=hidden]), select, textarea');
             return [Math.round((1.05) / (border + 0.05) * 100) / 100, ring,
                     first.className, first.getAttribute('href')];",
        )
        .await;
    assert!(
        looks[0].as_f64().unwrap() >= 3.0,
        "input border contrast: {looks}"
    );
    assert_ne!(looks[1], "none", "no focus ring: {looks}");
    assert_eq!(
        (&looks[2], &looks[3]),
        (&json!("skip-link"), &json!("#main")),
        "{looks}"
    );
    // A refused form: its summary and the messages next to the fields.
    browser.goto(&format!("{base}/keys/new?type=secret")).await;
    browser.type_into("#name", "bad").await;
    browser.type_into("#cidr_0", "999.1.1.1").await;
    browser.click("#create-key").await;
    // Waits (up to 5 s) for the refused form to come back.
    browser.find("#error-summary").await;
    check(
        "the refused create form".into(),
        axe_violations(&browser, &axe).await,
    );
    for page in pages.iter().map(String::as_str).chain(["/signin"]) {
        if page == "/signin" {
            browser.delete_cookies().await;
        }
        browser.goto(&format!("{base}{page}")).await;
        check(page.to_string(), axe_violations(&browser, &axe).await);
    }
    assert!(found.is_empty(), "axe-core found:\n{}", found.join("\n"));
}

/// First-run setup through its form (owner@acme.io, workspace Acme, project
/// Production), ending signed in on the first key's form; `shot` names a
/// screenshot of the empty form.
async fn set_up_first_owner(
    browser: &crate::webdriver::Browser,
    base: &str,
    token: &str,
    shot: Option<&str>,
) {
    browser.goto(&format!("{base}/setup?token={token}")).await;
    if let Some(shot) = shot {
        browser.screenshot(shot).await;
    }
    browser.type_into("#email", "owner@acme.io").await;
    browser
        .type_into("#password", "correct horse battery")
        .await;
    browser.type_into("#workspace", "Acme").await;
    browser.type_into("#project", "Production").await;
    browser.click("button[type=submit]").await;
    browser
        .wait_for_url("/keys/new?type=secret&done=welcome-team")
        .await;
}

/// The dashboard in a real browser (chromedriver + headless Chromium): setup →
/// sign in → create a key with two permissions and an IP row → use it → see
/// "last used" → revoke with confirmation → 401 → the activity log; a member
/// cannot open the keys page; a cross-site form post is refused.
async fn dashboard_flow_in_a_real_browser(backend: Backend) {
    let Some(browser) = crate::webdriver::Browser::start().await else {
        return;
    };
    let app = TestApp::start(backend).await;
    let name = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    let token = app.state.issue_setup_token().unwrap();
    let base = app.base_url.clone();

    set_up_first_owner(&browser, &base, &token, Some(&format!("{name}-setup"))).await;
    assert!(
        browser
            .url()
            .await
            .ends_with("/keys/new?type=secret&done=welcome-team"),
        "{}",
        browser.url().await
    );
    assert!(browser.source().await.contains("Keyflow is set up"));
    // API access needs pro: the instance operator upgrades the workspace.
    let operator = app
        .store
        .find_operator_by_email("owner@acme.io")
        .await
        .unwrap()
        .unwrap();
    let workspace = app.store.list_memberships(&operator.id).await.unwrap()[0]
        .workspace_id
        .clone();
    let upgraded = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/workspaces/{workspace}/plan"),
            json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(upgraded.status, 200);

    // Sign out and in again through the form.
    browser.click("header form button").await;
    browser.wait_for_url("/signin").await;
    browser.type_into("#email", "owner@acme.io").await;
    browser
        .type_into("#password", "correct horse battery")
        .await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/activity").await;
    browser.screenshot(&format!("{name}-activity")).await;

    // Create a client key with two permissions and an IP row.
    browser.goto(&format!("{base}/keys")).await;
    browser.goto(&format!("{base}/keys/new?type=client")).await;
    browser.type_into("#name", "website").await;
    browser.click("input[value='contacts:write']").await; // events:write is already checked
    browser.type_into("input[name=cidr_0]", "127.0.0.1").await;
    browser
        .type_into("input[name=description_0]", "this machine")
        .await;
    browser.screenshot(&format!("{name}-create-key")).await;
    // Enter in a field creates the key (it used to press "Add a row").
    browser.type_into("#allowed_events", "\u{E007}").await;
    let key = browser.text("#new-key").await;
    assert!(key.starts_with("ck_live_") && key.len() == 46, "{key}");
    assert!(browser.source().await.contains("will not be shown again"));
    browser.click("[data-copy]").await;
    browser.screenshot(&format!("{name}-reveal")).await;

    // Use it from an HTTP client.
    let me = app.get("/v1/keys/self", &key).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["scopes"], json!(["contacts:write", "events:write"]));
    assert_eq!(
        app.post(
            "/v1/events",
            &key,
            json!({"name": "signup", "anonymous_id": "a"})
        )
        .await
        .status,
        202
    );

    // "Last used" updates; the full key is never on the page again.
    browser.goto(&format!("{base}/keys")).await;
    let list = browser.source().await;
    assert!(list.contains("just now"), "{list}");
    assert!(!list.contains(&key));
    browser.screenshot(&format!("{name}-keys")).await;

    // Revoke with confirmation; the key is refused at once.
    browser.click("a[href*='/revoke']").await;
    assert!(browser.source().await.contains("cannot be undone"));
    browser.click("button.danger").await;
    browser.wait_for_url("/keys?project=").await;
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(401, "key_revoked");

    // The activity log shows both, with the operator's name.
    browser.goto(&format!("{base}/activity")).await;
    let log = browser.source().await;
    assert!(
        log.contains("api_key.created")
            && log.contains("api_key.revoked")
            && log.contains("owner@acme.io")
    );
    browser.screenshot(&format!("{name}-activity-after")).await;

    // The metrics credential: create it, see the secret once, then never again.
    browser.goto(&format!("{base}/metrics-credential")).await;
    browser.click("button[type=submit]").await;
    let secret = browser.text("#client-secret").await;
    let credential_id = browser.text("#credential-id").await;
    assert!(credential_id.starts_with("mk_live_") && secret.len() >= 43);
    browser
        .screenshot(&format!("{name}-metrics-credential-reveal"))
        .await;
    browser.goto(&format!("{base}/metrics-credential")).await;
    let page = browser.source().await;
    assert!(page.contains(&credential_id) && !page.contains(&secret));
    browser
        .screenshot(&format!("{name}-metrics-credential"))
        .await;

    // A member cannot open the keys page.
    app.admin(
        reqwest::Method::POST,
        &format!("/admin/v1/workspaces/{workspace}/operators"),
        json!({"email": "member@acme.io", "password": "member password", "role": "member"}),
    )
    .await;
    browser.delete_cookies().await;
    browser.goto(&format!("{base}/signin")).await;
    browser.type_into("#email", "member@acme.io").await;
    browser.type_into("#password", "member password").await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/activity").await;
    browser.goto(&format!("{base}/keys")).await;
    assert!(browser.source().await.contains("Owners and admins only"));
    browser
        .screenshot(&format!("{name}-member-forbidden"))
        .await;

    // A form on another site posting to Keyflow is refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil = format!("http://{}", listener.local_addr().unwrap());
    let form = format!(
        "<form id=f method=post action=\"{base}/keys/new\"><input name=name value=evil><input name=type value=secret></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            Router::new().route("/", get(move || async move { Html(form) })),
        )
        .await
    });
    browser.goto(&format!("{evil}/")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !browser.source().await.contains("Request refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "cross-site post was not refused: {}",
            browser.source().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was created by the refused post.
    let project = &app.store.list_projects(&workspace).await.unwrap()[0].id;
    let page = keyflow_store::Page {
        limit: 100,
        cursor: None,
    };
    let keys = app.store.list_api_keys(project, true, &page).await.unwrap();
    assert!(keys.iter().all(|k| k.settings.name != "evil"));
}

/// Copy on a plain-http address that is not localhost (the usual LAN set-up,
/// where `navigator.clipboard` does not exist): the key is selected and the
/// page says it was copied or how to copy it; a click on the key selects it.
async fn copy_works_on_a_plain_http_lan_address(backend: Backend) {
    let Some(browser) =
        crate::webdriver::Browser::start_with(&["--host-resolver-rules=MAP lan.test 127.0.0.1"])
            .await
    else {
        return;
    };
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    let base = format!("http://lan.test:{}", app.addr.port());
    set_up_first_owner(&browser, &base, &token, None).await;
    assert_eq!(
        browser
            .execute("return window.isSecureContext && !!navigator.clipboard;")
            .await,
        json!(false),
        "this origin must not be a secure context"
    );
    browser.goto(&format!("{base}/keys/new?type=client")).await;
    browser.type_into("#name", "website").await;
    browser.click("#create-key").await;
    let key = browser.text("#new-key").await;
    assert!(key.starts_with("ck_live_"), "{key}");
    // The reveal starts focused on the key, and offers the page snippet
    // with this address and this key.
    assert_eq!(
        browser.execute("return document.activeElement.id;").await,
        json!("new-key")
    );
    let snippet = browser.text("#try-key").await;
    assert!(
        snippet.contains(&format!("<script src=\"{base}/embed.js\"></script>"))
            && snippet.contains(&format!("keyflow.init(\"{key}\", {{ host: \"{base}\" }})")),
        "{snippet}"
    );
    browser.click("[data-copy=new-key]").await;
    let selected = browser
        .execute("return window.getSelection().toString().trim();")
        .await;
    assert_eq!(selected, json!(key), "the key is selected for copying");
    let said = browser.text(".copy-status[data-for=new-key]").await;
    assert!(
        said == "Copied to the clipboard." || said.starts_with("Press Ctrl+C"),
        "{said}"
    );
    browser.screenshot("copy-on-plain-http").await;
    // A click on the key itself selects all of it.
    browser
        .execute("window.getSelection().removeAllRanges(); return null;")
        .await;
    browser.click("#new-key").await;
    let selected = browser
        .execute("return window.getSelection().toString().trim();")
        .await;
    assert_eq!(selected, json!(key));
}

/// The workflow form in a real browser: only the chosen trigger kind's
/// fields show; choosing "An event arrives" shows the event's name and
/// conditions, and the workflow is created with that trigger.
async fn workflow_trigger_form_in_a_real_browser(backend: Backend) {
    let Some(browser) = crate::webdriver::Browser::start().await else {
        return;
    };
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    let base = app.base_url.clone();
    set_up_first_owner(&browser, &base, &token, None).await;
    browser.goto(&format!("{base}/workflows/new")).await;
    let shown = || async {
        browser
            .execute(
                "return Array.from(document.querySelectorAll('fieldset.trigger-kind'))\
                 .filter(function (f) { return !f.hidden; })\
                 .map(function (f) { return f.getAttribute('data-kind'); });",
            )
            .await
    };
    assert_eq!(shown().await, json!([]), "an api trigger has no fields");
    browser.click("#trigger_type option[value=event]").await;
    assert_eq!(shown().await, json!(["event"]));
    browser.type_into("#name", "Trial ended").await;
    browser.type_into("#trigger_event", "trial_ended").await;
    browser
        .type_into("input[name=where_field_0]", "event.properties.plan")
        .await;
    browser.type_into("input[name=where_value_0]", "pro").await;
    browser.screenshot("workflow-trigger-form").await;
    browser
        .click("form[action='/workflows/new'] button[type=submit]")
        .await;
    let revealed = browser.text("#signing-secret").await;
    assert!(revealed.starts_with("whsec_"), "{revealed}");
    let operator = app
        .store
        .find_operator_by_email("owner@acme.io")
        .await
        .unwrap()
        .unwrap();
    let workspace = app.store.list_memberships(&operator.id).await.unwrap()[0]
        .workspace_id
        .clone();
    let project = app.store.list_projects(&workspace).await.unwrap()[0]
        .id
        .clone();
    let page = keyflow_store::Page {
        limit: 10,
        cursor: None,
    };
    let made = &app.store.workflows(&project, &page).await.unwrap()[0];
    assert_eq!(
        serde_json::to_value(&made.trigger).unwrap(),
        json!({"type": "event", "event": "trial_ended",
               "where": [{"field": "event.properties.plan", "op": "eq", "value": "pro"}]})
    );
}

backend_tests!(
    workflow_trigger_form_in_a_real_browser,
    embed_js_tracks_from_a_real_browser,
    embed_js_retries_and_backs_off_in_a_real_browser,
    dashboard_flow_in_a_real_browser,
    dashboard_at_phone_width,
    dashboard_pages_pass_axe,
    copy_works_on_a_plain_http_lan_address,
);

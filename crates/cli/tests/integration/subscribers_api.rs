//! Subscribers and browser rules (CORS, insecure_key_usage, allowed_origins).

use reqwest::Method;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

async fn signup_list_unsubscribe(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let first = app
        .post("/v1/subscribers", &t.key, json!({"email": "Sub@x.io", "first_name": "Sam", "source": "footer", "properties": {"lang": "nl"}}))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["subscribed"], true);
    let again = app
        .post("/v1/subscribers", &t.key, json!({"email": "sub@x.io"}))
        .await;
    assert_eq!(again.status, 200);
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"email": "not-subscribed@x.io"}),
    )
    .await;
    let list = app.get("/v1/subscribers", &t.key).await;
    let emails: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        vec!["sub@x.io"],
        "the latest spelling of the email is kept"
    );
    assert_eq!(
        app.delete("/v1/subscribers/SUB@x.io", &t.key).await.status,
        204
    );
    assert_eq!(
        app.get("/v1/subscribers", &t.key).await.body["data"],
        json!([])
    );
    // By id too; unknown is 404.
    app.post("/v1/subscribers", &t.key, json!({"email": "sub@x.io"}))
        .await;
    let id = first.body["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/subscribers/{id}"), &t.key)
            .await
            .status,
        204
    );
    app.delete("/v1/subscribers/ghost@x.io", &t.key)
        .await
        .assert_error(404, "not_found");
    app.post("/v1/subscribers", &t.key, json!({"first_name": "x"}))
        .await
        .assert_error(422, "validation_failed");
    let audit = app.get("/v1/audit", &t.key).await;
    let entries = audit.body["data"].as_array().unwrap();
    let subscribed: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "subscriber.created")
        .collect();
    assert_eq!(subscribed.len(), 2);
    assert_eq!(subscribed.last().unwrap()["details"]["source"], "footer");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "subscriber.unsubscribed")
            .count(),
        2
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "subscriber.updated")
            .count(),
        1
    );
}

async fn browser_rules_for_keys(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let origin = "https://shop.example.com";
    let from_browser = |key: &str, path: &str, body: serde_json::Value| {
        app.client
            .post(format!("{}{path}", app.next_base()))
            .bearer_auth(key)
            .header("origin", origin)
            .json(&body)
    };
    let event = json!({"name": "page_view", "anonymous_id": "a"});
    // A secret key from a browser fails loudly.
    TestApp::reply(from_browser(&t.key, "/v1/events", event.clone()))
        .await
        .assert_error(403, "insecure_key_usage");
    let (_, ro) = app
        .create_key(&t.key, json!({"name": "ro", "type": "read_only"}))
        .await;
    let ro_reply = TestApp::reply(
        app.client
            .get(format!("{}/v1/contacts", app.next_base()))
            .bearer_auth(&ro)
            .header("origin", origin),
    )
    .await;
    ro_reply.assert_error(403, "insecure_key_usage");
    // A client key from an allowed origin works and gets CORS headers.
    let (_, ck) = app
        .create_key(
            &t.key,
            json!({"name": "web", "type": "client", "allowed_origins": [origin]}),
        )
        .await;
    let ok = TestApp::reply(from_browser(&ck, "/v1/events", event.clone())).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(ok.header("access-control-allow-origin"), Some(origin));
    let elsewhere = TestApp::reply(
        app.client
            .post(format!("{}/v1/events", app.next_base()))
            .bearer_auth(&ck)
            .header("origin", "https://evil.example")
            .json(&event),
    )
    .await;
    elsewhere.assert_error(403, "origin_not_allowed");
    assert!(elsewhere.header("access-control-allow-origin").is_none());
    // Without an Origin (server side), the client key works as usual.
    assert_eq!(app.post("/v1/events", &ck, event).await.status, 202);
    // Preflight.
    let preflight = app
        .client
        .request(
            Method::OPTIONS,
            format!("{}/v1/events/batch", app.next_base()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    // The script.
    let js = app
        .client
        .get(format!("{}/embed.js", app.next_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/javascript")
    );
    let text = js.text().await.unwrap();
    assert!(text.contains("keyflow") && text.contains("keepalive"));
}

backend_tests!(signup_list_unsubscribe, browser_rules_for_keys);

crate::three_instance_tests!(signup_list_unsubscribe, browser_rules_for_keys);

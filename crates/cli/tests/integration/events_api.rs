//! Events: durable track, idempotency, identities, batches, allowed_events,
//! filters, and exactly-once storage under concurrency.

use std::collections::HashSet;

use keyflow_store::{EventFilter, Page};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp};

async fn all_events(app: &TestApp, project_id: &str) -> Vec<keyflow_store::Event> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = Page {
            limit: 1000,
            cursor: cursor.clone(),
        };
        let batch = app
            .store
            .list_events(project_id, &EventFilter::default(), &page)
            .await
            .unwrap();
        let done = batch.len() < 1000;
        cursor = batch.last().map(|e| e.id.clone());
        out.extend(batch);
        if done {
            return out;
        }
    }
}

async fn track_is_durable_and_listed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let reply = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "signed_up", "email": "new@x.io", "properties": {"plan": "pro"}, "timestamp": "2026-01-02T03:04:05Z"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    // Acknowledged means stored.
    let stored = all_events(&app, &t.project_id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    // The unknown email created the contact.
    let contact = app.get("/v1/contacts?email=new%40x.io", &t.key).await;
    let contact_id = contact.body["data"][0]["id"].as_str().unwrap().to_string();
    let listed = app.get("/v1/events", &t.key).await;
    let e = &listed.body["data"][0];
    assert_eq!(e["name"], "signed_up");
    assert_eq!(e["contact_id"], contact_id.as_str());
    assert_eq!(e["timestamp"], "2026-01-02T03:04:05Z");
    assert!(e["received_at"].is_string());
    assert_eq!(e["properties"], json!({"plan": "pro"}));
    assert_eq!(
        listed.header("ratelimit-policy"),
        Some("\"read\";q=100;w=60")
    );
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"ingest\";q=100;w=60")
    );
    // Event tracking is not audited per event.
    let audit = app.get("/v1/audit", &t.key).await;
    assert!(
        audit.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["action"].as_str().unwrap().starts_with("event"))
    );
}

async fn identities_and_detached_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let by_ext = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "a", "external_id": "user-7", "email": "u7@x.io"}),
        )
        .await;
    assert_eq!(by_ext.status, 202);
    let contact = app.get("/v1/contacts?external_id=user-7", &t.key).await;
    assert_eq!(contact.body["data"][0]["email"], "u7@x.io");
    let contact_id = contact.body["data"][0]["id"].as_str().unwrap().to_string();
    let by_id = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "b", "contact_id": contact_id}),
        )
        .await;
    assert_eq!(by_id.status, 202);
    let anon = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "c", "anonymous_id": "anon-1"}),
        )
        .await;
    assert_eq!(anon.status, 202);
    let unknown = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "d", "contact_id": "missing"}),
        )
        .await;
    unknown.assert_error(422, "validation_failed");
    assert_eq!(
        unknown.body["error"]["details"]["fields"][0]["field"],
        "contact_id"
    );
    app.post("/v1/events", &t.key, json!({"name": "d"}))
        .await
        .assert_error(422, "validation_failed");
    // Filters.
    let mine = app
        .get(&format!("/v1/events?contact_id={contact_id}"), &t.key)
        .await;
    let names: Vec<&str> = mine.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["b", "a"]);
    let only_c = app.get("/v1/events?name=c", &t.key).await;
    assert_eq!(only_c.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(only_c.body["data"][0]["anonymous_id"], "anon-1");
    // Deleting the contact leaves its events, detached.
    app.delete(&format!("/v1/contacts/{contact_id}"), &t.key)
        .await;
    let all = app.get("/v1/events", &t.key).await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 3);
    assert!(
        all.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["contact_id"].is_null())
    );
}

async fn time_filters_and_nfc_names(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    for (name, ts) in [
        ("caf\u{e9}", "2026-01-01T00:00:00Z"),
        ("cafe\u{301}", "2026-02-01T00:00:00Z"),
        ("other", "2026-03-01T00:00:00Z"),
    ] {
        assert_eq!(
            app.post(
                "/v1/events",
                &t.key,
                json!({"name": name, "anonymous_id": "a", "timestamp": ts})
            )
            .await
            .status,
            202
        );
    }
    let cafe = app.get("/v1/events?name=caf%C3%A9", &t.key).await;
    assert_eq!(
        cafe.body["data"].as_array().unwrap().len(),
        2,
        "both spellings are one NFC name"
    );
    let window = app
        .get(
            "/v1/events?since=2026-01-15T00:00:00Z&until=2026-03-01T00:00:00Z",
            &t.key,
        )
        .await;
    let data = window.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["timestamp"], "2026-02-01T00:00:00Z");
    app.get("/v1/events?since=yesterday", &t.key)
        .await
        .assert_error(422, "validation_failed");
}

async fn idempotency_keys_store_once_for_24_hours(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let body =
        json!({"name": "charge.succeeded", "external_id": "cus_1", "idempotency_key": "evt_123"});
    let first = app.post("/v1/events", &t.key, body.clone()).await;
    assert_eq!(first.status, 202);
    let again = app.post("/v1/events", &t.key, body.clone()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], first.body["id"]);
    // Within a batch, and across batch and single: still one.
    let batch = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": [body.clone(), body.clone()]}),
        )
        .await;
    assert_eq!(batch.status, 202);
    assert_eq!(
        batch.body["ids"],
        json!([first.body["id"], first.body["id"]])
    );
    assert_eq!(all_events(&app, &t.project_id).await.len(), 1);
    // Another project may use the same key.
    let other = app.tenant().await;
    assert_eq!(
        app.post("/v1/events", &other.key, body.clone())
            .await
            .status,
        202
    );
    // After 24 h the key counts as new.
    app.clock.advance_ms(24 * 3600 * 1000 + 1);
    let later = app.post("/v1/events", &t.key, body).await;
    assert_eq!(later.status, 202);
    assert_ne!(later.body["id"], first.body["id"]);
    assert_eq!(all_events(&app, &t.project_id).await.len(), 2);
}

async fn batches_are_all_or_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let good = |i: usize| json!({"name": "page_view", "anonymous_id": format!("a{i}")});
    let ok = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": (0..100).map(good).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(ok.status, 202);
    assert_eq!(ok.body["ids"].as_array().unwrap().len(), 100);
    let mut mixed: Vec<Value> = (0..10).map(good).collect();
    mixed.push(json!({"name": "x".repeat(129), "anonymous_id": "a"}));
    let refused = app
        .post("/v1/events/batch", &t.key, json!({"events": mixed}))
        .await;
    refused.assert_error(422, "validation_failed");
    assert_eq!(
        refused.body["error"]["details"]["fields"][0]["field"],
        "events[10].name"
    );
    let mut unknown_contact: Vec<Value> = (0..3).map(good).collect();
    unknown_contact.push(json!({"name": "x", "contact_id": "nope"}));
    app.post(
        "/v1/events/batch",
        &t.key,
        json!({"events": unknown_contact}),
    )
    .await
    .assert_error(422, "validation_failed");
    let too_many: Vec<Value> = (0..1001).map(good).collect();
    app.post("/v1/events/batch", &t.key, json!({"events": too_many}))
        .await
        .assert_error(422, "validation_failed");
    let bad_time = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": [{"name": "x", "anonymous_id": "a", "timestamp": "noon"}]}),
        )
        .await;
    bad_time.assert_error(422, "validation_failed");
    let wrong_type = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": [{"name": 5, "anonymous_id": "a"}]}),
        )
        .await;
    assert_eq!(
        wrong_type.body["error"]["details"]["fields"][0]["field"],
        "events[0].name"
    );
    let huge: Vec<Value> = (0..40).map(|i| json!({"name": "big", "anonymous_id": format!("{i}"), "properties": {"p": "x".repeat(30_000)}})).collect();
    // Refused from Content-Length, unread; the server then closes the
    // connection, so it must not go back to the client's pool.
    TestApp::reply(
        app.client
            .post(format!("{}/v1/events/batch", app.next_base()))
            .bearer_auth(&t.key)
            .header("connection", "close")
            .json(&json!({"events": huge})),
    )
    .await
    .assert_error(413, "payload_too_large");
    assert_eq!(
        all_events(&app, &t.project_id).await.len(),
        100,
        "no refused batch stored anything"
    );
    // 137 anonymous events take several INSERT shapes (100 + 25 + 5 + 5 + 1
    // + 1) inside one transaction, on both stores.
    let uneven = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": (0..137).map(good).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(uneven.status, 202, "{}", uneven.body);
    let ids: std::collections::HashSet<&str> = uneven.body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 137);
    let stored = all_events(&app, &t.project_id).await;
    assert_eq!(stored.len(), 237);
    assert!(ids.iter().all(|id| stored.iter().any(|e| e.id == *id)));
}

async fn allowed_events_reject_the_whole_batch(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, key) = app
        .create_key(
            &t.key,
            json!({"name": "web", "type": "client", "allowed_events": ["page_view", "caf\u{e9}"], "rate_limit": {"limit": 3, "period_seconds": 60}}),
        )
        .await;
    assert_eq!(
        app.post(
            "/v1/events",
            &key,
            json!({"name": "page_view", "anonymous_id": "a"})
        )
        .await
        .status,
        202
    );
    // NFC: the decomposed spelling is the allowed name.
    assert_eq!(
        app.post(
            "/v1/events",
            &key,
            json!({"name": "cafe\u{301}", "anonymous_id": "a"})
        )
        .await
        .status,
        202
    );
    let refused = app
        .post("/v1/events/batch", &key, json!({"events": [{"name": "page_view", "anonymous_id": "a"}, {"name": "purchase", "anonymous_id": "a"}]}))
        .await;
    refused.assert_error(403, "event_not_allowed");
    assert_eq!(refused.body["error"]["details"]["event"], "purchase");
    assert_eq!(
        refused.header("x-ratelimit-remaining"),
        Some("1"),
        "a refused batch spends no quota"
    );
    app.post(
        "/v1/events",
        &key,
        json!({"name": "purchase", "anonymous_id": "a"}),
    )
    .await
    .assert_error(403, "event_not_allowed");
    assert_eq!(all_events(&app, &t.project_id).await.len(), 2);
    // The last unit of quota, then 429 with the headers.
    assert_eq!(
        app.post(
            "/v1/events",
            &key,
            json!({"name": "page_view", "anonymous_id": "a"})
        )
        .await
        .status,
        202
    );
    let limited = app
        .post(
            "/v1/events",
            &key,
            json!({"name": "page_view", "anonymous_id": "a"}),
        )
        .await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    // The order of SPEC §2: event_not_allowed comes before rate_limited.
    app.post(
        "/v1/events",
        &key,
        json!({"name": "purchase", "anonymous_id": "a"}),
    )
    .await
    .assert_error(403, "event_not_allowed");
}

async fn concurrent_clients_store_every_acknowledged_event_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(100_000)
    })
    .await;
    let t = app.tenant().await;
    let mut tasks = Vec::new();
    for client in 0..16 {
        let http = app.client.clone();
        let base = app.next_base();
        let key = t.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..10 {
                if round % 2 == 0 {
                    let events: Vec<Value> = (0..10)
                        .map(|i| json!({"name": "tick", "email": format!("c{client}@x.io"), "properties": {"i": i}}))
                        .collect();
                    let r: Value = http
                        .post(format!("{base}/v1/events/batch"))
                        .bearer_auth(&key)
                        .json(&json!({"events": events}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    acked.extend(r["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
                } else {
                    // Shared idempotency keys across clients: only one event each.
                    let r = http
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(&key)
                        .json(&json!({"name": "shared", "anonymous_id": "x", "idempotency_key": format!("k{round}")}))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status() == 202 || r.status() == 200);
                    let body: Value = r.json().await.unwrap();
                    acked.push(body["id"].as_str().unwrap().to_string());
                }
            }
            acked
        }));
    }
    let mut acknowledged = HashSet::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let stored = all_events(&app, &t.project_id).await;
    let stored_ids: HashSet<String> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(stored.len(), stored_ids.len(), "no event stored twice");
    assert_eq!(
        stored_ids, acknowledged,
        "every acknowledged event is stored, and nothing else"
    );
    assert_eq!(
        stored.len(),
        16 * 5 * 10 + 5,
        "16 clients x 5 batches of 10, plus 5 shared keys"
    );
    // One contact per email, despite concurrent creation.
    let contacts = app.get("/v1/contacts?limit=1000", &t.key).await;
    assert_eq!(contacts.body["data"].as_array().unwrap().len(), 16);
}

/// Many concurrent requests share the SQLite writer's commits; some of them
/// are refused inside the writer (an unknown contact id, found only by a
/// lookup). A refused request stores nothing, and the others in the same
/// commit are stored exactly once.
async fn refusals_inside_a_shared_commit_leave_the_rest(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(100_000)
    })
    .await;
    let t = app.tenant().await;
    let mut tasks = Vec::new();
    for client in 0..24 {
        let http = app.client.clone();
        let base = app.next_base();
        let key = t.key.clone();
        tasks.push(tokio::spawn(async move {
            let body = if client % 3 == 0 {
                json!({"events": [
                    {"name": "ok", "email": format!("r{client}@x.io")},
                    {"name": "bad", "contact_id": "no-such-contact"}
                ]})
            } else {
                json!({"events": [
                    {"name": "ok", "email": format!("r{client}@x.io"), "idempotency_key": format!("i{client}")},
                    {"name": "ok", "anonymous_id": format!("a{client}")}
                ]})
            };
            let r = http
                .post(format!("{base}/v1/events/batch"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (client, status, body)
        }));
    }
    let mut acknowledged = HashSet::new();
    for task in tasks {
        let (client, status, body) = task.await.unwrap();
        if client % 3 == 0 {
            assert_eq!(status, 422, "{body}");
            assert_eq!(
                body["error"]["details"]["fields"][0]["field"],
                "events[1].contact_id"
            );
        } else {
            assert_eq!(status, 202, "{body}");
            for id in body["ids"].as_array().unwrap() {
                acknowledged.insert(id.as_str().unwrap().to_string());
            }
        }
    }
    let stored: HashSet<String> = all_events(&app, &t.project_id)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(stored, acknowledged, "the refused requests stored nothing");
    assert_eq!(stored.len(), 16 * 2);
    // Contacts of refused requests were rolled back with them.
    let contacts = app.get("/v1/contacts?limit=1000", &t.key).await;
    assert_eq!(contacts.body["data"].as_array().unwrap().len(), 16);
}

/// Anonymous events need no lookups: concurrent requests share group commits
/// (the SQLite writer's direct connection, PostgreSQL's committers). Every
/// acknowledged event is stored exactly once, each with its request's fields,
/// and the contact filter (a partial index on both stores) sees none of them.
async fn concurrent_anonymous_events_share_commits_exactly_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(100_000)
    })
    .await;
    let t = app.tenant().await;
    let mut tasks = Vec::new();
    for client in 0..32 {
        let http = app.client.clone();
        let base = app.next_base();
        let key = t.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10 {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&key)
                    .json(&json!({"name": format!("view-{client}"), "anonymous_id": format!("v{client}"), "properties": {"i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let body: Value = r.json().await.unwrap();
                acked.push((body["id"].as_str().unwrap().to_string(), client, i));
            }
            acked
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let stored = all_events(&app, &t.project_id).await;
    assert_eq!(
        stored.len(),
        320,
        "32 clients x 10 events, each stored once"
    );
    let by_id: std::collections::HashMap<&str, &keyflow_store::Event> =
        stored.iter().map(|e| (e.id.as_str(), e)).collect();
    for (id, client, i) in &acknowledged {
        let event = by_id[id.as_str()];
        assert_eq!(event.name, format!("view-{client}"));
        assert_eq!(
            event.anonymous_id.as_deref(),
            Some(format!("v{client}").as_str())
        );
        assert_eq!(event.properties["i"], json!(i));
    }
    let filtered = app
        .get("/v1/events?contact_id=nobody&limit=1000", &t.key)
        .await;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.body["data"], json!([]));
    let named = app.get("/v1/events?name=view-7&limit=1000", &t.key).await;
    assert_eq!(named.body["data"].as_array().unwrap().len(), 10);
}

crate::every_deployment_tests!(
    refusals_inside_a_shared_commit_leave_the_rest,
    concurrent_anonymous_events_share_commits_exactly_once,
    track_is_durable_and_listed,
    identities_and_detached_events,
    time_filters_and_nfc_names,
    idempotency_keys_store_once_for_24_hours,
    batches_are_all_or_nothing,
    allowed_events_reject_the_whole_batch,
    concurrent_clients_store_every_acknowledged_event_once,
);

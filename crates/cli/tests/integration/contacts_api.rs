//! Contacts: create-or-update, merge rules, lookups, batch, bad input, audit.

use serde_json::{Value, json};

use crate::harness::{Backend, TestApp};

fn actions(audit: &Value) -> Vec<String> {
    audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

async fn create_or_update_with_merge(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let created = app
        .post("/v1/contacts", &t.key, json!({"external_id": "u1", "email": "Ada@Example.com", "first_name": "Ada", "properties": {"plan": "pro", "seats": 3}}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["email"], "Ada@Example.com");
    assert_eq!(created.body["subscribed"], false);
    // Same external id: update, properties merge, null removes.
    let updated = app
        .post("/v1/contacts", &t.key, json!({"external_id": "u1", "last_name": "Lovelace", "properties": {"plan": null, "country": "UK"}}))
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["id"], id.as_str());
    assert_eq!(updated.body["first_name"], "Ada");
    assert_eq!(updated.body["last_name"], "Lovelace");
    assert_eq!(
        updated.body["properties"],
        json!({"seats": 3, "country": "UK"})
    );
    // Matched by email, case-insensitively.
    let by_email = app
        .post(
            "/v1/contacts",
            &t.key,
            json!({"email": "ada@EXAMPLE.com", "first_name": "Augusta"}),
        )
        .await;
    assert_eq!(by_email.status, 200);
    assert_eq!(by_email.body["id"], id.as_str());
    // Get and look-ups.
    let got = app.get(&format!("/v1/contacts/{id}"), &t.key).await;
    assert_eq!(got.body["first_name"], "Augusta");
    let found = app
        .get("/v1/contacts?email=ADA%40example.com", &t.key)
        .await;
    assert_eq!(found.body["data"][0]["id"], id.as_str());
    let found = app.get("/v1/contacts?external_id=u1", &t.key).await;
    assert_eq!(found.body["data"][0]["id"], id.as_str());
    let none = app.get("/v1/contacts?external_id=nobody", &t.key).await;
    assert_eq!(none.body["data"], json!([]));
    // Patch.
    let patched = app
        .patch(
            &format!("/v1/contacts/{id}"),
            &t.key,
            json!({"subscribed": true, "first_name": null}),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert!(patched.body["first_name"].is_null());
    assert_eq!(patched.body["subscribed"], true);
    // A different contact cannot take the email.
    let other = app
        .post("/v1/contacts", &t.key, json!({"external_id": "u2"}))
        .await;
    assert_eq!(other.status, 201);
    let other_id = other.body["id"].as_str().unwrap();
    app.patch(
        &format!("/v1/contacts/{other_id}"),
        &t.key,
        json!({"email": "ada@example.com"}),
    )
    .await
    .assert_error(409, "conflict");
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"external_id": "u3", "email": "ada@example.com"}),
    )
    .await
    .assert_error(409, "conflict");
    // Delete.
    assert_eq!(
        app.delete(&format!("/v1/contacts/{id}"), &t.key)
            .await
            .status,
        204
    );
    app.get(&format!("/v1/contacts/{id}"), &t.key)
        .await
        .assert_error(404, "not_found");
    app.delete(&format!("/v1/contacts/{id}"), &t.key)
        .await
        .assert_error(404, "not_found");
    // Every mutation through the key is audited with the key as actor.
    let audit = app.get("/v1/audit?limit=20", &t.key).await;
    let a = actions(&audit.body);
    assert_eq!(
        &a[..6],
        [
            "contact.deleted",
            "contact.created",
            "contact.updated",
            "contact.updated",
            "contact.updated",
            "contact.created"
        ]
    );
    assert_eq!(audit.body["data"][0]["actor"]["type"], "api_key");
    assert_eq!(audit.body["data"][0]["actor"]["prefix"], &t.key[..12]);
    assert_eq!(audit.body["data"][0]["target"]["type"], "contact");
}

async fn list_is_paginated_and_project_scoped(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let other = app.tenant().await;
    for i in 0..5 {
        app.post(
            "/v1/contacts",
            &t.key,
            json!({"external_id": format!("c{i}")}),
        )
        .await;
    }
    app.post("/v1/contacts", &other.key, json!({"external_id": "theirs"}))
        .await;
    let first = app.get("/v1/contacts?limit=3", &t.key).await;
    let ids: Vec<&str> = first.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["c4", "c3", "c2"]);
    let next = app
        .get(
            &format!(
                "/v1/contacts?limit=3&cursor={}",
                first.body["next_cursor"].as_str().unwrap()
            ),
            &t.key,
        )
        .await;
    let ids: Vec<&str> = next.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["c1", "c0"]);
    assert!(next.body["next_cursor"].is_null());
    // Another project's contact is invisible.
    let theirs = app.get("/v1/contacts?external_id=theirs", &t.key).await;
    assert_eq!(theirs.body["data"], json!([]));
}

async fn batch_applies_valid_items(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"external_id": "existing", "email": "e@x.io"}),
    )
    .await;
    let reply = app
        .post(
            "/v1/contacts/batch",
            &t.key,
            json!({"contacts": [
                {"external_id": "new1", "email": "n1@x.io"},
                {"first_name": "no identity"},
                {"external_id": "existing", "properties": {"a": 1}},
                {"email": "not-an-email"},
                {"external_id": 5},
                {"external_id": "other", "email": "e@x.io"}
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 422, 200, 422, 422, 409]);
    let indexes: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4, 5]);
    assert!(results[0]["id"].is_string());
    assert_eq!(results[1]["error"]["code"], "validation_failed");
    assert_eq!(
        results[1]["error"]["details"]["fields"][0]["field"],
        "contacts[1].email"
    );
    assert_eq!(
        results[4]["error"]["details"]["fields"][0]["field"],
        "contacts[4].external_id"
    );
    assert_eq!(results[5]["error"]["code"], "conflict");
    let listed = app.get("/v1/contacts", &t.key).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);
    let existing = app.get("/v1/contacts?external_id=existing", &t.key).await;
    assert_eq!(existing.body["data"][0]["properties"], json!({"a": 1}));
    // Limits on the batch itself.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"external_id": format!("x{i}")}))
        .collect();
    app.post("/v1/contacts/batch", &t.key, json!({"contacts": too_many}))
        .await
        .assert_error(422, "validation_failed");
    app.post("/v1/contacts/batch", &t.key, json!({"contacts": []}))
        .await
        .assert_error(422, "validation_failed");
}

async fn bad_contact_input_changes_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let mut many = serde_json::Map::new();
    for i in 0..257 {
        many.insert(format!("k{i}"), json!(i));
    }
    let mut deep = json!(1);
    for _ in 0..33 {
        deep = json!([deep]);
    }
    let cases = [
        (json!({"first_name": "x"}), "email"),
        (json!({"email": "nope"}), "email"),
        (json!({"external_id": ""}), "external_id"),
        (json!({"external_id": "x".repeat(256)}), "external_id"),
        (
            json!({"external_id": "u", "properties": {"big": "y".repeat(33 * 1024)}}),
            "properties",
        ),
        (
            json!({"external_id": "u", "properties": many}),
            "properties",
        ),
        (
            json!({"external_id": "u", "properties": "not an object"}),
            "properties",
        ),
        (
            json!({"external_id": "u", "subscribed": "yes"}),
            "subscribed",
        ),
        (
            json!({"external_id": "u", "properties": {"d": deep}}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post("/v1/contacts", &t.key, body.clone()).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(
            reply.body["error"]["details"]["fields"][0]["field"], field,
            "{body}"
        );
    }
    let text = TestApp::reply(
        app.client
            .post(format!("{}/v1/contacts", app.next_base()))
            .bearer_auth(&t.key)
            .header("content-type", "text/csv")
            .body("a,b"),
    )
    .await;
    text.assert_error(415, "unsupported_media_type");
    // Unknown fields are ignored.
    assert_eq!(
        app.post(
            "/v1/contacts",
            &t.key,
            json!({"external_id": "ok", "shoe_size": 44})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        app.get("/v1/contacts", &t.key).await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Merging over the key limit is refused too, and the contact is unchanged.
    let mut half = serde_json::Map::new();
    for i in 0..200 {
        half.insert(format!("a{i}"), json!(i));
    }
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"external_id": "ok", "properties": half.clone()}),
    )
    .await;
    let mut other_half = serde_json::Map::new();
    for i in 0..100 {
        other_half.insert(format!("b{i}"), json!(i));
    }
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"external_id": "ok", "properties": other_half}),
    )
    .await
    .assert_error(422, "validation_failed");
    let stored = app.get("/v1/contacts?external_id=ok", &t.key).await;
    assert_eq!(
        stored.body["data"][0]["properties"]
            .as_object()
            .unwrap()
            .len(),
        200
    );
}

async fn contact_scopes_and_categories(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let (_, reader) = app
        .create_key(&t.key, json!({"name": "r", "type": "read_only"}))
        .await;
    app.post("/v1/contacts", &reader, json!({"external_id": "u"}))
        .await
        .assert_error(403, "insufficient_scope");
    let list = app.get("/v1/contacts", &reader).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header("ratelimit-policy"), Some("\"read\";q=100;w=60"));
    let (_, writer) = app
        .create_key(
            &t.key,
            json!({"name": "w", "type": "client", "scopes": ["contacts:write"]}),
        )
        .await;
    let created = app
        .post("/v1/contacts", &writer, json!({"external_id": "u"}))
        .await;
    assert_eq!(
        created.header("ratelimit-policy"),
        Some("\"write\";q=100;w=60")
    );
    app.get("/v1/contacts", &writer)
        .await
        .assert_error(403, "insufficient_scope");
}

/// Contact writes while the event writer is busy: on SQLite they wait for
/// the write lock instead of failing with SQLITE_BUSY (a transaction that
/// read first could not wait for it).
async fn contact_writes_wait_for_busy_ingest(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.default_rate_limit = keyflow_core::RateLimit::per_minute(100_000)
    })
    .await;
    let t = app.tenant().await;
    let created = app
        .post("/v1/contacts", &t.key, json!({"email": "busy@x.io"}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ingest = Vec::new();
    for client in 0..6 {
        let (http, base, key, stop) = (
            app.client.clone(),
            app.next_base(),
            t.key.clone(),
            stop.clone(),
        );
        ingest.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Email identities make the writer hold its transaction across
                // several statements (lookups, savepoints).
                let events: Vec<Value> = (0..20)
                    .map(|i| json!({"name": "load", "email": format!("l{client}-{n}-{i}@x.io")}))
                    .collect();
                let r = http
                    .post(format!("{base}/v1/events/batch"))
                    .bearer_auth(&key)
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                n += 1;
            }
        }));
    }
    for i in 0..30 {
        let patched = app
            .patch(
                &format!("/v1/contacts/{id}"),
                &t.key,
                json!({"properties": {"round": i}}),
            )
            .await;
        assert_eq!(patched.status, 200, "round {i}: {}", patched.body);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in ingest {
        task.await.unwrap();
    }
    let contact = app.get(&format!("/v1/contacts/{id}"), &t.key).await;
    assert_eq!(contact.body["properties"]["round"], 29);
}

/// Emails that differ only in Unicode normalisation are one address (NFC),
/// and names refuse bidirectional formatting characters.
async fn emails_compare_in_nfc_and_names_refuse_bidi(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let composed = app
        .post("/v1/contacts", &t.key, json!({"email": "Jos\u{e9}@x.io"}))
        .await;
    assert_eq!(composed.status, 201, "{}", composed.body);
    let decomposed = app
        .post(
            "/v1/contacts",
            &t.key,
            json!({"email": "jose\u{301}@x.io", "first_name": "Jos\u{e9}"}),
        )
        .await;
    assert_eq!(decomposed.status, 200, "{}", decomposed.body);
    assert_eq!(decomposed.body["id"], composed.body["id"]);
    let by_nfd = app
        .get("/v1/contacts?email=jose%CC%81%40x.io", &t.key)
        .await;
    assert_eq!(
        by_nfd.body["data"][0]["id"], composed.body["id"],
        "{}",
        by_nfd.body
    );
    // An event naming the decomposed email attaches to the same contact.
    let event = app
        .post(
            "/v1/events",
            &t.key,
            json!({"name": "x", "email": "JOSE\u{301}@x.io"}),
        )
        .await;
    assert_eq!(event.status, 202);
    let events = app
        .get(
            &format!(
                "/v1/events?contact_id={}",
                composed.body["id"].as_str().unwrap()
            ),
            &t.key,
        )
        .await;
    assert_eq!(events.body["data"].as_array().unwrap().len(), 1);
    let bidi = app
        .post(
            "/v1/contacts",
            &t.key,
            json!({"email": "b@x.io", "first_name": "evil\u{202e}gnp.exe"}),
        )
        .await;
    bidi.assert_error(422, "validation_failed");
    assert_eq!(
        bidi.body["error"]["details"]["fields"][0]["field"],
        "first_name"
    );
}

crate::every_deployment_tests!(
    emails_compare_in_nfc_and_names_refuse_bidi,
    contact_writes_wait_for_busy_ingest,
    create_or_update_with_merge,
    list_is_paginated_and_project_scoped,
    batch_applies_valid_items,
    bad_contact_input_changes_nothing,
    contact_scopes_and_categories,
);

//! The change bus: each committed change is published once, after its
//! commit; refused or failed changes publish nothing.

use std::sync::{Arc, Mutex};

use keyflow_server::changes::Change;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, TestApp};

fn record(app: &TestApp) -> Arc<Mutex<Vec<Change>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    app.state
        .changes
        .subscribe(move |c| sink.lock().unwrap().push(c.clone()));
    seen
}

fn kinds(seen: &Arc<Mutex<Vec<Change>>>) -> Vec<&'static str> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|c| match c {
            Change::KeyCreated { .. } => "key_created",
            Change::KeyUpdated { .. } => "key_updated",
            Change::KeyRevoked { .. } => "key_revoked",
            Change::KeyRolled { .. } => "key_rolled",
            Change::PlanChanged { .. } => "plan_changed",
            Change::ProjectSettingsChanged { .. } => "project_settings_changed",
            Change::MetricsCredentialChanged { .. } => "metrics_credential_changed",
            Change::ContactCreated { .. } => "contact_created",
            Change::ContactUpdated { .. } => "contact_updated",
            Change::ContactDeleted { .. } => "contact_deleted",
            Change::MembershipChanged { .. } => "membership_changed",
            Change::WorkflowChanged { .. } => "workflow_changed",
            Change::SubscriptionChanged {
                subscribed: true, ..
            } => "subscribed",
            Change::SubscriptionChanged {
                subscribed: false, ..
            } => "unsubscribed",
        })
        .collect()
}

async fn each_committed_change_is_published_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let seen = record(&app);
    let (id, key) = app
        .create_key(
            &t.key,
            json!({"name": "a", "type": "secret", "scopes": ["keys:read"]}),
        )
        .await;
    let path = format!("/v1/keys/{id}");
    // Cached from here on.
    assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
    assert_eq!(
        app.patch(&path, &t.key, json!({"name": "b"})).await.status,
        200
    );
    // Refused or invalid: nothing committed, nothing published.
    app.patch(&path, &key, json!({"name": "c"}))
        .await
        .assert_error(403, "insufficient_scope");
    app.patch(&path, &t.key, json!({"name": ""}))
        .await
        .assert_error(422, "validation_failed");
    assert_eq!(app.delete(&path, &t.key).await.status, 204);
    // Already revoked: nothing written, nothing published.
    assert_eq!(app.delete(&path, &t.key).await.status, 204);
    app.patch(&path, &t.key, json!({"name": "d"}))
        .await
        .assert_error(409, "conflict");
    let (other, _) = app
        .create_key(&t.key, json!({"name": "r", "type": "secret"}))
        .await;
    let rolled = app
        .post(&format!("/v1/keys/{other}/roll"), &t.key, json!({}))
        .await;
    assert_eq!(rolled.status, 201);
    app.admin(
        reqwest::Method::PUT,
        &format!("/admin/v1/workspaces/{}/plan", t.workspace_id),
        json!({"plan": "team"}),
    )
    .await;
    app.admin(
        reqwest::Method::PUT,
        "/admin/v1/workspaces/no-such-workspace/plan",
        json!({"plan": "team"}),
    )
    .await;
    assert_eq!(
        app.post("/v1/metrics/credential", &t.key, json!({}))
            .await
            .status,
        201
    );
    assert_eq!(
        kinds(&seen),
        vec![
            "key_created",
            "key_updated",
            "key_revoked",
            "key_created",
            "key_rolled",
            "plan_changed",
            "metrics_credential_changed",
        ]
    );
    // The revoked key is refused at once: the cache listener dropped it.
    app.get("/v1/keys/self", &key)
        .await
        .assert_error(401, "key_revoked");
}

/// Contact writes through the API are announced; an event naming a new
/// contact is not (like the audit log), nor is a refused write.
async fn contact_writes_are_published(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let seen = record(&app);
    let created = app
        .post("/v1/contacts", &t.key, json!({"email": "a@x.io"}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_string();
    app.post(
        "/v1/contacts",
        &t.key,
        json!({"email": "a@x.io", "first_name": "A"}),
    )
    .await;
    app.patch(
        &format!("/v1/contacts/{id}"),
        &t.key,
        json!({"last_name": "B"}),
    )
    .await;
    app.post("/v1/contacts", &t.key, json!({"first_name": "no identity"}))
        .await
        .assert_error(422, "validation_failed");
    app.post(
        "/v1/events",
        &t.key,
        json!({"name": "x", "email": "new@x.io"}),
    )
    .await;
    assert_eq!(
        app.delete(&format!("/v1/contacts/{id}"), &t.key)
            .await
            .status,
        204
    );
    assert_eq!(
        app.delete(&format!("/v1/contacts/{id}"), &t.key)
            .await
            .status,
        404
    );
    assert_eq!(
        kinds(&seen),
        vec![
            "contact_created",
            "contact_updated",
            "contact_updated",
            "contact_deleted"
        ]
    );
}

/// A subscription that changes is announced (before the contact change of
/// the same write); a write that leaves it as it was is not.
async fn subscription_changes_are_published(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let seen = record(&app);
    let signup = json!({"email": "s@x.io"});
    assert_eq!(
        app.post("/v1/subscribers", &t.key, signup.clone())
            .await
            .status,
        201
    );
    assert_eq!(
        app.post("/v1/subscribers", &t.key, signup).await.status,
        200
    );
    for _ in 0..2 {
        let gone = app.delete("/v1/subscribers/s@x.io", &t.key).await;
        assert_eq!(gone.status, 204);
    }
    let again = json!({"email": "s@x.io", "subscribed": true});
    assert_eq!(app.post("/v1/contacts", &t.key, again).await.status, 200);
    assert_eq!(
        kinds(&seen),
        vec![
            "subscribed",
            "contact_created",
            "contact_updated",
            "unsubscribed",
            "contact_updated",
            "contact_updated",
            "subscribed",
            "contact_updated",
        ]
    );
}

/// Members added, re-roled and removed are announced; refusals (a taken
/// email, the last owner) are not.
async fn membership_changes_are_published(backend: Backend) {
    use keyflow_core::Role;
    use keyflow_server::operations::tenancy::{self, MemberAuthority};
    use keyflow_store::Actor;

    let app = TestApp::start(backend).await;
    let t = app.tenant().await;
    let seen = record(&app);
    let path = format!("/admin/v1/workspaces/{}/operators", t.workspace_id);
    let mut body = json!({"email": "m@x.io", "password": "correct horse battery", "role": "owner"});
    for email in ["o@x.io", "m@x.io"] {
        body["email"] = json!(email);
        let added = app.admin(reqwest::Method::POST, &path, body.clone()).await;
        assert_eq!(added.status, 201);
    }
    app.admin(reqwest::Method::POST, &path, body)
        .await
        .assert_error(409, "conflict");
    let (store, bus) = (app.state.store.as_ref(), app.state.changes.as_ref());
    let members = store.list_members(&t.workspace_id).await.unwrap();
    let (member, _) = members.iter().find(|(o, _)| o.email == "m@x.io").unwrap();
    let now = app.state.now_ms();
    let ws = t.workspace_id.as_str();
    let ctx = keyflow_server::operations::Ctx {
        store,
        bus,
        actor: Actor::InstanceAdmin,
        ip: None,
        now,
        workflow_depth: 0,
    };
    let authority = MemberAuthority::Instance;
    tenancy::change_member_role(&ctx, ws, member, Role::Owner, Role::Admin, authority)
        .await
        .unwrap();
    tenancy::remove_member(&ctx, ws, member, Role::Admin, authority)
        .await
        .unwrap();
    // The workspace's last owner stays.
    let members = store.list_members(ws).await.unwrap();
    let [(owner, m)] = members.as_slice() else {
        panic!("one member left: {members:?}")
    };
    let refused = tenancy::remove_member(&ctx, ws, owner, m.role, authority);
    assert!(refused.await.is_err());
    assert_eq!(kinds(&seen), vec!["membership_changed"; 4]);
}

backend_tests!(
    each_committed_change_is_published_once,
    contact_writes_are_published,
    membership_changes_are_published,
    subscription_changes_are_published,
);

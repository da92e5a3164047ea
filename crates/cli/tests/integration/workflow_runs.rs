//! Workflow runs end to end (SPEC §10): api triggers, signed webhooks to a
//! real receiver, contact changes audited with the workflow as actor,
//! retries, waits that outlive their instance, reentry, cancel and retry —
//! on every deployment (three instances compete for the same jobs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use keyflow_server::workflows::delivery::PrivateNetworks;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::every_deployment_tests;
use crate::harness::{Backend, TestApp};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    headers: HeaderMap,
    body: String,
}

/// A planned answer: status and `Retry-After`.
type Answer = (u16, Option<&'static str>);

/// A webhook receiver on loopback: records every request and answers with
/// the next planned status (200 once the plan is used up). A request to
/// `/held` is recorded at once and answered once the test lets it go.
#[derive(Clone)]
pub struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<Vec<Answer>>>,
    held: Arc<tokio::sync::Semaphore>,
}

impl Receiver {
    pub async fn start() -> (Receiver, String) {
        let receiver = Receiver {
            got: Default::default(),
            plan: Default::default(),
            held: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let shared = receiver.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let shared = shared.clone();
                async move {
                    let path = uri.path().to_string();
                    shared.got.lock().unwrap().push(Received {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    if path == "/held" {
                        shared.held.acquire().await.unwrap().forget();
                    }
                    let next = {
                        let mut plan = shared.plan.lock().unwrap();
                        (!plan.is_empty()).then(|| plan.remove(0))
                    };
                    let (status, retry_after) = next.unwrap_or((200, None));
                    let mut response = axum::response::Response::new(axum::body::Body::from("ok"));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(after) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", after.parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (20 s at most) until `path` got `n` requests.
    async fn until(&self, path: &str, n: usize) {
        let started = Instant::now();
        let count = || self.requests().iter().filter(|r| r.path == path).count();
        while count() < n {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} of {n} calls to {path}",
                count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Answers the request waiting at `/held`.
    fn let_go(&self) {
        self.held.add_permits(1);
    }

    fn plan(&self, answers: &[Answer]) {
        self.plan.lock().unwrap().extend_from_slice(answers);
    }
}

async fn start(backend: Backend, allow_loopback: bool) -> TestApp {
    TestApp::start_with(backend, |c| {
        if allow_loopback {
            c.webhook_allow_private_networks = PrivateNetworks::parse("127.0.0.0/8").unwrap();
        }
    })
    .await
}

/// Creates and activates a workflow; returns its id and signing secret.
async fn active_workflow(
    app: &TestApp,
    key: &str,
    steps: Value,
    reentry: &str,
) -> (String, String) {
    let made = app
        .post(
            "/v1/workflows",
            key,
            json!({"name": "wf", "trigger": {"type": "api"}, "steps": steps,
                   "status": "active", "reentry": reentry}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    (
        made.body["id"].as_str().unwrap().to_string(),
        made.body["signing_secret"].as_str().unwrap().to_string(),
    )
}

async fn trigger(app: &TestApp, key: &str, workflow: &str, body: Value) -> crate::harness::Reply {
    app.post(&format!("/v1/workflows/{workflow}/trigger"), key, body)
        .await
}

/// Polls the run until `done` holds (10 s at most).
async fn run_until(app: &TestApp, key: &str, run_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let run = app.get(&format!("/v1/workflow-runs/{run_id}"), key).await;
        assert_eq!(run.status, 200, "{}", run.body);
        if done(&run.body) {
            return run.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run did not get there: {}",
            run.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |run| run["status"] == status
}

/// Checks a request's Standard Webhooks signature against `secret`.
fn signed_with(request: &Received, secret: &str) -> bool {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

/// An api trigger creates the contact, runs every kind of step in order,
/// calls the receiver twice with signed requests (templated, then the
/// default body), changes the contact as the workflow (audited so), and an
/// idempotent retry of the trigger starts nothing new.
async fn runs_call_signed_webhooks_and_change_the_contact(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps = json!([
        {"type": "webhook", "url": format!("{base}/first"), "headers": {"X-Plan": "{{variables.plan}}"},
         "body": {"email": "{{contact.email}}", "plan": "{{variables.plan}}", "run": "{{run.id}}"}},
        {"type": "update_contact", "properties": {"stage": "{{variables.plan}}", "gone": null}},
        {"type": "subscribe"},
        {"type": "branch", "if": [{"field": "contact.properties.stage", "op": "eq", "value": "trial"}],
         "then": [{"type": "webhook", "url": format!("{base}/second"), "method": "PUT"}],
         "else": [{"type": "exit"}]},
        {"type": "webhook", "url": format!("{base}/never-after-exit-path-not-taken")}
    ]);
    let (workflow, secret) = active_workflow(&app, &t.key, steps, "every_time").await;
    let request = json!({"contact": {"email": "Ada@Example.com"}, "variables": {"plan": "trial"}});
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!(
                "{}/v1/workflows/{workflow}/trigger",
                app.next_base()
            ))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "order-42")
            .json(&request)
    };
    let first = TestApp::reply(send()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let run_id = first.body["run_id"].as_str().unwrap().to_string();
    let again = TestApp::reply(send()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["run_id"], run_id.as_str());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    let run = run_until(&app, &t.key, &run_id, status_is("completed")).await;
    let paths: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["0", "1", "2", "3", "3.then.0", "4"], "{run}");
    assert!(run["finished_at"].is_string());
    let got = receiver.requests();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/first", "/second", "/never-after-exit-path-not-taken"],
        "the branch's then, then on after it"
    );
    for request in &got {
        assert!(signed_with(request, &secret), "{request:?}");
        assert!(
            request.headers["webhook-id"]
                .to_str()
                .unwrap()
                .starts_with("msg_")
        );
    }
    let first_body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        first_body,
        json!({"email": "Ada@Example.com", "plan": "trial", "run": run_id})
    );
    assert_eq!(got[0].headers["x-plan"], "trial");
    let default_body: Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(default_body["run_id"], run_id.as_str());
    assert_eq!(default_body["workflow"]["id"], workflow.as_str());
    assert_eq!(default_body["contact"]["email"], "Ada@Example.com");
    assert_eq!(default_body["contact"]["properties"]["stage"], "trial");
    assert_eq!(default_body["trigger"]["type"], "api");

    let contact_id = run["contact_id"].as_str().unwrap();
    let contact = app.get(&format!("/v1/contacts/{contact_id}"), &t.key).await;
    assert_eq!(
        contact.body["properties"]["stage"], "trial",
        "{}",
        contact.body
    );
    assert_eq!(contact.body["subscribed"], true);
    let audit = app.get("/v1/audit?action=contact.updated", &t.key).await;
    let by_workflow = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"]["type"] == "workflow" && e["actor"]["id"] == workflow.as_str())
        .count();
    assert_eq!(
        by_workflow, 2,
        "update_contact and subscribe: {}",
        audit.body
    );
    let runs = app
        .get(
            &format!("/v1/workflows/{workflow}/runs?status=completed"),
            &t.key,
        )
        .await;
    assert_eq!(
        runs.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        runs.body
    );
}

/// A failing receiver is tried again when it asks (`Retry-After`), and the
/// webhook id stays the same; `410 Gone` fails the run at once; a retried
/// run resumes at its failed step; private destinations are refused
/// unless allowed.
async fn failures_are_retried_and_runs_can_be_resumed(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    receiver.plan(&[(503, Some("7")), (410, None)]);
    let steps = json!([{"type": "webhook", "url": format!("{base}/hook")}]);
    let (workflow, _) = active_workflow(&app, &t.key, steps, "every_time").await;
    let body = json!({"contact": {"external_id": "u-1"}});
    let first = trigger(&app, &t.key, &workflow, body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let run_id = first.body["run_id"].as_str().unwrap().to_string();
    let run = run_until(&app, &t.key, &run_id, |r| {
        r["steps"][0]["status"] == "retrying"
    })
    .await;
    assert_eq!(run["status"], "running");
    assert_eq!(run["steps"][0]["attempt_log"][0]["status_code"], 503);
    assert_eq!(run["steps"][0]["attempt_log"][0]["response"], "ok");
    // Retry-After: 7 is honoured: not before, then at once.
    app.clock.advance_ms(6_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.requests().len(), 1);
    app.clock.advance_ms(1_500);
    let run = run_until(&app, &t.key, &run_id, status_is("failed")).await;
    assert!(run["error"].as_str().unwrap().contains("410"), "{run}");
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);

    let retried = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/retry"),
            &t.key,
            json!({}),
        )
        .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    let run = run_until(&app, &t.key, &run_id, status_is("completed")).await;
    assert_eq!(run["steps"][0]["attempts"], 3);
    app.post(
        &format!("/v1/workflow-runs/{run_id}/retry"),
        &t.key,
        json!({}),
    )
    .await
    .assert_error(409, "conflict");

    // Without the allowance, loopback is refused before anything is sent.
    let strict = start(backend, false).await;
    let s = strict.tenant().await;
    let steps = json!([{"type": "webhook", "url": format!("{base}/private")}]);
    let (workflow, _) = active_workflow(&strict, &s.key, steps, "every_time").await;
    let run_id = trigger(&strict, &s.key, &workflow, body).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = run_until(&strict, &s.key, &run_id, |r| {
        r["steps"][0]["status"] == "retrying"
    })
    .await;
    let error = run["steps"][0]["attempt_log"][0]["error"].as_str().unwrap();
    assert!(error.contains("private or reserved"), "{error}");
    assert!(receiver.requests().iter().all(|r| r.path != "/private"));
}

/// With the setting off, every private kind of destination is refused
/// before anything is sent: private IPv4, the cloud metadata address, an
/// IPv6 unique-local address, loopback written as an IPv4-mapped IPv6
/// address, and a name that resolves to loopback (the receiver's own port,
/// so a request would have arrived had the guard let it through).
async fn private_destinations_are_refused_after_resolution(backend: Backend) {
    let app = start(backend, false).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let port = base.rsplit(':').next().unwrap();
    for url in [
        "http://10.1.2.3/hook".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00::1]/hook".to_string(),
        format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
        format!("http://localhost:{port}/named"),
    ] {
        let steps = json!([{"type": "webhook", "url": url}]);
        let (workflow, _) = active_workflow(&app, &t.key, steps, "every_time").await;
        let started = trigger(
            &app,
            &t.key,
            &workflow,
            json!({"contact": {"external_id": "u"}}),
        )
        .await;
        assert_eq!(started.status, 202, "{}", started.body);
        let run_id = started.body["run_id"].as_str().unwrap();
        let run = run_until(&app, &t.key, run_id, |r| {
            r["steps"][0]["status"] == "retrying"
        })
        .await;
        let attempt = &run["steps"][0]["attempt_log"][0];
        let error = attempt["error"].as_str().unwrap();
        assert!(error.contains("private or reserved"), "{url}: {error}");
        assert!(attempt["status_code"].is_null(), "{url}: {attempt}");
    }
    assert!(
        receiver.requests().is_empty(),
        "a refused destination was called"
    );
}

/// Pausing holds a running run before its next step, even when the pause
/// comes while a step is under way (SPEC §10), and resuming lets it go on;
/// api triggers of a paused workflow are refused meanwhile, and a contact
/// that triggered 50 runs within the hour is refused the 51st (409).
async fn pause_holds_runs_between_steps_and_triggers_are_capped(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps = json!([
        {"type": "webhook", "url": format!("{base}/held")},
        {"type": "webhook", "url": format!("{base}/after")},
    ]);
    let (workflow, _) = active_workflow(&app, &t.key, steps, "every_time").await;
    let contact = json!({"contact": {"external_id": "paused"}});
    let started = trigger(&app, &t.key, &workflow, contact.clone()).await;
    assert_eq!(started.status, 202, "{}", started.body);
    let run_id = started.body["run_id"].as_str().unwrap().to_string();
    receiver.until("/held", 1).await;
    let path = format!("/v1/workflows/{workflow}");
    let paused = app.patch(&path, &t.key, json!({"status": "paused"})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    receiver.let_go();
    run_until(&app, &t.key, &run_id, |r| {
        r["steps"][0]["status"] == "succeeded"
    })
    .await;
    trigger(&app, &t.key, &workflow, contact.clone())
        .await
        .assert_error(409, "conflict");
    // Held: the second step is not sent, however long the run waits.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.clock.advance_ms(3_600_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let sent: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(sent, ["/held"], "a paused workflow's run went on");
    let run = app
        .get(&format!("/v1/workflow-runs/{run_id}"), &t.key)
        .await;
    assert_eq!(run.body["status"], "running", "{}", run.body);

    let resumed = app.patch(&path, &t.key, json!({"status": "active"})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    app.clock.advance_ms(31_000);
    run_until(&app, &t.key, &run_id, status_is("completed")).await;
    assert_eq!(receiver.requests().last().unwrap().path, "/after");

    // The loop guard's hourly cap on the api trigger, for one contact.
    let (capped, _) = active_workflow(&app, &t.key, json!([{"type": "exit"}]), "every_time").await;
    let one = json!({"contact": {"external_id": "busy"}});
    for _ in 0..50 {
        let reply = trigger(&app, &t.key, &capped, one.clone()).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let refused = trigger(&app, &t.key, &capped, one).await;
    refused.assert_error(409, "conflict");
    assert_eq!(
        refused.body["error"]["details"]["reason"], "hourly_cap",
        "{}",
        refused.body
    );
    let other = trigger(
        &app,
        &t.key,
        &capped,
        json!({"contact": {"external_id": "calm"}}),
    )
    .await;
    assert_eq!(
        other.status, 202,
        "another contact is not capped: {}",
        other.body
    );
}

/// One project's slow receiver cannot hold every project's runs: an
/// instance runs at most 4 jobs of one project at once, so while ten of
/// one project's calls hang, another project's run still goes through.
async fn one_projects_slow_receiver_leaves_room_for_others(backend: Backend) {
    let app = start(backend, true).await;
    let (slow, busy) = (app.tenant().await, app.tenant().await);
    let (receiver, base) = Receiver::start().await;
    let hang = json!([{"type": "webhook", "url": format!("{base}/held")}]);
    let (stuck, _) = active_workflow(&app, &slow.key, hang, "every_time").await;
    for i in 0..10 {
        let contact = json!({"contact": {"external_id": format!("s{i}")}});
        let started = trigger(&app, &slow.key, &stuck, contact).await;
        assert_eq!(started.status, 202, "{}", started.body);
    }
    let instances = app.peers.len() + 1;
    let held = || {
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/held")
            .count()
    };
    receiver.until("/held", 4).await;
    let quick = json!([{"type": "webhook", "url": format!("{base}/other")}]);
    let (other, _) = active_workflow(&app, &busy.key, quick, "every_time").await;
    let started = trigger(
        &app,
        &busy.key,
        &other,
        json!({"contact": {"external_id": "b"}}),
    )
    .await;
    let run_id = started.body["run_id"].as_str().unwrap().to_string();
    run_until(&app, &busy.key, &run_id, status_is("completed")).await;
    assert!(
        held() <= 4 * instances,
        "{} of one project's calls at once on {instances} instance(s)",
        held()
    );
    receiver.held.add_permits(100);
}

/// A run cancelled while its webhook call is under way keeps the record of
/// that call (it was made), and goes no further.
async fn a_cancel_during_a_call_keeps_its_attempt(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps = json!([
        {"type": "webhook", "url": format!("{base}/held")},
        {"type": "webhook", "url": format!("{base}/after")},
    ]);
    let (workflow, _) = active_workflow(&app, &t.key, steps, "every_time").await;
    let started = trigger(
        &app,
        &t.key,
        &workflow,
        json!({"contact": {"external_id": "c"}}),
    )
    .await;
    let run_id = started.body["run_id"].as_str().unwrap().to_string();
    receiver.until("/held", 1).await;
    let cancelled = app
        .post(
            &format!("/v1/workflow-runs/{run_id}/cancel"),
            &t.key,
            json!({}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    receiver.let_go();
    let run = run_until(&app, &t.key, &run_id, |r| {
        r["steps"][0]["attempt_log"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(
        run["steps"][0]["attempt_log"][0]["status_code"], 200,
        "{run}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(sent, ["/held"]);
}

/// Retention deletes finished runs and the versions no run needs, but not
/// who ran a `once` workflow: a month later the contact is still refused.
async fn retention_forgets_runs_but_not_who_ran_once(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let waiting = json!([{"type": "wait", "seconds": 40 * 86_400}]);
    let (workflow, _) = active_workflow(&app, &t.key, waiting, "once").await;
    let bob = trigger(
        &app,
        &t.key,
        &workflow,
        json!({"contact": {"external_id": "bob"}}),
    )
    .await;
    let bob_run = bob.body["run_id"].as_str().unwrap().to_string();
    run_until(&app, &t.key, &bob_run, status_is("waiting")).await;
    let path = format!("/v1/workflows/{workflow}");
    for steps in [
        json!([{"type": "exit"}, {"type": "exit"}]),
        json!([{"type": "exit"}]),
    ] {
        let changed = app.patch(&path, &t.key, json!({"steps": steps})).await;
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
    let ada = json!({"contact": {"external_id": "ada"}});
    let first = trigger(&app, &t.key, &workflow, ada.clone()).await;
    let ada_run = first.body["run_id"].as_str().unwrap().to_string();
    run_until(&app, &t.key, &ada_run, status_is("completed")).await;

    app.clock.advance_ms(31 * 86_400_000);
    let started = Instant::now();
    while app
        .get(&format!("/v1/workflow-runs/{ada_run}"), &t.key)
        .await
        .status
        != 404
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = trigger(&app, &t.key, &workflow, ada).await;
    refused.assert_error(409, "conflict");
    assert_eq!(
        refused.body["error"]["details"]["reason"], "already_ran",
        "{}",
        refused.body
    );
    let bob_now = app
        .get(&format!("/v1/workflow-runs/{bob_run}"), &t.key)
        .await;
    assert_eq!(bob_now.body["status"], "waiting", "{}", bob_now.body);
    let mut kept = Vec::new();
    for version in 1..=3 {
        let found = app
            .store
            .workflow_version(&workflow, version)
            .await
            .unwrap();
        kept.push(found.is_some());
    }
    assert_eq!(
        kept,
        [true, false, true],
        "bob's version and the current one stay"
    );
}

/// A wait holds the run (reentry `one_active_run` refuses a second one);
/// it outlives the instance that started it: another instance on the same
/// database finishes it once due. Cancel and archive end waiting runs.
async fn waits_outlive_their_instance_and_runs_can_be_cancelled(backend: Backend) {
    let mut app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps = json!([{"type": "wait", "seconds": 3600}, {"type": "webhook", "url": format!("{base}/after")}]);
    let (workflow, _) = active_workflow(&app, &t.key, steps, "one_active_run").await;
    let ada = json!({"contact": {"email": "ada@example.com"}});
    let run_id = trigger(&app, &t.key, &workflow, ada.clone()).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    run_until(&app, &t.key, &run_id, status_is("waiting")).await;
    // The waiting run holds one job, due in an hour: /metrics shows it
    // queued, not due; an hour and 100 s later it is due and 100 s old.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "keyflow_jobs_queued 1",
        "keyflow_jobs_due 0",
        "keyflow_jobs_running 0",
        "keyflow_jobs_oldest_due_age_seconds 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    let later = app
        .store
        .job_queue_stats(app.now_ms() + 3_700_000)
        .await
        .unwrap();
    assert_eq!((later.queued, later.due, later.running), (1, 1, 0));
    assert_eq!(
        later.oldest_due_at.map(|at| app.now_ms() + 3_700_000 - at),
        Some(100_000)
    );
    let second = trigger(&app, &t.key, &workflow, ada.clone()).await;
    second.assert_error(409, "conflict");
    assert_eq!(second.body["error"]["details"]["reason"], "active_run");
    assert_eq!(second.body["error"]["details"]["run_id"], run_id.as_str());

    let other = app.another_instance().await;
    app.stop().await;
    other.clock.advance_ms(3_601_000);
    run_until(&other, &t.key, &run_id, status_is("completed")).await;
    assert_eq!(receiver.requests().len(), 1);

    // Cancel a waiting run; then archive cancels the next one.
    let run_id = trigger(&other, &t.key, &workflow, ada.clone()).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    run_until(&other, &t.key, &run_id, status_is("waiting")).await;
    let cancelled = other
        .post(
            &format!("/v1/workflow-runs/{run_id}/cancel"),
            &t.key,
            json!({}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    other
        .post(
            &format!("/v1/workflow-runs/{run_id}/cancel"),
            &t.key,
            json!({}),
        )
        .await
        .assert_error(409, "conflict");
    let run_id = trigger(&other, &t.key, &workflow, ada).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    run_until(&other, &t.key, &run_id, status_is("waiting")).await;
    assert_eq!(
        other
            .delete(&format!("/v1/workflows/{workflow}"), &t.key)
            .await
            .status,
        204
    );
    run_until(&other, &t.key, &run_id, status_is("cancelled")).await;
    other.clock.advance_ms(3_601_000);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(receiver.requests().len(), 1, "cancelled runs call nothing");
    let audit = other
        .get("/v1/audit?action=workflow_run.cancelled", &t.key)
        .await;
    assert_eq!(
        audit.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        audit.body
    );
}

/// Triggers other than `api`, inactive workflows, bad bodies and other
/// projects' ids are refused; `once` starts one run per contact.
async fn triggers_are_refused_where_they_must_be(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let other = app.tenant().await;
    let steps = json!([{"type": "exit"}]);
    let (workflow, _) = active_workflow(&app, &t.key, steps.clone(), "once").await;
    let ada = json!({"contact": {"email": "ada@example.com"}});
    let first = trigger(&app, &t.key, &workflow, ada.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let run_id = first.body["run_id"].as_str().unwrap().to_string();
    run_until(&app, &t.key, &run_id, status_is("completed")).await;
    let again = trigger(&app, &t.key, &workflow, ada.clone()).await;
    assert_eq!(
        again.body["error"]["details"]["reason"], "already_ran",
        "{}",
        again.body
    );
    for bad in [
        json!({"contact": {"email": "a@b.co", "id": "x"}}),
        json!({"contact": {}}),
        json!({"contact": "ada@example.com"}),
        json!({"contact": {"email": "not an email"}}),
        json!({"contact": {"email": "a@b.co"}, "variables": [1]}),
    ] {
        trigger(&app, &t.key, &workflow, bad)
            .await
            .assert_error(422, "validation_failed");
    }
    trigger(
        &app,
        &t.key,
        &workflow,
        json!({"contact": {"id": "no-such-contact"}}),
    )
    .await
    .assert_error(404, "not_found");
    let drafted = app
        .post(
            "/v1/workflows",
            &t.key,
            json!({"name": "d", "trigger": {"type": "api"}, "steps": steps}),
        )
        .await;
    let drafted = drafted.body["id"].as_str().unwrap();
    let reply = trigger(&app, &t.key, drafted, ada.clone()).await;
    assert_eq!(reply.body["error"]["details"]["reason"], "not_active");
    let evented = app
        .post(
            "/v1/workflows",
            &t.key,
            json!({"name": "e", "status": "active", "trigger": {"type": "event", "event": "x"},
                   "steps": [{"type": "exit"}]}),
        )
        .await;
    let reply = trigger(
        &app,
        &t.key,
        evented.body["id"].as_str().unwrap(),
        ada.clone(),
    )
    .await;
    assert_eq!(reply.body["error"]["details"]["reason"], "not_api_trigger");

    trigger(&app, &other.key, &workflow, ada)
        .await
        .assert_error(404, "not_found");
    for path in [
        format!("/v1/workflow-runs/{run_id}"),
        format!("/v1/workflows/{workflow}/runs"),
    ] {
        app.get(&path, &other.key)
            .await
            .assert_error(404, "not_found");
    }
    app.post(
        &format!("/v1/workflow-runs/{run_id}/cancel"),
        &other.key,
        json!({}),
    )
    .await
    .assert_error(404, "not_found");
    let (_, ro) = app
        .create_key(&t.key, json!({"name": "ro", "type": "read_only"}))
        .await;
    assert_eq!(
        app.get(&format!("/v1/workflow-runs/{run_id}"), &ro)
            .await
            .status,
        200
    );
    trigger(
        &app,
        &ro,
        &workflow,
        json!({"contact": {"email": "b@b.co"}}),
    )
    .await
    .assert_error(403, "insufficient_scope");
}

/// The runs of a workflow, once there are `n` (10 s at most).
async fn runs_of(app: &TestApp, key: &str, workflow: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let runs = app
            .get(&format!("/v1/workflows/{workflow}/runs?limit=100"), key)
            .await;
        let list = runs.body["data"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {n} runs",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Event triggers: a matching event stored for a known contact starts a
/// run on every ingest path (single, batch, Segment), with its conditions
/// checked; anonymous events, other names, unmet conditions and idempotent
/// repeats start nothing; a paused workflow starts nothing; the loop guard
/// stops at 50 runs per contact and hour and says so in the activity log.
async fn events_start_runs_on_every_ingest_path(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let made = app
        .post(
            "/v1/workflows",
            &t.key,
            json!({"name": "trial", "status": "active", "reentry": "every_time",
                   "trigger": {"type": "event", "event": "trial_ended",
                               "where": [{"field": "event.properties.plan", "op": "eq", "value": "pro"}]},
                   "steps": [{"type": "branch", "if": [{"field": "event.name", "op": "eq", "value": "trial_ended"}],
                              "then": [{"type": "update_contact", "properties": {"seen": "{{event.properties.plan}}"}}]}]}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let workflow = made.body["id"].as_str().unwrap().to_string();
    let pro = |user: &str, key: &str| json!({"name": "trial_ended", "external_id": user, "properties": {"plan": "pro"}, "idempotency_key": key});
    for body in [pro("u1", "k1"), pro("u1", "k1")] {
        let stored = app.post("/v1/events", &t.key, body).await;
        assert!(stored.status < 300, "{}", stored.body);
    }
    for ignored in [
        json!({"name": "trial_ended", "anonymous_id": "a1", "properties": {"plan": "pro"}}),
        json!({"name": "trial_ended", "external_id": "u2", "properties": {"plan": "free"}}),
        json!({"name": "signed_up", "external_id": "u2", "properties": {"plan": "pro"}}),
    ] {
        let stored = app.post("/v1/events", &t.key, ignored).await;
        assert!(stored.status < 300, "{}", stored.body);
    }
    let batch = app
        .post(
            "/v1/events/batch",
            &t.key,
            json!({"events": [pro("u3", "k3"), pro("u4", "k4")]}),
        )
        .await;
    assert!(batch.status < 300, "{}", batch.body);
    let segment = TestApp::reply(
        app.client
            .post(format!("{}/v1/track", app.next_base()))
            .basic_auth(&t.key, Some(""))
            .json(
                &json!({"userId": "u5", "event": "trial_ended", "messageId": "m-5",
                          "properties": {"plan": "pro"}}),
            ),
    )
    .await;
    assert_eq!(segment.status, 200, "{}", segment.body);
    let runs = runs_of(&app, &t.key, &workflow, 4).await;
    for run in &runs {
        let id = run["id"].as_str().unwrap();
        let done = run_until(&app, &t.key, id, status_is("completed")).await;
        assert_eq!(done["trigger"]["type"], "event");
        assert!(done["trigger"]["event_id"].is_string());
        let contact = app
            .get(
                &format!("/v1/contacts/{}", done["contact_id"].as_str().unwrap()),
                &t.key,
            )
            .await;
        assert_eq!(
            contact.body["properties"]["seen"], "pro",
            "{}",
            contact.body
        );
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        runs_of(&app, &t.key, &workflow, 4).await.len(),
        4,
        "u1 once, u3, u4, u5"
    );

    // Paused: stored events start nothing.
    let paused = app
        .patch(
            &format!("/v1/workflows/{workflow}"),
            &t.key,
            json!({"status": "paused"}),
        )
        .await;
    assert_eq!(paused.status, 200);
    app.post("/v1/events", &t.key, pro("u6", "k6")).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(runs_of(&app, &t.key, &workflow, 4).await.len(), 4);

    // The loop guard: 51 events of one contact in an hour start 50 runs.
    app.patch(
        &format!("/v1/workflows/{workflow}"),
        &t.key,
        json!({"status": "active"}),
    )
    .await;
    let events: Vec<Value> = (0..51).map(|i| pro("u7", &format!("g{i}"))).collect();
    let stored = app
        .post("/v1/events/batch", &t.key, json!({"events": events}))
        .await;
    assert!(stored.status < 300, "{}", stored.body);
    let started = Instant::now();
    loop {
        let audit = app
            .get("/v1/audit?action=workflow_run.skipped", &t.key)
            .await;
        if let Some(entry) = audit.body["data"].as_array().unwrap().first() {
            assert_eq!(entry["details"]["reason"], "hourly_cap");
            assert_eq!(entry["actor"]["type"], "workflow");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no skipped entry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        runs_of(&app, &t.key, &workflow, 54).await.len(),
        54,
        "4 + 50"
    );
}

/// Contact triggers: a watched property changing (to the given value) and
/// a subscription turning on start runs, recorded with the write; writes
/// that change nothing watched start nothing; a workflow whose own step
/// sets off its trigger stops after 5 levels and says so in the activity log.
async fn contact_changes_start_runs_and_loops_stop(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let create = |name: &str, trigger: Value, steps: Value| {
        let body = json!({"name": name, "status": "active", "reentry": "every_time",
                          "trigger": trigger, "steps": steps});
        async {
            app.post("/v1/workflows", &t.key, body).await.body["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let exit = json!([{"type": "exit"}]);
    let plan = create(
        "plan",
        json!({"type": "contact_updated", "property": "plan", "to": "pro"}),
        exit.clone(),
    )
    .await;
    let subscribed = create(
        "sub",
        json!({"type": "subscription_changed", "subscribed": true}),
        exit,
    )
    .await;
    let looping = create(
        "loop",
        json!({"type": "contact_updated", "property": "counter"}),
        json!([{"type": "update_contact", "properties": {"counter": "{{run.id}}"}}]),
    )
    .await;
    let made = app
        .post(
            "/v1/contacts",
            &t.key,
            json!({"email": "c@x.co", "properties": {"plan": "free"}}),
        )
        .await;
    assert!(made.status < 300, "{}", made.body);
    let contact = format!("/v1/contacts/{}", made.body["id"].as_str().unwrap());
    for change in [
        json!({"properties": {"plan": "pro"}}),
        json!({"properties": {"plan": "pro"}}),
        json!({"subscribed": true}),
        json!({"properties": {"counter": "start"}}),
    ] {
        let reply = app.patch(&contact, &t.key, change).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(runs_of(&app, &t.key, &plan, 1).await.len(), 1);
    assert_eq!(runs_of(&app, &t.key, &subscribed, 1).await.len(), 1);
    let started = Instant::now();
    loop {
        let audit = app
            .get("/v1/audit?action=workflow_run.skipped", &t.key)
            .await;
        if let Some(entry) = audit.body["data"].as_array().unwrap().first() {
            assert_eq!(entry["details"]["reason"], "depth", "{entry}");
            assert_eq!(entry["actor"]["id"], looping.as_str());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the loop did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = runs_of(&app, &t.key, &looping, 6).await;
    assert_eq!(runs.len(), 6, "depths 0 to 5");
    let triggers: Vec<&str> = runs
        .iter()
        .map(|r| r["trigger"]["type"].as_str().unwrap())
        .collect();
    assert!(triggers.iter().all(|t| *t == "contact_updated"));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        runs_of(&app, &t.key, &plan, 1).await.len(),
        1,
        "plan changed to pro once"
    );
}

/// PostgreSQL, two instances working one queue: 50 runs of 20 webhook
/// steps, 1 000 steps in all, each sent exactly once (no step of a run
/// runs on two instances at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_each_of_1000_steps_once() {
    let app = TestApp::start_with(Backend::Postgres, |c| {
        c.webhook_allow_private_networks = PrivateNetworks::parse("127.0.0.0/8").unwrap();
    })
    .await;
    let other = app.another_instance().await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps: Vec<Value> = (0..20)
        .map(|i| json!({"type": "webhook", "url": format!("{base}/step/{i}")}))
        .collect();
    let (workflow, _) = active_workflow(&app, &t.key, Value::Array(steps), "every_time").await;
    let mut runs = Vec::new();
    for i in 0..50 {
        let on = if i % 2 == 0 { &app } else { &other };
        let reply = trigger(
            on,
            &t.key,
            &workflow,
            json!({"contact": {"external_id": format!("c{i}")}}),
        )
        .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        runs.push(reply.body["run_id"].as_str().unwrap().to_string());
    }
    let started = Instant::now();
    while receiver.requests().len() < 1_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of 1000 steps sent",
            receiver.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for run in &runs {
        run_until(&app, &t.key, run, status_is("completed")).await;
    }
    let got = receiver.requests();
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(got.len(), 1_000, "every step sent once");
    assert_eq!(ids.len(), 1_000, "no step sent twice");
}

/// What the workflows attack found stays fixed: receivers' credentials in
/// headers are not shown to read-only keys; templates cannot render a body
/// or properties past their budgets (the run fails at once, saying why,
/// and nothing is sent); definitions are bounded; a repeated
/// `Idempotency-Key` writes nothing, not even a contact.
async fn attack_findings_stay_fixed(backend: Backend) {
    let app = start(backend, true).await;
    let t = app.tenant().await;
    let (receiver, base) = Receiver::start().await;
    let steps = json!([{"type": "webhook", "url": format!("{base}/h"),
                        "headers": {"Authorization": "Bearer receiver-secret-123"},
                        "body": {"a": vec!["{{variables.b}}"; 20]}}]);
    let (workflow, _) = active_workflow(&app, &t.key, steps, "every_time").await;
    let (_, ro) = app
        .create_key(&t.key, json!({"name": "ro", "type": "read_only"}))
        .await;
    let seen = app.get(&format!("/v1/workflows/{workflow}"), &ro).await;
    assert_eq!(
        seen.body["steps"][0]["headers"]["authorization"], "[redacted]",
        "{}",
        seen.body
    );
    assert!(!seen.body.to_string().contains("receiver-secret-123"));
    let owner = app.get(&format!("/v1/workflows/{workflow}"), &t.key).await;
    assert_eq!(
        owner.body["steps"][0]["headers"]["authorization"],
        "Bearer receiver-secret-123"
    );

    let big = "A".repeat(30_000);
    let reply = trigger(
        &app,
        &t.key,
        &workflow,
        json!({"contact": {"email": "a@example.com"}, "variables": {"b": big}}),
    )
    .await;
    let run_id = reply.body["run_id"].as_str().unwrap().to_string();
    let run = run_until(&app, &t.key, &run_id, status_is("failed")).await;
    assert!(run["error"].as_str().unwrap().contains("256 KiB"), "{run}");
    assert!(receiver.requests().is_empty(), "nothing is sent");

    let steps = json!([{"type": "update_contact", "properties": {"p": "{{variables.b}}", "q": "{{variables.b}}"}}]);
    let (updating, _) = active_workflow(&app, &t.key, steps, "every_time").await;
    let twenty = "B".repeat(20_000);
    let reply = trigger(
        &app,
        &t.key,
        &updating,
        json!({"contact": {"email": "a@example.com"}, "variables": {"b": twenty}}),
    )
    .await;
    let run_id = reply.body["run_id"].as_str().unwrap().to_string();
    let run = run_until(&app, &t.key, &run_id, status_is("failed")).await;
    assert!(
        run["error"].as_str().unwrap().contains("update_contact"),
        "{run}"
    );

    let huge: Vec<Value> = (0..40)
        .map(|i| json!({"type": "webhook", "url": format!("{base}/{i}/{}", "x".repeat(1_800))}))
        .collect();
    app.patch(
        &format!("/v1/workflows/{updating}"),
        &t.key,
        json!({"steps": huge}),
    )
    .await
    .assert_error(422, "validation_failed");

    let (api, _) = active_workflow(&app, &t.key, json!([{"type": "exit"}]), "every_time").await;
    let client = reqwest::Client::new();
    let send = |email: &str| {
        client
            .post(format!("{}/v1/workflows/{api}/trigger", app.next_base()))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "same")
            .json(&json!({"contact": {"email": email}}))
    };
    let first = TestApp::reply(send("first@example.com")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    // The key with another request: refused, not answered with a run that
    // is not its own; the same request again is replayed.
    let other = TestApp::reply(send("second@example.com")).await;
    other.assert_error(409, "conflict");
    assert_eq!(
        other.body["error"]["details"]["reason"],
        "idempotency_key_reused"
    );
    assert_eq!(
        other.body["error"]["details"]["run_id"],
        first.body["run_id"]
    );
    let again = TestApp::reply(send("first@example.com")).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["run_id"], first.body["run_id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let with_variables = TestApp::reply(
        client
            .post(format!("{}/v1/workflows/{api}/trigger", app.next_base()))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "same")
            .json(&json!({"contact": {"email": "first@example.com"}, "variables": {"a": 1}})),
    )
    .await;
    with_variables.assert_error(409, "conflict");
    let contacts = app.get("/v1/contacts?limit=100", &t.key).await;
    assert!(
        !contacts.body.to_string().contains("second@example.com"),
        "a replay creates no contact: {}",
        contacts.body
    );
}

/// Runs start when their trigger commits, not at the worker's next look:
/// with the fallback poll set to ten minutes, an event, a contact change
/// and an api trigger each reach the receiver within seconds (on three
/// instances, whichever instance took the write; on PostgreSQL every
/// instance hears of the jobs through `NOTIFY`).
async fn runs_start_when_their_trigger_commits(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.webhook_allow_private_networks = PrivateNetworks::parse("127.0.0.0/8").unwrap();
        c.workflow_poll_ms = 600_000;
    })
    .await;
    let t = app.tenant().await;
    let (receiver, url) = Receiver::start().await;
    for (name, starts_on) in [
        ("event", json!({"type": "event", "event": "paid"})),
        (
            "contact",
            json!({"type": "contact_updated", "property": "plan"}),
        ),
        ("api", json!({"type": "api"})),
    ] {
        let made = app
            .post(
                "/v1/workflows",
                &t.key,
                json!({"name": name, "status": "active", "trigger": starts_on,
                       "steps": [{"type": "webhook", "url": format!("{url}/{name}"), "method": "POST"}]}),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.body);
        let id = made.body["id"].as_str().unwrap().to_string();
        let started = Instant::now();
        match name {
            "event" => {
                let stored = app
                    .post(
                        "/v1/events",
                        &t.key,
                        json!({"name": "paid", "external_id": "u1", "idempotency_key": "e1"}),
                    )
                    .await;
                assert!(stored.status < 300, "{}", stored.body);
            }
            "contact" => {
                let changed = app
                    .post(
                        "/v1/contacts",
                        &t.key,
                        json!({"email": "c@x.co", "properties": {"plan": "pro"}}),
                    )
                    .await;
                assert!(changed.status < 300, "{}", changed.body);
            }
            _ => {
                let reply =
                    trigger(&app, &t.key, &id, json!({"contact": {"external_id": "u1"}})).await;
                assert_eq!(reply.status, 202, "{}", reply.body);
            }
        }
        let path = format!("/{name}");
        while !receiver.requests().iter().any(|r| r.path == path) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the {name} trigger's run waited for the poll"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

every_deployment_tests!(
    attack_findings_stay_fixed,
    one_projects_slow_receiver_leaves_room_for_others,
    retention_forgets_runs_but_not_who_ran_once,
    a_cancel_during_a_call_keeps_its_attempt,
    pause_holds_runs_between_steps_and_triggers_are_capped,
    private_destinations_are_refused_after_resolution,
    runs_start_when_their_trigger_commits,
    contact_changes_start_runs_and_loops_stop,
    events_start_runs_on_every_ingest_path,
    runs_call_signed_webhooks_and_change_the_contact,
    failures_are_retried_and_runs_can_be_resumed,
    waits_outlive_their_instance_and_runs_can_be_cancelled,
    triggers_are_refused_where_they_must_be,
);

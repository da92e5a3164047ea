//! The dashboard's Workflows pages (SPEC §10, §6): create with a one-time
//! reveal of the signing secret, bad JSON and bad definitions shown where
//! they are and nothing stored, activate, the runs list and a run page with
//! Retry and Cancel, rotate; members look but cannot change.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend_tests;
use crate::dashboard::keys_pages::between;
use crate::dashboard::{PASSWORD, csrf_of, get_page, operator, post_form, sign_in, text};
use crate::harness::{Backend, TestApp};

async fn workflows_pages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let workspace = operator(&app, "admin@acme.io").await;
    let project = app.store.list_projects(&workspace).await.unwrap()[0]
        .id
        .clone();
    let cookie = sign_in(&app, "admin@acme.io").await;
    let list = get_page(
        &app,
        &format!("/workflows?project={project}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(list.status, 200);
    assert!(text(&list).contains("No workflows yet"));
    let form = get_page(
        &app,
        &format!("/workflows/new?project={project}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(form.status, 200);
    let csrf = csrf_of(&text(&form));

    // An id that is no workflow's, even one a Location header cannot carry
    // as it is, is a 404 page, not a 500.
    for id in ["%C3%A9", "a%0Ab", "%7F", "nope"] {
        let missing = post_form(
            &app,
            &format!("/workflows/{id}"),
            Some(&cookie),
            &[("csrf", &csrf), ("project", &project), ("action", "pause")],
        )
        .await;
        assert_eq!(missing.status, 404, "{id}: {}", text(&missing));
    }

    // The trigger is a form; a new workflow's starts on an API call.
    let page = text(&form);
    assert!(page.contains("<option value=\"api\" selected>"), "{page}");
    assert!(page.contains("name=\"where_field_0\""), "{page}");

    // Bad JSON, a bad trigger, a bad step: the message names the problem
    // in the form's words and what was typed comes back; nothing is stored.
    let wait = "[{\"type\": \"wait\", \"seconds\": 60}]";
    for (kind, event, op, steps, says) in [
        ("api", "", "eq", "[{\"type\": ", "not valid JSON"),
        ("event", "", "eq", wait, "Event name"),
        ("event", "paid", "exists", wait, "Condition 1, value"),
        (
            "api",
            "",
            "eq",
            "[{\"type\": \"wait\", \"seconds\": 0}]",
            "steps[0].seconds",
        ),
    ] {
        let refused = post_form(
            &app,
            "/workflows/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("name", "Onboarding"),
                ("reentry", "every_time"),
                ("trigger_type", kind),
                ("trigger_event", event),
                ("where_field_0", "event.properties.plan"),
                ("where_op_0", op),
                ("where_value_0", "pro"),
                ("steps", steps),
            ],
        )
        .await;
        assert_eq!(refused.status, 422);
        let page = text(&refused);
        assert!(page.contains(says), "{says}: {page}");
        assert!(
            page.contains("value=\"Onboarding\""),
            "what was typed is kept"
        );
        assert!(page.contains(&format!("<option value=\"{kind}\" selected>")));
        assert!(page.contains("value=\"event.properties.plan\""));
    }
    let first_page = keyflow_store::Page {
        limit: 10,
        cursor: None,
    };
    assert!(
        app.store
            .workflows(&project, &first_page)
            .await
            .unwrap()
            .is_empty()
    );

    let steps = "[{\"type\": \"wait\", \"seconds\": 3600}]";
    let created = post_form(
        &app,
        "/workflows/new",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("project", &project),
            ("name", "Onboarding <b>"),
            ("reentry", "every_time"),
            ("trigger_type", "api"),
            ("trigger_event", "ignored for an api trigger"),
            ("steps", steps),
        ],
    )
    .await;
    assert_eq!(created.status, 200, "{}", text(&created));
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let secret = between(&text(&created), "id=\"signing-secret\">").to_string();
    assert!(secret.starts_with("whsec_"));
    let stored = &app.store.workflows(&project, &first_page).await.unwrap()[0];
    assert_eq!(stored.signing_secret, secret);
    assert_eq!(stored.status.as_str(), "draft");
    let path = format!("/workflows/{}", stored.id);
    let detail = text(&get_page(&app, &format!("{path}?project={project}"), Some(&cookie)).await);
    assert!(detail.contains("Onboarding &#60;b&#62;") || detail.contains("Onboarding &lt;b&gt;"));
    assert!(!detail.contains(&secret), "the secret is shown once");
    assert!(detail.contains(&secret[..12]));
    assert!(detail.contains("wait 3600 s"));

    let activated = post_form(
        &app,
        &path,
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("project", &project),
            ("action", "activate"),
        ],
    )
    .await;
    assert_eq!(activated.status, 303);
    // A run, through the API, shows on the page; cancel it from its page.
    let key = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/projects/{project}/keys"),
            json!({"name": "k", "type": "secret"}),
        )
        .await;
    let key = key.body["key"].as_str().unwrap().to_string();
    let run = app
        .post(
            &format!("/v1/workflows/{}/trigger", stored.id),
            &key,
            json!({"contact": {"email": "ada@example.com"}}),
        )
        .await;
    assert_eq!(run.status, 202, "{}", run.body);
    let run_id = run.body["run_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let page = text(
            &get_page(
                &app,
                &format!("/workflow-runs/{run_id}?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        if page.contains("waiting") {
            assert!(page.contains("value=\"cancel\""), "{page}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = text(
        &get_page(
            &app,
            &format!("{path}?project={project}&status=waiting"),
            Some(&cookie),
        )
        .await,
    );
    assert!(list.contains(&run_id), "{list}");
    let cancelled = post_form(
        &app,
        &format!("/workflow-runs/{run_id}"),
        Some(&cookie),
        &[("csrf", &csrf), ("project", &project), ("action", "cancel")],
    )
    .await;
    assert_eq!(cancelled.status, 303);
    let page = text(
        &get_page(
            &app,
            &format!("/workflow-runs/{run_id}?project={project}"),
            Some(&cookie),
        )
        .await,
    );
    assert!(
        page.contains("cancelled") && !page.contains("value=\"cancel\""),
        "{page}"
    );
    let again = post_form(
        &app,
        &format!("/workflow-runs/{run_id}"),
        Some(&cookie),
        &[("csrf", &csrf), ("project", &project), ("action", "cancel")],
    )
    .await;
    assert_eq!(again.status, 409);

    let rotated = post_form(
        &app,
        &path,
        Some(&cookie),
        &[("csrf", &csrf), ("project", &project), ("action", "rotate")],
    )
    .await;
    assert_eq!(rotated.status, 200);
    let new_secret = between(&text(&rotated), "id=\"signing-secret\">").to_string();
    assert_ne!(new_secret, secret);

    // The trigger form edits the trigger: an event with two conditions (a
    // number and text, read as such; a blank row dropped), then a property
    // change; the page shows it back in the form and in words.
    let edited = post_form(
        &app,
        &path,
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("project", &project),
            ("name", "Onboarding"),
            ("reentry", "every_time"),
            ("trigger_type", "event"),
            ("trigger_event", "trial_ended"),
            ("where_field_0", "event.properties.seats"),
            ("where_op_0", "gte"),
            ("where_value_0", "5"),
            ("where_field_1", ""),
            ("where_op_1", "eq"),
            ("where_value_1", ""),
            ("where_field_2", "contact.properties.plan"),
            ("where_op_2", "neq"),
            ("where_value_2", "enterprise"),
            ("steps", steps),
        ],
    )
    .await;
    assert_eq!(edited.status, 303, "{}", text(&edited));
    let stored = &app.store.workflows(&project, &first_page).await.unwrap()[0];
    assert_eq!(
        serde_json::to_value(&stored.trigger).unwrap(),
        json!({"type": "event", "event": "trial_ended", "where": [
            {"field": "event.properties.seats", "op": "gte", "value": 5},
            {"field": "contact.properties.plan", "op": "neq", "value": "enterprise"}]})
    );
    let detail = text(&get_page(&app, &format!("{path}?project={project}"), Some(&cookie)).await);
    assert!(
        detail.contains("event trial_ended when 2 condition(s) hold"),
        "{detail}"
    );
    assert!(
        detail.contains("<option value=\"event\" selected>"),
        "{detail}"
    );
    assert!(
        detail.contains("value=\"contact.properties.plan\""),
        "{detail}"
    );
    assert!(
        detail.contains("<option value=\"gte\" selected>"),
        "{detail}"
    );
    let edited = post_form(
        &app,
        &path,
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("project", &project),
            ("name", "Onboarding"),
            ("reentry", "every_time"),
            ("trigger_type", "contact_updated"),
            ("trigger_property", "plan"),
            ("trigger_to", "pro"),
            ("steps", steps),
        ],
    )
    .await;
    assert_eq!(edited.status, 303, "{}", text(&edited));
    let stored = &app.store.workflows(&project, &first_page).await.unwrap()[0];
    assert_eq!(
        serde_json::to_value(&stored.trigger).unwrap(),
        json!({"type": "contact_updated", "property": "plan", "to": "pro"})
    );

    // Members look, and cannot change.
    app.admin(
        reqwest::Method::POST,
        &format!("/admin/v1/workspaces/{workspace}/operators"),
        json!({"email": "member@acme.io", "password": PASSWORD, "role": "member"}),
    )
    .await;
    let member = sign_in(&app, "member@acme.io").await;
    let seen = get_page(&app, &format!("{path}?project={project}"), Some(&member)).await;
    assert_eq!(seen.status, 200);
    assert!(!text(&seen).contains("value=\"archive\""));
    let member_csrf = csrf_of(&text(&seen));
    let refused = post_form(
        &app,
        &path,
        Some(&member),
        &[
            ("csrf", &member_csrf),
            ("project", &project),
            ("action", "archive"),
        ],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        get_page(
            &app,
            &format!("/workflows/new?project={project}"),
            Some(&member)
        )
        .await
        .status,
        403
    );
    let still = &app.store.workflows(&project, &first_page).await.unwrap()[0];
    assert_eq!(still.status.as_str(), "active");
}

backend_tests!(workflows_pages);

//! Dashboard: first-run setup, sign-in (audited, rate limited), sessions with
//! timeouts, CSRF and same-origin checks, escaping, security headers.

use reqwest::redirect::Policy;
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, Reply, TestApp};

pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The `kf_session=…` pair from a Set-Cookie header.
pub(crate) fn session_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kf_session=") && !c.starts_with("kf_session=;"))
        .map(|c| c.split(';').next().unwrap().to_string())
}

pub(crate) async fn get_page(app: &TestApp, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = browser().get(format!("{}{path}", app.base_url));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    TestApp::reply(req).await
}

pub(crate) async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Reply {
    let mut req = browser()
        .post(format!("{}{path}", app.base_url))
        .header("origin", &app.base_url)
        .form(form);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    TestApp::reply(req).await
}

/// The CSRF token of a signed-in page's forms.
pub(crate) fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

/// A one-time form nonce, as the key forms carry (any unique value will do).
pub(crate) fn fresh_nonce() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn text(reply: &Reply) -> String {
    reply
        .body
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| reply.body.to_string())
}

pub(crate) async fn operator(app: &TestApp, email: &str) -> String {
    let t = app.tenant().await;
    let op = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/workspaces/{}/operators", t.workspace_id),
            json!({"email": email, "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_eq!(op.status, 201);
    t.workspace_id
}

pub(crate) async fn sign_in(app: &TestApp, email: &str) -> String {
    let reply = post_form(
        app,
        "/signin",
        None,
        &[("email", email), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    session_cookie(&reply).expect("session cookie")
}

async fn first_run_setup_creates_owner_and_signs_in(backend: Backend) {
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    assert_eq!(get_page(&app, "/setup", None).await.status, 404);
    assert_eq!(get_page(&app, "/setup?token=wrong", None).await.status, 404);
    let form = get_page(&app, &format!("/setup?token={token}"), None).await;
    assert_eq!(form.status, 200);
    assert!(text(&form).contains("Set up Keyflow"));
    // Bad input: a clear message, nothing created.
    let bad = post_form(
        &app,
        "/setup",
        None,
        &[
            ("token", &token),
            ("email", "owner@x.io"),
            ("password", "short"),
            ("workspace", "Acme"),
            ("project", "Prod"),
        ],
    )
    .await;
    assert_eq!(bad.status, 422);
    assert!(
        text(&bad).contains("at least 8 characters"),
        "{}",
        text(&bad)
    );
    assert_eq!(app.store.count_operators().await.unwrap(), 0);
    // What was typed stays (never the password), the field at fault says so.
    let page = text(&bad);
    assert!(page.contains(r#"value="owner@x.io""#) && page.contains(r#"value="Acme""#));
    assert!(
        page.contains(r#"aria-describedby="password-error""#),
        "{page}"
    );
    assert!(!page.contains("value=\"short\""));
    // A bad project name is refused before anything is made: no workspace
    // is left behind.
    let bad_project = post_form(
        &app,
        "/setup",
        None,
        &[
            ("token", &token),
            ("email", "owner@x.io"),
            ("password", PASSWORD),
            ("workspace", "Acme"),
            ("project", "   "),
            ("plan", "pro"),
        ],
    )
    .await;
    assert_eq!(bad_project.status, 422);
    let page = text(&bad_project);
    assert!(
        page.contains(r##"<a href="#project">First project: "##),
        "{page}"
    );
    assert!(
        page.contains(r#"<option value="pro" selected>pro</option>"#),
        "{page}"
    );
    let page_one = keyflow_store::Page {
        limit: 10,
        cursor: None,
    };
    assert!(
        app.store
            .list_workspaces(&page_one)
            .await
            .unwrap()
            .is_empty()
    );
    let done = post_form(
        &app,
        "/setup",
        None,
        &[
            ("token", &token),
            ("email", "Owner@X.io"),
            ("password", PASSWORD),
            ("workspace", "Acme"),
            ("project", "Prod"),
            ("environment", "test"),
        ],
    )
    .await;
    assert_eq!(done.status, 303, "{}", text(&done));
    // Setup lands on the first key's form, saying the plan (team by default).
    let landed = done.header("location").unwrap().to_string();
    assert_eq!(landed, "/keys/new?type=secret&done=welcome-team");
    let set_cookie = done.header("set-cookie").unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = session_cookie(&done).unwrap();
    let welcome = text(&get_page(&app, &landed, Some(&cookie)).await);
    assert!(
        welcome.contains("on the team plan") && welcome.contains("Create API key"),
        "{welcome}"
    );
    let activity = get_page(&app, "/activity", Some(&cookie)).await;
    assert_eq!(activity.status, 200);
    let page = text(&activity);
    assert!(
        page.contains("operator.signed_in") && page.contains("owner@x.io"),
        "{page}"
    );
    // The link works once.
    assert_eq!(
        get_page(&app, &format!("/setup?token={token}"), None)
            .await
            .status,
        404
    );
}

async fn setup_link_stops_once_an_operator_exists(backend: Backend) {
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    operator(&app, "ops@acme.io").await; // e.g. `keyflow init` or the admin API
    assert_eq!(
        get_page(&app, &format!("/setup?token={token}"), None)
            .await
            .status,
        404
    );
    let post = post_form(
        &app,
        "/setup",
        None,
        &[
            ("token", &token),
            ("email", "late@x.io"),
            ("password", PASSWORD),
            ("workspace", "W"),
            ("project", "P"),
        ],
    )
    .await;
    assert_eq!(post.status, 404);
    assert!(
        app.store
            .find_operator_by_email("late@x.io")
            .await
            .unwrap()
            .is_none()
    );
}

/// Two setups posted at once with the valid link: one creates the owner,
/// the other finds the link used (the token is taken before the password is
/// hashed); a setup that fails on its input gives the link back.
async fn setup_runs_once_under_concurrent_posts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let token = app.state.issue_setup_token().unwrap();
    let refused = post_form(
        &app,
        "/setup",
        None,
        &[
            ("token", &token),
            ("email", "a@x.io"),
            ("password", "short"),
            ("workspace", "W"),
            ("project", "P"),
        ],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", text(&refused));
    let setup = |email: &'static str| {
        let token = token.clone();
        let app = &app;
        async move {
            post_form(
                app,
                "/setup",
                None,
                &[
                    ("token", &token),
                    ("email", email),
                    ("password", PASSWORD),
                    ("workspace", "W"),
                    ("project", "P"),
                ],
            )
            .await
            .status
        }
    };
    let (a, b) = tokio::join!(setup("one@x.io"), setup("two@x.io"));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [303, 404]);
    assert_eq!(app.store.count_operators().await.unwrap(), 1);
}

async fn sign_in_is_audited_and_rate_limited(backend: Backend) {
    let app = TestApp::start(backend).await;
    let workspace = operator(&app, "ops@acme.io").await;
    let wrong = post_form(
        &app,
        "/signin",
        None,
        &[("email", "ops@acme.io"), ("password", "nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(session_cookie(&wrong).is_none());
    assert!(text(&wrong).contains("do not match"));
    let cookie = sign_in(&app, "OPS@acme.io").await;
    let projects = app.store.list_projects(&workspace).await.unwrap();
    let log = app
        .store
        .list_audit(
            &workspace,
            &projects[0].id,
            &keyflow_store::Page {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    let signed_in = log
        .iter()
        .find(|e| e.action == "operator.signed_in")
        .expect("audited");
    assert!(
        matches!(&signed_in.actor, keyflow_store::Actor::Operator { email, .. } if email == "ops@acme.io")
    );
    assert_eq!(signed_in.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(get_page(&app, "/activity", Some(&cookie)).await.status, 200);
    // Ten failures lock the account for a while, even for the right password.
    for _ in 0..10 {
        post_form(
            &app,
            "/signin",
            None,
            &[("email", "ops@acme.io"), ("password", "guess")],
        )
        .await;
    }
    let locked = post_form(
        &app,
        "/signin",
        None,
        &[("email", "ops@acme.io"), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(locked.status, 429);
    assert!(session_cookie(&locked).is_none());
    app.clock.advance_ms(15 * 60 * 1000);
    sign_in(&app, "ops@acme.io").await;
}

async fn cross_site_posts_and_missing_csrf_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    operator(&app, "ops@acme.io").await;
    let cross = TestApp::reply(
        browser()
            .post(format!("{}/signin", app.base_url))
            .header("origin", "https://evil.example")
            .form(&[("email", "ops@acme.io"), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!(cross.status, 403);
    assert!(session_cookie(&cross).is_none());
    let fetch_meta = TestApp::reply(
        browser()
            .post(format!("{}/signin", app.base_url))
            .header("sec-fetch-site", "cross-site")
            .form(&[("email", "ops@acme.io"), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!(fetch_meta.status, 403);
    // Sign-out needs the session's CSRF token.
    let cookie = sign_in(&app, "ops@acme.io").await;
    let no_token = post_form(&app, "/signout", Some(&cookie), &[]).await;
    assert_eq!(no_token.status, 403);
    let replayed = post_form(&app, "/signout", Some(&cookie), &[("csrf", "forged-token")]).await;
    assert_eq!(replayed.status, 403);
    assert_eq!(
        get_page(&app, "/activity", Some(&cookie)).await.status,
        200,
        "still signed in"
    );
    let csrf = csrf_of(&text(&get_page(&app, "/activity", Some(&cookie)).await));
    let out = post_form(&app, "/signout", Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(
        get_page(&app, "/activity", Some(&cookie)).await.status,
        303,
        "session gone"
    );
}

/// Sign-in comes back to the page asked for, and only to a page of this site.
async fn sign_in_returns_to_the_page_asked_for(backend: Backend) {
    let app = TestApp::start(backend).await;
    let workspace = operator(&app, "ops@acme.io").await;
    let project = app.store.list_projects(&workspace).await.unwrap()[0]
        .id
        .clone();
    let asked = format!("/settings?project={project}");
    let away = get_page(&app, &asked, None).await;
    assert_eq!(away.status, 303);
    let to = away.header("location").unwrap().to_string();
    assert_eq!(
        to,
        format!("/signin?next=%2Fsettings%3Fproject%3D{project}")
    );
    let form = text(&get_page(&app, &to, None).await);
    assert!(
        form.contains(&format!(r#"name="next" value="{asked}""#)),
        "{form}"
    );
    let sign_in_with = |next: String| {
        let app = &app;
        async move {
            post_form(
                app,
                "/signin",
                None,
                &[
                    ("email", "ops@acme.io"),
                    ("password", PASSWORD),
                    ("next", &next),
                ],
            )
            .await
        }
    };
    let back = sign_in_with(asked.clone()).await;
    assert_eq!(back.status, 303);
    assert_eq!(back.header("location"), Some(asked.as_str()));
    // Never another site, nor a path that browsers read as one.
    for next in [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example",
        "/signin",
    ] {
        let landed = sign_in_with(next.to_string()).await;
        assert_eq!(landed.header("location"), Some("/activity"), "{next}");
    }
    // A failed attempt keeps where to go.
    let failed = post_form(
        &app,
        "/signin",
        None,
        &[
            ("email", "ops@acme.io"),
            ("password", "wrong password"),
            ("next", &asked),
        ],
    )
    .await;
    assert_eq!(failed.status, 401);
    assert!(text(&failed).contains(&format!(r#"name="next" value="{asked}""#)));
}

async fn sessions_expire_idle_and_absolute(backend: Backend) {
    let app = TestApp::start(backend).await;
    operator(&app, "ops@acme.io").await;
    let cookie = sign_in(&app, "ops@acme.io").await;
    app.clock.advance_ms(61 * 60 * 1000);
    let idle = get_page(&app, "/activity", Some(&cookie)).await;
    assert_eq!(idle.status, 303);
    assert_eq!(idle.header("location"), Some("/signin?next=%2Factivity"));
    // Active use keeps a session up to 24 hours, not beyond.
    let cookie = sign_in(&app, "ops@acme.io").await;
    for _ in 0..47 {
        app.clock.advance_ms(30 * 60 * 1000);
        assert_eq!(get_page(&app, "/activity", Some(&cookie)).await.status, 200);
    }
    app.clock.advance_ms(31 * 60 * 1000);
    assert_eq!(get_page(&app, "/activity", Some(&cookie)).await.status, 303);
    // Sign-in rotates: a new session id each time.
    let a = sign_in(&app, "ops@acme.io").await;
    let b = sign_in(&app, "ops@acme.io").await;
    assert_ne!(a, b);
}

async fn pages_escape_user_text_and_send_security_headers(backend: Backend) {
    let app = TestApp::start(backend).await;
    let workspace = operator(&app, "ops@acme.io").await;
    let projects = app.store.list_projects(&workspace).await.unwrap();
    app.admin(
        reqwest::Method::POST,
        &format!("/admin/v1/projects/{}/keys", projects[0].id),
        json!({"name": "<script>alert(1)</script>", "type": "secret"}),
    )
    .await;
    let cookie = sign_in(&app, "ops@acme.io").await;
    let activity = get_page(&app, "/activity", Some(&cookie)).await;
    let page = text(&activity);
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"));
    let csp = activity.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(activity.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(activity.header("x-frame-options"), Some("DENY"));
    assert!(activity.header("referrer-policy").is_some());
    let signin = get_page(&app, "/signin", None).await;
    assert!(signin.header("content-security-policy").is_some());
    assert_eq!(
        get_page(&app, "/", None).await.header("location"),
        Some("/signin")
    );
}

/// An activity page with nothing to show says why, and how to see everything again.
async fn empty_activity_pages_say_why(backend: Backend) {
    let app = TestApp::start(backend).await;
    operator(&app, "admin@acme.io").await;
    let cookie = sign_in(&app, "admin@acme.io").await;
    let filtered = text(&get_page(&app, "/activity?actor=nobody-at-all", Some(&cookie)).await);
    assert!(
        filtered.contains("No entries match these filters."),
        "{filtered}"
    );
    assert!(filtered.contains(">Clear filters</a>"));
    let all = text(&get_page(&app, "/activity", Some(&cookie)).await);
    assert!(!all.contains("No entries match"), "the sign-in is an entry");
}

/// An unknown path: a page for a browser, the API's JSON 404 for API
/// clients and under `/v1` and `/admin` whatever they accept.
async fn unknown_paths_answer_in_the_askers_terms(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ask = |path: &'static str, accept: &'static str| {
        let request = browser()
            .get(format!("{}{path}", app.base_url))
            .header("accept", accept);
        TestApp::reply(request)
    };
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    let page = ask("/keyz", html).await;
    assert_eq!(page.status, 404);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.header("content-type")
    );
    assert!(text(&page).contains("Page not found"));
    for (path, accept) in [
        ("/keyz", "application/json"),
        ("/keyz", "*/*"),
        ("/v1/nope", html),
        ("/admin/nope", html),
    ] {
        let reply = ask(path, accept).await;
        reply.assert_error(404, "not_found");
    }
}

backend_tests!(
    unknown_paths_answer_in_the_askers_terms,
    empty_activity_pages_say_why,
    setup_link_stops_once_an_operator_exists,
    first_run_setup_creates_owner_and_signs_in,
    setup_runs_once_under_concurrent_posts,
    sign_in_is_audited_and_rate_limited,
    cross_site_posts_and_missing_csrf_are_refused,
    sessions_expire_idle_and_absolute,
    sign_in_returns_to_the_page_asked_for,
    pages_escape_user_text_and_send_security_headers,
);

pub(crate) mod keys_pages {
    use super::*;

    fn revealed_key(reply: &Reply) -> String {
        let page = text(reply);
        page.split("id=\"new-key\"")
            .nth(1)
            .and_then(|rest| rest.split_once('>'))
            .and_then(|(_, rest)| rest.split('<').next())
            .expect("a revealed key")
            .to_string()
    }

    async fn signed_in_admin(app: &TestApp) -> (String, String, String) {
        let workspace = operator(app, "admin@acme.io").await;
        let project = app.store.list_projects(&workspace).await.unwrap()[0]
            .id
            .clone();
        let cookie = sign_in(app, "admin@acme.io").await;
        let page = text(&get_page(app, "/keys", Some(&cookie)).await);
        (cookie, project, csrf_of(&page))
    }

    /// A plan without API access suspends every key: the keys page says
    /// so, with the count, before the list; a plan with access says nothing.
    async fn a_suspending_plan_is_said_on_the_keys_page(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, _) = signed_in_admin(&app).await;
        let keys = text(&get_page(&app, "/keys", Some(&cookie)).await);
        assert!(!keys.contains("feature_not_allowed"), "{keys}");
        let workspace = app
            .store
            .get_project(&project)
            .await
            .unwrap()
            .unwrap()
            .workspace_id;
        let changed = app
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/v1/workspaces/{workspace}/plan"),
                json!({"plan": "free"}),
            )
            .await;
        assert_eq!(changed.status, 200);
        let keys = text(&get_page(&app, "/keys", Some(&cookie)).await);
        assert!(
            keys.contains("<strong>free</strong> plan")
                && keys.contains("its 1 active key answers <code>403 feature_not_allowed</code>"),
            "{keys}"
        );
    }

    async fn create_reveal_use_revoke(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let form = get_page(
            &app,
            &format!("/keys/new?project={project}&type=secret"),
            Some(&cookie),
        )
        .await;
        assert_eq!(form.status, 200);
        assert!(text(&form).contains("<code>contacts:read</code>"));
        // Client keys are offered only the scopes they may hold.
        let client_form = text(
            &get_page(
                &app,
                &format!("/keys/new?project={project}&type=client"),
                Some(&cookie),
            )
            .await,
        );
        assert!(client_form.contains("events:write") && !client_form.contains("keys:write"));
        let created = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh_nonce()),
                ("type", "secret"),
                ("name", "backend"),
                ("scope", "keys:read"),
                ("scope", "audit:read"),
                ("cidr_0", "127.0.0.1"),
                ("description_0", "this box"),
            ],
        )
        .await;
        assert_eq!(created.status, 200, "{}", text(&created));
        assert!(text(&created).contains("will not be shown again"));
        let key = revealed_key(&created);
        assert!(key.starts_with("sk_live_") && key.len() == 46, "{key}");
        // The key works, with exactly those scopes, from the allowed address.
        let me = app.get("/v1/keys/self", &key).await;
        assert_eq!(me.status, 200);
        assert_eq!(me.body["scopes"], json!(["keys:read", "audit:read"]));
        assert_eq!(me.body["ip_allowlist"][0]["cidr"], "127.0.0.1/32");
        assert_eq!(me.body["created_by"]["type"], "operator");
        // The list shows the prefix and "last used", never the key.
        let list = text(&get_page(&app, &format!("/keys?project={project}"), Some(&cookie)).await);
        assert!(!list.contains(&key));
        assert!(list.contains(&format!("{}…", &key[..12])));
        assert!(list.contains("just now"), "{list}");
        // Revoke behind a confirmation page.
        let id = me.body["id"].as_str().unwrap();
        let confirm = get_page(
            &app,
            &format!("/keys/{id}/revoke?project={project}"),
            Some(&cookie),
        )
        .await;
        assert!(text(&confirm).contains("cannot be undone"));
        assert!(!text(&confirm).contains(&key));
        let revoked = post_form(
            &app,
            &format!("/keys/{id}/revoke"),
            Some(&cookie),
            &[("csrf", &csrf), ("project", &project)],
        )
        .await;
        assert_eq!(revoked.status, 303);
        app.get("/v1/keys/self", &key)
            .await
            .assert_error(401, "key_revoked");
        // The list it lands on says what happened; a made-up `done` says nothing.
        let to = revoked.header("location").unwrap().to_string();
        assert!(to.ends_with("&done=revoked"), "{to}");
        let list = text(&get_page(&app, &to, Some(&cookie)).await);
        assert!(list.contains("role=\"status\">Key revoked"), "{list}");
        let forged = text(&get_page(&app, "/keys?done=%3Cscript%3E", Some(&cookie)).await);
        assert!(!forged.contains("class=\"notice\"") && !forged.contains("<script>"));
        // The activity log shows both, with the operator's name.
        let activity = text(&get_page(&app, "/activity", Some(&cookie)).await);
        assert!(activity.contains("api_key.created") && activity.contains("api_key.revoked"));
        assert!(activity.contains("admin@acme.io"));
        assert!(!activity.contains(&key));
    }

    async fn roll_reveals_a_successor(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let created = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh_nonce()),
                ("type", "read_only"),
                ("name", "bi"),
                ("scope", "audit:read"),
            ],
        )
        .await;
        let old = revealed_key(&created);
        let id = app.get("/v1/keys/self", &old).await.body["id"]
            .as_str()
            .unwrap()
            .to_string();
        let roll_nonce = fresh_nonce();
        let roll = || async {
            post_form(
                &app,
                &format!("/keys/{id}/roll"),
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("project", &project),
                    ("form_nonce", &roll_nonce),
                    ("grace", "3600"),
                ],
            )
            .await
        };
        let rolled = roll().await;
        assert_eq!(rolled.status, 200);
        let new = revealed_key(&rolled);
        assert!(new.starts_with("ro_live_"));
        assert_eq!(app.get("/v1/keys/self", &new).await.status, 200);
        // The same form posted again (a refresh on the reveal): no third key,
        // and a link to the successor.
        let again = roll().await;
        assert_eq!(again.status, 409, "{}", text(&again));
        let new_id = app.get("/v1/keys/self", &new).await.body["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text(&again).contains(&format!("/keys/{new_id}?project={project}")));
        assert!(!text(&again).contains(&new));
        let keys = app
            .store
            .list_api_keys(
                &project,
                true,
                &keyflow_store::Page {
                    limit: 100,
                    cursor: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            keys.len(),
            3,
            "the root key, the rolled one and one successor"
        );
    }

    /// The list says where each key stands (tabs for active, expired and
    /// revoked; a state badge; Roll and Revoke only where they make sense),
    /// and a revoked key's page opens read-only.
    async fn keys_show_their_state(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (_, project, _) = signed_in_admin(&app).await;
        let t_key = {
            // A root key through the admin API, to create the others with.
            let created = app
                .admin(
                    reqwest::Method::POST,
                    &format!("/admin/v1/projects/{project}/keys"),
                    json!({"name": "root", "type": "secret", "scopes": ["keys:write", "keys:read"]}),
                )
                .await;
            assert_eq!(created.status, 201, "{}", created.body);
            created.body["key"].as_str().unwrap().to_string()
        };
        let now = app.now_ms();
        let iso = |ms: i64| keyflow_core::timefmt::format_rfc3339(ms);
        let (soon, _) = app
            .create_key(
                &t_key,
                json!({"name": "soon", "type": "secret", "expires_at": iso(now + 2 * 86_400_000)}),
            )
            .await;
        let (brief, _) = app
            .create_key(
                &t_key,
                json!({"name": "brief", "type": "secret", "expires_at": iso(now + 3_600_000)}),
            )
            .await;
        let (gone, _) = app
            .create_key(&t_key, json!({"name": "gone", "type": "secret"}))
            .await;
        let (rolled, _) = app
            .create_key(&t_key, json!({"name": "rolled", "type": "secret"}))
            .await;
        assert!(app.delete(&format!("/v1/keys/{gone}"), &t_key).await.status < 300);
        let roll = app
            .post(
                &format!("/v1/keys/{rolled}/roll"),
                &t_key,
                json!({"expires_in_seconds": 86_400}),
            )
            .await;
        assert!(roll.status < 300, "{}", roll.body);
        app.clock.advance_ms(2 * 3_600_000);
        // Two hours on, the dashboard session has ended: sign in again.
        let cookie = sign_in(&app, "admin@acme.io").await;
        let list = |show: &'static str| {
            let (app, cookie, project) = (&app, cookie.clone(), project.clone());
            async move {
                text(
                    &get_page(
                        app,
                        &format!("/keys?project={project}&show={show}"),
                        Some(&cookie),
                    )
                    .await,
                )
            }
        };
        let active = list("active").await;
        assert!(active.contains("Expires in 2 d"), "{active}");
        assert!(active.contains(">Rolling<"), "{active}");
        assert!(!active.contains(">brief<") && !active.contains(">gone<"));
        assert!(
            active.contains("Active (5)")
                && active.contains("Expired (1)")
                && active.contains("Revoked (1)"),
            "{active}"
        );
        // A rolling key may be revoked, not rolled again.
        assert!(!active.contains(&format!("/keys/{rolled}/roll")));
        assert!(active.contains(&format!("/keys/{rolled}/revoke")));
        assert!(active.contains(&format!("/keys/{soon}/roll")));
        let expired = list("expired").await;
        assert!(
            expired.contains(">brief<") && expired.contains(">Expired<"),
            "{expired}"
        );
        assert!(!expired.contains(&format!("/keys/{brief}/roll")));
        let revoked = list("revoked").await;
        assert!(
            revoked.contains(">gone<") && revoked.contains(">Revoked<"),
            "{revoked}"
        );
        assert!(!revoked.contains(&format!("/keys/{gone}/revoke")));
        // A revoked key's page: read-only, not "Something went wrong".
        let page = get_page(
            &app,
            &format!("/keys/{gone}?project={project}"),
            Some(&cookie),
        )
        .await;
        assert_eq!(page.status, 200);
        let page = text(&page);
        assert!(page.contains("This key is revoked"), "{page}");
        assert!(!page.contains("action=\"/keys/"), "no settings form");
    }

    /// A refresh or back/forward on the one-time reveal re-posts the create
    /// form: the second post creates nothing and links to the first's key.
    async fn a_reposted_create_form_makes_one_key(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let form_page =
            text(&get_page(&app, &format!("/keys/new?project={project}"), Some(&cookie)).await);
        let nonce = form_page
            .split("name=\"form_nonce\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        assert!(nonce.len() >= 16);
        // The form says which project and environment the key is for, and the
        // navigation keeps the project (issue 16: it reset on every page).
        assert!(
            form_page.contains("will start with <code>sk_live_</code>"),
            "{form_page}"
        );
        assert!(form_page.contains(&format!("href=\"/activity?project={project}\"")));
        assert!(form_page.contains(&format!("href=\"/analytics?project={project}\"")));
        let post = || async {
            post_form(
                &app,
                "/keys/new",
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("project", &project),
                    ("form_nonce", &nonce),
                    ("type", "secret"),
                    ("name", "once"),
                    ("scope", "keys:read"),
                ],
            )
            .await
        };
        let first = post().await;
        assert_eq!(first.status, 200, "{}", text(&first));
        let key = revealed_key(&first);
        let id = app.get("/v1/keys/self", &key).await.body["id"]
            .as_str()
            .unwrap()
            .to_string();
        for _ in 0..2 {
            let again = post().await;
            assert_eq!(again.status, 409, "{}", text(&again));
            let page = text(&again);
            assert!(page.contains("Key already created"), "{page}");
            assert!(page.contains(&format!("/keys/{id}?project={project}")));
            assert!(!page.contains(&key), "the key is never shown again");
        }
        let named_once = app
            .store
            .list_api_keys(
                &project,
                true,
                &keyflow_store::Page {
                    limit: 100,
                    cursor: None,
                },
            )
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.settings.name == "once")
            .count();
        assert_eq!(named_once, 1);
        // A form without its nonce (an old page) is refused and changes nothing.
        let stale = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("type", "secret"),
                ("name", "stale"),
                ("scope", "keys:read"),
            ],
        )
        .await;
        assert_eq!(stale.status, 422);
        // A refused post frees its nonce: fixed and sent again, it creates the key.
        let fresh = fresh_nonce();
        let bad = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh),
                ("type", "secret"),
                ("name", ""),
            ],
        )
        .await;
        assert_eq!(bad.status, 422);
        let good = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh),
                ("type", "secret"),
                ("name", "fixed"),
                ("scope", "keys:read"),
            ],
        )
        .await;
        assert_eq!(good.status, 200, "{}", text(&good));
    }

    async fn bad_input_shows_a_message_and_changes_nothing(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let long = "x".repeat(65);
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("name", "")],
            vec![("name", &long)],
            vec![("name", "ok"), ("cidr_0", "10.0.0.0/33")],
            vec![
                ("name", "ok"),
                ("cidr_0", "10.0.0.1"),
                ("cidr_1", "10.0.0.1"),
            ],
            vec![("name", "ok"), ("expires_at", "2001-01-01T00:00")],
            vec![
                ("name", "ok"),
                ("scope", "keys:write"),
                ("type_override", ""),
            ],
        ];
        for (i, extra) in cases.iter().enumerate() {
            let mut form = vec![
                ("csrf", csrf.as_str()),
                ("project", project.as_str()),
                ("type", if i == 5 { "client" } else { "secret" }),
            ];
            if i != 5 {
                form.push(("scope", "keys:read"));
            }
            form.extend(extra.iter().copied());
            let reply = post_form(&app, "/keys/new", Some(&cookie), &form).await;
            assert_eq!(reply.status, 422, "case {i}: {}", text(&reply));
            // The summary links to the field, which says its message in
            // words and is marked invalid for assistive technology.
            let page = text(&reply);
            let field = [
                "name",
                "name",
                "cidr_0",
                "cidr_1",
                "expires_at",
                "permissions",
            ][i];
            assert!(page.contains("class=\"error error-summary\""), "case {i}");
            assert!(
                page.contains(&format!("href=\"#{field}\"")),
                "case {i}: {page}"
            );
            assert!(
                page.contains(&format!(
                    "aria-invalid=\"true\" aria-describedby=\"{field}-error\""
                )),
                "case {i}: {page}"
            );
            assert!(page.contains(&format!("id=\"{field}-error\"")), "case {i}");
            assert!(!page.contains("ip_allowlist["), "case {i}: API paths shown");
            // What was typed is still there.
            for (name, value) in extra.iter().filter(|(n, _)| n.starts_with("cidr_")) {
                assert!(
                    page.contains(&format!("name=\"{name}\"")) && page.contains(value),
                    "case {i}: {name} lost"
                );
            }
        }
        // Only the tenant's root key exists.
        let keys = app
            .store
            .list_api_keys(
                &project,
                true,
                &keyflow_store::Page {
                    limit: 100,
                    cursor: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        // Unknown key id, missing CSRF, replayed token.
        assert_eq!(
            get_page(
                &app,
                &format!("/keys/nope/revoke?project={project}"),
                Some(&cookie)
            )
            .await
            .status,
            404
        );
        let root = &keys[0].id;
        assert_eq!(
            post_form(
                &app,
                &format!("/keys/{root}/revoke"),
                Some(&cookie),
                &[("project", &project)]
            )
            .await
            .status,
            403
        );
        assert_eq!(
            post_form(
                &app,
                &format!("/keys/{root}/revoke"),
                Some(&cookie),
                &[("csrf", "stale"), ("project", &project)]
            )
            .await
            .status,
            403
        );
        assert!(
            app.store
                .get_api_key(&project, root)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );
    }

    async fn members_cannot_open_the_keys_pages(backend: Backend) {
        let app = TestApp::start(backend).await;
        let t = app.tenant().await;
        app.admin(
            reqwest::Method::POST,
            &format!("/admin/v1/workspaces/{}/operators", t.workspace_id),
            json!({"email": "member@acme.io", "password": PASSWORD, "role": "member"}),
        )
        .await;
        let cookie = sign_in(&app, "member@acme.io").await;
        assert_eq!(get_page(&app, "/keys", Some(&cookie)).await.status, 403);
        assert_eq!(get_page(&app, "/keys/new", Some(&cookie)).await.status, 403);
        for page in ["/members", "/plan", "/settings", "/metrics-credential"] {
            assert_eq!(
                get_page(&app, page, Some(&cookie)).await.status,
                403,
                "{page}"
            );
        }
        // The navigation shows a member only the pages they may open.
        let activity = text(&get_page(&app, "/activity", Some(&cookie)).await);
        for shown in [
            "/contacts",
            "/events",
            "/analytics",
            "/workflows",
            "/activity",
        ] {
            assert!(activity.contains(&format!("href=\"{shown}?")), "{shown}");
        }
        for hidden in [
            "/keys",
            "/members",
            "/plan",
            "/metrics-credential",
            "/settings",
        ] {
            assert!(!activity.contains(&format!("href=\"{hidden}?")), "{hidden}");
        }
        // Nor can they post to the credential forms, even with their own valid token.
        let csrf = csrf_of(&activity);
        for path in ["/metrics-credential/rotate", "/metrics-credential"] {
            let reply = post_form(
                &app,
                path,
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("project", &t.project_id),
                    ("cache_ttl_minutes", "9"),
                ],
            )
            .await;
            assert_eq!(reply.status, 403, "{path}");
        }
        assert!(
            app.store
                .metrics_credential(&t.project_id)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            get_page(&app, "/activity", Some(&cookie)).await.status,
            200,
            "members browse the activity log"
        );
        assert_eq!(
            get_page(&app, "/keys", None).await.status,
            303,
            "signed out: to the sign-in page"
        );
    }

    async fn key_detail_shows_usage_and_edits_settings(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let created = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh_nonce()),
                ("type", "client"),
                ("name", "web"),
                ("scope", "events:write"),
            ],
        )
        .await;
        let key = revealed_key(&created);
        let id = app.get("/v1/keys/self", &key).await.body["id"]
            .as_str()
            .unwrap()
            .to_string();
        app.post(
            "/v1/events",
            &key,
            json!({"name": "x", "anonymous_id": "a"}),
        )
        .await;
        app.get("/v1/keys", &key).await; // 403: counted as an error
        let page = text(
            &get_page(
                &app,
                &format!("/keys/{id}?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        assert!(page.contains("<svg class=\"chart\""), "{page}");
        assert!(
            page.contains("3 requests, 1 error, 0 rate-limited"),
            "{page}"
        );
        assert!(page.contains("from 127.0.0.1"));
        // Edit: name, an IP row, allowed origins; the change is audited and takes effect.
        let saved = post_form(
            &app,
            &format!("/keys/{id}/edit"),
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("name", "web <prod>"),
                ("cidr_0", "192.0.2.0/24"),
                ("description_0", "office"),
                ("allowed_origins", "https://shop.example.com"),
            ],
        )
        .await;
        assert_eq!(saved.status, 303, "{}", text(&saved));
        app.get("/v1/keys/self", &key)
            .await
            .assert_error(403, "ip_not_allowed");
        let stored = app.store.get_api_key(&project, &id).await.unwrap().unwrap();
        assert_eq!(stored.settings.name, "web <prod>");
        assert_eq!(
            stored.settings.allowed_origins,
            Some(vec!["https://shop.example.com".to_string()])
        );
        let page = text(
            &get_page(
                &app,
                &format!("/keys/{id}?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        assert!(page.contains("web &#60;prod&#62;") && !page.contains("web <prod>"));
        assert!(
            text(&get_page(&app, "/activity", Some(&cookie)).await).contains("api_key.updated")
        );
        // Bad input: a clear message, nothing changed.
        let bad = post_form(
            &app,
            &format!("/keys/{id}/edit"),
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("name", "ok"),
                ("cidr_0", "999.1.1.1"),
            ],
        )
        .await;
        assert_eq!(bad.status, 422);
        // In words, next to the field, with what was typed still there.
        let page = text(&bad);
        assert!(page.contains("IP allow-list, row 1: address"), "{page}");
        assert!(!page.contains("ip_allowlist[0]"), "{page}");
        assert!(page.contains(r#"id="cidr_0" name="cidr_0""#));
        assert!(page.contains(r#"value="999.1.1.1""#), "{page}");
        assert!(page.contains(r#"aria-invalid="true" aria-describedby="cidr_0-error""#));
        assert!(
            page.contains(r#"id="name" name="name" maxlength="64" value="ok""#),
            "{page}"
        );
        assert_eq!(
            app.store
                .get_api_key(&project, &id)
                .await
                .unwrap()
                .unwrap()
                .settings
                .name,
            "web <prod>"
        );
        // The counts reach the store on flush.
        keyflow_server::app::flush_usage(&app.state).await;
        let today = app.now_ms().div_euclid(86_400_000);
        let usage = app.store.daily_usage(&id, today).await.unwrap();
        assert!(usage.iter().map(|u| u.requests).sum::<i64>() >= 3);
    }

    async fn members_plan_and_activity_filters(backend: Backend) {
        let app = TestApp::start(backend).await;
        let token = app.state.issue_setup_token().unwrap();
        let setup = post_form(
            &app,
            "/setup",
            None,
            &[
                ("token", &token),
                ("email", "owner@acme.io"),
                ("password", PASSWORD),
                ("workspace", "Acme"),
                ("project", "Prod"),
            ],
        )
        .await;
        let cookie = session_cookie(&setup).unwrap();
        let csrf = csrf_of(&text(&get_page(&app, "/members", Some(&cookie)).await));
        // A refused add says why next to the field and keeps the email and
        // role, never the password.
        let refused = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("do", "add"),
                ("email", "not-an-email"),
                ("password", "short-secret-1"),
                ("role", "admin"),
            ],
        )
        .await;
        assert_eq!(refused.status, 422);
        let page = text(&refused);
        assert!(page.contains(r##"<a href="#email">Email: "##), "{page}");
        assert!(page.contains(r#"aria-describedby="email-error""#), "{page}");
        assert!(page.contains(r#"value="not-an-email""#), "{page}");
        assert!(page.contains("<option selected>admin</option>"), "{page}");
        assert!(!page.contains("short-secret-1"));
        // Add a member, promote, refuse removing the last owner, remove the member.
        let added = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("do", "add"),
                ("email", "new@acme.io"),
                ("password", PASSWORD),
                ("role", "member"),
            ],
        )
        .await;
        assert_eq!(added.status, 303, "{}", text(&added));
        let members = text(&get_page(&app, "/members", Some(&cookie)).await);
        assert!(members.contains("new@acme.io"));
        let owner = app
            .store
            .find_operator_by_email("owner@acme.io")
            .await
            .unwrap()
            .unwrap();
        let new = app
            .store
            .find_operator_by_email("new@acme.io")
            .await
            .unwrap()
            .unwrap();
        let last_owner = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("do", "remove"),
                ("operator", &owner.id),
                ("confirm", "yes"),
            ],
        )
        .await;
        assert_eq!(last_owner.status, 422);
        assert!(text(&last_owner).contains("at least one owner"));
        let promoted = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("do", "role"),
                ("operator", &new.id),
                ("role", "admin"),
            ],
        )
        .await;
        assert_eq!(promoted.status, 303);
        assert_eq!(promoted.header("location"), Some("/members?done=role"));
        // An admin is offered neither the owner role nor Remove on owners' rows.
        let admin_cookie = sign_in(&app, "new@acme.io").await;
        let as_admin = text(&get_page(&app, "/members", Some(&admin_cookie)).await);
        assert!(!as_admin.contains("<option>owner</option>"), "{as_admin}");
        assert!(!as_admin.contains("<option selected>owner</option>"));
        assert_eq!(
            as_admin.matches("value=\"remove\"").count(),
            1,
            "only their own row"
        );
        // Removing asks first; nothing is removed until confirmed.
        let asked = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[("csrf", &csrf), ("do", "remove"), ("operator", &new.id)],
        )
        .await;
        assert_eq!(asked.status, 200);
        assert!(
            text(&asked).contains("Remove new@acme.io"),
            "{}",
            text(&asked)
        );
        assert!(text(&get_page(&app, "/members", Some(&cookie)).await).contains("new@acme.io"));
        let removed = post_form(
            &app,
            "/members",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("do", "remove"),
                ("operator", &new.id),
                ("confirm", "yes"),
            ],
        )
        .await;
        assert_eq!(removed.status, 303);
        assert_eq!(removed.header("location"), Some("/members?done=removed"));
        let after = text(&get_page(&app, "/members?done=removed", Some(&cookie)).await);
        assert!(!after.contains("new@acme.io"));
        assert!(after.contains("role=\"status\">Member removed"), "{after}");
        // Plan: preview shows what a downgrade suspends; the change is audited.
        let workspace = app.store.list_memberships(&owner.id).await.unwrap()[0]
            .workspace_id
            .clone();
        app.admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/workspaces/{workspace}/plan"),
            json!({"plan": "pro"}),
        )
        .await;
        let project = app.store.list_projects(&workspace).await.unwrap()[0]
            .id
            .clone();
        let key = app
            .admin(
                reqwest::Method::POST,
                &format!("/admin/v1/projects/{project}/keys"),
                json!({"name": "k", "type": "secret"}),
            )
            .await;
        let key = key.body["key"].as_str().unwrap().to_string();
        // With an admin token the instance operator owns the plan: the
        // owner cannot change it here (SPEC §1), in either direction.
        let refused = post_form(
            &app,
            "/plan",
            Some(&cookie),
            &[("csrf", &csrf), ("plan", "free")],
        )
        .await;
        assert_eq!(refused.status, 403);
        assert_eq!(app.get("/v1/keys/self", &key).await.status, 200);
        app.admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/workspaces/{workspace}/plan"),
            json!({"plan": "free"}),
        )
        .await;
        app.get("/v1/keys/self", &key)
            .await
            .assert_error(403, "feature_not_allowed");
        let upgrade = post_form(
            &app,
            "/plan",
            Some(&cookie),
            &[("csrf", &csrf), ("plan", "team")],
        )
        .await;
        assert_eq!(upgrade.status, 403);
        app.get("/v1/keys/self", &key)
            .await
            .assert_error(403, "feature_not_allowed");
        let page = text(&get_page(&app, "/plan", Some(&cookie)).await);
        assert!(page.contains("managed by the operator"), "{page}");
        assert!(!page.contains("name=\"plan\""), "{page}");
        // Activity filters.
        let only_plan = text(
            &get_page(
                &app,
                &format!("/activity?project={project}&action=plan.changed"),
                Some(&cookie),
            )
            .await,
        );
        assert!(
            only_plan.contains("plan.changed") && !only_plan.contains("<td>member.added</td>"),
            "{only_plan}"
        );
        let by_owner = text(
            &get_page(
                &app,
                &format!("/activity?project={project}&actor=owner%40acme.io"),
                Some(&cookie),
            )
            .await,
        );
        assert!(by_owner.contains("member.removed") && !by_owner.contains("Instance admin"));
        // The same filters on the API.
        app.admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/workspaces/{workspace}/plan"),
            json!({"plan": "pro"}),
        )
        .await;
        let api = app.get("/v1/audit?action=member.role_changed", &key).await;
        let entries = api.body["data"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0]["details"],
            json!({"from": "member", "to": "admin"})
        );
    }

    async fn contacts_and_events_pages_escape_customer_data(backend: Backend) {
        let app = TestApp::start(backend).await;
        let t = app.tenant().await;
        app.admin(
            reqwest::Method::POST,
            &format!("/admin/v1/workspaces/{}/operators", t.workspace_id),
            json!({"email": "viewer@acme.io", "password": PASSWORD, "role": "member"}),
        )
        .await;
        let contact = app
            .post("/v1/contacts", &t.key, json!({"email": "ada@x.io", "first_name": "<img src=x onerror=alert(1)>", "properties": {"note": "<script>alert(2)</script>"}}))
            .await;
        let id = contact.body["id"].as_str().unwrap().to_string();
        app.post(
            "/v1/events",
            &t.key,
            json!({"name": "<b>clicked</b>", "contact_id": id, "properties": {"x": "<i>"}}),
        )
        .await;
        app.post(
            "/v1/events",
            &t.key,
            json!({"name": "other", "anonymous_id": "a"}),
        )
        .await;
        // A member may browse data.
        let cookie = sign_in(&app, "viewer@acme.io").await;
        let list = text(&get_page(&app, "/contacts", Some(&cookie)).await);
        assert!(list.contains("ada@x.io") && list.contains("&#60;img src=x onerror=alert(1)&#62;"));
        assert!(!list.contains("<img src=x"));
        let search = text(&get_page(&app, "/contacts?email=ADA%40x.io", Some(&cookie)).await);
        assert!(search.contains("ada@x.io"));
        let none = text(&get_page(&app, "/contacts?email=nobody%40x.io", Some(&cookie)).await);
        assert!(none.contains("No contacts."));
        let detail = text(&get_page(&app, &format!("/contacts/{id}"), Some(&cookie)).await);
        assert!(
            detail.contains("&#60;script&#62;alert(2)&#60;/script&#62;")
                && !detail.contains("<script>alert(2)")
        );
        assert!(detail.contains("&#60;b&#62;clicked&#60;/b&#62;"));
        let events = text(&get_page(&app, "/events?name=other", Some(&cookie)).await);
        assert!(events.contains("other") && !events.contains("clicked"));
        assert_eq!(
            get_page(&app, "/contacts/nope", Some(&cookie)).await.status,
            404
        );
    }

    async fn settings_set_the_project_rate_limit(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let keys = app
            .store
            .list_api_keys(
                &project,
                false,
                &keyflow_store::Page {
                    limit: 10,
                    cursor: None,
                },
            )
            .await
            .unwrap();
        let created = post_form(
            &app,
            "/keys/new",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("form_nonce", &fresh_nonce()),
                ("type", "secret"),
                ("name", "k"),
                ("scope", "keys:read"),
            ],
        )
        .await;
        let key = revealed_key(&created);
        assert_eq!(keys.len(), 1);
        let page =
            text(&get_page(&app, &format!("/settings?project={project}"), Some(&cookie)).await);
        assert!(page.contains("Cache TTL"));
        for bad in [
            [
                ("limit", "0"),
                ("period_seconds", "60"),
                ("metrics_cache_ttl_minutes", "5"),
            ],
            [
                ("limit", "x"),
                ("period_seconds", "60"),
                ("metrics_cache_ttl_minutes", "5"),
            ],
            [
                ("limit", ""),
                ("period_seconds", ""),
                ("metrics_cache_ttl_minutes", "4"),
            ],
            // Above the plan's limit (100 per minute by default): the plan
            // is the ceiling of tenant overrides (SPEC §2).
            [
                ("limit", "1000000"),
                ("period_seconds", "1"),
                ("metrics_cache_ttl_minutes", "5"),
            ],
        ] {
            let mut form = vec![("csrf", csrf.as_str()), ("project", project.as_str())];
            form.extend(bad);
            let reply = post_form(&app, "/settings", Some(&cookie), &form).await;
            assert_eq!(reply.status, 422, "{bad:?}");
            // The typed values stay; the field at fault says why.
            let page = text(&reply);
            for (name, value) in bad {
                let id = if name == "metrics_cache_ttl_minutes" {
                    "ttl"
                } else {
                    name
                };
                assert!(
                    page.contains(&format!(r#"id="{id}" name="{name}""#))
                        && page.contains(&format!(r#"value="{value}""#)),
                    "{bad:?}: {name} lost: {page}"
                );
            }
            let field = if bad[2].1 == "4" { "ttl" } else { "limit" };
            assert!(
                page.contains(&format!(r#"aria-describedby="{field}-error""#))
                    && page.contains(&format!(r##"href="#{field}""##)),
                "{bad:?}: {page}"
            );
        }
        let saved = post_form(
            &app,
            "/settings",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("limit", "7"),
                ("period_seconds", "60"),
                ("metrics_cache_ttl_minutes", "15"),
            ],
        )
        .await;
        assert_eq!(saved.status, 303, "{}", text(&saved));
        let to = saved.header("location").unwrap().to_string();
        let page = text(&get_page(&app, &to, Some(&cookie)).await);
        assert!(page.contains("role=\"status\">Saved."), "{page}");
        // Keys without their own limit now get the project's.
        let me = app.get("/v1/keys/self", &key).await;
        assert_eq!(me.header("x-ratelimit-limit"), Some("7"));
        let settings = app.store.project_settings(&project).await.unwrap();
        assert_eq!(settings.metrics_cache_ttl_minutes, 15);
        assert!(
            text(&get_page(&app, "/activity", Some(&cookie)).await)
                .contains("project.settings_changed")
        );
    }

    pub(crate) fn between<'a>(page: &'a str, start: &str) -> &'a str {
        page.split(start)
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .expect("marker on the page")
    }

    async fn metrics_credential_page(backend: Backend) {
        let app = TestApp::start(backend).await;
        let (cookie, project, csrf) = signed_in_admin(&app).await;
        let page = get_page(
            &app,
            &format!("/metrics-credential?project={project}"),
            Some(&cookie),
        )
        .await;
        assert_eq!(page.status, 200);
        assert!(text(&page).contains("Create credential"));
        // Without the CSRF token nothing is created.
        let forged = post_form(
            &app,
            "/metrics-credential/rotate",
            Some(&cookie),
            &[("project", &project)],
        )
        .await;
        assert_eq!(forged.status, 403);
        assert!(
            app.store
                .metrics_credential(&project)
                .await
                .unwrap()
                .is_none()
        );

        let created = post_form(
            &app,
            "/metrics-credential/rotate",
            Some(&cookie),
            &[("csrf", &csrf), ("project", &project)],
        )
        .await;
        assert_eq!(created.status, 200, "{}", text(&created));
        let reveal = text(&created);
        assert!(reveal.contains("will not be shown again"));
        let id = between(&reveal, "id=\"credential-id\">").to_string();
        let secret = between(&reveal, "id=\"client-secret\">").to_string();
        let stored = app
            .store
            .metrics_credential(&project)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.id, id);
        assert_eq!(stored.secret_digest, keyflow_core::KeyDigest::of(&secret));
        let shown = text(
            &get_page(
                &app,
                &format!("/metrics-credential?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        assert!(
            shown.contains(&id) && !shown.contains(&secret),
            "the secret is shown once"
        );

        let saved = post_form(
            &app,
            "/metrics-credential",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("cidr_0", "203.0.113.0/24"),
                ("description_0", "<b>office</b>"),
                ("cidr_1", ""),
                ("description_1", ""),
                ("cache_ttl_minutes", "30"),
            ],
        )
        .await;
        assert_eq!(saved.status, 303, "{}", text(&saved));
        let stored = app
            .store
            .metrics_credential(&project)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.ip_allowlist[0].cidr, "203.0.113.0/24");
        assert_eq!(
            app.store
                .project_settings(&project)
                .await
                .unwrap()
                .metrics_cache_ttl_minutes,
            30
        );
        // An error keeps what was typed (issue 16: it showed the stored rows,
        // so the next Save could write them back over the new ones), and
        // changes nothing.
        for (ttl, cidr) in [("abc", "198.51.100.0/24"), ("30", "198.51.100.0/33")] {
            let refused = post_form(
                &app,
                "/metrics-credential",
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("project", &project),
                    ("cidr_0", cidr),
                    ("description_0", "new office"),
                    ("cache_ttl_minutes", ttl),
                ],
            )
            .await;
            assert_eq!(refused.status, 422);
            let page = text(&refused);
            assert!(page.contains(&format!("value=\"{cidr}\"")), "{page}");
            assert!(page.contains("value=\"new office\""));
            assert!(page.contains(&format!("value=\"{ttl}\"")));
            let field = if ttl == "abc" { "ttl" } else { "cidr_0" };
            assert!(
                page.contains(&format!(r#"aria-describedby="{field}-error""#)),
                "{page}"
            );
            let unchanged = app
                .store
                .metrics_credential(&project)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(unchanged.ip_allowlist[0].cidr, "203.0.113.0/24");
        }
        let shown = text(
            &get_page(
                &app,
                &format!("/metrics-credential?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        assert!(shown.contains("&#60;b&#62;office&#60;/b&#62;") && !shown.contains("<b>office"));

        // Bad input: a message, nothing changed.
        let refused = post_form(
            &app,
            "/metrics-credential",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("cidr_0", "10.0.0.300/8"),
                ("cache_ttl_minutes", "2"),
            ],
        )
        .await;
        assert_eq!(refused.status, 422);
        // Both problems at once, each in words and linked from the summary.
        let page = text(&refused);
        assert!(page.contains("2 things need fixing"), "{page}");
        assert!(
            page.contains(r##"<a href="#cidr_0">IP allow-list, row 1: address"##),
            "{page}"
        );
        assert!(page.contains(r##"<a href="#ttl">Cache TTL"##), "{page}");
        assert_eq!(
            app.store
                .metrics_credential(&project)
                .await
                .unwrap()
                .unwrap(),
            stored
        );
        assert_eq!(
            app.store
                .project_settings(&project)
                .await
                .unwrap()
                .metrics_cache_ttl_minutes,
            30
        );
        // A cross-site post is refused before anything else.
        let cross_site = browser()
            .post(format!("{}/metrics-credential/rotate", app.base_url))
            .header("origin", "https://evil.example")
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("project", project.as_str())]);
        assert_eq!(TestApp::reply(cross_site).await.status, 403);
        assert_eq!(
            app.store
                .metrics_credential(&project)
                .await
                .unwrap()
                .unwrap(),
            stored
        );
        let not_a_number = post_form(
            &app,
            "/metrics-credential",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("project", &project),
                ("cache_ttl_minutes", "soon"),
            ],
        )
        .await;
        assert_eq!(not_a_number.status, 422);
        assert!(text(&not_a_number).contains("whole number of minutes"));

        // Rotation goes through a confirmation, then reveals a new pair.
        let confirm = text(
            &get_page(
                &app,
                &format!("/metrics-credential/rotate?project={project}"),
                Some(&cookie),
            )
            .await,
        );
        assert!(confirm.contains("stop working"));
        let rotated = text(
            &post_form(
                &app,
                "/metrics-credential/rotate",
                Some(&cookie),
                &[("csrf", &csrf), ("project", &project)],
            )
            .await,
        );
        let new_id = between(&rotated, "id=\"credential-id\">");
        assert_ne!(new_id, id);
        let activity = text(&get_page(&app, "/activity", Some(&cookie)).await);
        assert!(
            activity.contains("metrics_credential.rotated")
                && activity.contains("metrics_credential.created")
        );
        assert!(!activity.contains(&secret));
    }

    /// Without an admin token (a team hosting Keyflow for itself), setup
    /// asks for the plan (team preselected) and the owner changes it here.
    async fn plan_page_without_admin_token(backend: Backend) {
        let app = TestApp::start_with(backend, |c| c.admin_token = None).await;
        let token = app.state.issue_setup_token().unwrap();
        let form = text(&get_page(&app, &format!("/setup?token={token}"), None).await);
        assert!(form.contains("<option value=\"team\" selected>"), "{form}");
        let bad = post_form(
            &app,
            "/setup",
            None,
            &[
                ("token", &token),
                ("email", "o@acme.io"),
                ("password", PASSWORD),
                ("workspace", "Acme"),
                ("project", "Prod"),
                ("plan", "gold"),
            ],
        )
        .await;
        assert_eq!(bad.status, 422);
        let setup = post_form(
            &app,
            "/setup",
            None,
            &[
                ("token", &token),
                ("email", "o@acme.io"),
                ("password", PASSWORD),
                ("workspace", "Acme"),
                ("project", "Prod"),
                ("plan", "team"),
            ],
        )
        .await;
        let cookie = session_cookie(&setup).unwrap();
        let owner = app
            .store
            .find_operator_by_email("o@acme.io")
            .await
            .unwrap()
            .unwrap();
        let workspace = app.store.list_memberships(&owner.id).await.unwrap()[0]
            .workspace_id
            .clone();
        let plan_of = || async {
            app.store
                .get_workspace(&workspace)
                .await
                .unwrap()
                .unwrap()
                .plan
        };
        assert_eq!(plan_of().await, keyflow_core::Plan::Team);
        let page = text(&get_page(&app, "/plan", Some(&cookie)).await);
        let csrf = csrf_of(&page);
        // The select shows the current plan, then the previewed one (issue 16: it showed "free").
        assert!(page.contains("<option selected>team</option>"), "{page}");
        assert_eq!(page.matches(" selected>").count(), 1);
        let preview = text(&get_page(&app, "/plan?preview=free", Some(&cookie)).await);
        assert!(
            preview.contains("0 active API keys will be suspended"),
            "{preview}"
        );
        assert!(
            preview.contains("<option selected>free</option>"),
            "{preview}"
        );
        assert_eq!(preview.matches(" selected>").count(), 1);
        let changed = post_form(
            &app,
            "/plan",
            Some(&cookie),
            &[("csrf", &csrf), ("plan", "free")],
        )
        .await;
        assert_eq!(changed.status, 303);
        assert_eq!(plan_of().await, keyflow_core::Plan::Free);
    }

    backend_tests!(
        plan_page_without_admin_token,
        metrics_credential_page,
        settings_set_the_project_rate_limit,
        contacts_and_events_pages_escape_customer_data,
        members_plan_and_activity_filters,
        key_detail_shows_usage_and_edits_settings,
        create_reveal_use_revoke,
        roll_reveals_a_successor,
        a_reposted_create_form_makes_one_key,
        keys_show_their_state,
        a_suspending_plan_is_said_on_the_keys_page,
        bad_input_shows_a_message_and_changes_nothing,
        members_cannot_open_the_keys_pages,
    );
}

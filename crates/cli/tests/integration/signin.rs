//! Dashboard sign-in under attack (SPEC §6): limits charged before the
//! password is checked, bounded hashing, bounded limiter memory, no lockout
//! from another IP, no timing difference between known and unknown emails.

use std::time::Instant;

use crate::backend_tests;
use crate::dashboard::{PASSWORD, browser, operator, post_form, session_cookie, sign_in};
use crate::harness::{Backend, Reply, TestApp};

/// Behind a trusted proxy (this test's own loopback), `X-Forwarded-For` names the client.
async fn start(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
}

async fn sign_in_from(
    app: &TestApp,
    ip: &str,
    email: &str,
    password: &str,
    cookie: Option<&str>,
) -> Reply {
    let mut req = browser()
        .post(format!("{}/signin", app.base_url))
        .header("origin", &app.base_url)
        .header("x-forwarded-for", ip)
        .form(&[("email", email), ("password", password)]);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    TestApp::reply(req).await
}

fn device_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kf_device="))
        .map(|c| c.split(';').next().unwrap().to_string())
}

/// 60 concurrent wrong passwords for one account from one IP: the limiter
/// is charged before Argon2, so at most 10 are checked (401); the rest are
/// refused (429) or, past the hashing permits, told to retry (503).
async fn concurrent_guesses_cannot_outrun_the_limiter(backend: Backend) {
    let app = start(backend).await;
    operator(&app, "victim@acme.io").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let base = app.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let reply = browser()
                .post(format!("{base}/signin"))
                .header("origin", &base)
                .form(&[
                    ("email", "victim@acme.io"),
                    ("password", &format!("wrong-{i}")),
                ])
                .send()
                .await
                .unwrap();
            let retry_after = reply.headers().get("retry-after").cloned();
            (reply.status().as_u16(), retry_after)
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, retry_after) = t.await.unwrap();
        // "Try again in a moment" says when.
        if status == 503 {
            assert_eq!(
                retry_after.as_ref().and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    let checked = counts.get(&401).copied().unwrap_or(0);
    assert!(checked <= 10, "{counts:?}");
    assert!(checked >= 1, "{counts:?}");
    assert_eq!(
        counts
            .keys()
            .copied()
            .filter(|s| ![401, 429, 503].contains(s))
            .count(),
        0,
        "{counts:?}"
    );
    // Nothing counted as a failure that was not checked: after the window the
    // account works again with the right password.
    app.clock.advance_ms(15 * 60 * 1000);
    sign_in(&app, "victim@acme.io").await;
}

/// An email longer than any address is refused before a limiter keeps it.
async fn huge_emails_are_refused_before_the_limiter(backend: Backend) {
    let app = start(backend).await;
    let huge = format!("{}@acme.io", "a".repeat(200 * 1024));
    for _ in 0..3 {
        let reply = post_form(
            &app,
            "/signin",
            None,
            &[("email", &huge), ("password", "x")],
        )
        .await;
        assert_eq!(reply.status, 422);
    }
    let nul = post_form(
        &app,
        "/signin",
        None,
        &[("email", "a\0b@acme.io"), ("password", "x")],
    )
    .await;
    assert_eq!(nul.status, 422);
    assert!(app.state.signin.limiter.is_empty());
    // Ordinary failures are kept, then pruned once their window has passed.
    post_form(
        &app,
        "/signin",
        None,
        &[("email", "x@acme.io"), ("password", "x")],
    )
    .await;
    assert!(!app.state.signin.limiter.is_empty());
    app.clock.advance_ms(2 * 3600 * 1000);
    app.state.signin.prune(app.now_ms());
    assert!(app.state.signin.limiter.is_empty());
}

/// Failures from an attacker's IPs do not lock the operator out of their own
/// IP; a flood from many IPs slows new browsers but not one that signed in before.
async fn lockout_cannot_be_used_as_a_weapon(backend: Backend) {
    let app = start(backend).await;
    operator(&app, "ops@acme.io").await;
    let owner_ip = "198.51.100.7";
    let first = sign_in_from(&app, owner_ip, "ops@acme.io", PASSWORD, None).await;
    assert_eq!(first.status, 303);
    let device = device_cookie(&first).expect("device cookie");
    // One attacker IP: locked itself after 10 failures, the owner is not.
    for _ in 0..12 {
        sign_in_from(&app, "203.0.113.66", "ops@acme.io", "guess", None).await;
    }
    let attacker = sign_in_from(&app, "203.0.113.66", "ops@acme.io", PASSWORD, None).await;
    assert_eq!(attacker.status, 429);
    let owner = sign_in_from(&app, owner_ip, "ops@acme.io", PASSWORD, None).await;
    assert_eq!(owner.status, 303);
    assert!(session_cookie(&owner).is_some());
    // Many attacker IPs exhaust the account-wide limit (100 per hour) ...
    for n in 0..11 {
        for _ in 0..10 {
            sign_in_from(
                &app,
                &format!("203.0.113.{n}"),
                "ops@acme.io",
                "guess",
                None,
            )
            .await;
        }
    }
    // ... which stops a browser that never signed in ...
    let new_device = sign_in_from(&app, "192.0.2.1", "ops@acme.io", PASSWORD, None).await;
    assert_eq!(new_device.status, 429);
    // ... but not the operator's own browser, from anywhere.
    let known = sign_in_from(&app, "192.0.2.2", "ops@acme.io", PASSWORD, Some(&device)).await;
    assert_eq!(known.status, 303);
    // A device cookie of another account does not help.
    operator(&app, "other@acme.io").await;
    let other_first = sign_in_from(&app, "192.0.2.3", "other@acme.io", PASSWORD, None).await;
    let other_device = device_cookie(&other_first).unwrap();
    let borrowed = sign_in_from(
        &app,
        "192.0.2.4",
        "ops@acme.io",
        PASSWORD,
        Some(&other_device),
    )
    .await;
    assert_eq!(borrowed.status, 429);
    // IPv6 clients are counted per /64: rotating addresses inside one gains nothing.
    for i in 0..10 {
        sign_in_from(
            &app,
            &format!("2001:db8:7:7::{i:x}"),
            "other@acme.io",
            "guess",
            None,
        )
        .await;
    }
    let rotated = sign_in_from(&app, "2001:db8:7:7::ffff", "other@acme.io", PASSWORD, None).await;
    assert_eq!(rotated.status, 429);
}

async fn median_signin_ms(app: &TestApp, email: &str) -> f64 {
    let mut times = Vec::new();
    for i in 0..7 {
        let started = Instant::now();
        let reply = sign_in_from(app, &format!("192.0.2.{}", 100 + i), email, "wrong", None).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(reply.status, 401);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// An unknown email costs a password check too, so timing does not tell
/// whether an account exists (was 1.7 ms against 32 ms).
async fn unknown_emails_take_as_long_as_known_ones(backend: Backend) {
    let app = start(backend).await;
    operator(&app, "ops@acme.io").await;
    // Warm the dummy hash up.
    sign_in_from(&app, "192.0.2.99", "nobody@acme.io", "wrong", None).await;
    let known = median_signin_ms(&app, "ops@acme.io").await;
    let unknown = median_signin_ms(&app, "nobody@acme.io").await;
    assert!(
        unknown > known * 0.5,
        "unknown {unknown:.1} ms vs known {known:.1} ms"
    );
}

/// Right passwords count against the per-IP limit too (only the account
/// buckets are given back), so one address cannot keep the hashing permits
/// busy by signing in to its own account in a loop.
async fn right_passwords_still_count_per_ip(backend: Backend) {
    let app = start(backend).await;
    operator(&app, "loop@acme.io").await;
    for i in 0..30 {
        let reply = sign_in_from(&app, "203.0.113.50", "loop@acme.io", PASSWORD, None).await;
        assert_eq!(reply.status, 303, "sign-in {i}");
    }
    let limited = sign_in_from(&app, "203.0.113.50", "loop@acme.io", PASSWORD, None).await;
    assert_eq!(limited.status, 429);
    // Another address is not affected.
    let other = sign_in_from(&app, "203.0.113.51", "loop@acme.io", PASSWORD, None).await;
    assert_eq!(other.status, 303);
}

backend_tests!(
    right_passwords_still_count_per_ip,
    concurrent_guesses_cannot_outrun_the_limiter,
    huge_emails_are_refused_before_the_limiter,
    lockout_cannot_be_used_as_a_weapon,
    unknown_emails_take_as_long_as_known_ones,
);

//! Micro-benchmarks of what every authenticated request pays, on the real
//! code paths (docs/benchmarks.md has the figures and targets):
//!
//! - key parse + checksum;
//! - SHA-256 digest + key-cache lookup;
//! - cached verify: header → parse → checksum → digest → cache → revoked /
//!   expired → IP allow-list of 10 CIDRs → scope → GCRA limiter;
//! - cold verify against SQLite (the key is not cached: one indexed read);
//! - CIDR match on 10 and 100 entries;
//! - the GCRA decision, pure and through the sharded in-process limiter.
//!
//! Run: `cargo bench -p keyflow-server --bench hot_path`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use criterion::{Criterion, criterion_group, criterion_main};
use keyflow_core::keys::parse_key;
use keyflow_core::rate_limit::gcra;
use keyflow_core::{Clock, Environment, IpAllowList, IpRule, Plan, RateLimit, Scope, SystemClock};
use keyflow_server::auth::authenticate;
use keyflow_server::config::Config;
use keyflow_server::state::AppState;
use keyflow_store::{Actor, Project, Workspace};

const TEN_CIDRS: [&str; 10] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "203.0.113.0/24",
    "2001:db8::/32",
    "fd00::/8",
    "::1/128",
    "127.0.0.0/8",
];

fn rules(cidrs: impl IntoIterator<Item = String>) -> Vec<IpRule> {
    cidrs
        .into_iter()
        .map(|cidr| IpRule {
            cidr,
            description: String::new(),
        })
        .collect()
}

/// A state on a fresh SQLite file with one secret key carrying ten CIDRs.
async fn fixture(dir: &std::path::Path) -> (Arc<AppState>, String) {
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let store = keyflow_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let now = SystemClock.now_ms();
    let workspace = Workspace {
        id: keyflow_store::new_id(),
        name: "bench".into(),
        plan: Plan::Pro,
        created_at: now,
    };
    store.create_workspace(&workspace).await.unwrap();
    let project = Project {
        id: keyflow_store::new_id(),
        workspace_id: workspace.id.clone(),
        name: "bench".into(),
        environment: Environment::Live,
        created_at: now,
    };
    store.create_project(&project).await.unwrap();
    let request: keyflow_core::key_settings::CreateKeyRequest =
        serde_json::from_value(serde_json::json!({
            "name": "bench",
            "type": "secret",
            "ip_allowlist": TEN_CIDRS.iter().map(|c| serde_json::json!({"cidr": c})).collect::<Vec<_>>(),
            "rate_limit": {"limit": 1_000_000, "period_seconds": 1},
        }))
        .unwrap();
    let spec = keyflow_core::key_settings::validate_create(&request, now).unwrap();
    let ctx = keyflow_server::operations::Ctx {
        store: store.as_ref(),
        bus: &keyflow_server::changes::NoListeners,
        actor: Actor::InstanceAdmin,
        ip: None,
        now,
        workflow_depth: 0,
    };
    let authority = keyflow_server::operations::keys::KeyAuthority::Instance;
    let issued = keyflow_server::operations::keys::create_key(&ctx, &project, spec, authority)
        .await
        .unwrap();
    let state = Arc::new(AppState::new(
        Config::default(),
        store,
        Arc::new(SystemClock),
    ));
    (state, issued.secret)
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, key) = runtime.block_on(fixture(dir.path()));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();

    c.bench_function("key parse + checksum", |b| {
        b.iter(|| parse_key(black_box(&key)).unwrap())
    });

    // Warm the cache once; every iteration below is a hit.
    runtime
        .block_on(authenticate(&state, &headers, Some(loopback), false))
        .unwrap();
    c.bench_function("SHA-256 digest + key-cache lookup", |b| {
        let parsed = parse_key(&key).unwrap();
        b.iter(|| state.cache.get(&black_box(&parsed).digest()).unwrap())
    });

    let quota = RateLimit {
        limit: 1_000_000,
        period_seconds: 1,
    };
    c.bench_function(
        "cached verify (parse, checksum, hash, cache, 10 CIDRs, scope, GCRA)",
        |b| {
            b.to_async(&runtime).iter(|| async {
                let key = authenticate(&state, black_box(&headers), Some(loopback), false)
                    .await
                    .unwrap();
                assert!(key.allowlist.allows(Some(loopback)));
                assert!(key.key.scopes.contains(Scope::EventsWrite));
                let decision = state
                    .local_limiter
                    .decide(&key.key.id, quota, state.now_ms(), true);
                black_box(decision.allowed)
            })
        },
    );

    let parsed = parse_key(&key).unwrap();
    let digest = parsed.digest();
    c.bench_function(
        "cold verify on SQLite (parse, checksum, hash, indexed read)",
        |b| {
            b.to_async(&runtime).iter(|| async {
                let parsed = parse_key(black_box(&key)).unwrap();
                let found = state
                    .store
                    .find_key_for_auth(&parsed.digest())
                    .await
                    .unwrap()
                    .unwrap();
                black_box(IpAllowList::from_rules(&found.key.settings.ip_allowlist))
            })
        },
    );
    black_box(digest);

    let ten = IpAllowList::from_rules(&rules(TEN_CIDRS.iter().map(|s| s.to_string())));
    let hundred = IpAllowList::from_rules(&rules(
        (0..99)
            .map(|i| format!("10.{i}.0.0/16"))
            .chain(["127.0.0.0/8".to_string()]),
    ));
    c.bench_function("CIDR match, 10 entries (last one matches)", |b| {
        b.iter(|| assert!(ten.allows(Some(black_box(loopback)))))
    });
    c.bench_function("CIDR match, 100 entries (last one matches)", |b| {
        b.iter(|| assert!(hundred.allows(Some(black_box(loopback)))))
    });

    let now_us = SystemClock.now_ms() * 1000;
    c.bench_function("GCRA decision (pure)", |b| {
        b.iter(|| gcra(black_box(Some(now_us)), now_us, quota, true))
    });
    c.bench_function("GCRA decision (sharded in-process limiter)", |b| {
        b.iter(|| {
            state
                .local_limiter
                .decide(black_box("bench-key:ingest"), quota, state.now_ms(), true)
        })
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);

//! `keyflow keys revoke` against a running server: the revocation is
//! committed by the CLI and, with the servers' Redis configured, announced
//! to them so a cached key is refused at once (SPEC §11), not when caches
//! expire.

use std::time::{Duration, Instant};

use crate::backend_tests;
use crate::cli::{keyflow, spawn_server_with};
use crate::contacts_csv::initialised;
use crate::harness::{Backend, RedisServer, TestDb};

/// The server, stopped however the test ends.
struct Running(crate::cli::ServerProcess);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

fn create_key(db: &TestDb, project: &str, name: &str) -> (String, String) {
    let (ok, key, err) = keyflow(
        db,
        &[
            "keys",
            "create",
            "--project",
            project,
            "--name",
            name,
            "--type",
            "secret",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    (
        key["key"].as_str().unwrap().to_string(),
        key["id"].as_str().unwrap().to_string(),
    )
}

async fn keys_revoke_reaches_running_servers(backend: Backend) {
    let db = TestDb::create(backend).await;
    let project = initialised(&db);
    let redis = RedisServer::start();
    let server = Running(spawn_server_with(
        &db,
        "admin-token-of-the-instance",
        &[("KEYFLOW_REDIS_URL", &redis.url())],
    ));
    let client = reqwest::Client::new();
    let status = |key: String| {
        let request = client
            .get(format!("{}/v1/keys/self", server.0.base))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let (key, id) = create_key(&db, &project, "told");
    assert_eq!(
        status(key.clone()).await,
        200,
        "the key works (and is cached)"
    );

    let revoke = |id: &str, redis: Option<&str>| {
        let mut command = std::process::Command::new(crate::cli::BIN);
        command
            .args([
                "--database-url",
                &db.url,
                "keys",
                "revoke",
                "--project",
                &project,
                id,
                "--json",
            ])
            .env_remove("KEYFLOW_DATABASE_URL")
            .env_remove("KEYFLOW_REDIS_URL");
        if let Some(url) = redis {
            command.env("KEYFLOW_REDIS_URL", url);
        }
        let out = command.output().unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), value)
    };
    let (ok, said) = revoke(&id, Some(&redis.url()));
    assert!(ok, "{said}");
    assert_eq!(said["servers_told"], true, "{said}");
    assert_eq!(said["already_revoked"], false);
    let started = Instant::now();
    loop {
        match status(key.clone()).await {
            401 => break,
            200 => assert!(
                started.elapsed() < Duration::from_secs(2),
                "the server still accepts the revoked key"
            ),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, again) = revoke(&id, Some(&redis.url()));
    assert!(ok, "{again}");
    assert_eq!(again["already_revoked"], true);

    // Without Redis the CLI says when servers will see it.
    let (_, other_id) = create_key(&db, &project, "untold");
    let (ok, said) = revoke(&other_id, None);
    assert!(ok, "{said}");
    assert_eq!(said["servers_told"], false, "{said}");
    let (ok, missing) = revoke("key_does_not_exist", None);
    assert!(!ok);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no API key"),
        "{missing}"
    );
    drop(server);
}

backend_tests!(keys_revoke_reaches_running_servers);

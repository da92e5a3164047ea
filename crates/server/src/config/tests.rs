//! Layering, sources, redaction and the docs table of the configuration.

use super::*;

#[test]
fn flags_beat_file_and_secrets_stay_hidden() {
    // Removed when the test ends.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyflow.toml");
    let token = dir.path().join("token");
    std::fs::write(&token, "a-very-long-admin-token\n").unwrap();
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:9000\"\nrate_limit = \"10/60\"\nadmin_token_file = {:?}\n\
             shutdown_timeout_secs = 5\nheader_read_timeout_secs = 20\n\
             database_url = \"postgres://u:hunter2@db/k\"\n[plan_rate_limits]\nteam = \"1000/60\"\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    let config = Config::load(&ConfigOverrides {
        config_file: Some(file),
        listen: Some("127.0.0.1:9001".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.listen.port(), 9001);
    assert_eq!(config.shutdown_timeout_secs, 5);
    assert_eq!(config.header_read_timeout_secs, 20);
    assert_eq!(config.max_connections, 0);
    assert_eq!(config.default_rate_limit, RateLimit::per_minute(10));
    assert_eq!(
        config.plan_rate_limit(Plan::Team),
        RateLimit::per_minute(1000)
    );
    assert_eq!(
        config.admin_token.as_ref().unwrap().expose(),
        "a-very-long-admin-token"
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("a-very-long-admin-token"),
        "{debug}"
    );
}

#[test]
fn sources_follow_precedence_and_secrets_stay_hidden() {
    // Removed when the test ends.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyflow.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\nrate_limit = \"10/60\"\n\
         database_url = \"postgres://u:hunter2@db/k?password=hunter3\"\n",
    )
    .unwrap();
    let config = Config::load(&ConfigOverrides {
        config_file: Some(file.clone()),
        listen: Some("127.0.0.1:9001".into()),
        rate_limit: Some("20/60".into()),
        admin_token: Some(Secret::new("a-very-long-admin-token")),
        from_env: vec!["rate_limit", "admin_token"],
        ..Default::default()
    })
    .unwrap();
    let lines = config.effective(None);
    let line = |key: &str| lines.iter().find(|l| l.key == key).unwrap().clone();
    let seen = |key: &str| {
        let l = line(key);
        (l.value, l.source, l.from)
    };
    assert_eq!(
        seen("listen"),
        ("127.0.0.1:9001".into(), "flag", Some("--listen"))
    );
    assert_eq!(
        seen("rate_limit"),
        ("20/60".into(), "env", Some("KEYFLOW_RATE_LIMIT"))
    );
    assert_eq!(
        seen("database_url"),
        (
            "postgres://u:***@db/k?password=***".into(),
            "file",
            Some("database_url")
        )
    );
    assert_eq!(
        seen("shutdown_timeout_secs"),
        ("30".into(), "default", None)
    );
    assert_eq!(line("admin_token").source, "env");
    let all = serde_json::to_string(&lines).unwrap();
    for secret in ["hunter2", "hunter3", "a-very-long-admin-token"] {
        assert!(!all.contains(secret), "{all}");
    }
    // Every option but the `_file` ones (shown as what they set) has a
    // line, and every value is known (no "?").
    let expected = OPTIONS.iter().filter(|o| !o.key.ends_with("_file")).count();
    assert_eq!(lines.len(), expected);
    assert!(lines.iter().all(|l| l.value != "?"), "{all}");
}

/// `docs/configuration.md`'s table is generated from `OPTIONS`; with
/// `KEYFLOW_UPDATE_SNAPSHOTS=1` this writes it.
#[test]
fn the_docs_table_is_the_options_list() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (start, end) = ("<!-- options:begin -->\n", "<!-- options:end -->");
    let from = doc.find(start).expect("begin marker") + start.len();
    let to = doc.find(end).expect("end marker");
    let table = markdown_table();
    if std::env::var_os("KEYFLOW_UPDATE_SNAPSHOTS").is_some() {
        let updated = format!("{}{table}{}", &doc[..from], &doc[to..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(
        doc[from..to],
        table,
        "docs/configuration.md is stale: run with KEYFLOW_UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn rejects_bad_values_and_unknown_keys() {
    let bad = ConfigOverrides {
        trusted_proxies: Some("10.0.0.0/8,nonsense".into()),
        ..Default::default()
    };
    assert!(Config::load(&bad).is_err());
    for bad in [
        ConfigOverrides {
            header_read_timeout_secs: Some(0),
            ..Default::default()
        },
        ConfigOverrides {
            shutdown_timeout_secs: Some(0),
            ..Default::default()
        },
    ] {
        assert!(Config::load(&bad).is_err());
    }
    // Removed when the test ends.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(&file, "lisen = \"x\"\n").unwrap();
    assert!(matches!(
        Config::load(&ConfigOverrides {
            config_file: Some(file),
            ..Default::default()
        }),
        Err(ConfigError::File { .. })
    ));
}

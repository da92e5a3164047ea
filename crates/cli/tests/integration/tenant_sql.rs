//! Tenant SQL (`POST /v1/metrics/query`, `GET /v1/metrics/schema`, SPEC §4)
//! and the attack suite: every attack is refused or sees the caller's rows
//! only, through both layers and through layer two alone, on both stores.

use std::time::{Duration, Instant};

use keyflow_store::Store;
use keyflow_store::tenant_sql::{
    CheckedQuery, Dialect, Limits, QueryFailure, QueryOutput, RECORD_FUNCTIONS, check, shapes,
};
use serde_json::json;

use crate::backend_tests;
use crate::harness::{Backend, Tenant, TestApp};
use crate::metrics_api::credential_and_token;

const QUERY: &str = "/v1/metrics/query";

/// Events of the caller (`aa_…`, 3 of them) and of another project
/// (`zz_…`, 150), so a leak shows as a `zz_` text or a count over 3.
async fn two_tenants(app: &TestApp) -> (Tenant, Tenant) {
    let mine = app.tenant().await;
    let other = app.tenant().await;
    let stored = app
        .post(
            "/v1/events/batch",
            &mine.key,
            json!({"events": [
                {"name": "aa_signup", "external_id": "aa_u1", "properties": {"plan": "pro"}},
                {"name": "aa_view", "email": "aa_someone@a.io", "properties": {"plan": "free"}},
                {"name": "aa_view", "anonymous_id": "aa_anon"},
            ]}),
        )
        .await;
    assert!(stored.status < 300, "{}", stored.body);
    for batch in 0..3 {
        let events: Vec<_> = (0..50)
            .map(|i| {
                json!({"name": "zz_secret_event", "email": format!("zz_victim{batch}_{i}@b.io"),
                       "properties": {"zz": "zz_secret_value"}})
            })
            .collect();
        let stored = app
            .post("/v1/events/batch", &other.key, json!({"events": events}))
            .await;
        assert!(stored.status < 300, "{}", stored.body);
    }
    (mine, other)
}

fn dialect_of(backend: Backend) -> Dialect {
    match backend {
        Backend::Sqlite => Dialect::Sqlite,
        Backend::Postgres | Backend::ThreeInstances => Dialect::Postgres,
    }
}

async fn queries_answer_over_the_callers_rows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, other) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let (_, _, other_token) = credential_and_token(&app, &other.key).await;

    let sql = "SELECT name, count(*) AS n FROM events GROUP BY name ORDER BY name";
    let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["columns"], json!(["name", "n"]));
    assert_eq!(
        reply.body["rows"],
        json!([["aa_signup", 1], ["aa_view", 2]])
    );
    assert_eq!(reply.body["row_count"], 2);
    assert_eq!(reply.body["truncated"], false);
    assert_eq!(reply.body["cached"], false);
    assert!(reply.body["elapsed_ms"].is_u64());
    assert!(reply.body["computed_at"].is_string());
    assert!(reply.header("age").is_none());

    // The same query written differently is the same cache entry on
    // PostgreSQL; on SQLite, where spacing can change an answer's column
    // names, only the same text is.
    let again = app
        .post(
            QUERY,
            &token,
            json!({"sql": "SELECT name, count(*) AS n\n  FROM events  GROUP BY name /* again */ ORDER BY name -- again"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["cached"], backend != Backend::Sqlite);
    assert_eq!(again.body["rows"], reply.body["rows"]);
    assert_eq!(again.header("age").is_some(), backend != Backend::Sqlite);
    let same = app.post(QUERY, &token, json!({"sql": sql})).await;
    assert_eq!(same.body["cached"], true);
    // ... but never another project's entry.
    let theirs = app.post(QUERY, &other_token, json!({"sql": sql})).await;
    assert_eq!(theirs.body["cached"], false);
    assert_eq!(theirs.body["rows"], json!([["zz_secret_event", 150]]));

    // Contacts, repeated column names, JSON properties, a trailing `;`.
    let contacts = app
        .post(
            QUERY,
            &token,
            json!({"sql": "SELECT count(*) AS n, count(*) AS n FROM contacts;"}),
        )
        .await;
    assert_eq!(contacts.status, 200, "{}", contacts.body);
    assert_eq!(contacts.body["columns"], json!(["n", "n"]));
    assert_eq!(contacts.body["rows"], json!([[2, 2]]));
    let plan = match backend {
        Backend::Sqlite => {
            "SELECT json_extract(properties, '$.plan') AS plan FROM events WHERE name = 'aa_signup'"
        }
        Backend::Postgres | Backend::ThreeInstances => {
            "SELECT properties->>'plan' AS plan FROM events WHERE name = 'aa_signup'"
        }
    };
    let plan = app.post(QUERY, &token, json!({"sql": plan})).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.body["rows"], json!([["pro"]]));
    let none = app
        .post(
            QUERY,
            &token,
            json!({"sql": "SELECT id FROM events WHERE 1 = 0"}),
        )
        .await;
    assert_eq!(none.body["columns"], json!(["id"]));
    assert_eq!(none.body["rows"], json!([]));

    // The row limit.
    let many = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10005) SELECT x FROM n";
    let many = app.post(QUERY, &token, json!({"sql": many})).await;
    assert_eq!(many.status, 200, "{}", many.body);
    assert_eq!(many.body["row_count"], 10_000);
    assert_eq!(many.body["truncated"], true);
    assert_eq!(many.body["rows"][9_999], json!([10_000]));

    // Refusals: 422 with the reason and the position.
    let refused = app
        .post(QUERY, &token, json!({"sql": "SELECT id\nFROM api_keys"}))
        .await;
    refused.assert_error(422, "validation_failed");
    let details = &refused.body["error"]["details"];
    assert_eq!(details["reason"], "refused");
    assert_eq!(details["position"], json!({"line": 2, "column": 6}));
    assert_eq!(details["fields"][0]["field"], "sql");
    assert!(
        details["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("api_keys"),
        "{details}"
    );
    let unknown_column = app
        .post(
            QUERY,
            &token,
            json!({"sql": "SELECT project_id FROM events"}),
        )
        .await;
    unknown_column.assert_error(422, "validation_failed");
    assert_eq!(unknown_column.body["error"]["details"]["reason"], "error");
    let bad = app.post(QUERY, &token, json!({"sql": 5})).await;
    bad.assert_error(422, "validation_failed");
    let missing = app.post(QUERY, &token, json!({})).await;
    assert_eq!(missing.status, 422, "{}", missing.body);

    // The token guards it like the metrics.
    let no_token = app.post(QUERY, "", json!({"sql": sql})).await;
    no_token.assert_error(401, "missing_api_key");
    let with_key = app.post(QUERY, &mine.key, json!({"sql": sql})).await;
    with_key.assert_error(401, "invalid_api_key");

    // The schema.
    let schema = app.get("/v1/metrics/schema", &token).await;
    assert_eq!(schema.status, 200, "{}", schema.body);
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres | Backend::ThreeInstances => "postgresql",
    };
    assert_eq!(schema.body["dialect"], dialect);
    assert_eq!(schema.body["relations"][0]["name"], "events");
    assert_eq!(schema.body["relations"][1]["name"], "contacts");
    assert_eq!(schema.body["relations"][0]["columns"][0]["name"], "id");
    assert_eq!(schema.body["limits"]["max_rows"], 10_000);
    assert_eq!(schema.body["limits"]["timeout_ms"], 5_000);
    let functions = schema.body["functions"].as_array().unwrap();
    assert!(functions.contains(&json!("count")));
    assert!(!functions.contains(&json!("pg_sleep")));
    assert!(!functions.contains(&json!("load_extension")));
}

/// Every function the schema lists works on its store: the allow-lists of
/// both layers agree, and none names a function the engine lacks.
async fn every_listed_function_runs(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, _) = two_tenants(&app).await;
    let dialect = dialect_of(backend);
    for function in dialect.functions() {
        let call = match function {
            "count" | "sum" | "avg" | "min" | "max" | "total" | "group_concat" | "bool_and"
            | "bool_or" | "stddev" | "variance" | "string_agg" => match function {
                "group_concat" | "string_agg" => format!("{function}(name, ',')"),
                "bool_and" | "bool_or" => format!("{function}(name = 'x')"),
                _ => format!("{function}(timestamp)"),
            },
            "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" => {
                format!("{function}() OVER (ORDER BY id)")
            }
            "ntile" => "ntile(2) OVER (ORDER BY id)".into(),
            "lag" | "lead" | "first_value" | "last_value" => {
                format!("{function}(name) OVER (ORDER BY id)")
            }
            "nth_value" => "nth_value(name, 1) OVER (ORDER BY id)".into(),
            "coalesce" | "ifnull" | "nullif" => format!("{function}(contact_id, 'x')"),
            "iif" => "iif(name = 'x', 1, 2)".into(),
            "abs" | "round" => format!("{function}(timestamp)"),
            "length" | "lower" | "upper" | "trim" | "ltrim" | "rtrim" | "typeof" => {
                format!("{function}(name)")
            }
            "replace" => "replace(name, 'a', 'b')".into(),
            "substr" => "substr(name, 1, 2)".into(),
            "instr" | "strpos" => format!("{function}(name, 'a')"),
            "split_part" => "split_part(name, '_', 1)".into(),
            "left" | "right" => format!("{function}(name, 2)"),
            "concat" | "greatest" | "least" => format!("{function}(name, 'x')"),
            "date" | "datetime" | "time" | "julianday" | "unixepoch" => {
                format!("{function}(timestamp / 1000, 'unixepoch')")
            }
            "strftime" => "strftime('%Y', timestamp / 1000, 'unixepoch')".into(),
            "json_extract" => "json_extract(properties, '$.plan')".into(),
            "json_array_length" | "json_type" | "json_valid" => format!("{function}(properties)"),
            "jsonb_extract_path_text" => "jsonb_extract_path_text(properties, 'plan')".into(),
            "jsonb_typeof" => "jsonb_typeof(properties)".into(),
            "jsonb_array_length" => "jsonb_array_length('[1]'::jsonb)".into(),
            "now" => "now()".into(),
            "date_trunc" => "date_trunc('day', to_timestamp(timestamp / 1000))".into(),
            "date_part" => "date_part('year', to_timestamp(timestamp / 1000))".into(),
            "to_timestamp" => "to_timestamp(timestamp / 1000)".into(),
            "to_char" => "to_char(to_timestamp(timestamp / 1000), 'YYYY')".into(),
            other => panic!("no sample call for {other}: add one"),
        };
        let sql = format!("SELECT {call} FROM events");
        let query = check(&sql, dialect).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let result = app
            .store
            .run_tenant_query(&mine.project_id, &query, Limits::default())
            .await;
        assert!(result.is_ok(), "{sql}: {:?}", result.err());
    }
}

/// What must not come back: another project's data, or anything from a
/// table other than the two relations.
fn assert_nothing_leaked(sql: &str, how: &str, result: &Result<QueryOutput, QueryFailure>) {
    assert_no_markers(sql, how, result);
    if let Ok(output) = result {
        for value in output.rows.iter().flatten() {
            if let Some(n) = value.as_i64() {
                assert!(
                    !(100..1_000_000_000_000).contains(&n),
                    "{how}: {sql} returned the count {n}"
                );
            }
        }
    }
}

/// No marker of another project's rows or of a secret table.
fn assert_no_markers(sql: &str, how: &str, result: &Result<QueryOutput, QueryFailure>) {
    let text = match result {
        Ok(output) => serde_json::to_string(&(&output.columns, &output.rows)).unwrap(),
        Err(failure) => failure.to_string(),
    };
    for marker in ["zz_", "CREATE TABLE", "key_digest", "secret_digest"] {
        assert!(
            !text.contains(marker),
            "{how}: {sql} returned {marker}: {text}"
        );
    }
}

/// Attacks each layer must refuse on its own (both stores).
const REFUSED_BY_BOTH: &[&str] = &[
    "SELECT * FROM api_keys",
    "SELECT * FROM \"api_keys\"",
    "SELECT * FROM operators",
    "SELECT * FROM sessions",
    "SELECT * FROM audit_log",
    "SELECT * FROM metrics_tokens",
    "SELECT * FROM metrics_credentials",
    "SELECT * FROM event_counts_hourly",
    "SELECT * FROM unique_contacts_daily",
    "SELECT * FROM contact_days",
    "SELECT * FROM workspaces",
    "SELECT * FROM projects",
    "SELECT * FROM events WHERE id IN (SELECT id FROM api_keys)",
    "SELECT (SELECT count(*) FROM operators)",
    // SQLite reports count(*) of a table without its database name.
    "SELECT count(*) FROM api_keys",
    "SELECT count(*) FROM \"sessions\"",
    "SELECT name FROM events UNION SELECT name FROM projects",
    "SELECT e.name FROM events e JOIN api_keys k ON 1 = 1",
    "WITH k AS (SELECT * FROM api_keys) SELECT * FROM k",
    "SELECT * FROM/**/api_keys",
    "SELECT * FROM events; DELETE FROM events",
    "DELETE FROM events",
    "UPDATE contacts SET email = 'x'",
    "INSERT INTO events (id) VALUES ('x')",
    "DROP TABLE events",
    "CREATE TABLE stolen (a TEXT)",
    "SELECT load_extension('/tmp/x')",
    "SELECT readfile('/etc/passwd')",
    "SELECT writefile('/tmp/x', 'y')",
];

const REFUSED_ON_SQLITE: &[&str] = &[
    "SELECT * FROM main.events",
    "SELECT count(*) FROM main.events",
    "SELECT * FROM \"main\".\"events\"",
    "SELECT * FROM main.api_keys",
    "SELECT * FROM [api_keys]",
    "SELECT * FROM `api_keys`",
    "SELECT * FROM temp.sqlite_master",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM sqlite_schema",
    "SELECT * FROM sqlite_temp_master",
    "SELECT count(*) FROM sqlite_master",
    "SELECT count(*) FROM main.operators",
    "WITH RECURSIVE api_keys(x) AS (SELECT 1) SELECT count(*) FROM main.api_keys",
    "SELECT * FROM temp.sqlite_schema",
    "SELECT * FROM pragma_table_info('api_keys')",
    "SELECT * FROM pragma_database_list",
    "SELECT * FROM json_each('[1]')",
    "SELECT * FROM json_tree('{}')",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT * FROM dbstat",
    "SELECT * FROM sqlite_dbpage",
    "SELECT name FROM events UNION SELECT name FROM main.events",
    "SELECT count(*) OVER () FROM main.events",
    "SELECT e.name FROM events e JOIN main.contacts c ON 1 = 1",
    "WITH events AS (SELECT * FROM main.events) SELECT * FROM events",
    "WITH contacts AS (SELECT * FROM main.contacts) SELECT count(*) FROM contacts",
    "SELECT * FROM events WHERE id IN (SELECT id FROM main.events)",
    "PRAGMA table_info(api_keys)",
    "ATTACH DATABASE ':memory:' AS x",
    "CREATE TEMP VIEW x AS SELECT * FROM main.events",
    "DROP VIEW events",
    "VACUUM INTO '/tmp/keyflow-stolen.db'",
    "SELECT sqlite_version()",
    "SELECT randomblob(1000000000)",
    "EXPLAIN QUERY PLAN SELECT * FROM events",
    "SELECT * FROM events INDEXED BY events_name",
    "SELECT 'a' MATCH 'a'",
    "SELECT 1 WHERE 'a' REGEXP 'a'",
    "WITH pragma_table_info AS (SELECT 1) SELECT 1 WHERE 'id' IN pragma_table_info('api_keys')",
];

const REFUSED_ON_POSTGRES: &[&str] = &[
    "SELECT * FROM public.events",
    "SELECT count(*) FROM public.events",
    "SELECT * FROM public.api_keys",
    "SELECT * FROM \"public\".\"api_keys\"",
    "SELECT * FROM tenant_query_sessions",
    "SELECT * FROM public.tenant_query_sessions",
    "SELECT * FROM public.tenant_query_role",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT name FROM events UNION SELECT name FROM public.events",
    "SELECT count(*) OVER () FROM public.events",
    "WITH events AS (SELECT * FROM public.events) SELECT * FROM events",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT dblink('host=127.0.0.1', 'SELECT 1')",
    "COPY events TO STDOUT",
    "SET ROLE postgres",
    "RESET ROLE",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT * FROM events, set_config('role', 'postgres', true)",
    "SELECT 'api_keys'::regclass",
];

/// Allowed by PostgreSQL to the reader role, refused by layer one: calls
/// outside the function list (a whole-row function called as a column) and
/// searches that cannot be cancelled. Through layer two alone they still
/// see the caller's rows only.
const OWN_ROWS_BUT_REFUSED_ON_POSTGRES: &[&str] = &[
    "SELECT e.row_to_json FROM events e",
    // Round 11: Unicode-escaped names the parser read as `U & "…"`: the
    // whole row as text, and a record function.
    r#"SELECT U&"\0065"::text FROM events e LIMIT 1"#,
    r#"SELECT e.U&"row_to_json" FROM events e LIMIT 1"#,
    "SELECT strpos(name, 'a') FROM events",
    "SELECT position('a' IN name) FROM events",
    "SELECT replace(name, 'a', 'b') FROM events",
    "SELECT split_part(name, '_', 1) FROM events",
    "SELECT btrim(name, 'a') FROM events",
    "SELECT ltrim(name, 'a') FROM events",
    "SELECT \"ltrim\"(name, 'a') FROM events",
    "SELECT \"rtrim\"(name, 'a') FROM events",
    "SELECT trim(BOTH 'a' FROM name) FROM events",
];

/// Catalogue reads layer two lets through on PostgreSQL (every role may
/// read them), so layer one must refuse them; through layer two alone they
/// still show no tenant's rows.
const CATALOGUES_ON_POSTGRES: &[&str] = &[
    "SELECT * FROM pg_stat_activity",
    "SELECT * FROM pg_settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_class",
    "SELECT current_setting('is_superuser')",
];

async fn attacks_are_refused_by_each_layer(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, _) = two_tenants(&app).await;
    let store: &dyn Store = app.store.as_ref();
    let dialect = dialect_of(backend);
    let own: &[&str] = match backend {
        Backend::Sqlite => REFUSED_ON_SQLITE,
        Backend::Postgres | Backend::ThreeInstances => REFUSED_ON_POSTGRES,
    };
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    for sql in REFUSED_BY_BOTH.iter().chain(own) {
        assert!(check(sql, dialect).is_err(), "layer one let through {sql}");
        let bypass = CheckedQuery::skipping_layer_one_for_tests(sql, dialect);
        let result = store
            .run_tenant_query(&mine.project_id, &bypass, limits)
            .await;
        assert_nothing_leaked(sql, "layer two", &result);
        assert!(result.is_err(), "layer two ran {sql}: {:?}", result.ok());
    }
    if backend == Backend::Postgres {
        for sql in CATALOGUES_ON_POSTGRES
            .iter()
            .chain(OWN_ROWS_BUT_REFUSED_ON_POSTGRES)
        {
            assert!(check(sql, dialect).is_err(), "layer one let through {sql}");
            let bypass = CheckedQuery::skipping_layer_one_for_tests(sql, dialect);
            let result = store
                .run_tenant_query(&mine.project_id, &bypass, limits)
                .await;
            assert_no_markers(sql, "layer two", &result);
        }
    }
    if backend == Backend::Postgres {
        // What a query leaves on its session does not outlive it: an
        // advisory lock (Keyflow's own writes take some) is released.
        let lock =
            CheckedQuery::skipping_layer_one_for_tests("SELECT pg_advisory_lock(424242)", dialect);
        let _ = store
            .run_tenant_query(&mine.project_id, &lock, limits)
            .await;
        let url = app.db.url.clone();
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(424242)")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert!(free, "a tenant query's advisory lock outlived it");
    }
    // Reads that pass both layers see the caller's rows only.
    let mut own_rows = vec![
        "SELECT * FROM events",
        "SELECT * FROM events WHERE name = 'zz_secret_event'",
        "SELECT * FROM contacts WHERE email LIKE 'zz_%'",
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM contacts",
        "SELECT e.name, c.email FROM events e LEFT JOIN contacts c ON c.id = e.contact_id",
        "WITH x AS (SELECT * FROM events) SELECT count(*) FROM x",
        "SELECT count(*) FROM events a, events b",
        "SELECT name, count(*) OVER () FROM events",
        "SELECT name FROM events UNION ALL SELECT email FROM contacts",
    ];
    if backend == Backend::Sqlite {
        own_rows.push("SELECT * FROM events WHERE CAST(name AS integer) = 1");
    }
    // A WITH query named like a stored table: the caller's rows on
    // PostgreSQL. SQLite's authorizer reports a WITH query it does not fold
    // away (and fenced ones it never does, see tenant_sql::fences) under its
    // own name, like a stored table, so there it is refused: closed, never
    // open.
    let shadow = "WITH api_keys AS (SELECT * FROM events) SELECT count(*) FROM api_keys";
    let result = store
        .run_tenant_query(&mine.project_id, &check(shadow, dialect).unwrap(), limits)
        .await;
    assert_nothing_leaked(shadow, "both layers", &result);
    match backend {
        Backend::Postgres | Backend::ThreeInstances => {
            assert_eq!(result.unwrap().rows, vec![vec![json!(3)]])
        }
        Backend::Sqlite => assert!(
            matches!(&result, Err(QueryFailure::Refused { reason, .. }) if reason.contains("api_keys")),
            "{result:?}"
        ),
    }
    for sql in own_rows {
        let checked = check(sql, dialect).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let result = store
            .run_tenant_query(&mine.project_id, &checked, limits)
            .await;
        assert_nothing_leaked(sql, "both layers", &result);
        assert!(result.is_ok(), "{sql}: {:?}", result.err());
    }
    // A failed cast reports the value: with the views' security barrier it
    // can only be a value of the caller's rows.
    if backend == Backend::Postgres {
        for sql in [
            "SELECT * FROM events WHERE CAST(name AS integer) = 1",
            "SELECT * FROM contacts WHERE CAST(email AS integer) = 1",
        ] {
            let checked = check(sql, dialect).unwrap();
            let result = store
                .run_tenant_query(&mine.project_id, &checked, limits)
                .await;
            assert_nothing_leaked(sql, "both layers", &result);
            let message = result.unwrap_err().to_string();
            assert!(message.contains("aa_"), "{sql}: {message}");
        }
    }
    // Through layer two alone, SQLite's temp views are the caller's rows.
    if backend == Backend::Sqlite {
        for sql in [
            "SELECT * FROM temp.events",
            "SELECT count(*) FROM temp.contacts",
        ] {
            let bypass = CheckedQuery::skipping_layer_one_for_tests(sql, dialect);
            let result = store
                .run_tenant_query(&mine.project_id, &bypass, limits)
                .await;
            assert_nothing_leaked(sql, "layer two", &result);
            assert!(result.is_ok(), "{sql}: {:?}", result.err());
        }
    }
    // And the answers name the caller's rows exactly.
    let all = check("SELECT name FROM events ORDER BY name", dialect).unwrap();
    let all = store
        .run_tenant_query(&mine.project_id, &all, limits)
        .await
        .unwrap();
    assert_eq!(
        all.rows,
        vec![
            vec![json!("aa_signup")],
            vec![json!("aa_view")],
            vec![json!("aa_view")]
        ]
    );
}

/// A query sent on its own task, so the test can do other things meanwhile.
fn in_background(
    app: &TestApp,
    token: &str,
    sql: String,
) -> tokio::task::JoinHandle<crate::harness::Reply> {
    let request = reqwest::Client::new()
        .post(format!("{}{QUERY}", app.base_url))
        .bearer_auth(token)
        .json(&json!({"sql": sql}));
    tokio::spawn(TestApp::reply(request))
}

/// Runaway queries stop at the time limit with a clear error, and the
/// instance keeps answering others meanwhile.
async fn runaway_queries_stop_at_the_time_limit(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.query_timeout_ms = 1_000).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let endless =
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    let cartesian = "SELECT count(*) FROM events a, events b, events c, events d, events e, events f, events g, events h, events i, events j, events k, events l, events m, events n, events o, events p, events q, events r, events s, events t";
    for sql in [endless, cartesian] {
        let started = Instant::now();
        let slow = in_background(&app, &token, sql.to_string());
        // Meanwhile, events are stored and read at the usual speed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let during = Instant::now();
        let stored = app
            .post(
                "/v1/events",
                &mine.key,
                json!({"name": "aa_during", "anonymous_id": "x"}),
            )
            .await;
        assert!(stored.status < 300, "{}", stored.body);
        let listed = app.get("/v1/events?limit=5", &mine.key).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert!(
            during.elapsed() < Duration::from_millis(800),
            "other requests waited {:?} behind a running query",
            during.elapsed()
        );
        let reply = slow.await.unwrap();
        reply.assert_error(422, "validation_failed");
        assert_eq!(
            reply.body["error"]["details"]["reason"], "timeout",
            "{sql}: {}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 s limit"),
            "{}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{sql} ran {:?}",
            started.elapsed()
        );
    }
    if backend == Backend::Postgres {
        // Through layer two alone: pg_sleep and a cleared statement_timeout
        // are still stopped.
        for sql in [
            "SELECT pg_sleep(30)",
            "SELECT set_config('statement_timeout', '0', true), pg_sleep(30)",
        ] {
            let started = Instant::now();
            let bypass = CheckedQuery::skipping_layer_one_for_tests(sql, Dialect::Postgres);
            let limits = Limits {
                timeout: Duration::from_secs(1),
                ..Limits::default()
            };
            let result = app
                .store
                .run_tenant_query(&mine.project_id, &bypass, limits)
                .await;
            assert!(
                matches!(result, Err(QueryFailure::TimedOut(_))),
                "{sql}: {result:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(4), "{sql}");
        }
        // The reader connections are still good afterwards.
        let fine = check("SELECT count(*) FROM events", Dialect::Postgres).unwrap();
        let after = app
            .store
            .run_tenant_query(&mine.project_id, &fine, Limits::default())
            .await
            .unwrap();
        // The caller's 3 events and the 2 stored while queries ran.
        assert_eq!(after.rows, vec![vec![json!(5)]]);
    }
}

/// At most two queries at once per project; the third is told to retry.
async fn two_queries_at_once_per_project(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.query_timeout_ms = 1_500).await;
    let (mine, other) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let (_, _, other_token) = credential_and_token(&app, &other.key).await;
    let slow = |n: u32| {
        format!(
            "WITH RECURSIVE n(x) AS (SELECT {n} UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
        )
    };
    let polled = json!({"sql": "SELECT count(*) AS n FROM events"});
    let first = app.post(QUERY, &token, polled.clone()).await;
    assert_eq!(first.body["cached"], false, "{}", first.body);
    let mut running = Vec::new();
    for n in 0..2 {
        running.push(in_background(&app, &token, slow(n)));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = app.post(QUERY, &token, json!({"sql": slow(7)})).await;
    third.assert_error(429, "rate_limited");
    assert_eq!(third.header("retry-after"), Some("1"));
    // Checking a text is work too: not done past the project's share.
    let unchecked = app.post(QUERY, &token, json!({"sql": "SELEC 1"})).await;
    unchecked.assert_error(429, "rate_limited");
    // An answer the cache holds for this very text needs no slot.
    let again = app.post(QUERY, &token, polled).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["cached"], true);
    assert_eq!(again.body["rows"], first.body["rows"]);
    // Another project of the same workspace shares the workspace's share
    // (half of the instance's four): it waits too.
    let sibling = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/workspaces/{}/projects", mine.workspace_id),
            json!({"name": "Staging", "environment": "test"}),
        )
        .await;
    assert_eq!(sibling.status, 201, "{}", sibling.body);
    let sibling_key = app
        .admin(
            reqwest::Method::POST,
            &format!(
                "/admin/v1/projects/{}/keys",
                sibling.body["id"].as_str().unwrap()
            ),
            json!({"name": "root", "type": "secret"}),
        )
        .await;
    assert_eq!(sibling_key.status, 201, "{}", sibling_key.body);
    let (_, _, sibling_token) =
        credential_and_token(&app, sibling_key.body["key"].as_str().unwrap()).await;
    let schema = app.get("/v1/metrics/schema", &sibling_token).await;
    assert_eq!(schema.body["limits"]["concurrent_queries_per_workspace"], 2);
    let refused = app
        .post(
            QUERY,
            &sibling_token,
            json!({"sql": "SELECT count(*) FROM events"}),
        )
        .await;
    refused.assert_error(429, "rate_limited");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workspace"),
        "{}",
        refused.body
    );
    // Another project is not held up by this one's queries.
    let theirs = app
        .post(
            QUERY,
            &other_token,
            json!({"sql": "SELECT count(*) FROM events"}),
        )
        .await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    for reply in running {
        assert_eq!(
            reply.await.unwrap().body["error"]["details"]["reason"],
            "timeout"
        );
    }
    let after = app.post(QUERY, &token, json!({"sql": slow(9)})).await;
    assert_eq!(after.body["error"]["details"]["reason"], "timeout");
}

/// The dashboard's SQL console (members too): the answer as a table, the
/// schema beside it, errors at the field with where, the cache state; the
/// form needs its CSRF token and never reaches another project.
async fn dashboard_sql_console(backend: Backend) {
    use crate::dashboard::{PASSWORD, get_page, post_form, sign_in, text};
    let app = TestApp::start(backend).await;
    let (mine, other) = two_tenants(&app).await;
    let added = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/workspaces/{}/operators", mine.workspace_id),
            json!({"email": "member@acme.io", "password": PASSWORD, "role": "member"}),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let cookie = sign_in(&app, "member@acme.io").await;
    let page = text(
        &get_page(
            &app,
            &format!("/analytics?project={}", mine.project_id),
            Some(&cookie),
        )
        .await,
    );
    assert!(
        page.contains("<textarea id=\"sql-text\" name=\"sql\""),
        "{page}"
    );
    assert!(
        page.contains("<code>contact_id</code>"),
        "the schema is beside it"
    );
    let csrf = crate::dashboard::csrf_of(&page);
    let path = format!(
        "/analytics?project={}&interval=day&range=7&event=",
        mine.project_id
    );
    let sql = "SELECT name, count(*) AS n, NULL AS empty FROM events GROUP BY name ORDER BY name";
    let run = |sql: &'static str, csrf: String| {
        let (app, cookie, path, project) =
            (&app, cookie.clone(), path.clone(), mine.project_id.clone());
        async move {
            post_form(
                app,
                &path,
                Some(&cookie),
                &[("csrf", &csrf), ("project", &project), ("sql", sql)],
            )
            .await
        }
    };
    let answered = run(sql, csrf.clone()).await;
    assert_eq!(
        answered.status,
        200,
        "{}",
        text(&answered)
            .split("id=\"sql-error\">")
            .nth(1)
            .unwrap_or("")
            .split("</p>")
            .next()
            .unwrap_or("")
    );
    let html = text(&answered);
    assert!(
        html.contains("<th scope=\"col\">name</th><th scope=\"col\">n</th>"),
        "{html}"
    );
    assert!(
        html.contains("<tr><td>aa_view</td><td>2</td><td class=\"muted\">NULL</td></tr>"),
        "{html}"
    );
    assert!(html.contains("2 rows. Computed now in"), "{html}");
    assert!(!html.contains("zz_"), "another project's rows");
    assert!(
        html.contains("<option value=\"7\" selected>"),
        "the charts keep their range"
    );
    assert!(
        html.contains("GROUP BY name ORDER BY name</textarea>"),
        "the query stays"
    );
    let again = text(&run(sql, csrf.clone()).await);
    assert!(again.contains("From the cache: computed at"), "{again}");
    // A refusal: at the field, with where, and the query kept.
    let refused = run("SELECT *\nFROM api_keys", csrf.clone()).await;
    assert_eq!(refused.status, 422);
    let html = text(&refused);
    assert!(html.contains("role=\"alert\" id=\"sql-error\""), "{html}");
    assert!(html.contains("aria-describedby=\"sql-error\""));
    assert!(html.contains("api_keys"));
    assert!(html.contains("(at line 2, column 6)"), "{html}");
    assert!(html.contains("FROM api_keys</textarea>"));
    // Escaped like everything else.
    let markup = text(&run("SELECT '<script>x</script>' AS \"<b>\"", csrf.clone()).await);
    assert!(!markup.contains("<script>x"), "{markup}");
    // Without the form's token: refused, nothing run.
    let forged = run(sql, "forged".into()).await;
    assert_eq!(forged.status, 403);
    // Another tenant's project id is not a way in.
    let theirs = post_form(
        &app,
        &format!("/analytics?project={}", other.project_id),
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("project", &other.project_id),
            ("sql", sql),
        ],
    )
    .await;
    assert_eq!(theirs.status, 404);
    assert!(!text(&theirs).contains("zz_"));
}

/// Queries that nest deeply (long operator chains, many levels of
/// subqueries) are answered or refused, never a crash: the server keeps
/// answering afterwards.
async fn deep_queries_are_answered_or_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let chain = |n: usize, op: &str| format!("SELECT 1 WHERE {}", vec!["1 = 1"; n].join(op));
    let sum = |n: usize| format!("SELECT {}", vec!["1"; n].join(" + "));
    let nested = |n: usize| {
        format!(
            "SELECT count(*) FROM {}events{}",
            "(SELECT * FROM ".repeat(n),
            ") x".repeat(n)
        )
    };
    let exists = |n: usize| {
        format!(
            "SELECT 1 WHERE {}1 = 1{}",
            "EXISTS (SELECT 1 WHERE ".repeat(n),
            ")".repeat(n)
        )
    };
    let cases = |n: usize| {
        format!(
            "SELECT {}1{}",
            "CASE WHEN 1 = 1 THEN ".repeat(n),
            " END".repeat(n)
        )
    };
    let unions = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
    // 200: answered. 422: refused by the engine's own limits (SQLite allows
    // an expression 100 deep and 50 SELECTs in a compound). None: too
    // complex for layer one.
    for (sql, status) in [
        (sum(60), Some(200)),
        (sum(900), None),
        (sum(5_000), None),
        (chain(300, " OR "), None),
        (chain(2_000, " AND "), None),
        (nested(12), Some(200)),
        (exists(16), Some(200)),
        (cases(30), Some(200)),
        (unions(300), None),
        (unions(2_000), None),
    ] {
        let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
        let structure = sql.matches(['+', '(', ')']).count()
            + sql.matches(" OR ").count()
            + sql.matches(" AND ").count()
            + sql.matches("SELECT").count()
            + sql.matches("UNION").count()
            + sql.matches("ALL").count()
            + sql.matches("WHERE").count();
        if let Some(status) = status {
            assert_eq!(reply.status, status, "{}…: {}", &sql[..60], reply.body);
        } else if structure <= 1_000 {
            // Answered, or refused by the engine with its reason.
            assert!(
                reply.status == 200 || reply.body["error"]["details"]["reason"] == "error",
                "{}…: {}",
                &sql[..60],
                reply.body
            );
        } else {
            reply.assert_error(422, "validation_failed");
            let message = reply.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("too complex"), "{message}");
        }
    }
    let live = app.get("/livez", "").await;
    assert_eq!(live.status, 200);
}

/// No single step of a query may outlast its time limit by much (SQLite
/// checks the time between steps): `instr`, `replace` and the trims are
/// linear, values at most 100 KB; and no answer grows past the size cap,
/// even one row of it.
async fn costly_values_stay_bounded(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.query_timeout_ms = 2_000).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    // A string doubled 16 times: 65 536 characters.
    let big = "WITH RECURSIVE d(s, i) AS (SELECT 'a', 0 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 16) ";
    if backend == Backend::Sqlite {
        let searches = [
            format!("{big}SELECT instr(s, substr(s, 1, 30000) || 'b') FROM d WHERE i = 16"),
            format!(
                "{big}SELECT length(replace(s, substr(s, 1, 30000) || 'b', 'x')) FROM d WHERE i = 16"
            ),
            format!("{big}SELECT length(trim(s || 'b', s)) FROM d WHERE i = 16"),
        ];
        for sql in searches {
            let started = Instant::now();
            let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
            assert_eq!(reply.status, 200, "{sql}: {}", reply.body);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{sql}: {:?}",
                started.elapsed()
            );
        }
        // SQLite's meaning is kept.
        let same = app
            .post(
                QUERY,
                &token,
                json!({"sql": "SELECT instr('héllo', 'llo'), instr(X'0102', X'02'), instr('a', NULL), \
                              replace('aXbX', 'X', 'yy'), replace('ab', '', 'z'), trim('  a  '), \
                              ltrim('xxaxx', 'x'), rtrim('xxaxx', 'x'), trim('xyax', 'xy'), instr(12345, 34), \
                              instr(2e20, 'e'), replace(1e100, 'e', 'E')"}),
            )
            .await;
        assert_eq!(
            same.body["rows"],
            json!([[
                3, 2, null, "ayybyy", "ab", "a", "axx", "xxa", "a", 3, 4, "1.0E+100"
            ]]),
            "{}",
            same.body
        );
        // Values are capped at 100 KB.
        let grown = app
            .post(
                QUERY,
                &token,
                json!({"sql": "WITH RECURSIVE d(s, i) AS (SELECT 'a', 0 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 20) SELECT length(s) FROM d WHERE i = 20"}),
            )
            .await;
        grown.assert_error(422, "validation_failed");
        assert!(
            grown.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("100000 bytes")
        );
    }
    // One row over the answer's size cap: cut short, not sent.
    let wide: Vec<String> = (0..80).map(|i| format!("s AS c{i}")).collect();
    let sql = format!("{big}SELECT {} FROM d WHERE i = 16", wide.join(", "));
    let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["truncated"], true);
    assert_eq!(reply.body["row_count"], 0);
    if backend == Backend::Postgres {
        // Values serde_json would not take come back as their JSON text.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let odd = app
            .post(
                QUERY,
                &token,
                json!({"sql": format!("SELECT 1e400 AS big, CAST('{deep}' AS json) AS deep, CAST('\"\\ud800\"' AS json) AS lone")}),
            )
            .await;
        assert_eq!(odd.status, 200, "{}", odd.body);
        assert!(odd.body["rows"][0][0].as_str().unwrap().starts_with("1000"));
        assert_eq!(odd.body["rows"][0][1], json!(deep));
        assert_eq!(odd.body["rows"][0][2], json!("\"\\ud800\""));
    }
}

/// Two queries that differ only in spacing, keyword case and comments share
/// a cache entry; two that differ in a literal's spelling do not (SQLite
/// reads `0x41` as 65 and `X'41'` as a blob).
async fn the_cache_keeps_different_literals_apart(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let (a, b) = match backend {
        Backend::Sqlite => ("SELECT 0x41 AS v", "SELECT X'41' AS v"),
        Backend::Postgres | Backend::ThreeInstances => {
            ("SELECT '1.0'::text AS v", "SELECT '1.00'::text AS v")
        }
    };
    let first = app.post(QUERY, &token, json!({"sql": a})).await;
    let second = app.post(QUERY, &token, json!({"sql": b})).await;
    assert_eq!(second.body["cached"], false, "{}", second.body);
    assert_ne!(first.body["rows"], second.body["rows"]);
    let spaced = app
        .post(
            QUERY,
            &token,
            json!({"sql": format!("  {}  -- again", a.replace(' ', "\n  "))}),
        )
        .await;
    let again = app.post(QUERY, &token, json!({"sql": a})).await;
    assert_eq!(again.body["cached"], true, "{}", again.body);
    // Reformatting a query finds its answer on PostgreSQL; SQLite names a
    // column that is neither aliased nor a column by its text as written,
    // at any level, so there a query is compared as written.
    assert_eq!(
        spaced.body["cached"],
        backend != Backend::Sqlite,
        "{}",
        spaced.body
    );
    if backend == Backend::Sqlite {
        let tight = app
            .post(QUERY, &token, json!({"sql": "SELECT 1 + 1"}))
            .await;
        let loose = app
            .post(QUERY, &token, json!({"sql": "SELECT 1  +  1"}))
            .await;
        assert_eq!(loose.body["cached"], false, "{}", loose.body);
        assert_eq!(tight.body["columns"][0], "1 + 1", "{}", tight.body);
        assert_eq!(loose.body["columns"][0], "1  +  1", "{}", loose.body);
    }
}

/// The instance-wide cap: past it, any project is told to retry (503 with
/// `Retry-After`); and a browser's request (with `Origin`) is refused on the
/// query and schema routes like on every metrics route.
async fn the_instance_cap_and_browsers_are_refused(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.query_timeout_ms = 1_500;
        c.max_concurrent_queries = 1;
    })
    .await;
    let (mine, other) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let (_, _, other_token) = credential_and_token(&app, &other.key).await;
    let endless =
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    let running = in_background(&app, &token, endless.to_string());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let full = app
        .post(
            QUERY,
            &other_token,
            json!({"sql": "SELECT count(*) FROM events"}),
        )
        .await;
    full.assert_error(503, "unavailable");
    assert_eq!(full.header("retry-after"), Some("1"));
    assert_eq!(
        running.await.unwrap().body["error"]["details"]["reason"],
        "timeout"
    );
    let after = app
        .post(
            QUERY,
            &other_token,
            json!({"sql": "SELECT count(*) FROM events"}),
        )
        .await;
    assert_eq!(after.status, 200, "{}", after.body);
    for (method, path) in [
        (reqwest::Method::POST, QUERY),
        (reqwest::Method::GET, "/v1/metrics/schema"),
    ] {
        let request = reqwest::Client::new()
            .request(method, format!("{}{path}", app.base_url))
            .bearer_auth(&token)
            .header("origin", "https://evil.example")
            .json(&json!({"sql": "SELECT 1"}));
        TestApp::reply(request)
            .await
            .assert_error(403, "insecure_key_usage");
    }
}

/// Values built as big as the engine lets a query build them within its
/// time (a string doubled until it fails, JSON made of it, numbers squared),
/// then used by every allowed operation that does a lot of work per value:
/// each query still stops about at its limit, and the instance keeps
/// answering meanwhile. (PostgreSQL's JSON containment, which once ran 72 s
/// past its limit on such values, is refused by layer one.)
async fn big_values_stop_at_the_time_limit(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.query_timeout_ms = 1_000).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let doubled = "WITH RECURSIVE d(s, i) AS (SELECT 'ab', 0 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 40) ";
    let json = "WITH RECURSIVE d(s, i) AS (SELECT '1', 0 UNION ALL SELECT s || ',' || s, i + 1 FROM d WHERE i < 40) ";
    let squared = "WITH RECURSIVE d(x, i) AS (SELECT CAST(7 AS numeric), 0 UNION ALL SELECT x * x + 1, i + 1 FROM d WHERE i < 40) ";
    // Many costly steps in one row's expression (PostgreSQL checks for
    // cancellation only between rows): 400 remainders of 131 072-digit
    // numbers, 60 copies of a doubled string.
    let nines = "WITH RECURSIVE d(s, i) AS (SELECT '9', 0 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 17), \
                 n AS (SELECT CAST(s AS numeric) AS a, CAST(substr(s, 1, 65000) AS numeric) AS b FROM d WHERE i = 17) ";
    let remainders = vec!["a % b"; 400].join(" + ");
    let copies = vec!["length(s || s) / 1000"; 60].join(" + ");
    // Levels that each use a column twice: inlined, the expression doubles
    // per level (2^40 here); fenced (every WITH query materialized, every
    // derived table behind OFFSET 0), each level is one addition per row.
    let levels: Vec<String> = (1..=40)
        .map(|i| format!("c{i} AS (SELECT x + x AS x FROM c{})", i - 1))
        .collect();
    let doubling_ctes = format!(
        "WITH c0 AS (SELECT count(*) * 0 + 1 AS x FROM events), {} SELECT x > 0 FROM c40",
        levels.join(", ")
    );
    let nested = (0..30).fold("SELECT 1.0 AS x".to_string(), |inner, _| {
        format!("SELECT x + x AS x FROM ({inner}) AS s")
    });
    // The same through LATERAL, each level ending in an inner subquery
    // (whose parenthesis once caught the fence instead of the level's own).
    let lateral = (1..=20).fold(
        "SELECT count(x20) FROM (SELECT timestamp * 0 AS x0 FROM events WHERE (SELECT true)) a0"
            .to_string(),
        |chain, i| {
            format!(
                "{chain}, LATERAL (SELECT x{p} + x{p} AS x{i} WHERE (SELECT true)) a{i}",
                p = i - 1
            )
        },
    );
    let queries = [
        doubling_ctes,
        nested,
        lateral,
        format!("{nines}SELECT length(CAST({remainders} AS text)) FROM n"),
        format!("{doubled}SELECT {copies} FROM d WHERE i = 24"),
        format!("{doubled}SELECT string_agg(a.s, '') FROM d a, d b WHERE a.i > 15"),
        format!(
            "{json}SELECT jsonb_array_length(CAST('[' || s || ']' AS jsonb)) FROM d ORDER BY i DESC LIMIT 1"
        ),
        format!("{doubled}SELECT count(*) FROM d a, d b WHERE a.s LIKE b.s || '%c'"),
        format!(
            "{doubled}SELECT count(*) FROM d a, d b WHERE upper(a.s) LIKE '%' || lower(b.s) || '%c%'"
        ),
        format!("{doubled}SELECT count(*) FROM d a, d b WHERE a.s = b.s || 'c' OR length(a.s) < 0"),
        format!(
            "{doubled}SELECT count(*) FROM d a, d b, d c WHERE substr(a.s, 2) || c.s > b.s || a.s"
        ),
        format!(
            "{json}SELECT count(*) FROM d a, d b WHERE CAST('[' || a.s || ']' AS jsonb) -> 5 = CAST('[' || b.s || ']' AS jsonb) -> 7"
        ),
        format!("{squared}SELECT count(*) FROM d a, d b, d c WHERE a.x * b.x > c.x / (a.x + 1)"),
    ];
    for sql in queries {
        let started = Instant::now();
        let slow = in_background(&app, &token, sql.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = Instant::now();
        let listed = app.get("/v1/events?limit=5", &mine.key).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert!(
            during.elapsed() < Duration::from_millis(800),
            "other requests waited {:?} behind {sql}",
            during.elapsed()
        );
        let reply = slow.await.unwrap();
        // PostgreSQL: stopped at the limit or by its own 1 GB value limit,
        // never answered past it. SQLite's values stop at 100 KB, so some
        // of these simply answer.
        if reply.status != 200 {
            reply.assert_error(422, "validation_failed");
        }
        assert!(
            started.elapsed() < Duration::from_millis(3_500),
            "{sql} ran {:?}: {}",
            started.elapsed(),
            reply.body
        );
    }
}

/// SQLite: a query that needs more memory than its ceiling stops with
/// `details.reason: "memory"`, and the instance and its next queries are
/// fine; the same query runs under the default ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queries_stop_at_their_memory_and_disk_ceilings() {
    const CEILING: usize = 1024 * 1024;
    let app = TestApp::start_with(Backend::Sqlite, |c| c.query_max_memory_bytes = CEILING).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let schema = app.get("/v1/metrics/schema", &token).await;
    assert_eq!(
        schema.body["limits"]["max_memory_bytes"], CEILING,
        "{}",
        schema.body
    );
    // 200 000 distinct values: a few MiB of temporary b-tree.
    let hungry = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                  WHERE i < 200000) SELECT count(DISTINCT i) FROM n";
    for _ in 0..3 {
        let reply = app.post(QUERY, &token, json!({"sql": hungry})).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(
            reply.body["error"]["details"]["reason"], "memory",
            "{}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 MiB"),
            "{}",
            reply.body
        );
        let fine = app
            .post(QUERY, &token, json!({"sql": "SELECT count(*) FROM events"}))
            .await;
        assert_eq!(fine.status, 200, "{}", fine.body);
        assert_eq!(fine.body["rows"][0][0], 3, "{}", fine.body);
    }
    // Temporary files: a sort of 200 000 rows writes runs to a file.
    let sort = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                WHERE i < 200000) SELECT count(*) FROM (SELECT i || 'abcdefghijklmnopqrstuvwxyz' \
                AS v FROM n ORDER BY v DESC)";
    let sort = check(sort, Dialect::Sqlite).unwrap();
    let small_disk = Limits {
        max_temporary_file_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let refused = app
        .store
        .run_tenant_query(&mine.project_id, &sort, small_disk)
        .await;
    match refused {
        Err(QueryFailure::Failed(message)) => {
            assert!(
                message.contains("more than 1 MiB of temporary files"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let sorted = app
        .store
        .run_tenant_query(&mine.project_id, &sort, Limits::default())
        .await
        .unwrap();
    assert_eq!(sorted.rows[0][0], 200_000);
    let checked = check(hungry, Dialect::Sqlite).unwrap();
    let unbounded = app
        .store
        .run_tenant_query(&mine.project_id, &checked, Limits::default())
        .await
        .unwrap();
    assert_eq!(unbounded.rows[0][0], 200_000);
}

/// SQLite: queries that overlap without a gap no longer keep the
/// write-ahead log from starting over (round 10 grew it ~1 MiB/s, for
/// good): past its limit new queries wait until it has been truncated, and
/// the queries still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_overlapping_queries_let_the_log_start_over() {
    const LIMIT: u64 = 1024 * 1024;
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.query_timeout_ms = 600;
        c.query_wal_limit_bytes = LIMIT;
    })
    .await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let wal = format!("{}-wal", app.db.url.trim_start_matches("sqlite://"));
    let slow = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r \
                WHERE i < 100000000) SELECT count(*) FROM r";
    let until = Instant::now() + Duration::from_secs(6);
    let mut loops = Vec::new();
    for start in [0, 300] {
        let (base, token) = (app.base_url.clone(), token.clone());
        loops.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(start)).await;
            let client = reqwest::Client::new();
            let mut answered = 0;
            while Instant::now() < until {
                let reply = TestApp::reply(
                    client
                        .post(format!("{base}{QUERY}"))
                        .bearer_auth(&token)
                        .json(&json!({"sql": format!("{slow} -- {answered} {start}")})),
                )
                .await;
                assert!(matches!(reply.status, 422 | 503), "{}", reply.body);
                answered += 1;
            }
            answered
        }));
    }
    let padding = "x".repeat(2_000);
    let (mut grew_past, mut came_back) = (false, false);
    let mut batch = 0;
    while Instant::now() < until {
        // Below the key's 100 requests a minute.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events: Vec<_> = (0..100)
            .map(|i| json!({"name": "aa_load", "anonymous_id": format!("w{batch}-{i}"), "properties": {"p": padding}}))
            .collect();
        let stored = app
            .post("/v1/events/batch", &mine.key, json!({"events": events}))
            .await;
        assert!(stored.status < 300, "{}", stored.body);
        batch += 1;
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size > 2 * LIMIT {
            grew_past = true;
        } else if grew_past && size < LIMIT {
            came_back = true;
        }
    }
    for task in loops {
        assert!(task.await.unwrap() >= 3, "the queries kept answering");
    }
    assert!(
        grew_past,
        "the load should grow the log while queries overlap"
    );
    assert!(
        came_back,
        "the log was never truncated while queries overlapped"
    );
}

/// PostgreSQL: what a query builds stays small (migration 0017): text and
/// JSON at most 256 KiB, arithmetic on numbers of at most 4 KiB; the same
/// operators work as before on ordinary values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_values_stay_small() {
    let app = TestApp::start(Backend::Postgres).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let ordinary = app
        .post(
            QUERY,
            &token,
            json!({"sql": "SELECT 'a' || 'b' || 1, 2 || 'x', CAST(NULL AS text) || 'a', \
                           CAST('{\"a\": 1}' AS jsonb) || CAST('{\"b\": 2}' AS jsonb), \
                           CAST(1.5 AS numeric) * 2 + 1 - 0.5 / 2 % 1, \
                           (SELECT count(*) FROM events WHERE name LIKE 'aa\\_v%' ESCAPE '\\'), \
                           to_char(CAST('2026-11-30' AS date), 'YYYY-MM')"}),
        )
        .await;
    assert_eq!(ordinary.status, 200, "{}", ordinary.body);
    assert_eq!(
        ordinary.body["rows"],
        json!([["ab1", "2x", null, {"a": 1, "b": 2}, 3.75, 2, "2026-11"]])
    );
    let doubled = "WITH RECURSIVE d(s, i) AS (SELECT 'ab', 1 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 40) ";
    // 'ab' doubled up to 2^18 bytes: 256 KiB, the cap.
    let up_to_cap = "WITH RECURSIVE d(s, i) AS (SELECT 'ab', 1 UNION ALL SELECT s || s, i + 1 FROM d WHERE i < 18) ";
    for sql in [
        format!("{doubled}SELECT max(length(s)) FROM d"),
        format!("{up_to_cap}SELECT max(length(s || 'x')) FROM d"),
        "WITH RECURSIVE d(x, i) AS (SELECT CAST(7 AS numeric), 0 UNION ALL SELECT x * x + 1, i + 1 FROM d WHERE i < 40) SELECT count(*) FROM d".to_string(),
    ] {
        let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
        reply.assert_error(422, "validation_failed");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("over what a tenant query may build"),
            "{sql}: {message}"
        );
    }
    // Up to the cap is fine.
    let under = app
        .post(
            QUERY,
            &token,
            json!({"sql": format!("{up_to_cap}SELECT max(length(s)) FROM d")}),
        )
        .await;
    assert_eq!(under.body["rows"], json!([[262_144]]), "{}", under.body);
    // The reader role's own settings (read through layer two alone, since
    // layer one refuses current_setting): no JIT, and temporary files
    // bounded (the test's database user is a superuser, so it may set it).
    let settings = CheckedQuery::skipping_layer_one_for_tests(
        "SELECT current_setting('jit'), current_setting('temp_file_limit')",
        Dialect::Postgres,
    );
    let output = app
        .store
        .run_tenant_query(&mine.project_id, &settings, Limits::default())
        .await
        .unwrap();
    assert_eq!(output.rows, vec![vec![json!("off"), json!("1GB")]]);
    // Each query gets a backend of its own: what one grew (PostgreSQL's
    // per-backend caches) is gone for the next.
    let pid =
        CheckedQuery::skipping_layer_one_for_tests("SELECT pg_backend_pid()", Dialect::Postgres);
    let mut pids = Vec::new();
    for _ in 0..3 {
        let output = app
            .store
            .run_tenant_query(&mine.project_id, &pid, Limits::default())
            .await
            .unwrap();
        pids.push(output.rows[0][0].clone());
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "{pids:?}");
}

/// Every PostgreSQL function that `alias.name` could call on a whole row is
/// on the allow-list or refused by name (`RECORD_FUNCTIONS`): checked
/// against this server's catalogue, so a newer PostgreSQL cannot add one
/// unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_functions_are_all_known() {
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&crate::harness::postgres_base_url())
            .await
            .unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT p.proname::text FROM pg_proc p \
         WHERE p.pronargs >= 1 \
           AND format_type(p.proargtypes[0], NULL) IN ('record', 'anyelement', '\"any\"', 'anycompatible', 'anynonarray') \
           AND (p.pronargs = 1 OR p.pronargdefaults >= p.pronargs - 1 OR p.provariadic <> 0) \
         ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(names.iter().any(|n| n == "pg_typeof"), "{names:?}");
    let allowed = Dialect::Postgres.functions();
    let unseen: Vec<&String> = names
        .iter()
        .filter(|n| !allowed.contains(&n.as_str()) && !RECORD_FUNCTIONS.contains(&n.as_str()))
        .collect();
    assert!(unseen.is_empty(), "add to RECORD_FUNCTIONS: {unseen:?}");
}

/// Queries that engines would copy into exponentially many expressions
/// while preparing them (before any time limit applies) are refused by
/// layer one at once: nested BETWEEN and IN (PostgreSQL), result aliases
/// used in nested subqueries (SQLite); so are recursive UNIONs without ALL
/// (PostgreSQL) and sort operators. The instance answers meanwhile.
async fn copies_are_refused_before_they_are_made(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let between = shapes::nested_between(30);
    let listed = shapes::nested_in(12);
    let aliases = shapes::nested_aliases(12);
    let using = "SELECT name FROM events ORDER BY name USING <".to_string();
    let recursive =
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r) SELECT count(*) FROM r"
            .to_string();
    // Each store refuses what it would copy; SQLite answers nested BETWEEN
    // and IN (it evaluates a left operand once).
    // SQLite copies a WITH query per name that reads it (20 doubling
    // levels: 3.1 GB in prepare); a column number wrapped in parentheses is
    // still a column number.
    let withs = shapes::doubling_with_queries(20);
    let numbered = shapes::numbered_columns(5, "(1)", 10);
    // SQLite copies a named window into every function naming it.
    let named_window = shapes::named_windows(8, 5);
    // SQLite propagates `column = constant` into every other use of the
    // column, term after term (21 terms: 2.2 GB in prepare)...
    let chained = shapes::constant_chain();
    // ...and copies a WITH query read through scalar subqueries too.
    let through_subqueries = shapes::with_reads_through_subqueries(12);
    // PostgreSQL: a whole row as text has no size limit (1 GB measured).
    let whole_row =
        "SELECT length(t::text) FROM (SELECT name, properties FROM events) t".to_string();
    let (refused, answered) = match backend {
        Backend::Sqlite => (
            vec![
                aliases,
                using,
                withs,
                numbered,
                named_window,
                chained,
                through_subqueries,
            ],
            vec![between, listed],
        ),
        Backend::Postgres | Backend::ThreeInstances => {
            (vec![between, listed, using, recursive, whole_row], vec![])
        }
    };
    for sql in &refused {
        let started = Instant::now();
        let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
        reply.assert_error(422, "validation_failed");
        assert_eq!(
            reply.body["error"]["details"]["reason"], "refused",
            "{}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?} for {}…",
            started.elapsed(),
            &sql[..60]
        );
    }
    for sql in &answered {
        let started = Instant::now();
        let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // The same shapes, a few levels deep, are ordinary queries.
    let shallow = [
        "SELECT count(*) FROM events e WHERE (e.name BETWEEN 'a' AND 'z') BETWEEN false AND true",
        "SELECT name || name AS a0 FROM events WHERE (SELECT a0 || a0 AS a1 WHERE a1 > '') IS NOT NULL",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT count(*) FROM r",
    ];
    for sql in shallow {
        if backend != Backend::Sqlite && sql.contains("AS a1") {
            // PostgreSQL has no aliases in WHERE at all.
            continue;
        }
        let reply = app.post(QUERY, &token, json!({"sql": sql})).await;
        assert_eq!(reply.status, 200, "{sql}: {}", reply.body);
    }
    let live = app.get("/livez", "").await;
    assert_eq!(live.status, 200);
}

backend_tests!(
    copies_are_refused_before_they_are_made,
    big_values_stop_at_the_time_limit,
    the_instance_cap_and_browsers_are_refused,
    deep_queries_are_answered_or_refused,
    costly_values_stay_bounded,
    the_cache_keeps_different_literals_apart,
    dashboard_sql_console,
    queries_answer_over_the_callers_rows,
    every_listed_function_runs,
    attacks_are_refused_by_each_layer,
    runaway_queries_stop_at_the_time_limit,
    two_queries_at_once_per_project,
);

/// The SQL block under "PostgreSQL reader role" in docs/metrics-api.md.
fn documented_reader_sql() -> String {
    let doc = include_str!("../../../../docs/metrics-api.md");
    let section = &doc[doc.find("### PostgreSQL reader role").expect("the section")..];
    let start = section.find("```sql\n").expect("its SQL") + "```sql\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_string()
}

/// A database user without CREATEROLE: queries answer 503 naming the role
/// and the docs; the metrics keep working; after a DBA runs the documented
/// SQL once, queries work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_createrole_answers_503_until_a_dba_makes_the_role() {
    let base = crate::harness::postgres_base_url();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (owner, database) = (format!("kf_owner_{suffix}"), format!("kf_test_{suffix}"));
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .unwrap();
    for statement in [
        format!("CREATE ROLE {owner} LOGIN NOCREATEROLE"),
        format!("CREATE DATABASE {database} OWNER {owner}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    // The same server, as the owner, in its database.
    let (scheme_and_user, host_and_db) = base.split_once('@').unwrap();
    let scheme = &scheme_and_user[..scheme_and_user.find("://").unwrap() + 3];
    let host = host_and_db.rsplit_once('/').unwrap().0;
    let url = format!("{scheme}{owner}@{host}/{database}");

    let mut app = TestApp::launch(
        "127.0.0.1:0",
        crate::harness::TestDb::existing(&url),
        keyflow_server::config::Config {
            admin_token: Some(keyflow_server::config::Secret::new(
                crate::harness::ADMIN_TOKEN,
            )),
            ..Default::default()
        },
    )
    .await;
    let (mine, _) = two_tenants(&app).await;
    let (_, _, token) = credential_and_token(&app, &mine.key).await;
    let refused = app
        .post(QUERY, &token, json!({"sql": "SELECT count(*) FROM events"}))
        .await;
    refused.assert_error(503, "unavailable");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("keyflow_tenant_"), "{message}");
    assert!(message.contains("CREATEROLE"), "{message}");
    assert!(message.contains("docs/metrics-api.md"), "{message}");
    assert!(refused.header("retry-after").is_some());
    let metric = app.get("/v1/metrics/events.count", &token).await;
    assert_eq!(metric.status, 200, "{}", metric.body);

    // A DBA runs the documented SQL in Keyflow's database.
    let admin_url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
    let mut dba = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(documented_reader_sql()))
        .execute(&mut dba)
        .await
        .unwrap();
    sqlx::Connection::close(dba).await.unwrap();
    // A new instance (or this one after 30 s) sets up with it.
    let mut second = TestApp::launch(
        "127.0.0.1:0",
        crate::harness::TestDb::existing(&url),
        app.state.config.clone(),
    )
    .await;
    let works = second
        .post(QUERY, &token, json!({"sql": "SELECT count(*) FROM events"}))
        .await;
    assert_eq!(works.status, 200, "{}", works.body);
    assert_eq!(works.body["rows"], json!([[3]]));
    second.stop().await;
    app.stop().await;

    let role: String = sqlx::query_scalar("SELECT 'keyflow_tenant_' || left(md5($1), 12)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    for statement in [
        format!("DROP DATABASE {database} WITH (FORCE)"),
        format!("DROP ROLE \"{role}\""),
        format!("DROP ROLE {owner}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

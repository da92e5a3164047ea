use super::super::shapes::{
    constant_chain, doubling_with_queries, nested_aliases, nested_between, nested_in,
    numbered_columns, with_reads_through_subqueries,
};
use super::lists::MAX_COMPUTED_ITEMS;
use super::*;

fn refusal(sql: &str, dialect: Dialect) -> String {
    match check(sql, dialect) {
        Ok(_) => panic!("accepted: {sql}"),
        Err(e) => e.to_string(),
    }
}

fn both(sql: &str) -> [Result<CheckedQuery, QueryFailure>; 2] {
    [check(sql, Dialect::Sqlite), check(sql, Dialect::Postgres)]
}

#[test]
fn copies_that_double_per_level_are_refused() {
    // PostgreSQL: BETWEEN copies its left operand, so 30 levels are 2^30
    // copies; a few are nothing.
    let Err(QueryFailure::Refused {
        reason,
        position: Some(_),
    }) = check(&nested_between(30), Dialect::Postgres)
    else {
        panic!("accepted, or refused without a position")
    };
    assert!(reason.contains("too complex once prepared"), "{reason}");
    check(&nested_between(5), Dialect::Postgres).unwrap();
    // ...and `IN` with computed items copies it once per item.
    let refused = refusal(&nested_in(12), Dialect::Postgres);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    // Literal items share one comparison: a thousand of them copy nothing.
    let literals = vec!["'x'"; 1_000].join(", ");
    check(
        &format!("SELECT count(*) FROM events e WHERE (e.name IN ({literals})) IN (true, false)"),
        Dialect::Postgres,
    )
    .unwrap();
    // SQLite: a result alias used in WHERE is a copy of its expression.
    let refused = refusal(&nested_aliases(12), Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    check(&nested_aliases(4), Dialect::Sqlite).unwrap();
    // Many uses of one small alias are many copies too.
    let uses = vec!["t"; 2_000].join(", ");
    let refused = refusal(
        &format!(
            "SELECT name || name || name || name || name AS t FROM events WHERE 'x' IN ({uses})"
        ),
        Dialect::Sqlite,
    );
    assert!(refused.contains("too complex once prepared"), "{refused}");
    // Ordinary aliases, BETWEEN and IN pass on both.
    for sql in [
        "SELECT name AS n, count(*) AS c FROM events GROUP BY n ORDER BY c DESC",
        "SELECT count(*) FROM events WHERE timestamp BETWEEN '2026-01-01' AND '2026-02-01'",
        "SELECT name || '!' AS shout FROM events WHERE shout LIKE 'a%' AND name IN (name, 'x')",
    ] {
        for result in both(sql) {
            result.unwrap();
        }
    }
}

#[test]
fn sqlite_copies_of_numbered_columns_and_pattern_matches_are_counted() {
    // `GROUP BY 1` stands for a copy of the first result column; nested,
    // (k+1)^n copies (5 levels of 10 took 1 GB in SQLite's prepare).
    let refused = refusal(&numbered_columns(5, "1", 10), Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    check(
        "SELECT name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1",
        Dialect::Sqlite,
    )
    .unwrap();
    // A LIKE weighs like many nodes: used again through an alias or a
    // column number, its copies add up fast (each is |text| × |pattern|
    // of work inside one row, where no time limit can stop it).
    let uses = vec!["l"; 25].join(" OR ");
    let refused = refusal(
        &format!("SELECT name LIKE '%a%' AS l FROM events WHERE {uses}"),
        Dialect::Sqlite,
    );
    assert!(refused.contains("too complex once prepared"), "{refused}");
    let refused = refusal(
        &format!(
            "SELECT name LIKE '%a%' FROM events GROUP BY {}",
            vec!["1"; 30].join(",")
        ),
        Dialect::Sqlite,
    );
    assert!(refused.contains("too complex once prepared"), "{refused}");
    check(
        "SELECT name LIKE '%a%' AS l, count(*) FROM events WHERE l GROUP BY 1",
        Dialect::Sqlite,
    )
    .unwrap();
    // At most ten pattern matches in a query, on SQLite too.
    let likes = ["name LIKE '%a%'"; 11].join(" OR ");
    for result in both(&format!("SELECT count(*) FROM events WHERE {likes}")) {
        let Err(refused) = result else {
            panic!("accepted eleven LIKEs")
        };
        assert!(refused.to_string().contains("LIKE"), "{refused}");
    }
}

#[test]
fn sqlite_copies_of_with_queries_and_hidden_aliases_are_counted() {
    // SQLite copies a WITH query for every name that reads it, before
    // anything is materialised: 20 doubling levels took 3.1 GB.
    let refused = refusal(&doubling_with_queries(20), Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    check(&doubling_with_queries(4), Dialect::Sqlite).unwrap();
    check(&doubling_with_queries(20), Dialect::Postgres).unwrap();
    check(
        "WITH d AS (SELECT name, count(*) AS n FROM events GROUP BY name) \
         SELECT a.name, b.n FROM d a JOIN d b ON a.name = b.name",
        Dialect::Sqlite,
    )
    .unwrap();
    // A second column of the same name does not hide the first's size.
    let mut condition = "a10 > ''".to_string();
    for k in (0..10).rev() {
        condition = format!(
            "EXISTS (SELECT {} AS a{}, 0 AS a{} WHERE {condition})",
            vec![format!("a{k}"); 4].join(" || "),
            k + 1,
            k + 1
        );
    }
    let sql = format!("SELECT name || name AS a0, 0 AS a0 FROM events WHERE {condition}");
    let refused = refusal(&sql, Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    // Column numbers count through parentheses, `+` and COLLATE.
    for term in ["(1)", "+1", "1 COLLATE BINARY"] {
        let refused = refusal(&numbered_columns(4, term, 10), Dialect::Sqlite);
        assert!(
            refused.contains("too complex once prepared"),
            "{term}: {refused}"
        );
    }
}

#[test]
fn sqlite_constant_chains_and_with_reads_in_subqueries_are_bounded() {
    // Constant propagation: each term copies the one before twice.
    let refused = refusal(&constant_chain(), Dialect::Sqlite);
    assert!(refused.contains("at most one column"), "{refused}");
    for sql in [
        "SELECT count(*) FROM events e JOIN contacts c ON c.id = e.contact_id WHERE e.name = 'x'",
        "SELECT count(*) FROM events WHERE name = upper(anonymous_id)",
        "SELECT count(*) FROM events WHERE name IS id || id",
    ] {
        check(sql, Dialect::Sqlite).unwrap();
    }
    check(&constant_chain(), Dialect::Postgres).unwrap();
    // A WITH query read through scalar subqueries, doubling per level.
    let refused = refusal(&with_reads_through_subqueries(12), Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    // ...or copied through an alias.
    let sql = format!(
        "WITH c AS (SELECT count(*) AS v FROM events WHERE anonymous_id IN ({})) \
         SELECT (SELECT v FROM c) AS t FROM events WHERE t IN ({}) LIMIT 1",
        vec!["anonymous_id"; 900].join(","),
        vec!["t"; 200].join(",")
    );
    let refused = refusal(&sql, Dialect::Sqlite);
    assert!(refused.contains("too complex once prepared"), "{refused}");
    check(
        "WITH c AS (SELECT count(*) AS v FROM events) SELECT (SELECT v FROM c) AS t, name FROM events WHERE t > 1",
        Dialect::Sqlite,
    )
    .unwrap();
}

#[test]
fn named_windows_are_refused_on_sqlite() {
    let sql =
        "SELECT count(*) OVER w + count(*) OVER w FROM events WINDOW w AS (PARTITION BY name)";
    let refused = refusal(sql, Dialect::Sqlite);
    assert!(refused.contains("named windows"), "{refused}");
    check(sql, Dialect::Postgres).unwrap();
    check(
        "SELECT count(*) OVER (PARTITION BY name ORDER BY id) FROM events",
        Dialect::Sqlite,
    )
    .unwrap();
}

#[test]
fn whole_rows_are_not_values_on_postgres() {
    for sql in [
        "SELECT t::text FROM events t",
        "SELECT length('' || t) FROM (SELECT name, name AS n2 FROM events) t",
        "SELECT count(e) FROM events e",
        "WITH w AS (SELECT name FROM events) SELECT w FROM w",
        "SELECT CAST(e.* AS text) FROM events e",
    ] {
        let refused = refusal(sql, Dialect::Postgres);
        assert!(refused.contains("whole row"), "{sql}: {refused}");
    }
    for sql in [
        "SELECT e.name, count(*) FROM events e GROUP BY e.name",
        "SELECT t.* FROM (SELECT name FROM events) t",
        "SELECT name FROM events",
    ] {
        check(sql, Dialect::Postgres).unwrap();
    }
    // SQLite has no whole-row values: a name there is a column or nothing.
    check("SELECT e.name FROM events e", Dialect::Sqlite).unwrap();
}

#[test]
fn many_names_and_many_aliases_are_checked_quickly() {
    let aliases = (0..6_200)
        .map(|i| format!("1 b{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let names = vec!["z"; 23_000].join(",");
    let sql = format!("SELECT {aliases} FROM events WHERE z IN ({names})");
    assert!(sql.len() < MAX_SQL_BYTES);
    let started = std::time::Instant::now();
    let _ = check(&sql, Dialect::Sqlite);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn time_zones_are_written_not_computed_on_postgres() {
    for sql in [
        "SELECT now() AT TIME ZONE ('UTC' || name) FROM events",
        "SELECT date_trunc('day', now(), 'ABD+' || name) FROM events",
        "SELECT CAST('2020-01-01 00:00 ' || name AS timestamptz) FROM events",
        "SELECT (properties->>'at')::timestamp FROM events",
        "SELECT CAST(name AS date) FROM events",
    ] {
        let refused = refusal(sql, Dialect::Postgres);
        assert!(refused.contains("on this store"), "{sql}: {refused}");
    }
    for sql in [
        "SELECT now() AT TIME ZONE 'Europe/Paris', date_trunc('day', now(), 'UTC')",
        "SELECT CAST('2020-01-01' AS date), '2020-01-01 10:00+02'::timestamptz",
        "SELECT to_timestamp(properties->>'at', 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM events",
        "SELECT date_trunc('day', timestamp) FROM events",
    ] {
        check(sql, Dialect::Postgres).unwrap();
    }
}

#[test]
fn computed_list_items_are_counted_on_postgres() {
    let items = |n: usize| {
        (0..n)
            .map(|i| format!("e.name || '{i}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let at_most = format!(
        "SELECT count(*) FROM events e WHERE e.id IN ({})",
        items(MAX_COMPUTED_ITEMS)
    );
    check(&at_most, Dialect::Postgres).unwrap();
    let past = format!(
        "SELECT count(*) FROM events e WHERE e.id IN ({}) OR (e.id, e.name) = ('a', 'b')",
        items(MAX_COMPUTED_ITEMS)
    );
    let refused = refusal(&past, Dialect::Postgres);
    assert!(refused.contains("not literals"), "{refused}");
    check(&past, Dialect::Sqlite).unwrap();
    // Rows of literals are literals.
    let rows = vec!["('a', 'b')"; 300].join(", ");
    check(
        &format!("SELECT count(*) FROM events e WHERE (e.id, e.name) IN ({rows})"),
        Dialect::Postgres,
    )
    .unwrap();
}

#[test]
fn recursive_with_must_union_all_on_postgres() {
    let distinct = "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 10) \
                    SELECT count(*) FROM r";
    let refused = refusal(distinct, Dialect::Postgres);
    assert!(refused.contains("UNION ALL"), "{refused}");
    check(distinct, Dialect::Sqlite).unwrap();
    let all = distinct.replace("UNION", "UNION ALL");
    for result in both(&all) {
        result.unwrap();
    }
    // Not recursive: UNION is an ordinary set operation.
    check(
        "WITH r AS (SELECT name FROM events UNION SELECT email FROM contacts) SELECT * FROM r",
        Dialect::Postgres,
    )
    .unwrap();
}

#[test]
fn sort_operators_are_refused_but_join_columns_are_not() {
    for sql in [
        "SELECT name FROM events ORDER BY name USING <",
        "SELECT name FROM events ORDER BY name USING/* */~<~",
        "SELECT count(*) OVER (ORDER BY name USING >) FROM events",
    ] {
        for result in both(sql) {
            let Err(refused) = result else {
                panic!("accepted: {sql}")
            };
            assert!(refused.to_string().contains("USING"), "{refused}");
        }
    }
    for result in both("SELECT count(*) FROM events e JOIN contacts c USING (id)") {
        result.unwrap();
    }
}

#[test]
fn plain_reads_of_the_two_relations_pass() {
    for sql in [
        "SELECT * FROM events",
        "select count(*) from contacts where email like '%@example.com'",
        "SELECT name, count(*) AS n FROM events GROUP BY name ORDER BY n DESC LIMIT 10",
        "WITH t AS (SELECT contact_id FROM events) SELECT count(DISTINCT contact_id) FROM t",
        "SELECT e.name FROM events e JOIN contacts c ON c.id = e.contact_id",
        "SELECT name FROM events UNION ALL SELECT email FROM contacts",
        "SELECT row_number() OVER (PARTITION BY name ORDER BY timestamp) FROM events",
        "SELECT * FROM (SELECT * FROM events) AS sub WHERE sub.id IN (SELECT id FROM events)",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT * FROM n",
        "SELECT CAST(timestamp AS text) FROM events -- a comment",
        "/* leading */ SELECT 1;",
    ] {
        for result in both(sql) {
            assert!(result.is_ok(), "{sql}: {:?}", result.err());
        }
    }
}

#[test]
fn other_relations_are_refused_however_they_are_spelled() {
    for sql in [
        "SELECT * FROM api_keys",
        "SELECT * FROM \"api_keys\"",
        "SELECT * FROM main.events",
        "SELECT * FROM temp.events",
        "SELECT * FROM public.events",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM sqlite_schema",
        "SELECT * FROM sqlite_temp_master",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM pg_catalog.pg_stat_activity",
        "SELECT * FROM pg_stat_activity",
        "SELECT * FROM pg_settings",
        "SELECT * FROM event_counts_hourly",
        "SELECT * FROM events WHERE id IN (SELECT id FROM operators)",
        "SELECT (SELECT secret_hash FROM sessions LIMIT 1)",
        "SELECT * FROM events JOIN audit_log ON true",
        "SELECT name FROM events UNION SELECT name FROM workspaces",
    ] {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let reason = refusal(sql, dialect);
            assert!(reason.contains("not available"), "{sql}: {reason}");
        }
    }
}

#[test]
fn with_names_count_only_where_they_are_in_scope() {
    // A WITH name of a subquery does not cover the outer query.
    let sql = "SELECT * FROM (WITH api_keys AS (SELECT 1) SELECT * FROM api_keys) x, api_keys";
    assert!(refusal(sql, Dialect::Sqlite).contains("api_keys"));
    // Without RECURSIVE, an earlier WITH query does not see a later one.
    let sql = "WITH a AS (SELECT * FROM api_keys), api_keys AS (SELECT 1) SELECT * FROM a";
    assert!(refusal(sql, Dialect::Postgres).contains("api_keys"));
    // A later one sees an earlier one, and the body sees all.
    let sql = "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM a, b";
    assert!(check(sql, Dialect::Sqlite).is_ok());
    // A CTE named like a real table is the tenant's own rows.
    let sql = "WITH api_keys AS (SELECT id FROM events) SELECT * FROM api_keys";
    assert!(check(sql, Dialect::Postgres).is_ok());
}

#[test]
fn writes_ddl_and_settings_are_refused() {
    for sql in [
        "DELETE FROM events",
        "UPDATE contacts SET email = NULL",
        "INSERT INTO events VALUES (1)",
        "DROP TABLE events",
        "CREATE TABLE x (a int)",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA table_info(api_keys)",
        "SET ROLE postgres",
        "RESET ROLE",
        "COPY events TO '/tmp/x'",
        "VACUUM",
        "BEGIN",
        "SELECT * INTO stolen FROM events",
        "SELECT * FROM events FOR UPDATE",
        "WITH d AS (DELETE FROM events RETURNING *) SELECT * FROM d",
    ] {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let result = check(sql, dialect);
            assert!(result.is_err(), "{sql} passed on {dialect:?}");
        }
    }
}

#[test]
fn several_statements_are_refused() {
    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT 1; DELETE FROM events",
        "SELECT 1;\n/* x */ ; SELECT 2",
    ] {
        assert!(
            refusal(sql, Dialect::Sqlite).contains("one statement"),
            "{sql}"
        );
    }
}

#[test]
fn functions_outside_the_list_are_refused_with_their_position() {
    for sql in [
        "SELECT load_extension('x')",
        "SELECT readfile('/etc/passwd')",
        "SELECT writefile('/tmp/x', 'y')",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_ls_dir('.')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_sleep(10)",
        "SELECT set_config('role', 'postgres', true)",
        "SELECT current_setting('is_superuser')",
        "SELECT dblink('host=x', 'select 1')",
        "SELECT pg_catalog.count(*) FROM events",
        "SELECT randomblob(1000000000)",
        "SELECT sqlite_version()",
        "SELECT \"pg_sleep\"(1)",
    ] {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let result = check(sql, dialect);
            let Err(QueryFailure::Refused { reason, position }) = result else {
                panic!("{sql} passed on {dialect:?}");
            };
            assert!(reason.contains("not allowed"), "{sql}: {reason}");
            assert_eq!(position.map(|p| p.line), Some(1), "{sql}");
        }
    }
    let Err(QueryFailure::Refused { position, .. }) = check(
        "SELECT count(*),\n  pg_sleep(1) FROM events",
        Dialect::Postgres,
    ) else {
        panic!("accepted");
    };
    assert_eq!(position, Some(Position { line: 2, column: 3 }));
}

#[test]
fn table_functions_casts_and_operators_outside_the_list_are_refused() {
    for sql in [
        "SELECT * FROM pragma_table_info('api_keys')",
        "SELECT * FROM json_each('[1]')",
        "SELECT * FROM generate_series(1, 10)",
        "SELECT 'pg_authid'::regclass",
        "SELECT CAST('x' AS regproc)",
        "SELECT 1 OPERATOR(pg_catalog.+) 1",
        "SELECT $1",
        "SELECT ?",
    ] {
        assert!(check(sql, Dialect::Postgres).is_err(), "{sql}");
    }
    assert!(
        check(
            "SELECT * FROM pragma_table_info('api_keys')",
            Dialect::Sqlite
        )
        .is_err()
    );
}

#[test]
fn operators_whose_cost_ignores_cancellation_are_refused_on_postgres() {
    for sql in [
        "SELECT properties @> '{\"plan\":\"pro\"}' FROM events",
        "SELECT properties <@ properties FROM events",
        "SELECT properties ?| '{a,b}' FROM events",
        "SELECT properties ?& '{a,b}' FROM events",
        "SELECT properties @? '$.a' FROM events",
        "SELECT properties @@ '$.a == 1' FROM events",
        "SELECT name ~ 'a+' FROM events",
        "SELECT name !~* 'a+' FROM events",
        "SELECT name SIMILAR TO '(a|b)%' FROM events",
        "SELECT 1 FROM events WHERE name ~ ANY(SELECT name FROM events)",
        "SELECT properties #- '{a}' FROM events",
        "SELECT ~ 1",
        "SELECT |/ 4",
        "SELECT 10 ^ 131000",
        "SELECT CAST(name AS text[]) FROM events",
        "SELECT name::numeric[] FROM events",
        "SELECT current_role",
        "SELECT current_schema, name FROM events",
        "SELECT concat(name, name) FROM events",
        "SELECT name LIKE name FROM events",
        "SELECT name LIKE '%' || name FROM events",
        "SELECT name ILIKE 'a' || 'b' FROM events",
        "SELECT name ~~ name FROM events",
        "SELECT name NOT LIKE 'a' ESCAPE name FROM events",
        "SELECT CAST(name AS jsonb) FROM events",
        "SELECT CAST('[' || name || ']' AS json) FROM events",
        "SELECT to_char(timestamp, name) FROM events",
        "SELECT to_timestamp(name, name) FROM events",
        "SELECT CAST(id AS char(10485760)) FROM events",
        "SELECT CAST(id AS varchar(20000)) FROM events",
        "SELECT variance(timestamp), stddev(timestamp) FROM events",
        "SELECT string_agg(name, ',') FROM events",
        "SELECT X'FF' || X'00'",
        "SELECT B'0101'",
        "SELECT name COLLATE \"und-x-icu\" FROM events",
    ] {
        let reason = refusal(sql, Dialect::Postgres);
        assert!(
            ["not allowed", "must be", "at most"]
                .iter()
                .any(|words| reason.contains(words)),
            "{sql}: {reason}"
        );
    }
    // What stays: one value out of a document, compared in linear time.
    for sql in [
        "SELECT properties->>'plan' = 'pro', properties #>> '{a,b}', properties ? 'plan' FROM events",
        "SELECT name LIKE 'a%', name ILIKE '%B', name ~~ 'x', name ^@ 'sign', 5 # 3 FROM events",
        "SELECT -1, +1, NOT true, name || '!' FROM events WHERE id = ANY(SELECT id FROM events)",
    ] {
        assert!(
            check(sql, Dialect::Postgres).is_ok(),
            "{sql}: {:?}",
            check(sql, Dialect::Postgres).err()
        );
    }
    assert!(check("SELECT name GLOB 'a*' FROM events", Dialect::Sqlite).is_err());
    // Patterns: literals of at most 100 bytes, at most 10 per query.
    let long = format!("SELECT name LIKE '{}' FROM events", "a".repeat(101));
    assert!(refusal(&long, Dialect::Postgres).contains("100 bytes"));
    let ten = ["name LIKE 'a%'"; 10].join(" OR ");
    assert!(
        check(
            &format!("SELECT 1 FROM events WHERE {ten}"),
            Dialect::Postgres
        )
        .is_ok()
    );
    let eleven = ["name ILIKE 'a%'"; 11].join(" OR ");
    assert!(
        refusal(
            &format!("SELECT 1 FROM events WHERE {eleven}"),
            Dialect::Postgres
        )
        .contains("at most 10")
    );
    let many = vec!["name"; 101].join(", ");
    assert!(
        refusal(
            &format!("SELECT greatest({many}) FROM events"),
            Dialect::Postgres
        )
        .contains("at most 100")
    );
    let hundred = vec!["name"; 100].join(", ");
    assert!(
        check(
            &format!("SELECT greatest({hundred}) FROM events"),
            Dialect::Postgres
        )
        .is_ok()
    );
    let ids = (0..1001)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        refusal(
            &format!("SELECT 1 FROM events WHERE timestamp IN ({ids})"),
            Dialect::Postgres
        )
        .contains("at most 1000")
    );
    assert!(
        check(
            &format!("SELECT 1 FROM events WHERE timestamp IN ({ids})"),
            Dialect::Sqlite
        )
        .is_ok()
    );
    assert!(
        check(
            "SELECT name COLLATE \"C\", name COLLATE ucs_basic FROM events",
            Dialect::Postgres
        )
        .is_ok()
    );
    assert!(check("SELECT X'41'", Dialect::Sqlite).is_ok());
    // SQLite bounds these itself (values of 100 KB, patterns of 100 B).
    assert!(check("SELECT name LIKE name FROM events", Dialect::Sqlite).is_ok());
    for sql in [
        "SELECT CAST('{\"a\": 1}' AS jsonb), '[1]'::json, jsonb '{}' FROM events",
        "SELECT to_char(timestamp, 'YYYY-MM-DD'), CAST(id AS varchar(100)) FROM events",
        "SELECT name NOT LIKE 'a!%' ESCAPE '!' FROM events",
    ] {
        assert!(
            check(sql, Dialect::Postgres).is_ok(),
            "{sql}: {:?}",
            check(sql, Dialect::Postgres).err()
        );
    }
}

#[test]
fn row_functions_called_as_columns_are_refused_on_postgres() {
    for sql in [
        "SELECT e.pg_typeof FROM events e",
        "SELECT (e).row_to_json FROM events e",
        "SELECT (e).pg_column_size FROM events e",
        "SELECT events.to_jsonb FROM events",
        "SELECT e.\"json_agg\" FROM events e",
    ] {
        let reason = refusal(sql, Dialect::Postgres);
        assert!(reason.contains("alias.function"), "{sql}: {reason}");
    }
    // A subquery's column named like an allowed function is still a column.
    let sql = "SELECT c.count FROM (SELECT name, count(*) FROM events GROUP BY name) c";
    assert!(check(sql, Dialect::Postgres).is_ok());
}

#[test]
fn size_emptiness_and_nul_are_refused_before_parsing() {
    let long = format!("SELECT 1 {}", " ".repeat(super::MAX_SQL_BYTES));
    assert!(refusal(&long, Dialect::Sqlite).contains("bytes"));
    assert!(refusal("  \n ", Dialect::Sqlite).contains("empty"));
    assert!(refusal("SELECT 1\0; DROP TABLE x", Dialect::Sqlite).contains("NUL"));
    let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    assert!(refusal(&deep, Dialect::Postgres).contains("could not be read"));
}

#[test]
fn unreadable_sql_says_where() {
    let Err(QueryFailure::Refused { position, reason }) =
        check("SELECT * FROM events WHERE )", Dialect::Sqlite)
    else {
        panic!("accepted");
    };
    assert!(reason.starts_with("the SQL could not be read"), "{reason}");
    assert!(position.is_some(), "{reason}");
}

#[test]
fn the_normal_form_ignores_spacing_and_comments_only() {
    let a = check(
        "SELECT  count(*)\nFROM /* c */ events -- x",
        Dialect::Postgres,
    )
    .unwrap();
    let b = check("SELECT count(*) FROM events", Dialect::Postgres).unwrap();
    assert_eq!(a.normalized(), b.normalized());
    assert_eq!(a.normalized(), "SELECT count(*) FROM events");
    assert_eq!(a.text(), "SELECT  count(*)\nFROM /* c */ events -- x");
    // Spelling, case and whether there is a space at all all count.
    for (x, y) in [
        ("SELECT 1 -1", "SELECT 1 - 1"),
        ("SELECT 7 AS Name", "SELECT 7 AS name"),
        ("SELECT 'é'", "SELECT 'e'"),
    ] {
        let (x, y) = (
            check(x, Dialect::Postgres).unwrap(),
            check(y, Dialect::Postgres).unwrap(),
        );
        assert_ne!(x.normalized(), y.normalized());
    }
    // Multi-byte text keeps its tokens whole.
    let multi = check("SELECT 'héllo',\n  'wörld'", Dialect::Postgres).unwrap();
    assert_eq!(multi.normalized(), "SELECT 'héllo', 'wörld'");
}

#[test]
fn sqlite_queries_are_cached_by_their_exact_text() {
    // SQLite names a column without an alias by its text as written,
    // spacing and comments included, at any level: `1  +  1` and `1 + 1`
    // answer differently once a derived table's column is read by name
    // (round 10: `SELECT "1 + 1" AS v FROM (SELECT 1 + 1, 7 AS "1 + 1")`
    // gives 2, with two spaces 7). So no two texts share an answer.
    for (x, y) in [
        ("SELECT 1  +  1", "SELECT 1 + 1"),
        ("SELECT 1 /* a */ + 1", "SELECT 1 + 1"),
        ("SELECT 0x41", "SELECT X'41'"),
        (
            "SELECT * FROM (SELECT \"1 + 1\" AS v FROM (SELECT 1  +  1, 7 AS \"1 + 1\"))",
            "SELECT * FROM (SELECT \"1 + 1\" AS v FROM (SELECT 1 + 1, 7 AS \"1 + 1\"))",
        ),
        (
            "SELECT  name,  count(*) AS n FROM events GROUP BY name",
            "SELECT name, count(*) AS n FROM events GROUP BY name",
        ),
    ] {
        let (cx, cy) = (
            check(x, Dialect::Sqlite).unwrap(),
            check(y, Dialect::Sqlite).unwrap(),
        );
        assert_ne!(cx.normalized(), cy.normalized());
        assert_eq!(cx.normalized(), x);
    }
    // PostgreSQL names such columns `?column?` whatever the spacing: the
    // normal form is shared there.
    let (x, y) = (
        check("SELECT  1  +  1", Dialect::Postgres).unwrap(),
        check("SELECT 1 + 1", Dialect::Postgres).unwrap(),
    );
    assert_eq!(x.normalized(), y.normalized());
}

#[test]
fn the_normal_form_is_linear_in_the_text() {
    // 40 000 items on one line: the positions are walked once.
    let items = vec!["1"; 40_000].join(",");
    let sql = format!("SELECT {items}");
    let started = std::time::Instant::now();
    let checked = check(&sql, Dialect::Postgres).unwrap();
    assert_eq!(checked.normalized(), sql);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn substring_takes_integer_positions_on_postgres() {
    for sql in [
        "SELECT substring(name FROM 'a.*') FROM events",
        "SELECT substring(name, 'x') FROM events",
        "SELECT substring('q' FROM CAST(id AS text) || 'q([a-z]{1,200}){1,200}') FROM events",
        "SELECT substring(name FROM 1 FOR name) FROM events",
        "SELECT substring(name FROM id) FROM events",
    ] {
        assert!(
            refusal(sql, Dialect::Postgres).contains("take integers"),
            "{sql}"
        );
    }
    for sql in [
        "SELECT substring(name FROM 2 FOR 3) FROM events",
        "SELECT substring(name, 1, length(name) - 1) FROM events",
        "SELECT substring(name FROM CAST(timestamp % 7 AS integer) + 1) FROM events",
        "SELECT substr(name, 2) FROM events",
    ] {
        assert!(check(sql, Dialect::Postgres).is_ok(), "{sql}");
    }
    assert!(check("SELECT substr(name, 2, 3) FROM events", Dialect::Sqlite).is_ok());
}

/// Round 11: spellings PostgreSQL reads otherwise than the parser are
/// refused before the parser judges them (the whole row as text, a record
/// function through `alias.U&"…"`); the same text stays plain SQL on SQLite.
#[test]
fn postgres_spellings_the_parser_reads_otherwise_are_refused() {
    for sql in [
        r#"SELECT U&"\0065"::text FROM events e LIMIT 1"#,
        r#"SELECT e.U&"row_to_json" FROM events e LIMIT 1"#,
        r#"SELECT u&"\0065" FROM events e"#,
    ] {
        let refused = refusal(sql, Dialect::Postgres);
        assert!(refused.contains("Unicode-escaped"), "{sql}: {refused}");
    }
    let refused = refusal("SELECT $1$$ a $$ , 2 -- $1$", Dialect::Postgres);
    assert!(refused.contains("may not start with a digit"), "{refused}");
    // A bitwise AND with spacing, ordinary dollar quotes and Unicode-escaped
    // strings (which the parser decodes as PostgreSQL does) still run.
    check("SELECT count(*) & 1 FROM events", Dialect::Postgres).unwrap();
    check(r#"SELECT U&'\0041' FROM events LIMIT 1"#, Dialect::Postgres).unwrap();
    check(
        "SELECT $a$x$a$, $$y$$ FROM events LIMIT 1",
        Dialect::Postgres,
    )
    .unwrap();
}

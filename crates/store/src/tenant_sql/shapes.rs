//! Queries that engines would copy into exponentially many expressions while
//! preparing them, each as small text: the shapes attack rounds found, built
//! at a chosen depth so layer one's unit tests and the API tests on both
//! stores refuse the same thing. Nothing but tests calls these.

/// `depth` nested `a BETWEEN …` with the previous level as `a` (PostgreSQL
/// copies the left operand).
pub fn nested_between(depth: usize) -> String {
    let nested = (0..depth).fold("e.name".to_string(), |inner, _| {
        format!("({inner} BETWEEN e.name AND 'z')")
    });
    format!("SELECT count(*) FROM events e WHERE {nested}")
}

/// `depth` nested `a IN (computed, computed, literal)` (PostgreSQL gives
/// each computed item a comparison with its own copy of `a`).
pub fn nested_in(depth: usize) -> String {
    let nested = (0..depth).fold("e.name".to_string(), |inner, _| {
        format!("({inner} IN (e.name, e.id, 'x'))")
    });
    format!("SELECT count(*) FROM events e WHERE {nested}")
}

/// `depth` subqueries in `WHERE`, each doubling the alias of the level
/// around it and naming its own (SQLite copies an alias's expression
/// wherever its name is used).
pub fn nested_aliases(depth: usize) -> String {
    let mut condition = format!("a{depth} > ''");
    for k in (0..depth).rev() {
        condition = format!(
            "(SELECT a{k} || a{k} AS a{} WHERE {condition}) IS NOT NULL",
            k + 1
        );
    }
    format!("SELECT name || name AS a0 FROM events WHERE {condition}")
}

/// `levels` WITH queries, each reading the one before twice (SQLite copies
/// a WITH query for every name that reads it).
pub fn doubling_with_queries(levels: usize) -> String {
    let mut parts = vec!["a0 AS (SELECT 1 AS x)".to_string()];
    for i in 1..=levels {
        parts.push(format!(
            "a{i} AS (SELECT p.x FROM a{} p, a{} q)",
            i - 1,
            i - 1
        ));
    }
    format!("WITH {} SELECT count(*) FROM a{levels}", parts.join(", "))
}

/// `levels` nested subqueries, each grouped by `width` copies of `term`, a
/// column number such as `1` or `(1)` (SQLite copies the numbered column).
pub fn numbered_columns(levels: usize, term: &str, width: usize) -> String {
    let mut nested = "(SELECT name FROM events LIMIT 1)".to_string();
    for _ in 0..levels {
        nested = format!("(SELECT {nested} GROUP BY {})", vec![term; width].join(","));
    }
    format!("SELECT length({nested}) + 0 AS l")
}

/// `levels` nested named windows, each named by `functions` functions
/// (SQLite copies a window's PARTITION BY into every function naming it).
pub fn named_windows(levels: usize, functions: usize) -> String {
    let mut windowed = "'q'".to_string();
    for n in 0..levels {
        windowed = format!(
            "(SELECT {windowed} AS a{n} FROM (SELECT 1 AS x) AS s{n} \
             WINDOW w{n} AS (PARTITION BY a{n}) ORDER BY {} LIMIT 1)",
            vec![format!("count(*) OVER w{n}"); functions].join(" + ")
        );
    }
    format!("SELECT {windowed} AS r FROM events WHERE 0")
}

/// `column = constant` followed by terms equating each next column with
/// the previous one doubled (SQLite propagates each into the next).
pub fn constant_chain() -> String {
    let columns = ["id", "name", "contact_id", "anonymous_id", "properties"];
    let mut terms = vec!["e.id = 'ab'".to_string()];
    for pair in columns.windows(2) {
        let (before, next) = (pair[0], pair[1]);
        terms.push(format!("e.{next} = e.{before} || e.{before}"));
    }
    format!(
        "SELECT count(*) FROM events e WHERE {}",
        terms.join(" AND ")
    )
}

/// `levels` WITH queries, each reading the one before twice through scalar
/// subqueries, the first a 900-item IN list.
pub fn with_reads_through_subqueries(levels: usize) -> String {
    let mut parts = vec![format!(
        "w0 AS (SELECT count(*) AS x FROM events WHERE anonymous_id IN ({}))",
        vec!["anonymous_id"; 900].join(",")
    )];
    for i in 1..=levels {
        parts.push(format!(
            "w{i} AS (SELECT (SELECT x FROM w{p}) + (SELECT x FROM w{p}) AS x)",
            p = i - 1
        ));
    }
    format!("WITH {} SELECT x FROM w{levels}", parts.join(", "))
}

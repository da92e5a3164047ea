//! Layer two of tenant SQL on SQLite: the engine itself keeps a query to
//! one project's rows, whatever layer one let through.
//!
//! - A separate connection opened **read-only**, with defensive mode on,
//!   double-quoted strings off, no extensions, no attached databases and
//!   lowered `SQLITE_LIMIT_*`s.
//! - Per query, two temporary views carry the project: `events` and
//!   `contacts` (which shadow the real tables for unqualified names) select
//!   from views named with a fresh random suffix, which read the real
//!   tables with the project's id written into their definition.
//! - An **authorizer** admits reads of the real `events`/`contacts` only
//!   when SQLite reports that one of those random views is doing the
//!   reading. (Not the public names: SQLite reports a CTE's name the same
//!   way, so `WITH events AS (SELECT * FROM main.events)` would pass a check
//!   on `events`.) It denies every other table (`sqlite_master`, keys,
//!   sessions, roll-ups), every function outside the allow-list (so
//!   `load_extension`, `readfile`, pragma functions), pragmas, `ATTACH`, and
//!   any write or schema change.
//! - **Ceilings** ([`query_ceiling`]): past [`Limits::max_memory_bytes`]
//!   of allocations, or [`Limits::max_temporary_file_bytes`] of temporary files
//!   (the connection opens its files through a VFS that counts them),
//!   preparing or running the query fails; after a memory failure the
//!   connection is not kept.
//! - A **log gate** ([`super::wal_gate`]): queries that overlap without a
//!   gap would keep SQLite's write-ahead log from ever starting over; past
//!   [`Limits::max_wal_bytes`] new queries wait for it to be truncated.
//! - A **progress handler** stops the query at its deadline. It runs
//!   between the engine's steps, so no single step may take long: strings
//!   are capped at 100 KB, `LIKE` patterns at 100 bytes, and `instr`,
//!   `replace` and the trims are replaced by linear implementations
//!   (SQLite's own compare at every position: with a long needle or
//!   character set, one call could take seconds).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::query_ceiling;
use crate::tenant_sql::{
    CheckedQuery, Dialect, Limits, MAX_COLUMNS, QueryFailure, QueryOutput, column_names, json_size,
};

/// Idle read-only connections kept for the next query.
const IDLE_CONNECTIONS: usize = 4;

pub(crate) struct TenantSql {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    wal: super::wal_gate::WalGate,
}

/// Functions SQLite reports for operators: `LIKE`, `GLOB`, `->`, `->>`.
const OPERATOR_FUNCTIONS: &[&str] = &["like", "glob", "->", "->>"];

impl TenantSql {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            wal: super::wal_gate::WalGate::new(path.clone()),
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `query` over `project_id`'s rows (blocking: call it from a
    /// blocking thread).
    pub(crate) fn run(
        &self,
        project_id: &str,
        query: &CheckedQuery,
        limits: Limits,
    ) -> Result<QueryOutput, QueryFailure> {
        // Running queries end within their time limit: that is how long a
        // closed gate may take to open again.
        let _running = self.wal.enter(limits.max_wal_bytes, limits.timeout * 2)?;
        let conn = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(conn) => conn,
            None => open(&self.path).map_err(crate::StoreError::from)?,
        };
        let ceiling =
            query_ceiling::Ceiling::enter(limits.max_memory_bytes, limits.max_temporary_file_bytes);
        let result = match ceiling {
            Ok(_ceiling) => run_on(&conn, project_id, query.text(), limits),
            Err(why) => Err(QueryFailure::Unavailable(format!(
                "SQL queries cannot be bounded in memory right now ({why:?}); try again later"
            ))),
        };
        // Hooks off again before the connection waits for its next query;
        // a connection that ran out of memory is not kept.
        let reset = conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
            .and_then(|()| conn.progress_handler(0, None::<fn() -> bool>));
        if reset.is_ok()
            && !matches!(result, Err(QueryFailure::OutOfMemory(_)))
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_CONNECTIONS
        {
            idle.push(conn);
        }
        result
    }
}

fn open(path: &PathBuf) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        query_ceiling::VFS_NAME,
    )?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        // The longest string or blob a query may read or build (stored
        // properties are at most 32 KiB).
        (Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, 200_000),
        (Limit::SQLITE_LIMIT_COLUMN, 200),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 250),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 50),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, 16),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 100),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 0),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 1),
        (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
    ] {
        conn.set_limit(limit, value)?;
    }
    linear_functions(&conn)?;
    Ok(conn)
}

/// The longest string or blob a query may read or build.
const MAX_VALUE_BYTES: i32 = 100_000;
const _: () =
    assert!(MAX_VALUE_BYTES as usize == crate::tenant_sql::Dialect::Sqlite.max_value_bytes());

/// `instr`, `replace`, `trim`, `ltrim` and `rtrim` with SQLite's meaning,
/// in time linear in their arguments' sizes (the connection's own
/// functions win over the built-in ones).
fn linear_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("instr", 2, flags, |ctx| {
        let (haystack, needle) = (ctx.get_raw(0), ctx.get_raw(1));
        Ok(match (haystack, needle) {
            (ValueRef::Null, _) | (_, ValueRef::Null) => None,
            (ValueRef::Blob(h), ValueRef::Blob(n)) => {
                Some(memchr::memmem::find(h, n).map_or(0, |i| i + 1) as i64)
            }
            (h, n) => {
                let (h, n) = (text_of(h), text_of(n));
                Some(h.find(n.as_str()).map_or(0, |i| h[..i].chars().count() + 1) as i64)
            }
        })
    })?;
    conn.create_scalar_function("replace", 3, flags, |ctx| {
        let args = [ctx.get_raw(0), ctx.get_raw(1), ctx.get_raw(2)];
        if args.iter().any(|a| matches!(a, ValueRef::Null)) {
            return Ok(None);
        }
        let [text, from, to] = args.map(text_of);
        if from.is_empty() {
            return Ok(Some(text));
        }
        let grown = text.len() / from.len() * to.len().saturating_sub(from.len());
        if text.len() + grown > MAX_VALUE_BYTES as usize {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
                Some("string or blob too big".into()),
            ));
        }
        Ok(Some(text.replace(from.as_str(), &to)))
    })?;
    for (name, left, right) in [
        ("trim", true, true),
        ("ltrim", true, false),
        ("rtrim", false, true),
    ] {
        for args in [1, 2] {
            conn.create_scalar_function(name, args, flags, move |ctx| {
                let text = ctx.get_raw(0);
                if matches!(text, ValueRef::Null) {
                    return Ok(None);
                }
                let set: std::collections::HashSet<char> = if args == 2 {
                    match ctx.get_raw(1) {
                        ValueRef::Null => return Ok(None),
                        chars => text_of(chars).chars().collect(),
                    }
                } else {
                    std::iter::once(' ').collect()
                };
                let text = text_of(text);
                let mut out = text.as_str();
                if left {
                    out = out.trim_start_matches(|c| set.contains(&c));
                }
                if right {
                    out = out.trim_end_matches(|c| set.contains(&c));
                }
                Ok(Some(out.to_string()))
            })?;
        }
    }
    Ok(())
}

/// A REAL as SQLite writes it as text (`printf("%!.15g")`): 15 significant
/// digits, always a decimal point, an exponent from 1e15 or below 1e-4
/// (`2.0e+20`, `1.0e-05`, `0.1`, `100.0`).
fn real_text(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if f == 0.0 {
        return "0.0".into();
    }
    let scientific = format!("{f:.14e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |digits: &str| -> String {
        let digits = if digits.contains('.') {
            digits.trim_end_matches('0')
        } else {
            digits
        };
        match digits.strip_suffix('.') {
            Some(whole) => format!("{whole}.0"),
            None if digits.contains('.') => digits.to_string(),
            None => format!("{digits}.0"),
        }
    };
    if !(-4..15).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        let decimals = usize::try_from(14 - exponent).unwrap_or(0);
        trim(&format!("{f:.decimals$}"))
    }
}

/// A value as SQLite's string functions read it.
fn text_of(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => real_text(f),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// What the authorizer knows about one query's connection.
struct Scope {
    /// The views that read the real `events` and `contacts` (random names).
    events_view: String,
    contacts_view: String,
    /// Every stored table and view of the main database, in lower case,
    /// and SQLite's own (`sqlite_*`).
    stored: std::collections::HashSet<String>,
}

/// The statements that scope this connection to one project, under fresh
/// random names.
fn scope_to(conn: &Connection, project_id: &str) -> rusqlite::Result<Scope> {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let literal = project_id.replace('\'', "''");
    let mut sql =
        String::from("DROP VIEW IF EXISTS temp.events; DROP VIEW IF EXISTS temp.contacts;\n");
    let mut inner = Vec::new();
    for relation in ["events", "contacts"] {
        let columns = column_names(relation).join(", ");
        let scoped = format!("kf_scope_{suffix}_{relation}");
        sql.push_str(&format!(
            "CREATE TEMP VIEW {scoped} AS SELECT {columns} FROM main.{relation} WHERE project_id = '{literal}';\n\
             CREATE TEMP VIEW {relation} AS SELECT {columns} FROM temp.{scoped};\n"
        ));
        inner.push(scoped);
    }
    // Views of earlier queries on this connection.
    let old: Vec<String> = conn
        .prepare(
            "SELECT name FROM temp.sqlite_master WHERE type = 'view' AND name LIKE 'kf_scope_%'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in old {
        conn.execute_batch(&format!("DROP VIEW temp.\"{name}\";"))?;
    }
    conn.execute_batch(&sql)?;
    let mut stored: std::collections::HashSet<String> = conn
        .prepare("SELECT lower(name) FROM main.sqlite_master WHERE type IN ('table', 'view')")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for own in [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
        "sqlite_sequence",
        "sqlite_stat1",
        "sqlite_stat4",
    ] {
        stored.insert(own.to_string());
    }
    let [events_view, contacts_view]: [String; 2] = inner
        .try_into()
        .map_err(|_| rusqlite::Error::InvalidQuery)?;
    Ok(Scope {
        events_view,
        contacts_view,
        stored,
    })
}

fn run_on(
    conn: &Connection,
    project_id: &str,
    sql: &str,
    limits: Limits,
) -> Result<QueryOutput, QueryFailure> {
    let scope = scope_to(conn, project_id).map_err(crate::StoreError::from)?;
    // The first thing the authorizer denied, to say why.
    let denied: Arc<Mutex<Option<String>>> = Arc::default();
    let record = denied.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let verdict = authorize(&ctx, &scope);
        if let Err(what) = &verdict
            && let Ok(mut first) = record.lock()
            && first.is_none()
        {
            *first = Some(what.clone());
        }
        match verdict {
            Ok(()) => Authorization::Allow,
            Err(_) => Authorization::Deny,
        }
    }))
    .map_err(crate::StoreError::from)?;
    let deadline = Instant::now() + limits.timeout;
    conn.progress_handler(100, Some(move || Instant::now() >= deadline))
        .map_err(crate::StoreError::from)?;

    let failure = |e: rusqlite::Error| {
        let first_denied = denied.lock().ok().and_then(|d| d.clone());
        classify(e, first_denied, limits)
    };
    let mut statement = conn.prepare(sql).map_err(failure)?;
    if statement.is_explain() != 0 || !statement.readonly() {
        return Err(QueryFailure::refused(
            "only a query (SELECT or WITH … SELECT) may run",
        ));
    }
    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(String::from)
        .collect();
    if columns.len() > MAX_COLUMNS {
        return Err(QueryFailure::refused(format!(
            "the query returns {} columns; at most {MAX_COLUMNS} are allowed",
            columns.len()
        )));
    }
    let mut rows = statement.query([]).map_err(failure)?;
    let (mut out, mut bytes, mut truncated) = (Vec::new(), 0usize, false);
    'rows: while let Some(row) = rows.next().map_err(failure)? {
        if out.len() == limits.max_rows {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let value = json_of(row.get_ref(i).map_err(failure)?);
            bytes += json_size(&value);
            // Checked per value: one row may hold 100 columns of 100 KB.
            if bytes > limits.max_bytes {
                truncated = true;
                break 'rows;
            }
            values.push(value);
        }
        out.push(values);
    }
    Ok(QueryOutput {
        columns,
        rows: out,
        truncated,
    })
}

/// The authorizer's rule; `Err` names what was denied.
fn authorize(ctx: &AuthContext<'_>, scope: &Scope) -> Result<(), String> {
    let (events_view, contacts_view) = (scope.events_view.as_str(), scope.contacts_view.as_str());
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { table_name, .. } => {
            let through = ctx.accessor;
            let allowed = match (ctx.database_name, table_name) {
                // SQLite names no database for a recursive WITH reading its
                // own rows so far, but also for `count(*)` of a stored table;
                // a stored table's name is judged as if "main" were given.
                (None, name) if scope.stored.contains(&name.to_ascii_lowercase()) => {
                    match name.to_ascii_lowercase().as_str() {
                        "events" => through == Some(events_view),
                        "contacts" => through == Some(contacts_view),
                        _ => false,
                    }
                }
                (None, _) => true,
                (Some("main"), "events") => through == Some(events_view),
                (Some("main"), "contacts") => through == Some(contacts_view),
                (Some("temp"), name) => {
                    name == "events"
                        || name == "contacts"
                        || name == events_view
                        || name == contacts_view
                }
                _ => false,
            };
            if allowed {
                Ok(())
            } else {
                Err(format!(
                    "reading {} is not allowed: a query reads events and contacts",
                    readable_name(ctx.database_name, table_name)
                ))
            }
        }
        AuthAction::Function { function_name } => {
            let lower = function_name.to_ascii_lowercase();
            if Dialect::Sqlite.allows_function(&lower)
                || OPERATOR_FUNCTIONS.contains(&lower.as_str())
            {
                Ok(())
            } else {
                Err(format!("the function {function_name} is not allowed"))
            }
        }
        AuthAction::Pragma { pragma_name, .. } => {
            Err(format!("PRAGMA {pragma_name} is not allowed"))
        }
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        _ => Err("a query may only read: writes and schema changes are not allowed".into()),
    }
}

/// Real names only: the random views' names are not shown.
fn readable_name(database: Option<&str>, table: &str) -> String {
    if table.starts_with("kf_scope_") {
        return "that view".into();
    }
    match database {
        Some(db) => format!("{db}.{table}"),
        None => table.to_string(),
    }
}

fn classify(e: rusqlite::Error, denied: Option<String>, limits: Limits) -> QueryFailure {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::OperationInterrupted) => QueryFailure::TimedOut(limits.timeout),
        Some(ErrorCode::OutOfMemory) => QueryFailure::OutOfMemory(limits.max_memory_bytes),
        Some(ErrorCode::DiskFull) => QueryFailure::Failed(format!(
            "the query wrote more than {} MiB of temporary files (sorts, DISTINCT, GROUP BY), \
             the most one query may",
            limits.max_temporary_file_bytes / (1024 * 1024)
        )),
        Some(ErrorCode::AuthorizationForStatementDenied) => QueryFailure::refused(
            denied.unwrap_or_else(|| "the query does something not allowed".into()),
        ),
        Some(ErrorCode::TooBig) => QueryFailure::Failed(format!(
            "a value grew past {MAX_VALUE_BYTES} bytes, the largest a query may build"
        )),
        Some(_) | None => match e {
            rusqlite::Error::MultipleStatement => QueryFailure::refused("one statement only"),
            rusqlite::Error::SqliteFailure(_, Some(message)) => QueryFailure::Failed(message),
            other => QueryFailure::Failed(other.to_string()),
        },
    }
}

fn json_of(value: ValueRef<'_>) -> serde_json::Value {
    match value {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        ValueRef::Text(bytes) => String::from_utf8_lossy(bytes).into_owned().into(),
        ValueRef::Blob(bytes) => {
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("\\x");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            hex.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::real_text;

    /// The same text SQLite gives `CAST(x AS TEXT)` for each REAL.
    #[test]
    fn reals_read_as_sqlite_writes_them() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for x in [
            2e20,
            1e100,
            1.5,
            0.1,
            100.0,
            -3.25,
            1e-5,
            0.0001,
            123456789012345.0,
            1234567890123456.0,
            1.0 / 3.0,
            -1e-300,
            6.02214076e23,
        ] {
            let sqlite: String = conn
                .query_row("SELECT CAST(?1 AS TEXT)", [x], |row| row.get(0))
                .unwrap();
            assert_eq!(real_text(x), sqlite, "{x}");
        }
    }
}

//! Tenant SQL: the Metrics API's `POST /v1/metrics/query` (SPEC §4).
//!
//! A tenant's query is isolated twice:
//! 1. [`check`] (layer one, shared): a parser allow-list. One `SELECT`/`WITH`
//!    statement, the relations `events` and `contacts` only, allowed
//!    functions and types only.
//! 2. Each backend's own engine (layer two, which must hold even when layer
//!    one is fooled): `sqlite/tenant_sql.rs` runs the text on a read-only
//!    connection under an authorizer; `postgres/tenant_sql.rs` runs it as a
//!    role that can read two views and nothing else.
//!
//! Both layers describe the same tenant-facing schema: [`RELATIONS`].

use std::time::Duration;

use async_trait::async_trait;

mod allow_list;
mod expansion;
mod fences;
#[doc(hidden)]
pub mod shapes;

pub use allow_list::{CheckedQuery, RECORD_FUNCTIONS, check};

/// The SQL dialect a store speaks to tenants (its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgresql",
        }
    }

    /// The largest text, blob or JSON value a query may build, in bytes
    /// (SQLite: `SQLITE_LIMIT_LENGTH` on its tenant connections; PostgreSQL:
    /// Keyflow's size-checked operators, migration 0017).
    pub const fn max_value_bytes(self) -> usize {
        match self {
            Dialect::Sqlite => 100_000,
            Dialect::Postgres => 262_144,
        }
    }

    /// The functions a tenant's query may call, sorted.
    pub fn functions(self) -> Vec<&'static str> {
        let own = match self {
            Dialect::Sqlite => SQLITE_FUNCTIONS,
            Dialect::Postgres => POSTGRES_FUNCTIONS,
        };
        let mut all: Vec<&'static str> = COMMON_FUNCTIONS.iter().chain(own).copied().collect();
        all.sort_unstable();
        all
    }

    pub(crate) fn allows_function(self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let own = match self {
            Dialect::Sqlite => SQLITE_FUNCTIONS,
            Dialect::Postgres => POSTGRES_FUNCTIONS,
        };
        COMMON_FUNCTIONS.contains(&name.as_str()) || own.contains(&name.as_str())
    }
}

/// Functions both stores allow: aggregates, window functions, plain scalars.
/// Nothing that reads a file, the catalogue, a setting or another session,
/// sleeps, or makes a value bigger than its input asks for; nothing whose
/// time grows faster than its input's size without checking for
/// cancellation (PostgreSQL's substring search, used by `strpos`,
/// `replace`, `split_part` and `position`, checks nowhere, so a query
/// could outlive its time limit by minutes).
const COMMON_FUNCTIONS: &[&str] = &[
    "abs",
    "avg",
    "coalesce",
    "count",
    "cume_dist",
    "dense_rank",
    "first_value",
    "lag",
    "last_value",
    "lead",
    "length",
    "lower",
    "ltrim",
    "max",
    "min",
    "nth_value",
    "ntile",
    "nullif",
    "percent_rank",
    "rank",
    "round",
    "row_number",
    "rtrim",
    "substr",
    "sum",
    "trim",
    "upper",
];

const SQLITE_FUNCTIONS: &[&str] = &[
    "date",
    "datetime",
    "group_concat",
    "ifnull",
    "iif",
    "instr",
    "json_array_length",
    "json_extract",
    "json_type",
    "json_valid",
    "julianday",
    // Keyflow's own, linear in time (sqlite/tenant_sql.rs), as are instr and the trims.
    "replace",
    "strftime",
    "time",
    "total",
    "typeof",
    "unixepoch",
];

const POSTGRES_FUNCTIONS: &[&str] = &[
    "bool_and",
    "bool_or",
    "date_part",
    "date_trunc",
    "greatest",
    "jsonb_array_length",
    "jsonb_extract_path_text",
    "jsonb_typeof",
    "least",
    "left",
    "now",
    "right",
    "to_char",
    "to_timestamp",
];

/// A column of a tenant-facing relation: its name, its type in each dialect
/// and what it holds.
pub struct ColumnDoc {
    pub name: &'static str,
    pub sqlite_type: &'static str,
    pub postgres_type: &'static str,
    pub about: &'static str,
}

/// The two relations a tenant's query sees, each holding the project's rows only.
pub const RELATIONS: &[(&str, &[ColumnDoc])] = &[
    (
        "events",
        &[
            col("id", "TEXT", "text", "the event id (a UUID)"),
            col("name", "TEXT", "text", "the event name"),
            col(
                "contact_id",
                "TEXT",
                "text",
                "the contact it names (NULL for anonymous events)",
            ),
            col(
                "anonymous_id",
                "TEXT",
                "text",
                "the anonymous id it was sent with",
            ),
            col(
                "properties",
                "TEXT (JSON)",
                "jsonb",
                "the event's properties (SQLite: json_extract(properties, '$.plan'); PostgreSQL: properties->>'plan')",
            ),
            col(
                "timestamp",
                "INTEGER",
                "bigint",
                "when it happened, in milliseconds since 1970-01-01 UTC",
            ),
            col(
                "received_at",
                "INTEGER",
                "bigint",
                "when Keyflow stored it, in milliseconds since 1970-01-01 UTC",
            ),
        ],
    ),
    (
        "contacts",
        &[
            col("id", "TEXT", "text", "the contact id (con_…)"),
            col("email", "TEXT", "text", "the email address as sent"),
            col("external_id", "TEXT", "text", "your own id for the contact"),
            col("first_name", "TEXT", "text", ""),
            col("last_name", "TEXT", "text", ""),
            col(
                "subscribed",
                "INTEGER (0 or 1)",
                "boolean",
                "whether the contact is subscribed",
            ),
            col(
                "properties",
                "TEXT (JSON)",
                "jsonb",
                "the contact's properties",
            ),
            col(
                "created_at",
                "INTEGER",
                "bigint",
                "milliseconds since 1970-01-01 UTC",
            ),
            col(
                "updated_at",
                "INTEGER",
                "bigint",
                "milliseconds since 1970-01-01 UTC",
            ),
        ],
    ),
];

const fn col(
    name: &'static str,
    sqlite_type: &'static str,
    postgres_type: &'static str,
    about: &'static str,
) -> ColumnDoc {
    ColumnDoc {
        name,
        sqlite_type,
        postgres_type,
        about,
    }
}

/// The column list of a relation, for the views both backends define.
pub(crate) fn column_names(relation: &str) -> Vec<&'static str> {
    RELATIONS
        .iter()
        .find(|(name, _)| *name == relation)
        .map(|(_, columns)| columns.iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

/// How far one query may go.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Rows returned at most; past it the answer says `truncated`.
    pub max_rows: usize,
    /// Bytes of values returned at most (roughly their JSON size); past it
    /// the answer is cut short and says `truncated`.
    pub max_bytes: usize,
    /// Running time at most; past it the query is stopped.
    pub timeout: Duration,
    /// Memory the engine may use for the query (SQLite: everything it
    /// allocates while preparing and running it; PostgreSQL bounds its
    /// backends with `work_mem` and `temp_file_limit` instead).
    pub max_memory_bytes: usize,
    /// Temporary files the engine may write for the query (sorts and
    /// hashes past memory): SQLite counts them itself; PostgreSQL's reader
    /// role has `temp_file_limit` = 1 GB.
    pub max_temporary_file_bytes: usize,
    /// SQLite: the write-ahead log's size past which new queries wait until
    /// it has been truncated (long readers that overlap keep it from
    /// starting over).
    pub max_wal_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_temporary_file_bytes: 1024 * 1024 * 1024,
            max_wal_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Memory one query may use on SQLite by default: legitimate queries use a
/// few MiB (sorts past the page cache's 2 MiB go to a temporary file).
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 128 * 1024 * 1024;

/// SQL text longer than this is refused before it is parsed.
pub const MAX_SQL_BYTES: usize = 100 * 1024;
/// Columns of an answer at most.
pub const MAX_COLUMNS: usize = 100;

/// A query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutput {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// The row or size limit cut the answer short.
    pub truncated: bool,
}

/// Where in the SQL text something was found (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    /// Not allowed, by either layer (422): what was refused, and where.
    #[error("{reason}")]
    Refused {
        reason: String,
        position: Option<Position>,
    },
    /// Stopped at the time limit (422).
    #[error("the query ran for longer than {} s and was stopped", .0.as_secs_f64())]
    TimedOut(Duration),
    /// Stopped at the memory ceiling (422), with the ceiling in bytes.
    #[error("the query needed more than {} MiB of memory and was stopped", .0 / (1024 * 1024))]
    OutOfMemory(usize),
    /// The engine refused or failed it (no such column, a type error…) (422).
    #[error("{0}")]
    Failed(String),
    /// Tenant SQL cannot run on this store as configured (503), with why.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

impl QueryFailure {
    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        Self::Refused {
            reason: reason.into(),
            position: None,
        }
    }
}

/// Runs tenant SQL against one project's rows (layer two). Each backend
/// implements it in its own folder.
#[async_trait]
pub trait TenantSqlStore: Send + Sync {
    /// The dialect the tenant writes.
    fn tenant_dialect(&self) -> Dialect;

    /// Runs a query that passed [`check`] over `project_id`'s rows only.
    async fn run_tenant_query(
        &self,
        project_id: &str,
        query: &CheckedQuery,
        limits: Limits,
    ) -> Result<QueryOutput, QueryFailure>;
}

/// What one value of an answer costs against [`Limits::max_bytes`]: its
/// JSON text exactly (escapes included: a control character is written
/// `\u0001`, six bytes), and [`VALUE_OVERHEAD`] for the value itself in
/// memory, so an answer of many small values is bounded too.
pub fn json_size(value: &serde_json::Value) -> usize {
    VALUE_OVERHEAD
        + match value {
            serde_json::Value::Null => 4,
            serde_json::Value::Bool(_) => 5,
            serde_json::Value::String(s) => escaped_len(s),
            other => serde_json::to_string(other).map_or(0, |t| t.len()),
        }
}

/// Bytes a value takes in memory besides its text (a `serde_json::Value`
/// is 32 bytes; 10 000 rows of 100 `NULL`s once took 77 MiB).
pub const VALUE_OVERHEAD: usize = 24;

/// The length of `s` written as a JSON string, quotes included.
fn escaped_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

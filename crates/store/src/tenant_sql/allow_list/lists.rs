//! The allow-lists and limits of layer one, per dialect.

use std::ops::ControlFlow;

use sqlparser::ast::BinaryOperator;
use sqlparser::tokenizer::Span;

use super::refuse;
use crate::tenant_sql::{Dialect, QueryFailure};

/// PostgreSQL matches `LIKE` in time |text| × |pattern| and checks for
/// cancellation only between rows, so a query's patterns are literals of at
/// most this many bytes (as SQLite's `SQLITE_LIMIT_LIKE_PATTERN_LENGTH`)...
pub const MAX_PATTERN_BYTES: usize = 100;
/// ...and one query holds at most this many: each costs at most ~0.16 s on
/// a 1 MiB value (measured), so one row's matches stay under ~1.6 s.
pub const MAX_PATTERN_MATCHES: usize = 10;
/// The longest `to_char` format and `char(n)`/`varchar(n)` a query may
/// write on PostgreSQL (a 1 MiB format of `J`s prints 7 MiB; `char(n)`
/// pads to n).
pub(super) const MAX_FORMAT_BYTES: usize = 200;
/// Commas cost nothing in the structure budget, so on PostgreSQL, where one
/// row's expression is never interrupted, a call takes at most this many
/// arguments (`greatest(b, b, …)` with 4 000 compared 128 MB each)...
pub(super) const MAX_ARGUMENTS: usize = 100;
/// ...and an `IN (…)` list or a row `(a, b, …)` at most this many items...
pub(super) const MAX_LIST_ITEMS: usize = 1_000;
/// ...of which, over the whole query, at most this many are computed rather
/// than written as literals: PostgreSQL holds every item's value of a row at
/// once (1 000 items of 256 KiB held 250 MB).
pub const MAX_COMPUTED_ITEMS: usize = 64;
/// Collations that compare bytes (an ICU collation took 0.7 ms per
/// comparison of 256 KiB).
pub(super) const BYTE_COLLATIONS: &[&str] = &["c", "posix", "ucs_basic", "default"];
pub(super) const MAX_TYPE_LENGTH: u64 = 10_000;

/// PostgreSQL functions outside the allow-list that `alias.name` or
/// `(alias).name` would call on a whole row: those whose first parameter
/// takes any row (`record`, `"any"`, `anyelement`, `anycompatible`,
/// `anynonarray`) and that need no other argument. A test compares this list
/// with the server's `pg_proc`, so a new PostgreSQL cannot add one unseen.
pub const RECORD_FUNCTIONS: &[&str] = &[
    "any_out",
    "anycompatible_out",
    "anyelement_out",
    "anynonarray_out",
    "array_agg",
    "concat",
    "hash_record",
    "hash_record_extended",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_populate_record",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_populate_record",
    "mode",
    "num_nonnulls",
    "num_nulls",
    "pg_collation_for",
    "pg_column_compression",
    "pg_column_size",
    "pg_typeof",
    "quote_literal",
    "quote_nullable",
    "record_out",
    "record_send",
    "row_to_json",
    "to_json",
    "to_jsonb",
];

/// PostgreSQL's SQL-standard session values written without parentheses,
/// which the parser reads as plain names.
pub(super) const SESSION_KEYWORDS: &[&str] = &[
    "current_catalog",
    "current_role",
    "current_schema",
    "current_user",
    "session_user",
    "user",
];

pub(super) fn refuse_record_function(span: Span) -> ControlFlow<QueryFailure> {
    refuse(
        "a function called as a column (alias.function) is not allowed".into(),
        span,
    )
}

/// Operators every store runs in time linear in their operands.
pub(super) const COMMON_OPERATORS: &[BinaryOperator] = &[
    BinaryOperator::Plus,
    BinaryOperator::Minus,
    BinaryOperator::Multiply,
    BinaryOperator::Divide,
    BinaryOperator::Modulo,
    BinaryOperator::StringConcat,
    BinaryOperator::Gt,
    BinaryOperator::Lt,
    BinaryOperator::GtEq,
    BinaryOperator::LtEq,
    BinaryOperator::Eq,
    BinaryOperator::NotEq,
    BinaryOperator::And,
    BinaryOperator::Or,
    BinaryOperator::BitwiseOr,
    BinaryOperator::BitwiseAnd,
    // JSON: one value out of a document.
    BinaryOperator::Arrow,
    BinaryOperator::LongArrow,
];

pub(super) const SQLITE_OPERATORS: &[BinaryOperator] = &[BinaryOperator::Is, BinaryOperator::IsNot];

/// Left out on PostgreSQL on purpose: `^`, which builds a number of
/// hundreds of thousands of digits from two short ones and spends a tenth of
/// a second on each, uninterruptibly; JSON containment and key-set tests
/// (`@>`, `<@`, `?|`, `?&`) compare every element with every other and
/// check for cancellation nowhere: measured, one `@>` of two 100 000-element
/// arrays ran 72 s past a 1 s `statement_timeout`. JSON paths (`@?`, `@@`),
/// regular expressions and array overlap go with them; `->>` and `=` say
/// the same things in linear time.
pub(super) const POSTGRES_OPERATORS: &[BinaryOperator] = &[
    BinaryOperator::PGBitwiseXor,
    BinaryOperator::PGBitwiseShiftLeft,
    BinaryOperator::PGBitwiseShiftRight,
    BinaryOperator::PGLikeMatch,
    BinaryOperator::PGILikeMatch,
    BinaryOperator::PGNotLikeMatch,
    BinaryOperator::PGNotILikeMatch,
    BinaryOperator::PGStartsWith,
    BinaryOperator::HashArrow,
    BinaryOperator::HashLongArrow,
    // One key looked up: linear at worst.
    BinaryOperator::Question,
];

pub(super) fn allows_operator(dialect: Dialect, op: &BinaryOperator) -> bool {
    let own = match dialect {
        Dialect::Sqlite => SQLITE_OPERATORS,
        Dialect::Postgres => POSTGRES_OPERATORS,
    };
    COMMON_OPERATORS.contains(op) || own.contains(op)
}

pub(super) fn refuse_operator(op: &BinaryOperator, span: Span) -> ControlFlow<QueryFailure> {
    refuse(
        format!(
            "the operator {op} is not allowed (compare single values instead, for example properties->>'plan' = 'pro')"
        ),
        span,
    )
}

/// Type names a cast may name (lower case, without length or precision).
pub(super) const ALLOWED_TYPES: &[&str] = &[
    "bigint",
    "bool",
    "boolean",
    "char",
    "character",
    "character varying",
    "date",
    "decimal",
    "double",
    "double precision",
    "float",
    "float4",
    "float8",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "interval",
    "json",
    "jsonb",
    "numeric",
    "real",
    "smallint",
    "text",
    "time",
    "timestamp",
    "timestamp with time zone",
    "timestamp without time zone",
    "timestamptz",
    "varchar",
];

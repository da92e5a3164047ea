//! `keyflow migrate --to postgres://…` (SPEC §9): copies an embedded SQLite
//! instance's whole database into an empty PostgreSQL database.
//!
//! Both are first brought to the same migration, so their tables match;
//! every table both have is copied (parents before children, following
//! PostgreSQL's foreign keys), in batches, each value sent as text and cast
//! to the PostgreSQL column's type (SQLite keeps booleans as 0/1, JSON as
//! text). Identity sequences are moved past the copied ids, and every
//! table's row count is compared at the end. The copy is one PostgreSQL
//! transaction: a failure leaves the target as empty as it was.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::{StoreError, StoreResult, redact_url};

/// Rows per INSERT.
const BATCH: usize = 1_000;

/// What was copied: each table and its row count, in copy order.
pub struct Copied {
    pub tables: Vec<(String, i64)>,
}

pub async fn sqlite_to_postgres(sqlite_url: &str, postgres_url: &str) -> StoreResult<Copied> {
    if !(postgres_url.starts_with("postgres://") || postgres_url.starts_with("postgresql://")) {
        return Err(StoreError::Config(format!(
            "--to must be a postgres:// URL, not {}",
            redact_url(postgres_url)
        )));
    }
    // The same schema on both sides: the latest migration.
    let source_store = crate::connect(sqlite_url).await?;
    if source_store.backend_name() != "sqlite" {
        return Err(StoreError::Config(
            "migrate --to copies an embedded SQLite database: run it with the SQLite database as \
             --database-url (or the default data dir)"
                .into(),
        ));
    }
    source_store.migrate().await?;
    let target_store = crate::connect(postgres_url).await?;
    target_store.migrate().await?;
    drop(target_store);

    let source = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(sqlite_url)
        .await?;
    let target = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(postgres_url)
        .await?;

    let source_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&source)
    .await?
    .into_iter()
    .collect();
    let target_tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&target)
    .await?;
    let tables: Vec<String> = target_tables
        .into_iter()
        .filter(|t| t != "keyflow_migrations" && source_tables.contains(t))
        .collect();

    let mut tx = target.begin().await?;
    for table in &tables {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{table}\""
        )))
        .fetch_one(&mut *tx)
        .await?;
        if rows > 0 {
            return Err(StoreError::Conflict(format!(
                "the target database already holds data ({rows} rows in {table}): migrate --to \
                 copies into an empty database only"
            )));
        }
    }
    let order = parents_first(&mut tx, &tables).await?;
    let mut copied = Vec::new();
    for table in order {
        let count = copy_table(&source, &mut tx, &table).await?;
        copied.push((table, count));
    }
    tx.commit().await?;
    for (table, count) in &copied {
        let there: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{table}\""
        )))
        .fetch_one(&target)
        .await?;
        if there != *count {
            return Err(StoreError::Conflict(format!(
                "{table}: {count} rows read from SQLite but {there} in PostgreSQL"
            )));
        }
    }
    Ok(Copied { tables: copied })
}

/// `tables` ordered so that each comes after the tables its foreign keys
/// point to.
async fn parents_first(tx: &mut sqlx::PgConnection, tables: &[String]) -> StoreResult<Vec<String>> {
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint \
         WHERE contype = 'f' AND connamespace = current_schema()::regnamespace",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (child, parent) in &edges {
        if child != parent {
            parents
                .entry(child.as_str())
                .or_default()
                .insert(parent.as_str());
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut left: Vec<&String> = tables.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|table| {
            let ready = parents.get(table.as_str()).is_none_or(|ps| {
                ps.iter()
                    .all(|p| order.iter().any(|o| o == p) || !tables.iter().any(|t| t == p))
            });
            if ready {
                order.push((*table).clone());
            }
            !ready
        });
        if left.len() == before {
            return Err(StoreError::Config(
                "the tables' foreign keys form a cycle; cannot order the copy".into(),
            ));
        }
    }
    Ok(order)
}

/// Copies one table; returns its row count.
async fn copy_table(
    source: &sqlx::SqlitePool,
    tx: &mut sqlx::PgConnection,
    table: &str,
) -> StoreResult<i64> {
    let target_columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT column_name::text, format_type(a.atttypid, a.atttypmod), \
                (c.is_nullable = 'NO' AND c.column_default IS NULL) \
         FROM information_schema.columns c \
         JOIN pg_attribute a ON a.attrelid = (quote_ident(c.table_name))::regclass \
                            AND a.attname = c.column_name \
         WHERE c.table_schema = current_schema() AND c.table_name = $1 \
         ORDER BY c.ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    let source_columns: BTreeSet<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT name FROM pragma_table_info('{table}')"
    )))
    .fetch_all(source)
    .await?
    .into_iter()
    .collect();
    let mut columns = Vec::new();
    for (name, pg_type, required) in &target_columns {
        if source_columns.contains(name) {
            columns.push((name.clone(), pg_type.clone()));
        } else if *required {
            return Err(StoreError::Config(format!(
                "{table}.{name} is required in PostgreSQL but missing in SQLite"
            )));
        }
    }
    let names: Vec<String> = columns.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let select = format!("SELECT {} FROM {}", names.join(", "), source_of(table));
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, pg_type))| format!("c{i}::{pg_type}"))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let unnests: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let insert = format!(
        "INSERT INTO \"{table}\" ({}) SELECT {} FROM unnest({}) AS u({})",
        names.join(", "),
        casts.join(", "),
        unnests.join(", "),
        aliases.join(", ")
    );
    let mut batch: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(BATCH); columns.len()];
    let mut count = 0i64;
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(source);
    while let Some(row) = rows.try_next().await? {
        for (i, values) in batch.iter_mut().enumerate() {
            values.push(text_of(&row, i, table)?);
        }
        count += 1;
        if batch[0].len() == BATCH {
            insert_batch(tx, &insert, &mut batch).await?;
        }
    }
    if !batch.is_empty() && !batch[0].is_empty() {
        insert_batch(tx, &insert, &mut batch).await?;
    }
    // Identity columns: the next id comes after the copied ones.
    let serials: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
           AND pg_get_serial_sequence(quote_ident($1), column_name::text) IS NOT NULL",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    for column in serials {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), \
                    coalesce((SELECT max(\"{column}\") FROM \"{table}\"), 0) + 1, false)"
        )))
        .execute(&mut *tx)
        .await?;
    }
    Ok(count)
}

async fn insert_batch(
    tx: &mut sqlx::PgConnection,
    insert: &str,
    batch: &mut [Vec<Option<String>>],
) -> StoreResult<()> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(insert.to_string()));
    for values in batch.iter() {
        query = query.bind(values);
    }
    query.execute(&mut *tx).await?;
    for values in batch.iter_mut() {
        values.clear();
    }
    Ok(())
}

/// A SQLite value as the text PostgreSQL will cast.
fn text_of(row: &sqlx::sqlite::SqliteRow, i: usize, table: &str) -> StoreResult<Option<String>> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(None);
    }
    let kind = raw.type_info().name().to_string();
    Ok(Some(match kind.as_str() {
        "INTEGER" | "BOOLEAN" => row.try_get::<i64, _>(i)?.to_string(),
        "REAL" => row.try_get::<f64, _>(i)?.to_string(),
        "TEXT" => row.try_get::<String, _>(i)?,
        other => {
            return Err(StoreError::Config(format!(
                "{table}.{}: a {other} value cannot be copied",
                row.column(i).name()
            )));
        }
    }))
}

/// Where a table's rows are read in SQLite. SQLite's event writer keeps no
/// row per idempotency claim: a stored event with a key is its claim
/// (migration 0024; `event_idempotency` holds older claims). PostgreSQL
/// keeps every claim in `event_idempotency`, so the copy makes one row per
/// key from both, the newest claim winning (SQLite gives a bare column the
/// value of the row that holds the `max`).
fn source_of(table: &str) -> String {
    if table == "event_idempotency" {
        "(SELECT project_id, key, event_id, max(created_at) AS created_at FROM ( \
         SELECT project_id, key, event_id, created_at FROM event_idempotency UNION ALL \
         SELECT project_id, idempotency_key, id, received_at FROM events \
         WHERE idempotency_key IS NOT NULL) \
         GROUP BY project_id, key)"
            .to_string()
    } else {
        format!("\"{table}\"")
    }
}

//! The ceilings Keyflow's batch ingest is compared with: the same rows written
//! straight into the same schema by this program, in the same run.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::{ConnectOptions, Connection};

/// What a raw insert writes: the rows of the bench's anonymous events, or
/// of its identified ones (a contact among 1 000, a fresh random idempotency
/// key), with the same properties.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    Anonymous {
        anonymous_id: &'a str,
        properties: &'a str,
    },
    Identified {
        properties: &'a str,
    },
}

/// Parameters per row of [`insert_100_rows_sql`].
const PER_ROW: usize = 5;

/// `INSERT INTO events … VALUES (…), (…)` with 100 rows of [`PER_ROW`]
/// parameters each.
fn insert_100_rows_sql() -> String {
    let values: Vec<String> = (0..100)
        .map(|r| {
            let at = r * PER_ROW;
            format!(
                "(${}, 'p', 'page_view', ${}, ${}, ${}, 0, 0, ${})",
                at + 1,
                at + 2,
                at + 3,
                at + 4,
                at + 5
            )
        })
        .collect();
    format!(
        "INSERT INTO events (id, project_id, name, contact_id, anonymous_id, properties, timestamp, received_at, idempotency_key) VALUES {}",
        values.join(", ")
    )
}

/// Binds 100 rows of `rows` to `query`; identified rows name `contacts` in turn.
fn bind_100<'q, DB: sqlx::Database>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    rows: Rows<'q>,
    contacts: &[String],
    next: &mut usize,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for _ in 0..100 {
        *next += 1;
        query = query.bind(uuid::Uuid::now_v7().to_string());
        query = match rows {
            Rows::Anonymous {
                anonymous_id,
                properties,
            } => query
                .bind(None::<String>)
                .bind(Some(anonymous_id))
                .bind(properties)
                .bind(None::<String>),
            Rows::Identified { properties } => query
                .bind(Some(contacts[*next % contacts.len()].clone()))
                .bind(None::<&str>)
                .bind(properties)
                .bind(Some(uuid::Uuid::new_v4().to_string())),
        };
    }
    query
}

/// 1 000 contact ids (events' `contact_id` is not a foreign key).
fn contacts() -> Vec<String> {
    (0..1_000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect()
}

const SEED: [&str; 2] = [
    "INSERT INTO workspaces (id, name, plan, created_at) VALUES ('w', 'w', 'pro', 0)",
    "INSERT INTO projects (id, workspace_id, name, environment, created_at) VALUES ('p', 'w', 'p', 'live', 0)",
];

/// SQLite: one connection, one transaction per 100 rows, WAL and
/// `synchronous=FULL` (the durability Keyflow acknowledges with).
pub async fn sqlite_events_per_second(seconds: u64, rows: Rows<'_>) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("raw.db").display());
    keyflow_store::connect(&url).await?.migrate().await?;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await?;
    for sql in SEED {
        sqlx::query(sql).execute(&mut conn).await?;
    }
    let sql = insert_100_rows_sql();
    let contacts = contacts();
    let mut next = 0;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut written = 0u64;
    while Instant::now() < deadline {
        let mut tx = conn.begin().await?;
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        bind_100(q, rows, &contacts, &mut next)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        written += 100;
    }
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

/// PostgreSQL: `tasks` connections each committing 100-row INSERTs (one
/// transaction per statement), on a fresh database with Keyflow's schema.
pub async fn postgres_events_per_second(
    url: &str,
    seconds: u64,
    tasks: usize,
    rows: Rows<'static>,
) -> Result<f64> {
    keyflow_store::connect(url).await?.migrate().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(tasks as u32)
        .connect(url)
        .await?;
    for sql in SEED {
        sqlx::query(sql).execute(&pool).await?;
    }
    let sql = insert_100_rows_sql();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    let contacts = contacts();
    for task in 0..tasks {
        let (pool, sql, contacts) = (pool.clone(), sql.clone(), contacts.clone());
        workers.push(tokio::spawn(async move {
            let mut next = task * 100;
            let mut written = 0u64;
            while Instant::now() < deadline {
                let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                bind_100(q, rows, &contacts, &mut next)
                    .execute(&pool)
                    .await?;
                written += 100;
            }
            Ok::<u64, anyhow::Error>(written)
        }));
    }
    let mut rows = 0;
    for w in workers {
        rows += w.await??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// A fresh database on the PostgreSQL server of `admin_url`, dropped on `drop`.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl ScratchDatabase {
    pub async fn create(admin_url: &str, purpose: &str) -> Result<Self> {
        let name = format!("keyflow_bench_{purpose}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            admin_url: admin_url.to_string(),
            // Loopback needs no TLS, and sqlx 0.9.0 over TLS stalls 40 ms on
            // statements larger than one TLS record (no TCP_NODELAY; see
            // docs/operations.md), which would measure Nagle, not Keyflow.
            url: format!("{base}/{name}?sslmode=disable"),
            name,
        })
    }

    pub async fn drop_now(self) -> Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

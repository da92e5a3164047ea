//! PostgreSQL, for several `keyflow serve` instances sharing one database.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

use crate::sql_store::{Migration, impl_sql_store};

pub struct PostgresStore {
    pool: sqlx::PgPool,
}

impl PostgresStore {
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "0001_foundation",
            sql: include_str!("../../migrations/postgres/0001_foundation.sql"),
        },
        Migration {
            version: 2,
            name: "0002_customer_data",
            sql: include_str!("../../migrations/postgres/0002_customer_data.sql"),
        },
        Migration {
            version: 3,
            name: "0003_sessions",
            sql: include_str!("../../migrations/postgres/0003_sessions.sql"),
        },
        Migration {
            version: 4,
            name: "0004_key_usage",
            sql: include_str!("../../migrations/postgres/0004_key_usage.sql"),
        },
        Migration {
            version: 5,
            name: "0005_project_settings",
            sql: include_str!("../../migrations/postgres/0005_project_settings.sql"),
        },
        Migration {
            version: 6,
            name: "0006_metrics_credentials",
            sql: include_str!("../../migrations/postgres/0006_metrics_credentials.sql"),
        },
        Migration {
            version: 7,
            name: "0007_events_by_project",
            sql: include_str!("../../migrations/postgres/0007_events_by_project.sql"),
        },
        Migration {
            version: 8,
            name: "0008_events_contact_partial",
            sql: include_str!("../../migrations/postgres/0008_events_contact_partial.sql"),
        },
    ];

    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Several instances may start at once; a transaction-scoped advisory lock
    /// makes them apply migrations one after another.
    async fn lock_migrations(conn: &mut sqlx::PgConnection) -> Result<(), crate::StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(7231983)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl PostgresStore {
    /// PostgreSQL transactions need nothing special to write.
    async fn begin_write(&self) -> Result<WriteTx<'static>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Serialises membership changes of one workspace: under READ COMMITTED,
    /// two concurrent demotions of its last two owners would each still
    /// count two owners and both succeed. With the workspace row locked, the
    /// second waits and then sees the first one's result.
    async fn lock_workspace(
        conn: &mut sqlx::PgConnection,
        workspace_id: &str,
    ) -> Result<(), crate::StoreError> {
        sqlx::query("SELECT id FROM workspaces WHERE id = $1 FOR UPDATE")
            .bind(workspace_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Point reads have no shortcut on PostgreSQL: a query is a network round
    /// trip either way (see the SQLite store's direct reader).
    fn read_key_for_auth(
        &self,
        _digest: &keyflow_core::KeyDigest,
    ) -> Option<crate::StoreResult<Option<crate::AuthKey>>> {
        None
    }

    fn read_contact(
        &self,
        _project_id: &str,
        _lookup: &keyflow_core::contacts::ContactLookup,
    ) -> Option<crate::StoreResult<Option<crate::Contact>>> {
        None
    }

    /// Concurrent requests each run their own transaction; PostgreSQL's row
    /// locks and `ON CONFLICT` keep idempotency keys and contacts exact.
    /// Events that need no lookups and fit one INSERT skip the transaction:
    /// a single statement is atomic on its own, and BEGIN/COMMIT would be two
    /// more round trips per request.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<keyflow_core::events::NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let mut conn = self.pool.acquire().await?;
        let lookups = events.iter().any(crate::sql_store::EventRow::needs_lookups);
        if !lookups {
            let (outcomes, rows) =
                crate::sql_store::EventRow::lookup_free(project_id, &events, now);
            if crate::sql_store::event_chunks(&rows).len() <= 1 {
                insert_event_rows(&mut conn, &rows).await?;
            } else {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                insert_event_rows(&mut tx, &rows).await?;
                tx.commit().await?;
            }
            return Ok(outcomes);
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let (outcomes, rows) = prepare_events(&mut tx, project_id, &events, now).await?;
        insert_event_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// Multi-row INSERTs in a few fixed shapes (see `event_chunks`).
async fn insert_event_rows(
    conn: &mut sqlx::PgConnection,
    rows: &[crate::sql_store::EventRow],
) -> crate::StoreResult<()> {
    for chunk in crate::sql_store::event_chunks(rows) {
        let sql = crate::sql_store::insert_events_sql(chunk.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            query = query
                .bind(&r.id)
                .bind(&r.project_id)
                .bind(&r.name)
                .bind(&r.contact_id)
                .bind(&r.anonymous_id)
                .bind(&r.properties)
                .bind(r.timestamp)
                .bind(r.received_at)
                .bind(&r.idempotency_key);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A transaction meant to write (see `impl_sql_store!`).
type WriteTx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

impl_sql_store!(PostgresStore, sqlx::Postgres, "postgres");

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
    async fn lock_migrations(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), crate::StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(7231983)")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl PostgresStore {
    /// Concurrent requests each run their own transaction; PostgreSQL's row
    /// locks and `ON CONFLICT` keep idempotency keys and contacts exact.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<keyflow_core::events::NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let mut tx = self.pool.begin().await?;
        let outcomes = ingest_in_tx(&mut tx, project_id, &events, now).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

impl_sql_store!(PostgresStore, sqlx::Postgres, "postgres");

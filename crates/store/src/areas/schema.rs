//! The schema: embedded migrations applied at start, and the health check.

use async_trait::async_trait;
use keyflow_core::contacts::email_key;

use crate::StoreResult;
use crate::backend::{Backend, Db, Run, WriteTx};

/// The migration after which contacts' emails are re-keyed in NFC.
pub(crate) const CONTACT_EMAILS_NFC: i64 = 10;

#[async_trait]
pub trait SchemaStore: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend_name(&self) -> &'static str;
    /// Applies pending migrations; returns the names of those applied now.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

#[async_trait]
impl<B: Backend> SchemaStore for B {
    fn backend_name(&self) -> &'static str {
        B::Db::NAME
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn migrate(&self) -> StoreResult<Vec<String>> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "CREATE TABLE IF NOT EXISTS keyflow_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .run(&mut conn)
        .await?;
        drop(conn);
        let mut tx = self.begin_write().await?;
        B::lock_migrations(&mut tx).await?;
        let applied: Vec<(i64,)> = sqlx::query::<B::Db>("SELECT version FROM keyflow_migrations")
            .all(&mut tx)
            .await?;
        let mut names = Vec::new();
        for m in B::MIGRATIONS
            .iter()
            .filter(|m| !applied.iter().any(|(v,)| *v == m.version))
        {
            sqlx::raw_sql(m.sql)
                .execute(B::Db::exec(&mut tx))
                .await
                .map_err(|e| crate::StoreError::Migration {
                    name: m.name.to_string(),
                    reason: e.to_string(),
                })?;
            if m.version == CONTACT_EMAILS_NFC {
                rekey_contact_emails::<B::Db>(&mut tx).await?;
            }
            sqlx::query::<B::Db>(
                "INSERT INTO keyflow_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .arg(m.version)
            .arg(m.name)
            .arg(keyflow_core::Clock::now_ms(&keyflow_core::SystemClock))
            .run(&mut tx)
            .await?;
            names.push(m.name.to_string());
        }
        tx.commit().await?;
        Ok(names)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("SELECT 1").run(&mut conn).await?;
        Ok(())
    }
}

/// Contacts stored before emails were compared in NFC: their email and key
/// are recomputed (only non-ASCII emails can change). A contact whose NFC key
/// another contact of its project already holds keeps its old key (merging
/// two contacts is the tenant's call) and is logged.
async fn rekey_contact_emails<DB: Db>(tx: &mut DB::Connection) -> StoreResult<()> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query::<DB>(
        "SELECT project_id, id, email, email_key FROM contacts \
         WHERE email IS NOT NULL AND octet_length(email) <> length(email)",
    )
    .all(tx)
    .await?;
    for (project_id, id, email, old_key) in rows {
        let new_email = keyflow_core::text::nfc_email(&email);
        let new_key = email_key(&new_email);
        if new_email == email && old_key.as_deref() == Some(new_key.as_str()) {
            continue;
        }
        let taken: Option<(String,)> = sqlx::query::<DB>(
            "SELECT id FROM contacts WHERE project_id = $1 AND email_key = $2 AND id <> $3",
        )
        .arg(&project_id)
        .arg(&new_key)
        .arg(&id)
        .optional(tx)
        .await?;
        if let Some((other,)) = taken {
            tracing::warn!(
                contact = %id,
                other_contact = %other,
                project = %project_id,
                "two contacts have the same email in NFC; this one keeps its old comparison key"
            );
            continue;
        }
        sqlx::query::<DB>(
            "UPDATE contacts SET email = $1, email_key = $2 WHERE project_id = $3 AND id = $4",
        )
        .arg(&new_email)
        .arg(&new_key)
        .arg(&project_id)
        .arg(&id)
        .run(tx)
        .await?;
    }
    Ok(())
}

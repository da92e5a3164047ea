//! Dashboard sessions (stored by the hash of their id).

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;

use super::audit::write_audit;
use crate::backend::{Backend, Run, WriteTx};
use crate::columns::{SESSION_COLUMNS, SessionRow};
use crate::{AuditEntry, Session, StoreResult};

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session and, in the same transaction, the sign-in's audit entries.
    async fn create_session(&self, session: &Session, audit: &[AuditEntry]) -> StoreResult<()>;
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>>;
    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StoreResult<()>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
}

#[async_trait]
impl<B: Backend> SessionStore for B {
    async fn create_session(&self, session: &Session, audit: &[AuditEntry]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)");
        sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(&session.id_hash)
            .arg(&session.operator_id)
            .arg(&session.csrf_token)
            .arg(session.created_at)
            .arg(session.last_seen_at)
            .run(&mut tx)
            .await?;
        for entry in audit {
            write_audit::<B::Db>(&mut tx, entry).await?;
        }
        tx.commit().await
    }

    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = $1");
        let row: Option<SessionRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(id_hash)
            .optional(&mut conn)
            .await?;
        Ok(row.map(Session::from))
    }

    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .arg(at)
            .arg(id_hash)
            .run(&mut conn)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("DELETE FROM sessions WHERE id_hash = $1")
            .arg(id_hash)
            .run(&mut conn)
            .await?;
        Ok(())
    }
}

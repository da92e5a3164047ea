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
    /// Claims a one-time form's nonce as its form is posted: `Fresh` the
    /// first time (on every instance), `Used` after.
    async fn claim_form(&self, nonce: &str, now: UnixMillis) -> StoreResult<FormClaim>;
    /// After a claimed form's work: `Some(id)` records what it made; `None`
    /// (it made nothing, say a validation error) frees the nonce for a retry.
    async fn finish_form(&self, nonce: &str, result_id: Option<&str>) -> StoreResult<()>;
}

/// What posting a one-time form found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormClaim {
    Fresh,
    /// Posted before; what that post made, once it finished.
    Used {
        result_id: Option<String>,
    },
}

/// One-time form nonces are kept this long.
const FORM_NONCE_MS: i64 = 24 * 3_600_000;

#[async_trait]
impl<B: Backend> SessionStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
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

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = $1");
        let row: Option<SessionRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(id_hash)
            .optional(&mut conn)
            .await?;
        Ok(row.map(Session::from))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .arg(at)
            .arg(id_hash)
            .run(&mut conn)
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn claim_form(&self, nonce: &str, now: UnixMillis) -> StoreResult<FormClaim> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("DELETE FROM form_nonces WHERE created_at < $1")
            .arg(now - FORM_NONCE_MS)
            .run(&mut conn)
            .await?;
        let claimed = sqlx::query::<B::Db>(
            "INSERT INTO form_nonces (nonce, result_id, created_at) VALUES ($1, NULL, $2) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .arg(nonce)
        .arg(now)
        .run(&mut conn)
        .await?;
        if claimed == 1 {
            return Ok(FormClaim::Fresh);
        }
        let found: Option<(Option<String>,)> =
            sqlx::query::<B::Db>("SELECT result_id FROM form_nonces WHERE nonce = $1")
                .arg(nonce)
                .optional(&mut conn)
                .await?;
        Ok(FormClaim::Used {
            result_id: found.and_then(|(id,)| id),
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn finish_form(&self, nonce: &str, result_id: Option<&str>) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        match result_id {
            Some(id) => {
                sqlx::query::<B::Db>("UPDATE form_nonces SET result_id = $1 WHERE nonce = $2")
                    .arg(id)
                    .arg(nonce)
                    .run(&mut conn)
                    .await?
            }
            None => {
                sqlx::query::<B::Db>("DELETE FROM form_nonces WHERE nonce = $1")
                    .arg(nonce)
                    .run(&mut conn)
                    .await?
            }
        };
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>("DELETE FROM sessions WHERE id_hash = $1")
            .arg(id_hash)
            .run(&mut conn)
            .await?;
        Ok(())
    }
}

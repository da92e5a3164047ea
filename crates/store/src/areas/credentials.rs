//! The Metrics API credential of a project (one per project).

use async_trait::async_trait;
use keyflow_core::IpRule;

use super::audit::commit_if;
use crate::backend::{Backend, Run, WriteTx};
use crate::columns::{CREDENTIAL_COLUMNS, CredentialAuthRow, CredentialRow, from_json, to_json};
use crate::{AuditEntry, MetricsCredential, StoreResult};

#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The project's metrics credential, if one was ever created.
    async fn metrics_credential(&self, project_id: &str) -> StoreResult<Option<MetricsCredential>>;
    /// The credential with this id and its project's workspace (token
    /// exchange and access tokens); `None` once it was rotated away.
    async fn credential_for_auth(
        &self,
        id: &str,
    ) -> StoreResult<Option<(MetricsCredential, String)>>;
    /// Records a use of the credential at `at`, unless one was recorded in the
    /// minute before (so a busy credential does not write on every call).
    async fn mark_credential_used(&self, id: &str, at: i64) -> StoreResult<()>;
    /// Stores an access token's digest for `credential_id` until
    /// `expires_at`, and drops the project's tokens expired by `now`.
    async fn put_metrics_token(
        &self,
        digest: &keyflow_core::KeyDigest,
        credential_id: &str,
        project_id: &str,
        expires_at: i64,
        now: i64,
    ) -> StoreResult<()>;
    /// The credential id and expiry of the access token with this digest.
    async fn metrics_token(
        &self,
        digest: &keyflow_core::KeyDigest,
    ) -> StoreResult<Option<(String, i64)>>;
    /// Creates the project's credential or replaces it (rotation: new id and
    /// secret; the stored allow-list stays), with its audit entry, in one
    /// transaction. Returns the credential as stored.
    async fn put_metrics_credential(
        &self,
        credential: &MetricsCredential,
        audit: &AuditEntry,
    ) -> StoreResult<MetricsCredential>;
    /// Changes the credential's allow-list and/or the project's metrics cache
    /// TTL with one audit entry; `false` (nothing changed) if the project has
    /// no credential.
    async fn update_metrics_credential(
        &self,
        project_id: &str,
        ip_allowlist: Option<&[IpRule]>,
        cache_ttl_minutes: Option<i64>,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
}

#[async_trait]
impl<B: Backend> CredentialStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn metrics_credential(&self, project_id: &str) -> StoreResult<Option<MetricsCredential>> {
        let mut conn = self.pool().acquire().await?;
        let sql =
            format!("SELECT {CREDENTIAL_COLUMNS} FROM metrics_credentials WHERE project_id = $1");
        let row: Option<CredentialRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .optional(&mut conn)
            .await?;
        row.map(CredentialRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn credential_for_auth(
        &self,
        id: &str,
    ) -> StoreResult<Option<(MetricsCredential, String)>> {
        let mut conn = self.pool().acquire().await?;
        // One round trip: the credential and its project's workspace.
        let sql = format!(
            "SELECT {CREDENTIAL_COLUMNS}, (SELECT workspace_id FROM projects \
             WHERE projects.id = metrics_credentials.project_id) AS workspace_id \
             FROM metrics_credentials WHERE id = $1"
        );
        let row: Option<CredentialAuthRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(id)
            .optional(&mut conn)
            .await?;
        row.map(|r| Ok((r.credential.into_model()?, r.workspace_id)))
            .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn mark_credential_used(&self, id: &str, at: i64) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "UPDATE metrics_credentials SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .arg(id)
        .arg(at)
        .arg(at - 60_000)
        .run(&mut tx)
        .await?;
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put_metrics_token(
        &self,
        digest: &keyflow_core::KeyDigest,
        credential_id: &str,
        project_id: &str,
        expires_at: i64,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "INSERT INTO metrics_tokens (digest, credential_id, project_id, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .arg(digest.to_hex())
        .arg(credential_id)
        .arg(project_id)
        .arg(expires_at)
        .run(&mut tx)
        .await?;
        sqlx::query::<B::Db>(
            "DELETE FROM metrics_tokens WHERE project_id = $1 AND expires_at <= $2",
        )
        .arg(project_id)
        .arg(now)
        .run(&mut tx)
        .await?;
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn metrics_token(
        &self,
        digest: &keyflow_core::KeyDigest,
    ) -> StoreResult<Option<(String, i64)>> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "SELECT credential_id, expires_at FROM metrics_tokens WHERE digest = $1",
        )
        .arg(digest.to_hex())
        .optional(&mut conn)
        .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put_metrics_credential(
        &self,
        c: &MetricsCredential,
        audit: &AuditEntry,
    ) -> StoreResult<MetricsCredential> {
        let allowlist = to_json(&c.ip_allowlist)?;
        let mut tx = self.begin_write().await?;
        // A rotation keeps the stored allow-list (never the caller's copy,
        // which a concurrent change may have made stale).
        let (stored,): (String,) = sqlx::query::<B::Db>(
            "INSERT INTO metrics_credentials (project_id, id, secret_digest, ip_allowlist, \
             created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, NULL) \
             ON CONFLICT (project_id) DO UPDATE SET id = excluded.id, \
             secret_digest = excluded.secret_digest, created_at = excluded.created_at, \
             last_used_at = NULL RETURNING ip_allowlist",
        )
        .arg(&c.project_id)
        .arg(&c.id)
        .arg(c.secret_digest.to_hex())
        .arg(allowlist)
        .arg(c.created_at)
        .one(&mut tx)
        .await
        .map_err(|e| e.for_write("metrics credential"))?;
        commit_if::<B::Db>(tx, true, audit).await?;
        Ok(MetricsCredential {
            ip_allowlist: from_json("ip_allowlist", &stored)?,
            last_used_at: None,
            ..c.clone()
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn update_metrics_credential(
        &self,
        project_id: &str,
        ip_allowlist: Option<&[IpRule]>,
        cache_ttl_minutes: Option<i64>,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let allowlist = ip_allowlist.map(to_json).transpose()?;
        let mut tx = self.begin_write().await?;
        // Write first: on SQLite a transaction that starts by reading cannot
        // wait for the write lock (it fails with SQLITE_BUSY).
        let changed = sqlx::query::<B::Db>(
            "UPDATE metrics_credentials SET ip_allowlist = COALESCE($2, ip_allowlist) \
             WHERE project_id = $1",
        )
        .arg(project_id)
        .arg(allowlist)
        .run(&mut tx)
        .await?;
        if changed != 1 {
            return Ok(false);
        }
        if let Some(ttl) = cache_ttl_minutes {
            // The TTL is a project setting (also on /settings); keep its rate limit.
            sqlx::query::<B::Db>(
                "INSERT INTO project_settings (project_id, rate_limit, metrics_cache_ttl_minutes) \
                 VALUES ($1, NULL, $2) ON CONFLICT (project_id) DO UPDATE SET \
                 metrics_cache_ttl_minutes = excluded.metrics_cache_ttl_minutes",
            )
            .arg(project_id)
            .arg(ttl)
            .run(&mut tx)
            .await?;
        }
        commit_if::<B::Db>(tx, true, audit).await
    }
}

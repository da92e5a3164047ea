//! API keys: creation, the authentication lookup, settings, revocation,
//! rolling, and usage (last use and daily totals).

use async_trait::async_trait;
use keyflow_core::KeyDigest;
use keyflow_core::clock::UnixMillis;
use keyflow_core::key_settings::KeySettings;

use super::audit::{commit_if, write_audit};
use crate::backend::{Backend, Db, Run, WriteTx};
use crate::columns::{
    AuthKeyRow, DailyUsageRow, INSERT_KEY, KEY_COLUMNS, KeyRow, USAGE_CHUNK, actor_columns,
    page_limit, scopes_to_column, settings_columns, usage_update_sql,
};
use crate::{ApiKey, AuditEntry, AuthKey, DailyUsage, KeyUsage, Page, StoreResult};

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key and its `api_key.created` entry atomically.
    async fn insert_api_key(&self, key: &ApiKey, audit: &AuditEntry) -> StoreResult<()>;
    async fn get_api_key(&self, project_id: &str, id: &str) -> StoreResult<Option<ApiKey>>;
    /// The authentication lookup: by digest, with the owning workspace.
    async fn find_key_for_auth(&self, digest: &KeyDigest) -> StoreResult<Option<AuthKey>>;
    async fn list_api_keys(
        &self,
        project_id: &str,
        include_revoked: bool,
        page: &Page,
    ) -> StoreResult<Vec<ApiKey>>;
    /// Unrevoked, unexpired keys of a workspace (the ones a downgrade suspends).
    async fn count_active_keys(&self, workspace_id: &str, now: UnixMillis) -> StoreResult<i64>;
    /// Replaces the mutable settings of an unrevoked key that is still as
    /// the caller read it (`read`: its `expires_at` and `rolled_at`), so a
    /// roll committed in between is never undone; `false` otherwise.
    async fn update_api_key_settings(
        &self,
        project_id: &str,
        id: &str,
        read: &ApiKey,
        settings: &KeySettings,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Revokes an unrevoked key; `false` if there is none.
    async fn revoke_api_key(
        &self,
        project_id: &str,
        id: &str,
        at: UnixMillis,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Inserts `new_key` and moves the old key's expiry to `old_expires_at`,
    /// atomically. Marks the old key rolled (at `new_key.created_at`).
    /// `false` (and nothing written) if the old key is gone, revoked or
    /// already rolled.
    async fn roll_api_key(
        &self,
        project_id: &str,
        old_id: &str,
        old_expires_at: UnixMillis,
        new_key: &ApiKey,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Writes aggregated last-used data; never moves `last_used_at` backwards.
    async fn record_key_usage(&self, usage: &[KeyUsage]) -> StoreResult<()>;
    /// Adds counted requests to the per-key daily totals.
    async fn add_daily_usage(&self, rows: &[(String, DailyUsage)]) -> StoreResult<()>;
    /// A key's daily totals from `since_day` on, oldest first.
    async fn daily_usage(&self, key_id: &str, since_day: i64) -> StoreResult<Vec<DailyUsage>>;
}

async fn write_key<DB: Db>(tx: &mut DB::Connection, k: &ApiKey) -> StoreResult<()> {
    let (created_type, created_id, created_name, created_prefix) = actor_columns(&k.created_by);
    let columns = settings_columns(&k.settings)?;
    sqlx::query::<DB>(INSERT_KEY)
        .arg(&k.id)
        .arg(&k.project_id)
        .arg(&k.settings.name)
        .arg(k.key_type.as_str())
        .arg(scopes_to_column(k.scopes))
        .arg(&k.prefix)
        .arg(k.digest.to_hex())
        .arg(k.created_at)
        .arg(created_type)
        .arg(created_id)
        .arg(created_name)
        .arg(created_prefix)
        .arg(k.settings.expires_at)
        .arg(k.revoked_at)
        .arg(k.last_used_at)
        .arg(&k.last_used_ip)
        .arg(columns.ip_allowlist)
        .arg(columns.allowed_events)
        .arg(columns.allowed_origins)
        .arg(columns.rate_limit)
        .run(tx)
        .await
        .map_err(|e| e.for_write("api key"))?;
    Ok(())
}

#[async_trait]
impl<B: Backend> KeyStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn insert_api_key(&self, key: &ApiKey, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        write_key::<B::Db>(&mut tx, key).await?;
        write_audit::<B::Db>(&mut tx, audit).await?;
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_api_key(&self, project_id: &str, id: &str) -> StoreResult<Option<ApiKey>> {
        let mut conn = self.pool().acquire().await?;
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.project_id = $1 AND k.id = $2");
        let row: Option<KeyRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(id)
            .optional(&mut conn)
            .await?;
        row.map(KeyRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_key_for_auth(&self, digest: &KeyDigest) -> StoreResult<Option<AuthKey>> {
        if let Some(direct) = self.read_key_for_auth(digest) {
            return direct;
        }
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS}, p.workspace_id AS p_workspace_id, p.environment AS p_environment \
             FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.digest = $1"
        );
        let row: Option<AuthKeyRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(digest.to_hex())
            .optional(&mut conn)
            .await?;
        row.map(AuthKeyRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_api_keys(
        &self,
        project_id: &str,
        include_revoked: bool,
        page: &Page,
    ) -> StoreResult<Vec<ApiKey>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.project_id = $1 \
             AND ($2 OR k.revoked_at IS NULL) AND ($3 IS NULL OR k.id < $3) \
             ORDER BY k.id DESC LIMIT $4"
        );
        let rows: Vec<KeyRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(include_revoked)
            .arg(&page.cursor)
            .arg(page_limit(page.limit))
            .all(&mut conn)
            .await?;
        rows.into_iter().map(KeyRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn count_active_keys(&self, workspace_id: &str, now: UnixMillis) -> StoreResult<i64> {
        let mut conn = self.pool().acquire().await?;
        let (count,): (i64,) = sqlx::query::<B::Db>(
            "SELECT COUNT(*) FROM api_keys k JOIN projects p ON p.id = k.project_id \
             WHERE p.workspace_id = $1 AND k.revoked_at IS NULL \
             AND (k.expires_at IS NULL OR k.expires_at > $2)",
        )
        .arg(workspace_id)
        .arg(now)
        .one(&mut conn)
        .await?;
        Ok(count)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn update_api_key_settings(
        &self,
        project_id: &str,
        id: &str,
        read: &ApiKey,
        s: &KeySettings,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let columns = settings_columns(s)?;
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query::<B::Db>(
            "UPDATE api_keys SET name = $1, expires_at = $2, ip_allowlist = $3, allowed_events = $4, \
             allowed_origins = $5, rate_limit = $6 \
             WHERE project_id = $7 AND id = $8 AND revoked_at IS NULL \
             AND expires_at IS NOT DISTINCT FROM $9 AND rolled_at IS NOT DISTINCT FROM $10",
        )
        .arg(&s.name)
        .arg(s.expires_at)
        .arg(columns.ip_allowlist)
        .arg(columns.allowed_events)
        .arg(columns.allowed_origins)
        .arg(columns.rate_limit)
        .arg(project_id)
        .arg(id)
        .arg(read.settings.expires_at)
        .arg(read.rolled_at)
        .run(&mut tx)
        .await?;
        commit_if::<B::Db>(tx, changed == 1, audit).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn revoke_api_key(
        &self,
        project_id: &str,
        id: &str,
        at: UnixMillis,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query::<B::Db>(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .arg(at)
        .arg(project_id)
        .arg(id)
        .run(&mut tx)
        .await?;
        commit_if::<B::Db>(tx, changed == 1, audit).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn roll_api_key(
        &self,
        project_id: &str,
        old_id: &str,
        old_expires_at: UnixMillis,
        new_key: &ApiKey,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        // An earlier expiry the key already had is kept.
        let changed = sqlx::query::<B::Db>(
            "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at < $1 \
             THEN expires_at ELSE $1 END, rolled_at = $4 \
             WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL AND rolled_at IS NULL",
        )
        .arg(old_expires_at)
        .arg(project_id)
        .arg(old_id)
        .arg(new_key.created_at)
        .run(&mut tx)
        .await?;
        if changed == 1 {
            write_key::<B::Db>(&mut tx, new_key).await?;
        }
        commit_if::<B::Db>(tx, changed == 1, audit).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn record_key_usage(&self, usage: &[KeyUsage]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        for chunk in usage.chunks(USAGE_CHUNK) {
            let sql = usage_update_sql(chunk.len());
            let mut query = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                query = query.arg(&u.key_id).arg(u.last_used_at).arg(&u.ip);
            }
            query.run(&mut tx).await?;
        }
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn add_daily_usage(&self, rows: &[(String, DailyUsage)]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        for (key_id, u) in rows {
            sqlx::query::<B::Db>(
                "INSERT INTO key_usage_daily (key_id, day, requests, errors, rate_limited) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id, day) DO UPDATE SET \
                 requests = key_usage_daily.requests + excluded.requests, \
                 errors = key_usage_daily.errors + excluded.errors, \
                 rate_limited = key_usage_daily.rate_limited + excluded.rate_limited",
            )
            .arg(key_id)
            .arg(u.day)
            .arg(u.requests)
            .arg(u.errors)
            .arg(u.rate_limited)
            .run(&mut tx)
            .await?;
        }
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn daily_usage(&self, key_id: &str, since_day: i64) -> StoreResult<Vec<DailyUsage>> {
        let mut conn = self.pool().acquire().await?;
        let rows: Vec<DailyUsageRow> = sqlx::query::<B::Db>(
            "SELECT day, requests, errors, rate_limited FROM key_usage_daily \
             WHERE key_id = $1 AND day >= $2 ORDER BY day",
        )
        .arg(key_id)
        .arg(since_day)
        .all(&mut conn)
        .await?;
        Ok(rows.into_iter().map(DailyUsage::from).collect())
    }
}

//! The activity log: entries written in the transaction of the change they
//! record, and the project's searchable history.

use async_trait::async_trait;

use crate::backend::{Backend, Db, Run, WriteTx};
use crate::columns::{AUDIT_COLUMNS, AuditRow, INSERT_AUDIT, actor_columns, page_limit};
use crate::{AuditEntry, AuditFilter, Page, StoreResult};

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records an entry on its own (most are written with their change).
    async fn insert_audit(&self, entry: &AuditEntry) -> StoreResult<()>;

    /// A project's activity: its own entries plus its workspace's project-less ones.
    async fn list_audit(
        &self,
        workspace_id: &str,
        project_id: &str,
        page: &Page,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.search_audit(workspace_id, project_id, &AuditFilter::default(), page)
            .await
    }

    /// [`AuditStore::list_audit`] narrowed by action and/or actor.
    async fn search_audit(
        &self,
        workspace_id: &str,
        project_id: &str,
        filter: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditEntry>>;
}

/// Writes one entry on `conn` (inside the caller's transaction).
pub(crate) async fn write_audit<DB: Db>(
    conn: &mut DB::Connection,
    e: &AuditEntry,
) -> StoreResult<()> {
    let (actor_type, actor_id, actor_name, actor_prefix) = actor_columns(&e.actor);
    sqlx::query::<DB>(INSERT_AUDIT)
        .arg(&e.id)
        .arg(&e.workspace_id)
        .arg(&e.project_id)
        .arg(e.at)
        .arg(actor_type)
        .arg(actor_id)
        .arg(actor_name)
        .arg(actor_prefix)
        .arg(&e.action)
        .arg(&e.target.kind)
        .arg(&e.target.id)
        .arg(&e.target.name)
        .arg(&e.ip)
        .arg(e.details.to_string())
        .run(conn)
        .await?;
    Ok(())
}

/// Commits `tx` with its audit entry when the change happened; otherwise
/// drops it (rolling back) and reports `false`.
pub(crate) async fn commit_if<DB: Db>(
    mut tx: impl WriteTx<DB>,
    done: bool,
    audit: &AuditEntry,
) -> StoreResult<bool> {
    if done {
        write_audit::<DB>(&mut tx, audit).await?;
        tx.commit().await?;
    }
    Ok(done)
}

#[async_trait]
impl<B: Backend> AuditStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn insert_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        write_audit::<B::Db>(&mut tx, entry).await?;
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn search_audit(
        &self,
        workspace_id: &str,
        project_id: &str,
        filter: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE workspace_id = $1 \
             AND (project_id = $2 OR project_id IS NULL) AND ($3 IS NULL OR id < $3) \
             AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR actor_id = $6 OR actor_name = $6) \
             ORDER BY id DESC LIMIT $4"
        );
        let mut conn = self.pool().acquire().await?;
        let rows: Vec<AuditRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(workspace_id)
            .arg(project_id)
            .arg(&page.cursor)
            .arg(page_limit(page.limit))
            .arg(&filter.action)
            .arg(&filter.actor)
            .all(&mut conn)
            .await?;
        rows.into_iter().map(AuditRow::into_model).collect()
    }
}

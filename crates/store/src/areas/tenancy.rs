//! Workspaces (with their plan), projects, and project settings.

use async_trait::async_trait;
use keyflow_core::Plan;

use super::audit::{commit_if, write_audit};
use crate::backend::{Backend, Run, WriteTx};
use crate::columns::{
    PROJECT_COLUMNS, ProjectRow, ProjectSettingsRow, WorkspaceRow, page_limit, parse_plan, to_json,
};
use crate::{AuditEntry, Page, Project, ProjectSettings, StoreResult, Workspace};

#[async_trait]
pub trait TenancyStore: Send + Sync {
    async fn create_workspace(&self, workspace: &Workspace) -> StoreResult<()>;
    async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>>;
    /// Workspaces newest first, a page at a time (instance administration).
    async fn list_workspaces(&self, page: &Page) -> StoreResult<Vec<Workspace>>;
    /// Changes the plan and records `audit` in the same transaction.
    /// Returns the previous plan, or `None` if the workspace does not exist.
    async fn set_workspace_plan(
        &self,
        id: &str,
        plan: Plan,
        audit: &AuditEntry,
    ) -> StoreResult<Option<Plan>>;

    async fn create_project(&self, project: &Project) -> StoreResult<()>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self, workspace_id: &str) -> StoreResult<Vec<Project>>;

    /// A project's settings (defaults when never changed).
    async fn project_settings(&self, project_id: &str) -> StoreResult<ProjectSettings>;
    async fn set_project_settings(
        &self,
        project_id: &str,
        settings: &ProjectSettings,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
}

#[async_trait]
impl<B: Backend> TenancyStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_workspace(&self, w: &Workspace) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "INSERT INTO workspaces (id, name, plan, created_at) VALUES ($1, $2, $3, $4)",
        )
        .arg(&w.id)
        .arg(&w.name)
        .arg(w.plan.as_str())
        .arg(w.created_at)
        .run(&mut conn)
        .await
        .map_err(|e| e.for_write("workspace"))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>> {
        let mut conn = self.pool().acquire().await?;
        let row: Option<WorkspaceRow> =
            sqlx::query::<B::Db>("SELECT id, name, plan, created_at FROM workspaces WHERE id = $1")
                .arg(id)
                .optional(&mut conn)
                .await?;
        row.map(WorkspaceRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_workspaces(&self, page: &Page) -> StoreResult<Vec<Workspace>> {
        let mut conn = self.pool().acquire().await?;
        let rows: Vec<WorkspaceRow> = sqlx::query::<B::Db>(
            "SELECT id, name, plan, created_at FROM workspaces \
             WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .arg(&page.cursor)
        .arg(page_limit(page.limit))
        .all(&mut conn)
        .await?;
        rows.into_iter().map(WorkspaceRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn set_workspace_plan(
        &self,
        id: &str,
        plan: Plan,
        audit: &AuditEntry,
    ) -> StoreResult<Option<Plan>> {
        let mut tx = self.begin_write().await?;
        let previous: Option<(String,)> =
            sqlx::query::<B::Db>("SELECT plan FROM workspaces WHERE id = $1")
                .arg(id)
                .optional(&mut tx)
                .await?;
        let Some((previous,)) = previous else {
            return Ok(None);
        };
        sqlx::query::<B::Db>("UPDATE workspaces SET plan = $1 WHERE id = $2")
            .arg(plan.as_str())
            .arg(id)
            .run(&mut tx)
            .await?;
        write_audit::<B::Db>(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(parse_plan(&previous)?))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_project(&self, p: &Project) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "INSERT INTO projects (id, workspace_id, name, environment, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .arg(&p.id)
        .arg(&p.workspace_id)
        .arg(&p.name)
        .arg(p.environment.as_str())
        .arg(p.created_at)
        .run(&mut conn)
        .await
        .map_err(|e| e.for_write("project"))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1");
        let row: Option<ProjectRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(id)
            .optional(&mut conn)
            .await?;
        row.map(ProjectRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_projects(&self, workspace_id: &str) -> StoreResult<Vec<Project>> {
        let mut conn = self.pool().acquire().await?;
        let sql =
            format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE workspace_id = $1 ORDER BY id");
        let rows: Vec<ProjectRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(workspace_id)
            .all(&mut conn)
            .await?;
        rows.into_iter().map(ProjectRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn project_settings(&self, project_id: &str) -> StoreResult<ProjectSettings> {
        let mut conn = self.pool().acquire().await?;
        let row: Option<ProjectSettingsRow> = sqlx::query::<B::Db>(
            "SELECT rate_limit, metrics_cache_ttl_minutes FROM project_settings \
             WHERE project_id = $1",
        )
        .arg(project_id)
        .optional(&mut conn)
        .await?;
        row.map_or_else(
            || Ok(ProjectSettings::default()),
            ProjectSettingsRow::into_model,
        )
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn set_project_settings(
        &self,
        project_id: &str,
        settings: &ProjectSettings,
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let rate_limit = settings.rate_limit.as_ref().map(to_json).transpose()?;
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "INSERT INTO project_settings (project_id, rate_limit, metrics_cache_ttl_minutes) \
             VALUES ($1, $2, $3) ON CONFLICT (project_id) DO UPDATE SET \
             rate_limit = excluded.rate_limit, \
             metrics_cache_ttl_minutes = excluded.metrics_cache_ttl_minutes",
        )
        .arg(project_id)
        .arg(rate_limit)
        .arg(settings.metrics_cache_ttl_minutes)
        .run(&mut tx)
        .await?;
        commit_if::<B::Db>(tx, true, audit).await.map(|_| ())
    }
}

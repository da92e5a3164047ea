//! Workflows (SPEC §10): definitions, their versions and signing secrets.

use async_trait::async_trait;
use keyflow_core::workflows::{Reentry, Step, Trigger, WorkflowStatus};

use super::audit::commit_if;
use crate::backend::{Backend, Run};
use crate::columns::{from_json, page_limit, to_json};
use keyflow_core::clock::UnixMillis;

use crate::{AuditEntry, Page, StoreError, StoreResult};

/// A workflow as stored. `Debug` leaves the secrets out.
#[derive(Clone, PartialEq)]
pub struct Workflow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub status: WorkflowStatus,
    pub reentry: Reentry,
    /// Starts at 1; +1 on each change of trigger or steps.
    pub version: i64,
    /// +1 on every change (a change applies only to the revision it read).
    pub revision: i64,
    pub trigger: Trigger,
    pub steps: Vec<Step>,
    pub signing_secret: String,
    /// The secret before the last rotation, signing too until `until`.
    pub previous_signing_secret: Option<(String, UnixMillis)>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("id", &self.id)
            .field("project_id", &self.project_id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("version", &self.version)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Stores a new workflow (version 1) with its audit entry.
    async fn create_workflow(&self, workflow: &Workflow, audit: &AuditEntry) -> StoreResult<()>;
    /// The project's workflow with this id (`None`: none, or another
    /// project's).
    async fn workflow(&self, project_id: &str, id: &str) -> StoreResult<Option<Workflow>>;
    /// The project's workflows, newest first, archived ones included.
    async fn workflows(&self, project_id: &str, page: &Page) -> StoreResult<Vec<Workflow>>;
    /// Replaces the workflow's changeable fields with `workflow`'s, and its
    /// audit entry, if the stored revision is still `workflow.revision - 1`;
    /// a version row is written when `workflow.version` is new. `false`:
    /// someone changed it first (nothing written).
    async fn update_workflow(&self, workflow: &Workflow, audit: &AuditEntry) -> StoreResult<bool>;
    /// The definition of one version of a workflow (a run follows the
    /// version it started on).
    async fn workflow_version(
        &self,
        workflow_id: &str,
        version: i64,
    ) -> StoreResult<Option<(Trigger, Vec<Step>)>>;
}

const WORKFLOW_COLUMNS: &str = "id, project_id, name, status, reentry, version, revision, \
     trigger_json, steps_json, signing_secret, previous_signing_secret, previous_secret_until, \
     created_at, updated_at";

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: String,
    project_id: String,
    name: String,
    status: String,
    reentry: String,
    version: i64,
    revision: i64,
    trigger_json: String,
    steps_json: String,
    signing_secret: String,
    previous_signing_secret: Option<String>,
    previous_secret_until: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl WorkflowRow {
    fn into_model(self) -> StoreResult<Workflow> {
        let corrupt = |what: &str, value: &str| {
            StoreError::Corrupt(format!("workflow {}: {what} {value:?}", self.id))
        };
        Ok(Workflow {
            status: WorkflowStatus::parse(&self.status)
                .ok_or_else(|| corrupt("status", &self.status))?,
            reentry: Reentry::parse(&self.reentry)
                .ok_or_else(|| corrupt("reentry", &self.reentry))?,
            trigger: from_json("trigger_json", &self.trigger_json)?,
            steps: from_json("steps_json", &self.steps_json)?,
            previous_signing_secret: self.previous_signing_secret.zip(self.previous_secret_until),
            id: self.id,
            project_id: self.project_id,
            name: self.name,
            version: self.version,
            revision: self.revision,
            signing_secret: self.signing_secret,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Writes `workflow`'s definition as its version row.
async fn insert_version<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    workflow: &Workflow,
) -> StoreResult<()> {
    sqlx::query::<DB>(
        "INSERT INTO workflow_versions (workflow_id, version, trigger_json, steps_json, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .arg(&workflow.id)
    .arg(workflow.version)
    .arg(to_json(&workflow.trigger)?)
    .arg(to_json(&workflow.steps)?)
    .arg(workflow.updated_at)
    .run(conn)
    .await?;
    Ok(())
}

/// Keeps `workflow_event_triggers` and `workflow_contact_triggers` true
/// for `workflow`: its trigger while it is active, nothing otherwise.
async fn sync_event_trigger<DB: crate::backend::Db>(
    conn: &mut DB::Connection,
    workflow: &Workflow,
) -> StoreResult<()> {
    sqlx::query::<DB>("DELETE FROM workflow_event_triggers WHERE workflow_id = $1")
        .arg(&workflow.id)
        .run(&mut *conn)
        .await?;
    sqlx::query::<DB>("DELETE FROM workflow_contact_triggers WHERE workflow_id = $1")
        .arg(&workflow.id)
        .run(&mut *conn)
        .await?;
    if workflow.status != WorkflowStatus::Active {
        return Ok(());
    }
    let (property, subscribed) = match &workflow.trigger {
        Trigger::ContactUpdated { property, .. } => (Some(property.as_str()), None),
        Trigger::SubscriptionChanged { subscribed } => (None, Some(*subscribed)),
        _ => (None, None),
    };
    if property.is_some() || subscribed.is_some() {
        sqlx::query::<DB>(
            "INSERT INTO workflow_contact_triggers (workflow_id, project_id, property, subscribed) \
             VALUES ($1, $2, $3, $4)",
        )
        .arg(&workflow.id)
        .arg(&workflow.project_id)
        .arg(property)
        .arg(subscribed)
        .run(&mut *conn)
        .await?;
    }
    if let (WorkflowStatus::Active, Trigger::Event { event, .. }) =
        (workflow.status, &workflow.trigger)
    {
        sqlx::query::<DB>(
            "INSERT INTO workflow_event_triggers (workflow_id, project_id, event_name) \
             VALUES ($1, $2, $3)",
        )
        .arg(&workflow.id)
        .arg(&workflow.project_id)
        .arg(event)
        .run(conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> WorkflowStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_workflow(&self, workflow: &Workflow, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (previous, until) = workflow.previous_signing_secret.clone().unzip();
        sqlx::query::<B::Db>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO workflows ({WORKFLOW_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .arg(&workflow.id)
        .arg(&workflow.project_id)
        .arg(&workflow.name)
        .arg(workflow.status.as_str())
        .arg(workflow.reentry.as_str())
        .arg(workflow.version)
        .arg(workflow.revision)
        .arg(to_json(&workflow.trigger)?)
        .arg(to_json(&workflow.steps)?)
        .arg(&workflow.signing_secret)
        .arg(previous)
        .arg(until)
        .arg(workflow.created_at)
        .arg(workflow.updated_at)
        .run(&mut tx)
        .await?;
        insert_version::<B::Db>(&mut tx, workflow).await?;
        sync_event_trigger::<B::Db>(&mut tx, workflow).await?;
        commit_if::<B::Db>(tx, true, audit).await.map(|_| ())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn workflow(&self, project_id: &str, id: &str) -> StoreResult<Option<Workflow>> {
        let mut conn = self.pool().acquire().await?;
        let sql =
            format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE project_id = $1 AND id = $2");
        let row: Option<WorkflowRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(id)
            .optional(&mut conn)
            .await?;
        row.map(WorkflowRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn workflows(&self, project_id: &str, page: &Page) -> StoreResult<Vec<Workflow>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE project_id = $1 \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<WorkflowRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(&page.cursor)
            .arg(page_limit(page.limit))
            .all(&mut conn)
            .await?;
        rows.into_iter().map(WorkflowRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn workflow_version(
        &self,
        workflow_id: &str,
        version: i64,
    ) -> StoreResult<Option<(Trigger, Vec<Step>)>> {
        let mut conn = self.pool().acquire().await?;
        let row: Option<(String, String)> = sqlx::query::<B::Db>(
            "SELECT trigger_json, steps_json FROM workflow_versions \
             WHERE workflow_id = $1 AND version = $2",
        )
        .arg(workflow_id)
        .arg(version)
        .optional(&mut conn)
        .await?;
        row.map(|(trigger, steps)| {
            Ok((
                from_json("trigger_json", &trigger)?,
                from_json("steps_json", &steps)?,
            ))
        })
        .transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn update_workflow(&self, workflow: &Workflow, audit: &AuditEntry) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let (previous, until) = workflow.previous_signing_secret.clone().unzip();
        let changed = sqlx::query::<B::Db>(
            "UPDATE workflows SET name = $3, status = $4, reentry = $5, version = $6, \
             revision = $7, trigger_json = $8, steps_json = $9, signing_secret = $10, \
             previous_signing_secret = $11, previous_secret_until = $12, updated_at = $13 \
             WHERE project_id = $1 AND id = $2 AND revision = $14",
        )
        .arg(&workflow.project_id)
        .arg(&workflow.id)
        .arg(&workflow.name)
        .arg(workflow.status.as_str())
        .arg(workflow.reentry.as_str())
        .arg(workflow.version)
        .arg(workflow.revision)
        .arg(to_json(&workflow.trigger)?)
        .arg(to_json(&workflow.steps)?)
        .arg(&workflow.signing_secret)
        .arg(previous)
        .arg(until)
        .arg(workflow.updated_at)
        .arg(workflow.revision - 1)
        .run(&mut tx)
        .await?
            == 1;
        if changed {
            let (stored,): (i64,) = sqlx::query::<B::Db>(
                "SELECT COUNT(*) FROM workflow_versions WHERE workflow_id = $1 AND version = $2",
            )
            .arg(&workflow.id)
            .arg(workflow.version)
            .one(&mut tx)
            .await?;
            if stored == 0 {
                insert_version::<B::Db>(&mut tx, workflow).await?;
            }
            sync_event_trigger::<B::Db>(&mut tx, workflow).await?;
        }
        commit_if::<B::Db>(tx, changed, audit).await
    }
}

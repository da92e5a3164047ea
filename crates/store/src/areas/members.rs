//! Operators (dashboard accounts) and their memberships of workspaces.

use async_trait::async_trait;
use keyflow_core::Role;

use super::audit::{commit_if, write_audit};
use crate::backend::{Backend, Run, WriteTx};
use crate::columns::{MEMBERSHIP_COLUMNS, MemberRow, MembershipRow, OPERATOR_COLUMNS, OperatorRow};
use crate::{AuditEntry, Membership, Operator, StoreResult};

#[async_trait]
pub trait MemberStore: Send + Sync {
    /// Creates an operator and their membership together (and `audit`, if any).
    async fn create_operator(
        &self,
        operator: &Operator,
        membership: &Membership,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<()>;
    async fn find_operator_by_email(&self, email: &str) -> StoreResult<Option<Operator>>;
    async fn get_operator(&self, id: &str) -> StoreResult<Option<Operator>>;
    async fn count_operators(&self) -> StoreResult<i64>;

    async fn get_membership(
        &self,
        workspace_id: &str,
        operator_id: &str,
    ) -> StoreResult<Option<Membership>>;
    async fn list_memberships(&self, operator_id: &str) -> StoreResult<Vec<Membership>>;
    /// A workspace's members with their accounts, oldest first.
    async fn list_members(&self, workspace_id: &str) -> StoreResult<Vec<(Operator, Membership)>>;
    /// Changes a member's role with its audit entry; `false` if not a member
    /// or if it would demote the last owner.
    async fn set_member_role(
        &self,
        workspace_id: &str,
        operator_id: &str,
        role: Role,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Removes a membership with its audit entry; `false` if not a member or
    /// if it is the last owner.
    async fn remove_member(
        &self,
        workspace_id: &str,
        operator_id: &str,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
}

#[async_trait]
impl<B: Backend> MemberStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_operator(
        &self,
        op: &Operator,
        m: &Membership,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query::<B::Db>(
            "INSERT INTO operators (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .arg(&op.id)
        .arg(&op.email)
        .arg(&op.password_hash)
        .arg(op.created_at)
        .run(&mut tx)
        .await
        .map_err(|e| e.for_write("an operator with this email"))?;
        sqlx::query::<B::Db>(
            "INSERT INTO memberships (workspace_id, operator_id, role, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .arg(&m.workspace_id)
        .arg(&m.operator_id)
        .arg(m.role.as_str())
        .arg(m.created_at)
        .run(&mut tx)
        .await
        .map_err(|e| e.for_write("membership"))?;
        if let Some(audit) = audit {
            write_audit::<B::Db>(&mut tx, audit).await?;
        }
        tx.commit().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_operator_by_email(&self, email: &str) -> StoreResult<Option<Operator>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE email = $1");
        let row: Option<OperatorRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(email.to_lowercase())
            .optional(&mut conn)
            .await?;
        Ok(row.map(Operator::from))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_operator(&self, id: &str) -> StoreResult<Option<Operator>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE id = $1");
        let row: Option<OperatorRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(id)
            .optional(&mut conn)
            .await?;
        Ok(row.map(Operator::from))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn count_operators(&self) -> StoreResult<i64> {
        let mut conn = self.pool().acquire().await?;
        let (count,): (i64,) = sqlx::query::<B::Db>("SELECT COUNT(*) FROM operators")
            .one(&mut conn)
            .await?;
        Ok(count)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_membership(
        &self,
        workspace_id: &str,
        operator_id: &str,
    ) -> StoreResult<Option<Membership>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {MEMBERSHIP_COLUMNS} FROM memberships WHERE workspace_id = $1 AND operator_id = $2"
        );
        let row: Option<MembershipRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(workspace_id)
            .arg(operator_id)
            .optional(&mut conn)
            .await?;
        row.map(MembershipRow::into_model).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_memberships(&self, operator_id: &str) -> StoreResult<Vec<Membership>> {
        let mut conn = self.pool().acquire().await?;
        let sql = format!(
            "SELECT {MEMBERSHIP_COLUMNS} FROM memberships WHERE operator_id = $1 ORDER BY created_at"
        );
        let rows: Vec<MembershipRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(operator_id)
            .all(&mut conn)
            .await?;
        rows.into_iter().map(MembershipRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_members(&self, workspace_id: &str) -> StoreResult<Vec<(Operator, Membership)>> {
        let mut conn = self.pool().acquire().await?;
        let rows: Vec<MemberRow> = sqlx::query::<B::Db>(
            "SELECT o.id, o.email, o.password_hash, o.created_at AS o_created_at, m.workspace_id, \
             m.operator_id, m.role, m.created_at FROM memberships m \
             JOIN operators o ON o.id = m.operator_id \
             WHERE m.workspace_id = $1 ORDER BY m.created_at, o.email",
        )
        .arg(workspace_id)
        .all(&mut conn)
        .await?;
        rows.into_iter().map(MemberRow::into_model).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn set_member_role(
        &self,
        workspace_id: &str,
        operator_id: &str,
        role: Role,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        B::lock_workspace(&mut tx, workspace_id).await?;
        // The last owner cannot be demoted: checked in the statement itself,
        // not only by the caller's earlier read.
        let changed = sqlx::query::<B::Db>(
            "UPDATE memberships SET role = $1 WHERE workspace_id = $2 AND operator_id = $3 \
             AND ($1 = 'owner' OR role <> 'owner' OR \
             (SELECT COUNT(*) FROM memberships o WHERE o.workspace_id = $2 AND o.role = 'owner') > 1)",
        )
        .arg(role.as_str())
        .arg(workspace_id)
        .arg(operator_id)
        .run(&mut tx)
        .await?;
        commit_if::<B::Db>(tx, changed == 1, audit).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn remove_member(
        &self,
        workspace_id: &str,
        operator_id: &str,
        audit: &AuditEntry,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        B::lock_workspace(&mut tx, workspace_id).await?;
        let removed = sqlx::query::<B::Db>(
            "DELETE FROM memberships WHERE workspace_id = $1 AND operator_id = $2 \
             AND (role <> 'owner' OR \
             (SELECT COUNT(*) FROM memberships o WHERE o.workspace_id = $1 AND o.role = 'owner') > 1)",
        )
        .arg(workspace_id)
        .arg(operator_id)
        .run(&mut tx)
        .await?;
        commit_if::<B::Db>(tx, removed == 1, audit).await
    }
}

//! Keyflow persistence: the [`Store`] trait and its two implementations,
//! SQLite (the embedded default) and PostgreSQL.
//!
//! Handlers never write SQL; they call the trait. The statements themselves are
//! portable (integer-millisecond times, text ids and JSON) and shared by both
//! backends through [`sql_store`]; each backend owns its migrations and its
//! connection setup.

mod error;
mod ingest_queue;
mod models;
pub mod postgres;
mod sql_store;
pub mod sqlite;

use async_trait::async_trait;
use keyflow_core::contacts::{ContactChanges, ContactLookup};
use keyflow_core::events::NewEvent;
use keyflow_core::{KeyDigest, Plan, clock::UnixMillis, key_settings::KeySettings};

pub use error::StoreError;
pub use models::*;

pub type StoreResult<T> = Result<T, StoreError>;

/// Cursor pagination: newest first, `cursor` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: u32,
    pub cursor: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend_name(&self) -> &'static str;

    /// Applies pending migrations; returns the names of those applied now.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_workspace(&self, workspace: &Workspace) -> StoreResult<()>;
    async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>>;
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

    /// Creates an operator and their membership together (and `audit`, if any).
    async fn create_operator(
        &self,
        operator: &Operator,
        membership: &Membership,
        audit: Option<&AuditEntry>,
    ) -> StoreResult<()>;
    async fn find_operator_by_email(&self, email: &str) -> StoreResult<Option<Operator>>;
    async fn get_membership(
        &self,
        workspace_id: &str,
        operator_id: &str,
    ) -> StoreResult<Option<Membership>>;
    async fn list_memberships(&self, operator_id: &str) -> StoreResult<Vec<Membership>>;
    async fn get_operator(&self, id: &str) -> StoreResult<Option<Operator>>;
    async fn count_operators(&self) -> StoreResult<i64>;
    /// A project's settings (defaults when never changed).
    async fn project_settings(&self, project_id: &str) -> StoreResult<ProjectSettings>;
    async fn set_project_settings(
        &self,
        project_id: &str,
        settings: &ProjectSettings,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// The project's metrics credential, if one was ever created.
    async fn metrics_credential(&self, project_id: &str) -> StoreResult<Option<MetricsCredential>>;
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
        ip_allowlist: Option<&[keyflow_core::IpRule]>,
        cache_ttl_minutes: Option<i64>,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// A workspace's members with their accounts, oldest first.
    async fn list_members(&self, workspace_id: &str) -> StoreResult<Vec<(Operator, Membership)>>;
    /// Changes a member's role with its audit entry; `false` if not a member.
    async fn set_member_role(
        &self,
        workspace_id: &str,
        operator_id: &str,
        role: keyflow_core::Role,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Removes a membership with its audit entry; `false` if not a member.
    async fn remove_member(
        &self,
        workspace_id: &str,
        operator_id: &str,
        audit: &AuditEntry,
    ) -> StoreResult<bool>;
    /// Unrevoked, unexpired keys of a workspace (the ones a downgrade suspends).
    async fn count_active_keys(&self, workspace_id: &str, now: UnixMillis) -> StoreResult<i64>;
    async fn list_projects(&self, workspace_id: &str) -> StoreResult<Vec<Project>>;

    /// Stores a new session and, in the same transaction, the sign-in's audit entries.
    async fn create_session(&self, session: &Session, audit: &[AuditEntry]) -> StoreResult<()>;
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>>;
    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StoreResult<()>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;

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
    /// Inserts `new_key` and moves the old key's expiry to `old_expires_at`, atomically.
    /// Marks the old key rolled (at `new_key.created_at`). `false` (and nothing
    /// written) if the old key is gone, revoked or already rolled.
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

    async fn insert_audit(&self, entry: &AuditEntry) -> StoreResult<()>;

    /// Adds counted requests to the per-key daily totals.
    async fn add_daily_usage(&self, rows: &[(String, DailyUsage)]) -> StoreResult<()>;
    /// A key's daily totals from `since_day` on, oldest first.
    async fn daily_usage(&self, key_id: &str, since_day: i64) -> StoreResult<Vec<DailyUsage>>;

    /// Create-or-update matched by `external_id`, then by email
    /// (case-insensitive); properties merge. Writes one audit entry when
    /// `audit` is given. `Conflict` if the email or external id belongs to
    /// another contact.
    async fn upsert_contact(
        &self,
        project_id: &str,
        changes: &ContactChanges,
        actions: UpsertActions,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<UpsertOutcome>;
    /// Many upserts in one transaction; each item succeeds or fails alone.
    async fn upsert_contacts(
        &self,
        project_id: &str,
        items: &[ContactChanges],
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Vec<StoreResult<UpsertOutcome>>>;
    async fn get_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
    ) -> StoreResult<Option<Contact>>;
    /// Partial update of an existing contact; `None` if there is none.
    async fn update_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
        changes: &ContactChanges,
        action: AuditAction,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Option<Contact>>;
    /// Deletes a contact; its events stay, detached. `false` if there was none.
    async fn delete_contact(
        &self,
        project_id: &str,
        id: &str,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    async fn list_contacts(
        &self,
        project_id: &str,
        subscribed_only: bool,
        page: &Page,
    ) -> StoreResult<Vec<Contact>>;

    /// Stores events durably (returns after commit), resolving or creating
    /// their contacts and honouring idempotency keys. All or nothing.
    async fn ingest_events(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: UnixMillis,
    ) -> StoreResult<Vec<EventOutcome>>;
    async fn list_events(
        &self,
        project_id: &str,
        filter: &EventFilter,
        page: &Page,
    ) -> StoreResult<Vec<Event>>;
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
    /// [`Store::list_audit`] narrowed by action and/or actor.
    async fn search_audit(
        &self,
        workspace_id: &str,
        project_id: &str,
        filter: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditEntry>>;
}

/// Opens the store named by `url` (`sqlite://path` or `postgres://…`).
pub async fn connect(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect(url).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::connect(url).await?,
        ))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL scheme in {:?}: use sqlite://PATH or postgres://…",
            redact_url(url)
        )))
    }
}

/// A URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

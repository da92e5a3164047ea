//! Keyflow persistence: the [`Store`] trait and its two implementations,
//! SQLite (the embedded default) and PostgreSQL.
//!
//! Handlers never write SQL; they call the area traits. The statements are
//! portable (integer-millisecond times, text ids and JSON) and written once
//! in [`areas`], generic over the backend contract in `backend`; each
//! backend (`sqlite/`, `postgres/`) owns its migrations, its connection
//! setup, its ingestion path, and any statement only it accepts.

pub mod areas;
mod backend;
mod columns;
pub mod copy;
mod error;
pub mod ingest_queue;
mod job_signals;
mod models;
pub mod postgres;
pub mod sqlite;
pub mod tenant_sql;

pub use areas::audit::AuditStore;
pub use areas::contacts::ContactStore;
pub use areas::credentials::CredentialStore;
pub use areas::events::EventStore;
pub use areas::jobs::{CONTACT_JOB, EVENT_JOB, Job, JobQueueStats, JobStore, RUN_JOB};
pub use areas::keys::KeyStore;
pub use areas::members::MemberStore;
pub use areas::metrics::{Buckets, MetricsStore, NamedPoint, Point};
pub use areas::schema::SchemaStore;
pub use areas::sessions::{FormClaim, SessionStore};
pub use areas::tenancy::TenancyStore;
pub use areas::workflow_runs::{
    JobNext, Progress, RunAttempt, RunFilter, RunStep, StartOutcome, StartRefusal, WorkflowRun,
    WorkflowRunStore,
};
pub use areas::workflows::{Workflow, WorkflowStore};

pub use error::StoreError;
pub use job_signals::JobSignals;
pub use models::*;

pub type StoreResult<T> = Result<T, StoreError>;

/// Cursor pagination: newest first, `cursor` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Everything Keyflow persists: one trait per area (see [`areas`]). The
/// server holds an `Arc<dyn Store>`; calling an area's methods needs that
/// area's trait in scope (`use keyflow_store::KeyStore`).
pub trait Store:
    SchemaStore
    + TenancyStore
    + MemberStore
    + KeyStore
    + CredentialStore
    + SessionStore
    + AuditStore
    + ContactStore
    + EventStore
    + MetricsStore
    + WorkflowStore
    + WorkflowRunStore
    + JobStore
    + tenant_sql::TenantSqlStore
    + 'static
{
}

impl<B: backend::Backend + tenant_sql::TenantSqlStore> Store for B {}

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

/// A URL with any password replaced, safe to print: the one in its user
/// info and a `password=` query parameter (which libpq also reads).
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_every_password() {
        for (url, shown) in [
            ("postgres://u:hunter2@db/k", "postgres://u:***@db/k"),
            ("postgres://u:p@ss@db/k", "postgres://u:***@db/k"),
            ("postgres://u@db/k", "postgres://u@db/k"),
            (
                "postgres://db/k?user=u&password=hunter2&sslmode=require",
                "postgres://db/k?user=u&password=***&sslmode=require",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            (
                "sqlite:///var/lib/keyflow.db",
                "sqlite:///var/lib/keyflow.db",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}

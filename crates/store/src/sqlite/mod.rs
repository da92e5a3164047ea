//! The embedded default: one SQLite file in WAL mode, with one writer task
//! that commits many requests' events in one transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keyflow_core::events::NewEvent;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteOperation, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::mpsc;

use crate::backend::{Backend, Migration};
use crate::ingest_queue::{self, IngestJob};

mod claim_filter;
mod claims;
mod direct;
pub mod files;
mod lookups;
mod query_ceiling;
mod reader;
mod rollups;
mod tenant_sql;
mod wal_gate;
mod writer;

pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// Whose turn it is to write: the event writer (per batch) and every
    /// other write transaction queue here, first come first served.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    ingest_queue: mpsc::Sender<IngestJob>,
    /// Point reads on the calling thread; `None` for in-memory databases.
    reader: Option<reader::Reader>,
    /// Tenant SQL's read-only connections; `None` for in-memory databases.
    tenant_sql: Option<Arc<tenant_sql::TenantSql>>,
    /// Whether the write that commits next queued workflow jobs.
    queued_jobs: Arc<crate::job_signals::QueuedJobs>,
    group_commits: Arc<ingest_queue::GroupCommitStats>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_foundation",
        sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "0002_customer_data",
        sql: include_str!("../../migrations/sqlite/0002_customer_data.sql"),
    },
    Migration {
        version: 3,
        name: "0003_sessions",
        sql: include_str!("../../migrations/sqlite/0003_sessions.sql"),
    },
    Migration {
        version: 4,
        name: "0004_key_usage",
        sql: include_str!("../../migrations/sqlite/0004_key_usage.sql"),
    },
    Migration {
        version: 5,
        name: "0005_project_settings",
        sql: include_str!("../../migrations/sqlite/0005_project_settings.sql"),
    },
    Migration {
        version: 6,
        name: "0006_metrics_credentials",
        sql: include_str!("../../migrations/sqlite/0006_metrics_credentials.sql"),
    },
    Migration {
        version: 7,
        name: "0007_events_by_project",
        sql: include_str!("../../migrations/sqlite/0007_events_by_project.sql"),
    },
    Migration {
        version: 8,
        name: "0008_events_contact_partial",
        sql: include_str!("../../migrations/sqlite/0008_events_contact_partial.sql"),
    },
    Migration {
        version: 9,
        name: "0009_key_rolled_at",
        sql: include_str!("../../migrations/sqlite/0009_key_rolled_at.sql"),
    },
    Migration {
        version: crate::areas::schema::CONTACT_EMAILS_NFC,
        name: "0010_contact_emails_nfc",
        sql: include_str!("../../migrations/sqlite/0010_contact_emails_nfc.sql"),
    },
    Migration {
        version: 11,
        name: "0011_idempotency_without_rowid",
        sql: include_str!("../../migrations/sqlite/0011_idempotency_without_rowid.sql"),
    },
    Migration {
        version: 12,
        name: "0012_generations",
        sql: include_str!("../../migrations/sqlite/0012_generations.sql"),
    },
    Migration {
        version: 13,
        name: "0013_metrics_rollups",
        sql: include_str!("../../migrations/sqlite/0013_metrics_rollups.sql"),
    },
    Migration {
        version: 14,
        name: "0014_metrics_tokens",
        sql: include_str!("../../migrations/sqlite/0014_metrics_tokens.sql"),
    },
    Migration {
        version: 15,
        name: "0015_tenant_sql",
        sql: include_str!("../../migrations/sqlite/0015_tenant_sql.sql"),
    },
    Migration {
        version: 16,
        name: "0016_form_nonces",
        sql: include_str!("../../migrations/sqlite/0016_form_nonces.sql"),
    },
    Migration {
        version: 17,
        name: "0017_tenant_sql_value_caps",
        sql: include_str!("../../migrations/sqlite/0017_tenant_sql_value_caps.sql"),
    },
    Migration {
        version: 18,
        name: "0018_event_contacts",
        sql: include_str!("../../migrations/sqlite/0018_event_contacts.sql"),
    },
    Migration {
        version: 19,
        name: "0019_workflows",
        sql: include_str!("../../migrations/sqlite/0019_workflows.sql"),
    },
    Migration {
        version: 20,
        name: "0020_workflow_runs",
        sql: include_str!("../../migrations/sqlite/0020_workflow_runs.sql"),
    },
    Migration {
        version: 22,
        name: "0022_workflow_entries",
        sql: include_str!("../../migrations/sqlite/0022_workflow_entries.sql"),
    },
    Migration {
        version: 23,
        name: "0023_contacts_by_project",
        sql: include_str!("../../migrations/sqlite/0023_contacts_by_project.sql"),
    },
    Migration {
        version: 24,
        name: "0024_idempotency_runs",
        sql: include_str!("../../migrations/sqlite/0024_idempotency_runs.sql"),
    },
];

/// Moves every note of `event_contacts_recent` into `event_contacts` now, as
/// the writer does once there are enough (migration 0018), so tests can
/// read a contact's events across both tables. Nothing but tests calls it.
#[doc(hidden)]
pub fn move_contact_notes_for_tests(url: &str) -> crate::StoreResult<()> {
    let path = files::path_of_url(url)
        .ok_or_else(|| crate::StoreError::Config(format!("not a SQLite file: {url}")))?;
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    direct::move_contact_notes(&mut conn)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        // Before SQLite first starts in this process.
        query_ceiling::install();
        // Owner-only files (SPEC §7): made before SQLite creates them.
        if let Some(path) = files::path_of_url(url) {
            files::secure(&path)?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, even across a
            // power loss. The writer task groups commits, so the fsync is shared.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let queued_jobs = Arc::new(crate::job_signals::QueuedJobs::default());
        let noted = queued_jobs.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // Every connection notes rows entering `jobs` (see job_signals).
            .after_connect(move |conn, _| {
                let noted = noted.clone();
                Box::pin(async move {
                    conn.lock_handle().await?.set_update_hook(move |change| {
                        if change.operation == SqliteOperation::Insert {
                            noted.note_insert(change.table);
                        }
                    });
                    Ok(())
                })
            })
            // A ping before every acquire is a round trip to the connection's
            // worker thread; a local file has no network to go stale.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let (ingest_queue, jobs) = mpsc::channel(4096);
        let write_turn = Arc::new(tokio::sync::Mutex::new(()));
        let path = options.get_filename().to_path_buf();
        // A plain file URL only: options such as `mode=ro`, `immutable` or a
        // VFS, and in-memory databases, are left to sqlx for everything.
        let on_disk = !url.contains('?') && !url.contains(":memory:") && path.is_file();
        let reader = on_disk.then(|| reader::Reader::new(path.clone()));
        let tenant_sql = on_disk.then(|| Arc::new(tenant_sql::TenantSql::new(path.clone())));
        let direct = on_disk.then(|| direct::DirectWriter::new(path, queued_jobs.clone()));
        let group_commits = Arc::new(ingest_queue::GroupCommitStats::default());
        let writer = writer::Writer {
            runtime: tokio::runtime::Handle::current(),
            pool: pool.clone(),
            write_turn: write_turn.clone(),
            queued_jobs: queued_jobs.clone(),
            stats: group_commits.clone(),
        };
        std::thread::Builder::new()
            .name("keyflow-sqlite-writer".into())
            .spawn(move || writer.run(direct, jobs))
            .map_err(|e| {
                crate::StoreError::Config(format!("cannot start the SQLite writer thread: {e}"))
            })?;
        Ok(Self {
            pool,
            write_turn,
            ingest_queue,
            reader,
            tenant_sql,
            queued_jobs,
            group_commits,
        })
    }
}

impl Backend for SqliteStore {
    type Db = Sqlite;
    type WriteTx = WriteTx;
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;

    fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Write transactions take SQLite's write lock at `BEGIN` (waiting under
    /// busy_timeout). A deferred transaction that reads first could not wait:
    /// its first write would fail at once with SQLITE_BUSY while the event
    /// writer holds the lock, or with SQLITE_BUSY_SNAPSHOT after it committed.
    ///
    /// First, though, the instance's write turn: SQLite's own busy waiting
    /// polls with growing sleeps, so a transaction waiting for the event
    /// writer (which takes the lock again right after each commit) could wait
    /// for seconds. The turn is a fair queue shared with the writer; the
    /// SQLite lock then only arbitrates with other processes (the CLI).
    async fn begin_write(&self) -> crate::StoreResult<WriteTx> {
        let turn = self.write_turn.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx {
            tx,
            queued_jobs: self.queued_jobs.clone(),
            _turn: turn,
        })
    }

    /// SQLite runs one writer at a time, and a write transaction always works
    /// on the latest data: nothing to lock (see the PostgreSQL store).
    const SKIP_LOCKED: &'static str = "";

    async fn lock_workflow(
        _conn: &mut SqliteConnection,
        _workflow_id: &str,
    ) -> crate::StoreResult<()> {
        Ok(())
    }

    async fn lock_workspace(
        _conn: &mut SqliteConnection,
        _workspace_id: &str,
    ) -> crate::StoreResult<()> {
        Ok(())
    }

    /// SQLite runs one writer at a time; the migration transaction is enough.
    async fn lock_migrations(_conn: &mut SqliteConnection) -> crate::StoreResult<()> {
        Ok(())
    }

    /// This process's commits that queued jobs (one process writes a
    /// SQLite database).
    fn job_signals(&self) -> crate::JobSignals {
        crate::JobSignals::local(&self.queued_jobs)
    }

    fn group_commit_stats(&self) -> &ingest_queue::GroupCommitStats {
        &self.group_commits
    }

    /// Hands the events to the writer task and waits for their commit.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let stopped = || crate::StoreError::WriteFailed("the SQLite writer has stopped".into());
        ingest_queue::submit(&self.ingest_queue, project_id, events, now, stopped).await
    }

    /// The event writer caches who contacts are; it reads this counter at
    /// the start of each batch and forgets them when it moved (whichever
    /// process wrote the contact).
    async fn contacts_changing(conn: &mut SqliteConnection) -> crate::StoreResult<()> {
        sqlx::query("UPDATE keyflow_generations SET value = value + 1 WHERE name = 'contacts'")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// A key by digest through the direct reader (`None`: use sqlx).
    fn read_key_for_auth(
        &self,
        digest: &keyflow_core::KeyDigest,
    ) -> Option<crate::StoreResult<Option<crate::AuthKey>>> {
        self.reader.as_ref().map(|r| r.key_for_auth(digest))
    }

    /// A contact through the direct reader (`None`: use sqlx).
    fn read_contact(
        &self,
        project_id: &str,
        lookup: &keyflow_core::contacts::ContactLookup,
    ) -> Option<crate::StoreResult<Option<crate::Contact>>> {
        self.reader.as_ref().map(|r| r.contact(project_id, lookup))
    }
}

#[async_trait::async_trait]
impl crate::tenant_sql::TenantSqlStore for SqliteStore {
    fn tenant_dialect(&self) -> crate::tenant_sql::Dialect {
        crate::tenant_sql::Dialect::Sqlite
    }

    /// On a blocking thread: SQLite works on the caller's thread.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn run_tenant_query(
        &self,
        project_id: &str,
        query: &crate::tenant_sql::CheckedQuery,
        limits: crate::tenant_sql::Limits,
    ) -> Result<crate::tenant_sql::QueryOutput, crate::tenant_sql::QueryFailure> {
        let Some(tenant_sql) = self.tenant_sql.clone() else {
            return Err(crate::tenant_sql::QueryFailure::Unavailable(
                "SQL queries need the database in a file; this one is in memory".into(),
            ));
        };
        let (project_id, query) = (project_id.to_string(), query.clone());
        tokio::task::spawn_blocking(move || tenant_sql.run(&project_id, &query, limits))
            .await
            .map_err(|e| {
                crate::tenant_sql::QueryFailure::Store(crate::StoreError::Config(format!(
                    "the query's thread failed: {e}"
                )))
            })?
    }
}

/// A transaction meant to write, holding the instance's write turn until it
/// commits or is dropped (see `SqliteStore::begin_write`).
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    queued_jobs: Arc<crate::job_signals::QueuedJobs>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl crate::backend::WriteTx<Sqlite> for WriteTx {
    async fn commit(self) -> crate::StoreResult<()> {
        self.tx.commit().await?;
        // Still holding the write turn: the flag is this transaction's.
        self.queued_jobs.committed();
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use crate::EventFilter;
    use crate::areas::events::list_events_sql;

    /// The plan SQLite picks for a filtered listing, on the real schema.
    fn plan(filter: &EventFilter, after_cursor: bool) -> String {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for migration in super::MIGRATIONS {
            conn.execute_batch(migration.sql).unwrap();
        }
        let sql = list_events_sql(filter, after_cursor, true);
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = explain.parameter_count();
        let values: Vec<String> = (0..params).map(|i| i.to_string()).collect();
        let rows = explain
            .query_map(rusqlite::params_from_iter(values.iter()), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn filtered_event_listings_use_their_index() {
        // A contact's events: each of its two tables walked newest first
        // from the cursor (migration 0018), each event read by its key.
        let contact = EventFilter {
            contact_id: Some("c".into()),
            ..Default::default()
        };
        let contact_plan = plan(&contact, true);
        for expected in [
            "SEARCH k USING PRIMARY KEY (project_id=? AND contact_id=? AND id<?)",
            "SEARCH k USING COVERING INDEX event_contacts_recent_event (project_id=? AND id<?)",
            "SEARCH e USING PRIMARY KEY (project_id=? AND id=?)",
        ] {
            assert!(
                contact_plan.contains(expected),
                "{expected}: {contact_plan}"
            );
        }
        let name = EventFilter {
            name: Some("signup".into()),
            since: Some(0),
            ..Default::default()
        };
        assert!(plan(&name, false).contains("INDEX events_name (project_id=? AND name=?)"));
        let both = EventFilter {
            contact_id: Some("c".into()),
            name: Some("signup".into()),
            until: Some(0),
            ..Default::default()
        };
        let both_plan = plan(&both, false);
        assert!(
            both_plan.contains("SEARCH k USING PRIMARY KEY (project_id=? AND contact_id=?)"),
            "{both_plan}"
        );
        // Each table is searched, never scanned: only its own page of at
        // most `limit` rows is sorted again for the merge.
        assert!(
            !both_plan.contains("SCAN k") && !both_plan.contains("SCAN e"),
            "{both_plan}"
        );
        let none = plan(&EventFilter::default(), true);
        assert!(
            none.contains("PRIMARY KEY (project_id=? AND id<?)"),
            "{none}"
        );
        assert!(
            !none.contains("TEMP B-TREE"),
            "sorted by the key, not afterwards: {none}"
        );
    }
}

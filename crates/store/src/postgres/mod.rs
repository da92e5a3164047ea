//! PostgreSQL, for several `keyflow serve` instances sharing one database.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Mutex, mpsc};

use crate::ingest_queue::{GroupCommitStats, IngestJob, fail_all, submit};

mod lookups;
mod tenant_sql;

use crate::areas::events::{event_chunks, insert_events_sql};
use crate::areas::metrics::{RollUps, postgres_rollups_prefix};
use crate::backend::{Backend, Migration};
use crate::columns::EventRow;

pub struct PostgresStore {
    pool: sqlx::PgPool,
    /// Tenant SQL's reader role and its own connections.
    tenant_sql: tenant_sql::TenantSql,
    /// Events waiting for a group commit (see `run_committer`).
    ingest_queue: mpsc::Sender<IngestJob>,
    group_commits: Arc<GroupCommitStats>,
}

/// Group commits running at once: each holds one pooled connection, so the
/// rest of the pool stays free for reads and other writes.
const COMMITTERS: usize = 4;
/// Rows per group commit at most, so one commit stays short.
const MAX_ROWS_PER_COMMIT: usize = 2_000;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_foundation",
        sql: include_str!("../../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "0002_customer_data",
        sql: include_str!("../../migrations/postgres/0002_customer_data.sql"),
    },
    Migration {
        version: 3,
        name: "0003_sessions",
        sql: include_str!("../../migrations/postgres/0003_sessions.sql"),
    },
    Migration {
        version: 4,
        name: "0004_key_usage",
        sql: include_str!("../../migrations/postgres/0004_key_usage.sql"),
    },
    Migration {
        version: 5,
        name: "0005_project_settings",
        sql: include_str!("../../migrations/postgres/0005_project_settings.sql"),
    },
    Migration {
        version: 6,
        name: "0006_metrics_credentials",
        sql: include_str!("../../migrations/postgres/0006_metrics_credentials.sql"),
    },
    Migration {
        version: 7,
        name: "0007_events_by_project",
        sql: include_str!("../../migrations/postgres/0007_events_by_project.sql"),
    },
    Migration {
        version: 8,
        name: "0008_events_contact_partial",
        sql: include_str!("../../migrations/postgres/0008_events_contact_partial.sql"),
    },
    Migration {
        version: 9,
        name: "0009_key_rolled_at",
        sql: include_str!("../../migrations/postgres/0009_key_rolled_at.sql"),
    },
    Migration {
        version: crate::areas::schema::CONTACT_EMAILS_NFC,
        name: "0010_contact_emails_nfc",
        sql: include_str!("../../migrations/postgres/0010_contact_emails_nfc.sql"),
    },
    Migration {
        version: 11,
        name: "0011_idempotency_without_rowid",
        sql: include_str!("../../migrations/postgres/0011_idempotency_without_rowid.sql"),
    },
    Migration {
        version: 12,
        name: "0012_generations",
        sql: include_str!("../../migrations/postgres/0012_generations.sql"),
    },
    Migration {
        version: 13,
        name: "0013_metrics_rollups",
        sql: include_str!("../../migrations/postgres/0013_metrics_rollups.sql"),
    },
    Migration {
        version: 14,
        name: "0014_metrics_tokens",
        sql: include_str!("../../migrations/postgres/0014_metrics_tokens.sql"),
    },
    Migration {
        version: 15,
        name: "0015_tenant_sql",
        sql: include_str!("../../migrations/postgres/0015_tenant_sql.sql"),
    },
    Migration {
        version: 16,
        name: "0016_form_nonces",
        sql: include_str!("../../migrations/postgres/0016_form_nonces.sql"),
    },
    Migration {
        version: 17,
        name: "0017_tenant_sql_value_caps",
        sql: include_str!("../../migrations/postgres/0017_tenant_sql_value_caps.sql"),
    },
    Migration {
        version: 19,
        name: "0019_workflows",
        sql: include_str!("../../migrations/postgres/0019_workflows.sql"),
    },
    Migration {
        version: 20,
        name: "0020_workflow_runs",
        sql: include_str!("../../migrations/postgres/0020_workflow_runs.sql"),
    },
    Migration {
        version: 21,
        name: "0021_job_wakeups",
        sql: include_str!("../../migrations/postgres/0021_job_wakeups.sql"),
    },
    Migration {
        version: 22,
        name: "0022_workflow_entries",
        sql: include_str!("../../migrations/postgres/0022_workflow_entries.sql"),
    },
    Migration {
        version: 23,
        name: "0023_contacts_by_project",
        sql: include_str!("../../migrations/postgres/0023_contacts_by_project.sql"),
    },
];

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        // One plain connection first: a pool retries a failing connect until
        // its acquire timeout and then reports only "pool timed out".
        // Bounded: a host that drops packets would otherwise hold this for
        // the system's SYN timeout (about two minutes).
        let first = tokio::time::timeout(
            CONNECT_TIMEOUT,
            <sqlx::PgConnection as sqlx::Connection>::connect(url),
        )
        .await;
        match first {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => return Err(crate::StoreError::Config(describe_connect_error(&e, url))),
            Err(_) => {
                return Err(crate::StoreError::Config(format!(
                    "timed out after {} s connecting to PostgreSQL at {}: is the host reachable?",
                    CONNECT_TIMEOUT.as_secs(),
                    crate::redact_url(url)
                )));
            }
        }
        // Connections opened ahead (in the background), so the first
        // requests of a fresh instance do not each wait for one (a sqlx
        // connection took ~90 ms in a debug build here).
        let pool = PgPoolOptions::new()
            .min_connections(COMMITTERS as u32 + 2)
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let (ingest_queue, jobs) = mpsc::channel(4096);
        let jobs = Arc::new(Mutex::new(jobs));
        let group_commits = Arc::new(GroupCommitStats::default());
        for _ in 0..COMMITTERS {
            tokio::spawn(run_committer(
                pool.clone(),
                jobs.clone(),
                group_commits.clone(),
            ));
        }
        Ok(Self {
            tenant_sql: tenant_sql::TenantSql::new(pool.clone(), url),
            pool,
            ingest_queue,
            group_commits,
        })
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a PostgreSQL connection failed, in words: refused, unknown host,
/// missing database or role, bad password (never the password itself).
fn describe_connect_error(e: &sqlx::Error, url: &str) -> String {
    let target = crate::redact_url(url);
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "PostgreSQL at {target} refused the connection: is the server running and listening on that host and port?"
        ),
        sqlx::Error::Io(io) => format!("cannot reach PostgreSQL at {target}: {io}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!(
                "the database named in {target} does not exist: create it (createdb) or fix the URL ({})",
                db.message()
            ),
            Some("28P01") | Some("28000") => format!(
                "PostgreSQL at {target} refused the credentials: {}",
                db.message()
            ),
            _ => format!(
                "PostgreSQL at {target} refused the connection: {}",
                db.message()
            ),
        },
        sqlx::Error::Tls(tls) => format!("TLS to PostgreSQL at {target} failed: {tls}"),
        other => format!("cannot connect to PostgreSQL at {target}: {other}"),
    }
}

#[async_trait::async_trait]
impl crate::tenant_sql::TenantSqlStore for PostgresStore {
    fn tenant_dialect(&self) -> crate::tenant_sql::Dialect {
        crate::tenant_sql::Dialect::Postgres
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn run_tenant_query(
        &self,
        project_id: &str,
        query: &crate::tenant_sql::CheckedQuery,
        limits: crate::tenant_sql::Limits,
    ) -> Result<crate::tenant_sql::QueryOutput, crate::tenant_sql::QueryFailure> {
        self.tenant_sql.run(project_id, query, limits).await
    }
}

impl Backend for PostgresStore {
    type Db = sqlx::Postgres;
    type WriteTx = sqlx::Transaction<'static, sqlx::Postgres>;
    const MIGRATIONS: &'static [Migration] = MIGRATIONS;

    fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// PostgreSQL transactions need nothing special to write.
    async fn begin_write(&self) -> crate::StoreResult<Self::WriteTx> {
        Ok(self.pool.begin().await?)
    }

    /// Several instances may start at once; a transaction-scoped advisory lock
    /// makes them apply migrations one after another.
    async fn lock_migrations(conn: &mut sqlx::PgConnection) -> crate::StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(7231983)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Serialises membership changes of one workspace: under READ COMMITTED,
    /// two concurrent demotions of its last two owners would each still
    /// count two owners and both succeed. With the workspace row locked, the
    /// second waits and then sees the first one's result.
    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";

    async fn lock_workflow(
        conn: &mut sqlx::PgConnection,
        workflow_id: &str,
    ) -> crate::StoreResult<()> {
        sqlx::query("SELECT id FROM workflows WHERE id = $1 FOR UPDATE")
            .bind(workflow_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn lock_workspace(
        conn: &mut sqlx::PgConnection,
        workspace_id: &str,
    ) -> crate::StoreResult<()> {
        sqlx::query("SELECT id FROM workspaces WHERE id = $1 FOR UPDATE")
            .bind(workspace_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// `NOTIFY keyflow_jobs` from any instance's commits (migration 0021),
    /// on a connection of its own.
    fn job_signals(&self) -> crate::JobSignals {
        crate::JobSignals::listen(self.pool.clone())
    }

    fn group_commit_stats(&self) -> &GroupCommitStats {
        &self.group_commits
    }

    /// Every request's events go to the group commit (`run_committer`),
    /// which stores many requests' events per transaction and answers each
    /// after the commit. PostgreSQL's row locks and `ON CONFLICT` keep
    /// idempotency keys and contacts exact across committers and instances.
    async fn ingest(
        &self,
        project_id: &str,
        events: Vec<keyflow_core::events::NewEvent>,
        now: i64,
    ) -> crate::StoreResult<Vec<crate::EventOutcome>> {
        let stopped = || crate::StoreError::Unavailable("the event committer has stopped".into());
        submit(&self.ingest_queue, project_id, events, now, stopped).await
    }
}

/// One of the `COMMITTERS` group-commit tasks: takes every job waiting
/// (concurrent single-event requests, above all), writes all their rows in
/// one transaction, and answers each job after the commit. Without it every
/// single event paid a commit (a WAL flush) of its own, and every identified
/// event a round trip per lookup. Should the shared commit fail, each job is
/// retried alone so only a job that cannot be stored fails (a refused
/// contact id, a deadlock with another committer). Ends when the store is
/// dropped.
async fn run_committer(
    pool: sqlx::PgPool,
    jobs: Arc<Mutex<mpsc::Receiver<IngestJob>>>,
    stats: Arc<GroupCommitStats>,
) {
    loop {
        let (batch, rows) = {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            let mut rows = first.events.len();
            let mut batch = vec![first];
            while rows < MAX_ROWS_PER_COMMIT {
                match jobs.try_recv() {
                    Ok(job) => {
                        rows += job.events.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            (batch, rows)
        };
        let committing = std::time::Instant::now();
        // Recorded before the jobs are answered: a client that has its
        // answer finds its commit in `/metrics`.
        commit_jobs(&pool, batch, || stats.record(rows, committing)).await;
    }
}

/// Writes `batch` and answers its jobs; `answering` runs once the write is
/// over, before the first answer.
async fn commit_jobs(pool: &sqlx::PgPool, batch: Vec<IngestJob>, answering: impl FnOnce()) {
    let error = match write_jobs(pool, &batch).await {
        Ok(outcomes) => {
            answering();
            for (job, outcomes) in batch.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcomes));
            }
            return;
        }
        Err(error) => error,
    };
    // An unreachable database fails every job at once (503): retrying them
    // one by one would hold each for another acquire timeout. Otherwise one
    // job's rows may be at fault: retry each alone so only it fails.
    if batch.len() == 1 || error.is_unavailable() {
        answering();
        return fail_all(batch, error);
    }
    answering();
    for job in batch {
        let answer = write_jobs(pool, std::slice::from_ref(&job))
            .await
            .map(|mut outcomes| outcomes.pop().unwrap_or_default());
        let _ = job.reply.send(answer);
    }
}

/// Stores `jobs`' events; each job's outcomes, in order. Events that need
/// no lookups and fit one INSERT skip the transaction: a single statement is
/// atomic on its own, and BEGIN/COMMIT would be two more round trips.
async fn write_jobs(
    pool: &sqlx::PgPool,
    jobs: &[IngestJob],
) -> crate::StoreResult<Vec<Vec<crate::EventOutcome>>> {
    let lookups = jobs
        .iter()
        .any(|job| job.events.iter().any(EventRow::needs_lookups));
    if !lookups {
        let prepared: Vec<_> = jobs
            .iter()
            .map(|job| EventRow::lookup_free(&job.project_id, &job.events, job.now))
            .collect();
        let rows: Vec<&EventRow> = prepared.iter().flat_map(|(_, rows)| rows).collect();
        write_rows(pool, &rows).await?;
        return Ok(prepared.into_iter().map(|(outcomes, _)| outcomes).collect());
    }
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let prepared = lookups::prepare_jobs(&mut tx, jobs).await?;
    let rows: Vec<&EventRow> = prepared.iter().flat_map(|(_, rows)| rows).collect();
    insert_event_rows(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(prepared.into_iter().map(|(outcomes, _)| outcomes).collect())
}

/// `rows` in one statement when they fit one, else in one transaction.
async fn write_rows(pool: &sqlx::PgPool, rows: &[&EventRow]) -> crate::StoreResult<()> {
    let mut conn = pool.acquire().await?;
    if event_chunks(rows).len() <= 1 {
        return insert_event_rows(&mut conn, rows).await;
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    insert_event_rows(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(())
}

/// Multi-row INSERTs in a few fixed shapes (see `event_chunks`); the first
/// also writes the Metrics API's roll-ups of every row (leading CTEs), so a
/// batch that fits one chunk is still one atomic statement.
async fn insert_event_rows<R: std::borrow::Borrow<EventRow>>(
    conn: &mut sqlx::PgConnection,
    rows: &[R],
) -> crate::StoreResult<()> {
    let mut rollups = RollUps::of(rows)?;
    for chunk in event_chunks(rows) {
        let params = chunk.len() * 9;
        let sql = match &rollups {
            Some(_) => {
                postgres_rollups_prefix(params + 1, params + 2) + &insert_events_sql(chunk.len())
            }
            None => insert_events_sql(chunk.len()),
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            let r = r.borrow();
            query = query
                .bind(&r.id)
                .bind(&r.project_id)
                .bind(&r.name)
                .bind(&r.contact_id)
                .bind(&r.anonymous_id)
                .bind(&r.properties)
                .bind(r.timestamp)
                .bind(r.received_at)
                .bind(&r.idempotency_key);
        }
        if let Some(rollups) = rollups.take() {
            query = query.bind(rollups.hours).bind(rollups.presence);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

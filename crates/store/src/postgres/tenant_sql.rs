//! Layer two of tenant SQL on PostgreSQL: the database itself keeps a query
//! to one project's rows, whatever layer one let through.
//!
//! - The query runs on a connection **logged in as a reader role** (one per
//!   database, `keyflow_tenant_…`): not `SET ROLE`, which the query could
//!   undo with `set_config('role', …)`. The role may read the two views of
//!   migration 0015 (`keyflow_tenant.events`, `keyflow_tenant.contacts`)
//!   and nothing else of Keyflow's; its search path is that schema only.
//! - The views pick the project from `tenant_query_sessions`, a row the
//!   server writes for the connection's backend process id before the
//!   query and deletes after. The query can neither change its process id
//!   nor read or write that table.
//! - Each query runs in a `READ ONLY` transaction with `statement_timeout`,
//!   and is cancelled from the server's own pool if it still runs a moment
//!   after its time.
//!
//! The server creates the role itself when its database user may
//! (`CREATEROLE`); otherwise queries answer 503 and `docs/metrics-api.md`
//! gives the SQL a DBA runs once.

use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Column, ConnectOptions, Executor, Row, Statement};
use tokio::sync::Mutex;

use crate::tenant_sql::{CheckedQuery, Limits, MAX_COLUMNS, QueryFailure, QueryOutput, json_size};

/// Reader connections at most (tenant SQL never takes the main pool's).
const READER_CONNECTIONS: u32 = 4;
/// Temporary file space one tenant query may use (sorts and hashes that do
/// not fit in `work_mem`).
pub(crate) const TEMP_FILE_LIMIT: &str = "1GB";
/// After a failed set-up, queries answer 503 for this long before it is tried again.
const RETRY_SETUP_AFTER: Duration = Duration::from_secs(30);

pub(crate) struct TenantSql {
    main: sqlx::PgPool,
    url: String,
    reader: Mutex<ReaderState>,
}

enum ReaderState {
    NotTried,
    Ready(sqlx::PgPool),
    Failed { reason: String, at: Instant },
}

impl TenantSql {
    pub(crate) fn new(main: sqlx::PgPool, url: &str) -> Self {
        Self {
            main,
            url: url.to_string(),
            reader: Mutex::new(ReaderState::NotTried),
        }
    }

    /// The reader pool, set up on first use.
    async fn reader(&self) -> Result<sqlx::PgPool, QueryFailure> {
        let mut state = self.reader.lock().await;
        match &*state {
            ReaderState::Ready(pool) => return Ok(pool.clone()),
            ReaderState::Failed { reason, at } if at.elapsed() < RETRY_SETUP_AFTER => {
                return Err(QueryFailure::Unavailable(reason.clone()));
            }
            _ => {}
        }
        match self.set_up().await {
            Ok(pool) => {
                *state = ReaderState::Ready(pool.clone());
                Ok(pool)
            }
            Err(reason) => {
                tracing::warn!(%reason, "tenant SQL is unavailable on PostgreSQL");
                *state = ReaderState::Failed {
                    reason: reason.clone(),
                    at: Instant::now(),
                };
                Err(QueryFailure::Unavailable(reason))
            }
        }
    }

    /// Makes sure the reader role exists with a known password and its
    /// grants, then connects as it. `Err` says why not, for the 503.
    async fn set_up(&self) -> Result<sqlx::PgPool, String> {
        let fail = |e: sqlx::Error| format!("tenant SQL could not be set up on PostgreSQL: {e}");
        let mut tx = self.main.begin().await.map_err(fail)?;
        // One instance at a time sets the role up (per database).
        sqlx::query("SELECT pg_advisory_xact_lock(7240015)")
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        let role: String =
            sqlx::query_scalar("SELECT 'keyflow_tenant_' || left(md5(current_database()), 12)")
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&role)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT password FROM tenant_query_role WHERE name = $1")
                .bind(&role)
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
        let cannot = |e: sqlx::Error| {
            format!(
                "SQL queries need a PostgreSQL role named {role} that Keyflow's database user \
                 cannot create or change ({e}); grant that user CREATEROLE, or have a DBA run the \
                 SQL in docs/metrics-api.md (\"PostgreSQL reader role\") once"
            )
        };
        let password = match (exists, stored) {
            (true, Some(password)) => password,
            (exists, _) => {
                let password = format!(
                    "{}{}",
                    uuid::Uuid::now_v7().simple(),
                    uuid::Uuid::now_v7().simple()
                );
                let statement = if exists {
                    format!("ALTER ROLE \"{role}\" LOGIN PASSWORD '{password}'")
                } else {
                    format!(
                        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB \
                         NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 32"
                    )
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await
                    .map_err(cannot)?;
                for setting in [
                    "SET search_path = keyflow_tenant, pg_catalog",
                    "SET jit = off",
                    "SET default_transaction_read_only = on",
                    "SET statement_timeout = '30s'",
                ] {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "ALTER ROLE \"{role}\" {setting}"
                    )))
                    .execute(&mut *tx)
                    .await
                    .map_err(cannot)?;
                }
                sqlx::query(
                    "INSERT INTO tenant_query_role (name, password) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET password = EXCLUDED.password",
                )
                .bind(&role)
                .bind(&password)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                password
            }
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA keyflow_tenant TO \"{role}\";\n\
             GRANT SELECT ON keyflow_tenant.events, keyflow_tenant.contacts TO \"{role}\";"
        )))
        .execute(&mut *tx)
        .await
        .map_err(cannot)?;
        tx.commit().await.map_err(fail)?;
        self.limit_temporary_files(&role).await;

        let options = PgConnectOptions::from_str(&self.url)
            .map_err(fail)?
            .username(&role)
            .password(&password)
            .application_name("keyflow-tenant-sql")
            .options([
                // Keyflow's size-checked operators (migration 0017) are found
                // before PostgreSQL's own of the same signature.
                ("search_path", "keyflow_tenant, pg_catalog"),
                // LLVM compiles a whole expression at once and cannot be
                // cancelled: one query compiled for 60 s past its limit.
                ("jit", "off"),
                ("default_transaction_read_only", "on"),
            ])
            // Tenant statements are prepared once and never kept.
            .statement_cache_capacity(0)
            // sqlx would log a slow statement's whole text: a tenant's SQL
            // belongs in no log.
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| {
                format!(
                    "tenant SQL could not connect to PostgreSQL as {role}: {e} (pg_hba.conf \
                     must let that role connect to this database the way Keyflow's user does)"
                )
            })?;
        Ok(pool)
    }

    /// Sorts and hashes past `work_mem` spill to temporary files, which
    /// PostgreSQL bounds only by `temp_file_limit`; only a superuser (or a
    /// role granted `SET` on it) may set that for the reader role, so a
    /// refusal is logged, not fatal: the disk is then the bound.
    async fn limit_temporary_files(&self, role: &str) {
        let statement = format!("ALTER ROLE \"{role}\" SET temp_file_limit = '{TEMP_FILE_LIMIT}'");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&self.main)
            .await
        {
            tracing::warn!(
                error = %e,
                "tenant SQL: the reader role's temp_file_limit could not be set; a query's \
                 temporary files are bounded only by the disk (docs/metrics-api.md)"
            );
        }
    }

    pub(crate) async fn run(
        &self,
        project_id: &str,
        query: &CheckedQuery,
        limits: Limits,
    ) -> Result<QueryOutput, QueryFailure> {
        let reader = self.reader().await?;
        let mut conn = reader.acquire().await.map_err(crate::StoreError::from)?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .map_err(crate::StoreError::from)?;
        sqlx::query(
            "INSERT INTO tenant_query_sessions (pid, project_id) VALUES ($1, $2) \
             ON CONFLICT (pid) DO UPDATE SET project_id = EXCLUDED.project_id",
        )
        .bind(pid)
        .bind(project_id)
        .execute(&self.main)
        .await
        .map_err(crate::StoreError::from)?;
        // statement_timeout stops it in the database; this is the backstop.
        let outcome = tokio::time::timeout(
            limits.timeout + Duration::from_secs(1),
            run_scoped(&mut conn, query.text(), limits),
        )
        .await;
        let result = match outcome {
            Ok(result) => {
                // The backend goes after each query: PostgreSQL keeps some
                // caches for a backend's life, whatever RESET does, and a
                // query can grow them (every time zone a query parses: 1 GB
                // from one query, still held 12 minutes later; row types:
                // 27 MB per query). A new connection per query costs a few
                // ms; the settings a query changed go with it. Its advisory
                // locks are released now rather than when the backend has
                // exited, which is after the answer (a successful run has
                // ended its transaction already; a failed one is rolled back
                // first, or the unlock would fail).
                let unlock = if result.is_ok() {
                    "SELECT pg_advisory_unlock_all()"
                } else {
                    "ROLLBACK; SELECT pg_advisory_unlock_all()"
                };
                let _ = sqlx::raw_sql(unlock).execute(&mut *conn).await;
                conn.close_on_drop();
                result
            }
            Err(_) => {
                let _ = sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&self.main)
                    .await;
                // Stopped mid-answer: this connection is not reused. Some
                // work cannot be cancelled until it ends (a long substring
                // search checks nowhere), so the connection, one of the
                // reader pool's few, is held until its backend is idle,
                // however long: leftovers never pile up past the pool's size.
                // Waited for here, so the caller's query slot stays taken
                // too (the API answers the client at the limit meanwhile).
                conn.close_on_drop();
                loop {
                    let active: Option<bool> = sqlx::query_scalar(
                        "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1",
                    )
                    .bind(pid)
                    .fetch_optional(&self.main)
                    .await
                    .ok()
                    .flatten();
                    if active != Some(true) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                drop(conn);
                Err(QueryFailure::TimedOut(limits.timeout))
            }
        };
        sqlx::query("DELETE FROM tenant_query_sessions WHERE pid = $1")
            .bind(pid)
            .execute(&self.main)
            .await
            .map_err(crate::StoreError::from)?;
        result
    }
}

async fn run_scoped(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    limits: Limits,
) -> Result<QueryOutput, QueryFailure> {
    let failure = |e: sqlx::Error| classify(e, limits);
    conn.execute("BEGIN READ ONLY").await.map_err(failure)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {}",
        limits.timeout.as_millis()
    )))
    .execute(&mut *conn)
    .await
    .map_err(failure)?;
    // A trailing `;` would end the wrapper below early.
    let sql = sql.trim_end().trim_end_matches(';');
    // Parsed and described, not run: its column names.
    let columns: Vec<String> = conn
        .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)))
        .await
        .map_err(failure)?
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    if columns.len() > MAX_COLUMNS {
        return Err(QueryFailure::refused(format!(
            "the query returns {} columns; at most {MAX_COLUMNS} are allowed",
            columns.len()
        )));
    }
    // Each value as its JSON text (PostgreSQL turns every type into JSON),
    // positional names keeping repeated column names apart; a row larger
    // than the answer may be comes back as NULL, so it is never sent. The
    // values' stored sizes are checked first, so a huge value is never
    // copied into JSON text to learn that it is too big. `OFFSET 0` keeps
    // PostgreSQL from folding the query into the wrapper, which would
    // compute each of its expressions twice (once per use below).
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let values: Vec<String> = names
        .iter()
        .map(|n| format!("to_json(q.{n})::text"))
        .collect();
    let alias = if names.is_empty() {
        String::from("q")
    } else {
        format!("q({})", names.join(", "))
    };
    let stored_size = if names.is_empty() {
        String::from("0")
    } else {
        names
            .iter()
            .map(|n| format!("coalesce(pg_column_size(q.{n})::bigint, 0)"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let wrapper = format!(
        "SELECT CASE WHEN r.a IS NOT NULL AND coalesce(octet_length(array_to_string(r.a, '')), 0) <= {max} \
         THEN r.a END \
         FROM (SELECT CASE WHEN {stored_size} <= {max} THEN ARRAY[{}]::text[] END AS a \
         FROM (SELECT * FROM (\n{sql}\n) AS q0 OFFSET 0) AS {alias} LIMIT {}) AS r",
        values.join(", "),
        limits.max_rows + 1,
        max = limits.max_bytes,
    );
    let (mut rows, mut bytes, mut truncated) = (Vec::new(), 0usize, false);
    {
        let mut stream = sqlx::query(sqlx::AssertSqlSafe(wrapper)).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await.map_err(failure)? {
            if rows.len() == limits.max_rows {
                truncated = true;
                break;
            }
            let Some(texts) = row
                .try_get::<Option<Vec<Option<String>>>, _>(0)
                .map_err(failure)?
            else {
                // This one row is over the size cap on its own.
                truncated = true;
                break;
            };
            let values: Vec<serde_json::Value> = texts.into_iter().map(json_value).collect();
            bytes += values.iter().map(json_size).sum::<usize>();
            if bytes > limits.max_bytes {
                truncated = true;
                break;
            }
            rows.push(values);
        }
    }
    conn.execute("ROLLBACK").await.map_err(failure)?;
    Ok(QueryOutput {
        columns,
        rows,
        truncated,
    })
}

/// A value from its JSON text. Text serde_json does not take (a number
/// beyond a double's range such as `1e400`, JSON nested deeper than 128
/// levels, a lone surrogate escape) comes back as that text, in a string.
fn json_value(text: Option<String>) -> serde_json::Value {
    match text {
        None => serde_json::Value::Null,
        Some(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    }
}

fn classify(e: sqlx::Error, limits: Limits) -> QueryFailure {
    let sqlx::Error::Database(db) = &e else {
        return QueryFailure::Store(e.into());
    };
    let message = db.message().to_string();
    match db.code().as_deref() {
        // query_canceled: statement_timeout or our cancel.
        Some("57014") => QueryFailure::TimedOut(limits.timeout),
        // insufficient_privilege, read_only_sql_transaction, undefined_table
        // (the reader's search path holds the two views only).
        Some("42501") | Some("25006") | Some("42P01") | Some("0A000") => {
            QueryFailure::refused(message)
        }
        _ => QueryFailure::Failed(message),
    }
}

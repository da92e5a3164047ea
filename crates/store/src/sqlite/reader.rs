//! Point reads straight through SQLite, on the calling thread.
//!
//! sqlx runs every SQLite connection on a worker thread of its own and each
//! statement is a round trip to it: two cross-thread wake-ups, far more than
//! the indexed read itself (docs/benchmarks.md). The two reads
//! on the request path — a key by digest on a cache miss, a contact by id,
//! email or external id — therefore use their own connections (rusqlite on the
//! same bundled SQLite) from a small pool and run where they are called. In
//! WAL mode a reader never waits for the writer, so this blocks a runtime
//! thread only for the read. Everything else, and every write, stays on sqlx.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use keyflow_core::KeyDigest;
use keyflow_core::contacts::{ContactFields, ContactLookup};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use crate::columns::{
    CONTACT_COLUMNS, KEY_COLUMNS, KeyRow, lookup_column, parse_environment, properties_from_column,
};
use crate::{AuthKey, Contact, StoreResult};

/// Idle connections kept for reuse; more are opened under concurrency and
/// closed when the pool is full.
const IDLE_CONNECTIONS: usize = 8;

pub(crate) struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Reader {
    /// For the database file at `path`, which sqlx has already created.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A WAL reader waits only in rare cases (recovery after a crash); it
        // runs on a runtime thread, so it gives up quickly (503) instead.
        conn.busy_timeout(Duration::from_millis(250))?;
        // These connections never write, whatever a future caller tries.
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    /// Runs `read` on a pooled connection.
    fn with<T>(&self, read: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = read(&conn);
        // A connection that failed (I/O, corruption, busy) is not reused.
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
        result
    }

    pub(crate) fn key_for_auth(&self, digest: &KeyDigest) -> StoreResult<Option<AuthKey>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS}, p.workspace_id AS p_workspace_id, p.environment AS p_environment \
                 FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.digest = ?1"
            ))?;
            let found = stmt
                .query_row([digest.to_hex()], |row| {
                    Ok((
                        key_row(row)?,
                        row.get::<_, String>("p_workspace_id")?,
                        row.get::<_, String>("p_environment")?,
                    ))
                })
                .optional()?;
            found
                .map(|(key, workspace_id, environment)| {
                    Ok(AuthKey {
                        key: key.into_model()?,
                        workspace_id,
                        environment: parse_environment(&environment)?,
                    })
                })
                .transpose()
        })
    }

    pub(crate) fn contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
    ) -> StoreResult<Option<Contact>> {
        let (column, value) = lookup_column(lookup);
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CONTACT_COLUMNS} FROM contacts WHERE project_id = ?1 AND {column} = ?2"
            ))?;
            let found = stmt
                .query_row([project_id, value.as_str()], |row| {
                    Ok((
                        Contact {
                            id: row.get("id")?,
                            project_id: row.get("project_id")?,
                            fields: ContactFields {
                                email: row.get("email")?,
                                external_id: row.get("external_id")?,
                                first_name: row.get("first_name")?,
                                last_name: row.get("last_name")?,
                                subscribed: row.get("subscribed")?,
                                properties: serde_json::Map::new(),
                            },
                            created_at: row.get("created_at")?,
                            updated_at: row.get("updated_at")?,
                        },
                        row.get::<_, String>("properties")?,
                    ))
                })
                .optional()?;
            found
                .map(|(mut contact, properties)| {
                    contact.fields.properties = properties_from_column("properties", &properties)?;
                    Ok(contact)
                })
                .transpose()
        })
    }
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        name: row.get("name")?,
        key_type: row.get("key_type")?,
        scopes: row.get("scopes")?,
        prefix: row.get("prefix")?,
        digest: row.get("digest")?,
        created_at: row.get("created_at")?,
        created_by_type: row.get("created_by_type")?,
        created_by_id: row.get("created_by_id")?,
        created_by_name: row.get("created_by_name")?,
        created_by_prefix: row.get("created_by_prefix")?,
        expires_at: row.get("expires_at")?,
        revoked_at: row.get("revoked_at")?,
        last_used_at: row.get("last_used_at")?,
        last_used_ip: row.get("last_used_ip")?,
        ip_allowlist: row.get("ip_allowlist")?,
        allowed_events: row.get("allowed_events")?,
        allowed_origins: row.get("allowed_origins")?,
        rate_limit: row.get("rate_limit")?,
        rolled_at: row.get("rolled_at")?,
    })
}

//! Tenant queries and SQLite's write-ahead log.
//!
//! SQLite can start the log over only at a moment when no reader holds an
//! old snapshot. Tenant queries are the long readers (up to their time
//! limit), so queries that overlap without a gap kept the log from ever
//! restarting: it grew by all ingestion, ~1 MiB/s in round 10, and stayed
//! that size. Past a size, the gate lets no new tenant query start until
//! the running ones have ended (each within its time limit), checkpoints
//! the log and truncates it, then opens again.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::tenant_sql::QueryFailure;

pub(crate) struct WalGate {
    db: PathBuf,
    wal: PathBuf,
    running: AtomicUsize,
    /// No new query may start until the log has been truncated.
    draining: AtomicBool,
    checkpointing: Mutex<()>,
}

/// A running tenant query, counted until dropped.
pub(crate) struct Running<'g>(&'g WalGate);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WalGate {
    pub(crate) fn new(db: PathBuf) -> Self {
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        Self {
            db,
            wal: PathBuf::from(wal),
            running: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            checkpointing: Mutex::new(()),
        }
    }

    /// Waits (blocking, at most `max_wait`) until a query may start; the
    /// guard counts it as running. A log past `limit_bytes` closes the gate
    /// until it has been truncated.
    pub(crate) fn enter(
        &self,
        limit_bytes: u64,
        max_wait: Duration,
    ) -> Result<Running<'_>, QueryFailure> {
        let deadline = Instant::now() + max_wait;
        loop {
            let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
            if size > limit_bytes {
                self.draining.store(true, Ordering::Release);
            }
            if !self.draining.load(Ordering::Acquire) {
                self.running.fetch_add(1, Ordering::AcqRel);
                return Ok(Running(self));
            }
            if self.running.load(Ordering::Acquire) == 0
                && let Ok(_turn) = self.checkpointing.try_lock()
            {
                self.checkpoint();
                self.draining.store(false, Ordering::Release);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(QueryFailure::Unavailable(
                    "the database is catching up on writes; try the query again in a few seconds"
                        .into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Copies the log into the database and truncates it (waiting up to
    /// 2 s for the writer between its commits).
    fn checkpoint(&self) {
        let done = rusqlite::Connection::open(&self.db).and_then(|conn| {
            conn.busy_timeout(Duration::from_secs(2))?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        match done {
            Ok(0) => tracing::info!("write-ahead log truncated for tenant queries"),
            Ok(_) => tracing::warn!("write-ahead log checkpoint was busy; it will be tried again"),
            Err(e) => tracing::warn!(error = %e, "write-ahead log checkpoint failed"),
        }
    }
}

//! Wake-ups for the workflow worker (SPEC §10): a write that queued jobs
//! says so once it has committed, so the worker claims them at once instead
//! of at its next poll.
//!
//! - SQLite: one process writes a database. An update hook on every
//!   connection that writes notes a row entering `jobs` (the event trigger's
//!   rows included); the writer that committed announces it.
//! - PostgreSQL: a statement trigger on `jobs` sends `NOTIFY keyflow_jobs`,
//!   which PostgreSQL delivers at commit to every instance that listens, so
//!   a run started on one instance is seen by all of them.
//!
//! A wake-up is a hint: the worker still polls, slowly, in case one is lost
//! (a listener reconnecting, a notification dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The PostgreSQL channel the `jobs` trigger notifies (migration 0021).
pub(crate) const CHANNEL: &str = "keyflow_jobs";

/// What the worker waits on; see [`crate::WorkflowRunStore::job_signals`].
pub struct JobSignals {
    wake: Arc<Notify>,
    /// PostgreSQL: the task that listens, stopped when this is dropped.
    listener: Option<tokio::task::AbortHandle>,
}

impl JobSignals {
    /// Returns when jobs may have been queued since the last return.
    /// Cancel-safe: a wake-up that arrives while nobody waits is kept.
    pub async fn next(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn local(queued: &QueuedJobs) -> Self {
        Self {
            wake: queued.wake.clone(),
            listener: None,
        }
    }

    /// Listens on [`CHANNEL`] on a connection of its own (from `pool`),
    /// reconnecting after a failure; every (re)connection counts as a
    /// wake-up, since notifications sent meanwhile were lost.
    pub(crate) fn listen(pool: sqlx::PgPool) -> Self {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(listen_forever(pool, wake.clone()));
        Self {
            wake,
            listener: Some(task.abort_handle()),
        }
    }
}

impl Drop for JobSignals {
    fn drop(&mut self) {
        if let Some(task) = &self.listener {
            task.abort();
        }
    }
}

async fn listen_forever(pool: sqlx::PgPool, wake: Arc<Notify>) {
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for workflow jobs yet");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::debug!(error = %e, "cannot listen for workflow jobs yet");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                // The connection was lost and made again: look, in case.
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    tracing::debug!(error = %e, "lost the workflow jobs listener");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// SQLite: whether a transaction put rows in `jobs`, and the wake-up its
/// commit sends. All writes take the store's write turn, so one flag for
/// every connection is exact: the transaction that set it is the one that
/// commits next (a rolled-back one only costs a look at an empty queue).
#[derive(Default)]
pub(crate) struct QueuedJobs {
    inserted: AtomicBool,
    wake: Arc<Notify>,
}

impl QueuedJobs {
    /// From an update hook: a row was inserted into `table`.
    pub(crate) fn note_insert(&self, table: &str) {
        if table == "jobs" {
            self.inserted.store(true, Ordering::Relaxed);
        }
    }

    /// After a commit: wake the worker if that transaction queued jobs.
    pub(crate) fn committed(&self) {
        if self.inserted.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_commit_that_queued_jobs_wakes_the_worker() {
        let queued = QueuedJobs::default();
        let signals = JobSignals::local(&queued);
        queued.note_insert("events");
        queued.committed();
        let quiet = tokio::time::timeout(Duration::from_millis(50), signals.next()).await;
        assert!(quiet.is_err(), "a commit without jobs woke the worker");

        queued.note_insert("jobs");
        queued.committed();
        tokio::time::timeout(Duration::from_secs(5), signals.next())
            .await
            .expect("the commit that queued a job woke the worker");
        // One wake-up per commit, not one per look.
        queued.committed();
        let quiet = tokio::time::timeout(Duration::from_millis(50), signals.next()).await;
        assert!(quiet.is_err());
    }
}

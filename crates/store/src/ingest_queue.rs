//! The hand-over between a request and a store's group commit: both stores
//! queue events to writers that commit many requests' rows in one transaction
//! and answer each request only after that commit (SQLite: every event, on
//! one writer thread; PostgreSQL: events that need no lookups, on a few
//! committer tasks).

use keyflow_core::events::NewEvent;
use keyflow_core::histogram::{COUNTS, Histogram, SECONDS};
use tokio::sync::{mpsc, oneshot};

use crate::{EventOutcome, StoreError, StoreResult};

/// One request's events waiting for a group commit, and where its outcome goes.
pub(crate) struct IngestJob {
    pub(crate) project_id: String,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) now: i64,
    pub(crate) reply: oneshot::Sender<StoreResult<Vec<EventOutcome>>>,
}

/// Queues the events and waits for their commit. `stopped` is the error when
/// the writers are gone (the store is shutting down).
pub(crate) async fn submit(
    queue: &mpsc::Sender<IngestJob>,
    project_id: &str,
    events: Vec<NewEvent>,
    now: i64,
    stopped: fn() -> StoreError,
) -> StoreResult<Vec<EventOutcome>> {
    let (reply, answer) = oneshot::channel();
    let job = IngestJob {
        project_id: project_id.to_string(),
        events,
        now,
        reply,
    };
    queue.send(job).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// Answers every job of a grouped write that failed as a whole: the first
/// job gets the error itself, the others the same kind of failure (see
/// [`StoreError::for_each_job`]).
pub(crate) fn fail_all(batch: Vec<IngestJob>, error: StoreError) {
    let mut jobs = batch.into_iter();
    let Some(first) = jobs.next() else { return };
    for job in jobs {
        let _ = job.reply.send(Err(error.for_each_job()));
    }
    let _ = first.reply.send(Err(error));
}

/// What the group commits did, for `/metrics`: how many events each commit
/// carried and how long it took (from holding the write turn to the commit's
/// end), on this instance.
pub struct GroupCommitStats {
    pub events_per_commit: Histogram,
    pub commit_seconds: Histogram,
}

impl Default for GroupCommitStats {
    fn default() -> Self {
        Self {
            events_per_commit: Histogram::new(COUNTS),
            commit_seconds: Histogram::new(SECONDS),
        }
    }
}

impl GroupCommitStats {
    pub(crate) fn record(&self, events: usize, started: std::time::Instant) {
        self.events_per_commit.observe(events as f64);
        self.commit_seconds.observe_duration(started.elapsed());
    }
}

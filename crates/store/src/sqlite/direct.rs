//! The writer's own SQLite connection: every batch of an on-disk database is
//! committed here, on the writer thread.
//!
//! Through sqlx, each statement is a round trip to the connection's worker
//! thread: two wake-ups, a good part of a commit cycle (docs/benchmarks.md),
//! and a batch of identified events with idempotency keys needs a few
//! statements per event. Here the writer thread runs them itself:
//! `BEGIN IMMEDIATE`, the lookups of each job in a savepoint
//! ([`super::lookups`]), the `INSERT`s, `COMMIT`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::writer::fail_all;
use super::{claims, lookups, rollups};
use crate::areas::events::{EVENT_CHUNKS, event_chunks, insert_events_sql};
use crate::columns::EventRow;
use crate::ingest_queue::IngestJob;
use crate::job_signals::QueuedJobs;
use crate::{EventOutcome, StoreError, StoreResult};

pub(crate) struct DirectWriter {
    path: PathBuf,
    conn: Option<Connection>,
    /// The INSERT for each chunk size of `EVENT_CHUNKS`, written once.
    inserts: Vec<(usize, String)>,
    /// Contacts events named before (see [`lookups::Identities`]).
    identities: lookups::Identities,
    /// Presences known to be stored (see [`rollups::Presences`]).
    presences: rollups::Presences,
    /// Idempotency claims (see [`claims::Claims`]).
    claims: claims::Claims,
    /// Notes rows entering `jobs` (the event trigger's), for the worker.
    queued_jobs: Arc<QueuedJobs>,
}

impl DirectWriter {
    pub(crate) fn new(path: PathBuf, queued_jobs: Arc<QueuedJobs>) -> Self {
        let inserts = EVENT_CHUNKS
            .iter()
            .map(|&rows| (rows, insert_events_sql(rows).replace('$', "?")))
            .collect();
        Self {
            path,
            conn: None,
            inserts,
            identities: lookups::Identities::default(),
            presences: rollups::Presences::default(),
            claims: claims::Claims::new(),
            queued_jobs,
        }
    }

    /// Forget the connection after a failure; the next batch opens a new one.
    pub(crate) fn reset(&mut self) {
        self.conn = None;
        self.identities.forget_all();
        self.presences.forget_all();
        self.claims.forget_all();
    }

    /// Commits a lookup-free batch and answers its jobs. Should SQLite refuse
    /// the batch, each job is retried in a transaction of its own, so a job
    /// that cannot be stored (say, its project was just deleted) fails alone
    /// and stores nothing. Returns the last error, if any, so the caller can
    /// open a fresh connection.
    ///
    /// `answering` runs once the commit is over, before any job is answered
    /// (so what it records is there for a client that has its answer).
    pub(crate) fn commit(
        &mut self,
        batch: Vec<IngestJob>,
        answering: impl FnOnce(),
    ) -> rusqlite::Result<()> {
        let prepared: Vec<_> = batch
            .iter()
            .map(|job| EventRow::lookup_free(&job.project_id, &job.events, job.now))
            .collect();
        let rows: Vec<&EventRow> = prepared.iter().flat_map(|(_, rows)| rows).collect();
        let first_try = self.write(&rows);
        if first_try.is_ok() || batch.len() == 1 {
            answering();
            match first_try {
                Ok(()) => {
                    for (job, (ids, _)) in batch.into_iter().zip(prepared) {
                        let _ = job.reply.send(Ok(ids));
                    }
                    return Ok(());
                }
                Err(e) => {
                    fail_all(batch, &e.to_string());
                    return Err(e);
                }
            }
        }
        let mut last_error = first_try;
        answering();
        for (job, (ids, rows)) in batch.into_iter().zip(prepared) {
            let rows: Vec<&EventRow> = rows.iter().collect();
            match self.write(&rows) {
                Ok(()) => {
                    let _ = job.reply.send(Ok(ids));
                }
                Err(e) => {
                    let _ = job
                        .reply
                        .send(Err(crate::StoreError::WriteFailed(e.to_string())));
                    last_error = Err(e);
                }
            }
        }
        last_error
    }

    /// Moves the notes of events with a contact into the sorted table once
    /// there are [`MOVE_NOTES_AT`] of them (see migration 0018): each
    /// contact's page is then written once per move, not once per commit.
    /// A failed move keeps the notes where they are, still read by listings.
    pub(crate) fn move_contact_notes_if_due(&mut self) {
        let moved = self.connection().and_then(|conn| {
            let notes: i64 = conn
                .prepare_cached(
                    "SELECT coalesce((SELECT max(seq) FROM event_contacts_recent) \
                     - (SELECT min(seq) FROM event_contacts_recent) + 1, 0)",
                )?
                .query_row([], |r| r.get(0))?;
            if notes < MOVE_NOTES_AT {
                return Ok(());
            }
            move_contact_notes(conn)
        });
        if let Err(e) = moved {
            tracing::warn!(error = %e, "moving contact notes failed; they stay where they are");
        }
    }

    /// Moves the idempotency log into a run once it is long enough, and
    /// drops runs older than the window as of `now` (see [`claims::Claims`]).
    pub(crate) fn move_claims_if_due(&mut self, now: i64) {
        let mut claims = std::mem::take(&mut self.claims);
        if let Ok(conn) = self.connection() {
            claims.move_if_due(conn, now);
        }
        self.claims = claims;
    }

    fn connection(&mut self) -> rusqlite::Result<&mut Connection> {
        match &mut self.conn {
            Some(conn) => Ok(conn),
            empty @ None => Ok(empty.insert(open(&self.path, &self.queued_jobs)?)),
        }
    }

    fn write(&mut self, rows: &[&EventRow]) -> rusqlite::Result<()> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty @ None => empty.insert(open(&self.path, &self.queued_jobs)?),
        };
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let written = insert(conn, &self.inserts, &mut self.presences, rows)
            .and_then(|()| conn.execute_batch("COMMIT"));
        match written {
            Ok(()) => {
                self.presences.committed();
                Ok(())
            }
            Err(e) => {
                self.presences.rolled_back();
                // Nothing of the batch may stay; if even this fails the
                // caller drops the connection.
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Commits a batch whose events need lookups and answers its jobs. A job
    /// whose own input is refused (an unknown contact id, a contact
    /// conflict) fails alone, its writes undone by its savepoint; a failure
    /// of SQLite itself fails the whole batch, nothing of it kept, and is
    /// returned so the caller opens a fresh connection.
    /// `answering` runs as in [`DirectWriter::commit`].
    pub(crate) fn commit_with_lookups(
        &mut self,
        batch: Vec<IngestJob>,
        answering: impl FnOnce(),
    ) -> rusqlite::Result<()> {
        let inserts = std::mem::take(&mut self.inserts);
        let mut identities = std::mem::take(&mut self.identities);
        let mut presences = std::mem::take(&mut self.presences);
        let mut claims = std::mem::take(&mut self.claims);
        let done = self.connection().and_then(|conn| {
            let mut state = BatchState {
                identities: &mut identities,
                presences: &mut presences,
                claims: &mut claims,
            };
            prepare_and_insert(conn, &mut state, &inserts, &batch)
        });
        match &done {
            Ok(_) => {
                identities.committed();
                presences.committed();
                claims.committed();
            }
            Err(_) => {
                identities.rolled_back(0);
                presences.rolled_back();
                claims.rolled_back();
            }
        }
        self.identities = identities;
        self.presences = presences;
        self.claims = claims;
        self.inserts = inserts;
        answering();
        match done {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
                Ok(())
            }
            Err(e) => {
                fail_all(batch, &e.to_string());
                Err(e)
            }
        }
    }
}

/// Notes of events with a contact (`event_contacts_recent`) moved at once:
/// large enough that most contacts have several events in a move, small
/// enough that a listing reads the unmoved ones quickly.
const MOVE_NOTES_AT: i64 = 10_000;

/// Moves every note into `event_contacts` in its sort order, in one
/// transaction (a listing sees the notes in one table or the other).
pub(crate) fn move_contact_notes(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = conn.execute_batch(
        "INSERT INTO event_contacts (project_id, contact_id, id) \
             SELECT project_id, contact_id, id FROM event_contacts_recent WHERE true \
             ORDER BY project_id, contact_id, id ON CONFLICT DO NOTHING; \
             DELETE FROM event_contacts_recent; \
             COMMIT",
    );
    if moved.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    moved
}

/// What the writer remembers across batches, lent to one batch.
struct BatchState<'a> {
    identities: &'a mut lookups::Identities,
    presences: &'a mut rollups::Presences,
    claims: &'a mut claims::Claims,
}

/// One transaction: each job prepared in a savepoint, every accepted job's
/// rows inserted, committed. Rolled back on any SQLite failure.
fn prepare_and_insert(
    conn: &mut Connection,
    state: &mut BatchState<'_>,
    inserts: &[(usize, String)],
    batch: &[IngestJob],
) -> rusqlite::Result<Vec<StoreResult<Vec<EventOutcome>>>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let written = (|| {
        // Holding the write lock: any contact write or claim, from any
        // process, has committed (and counted) or not begun.
        state.identities.check_generation(conn)?;
        state.claims.check_generation(conn)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for job in batch {
            // Prepared once: `execute_batch` would parse them per job.
            conn.prepare_cached("SAVEPOINT ingest_job")?.execute([])?;
            let mark = state.identities.pending_len();
            let claims_mark = state.claims.mark();
            let prepared = lookups::prepare(
                conn,
                state.identities,
                state.claims,
                &job.project_id,
                &job.events,
                job.now,
            );
            match prepared {
                Ok((outcomes, mut job_rows)) => {
                    conn.prepare_cached("RELEASE ingest_job")?.execute([])?;
                    rows.append(&mut job_rows);
                    results.push(Ok(outcomes));
                }
                Err(StoreError::Sqlite(e)) => return Err(e),
                Err(refused) => {
                    conn.execute_batch("ROLLBACK TO ingest_job; RELEASE ingest_job")?;
                    state.identities.rolled_back(mark);
                    state.claims.rolled_back_to(claims_mark);
                    results.push(Err(refused));
                }
            }
        }
        let rows: Vec<&EventRow> = rows.iter().collect();
        insert(conn, inserts, state.presences, &rows)?;
        state.claims.before_commit(conn)?;
        conn.execute_batch("COMMIT")?;
        Ok(results)
    })();
    if written.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

/// Multi-row INSERTs in a few fixed sizes (each prepared once): one
/// statement per 100 rows instead of per row saves SQLite's per-statement
/// setup (cursors, halt) on every event. Then the Metrics API's roll-ups
/// of these rows, in the same transaction.
fn insert(
    conn: &Connection,
    inserts: &[(usize, String)],
    presences: &mut rollups::Presences,
    rows: &[&EventRow],
) -> rusqlite::Result<()> {
    event_chunks(rows).into_iter().try_for_each(|chunk| {
        let sql = inserts
            .iter()
            .find(|(rows, _)| *rows == chunk.len())
            .map(|(_, sql)| sql.as_str())
            .ok_or(rusqlite::Error::InvalidQuery)?;
        let mut insert = conn.prepare_cached(sql)?;
        for (i, r) in chunk.iter().enumerate() {
            let at = i * 9;
            insert.raw_bind_parameter(at + 1, &r.id)?;
            insert.raw_bind_parameter(at + 2, &r.project_id)?;
            insert.raw_bind_parameter(at + 3, &r.name)?;
            insert.raw_bind_parameter(at + 4, &r.contact_id)?;
            insert.raw_bind_parameter(at + 5, &r.anonymous_id)?;
            insert.raw_bind_parameter(at + 6, &r.properties)?;
            insert.raw_bind_parameter(at + 7, r.timestamp)?;
            insert.raw_bind_parameter(at + 8, r.received_at)?;
            insert.raw_bind_parameter(at + 9, &r.idempotency_key)?;
        }
        insert.raw_execute().map(|_| ())
    })?;
    rollups::write(conn, presences, rows)
}

fn open(path: &std::path::Path, queued_jobs: &Arc<QueuedJobs>) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    let noted = queued_jobs.clone();
    conn.update_hook(Some(
        move |action: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
            if action == rusqlite::hooks::Action::SQLITE_INSERT {
                noted.note_insert(table);
            }
        },
    ))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The same durability as the sqlx connections: acknowledged only once
    // the WAL is on disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

//! Idempotency claims on the writer's own connection, kept so that a claim
//! costs no page write of its own.
//!
//! Clients make idempotency keys at random (Segment's `messageId`, Stripe's
//! keys: UUIDv4). In one B-tree keyed by (project, key) every claim lands on
//! a random leaf page, and SQLite writes each dirtied page whole to the WAL at
//! commit: a commit of 1 600 claims wrote ~1 300 pages, and anonymous batches
//! carrying random keys ran 8x slower than without keys (docs/benchmarks.md,
//! session 14). Now:
//!
//! - **The event row is the claim.** A stored event with an idempotency key
//!   holds that key from its `received_at` for the window; nothing else is
//!   written per claim. Claims not yet in a run are kept in memory
//!   (`recent`); after a restart they are read back from the events whose
//!   id (a UUIDv7, so a time) is past the runs' watermark (events are never
//!   deleted).
//! - **Runs index the older ones.** Every [`MOVE_AT`] claims, `recent` is
//!   written as a new run: its entries (key hash, `received_at`, event id)
//!   sorted by hash, in blobs of [`CHUNK`] entries keyed by their first hash
//!   (a few sequential pages), with a filter of its hashes
//!   ([`super::claim_filter`]). Four runs of one size merge into one of the
//!   next size (up to [`MERGED_RUNS`] × [`MOVE_AT`]), dropping expired entries; a
//!   run whose newest claim left the window is dropped whole.
//! - **A hash is never trusted alone**: a run's entry names an event, and the
//!   claim holds only if that event has the same project and key.
//! - `event_idempotency` keeps claims made before migration 0024 (and the
//!   in-memory databases' claims): probed while it has rows, its expired rows
//!   deleted at each move.
//!
//! Another process writing the same file (a second server) bumps the
//! `claims` generation in each commit that claims or moves; a writer that
//! finds the generation moved reloads before its next batch.

use std::collections::HashMap;

use keyflow_core::events::IDEMPOTENCY_WINDOW_MS;
use rusqlite::{Connection, OptionalExtension, params};

use super::claim_filter::{ClaimFilter, key_hash};
use crate::StoreResult;

/// Claims kept in memory before they are written as a run: large enough that
/// runs stay few, small enough that writing one is a short pause.
pub(crate) const MOVE_AT: usize = 50_000;
/// Entries per blob of a run (4 KiB).
const CHUNK: usize = 128;
/// Runs merge into runs of four times `move_at` (four of 50 000 make one of
/// about 200 000), which are left alone: a merge happens on the writer
/// thread, and this bounds its pause (merging on to 800 000 paused batches
/// ~100 ms).
const MERGED_RUNS: usize = 4;
/// How long past the window claims are kept (see `write_run`).
const EXPIRY_MARGIN_MS: i64 = 300_000;
const ENTRY: usize = 32;

#[derive(Clone)]
struct Held {
    event_id: String,
    created_at: i64,
}

/// A run of claims: its id, newest claim, size and the filter of its keys
/// (`None`: probe it for every key).
struct Run {
    id: i64,
    newest: i64,
    claims: usize,
    filter: Option<ClaimFilter>,
}

/// A run's entry: the hash of (project, key), the claim's time, its event.
#[derive(Clone, Copy)]
struct Entry {
    hash: i64,
    created_at: i64,
    event: [u8; 16],
}

impl Entry {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.event);
    }

    fn read(bytes: &[u8]) -> Option<Entry> {
        let hash = i64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let created_at = i64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let event = bytes.get(16..32)?.try_into().ok()?;
        Some(Entry {
            hash,
            created_at,
            event,
        })
    }
}

fn entries_of(blob: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    blob.chunks_exact(ENTRY).filter_map(Entry::read)
}

type KeyOf = (String, String);

#[derive(Default)]
pub(crate) struct Claims {
    /// Claims of stored events after the watermark, newest per key.
    recent: HashMap<KeyOf, Held>,
    /// Claims of the open transaction, in order; `pending_at` finds them.
    pending: Vec<(KeyOf, Held)>,
    pending_at: HashMap<KeyOf, usize>,
    /// Newest first.
    runs: Vec<Run>,
    /// `event_idempotency` still has rows.
    legacy: bool,
    /// The database's secret of `key_hash`.
    secret: Vec<u8>,
    /// The `claims` generation the above reflects; `None`: reload.
    generation: Option<i64>,
    /// Claims in `recent` that make it a run (see `move_if_due`).
    move_at: usize,
}

impl Claims {
    pub(crate) fn new() -> Self {
        Self::with_move_at(MOVE_AT)
    }

    /// Tests write runs after fewer claims.
    pub(crate) fn with_move_at(move_at: usize) -> Self {
        Self {
            move_at,
            ..Self::default()
        }
    }

    /// Forget everything: the next batch reloads from the database.
    pub(crate) fn forget_all(&mut self) {
        self.recent.clear();
        self.runs.clear();
        self.rolled_back();
        self.generation = None;
    }

    /// Reloads unless this process made the last claim change. Call it
    /// holding the write lock (inside `BEGIN IMMEDIATE`).
    pub(crate) fn check_generation(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let now = generation(conn)?;
        if self.generation != Some(now) {
            self.reload(conn)?;
            self.generation = Some(now);
        }
        Ok(())
    }

    fn reload(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.secret = conn
            .prepare_cached("SELECT secret FROM idempotency_hash_key")?
            .query_row([], |r| r.get(0))?;
        self.runs.clear();
        let mut watermark = 0;
        let mut info = conn.prepare(
            "SELECT run, newest, claims, filter, watermark FROM idempotency_run_info \
             ORDER BY run DESC",
        )?;
        let mut rows = info.query([])?;
        while let Some(row) = rows.next()? {
            let filter: Option<Vec<u8>> = row.get(3)?;
            let claims: i64 = row.get(2)?;
            self.runs.push(Run {
                id: row.get(0)?,
                newest: row.get(1)?,
                claims: usize::try_from(claims).unwrap_or(0),
                filter: filter.as_deref().and_then(ClaimFilter::from_bytes),
            });
            watermark = watermark.max(row.get::<_, i64>(4)?);
        }
        self.recent.clear();
        let projects: Vec<String> = conn
            .prepare("SELECT id FROM projects")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut tail = conn.prepare(
            "SELECT idempotency_key, id, received_at FROM events INDEXED BY events_keyed \
             WHERE project_id = ?1 AND id >= ?2 AND idempotency_key IS NOT NULL ORDER BY id",
        )?;
        let from = first_id_at(watermark);
        for project_id in projects {
            let mut rows = tail.query(params![project_id, from])?;
            while let Some(row) = rows.next()? {
                self.recent.insert(
                    (project_id.clone(), row.get(0)?),
                    Held {
                        event_id: row.get(1)?,
                        created_at: row.get(2)?,
                    },
                );
            }
        }
        self.legacy = legacy_rows(conn)?;
        Ok(())
    }

    /// Claims `key` for the event `id` (stored in this transaction);
    /// `Some(first id)` when an event within the idempotency window holds
    /// it. Inside the writer's open transaction, after
    /// [`Claims::check_generation`].
    pub(crate) fn claim(
        &mut self,
        conn: &Connection,
        project_id: &str,
        key: &str,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<String>> {
        let cutoff = now - IDEMPOTENCY_WINDOW_MS;
        let key_of = (project_id.to_string(), key.to_string());
        if let Some(held) = self.newest(conn, &key_of)?
            && held.created_at >= cutoff
        {
            return Ok(Some(held.event_id));
        }
        let held = Held {
            event_id: id.to_string(),
            created_at: now,
        };
        match self.pending_at.get(&key_of) {
            // Only an expired claim is taken over.
            Some(&at) => self.pending[at].1 = held,
            None => {
                self.pending_at.insert(key_of.clone(), self.pending.len());
                self.pending.push((key_of, held));
            }
        }
        Ok(None)
    }

    /// The newest claim of a key anywhere, expired or not.
    fn newest(&self, conn: &Connection, key_of: &KeyOf) -> StoreResult<Option<Held>> {
        if let Some(&at) = self.pending_at.get(key_of) {
            return Ok(Some(self.pending[at].1.clone()));
        }
        if let Some(held) = self.recent.get(key_of) {
            return Ok(Some(held.clone()));
        }
        let hash = self.hash_of(&key_of.0, &key_of.1);
        let mut newest: Option<Held> = None;
        for run in &self.runs {
            if run
                .filter
                .as_ref()
                .is_some_and(|f| !f.may_hold(hash as u64))
            {
                continue;
            }
            for entry in run_entries(conn, run.id, hash)? {
                if newest
                    .as_ref()
                    .is_some_and(|n| n.created_at >= entry.created_at)
                {
                    continue;
                }
                if let Some(event_id) = event_holds(conn, &entry, key_of)? {
                    newest = Some(Held {
                        event_id,
                        created_at: entry.created_at,
                    });
                }
            }
        }
        if newest.is_none() && self.legacy {
            newest = conn
                .prepare_cached(
                    "SELECT event_id, created_at FROM event_idempotency \
                     WHERE project_id = ?1 AND key = ?2",
                )?
                .query_row(params![key_of.0, key_of.1], |r| {
                    Ok(Held {
                        event_id: r.get(0)?,
                        created_at: r.get(1)?,
                    })
                })
                .optional()?;
        }
        Ok(newest)
    }

    /// Runs' hashes are compared as `i64` (SQLite's integers) everywhere.
    fn hash_of(&self, project_id: &str, key: &str) -> i64 {
        key_hash(&self.secret, project_id, key) as i64
    }

    /// Where a job's savepoint starts.
    pub(crate) fn mark(&self) -> usize {
        self.pending.len()
    }

    /// The job's savepoint rolled back: its claims are gone.
    pub(crate) fn rolled_back_to(&mut self, mark: usize) {
        for (key_of, _) in self.pending.drain(mark..) {
            self.pending_at.remove(&key_of);
        }
    }

    /// Inside the transaction, just before `COMMIT`: tells other processes
    /// that the claims changed.
    pub(crate) fn before_commit(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.pending.is_empty() {
            self.generation = Some(bump_generation(conn)?);
        }
        Ok(())
    }

    /// The transaction committed: its events hold their claims.
    pub(crate) fn committed(&mut self) {
        self.pending_at.clear();
        self.recent.extend(self.pending.drain(..));
    }

    /// The transaction rolled back: nothing it claimed is stored, and the
    /// generation it may have bumped is not either.
    pub(crate) fn rolled_back(&mut self) {
        if !self.pending.is_empty() {
            self.generation = None;
        }
        self.pending.clear();
        self.pending_at.clear();
    }

    /// Writes `recent` as a run once it holds `move_at` claims, merges runs
    /// and drops expired ones, in a transaction of its own between batches.
    /// On failure nothing changed and the next batch reloads.
    pub(crate) fn move_if_due(&mut self, conn: &mut Connection, now: i64) {
        if self.recent.len() < self.move_at {
            return;
        }
        let moved = conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| self.write_run(conn, now))
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = moved {
            tracing::warn!(error = %e, "writing idempotency claims as a run failed; they stay in memory");
            let _ = conn.execute_batch("ROLLBACK");
            self.forget_all();
        }
    }

    fn write_run(&mut self, conn: &Connection, now: i64) -> rusqlite::Result<()> {
        // Another process may have claimed since this batch: `recent` must
        // hold every claim after the watermark before it moves past them.
        self.check_generation(conn)?;
        if self.recent.is_empty() {
            return Ok(());
        }
        // A job of a later batch may carry an older `now` (queued behind this
        // one, or from another process): keep claims a while past the window.
        let cutoff = now - IDEMPOTENCY_WINDOW_MS - EXPIRY_MARGIN_MS;
        let mut entries = Vec::with_capacity(self.recent.len());
        for ((project_id, key), held) in &self.recent {
            let Ok(event) = uuid::Uuid::parse_str(&held.event_id) else {
                // Every event id is a UUID (`new_id`); a run cannot name
                // another, so nothing moves.
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "event id {} is not a UUID",
                    held.event_id
                )));
            };
            entries.push(Entry {
                hash: self.hash_of(project_id, key),
                created_at: held.created_at,
                event: *event.as_bytes(),
            });
        }
        let watermark = watermark_now();
        let run: i64 = conn.query_row(
            "SELECT coalesce(max(run), 0) + 1 FROM idempotency_run_info",
            [],
            |r| r.get(0),
        )?;
        // Runs whose newest claim left the window go whole.
        let (mut runs, expired): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|r| r.newest >= cutoff);
        for run in expired {
            delete_run(conn, run.id)?;
        }
        // Four runs of one size make one of the next, up to MERGED_RUNS ×
        // move_at: merged in memory with the new claims, written once.
        let top = tier(self.move_at * MERGED_RUNS, self.move_at);
        loop {
            let class = tier(entries.len(), self.move_at);
            let same: Vec<usize> = runs
                .iter()
                .enumerate()
                .filter(|(_, r)| tier(r.claims, self.move_at) == class)
                .map(|(i, _)| i)
                .take(3)
                .collect();
            if class >= top || same.len() < 3 {
                break;
            }
            for &i in same.iter().rev() {
                let merged = runs.remove(i);
                entries.extend(read_run(conn, merged.id)?);
                delete_run(conn, merged.id)?;
            }
            entries.retain(|e| e.created_at >= cutoff);
        }
        let written = insert_run(conn, run, entries, watermark)?;
        runs.insert(0, written);
        if self.legacy {
            conn.execute(
                "DELETE FROM event_idempotency WHERE created_at < ?1",
                [cutoff],
            )?;
        }
        let generation = bump_generation(conn)?;
        // In memory only once all of it is written (a failure reloads).
        self.runs = runs;
        self.recent.clear();
        self.generation = Some(generation);
        if self.legacy {
            self.legacy = legacy_rows(conn)?;
        }
        Ok(())
    }
}

/// 0 below 4 × `move_at` entries, 1 below 16 ×, and so on. Runs are written
/// at `move_at` claims or a little more (a batch adds up to 20 000).
fn tier(claims: usize, move_at: usize) -> u32 {
    let mut tier = 0;
    let mut bound = move_at.max(1) * 4;
    while claims >= bound {
        tier += 1;
        bound = bound.saturating_mul(4);
    }
    tier
}

/// Writes `entries` as run `run`, sorted by hash, in blobs of [`CHUNK`]
/// (never splitting one hash over two blobs, so a lookup reads one blob).
fn insert_run(
    conn: &Connection,
    run: i64,
    mut entries: Vec<Entry>,
    watermark: i64,
) -> rusqlite::Result<Run> {
    entries.sort_unstable_by_key(|e| (e.hash, e.created_at));
    let mut filter = ClaimFilter::with_capacity(entries.len());
    let newest = entries.iter().map(|e| e.created_at).max().unwrap_or(0);
    let mut insert = conn.prepare_cached(
        "INSERT INTO idempotency_runs (run, first_hash, entries) VALUES (?1, ?2, ?3)",
    )?;
    let mut start = 0;
    while start < entries.len() {
        let mut end = (start + CHUNK).min(entries.len());
        while end < entries.len() && entries[end].hash == entries[end - 1].hash {
            end += 1;
        }
        let mut blob = Vec::with_capacity((end - start) * ENTRY);
        for entry in &entries[start..end] {
            filter.insert(entry.hash as u64);
            entry.write(&mut blob);
        }
        insert.execute(params![run, entries[start].hash, blob])?;
        start = end;
    }
    conn.execute(
        "INSERT INTO idempotency_run_info (run, newest, watermark, claims, filter) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            run,
            newest,
            watermark,
            entries.len() as i64,
            filter.to_bytes()
        ],
    )?;
    Ok(Run {
        id: run,
        newest,
        claims: entries.len(),
        filter: Some(filter),
    })
}

fn read_run(conn: &Connection, run: i64) -> rusqlite::Result<Vec<Entry>> {
    let mut select = conn.prepare_cached("SELECT entries FROM idempotency_runs WHERE run = ?1")?;
    let mut rows = select.query([run])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let blob: Vec<u8> = row.get(0)?;
        out.extend(entries_of(&blob));
    }
    Ok(out)
}

fn delete_run(conn: &Connection, run: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM idempotency_runs WHERE run = ?1", [run])?;
    conn.execute("DELETE FROM idempotency_run_info WHERE run = ?1", [run])?;
    Ok(())
}

/// The entries of run `run` with this hash (all in one blob).
fn run_entries(conn: &Connection, run: i64, hash: i64) -> rusqlite::Result<Vec<Entry>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT entries FROM idempotency_runs WHERE run = ?1 AND first_hash <= ?2 \
             ORDER BY first_hash DESC LIMIT 1",
        )?
        .query_row(params![run, hash], |r| r.get(0))
        .optional()?;
    Ok(blob
        .as_deref()
        .map(|b| entries_of(b).filter(|e| e.hash == hash).collect())
        .unwrap_or_default())
}

/// The entry's event id if that event is stored with this project and key
/// (a hash match alone could be another key, chosen to collide).
fn event_holds(
    conn: &Connection,
    entry: &Entry,
    key_of: &KeyOf,
) -> rusqlite::Result<Option<String>> {
    let id = uuid::Uuid::from_bytes(entry.event).to_string();
    let found: Option<Option<String>> = conn
        .prepare_cached("SELECT idempotency_key FROM events WHERE project_id = ?1 AND id = ?2")?
        .query_row(params![key_of.0, id], |r| r.get(0))
        .optional()?;
    Ok(found
        .filter(|key: &Option<String>| key.as_deref() == Some(key_of.1.as_str()))
        .map(|_| id))
}

/// How far before a run is written an event id may have been made and its
/// event not yet committed: ids are made just before their transaction
/// (the event writer makes them holding the write lock), which waits at
/// most the 5 s busy timeout.
const ID_MARGIN_MS: i64 = 10_000;

/// The watermark of a run written now: claims of events whose id time is at
/// or after it are read back from `events` at a reload. The wall clock, as
/// event ids (`new_id`) take it, not the requests' clock.
fn watermark_now() -> i64 {
    use keyflow_core::Clock;
    keyflow_core::SystemClock.now_ms() - ID_MARGIN_MS
}

/// The smallest UUIDv7 text of millisecond `ms` (its first 48 bits), as a
/// bound on `events.id`.
fn first_id_at(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// `event_idempotency` still holds claims from before migration 0024.
fn legacy_rows(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM event_idempotency)")?
        .query_row([], |r| r.get(0))
}

fn generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM keyflow_generations WHERE name = 'claims'")?
        .query_row([], |r| r.get(0))
}

fn bump_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "UPDATE keyflow_generations SET value = value + 1 WHERE name = 'claims' RETURNING value",
    )?
    .query_row([], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = IDEMPOTENCY_WINDOW_MS;

    fn database(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn
    }

    fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = database(&dir.path().join("claims.db"));
        for migration in super::super::MIGRATIONS {
            conn.execute_batch(migration.sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO workspaces VALUES ('w1', 'w', 'pro', 0); \
             INSERT INTO projects VALUES ('p1', 'w1', 'p', 'live', 0);",
        )
        .unwrap();
        (dir, conn)
    }

    /// What an event with a key got: stored (its new id) or a duplicate
    /// (the first event's id).
    #[derive(Debug, PartialEq)]
    enum Got {
        Stored(String),
        Duplicate(String),
    }

    /// One writer batch in project p1 at `now`: claims each key, stores an
    /// event for each key it got (as the writer does), commits, writes a run
    /// if due.
    fn batch(conn: &mut Connection, claims: &mut Claims, now: i64, keys: &[&str]) -> Vec<Got> {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        claims.check_generation(conn).unwrap();
        let mut got = Vec::new();
        for key in keys {
            let id = crate::new_id();
            match claims.claim(conn, "p1", key, &id, now).unwrap() {
                Some(first) => got.push(Got::Duplicate(first)),
                None => {
                    conn.execute(
                        "INSERT INTO events (id, project_id, name, properties, timestamp, \
                         received_at, idempotency_key) VALUES (?1, 'p1', 'e', '{}', ?2, ?2, ?3)",
                        params![id, now, key],
                    )
                    .unwrap();
                    got.push(Got::Stored(id));
                }
            }
        }
        claims.before_commit(conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        claims.committed();
        claims.move_if_due(conn, now);
        got
    }

    fn stored(got: &Got) -> &str {
        match got {
            Got::Stored(id) => id,
            Got::Duplicate(id) => panic!("a duplicate of {id}"),
        }
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn claims_hold_in_runs_after_merges_and_a_restart() {
        let (_dir, mut conn) = migrated();
        let mut claims = Claims::with_move_at(10);
        let mut first = HashMap::new();
        for round in 0..25 {
            let keys: Vec<String> = (0..10).map(|i| format!("k{round}-{i}")).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            for (key, got) in keys.iter().zip(batch(&mut conn, &mut claims, 1_000, &keys)) {
                first.insert(key.to_string(), stored(&got).to_string());
            }
        }
        // 25 runs of 10, merged four at a time: runs of 40 merge into 160s.
        let runs = count(
            &conn,
            "SELECT count(*) FROM idempotency_run_info WHERE run > 0",
        );
        assert!(runs < 10, "{runs} runs");
        assert_eq!(
            count(&conn, "SELECT sum(claims) FROM idempotency_run_info"),
            250
        );
        // Every key answers with its first event, in this writer and in a
        // new one (a restart); a new key is stored, and its second event in
        // the same batch is the first's duplicate.
        for mut writer in [claims, Claims::with_move_at(10)] {
            let some = ["k0-0", "k7-3", "k24-9", "fresh", "fresh"];
            let got = batch(&mut conn, &mut writer, 2_000, &some);
            for (key, got) in some[..3].iter().zip(&got) {
                assert_eq!(got, &Got::Duplicate(first[*key].clone()), "{key}");
            }
            assert_eq!(got[4], Got::Duplicate(stored(&got[3]).to_string()));
            conn.execute("DELETE FROM events WHERE idempotency_key = 'fresh'", [])
                .unwrap();
            writer.forget_all();
        }
    }

    /// Runs are written at `move_at` claims or a little more (a batch
    /// passes the mark): they merge all the same, and runs stay few.
    #[test]
    fn runs_a_little_over_the_mark_merge_too() {
        let (_dir, mut conn) = migrated();
        let mut claims = Claims::with_move_at(10);
        for round in 0..60 {
            let keys: Vec<String> = (0..7).map(|i| format!("k{round}-{i}")).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            batch(&mut conn, &mut claims, 1_000, &keys);
        }
        // 30 runs of 14 written, merged four at a time into runs of about
        // 4 × 10 (the empty run 0 in the first merge), which stay: without
        // merging there would be 30.
        let runs = count(&conn, "SELECT count(*) FROM idempotency_run_info");
        assert!(runs <= 11, "{runs} runs");
        assert_eq!(
            count(&conn, "SELECT sum(claims) FROM idempotency_run_info"),
            420
        );
        let largest = count(&conn, "SELECT max(claims) FROM idempotency_run_info");
        assert!((40..=4 * 14).contains(&largest), "{largest}");
        let got = batch(&mut conn, &mut claims, 1_000, &["k0-0", "k59-6"]);
        assert!(
            matches!(got[..], [Got::Duplicate(_), Got::Duplicate(_)]),
            "{got:?}"
        );
    }

    #[test]
    fn expired_claims_are_taken_over_and_their_runs_dropped() {
        let (_dir, mut conn) = migrated();
        let mut claims = Claims::with_move_at(2);
        let a = batch(&mut conn, &mut claims, 1_000, &["a", "b"]);
        let a = stored(&a[0]).to_string();
        let runs = |conn: &Connection| count(conn, "SELECT count(*) FROM idempotency_run_info");
        assert_eq!(runs(&conn), 2, "migration 0024's empty run 0 and the first");
        // Within the window: held. Past it: taken over by a new event.
        assert_eq!(
            batch(&mut conn, &mut claims, 1_000 + DAY, &["a"]),
            vec![Got::Duplicate(a.clone())]
        );
        let later = 1_001 + DAY;
        let taken = batch(&mut conn, &mut claims, later, &["a", "c"]);
        let new_a = stored(&taken[0]).to_string();
        assert_ne!(new_a, a);
        // Runs are dropped once their newest claim is past the window and a
        // margin (a queued job may carry an older time).
        assert_eq!(runs(&conn), 3);
        let much_later = later + EXPIRY_MARGIN_MS;
        let got = batch(&mut conn, &mut claims, much_later, &["a", "b", "x"]);
        assert_eq!(got[0], Got::Duplicate(new_a.clone()));
        let b = stored(&got[1]).to_string();
        assert_eq!(runs(&conn), 2, "runs 0 and 1 dropped, the last two kept");
        // A new writer agrees.
        let mut fresh = Claims::with_move_at(2);
        let got = batch(&mut conn, &mut fresh, much_later, &["a", "b", "c"]);
        assert_eq!(got[0], Got::Duplicate(new_a));
        assert_eq!(got[1], Got::Duplicate(b));
        assert_eq!(got[2], Got::Duplicate(stored(&taken[1]).to_string()));
    }

    #[test]
    fn rolled_back_claims_are_not_kept() {
        let (_dir, mut conn) = migrated();
        let mut claims = Claims::with_move_at(100);
        // A job refused inside its savepoint: its claim is undone.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        claims.check_generation(&conn).unwrap();
        let mark = claims.mark();
        let id = crate::new_id();
        assert_eq!(claims.claim(&conn, "p1", "k", &id, 1_000).unwrap(), None);
        claims.rolled_back_to(mark);
        assert_eq!(claims.claim(&conn, "p1", "k", &id, 1_000).unwrap(), None);
        claims.rolled_back_to(mark);
        conn.execute_batch("COMMIT").unwrap();
        claims.committed();
        // A whole batch rolled back: nothing of it either.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        claims.check_generation(&conn).unwrap();
        assert_eq!(claims.claim(&conn, "p1", "m", &id, 1_000).unwrap(), None);
        conn.execute_batch("ROLLBACK").unwrap();
        claims.rolled_back();
        let got = batch(&mut conn, &mut claims, 2_000, &["k", "m"]);
        stored(&got[0]);
        stored(&got[1]);
    }

    /// A second server on the same file (another process) claims between
    /// this writer's batches: its claims are seen, in memory there and after
    /// it wrote them as a run.
    #[test]
    fn writers_on_one_file_see_each_others_claims() {
        let (dir, mut here) = migrated();
        let mut there = database(&dir.path().join("claims.db"));
        let mut ours = Claims::with_move_at(3);
        let mut theirs = Claims::with_move_at(3);
        let a = batch(&mut here, &mut ours, 1_000, &["a"]);
        let a = stored(&a[0]).to_string();
        let got = batch(&mut there, &mut theirs, 1_000, &["a", "b"]);
        assert_eq!(got[0], Got::Duplicate(a.clone()));
        let b = stored(&got[1]).to_string();
        let got = batch(&mut here, &mut ours, 1_000, &["b", "c"]);
        assert_eq!(got[0], Got::Duplicate(b.clone()));
        let c = stored(&got[1]).to_string();
        // `here` wrote a, b, c as a run; `there` finds them all.
        assert_eq!(
            count(
                &here,
                "SELECT count(*) FROM idempotency_run_info WHERE run > 0"
            ),
            1
        );
        let got = batch(&mut there, &mut theirs, 1_000, &["a", "b", "c", "d"]);
        assert_eq!(
            got[..3],
            [Got::Duplicate(a), Got::Duplicate(b), Got::Duplicate(c)]
        );
        stored(&got[3]);
    }

    /// A run's entry is only a hash and an event id: a key with the same
    /// hash (an attacker's, made to collide) is not a duplicate unless the
    /// event named has that very key in that very project.
    #[test]
    fn a_hash_alone_never_makes_a_duplicate() {
        let (_dir, mut conn) = migrated();
        let mut claims = Claims::with_move_at(1);
        let got = batch(&mut conn, &mut claims, 1_000, &["real"]);
        let real = stored(&got[0]).to_string();
        // Forge the run's entry for another key: its hash, the same event.
        let forged = Entry {
            hash: claims.hash_of("p1", "forged"),
            created_at: 1_000,
            event: *uuid::Uuid::parse_str(&real).unwrap().as_bytes(),
        };
        let mut blob = Vec::new();
        forged.write(&mut blob);
        conn.execute(
            "INSERT INTO idempotency_runs (run, first_hash, entries) VALUES (1, ?1, ?2)",
            params![forged.hash, blob],
        )
        .unwrap();
        conn.execute(
            "UPDATE idempotency_run_info SET filter = NULL WHERE run = 1",
            [],
        )
        .unwrap();
        let mut fresh = Claims::with_move_at(100);
        let got = batch(&mut conn, &mut fresh, 1_000, &["forged", "real"]);
        stored(&got[0]);
        assert_eq!(got[1], Got::Duplicate(real));
    }

    /// Claims made before migration 0024 stay in `event_idempotency`: found
    /// while they count, deleted once they expired.
    #[test]
    fn claims_from_before_the_runs_are_found_until_they_expire() {
        let (_dir, mut conn) = migrated();
        conn.execute(
            "INSERT INTO event_idempotency (project_id, key, event_id, created_at) \
             VALUES ('p1', 'old', 'e0', 500)",
            [],
        )
        .unwrap();
        let mut claims = Claims::with_move_at(2);
        assert_eq!(
            batch(&mut conn, &mut claims, 1_000, &["old"]),
            vec![Got::Duplicate("e0".into())]
        );
        let later = 501 + DAY + EXPIRY_MARGIN_MS;
        let got = batch(&mut conn, &mut claims, later, &["old", "x"]);
        let old = stored(&got[0]).to_string();
        assert_eq!(count(&conn, "SELECT count(*) FROM event_idempotency"), 0);
        assert_eq!(
            batch(&mut conn, &mut claims, later, &["old"]),
            vec![Got::Duplicate(old)]
        );
    }
}

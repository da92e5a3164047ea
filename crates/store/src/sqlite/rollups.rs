//! The Metrics API's roll-ups on the writer's own connection (see
//! [`crate::areas::metrics`] for the tables). Prepared statements with bound
//! values rather than the JSON parameters of the sqlx paths: parsing JSON in
//! SQLite cost more than the event INSERT itself (docs/benchmarks.md).
//!
//! Most events come from contacts already active that day, so the writer
//! remembers which presences exist (a row of `contact_days` is never
//! deleted, so once committed it stays true) and skips their statements.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;

use rusqlite::Connection;

use crate::areas::metrics::{DAY_MS, HOUR_MS, bucket_start};
use crate::columns::EventRow;

const ADD_HOURLY: &str = "INSERT INTO event_counts_hourly (project_id, hour, name, slot, total) \
     VALUES (?1, ?2, ?3, 0, ?4) \
     ON CONFLICT (project_id, hour, name, slot) DO UPDATE SET total = total + excluded.total";
const ADD_PRESENCE: &str = "INSERT INTO contact_days (project_id, day, name, contact_id) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
const ADD_DAILY: &str = "INSERT INTO unique_contacts_daily (project_id, day, name, slot, total) \
     VALUES (?1, ?2, ?3, 0, ?4) \
     ON CONFLICT (project_id, day, name, slot) DO UPDATE SET total = total + excluded.total";

/// Presences known to be stored: at most this many, then forgotten at once.
const MAX_KNOWN: usize = 500_000;

/// (project, day, name, contact) presences known to exist, as 128-bit
/// hashes (a collision, about 2^-90 at the bound, would skip one count).
pub(crate) struct Presences {
    known: HashSet<u128>,
    /// Written by the open transaction: known once it commits.
    pending: HashSet<u128>,
    hashers: [std::hash::RandomState; 2],
}

impl Default for Presences {
    fn default() -> Self {
        Self {
            known: HashSet::new(),
            pending: HashSet::new(),
            hashers: [std::hash::RandomState::new(), std::hash::RandomState::new()],
        }
    }
}

impl Presences {
    fn key(&self, presence: (&str, i64, &str, &str)) -> u128 {
        let [a, b] = &self.hashers;
        (u128::from(a.hash_one(presence)) << 64) | u128::from(b.hash_one(presence))
    }

    /// The open transaction committed.
    pub(crate) fn committed(&mut self) {
        if self.known.len() + self.pending.len() > MAX_KNOWN {
            self.known.clear();
        }
        self.known.extend(self.pending.drain());
    }

    /// The open transaction was rolled back: what it wrote is not there.
    pub(crate) fn rolled_back(&mut self) {
        self.pending.clear();
    }

    pub(crate) fn forget_all(&mut self) {
        self.known.clear();
        self.pending.clear();
    }
}

/// Adds `rows` to the roll-ups, inside the caller's transaction.
pub(crate) fn write(
    conn: &Connection,
    presences: &mut Presences,
    rows: &[&EventRow],
) -> rusqlite::Result<()> {
    let mut hours: BTreeMap<(&str, i64, &str), i64> = BTreeMap::new();
    let mut days: BTreeMap<(&str, i64, &str), i64> = BTreeMap::new();
    let mut add_presence = None;
    for r in rows {
        let hour = bucket_start(r.timestamp, HOUR_MS);
        *hours.entry((&r.project_id, hour, &r.name)).or_default() += 1;
        let Some(contact) = r.contact_id.as_deref() else {
            continue;
        };
        let day = bucket_start(r.timestamp, DAY_MS);
        for name in [r.name.as_str(), ""] {
            let key = presences.key((&r.project_id, day, name, contact));
            if presences.known.contains(&key) || presences.pending.contains(&key) {
                continue;
            }
            let statement = match &mut add_presence {
                Some(statement) => statement,
                empty @ None => empty.insert(conn.prepare_cached(ADD_PRESENCE)?),
            };
            if statement.execute((&r.project_id, day, name, contact))? == 1 {
                *days.entry((&r.project_id, day, name)).or_default() += 1;
            }
            presences.pending.insert(key);
        }
    }
    if !hours.is_empty() {
        let mut add = conn.prepare_cached(ADD_HOURLY)?;
        for ((project, hour, name), n) in hours {
            add.execute((project, hour, name, n))?;
        }
    }
    if !days.is_empty() {
        let mut add = conn.prepare_cached(ADD_DAILY)?;
        for ((project, day, name), n) in days {
            add.execute((project, day, name, n))?;
        }
    }
    Ok(())
}

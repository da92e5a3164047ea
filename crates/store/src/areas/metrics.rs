//! The Metrics API's data (SPEC §4): the roll-ups every ingest path writes
//! in the transaction of its events, and the predefined metrics read from
//! them (or, for `contacts.created`, from the contacts' creation times).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;

use crate::backend::{Backend, Db, Run, WriteTx};
use crate::columns::EventRow;
use crate::{StoreError, StoreResult};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The start of the bucket of `width` holding `t` (floor: `t` may precede 1970).
pub fn bucket_start(t: UnixMillis, width: i64) -> UnixMillis {
    t - t.rem_euclid(width)
}

/// A time range cut into equal buckets: `[from, to)`, both on bucket edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub from: UnixMillis,
    pub to: UnixMillis,
    /// `HOUR_MS` or `DAY_MS`.
    pub width: i64,
}

impl Buckets {
    pub fn starts(self) -> impl Iterator<Item = UnixMillis> {
        (0..)
            .map(move |i| self.from + i * self.width)
            .take_while(move |t| *t < self.to)
    }
}

/// What a set of stored event rows adds to the roll-ups, as the two JSON
/// parameters of the roll-up statements: hourly counts
/// `[[project, hour, name, n], …]` and presences
/// `[[project, day, name or "", contact], …]`, each sorted (so concurrent
/// PostgreSQL writers lock rows in one order) and without repeats.
pub(crate) struct RollUps {
    pub hours: String,
    pub presence: String,
}

impl RollUps {
    /// `None` when there is nothing to count.
    pub(crate) fn of<R: Borrow<EventRow>>(rows: &[R]) -> StoreResult<Option<Self>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let mut hours: BTreeMap<(&str, i64, &str), i64> = BTreeMap::new();
        let mut presence: BTreeSet<(&str, i64, &str, &str)> = BTreeSet::new();
        for row in rows {
            let r = row.borrow();
            let hour = bucket_start(r.timestamp, HOUR_MS);
            *hours.entry((&r.project_id, hour, &r.name)).or_default() += 1;
            if let Some(contact) = &r.contact_id {
                let day = bucket_start(r.timestamp, DAY_MS);
                presence.insert((&r.project_id, day, &r.name, contact));
                presence.insert((&r.project_id, day, "", contact));
            }
        }
        let hours: Vec<_> = hours
            .into_iter()
            .map(|((p, h, n), t)| (p, h, n, t))
            .collect();
        let encode = |e: serde_json::Error| StoreError::Corrupt(format!("roll-ups: {e}"));
        Ok(Some(Self {
            hours: serde_json::to_string(&hours).map_err(encode)?,
            presence: serde_json::to_string(&presence).map_err(encode)?,
        }))
    }
}

/// SQLite's roll-up statements, each with `?1` = hours and `?2` = presence
/// ([`RollUps`]). A presence is counted before it is inserted, and only if
/// it is new: exact, since the writer holds the write lock.
pub(crate) const SQLITE_ROLLUPS: [&str; 3] = [
    "INSERT INTO event_counts_hourly (project_id, hour, name, slot, total) \
     SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, 0, e.value ->> 3 \
     FROM json_each(?1) AS e WHERE true \
     ON CONFLICT (project_id, hour, name, slot) DO UPDATE SET total = total + excluded.total",
    "INSERT INTO unique_contacts_daily (project_id, day, name, slot, total) \
     SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, 0, count(*) \
     FROM json_each(?2) AS e WHERE NOT EXISTS (SELECT 1 FROM contact_days AS c \
     WHERE c.project_id = e.value ->> 0 AND c.day = e.value ->> 1 \
     AND c.name = e.value ->> 2 AND c.contact_id = e.value ->> 3) \
     GROUP BY 1, 2, 3 \
     ON CONFLICT (project_id, day, name, slot) DO UPDATE SET total = total + excluded.total",
    "INSERT INTO contact_days (project_id, day, name, contact_id) \
     SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3 \
     FROM json_each(?2) AS e WHERE true ON CONFLICT DO NOTHING",
];

/// PostgreSQL's roll-ups as data-modifying CTEs that lead an event INSERT,
/// so one statement stores events and counts atomically (no transaction
/// needed for a single chunk). `hours` and `presence` are the placeholder
/// numbers of the two [`RollUps`] parameters. Concurrent writers use the
/// slot of their connection, so they rarely wait on one another's counters.
pub(crate) fn postgres_rollups_prefix(hours: usize, presence: usize) -> String {
    format!(
        "WITH hours AS (INSERT INTO event_counts_hourly (project_id, hour, name, slot, total) \
         SELECT e.value ->> 0, (e.value ->> 1)::bigint, e.value ->> 2, pg_backend_pid() % 16, \
         (e.value ->> 3)::bigint FROM jsonb_array_elements(${hours}::jsonb) AS e(value) \
         ON CONFLICT (project_id, hour, name, slot) DO UPDATE \
         SET total = event_counts_hourly.total + excluded.total), \
         fresh AS (INSERT INTO contact_days (project_id, day, name, contact_id) \
         SELECT e.value ->> 0, (e.value ->> 1)::bigint, e.value ->> 2, e.value ->> 3 \
         FROM jsonb_array_elements(${presence}::jsonb) AS e(value) \
         ON CONFLICT DO NOTHING RETURNING project_id, day, name), \
         uniques AS (INSERT INTO unique_contacts_daily (project_id, day, name, slot, total) \
         SELECT project_id, day, name, pg_backend_pid() % 16, count(*) FROM fresh \
         GROUP BY project_id, day, name ORDER BY project_id, day, name \
         ON CONFLICT (project_id, day, name, slot) DO UPDATE \
         SET total = unique_contacts_daily.total + excluded.total) "
    )
}

/// One bucket of a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub t: UnixMillis,
    pub value: i64,
}

/// One event name's count in a bucket (`events.top`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPoint {
    pub t: UnixMillis,
    pub name: String,
    pub value: i64,
}

/// How many names `events.top` lists per bucket.
pub const TOP_EVENTS: usize = 10;

#[async_trait]
pub trait MetricsStore: Send + Sync {
    /// `events.count`: events per bucket, of one name or all.
    async fn event_counts(
        &self,
        project_id: &str,
        buckets: Buckets,
        name: Option<&str>,
    ) -> StoreResult<Vec<Point>>;
    /// `events.unique_contacts`: distinct contacts per day with an event (of
    /// one name, or any). Daily buckets only.
    async fn unique_contacts(
        &self,
        project_id: &str,
        buckets: Buckets,
        name: Option<&str>,
    ) -> StoreResult<Vec<Point>>;
    /// `contacts.created`: contacts created per bucket.
    async fn contacts_created(&self, project_id: &str, buckets: Buckets)
    -> StoreResult<Vec<Point>>;
    /// `events.top`: the [`TOP_EVENTS`] most frequent names of each bucket,
    /// most frequent first.
    async fn top_events(&self, project_id: &str, buckets: Buckets) -> StoreResult<Vec<NamedPoint>>;
    /// The `limit` most frequent event names of the whole range, with their
    /// counts, most frequent first (the dashboard's table).
    async fn event_totals(
        &self,
        project_id: &str,
        buckets: Buckets,
        limit: u32,
    ) -> StoreResult<Vec<(String, i64)>>;
    /// Folds the slots of buckets that ended before `now` into slot 0, a
    /// bounded number of rows per call; returns how many (bucket, name)
    /// rows received folded counts.
    /// Readers add slots up, so a series over closed buckets reads one row
    /// per bucket and name instead of up to 16 (PostgreSQL; SQLite writes
    /// slot 0 only, so there is nothing to fold).
    async fn compact_rollups(&self, now: UnixMillis) -> StoreResult<u64>;
}

/// Rows folded per table per [`MetricsStore::compact_rollups`] call.
const COMPACT_BATCH: i64 = 10_000;

/// Folds one slotted table's rows of buckets before `$1` into slot 0.
/// Rows are locked in key order, the order writers take them in (their
/// roll-ups are sorted), so folding never deadlocks with ingestion.
fn compact_sql(table: &str, bucket: &str) -> String {
    format!(
        "WITH doomed AS (SELECT project_id, {bucket}, name, slot FROM {table} \
         WHERE slot <> 0 AND {bucket} < $1 ORDER BY project_id, {bucket}, name, slot \
         LIMIT $2 FOR UPDATE), \
         moved AS (DELETE FROM {table} AS t USING doomed AS d \
         WHERE t.project_id = d.project_id AND t.{bucket} = d.{bucket} AND t.name = d.name \
         AND t.slot = d.slot RETURNING t.project_id, t.{bucket}, t.name, t.total) \
         INSERT INTO {table} (project_id, {bucket}, name, slot, total) \
         SELECT project_id, {bucket}, name, 0, sum(total) FROM moved \
         GROUP BY project_id, {bucket}, name ORDER BY project_id, {bucket}, name \
         ON CONFLICT (project_id, {bucket}, name, slot) DO UPDATE \
         SET total = {table}.total + excluded.total"
    )
}

#[async_trait]
impl<B: Backend> MetricsStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn event_counts(
        &self,
        project_id: &str,
        buckets: Buckets,
        name: Option<&str>,
    ) -> StoreResult<Vec<Point>> {
        let by_name = if name.is_some() { " AND name = $4" } else { "" };
        let sql = format!(
            "SELECT hour, CAST(sum(total) AS BIGINT) FROM event_counts_hourly WHERE project_id = $1 \
             AND hour >= $2 AND hour < $3{by_name} GROUP BY hour"
        );
        let query = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(buckets.from)
            .arg(buckets.to);
        let query = match name {
            Some(name) => query.arg(name),
            None => query,
        };
        let mut conn = self.pool().acquire().await?;
        let hours: Vec<(i64, i64)> = query.all(&mut conn).await?;
        Ok(series(buckets, hours))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn unique_contacts(
        &self,
        project_id: &str,
        buckets: Buckets,
        name: Option<&str>,
    ) -> StoreResult<Vec<Point>> {
        let mut conn = self.pool().acquire().await?;
        let days: Vec<(i64, i64)> = sqlx::query::<B::Db>(
            "SELECT day, CAST(sum(total) AS BIGINT) FROM unique_contacts_daily WHERE project_id = $1 \
             AND day >= $2 AND day < $3 AND name = $4 GROUP BY day",
        )
        .arg(project_id)
        .arg(buckets.from)
        .arg(buckets.to)
        .arg(name.unwrap_or(""))
        .all(&mut conn)
        .await?;
        Ok(series(buckets, days))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn contacts_created(
        &self,
        project_id: &str,
        buckets: Buckets,
    ) -> StoreResult<Vec<Point>> {
        let mut conn = self.pool().acquire().await?;
        let counts: Vec<(i64, i64)> = sqlx::query::<B::Db>(
            "SELECT created_at - ((created_at % $4) + $4) % $4 AS bucket, count(*) \
             FROM contacts WHERE project_id = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY 1",
        )
        .arg(project_id)
        .arg(buckets.from)
        .arg(buckets.to)
        .arg(buckets.width)
        .all(&mut conn)
        .await?;
        Ok(series(buckets, counts))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn top_events(&self, project_id: &str, buckets: Buckets) -> StoreResult<Vec<NamedPoint>> {
        let mut conn = self.pool().acquire().await?;
        let hours: Vec<(i64, String, i64)> = sqlx::query::<B::Db>(
            "SELECT hour, name, CAST(sum(total) AS BIGINT) FROM event_counts_hourly WHERE project_id = $1 \
             AND hour >= $2 AND hour < $3 GROUP BY hour, name",
        )
        .arg(project_id)
        .arg(buckets.from)
        .arg(buckets.to)
        .all(&mut conn)
        .await?;
        Ok(top(buckets, hours))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact_rollups(&self, now: UnixMillis) -> StoreResult<u64> {
        if B::Db::NAME == "sqlite" {
            return Ok(0);
        }
        let mut folded = 0;
        let tables = [
            ("event_counts_hourly", "hour", bucket_start(now, HOUR_MS)),
            ("unique_contacts_daily", "day", bucket_start(now, DAY_MS)),
        ];
        for (table, bucket, before) in tables {
            let mut tx = self.begin_write().await?;
            folded += sqlx::query::<B::Db>(sqlx::AssertSqlSafe(compact_sql(table, bucket)))
                .arg(before)
                .arg(COMPACT_BATCH)
                .run(&mut tx)
                .await?;
            tx.commit().await?;
        }
        Ok(folded)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn event_totals(
        &self,
        project_id: &str,
        buckets: Buckets,
        limit: u32,
    ) -> StoreResult<Vec<(String, i64)>> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query::<B::Db>(
            "SELECT name, CAST(sum(total) AS BIGINT) AS n FROM event_counts_hourly \
             WHERE project_id = $1 AND hour >= $2 AND hour < $3 \
             GROUP BY name ORDER BY n DESC, name LIMIT $4",
        )
        .arg(project_id)
        .arg(buckets.from)
        .arg(buckets.to)
        .arg(i64::from(limit))
        .all(&mut conn)
        .await
    }
}

/// Adds `counts` (keyed by any time inside a bucket) into every bucket of
/// `buckets`, zeros included.
fn series(buckets: Buckets, counts: Vec<(i64, i64)>) -> Vec<Point> {
    let mut totals: BTreeMap<i64, i64> = buckets.starts().map(|t| (t, 0)).collect();
    for (t, n) in counts {
        if let Some(total) = totals.get_mut(&bucket_start(t, buckets.width)) {
            *total += n;
        }
    }
    totals
        .into_iter()
        .map(|(t, value)| Point { t, value })
        .collect()
}

fn top(buckets: Buckets, hours: Vec<(i64, String, i64)>) -> Vec<NamedPoint> {
    let mut per_bucket: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for (hour, name, n) in hours {
        *per_bucket
            .entry(bucket_start(hour, buckets.width))
            .or_default()
            .entry(name)
            .or_default() += n;
    }
    let mut out = Vec::new();
    for (t, names) in per_bucket {
        let mut names: Vec<(String, i64)> = names.into_iter().collect();
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.extend(
            names
                .into_iter()
                .take(TOP_EVENTS)
                .map(|(name, value)| NamedPoint { t, name, value }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_before_1970_too() {
        assert_eq!(bucket_start(0, HOUR_MS), 0);
        assert_eq!(bucket_start(HOUR_MS - 1, HOUR_MS), 0);
        assert_eq!(bucket_start(-1, HOUR_MS), -HOUR_MS);
        assert_eq!(bucket_start(-DAY_MS, DAY_MS), -DAY_MS);
    }

    #[test]
    fn series_fill_every_bucket_and_fold_hours_into_days() {
        let buckets = Buckets {
            from: 0,
            to: 3 * DAY_MS,
            width: DAY_MS,
        };
        let points = series(
            buckets,
            vec![(HOUR_MS, 2), (5 * HOUR_MS, 3), (2 * DAY_MS, 1)],
        );
        let values: Vec<i64> = points.iter().map(|p| p.value).collect();
        assert_eq!(values, [5, 0, 1]);
        assert_eq!(points[2].t, 2 * DAY_MS);
    }

    #[test]
    fn top_keeps_the_most_frequent_of_each_bucket() {
        let buckets = Buckets {
            from: 0,
            to: DAY_MS,
            width: DAY_MS,
        };
        let mut hours: Vec<(i64, String, i64)> =
            (0..12).map(|i| (0, format!("e{i:02}"), i)).collect();
        hours.push((HOUR_MS, "e00".into(), 100));
        let top = top(buckets, hours);
        assert_eq!(top.len(), TOP_EVENTS);
        assert_eq!((top[0].name.as_str(), top[0].value), ("e00", 100));
        assert_eq!(top[1].name, "e11");
        assert!(top.iter().all(|p| p.name != "e01"));
    }
}

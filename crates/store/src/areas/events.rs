//! Events: ingestion (idempotency keys claimed and contacts resolved or
//! created in the writer's transaction) and filtered listings.

use std::collections::HashMap;

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;
use keyflow_core::contacts::{ContactLookup, email_key};
use keyflow_core::events::{EventIdentity, IDEMPOTENCY_WINDOW_MS, NewEvent};

use super::contacts::find_contact;
use crate::backend::{Backend, Db, Run};
use crate::columns::{EVENT_COLUMNS, EventRow, contact_conflict, page_limit};
use crate::{Event, EventFilter, EventOutcome, Page, StoreError, StoreResult, new_id};

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores events durably (returns after commit), resolving or creating
    /// their contacts and honouring idempotency keys. All or nothing.
    async fn ingest_events(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: UnixMillis,
    ) -> StoreResult<Vec<EventOutcome>>;
    async fn list_events(
        &self,
        project_id: &str,
        filter: &EventFilter,
        page: &Page,
    ) -> StoreResult<Vec<Event>>;
    /// The sizes and durations of this instance's event group commits.
    fn group_commit_stats(&self) -> &crate::ingest_queue::GroupCommitStats;
}

#[async_trait]
impl<B: Backend> EventStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn ingest_events(
        &self,
        project_id: &str,
        events: Vec<NewEvent>,
        now: UnixMillis,
    ) -> StoreResult<Vec<EventOutcome>> {
        self.ingest(project_id, events, now).await
    }

    fn group_commit_stats(&self) -> &crate::ingest_queue::GroupCommitStats {
        B::group_commit_stats(self)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_events(
        &self,
        project_id: &str,
        filter: &EventFilter,
        page: &Page,
    ) -> StoreResult<Vec<Event>> {
        let sqlite = B::Db::NAME == "sqlite";
        let sql = list_events_sql(filter, page.cursor.is_some(), sqlite);
        // PostgreSQL plans a filtered listing for its values (see `find_contact`).
        let mut query = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .persistent(sqlite)
            .arg(project_id);
        // Bound in the order `list_events_sql` numbers them.
        for text in [&filter.contact_id, &filter.name].into_iter().flatten() {
            query = query.arg(text);
        }
        for time in [filter.since, filter.until].into_iter().flatten() {
            query = query.arg(time);
        }
        if let Some(cursor) = &page.cursor {
            query = query.arg(cursor);
        }
        let mut conn = self.pool().acquire().await?;
        let rows: Vec<EventRow> = query.arg(page_limit(page.limit)).all(&mut conn).await?;
        rows.into_iter().map(EventRow::into_model).collect()
    }
}

/// Finds or creates the contact an event names; `None` for anonymous events.
async fn resolve_identity<DB: Db>(
    conn: &mut DB::Connection,
    project_id: &str,
    identity: &EventIdentity,
    field: &str,
    now: UnixMillis,
) -> StoreResult<Option<String>> {
    let (lookup, email, external_id) = match identity {
        EventIdentity::Anonymous => return Ok(None),
        EventIdentity::ContactId(id) => {
            let lookup = ContactLookup::Id(id.clone());
            return match find_contact::<DB>(conn, project_id, &lookup).await? {
                Some(c) => Ok(Some(c.id)),
                None => Err(StoreError::Invalid(keyflow_core::FieldError::new(
                    field,
                    "no contact with this id in this project",
                ))),
            };
        }
        EventIdentity::ExternalId { external_id, email } => (
            ContactLookup::ExternalId(external_id.clone()),
            email.clone(),
            Some(external_id.clone()),
        ),
        EventIdentity::Email(email) => (
            ContactLookup::Email(email.clone()),
            Some(email.clone()),
            None,
        ),
    };
    if let Some(found) = find_contact::<DB>(conn, project_id, &lookup).await? {
        return Ok(Some(found.id));
    }
    // Unknown: create it. ON CONFLICT DO NOTHING absorbs a concurrent
    // creation; the re-read below then finds that one. If the email is taken
    // by a contact with another external id, create without it.
    for with_email in [true, false] {
        let email = if with_email { email.clone() } else { None };
        sqlx::query::<DB>(
            "INSERT INTO contacts (id, project_id, email, email_key, external_id, subscribed, \
             properties, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, '{}', $7, $7) \
             ON CONFLICT DO NOTHING",
        )
        .arg(new_id())
        .arg(project_id)
        .arg(&email)
        .arg(email.as_deref().map(email_key))
        .arg(&external_id)
        .arg(false)
        .arg(now)
        .run(conn)
        .await?;
        if let Some(found) = find_contact::<DB>(conn, project_id, &lookup).await? {
            return Ok(Some(found.id));
        }
    }
    Err(contact_conflict())
}

/// First half of ingesting: claims idempotency keys and resolves (or
/// creates) contacts on `conn` (inside the caller's transaction), and returns
/// the rows still to insert. Writes happen only for idempotency keys and
/// email/external-id identities.
pub(crate) async fn prepare_events<DB: Db>(
    conn: &mut DB::Connection,
    project_id: &str,
    events: &[NewEvent],
    now: UnixMillis,
) -> StoreResult<(Vec<EventOutcome>, Vec<EventRow>)> {
    let mut outcomes = Vec::with_capacity(events.len());
    let mut rows: Vec<EventRow> = Vec::with_capacity(events.len());
    let mut resolved: HashMap<&EventIdentity, Option<String>> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let id = new_id();
        if let Some(key) = &event.idempotency_key {
            let claimed: Option<(String,)> = sqlx::query::<DB>(
                "INSERT INTO event_idempotency (project_id, key, event_id, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (project_id, key) DO UPDATE SET \
                 event_id = excluded.event_id, created_at = excluded.created_at \
                 WHERE event_idempotency.created_at < $5 RETURNING event_id",
            )
            .arg(project_id)
            .arg(key)
            .arg(&id)
            .arg(now)
            .arg(now - IDEMPOTENCY_WINDOW_MS)
            .optional(conn)
            .await?;
            if claimed.is_none() {
                let (first,): (String,) = sqlx::query::<DB>(
                    "SELECT event_id FROM event_idempotency WHERE project_id = $1 AND key = $2",
                )
                .arg(project_id)
                .arg(key)
                .one(conn)
                .await?;
                outcomes.push(EventOutcome {
                    id: first,
                    duplicate: true,
                });
                continue;
            }
        }
        let contact_id = match resolved.get(&event.identity) {
            Some(known) => known.clone(),
            None => {
                let field = format!("events[{i}].contact_id");
                let found =
                    resolve_identity::<DB>(conn, project_id, &event.identity, &field, now).await?;
                resolved.insert(&event.identity, found.clone());
                found
            }
        };
        rows.push(EventRow::new(
            id.clone(),
            project_id,
            event,
            contact_id,
            now,
        ));
        outcomes.push(EventOutcome {
            id,
            duplicate: false,
        });
    }
    Ok((outcomes, rows))
}

/// Rows per multi-row event INSERT on PostgreSQL (9 parameters each). A batch
/// is split greedily into these sizes so only four statement shapes exist and
/// all stay in the prepared-statement cache.
pub(crate) const EVENT_CHUNKS: [usize; 4] = [100, 25, 5, 1];

/// Splits `rows` into slices of the sizes in [`EVENT_CHUNKS`].
pub(crate) fn event_chunks<T>(mut rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    for size in EVENT_CHUNKS {
        while rows.len() >= size {
            let (head, tail) = rows.split_at(size);
            out.push(head);
            rows = tail;
        }
    }
    out
}

/// The multi-row event INSERT with numbered placeholders (PostgreSQL).
pub(crate) fn insert_events_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=9).map(|c| format!("${}", r * 9 + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO events ({EVENT_COLUMNS}) VALUES {}",
        values.join(", ")
    )
}

/// The `list_events` statement with only the filters given, each a plain
/// condition the planner can match to an index (an `$2 IS NULL OR …` form
/// matches none). SQLite plans without statistics and would walk the primary
/// key through every event of the project, so there the index is named.
/// Placeholders are numbered in this order: project, contact, name, since,
/// until, cursor, limit — skipping absent filters.
pub(crate) fn list_events_sql(filter: &EventFilter, after_cursor: bool, sqlite: bool) -> String {
    if sqlite && filter.contact_id.is_some() {
        return sqlite_contact_events_sql(filter, after_cursor);
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events");
    if sqlite && filter.name.is_some() {
        sql.push_str(" INDEXED BY events_name");
    }
    sql.push_str(" WHERE project_id = $1");
    let mut placeholder = 1;
    let conditions = [
        (filter.contact_id.is_some(), "contact_id ="),
        (filter.name.is_some(), "name ="),
        (filter.since.is_some(), "timestamp >="),
        (filter.until.is_some(), "timestamp <"),
        (after_cursor, "id <"),
    ];
    for (present, condition) in conditions {
        if present {
            placeholder += 1;
            sql.push_str(&format!(" AND {condition} ${placeholder}"));
        }
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", placeholder + 1));
    sql
}

/// A contact's events on SQLite, which indexes them in two tables
/// (migration 0018): `event_contacts`, sorted, and `event_contacts_recent`,
/// the latest in event order, not yet moved. Each table gives its newest
/// matching events, at most a page, walked newest first from the cursor;
/// the page is the newest of both. One statement, so one snapshot: a move
/// between the tables is seen whole or not at all.
fn sqlite_contact_events_sql(filter: &EventFilter, after_cursor: bool) -> String {
    let columns = EVENT_COLUMNS
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = String::from(" AND e.contact_id = $2");
    let mut placeholder = 2;
    for (present, condition) in [
        (filter.name.is_some(), "e.name ="),
        (filter.since.is_some(), "e.timestamp >="),
        (filter.until.is_some(), "e.timestamp <"),
        (after_cursor, "k.id <"),
    ] {
        if present {
            placeholder += 1;
            conditions.push_str(&format!(" AND {condition} ${placeholder}"));
        }
    }
    let limit = format!("${}", placeholder + 1);
    let newest = |table: &str| {
        format!(
            "SELECT * FROM (SELECT {columns} FROM {table} k \
             JOIN events e ON e.project_id = k.project_id AND e.id = k.id \
             WHERE k.project_id = $1 AND k.contact_id = $2{conditions} \
             ORDER BY k.id DESC LIMIT {limit})"
        )
    };
    format!(
        "SELECT {EVENT_COLUMNS} FROM ({} UNION ALL {}) ORDER BY id DESC LIMIT {limit}",
        newest("event_contacts"),
        newest("event_contacts_recent")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_chunks_cover_every_row_with_few_shapes() {
        for n in 0..260 {
            let rows: Vec<usize> = (0..n).collect();
            let chunks = event_chunks(&rows);
            let joined: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, rows);
            assert!(chunks.iter().all(|c| EVENT_CHUNKS.contains(&c.len())));
        }
    }
}

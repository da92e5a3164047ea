//! Preparing events that need lookups — idempotency keys to claim, contacts
//! to find or create — on the writer's own connection, inside its open
//! transaction. The same statements as `areas::events::prepare_events`
//! (which serves in-memory databases through sqlx), run in-process: each is
//! a few microseconds here, against a round trip to a sqlx worker thread
//! per statement there.

use std::collections::HashMap;

use keyflow_core::contacts::{ContactLookup, email_key};
use keyflow_core::events::{EventIdentity, IDEMPOTENCY_WINDOW_MS, NewEvent};
use rusqlite::{Connection, OptionalExtension, params};

use crate::columns::{EventRow, contact_conflict, lookup_column};
use crate::{EventOutcome, StoreError, StoreResult, new_id};

/// Claims a key unless an event within the window holds it. No `RETURNING`:
/// SQLite builds a temporary table for it on every run; the number of rows
/// changed says the same (0 when the conflict's `WHERE` kept the old row).
const CLAIM: &str = "INSERT INTO event_idempotency (project_id, key, event_id, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project_id, key) DO UPDATE SET \
     event_id = excluded.event_id, created_at = excluded.created_at \
     WHERE event_idempotency.created_at < ?5";

const FIRST_CLAIM: &str =
    "SELECT event_id FROM event_idempotency WHERE project_id = ?1 AND key = ?2";

const CREATE_CONTACT: &str = "INSERT INTO contacts (id, project_id, email, email_key, \
     external_id, subscribed, properties, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, 0, '{}', ?6, ?6) ON CONFLICT DO NOTHING";

/// Claims idempotency keys and resolves (or creates) contacts for one job;
/// the rows still to insert. A refusal (`Invalid`, `Conflict`) may leave
/// writes behind: the caller runs this in a savepoint.
pub(crate) fn prepare(
    conn: &Connection,
    project_id: &str,
    events: &[NewEvent],
    now: i64,
) -> StoreResult<(Vec<EventOutcome>, Vec<EventRow>)> {
    let mut outcomes = Vec::with_capacity(events.len());
    let mut rows = Vec::with_capacity(events.len());
    let mut resolved: HashMap<&EventIdentity, Option<String>> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let id = new_id();
        if let Some(key) = &event.idempotency_key
            && let Some(first) = claim(conn, project_id, key, &id, now)?
        {
            outcomes.push(EventOutcome {
                id: first,
                duplicate: true,
            });
            continue;
        }
        let contact_id = match resolved.get(&event.identity) {
            Some(known) => known.clone(),
            None => {
                let field = format!("events[{i}].contact_id");
                let found = resolve(conn, project_id, &event.identity, &field, now)?;
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

/// Claims `key` for the event `id`; `Some(first id)` when an event within the
/// idempotency window already holds it.
fn claim(
    conn: &Connection,
    project_id: &str,
    key: &str,
    id: &str,
    now: i64,
) -> StoreResult<Option<String>> {
    let cutoff = now - IDEMPOTENCY_WINDOW_MS;
    let claimed = conn
        .prepare_cached(CLAIM)?
        .execute(params![project_id, key, id, now, cutoff])?;
    if claimed == 1 {
        return Ok(None);
    }
    let first: String = conn
        .prepare_cached(FIRST_CLAIM)?
        .query_row(params![project_id, key], |r| r.get(0))?;
    Ok(Some(first))
}

fn contact_id(
    conn: &Connection,
    project_id: &str,
    lookup: &ContactLookup,
) -> StoreResult<Option<String>> {
    let (column, value) = lookup_column(lookup);
    let sql = format!("SELECT id FROM contacts WHERE project_id = ?1 AND {column} = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![project_id, value], |r| r.get(0))
        .optional()?)
}

/// Finds or creates the contact an event names; `None` for anonymous events.
fn resolve(
    conn: &Connection,
    project_id: &str,
    identity: &EventIdentity,
    field: &str,
    now: i64,
) -> StoreResult<Option<String>> {
    let (lookup, email, external_id) = match identity {
        EventIdentity::Anonymous => return Ok(None),
        EventIdentity::ContactId(id) => {
            let lookup = ContactLookup::Id(id.clone());
            return match contact_id(conn, project_id, &lookup)? {
                Some(found) => Ok(Some(found)),
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
    if let Some(found) = contact_id(conn, project_id, &lookup)? {
        return Ok(Some(found));
    }
    // Unknown: create it. If the email is taken by a contact with another
    // external id, create it without the email.
    for with_email in [true, false] {
        let email = if with_email { email.clone() } else { None };
        let key = email.as_deref().map(email_key);
        conn.prepare_cached(CREATE_CONTACT)?.execute(params![
            new_id(),
            project_id,
            email,
            key,
            external_id,
            now
        ])?;
        if let Some(found) = contact_id(conn, project_id, &lookup)? {
            return Ok(Some(found));
        }
    }
    Err(contact_conflict())
}

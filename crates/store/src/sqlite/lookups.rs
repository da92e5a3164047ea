//! Preparing events that need lookups — idempotency keys to claim
//! ([`super::claims`]), contacts to find or create — on the writer's own connection, inside its open
//! transaction. The same statements as `areas::events::prepare_events`
//! (which serves in-memory databases through sqlx), run in-process: each is
//! a few microseconds here, against a round trip to a sqlx worker thread
//! per statement there.

use std::collections::HashMap;

use keyflow_core::contacts::{ContactLookup, email_key};
use keyflow_core::events::{EventIdentity, NewEvent};
use rusqlite::{Connection, OptionalExtension, params};

use crate::columns::{EventRow, contact_conflict, lookup_column};
use crate::{EventOutcome, StoreError, StoreResult, new_id};

/// Who a contact is, as events name it: (project, column, value) → contact id.
type IdentityKey = (String, &'static str, String);

/// Contact ids the writer has seen committed, so an event for a known user
/// needs no lookup. Kept true by the `contacts` generation every contact
/// write bumps in its transaction (`Backend::contacts_changing`), read at the
/// start of each batch; bounded.
#[derive(Default)]
pub(crate) struct Identities {
    known: HashMap<IdentityKey, String>,
    /// The `contacts` generation `known` was filled under.
    generation: Option<i64>,
    /// Found or created in the batch being prepared: known once it commits.
    pending: Vec<(IdentityKey, String)>,
}

/// Entries kept at most; past that the cache starts over.
const MAX_IDENTITIES: usize = 100_000;

impl Identities {
    pub(crate) fn forget_all(&mut self) {
        self.known.clear();
        self.generation = None;
    }

    /// Forgets everything if a contact was written since the last batch.
    pub(crate) fn check_generation(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let now: i64 = conn
            .prepare_cached("SELECT value FROM keyflow_generations WHERE name = 'contacts'")?
            .query_row([], |r| r.get(0))?;
        if self.generation != Some(now) {
            self.known.clear();
            self.generation = Some(now);
        }
        Ok(())
    }

    /// The batch committed: what it found or created is known from now on.
    pub(crate) fn committed(&mut self) {
        if self.known.len() + self.pending.len() > MAX_IDENTITIES {
            self.known.clear();
        }
        self.known.extend(self.pending.drain(..));
    }

    /// The batch (or a job of it) rolled back: nothing it saw is kept.
    pub(crate) fn rolled_back(&mut self, keep: usize) {
        self.pending.truncate(keep);
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

const CREATE_CONTACT: &str = "INSERT INTO contacts (id, project_id, email, email_key, \
     external_id, subscribed, properties, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, 0, '{}', ?6, ?6) ON CONFLICT DO NOTHING";

/// Claims idempotency keys and resolves (or creates) contacts for one job;
/// the rows still to insert. A refusal (`Invalid`, `Conflict`) may leave
/// writes behind: the caller runs this in a savepoint.
pub(crate) fn prepare(
    conn: &Connection,
    identities: &mut Identities,
    claims: &mut super::claims::Claims,
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
            && let Some(first) = claims.claim(conn, project_id, key, &id, now)?
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
                let found = resolve(conn, identities, project_id, &event.identity, &field, now)?;
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

fn contact_id(
    conn: &Connection,
    identities: &mut Identities,
    project_id: &str,
    lookup: &ContactLookup,
) -> StoreResult<Option<String>> {
    let (column, value) = lookup_column(lookup);
    let key = (project_id.to_string(), column, value);
    if let Some(known) = identities.known.get(&key) {
        return Ok(Some(known.clone()));
    }
    // One statement per column, written out: no SQL text built per lookup.
    let sql = match lookup {
        ContactLookup::Id(_) => "SELECT id FROM contacts WHERE project_id = ?1 AND id = ?2",
        ContactLookup::Email(_) => {
            "SELECT id FROM contacts WHERE project_id = ?1 AND email_key = ?2"
        }
        ContactLookup::ExternalId(_) => {
            "SELECT id FROM contacts WHERE project_id = ?1 AND external_id = ?2"
        }
    };
    let found: Option<String> = conn
        .prepare_cached(sql)?
        .query_row(params![project_id, key.2], |r| r.get(0))
        .optional()?;
    if let Some(id) = &found {
        identities.pending.push((key, id.clone()));
    }
    Ok(found)
}

/// Finds or creates the contact an event names; `None` for anonymous events.
fn resolve(
    conn: &Connection,
    identities: &mut Identities,
    project_id: &str,
    identity: &EventIdentity,
    field: &str,
    now: i64,
) -> StoreResult<Option<String>> {
    let (lookup, email, external_id) = match identity {
        EventIdentity::Anonymous => return Ok(None),
        EventIdentity::ContactId(id) => {
            let lookup = ContactLookup::Id(id.clone());
            return match contact_id(conn, identities, project_id, &lookup)? {
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
    if let Some(found) = contact_id(conn, identities, project_id, &lookup)? {
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
        if let Some(found) = contact_id(conn, identities, project_id, &lookup)? {
            return Ok(Some(found));
        }
    }
    Err(contact_conflict())
}

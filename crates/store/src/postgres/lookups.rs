//! Preparing a group commit's events on PostgreSQL, set-wise: every
//! idempotency key of the group is claimed by one statement, and every
//! contact the group names is found, and if need be created, by a few more
//! (one per kind of identity, then one per creation round), whatever the
//! number of events. Per event, the same work took a round trip per
//! statement (`areas::events::prepare_events`, which in-memory SQLite still
//! uses). The outcome is the one the events would get one after another, in
//! the group's order: a key's first event claims it and later ones are its
//! duplicates; a contact is created once, by its first event.

use std::collections::{HashMap, HashSet};

use keyflow_core::contacts::email_key;
use keyflow_core::events::{EventIdentity, IDEMPOTENCY_WINDOW_MS};

use crate::columns::{EventRow, contact_conflict};
use crate::ingest_queue::IngestJob;
use crate::{EventOutcome, StoreError, StoreResult, new_id};

/// One job's outcomes (in its events' order) and the rows still to insert.
pub(super) type Prepared = (Vec<EventOutcome>, Vec<EventRow>);

/// A key of the group: (project, idempotency key).
type KeyOf<'a> = (&'a str, &'a str);

/// Who an event names, as stored: (project, column, value).
type Identity = (String, &'static str, String);

/// Claims keys and resolves contacts for `jobs` inside the caller's open
/// transaction on `conn`.
pub(super) async fn prepare_jobs(
    conn: &mut sqlx::PgConnection,
    jobs: &[IngestJob],
) -> StoreResult<Vec<Prepared>> {
    let ids: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| job.events.iter().map(|_| new_id()).collect())
        .collect();
    let held = claim_keys(conn, jobs, &ids).await?;

    // Each event's duplicate-of id, or None when it is stored.
    let mut first_of: HashMap<KeyOf, &str> = HashMap::new();
    let mut duplicate_of: Vec<Vec<Option<String>>> = Vec::with_capacity(jobs.len());
    for (job, job_ids) in jobs.iter().zip(&ids) {
        let mut marks = Vec::with_capacity(job.events.len());
        for (event, id) in job.events.iter().zip(job_ids) {
            let mark = match &event.idempotency_key {
                None => None,
                Some(key) => {
                    let key_of = (job.project_id.as_str(), key.as_str());
                    match (held.get(&key_of), first_of.get(&key_of)) {
                        (Some(earlier), _) => Some(earlier.clone()),
                        (None, Some(first)) => Some((*first).to_string()),
                        (None, None) => {
                            first_of.insert(key_of, id);
                            None
                        }
                    }
                }
            };
            marks.push(mark);
        }
        duplicate_of.push(marks);
    }

    let contacts = resolve_contacts(conn, jobs, &duplicate_of).await?;

    let mut prepared = Vec::with_capacity(jobs.len());
    for ((job, job_ids), marks) in jobs.iter().zip(ids).zip(duplicate_of) {
        let mut outcomes = Vec::with_capacity(job.events.len());
        let mut rows = Vec::with_capacity(job.events.len());
        for ((event, id), mark) in job.events.iter().zip(job_ids).zip(marks) {
            if let Some(first) = mark {
                outcomes.push(EventOutcome {
                    id: first,
                    duplicate: true,
                });
                continue;
            }
            let contact_id = identity_of(&job.project_id, &event.identity)
                .and_then(|identity| contacts.get(&identity).cloned());
            rows.push(EventRow::new(
                id.clone(),
                &job.project_id,
                event,
                contact_id,
                job.now,
            ));
            outcomes.push(EventOutcome {
                id,
                duplicate: false,
            });
        }
        prepared.push((outcomes, rows));
    }
    Ok(prepared)
}

/// Claims the first event's id for every key of the group in one statement
/// (sorted, so concurrent groups take the keys' locks in the same order), and
/// returns the keys an earlier event holds, with that event's id.
async fn claim_keys<'a>(
    conn: &mut sqlx::PgConnection,
    jobs: &'a [IngestJob],
    ids: &[Vec<String>],
) -> StoreResult<HashMap<KeyOf<'a>, String>> {
    let mut seen: HashSet<KeyOf> = HashSet::new();
    let mut claims: Vec<(KeyOf, &str, i64)> = Vec::new();
    for (job, job_ids) in jobs.iter().zip(ids) {
        for (event, id) in job.events.iter().zip(job_ids) {
            if let Some(key) = &event.idempotency_key {
                let key_of = (job.project_id.as_str(), key.as_str());
                if seen.insert(key_of) {
                    claims.push((key_of, id, job.now));
                }
            }
        }
    }
    let mut held = HashMap::new();
    if claims.is_empty() {
        return Ok(held);
    }
    claims.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let projects: Vec<&str> = claims.iter().map(|c| c.0.0).collect();
    let keys: Vec<&str> = claims.iter().map(|c| c.0.1).collect();
    let event_ids: Vec<&str> = claims.iter().map(|c| c.1).collect();
    let nows: Vec<i64> = claims.iter().map(|c| c.2).collect();
    // A key older than the window is taken over, as one event at a time does.
    let claimed: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO event_idempotency (project_id, key, event_id, created_at) \
         SELECT p, k, e, t FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
         WITH ORDINALITY AS c(p, k, e, t, o) ORDER BY o \
         ON CONFLICT (project_id, key) DO UPDATE SET event_id = excluded.event_id, \
         created_at = excluded.created_at \
         WHERE event_idempotency.created_at < excluded.created_at - $5 \
         RETURNING project_id, key",
    )
    .bind(&projects)
    .bind(&keys)
    .bind(&event_ids)
    .bind(&nows)
    .bind(IDEMPOTENCY_WINDOW_MS)
    .fetch_all(&mut *conn)
    .await?;
    if claimed.len() == claims.len() {
        return Ok(held);
    }
    let claimed: HashSet<(String, String)> = claimed.into_iter().collect();
    let (projects, keys): (Vec<&str>, Vec<&str>) = claims
        .iter()
        .filter(|c| !claimed.contains(&(c.0.0.to_string(), c.0.1.to_string())))
        .map(|c| c.0)
        .unzip();
    let holders: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT project_id, key, event_id FROM event_idempotency \
         WHERE (project_id, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .persistent(false)
    .bind(&projects)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let by_key: HashMap<(String, String), String> = holders
        .into_iter()
        .map(|(project, key, event)| ((project, key), event))
        .collect();
    for key_of in projects.into_iter().zip(keys) {
        let Some(event) = by_key.get(&(key_of.0.to_string(), key_of.1.to_string())) else {
            return Err(StoreError::Conflict(
                "an idempotency key changed while it was being claimed; send the event again"
                    .into(),
            ));
        };
        held.insert(key_of, event.clone());
    }
    Ok(held)
}

/// The stored identity an event names, `None` for anonymous events.
fn identity_of(project_id: &str, identity: &EventIdentity) -> Option<Identity> {
    let (column, value) = match identity {
        EventIdentity::Anonymous => return None,
        EventIdentity::ContactId(id) => ("id", id.clone()),
        EventIdentity::ExternalId { external_id, .. } => ("external_id", external_id.clone()),
        EventIdentity::Email(email) => ("email_key", email_key(email)),
    };
    Some((project_id.to_string(), column, value))
}

/// A contact to create if no stored one matches: its email and external id.
struct ToCreate {
    identity: Identity,
    email: Option<String>,
    external_id: Option<String>,
    /// The request's time, its `created_at`.
    now: i64,
}

/// Finds the contact of every identity the stored events name, creating the
/// unknown ones by email or external id (in the group's order, so an email
/// goes to the first event that brings it). An unknown contact id is the
/// first such event's field error.
async fn resolve_contacts(
    conn: &mut sqlx::PgConnection,
    jobs: &[IngestJob],
    duplicate_of: &[Vec<Option<String>>],
) -> StoreResult<HashMap<Identity, String>> {
    let mut wanted: Vec<ToCreate> = Vec::new();
    let mut first_field: HashMap<Identity, String> = HashMap::new();
    for (job, marks) in jobs.iter().zip(duplicate_of) {
        for (i, (event, mark)) in job.events.iter().zip(marks).enumerate() {
            if mark.is_some() {
                continue;
            }
            let Some(identity) = identity_of(&job.project_id, &event.identity) else {
                continue;
            };
            if first_field.contains_key(&identity) {
                continue;
            }
            first_field.insert(identity.clone(), format!("events[{i}].contact_id"));
            let (email, external_id) = match &event.identity {
                EventIdentity::ExternalId { external_id, email } => {
                    (email.clone(), Some(external_id.clone()))
                }
                EventIdentity::Email(email) => (Some(email.clone()), None),
                _ => (None, None),
            };
            wanted.push(ToCreate {
                identity,
                email,
                external_id,
                now: job.now,
            });
        }
    }
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    find_contacts(conn, wanted.iter().map(|w| &w.identity), &mut found).await?;
    // By id: it exists or the event is refused.
    if let Some(unknown) = wanted
        .iter()
        .find(|w| w.identity.1 == "id" && !found.contains_key(&w.identity))
    {
        let field = first_field
            .remove(&unknown.identity)
            .unwrap_or_else(|| "contact_id".into());
        return Err(StoreError::Invalid(keyflow_core::FieldError::new(
            &field,
            "no contact with this id in this project",
        )));
    }
    // Unknown: create them. ON CONFLICT DO NOTHING absorbs a concurrent
    // creation (the re-read finds that one); a contact whose email another
    // contact holds is created without it in a second round.
    for with_email in [true, false] {
        let missing: Vec<&ToCreate> = wanted
            .iter()
            .filter(|w| !found.contains_key(&w.identity))
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        create_contacts(conn, &missing, with_email).await?;
        find_contacts(conn, missing.iter().map(|w| &w.identity), &mut found).await?;
    }
    if wanted.iter().all(|w| found.contains_key(&w.identity)) {
        Ok(found)
    } else {
        Err(contact_conflict())
    }
}

/// Adds the stored contact of each identity that has one to `found`: one
/// statement per column named. Planned for its values each time (an unnamed
/// statement): a plan cached while `contacts` was small would scan it.
async fn find_contacts<'a>(
    conn: &mut sqlx::PgConnection,
    identities: impl Iterator<Item = &'a Identity>,
    found: &mut HashMap<Identity, String>,
) -> StoreResult<()> {
    let mut by_column: HashMap<&'static str, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for (project, column, value) in identities {
        let (projects, values) = by_column.entry(column).or_default();
        projects.push(project);
        values.push(value);
    }
    for (column, (projects, values)) in by_column {
        let sql = format!(
            "SELECT project_id, {column}, id FROM contacts \
             WHERE (project_id, {column}) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        );
        let rows: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&projects)
            .bind(&values)
            .fetch_all(&mut *conn)
            .await?;
        for (project, value, id) in rows {
            found.insert((project, column, value), id);
        }
    }
    Ok(())
}

async fn create_contacts(
    conn: &mut sqlx::PgConnection,
    missing: &[&ToCreate],
    with_email: bool,
) -> StoreResult<()> {
    let ids: Vec<String> = missing.iter().map(|_| new_id()).collect();
    let projects: Vec<&str> = missing.iter().map(|w| w.identity.0.as_str()).collect();
    let emails: Vec<Option<&str>> = missing
        .iter()
        .map(|w| w.email.as_deref().filter(|_| with_email))
        .collect();
    let email_keys: Vec<Option<String>> = emails.iter().map(|e| e.map(email_key)).collect();
    let external_ids: Vec<Option<&str>> =
        missing.iter().map(|w| w.external_id.as_deref()).collect();
    let nows: Vec<i64> = missing.iter().map(|w| w.now).collect();
    sqlx::query(
        "INSERT INTO contacts (id, project_id, email, email_key, external_id, subscribed, \
         properties, created_at, updated_at) \
         SELECT i, p, e, k, x, false, '{}', t, t \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
         WITH ORDINALITY AS n(i, p, e, k, x, t, o) ORDER BY o \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&projects)
    .bind(&emails)
    .bind(&email_keys)
    .bind(&external_ids)
    .bind(&nows)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

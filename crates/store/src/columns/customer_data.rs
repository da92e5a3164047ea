//! The columns of contacts and events.

use keyflow_core::contacts::{ContactFields, ContactLookup, email_key};

use super::from_json;
use crate::{Contact, Event, StoreError, StoreResult};

pub(crate) const CONTACT_COLUMNS: &str = "id, project_id, email, external_id, first_name, last_name, subscribed, \
     properties, created_at, updated_at";

pub(crate) const EVENT_COLUMNS: &str = "id, project_id, name, contact_id, anonymous_id, properties, timestamp, received_at, idempotency_key";

pub(crate) fn properties_from_column(
    column: &str,
    text: &str,
) -> StoreResult<serde_json::Map<String, serde_json::Value>> {
    from_json(column, text)
}

pub(crate) fn properties_to_column(props: &serde_json::Map<String, serde_json::Value>) -> String {
    // A map of JSON values always serialises; no clone into a `Value` first.
    serde_json::to_string(props).unwrap_or_else(|_| "{}".to_string())
}

/// An `events` row ([`EVENT_COLUMNS`]): built to insert, or read back.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub contact_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub properties: String,
    pub timestamp: i64,
    pub received_at: i64,
    pub idempotency_key: Option<String>,
}

impl EventRow {
    /// Whether preparing this event wrote anything (see `needs_savepoint`).
    pub(crate) fn prepares_without_writing(event: &keyflow_core::events::NewEvent) -> bool {
        use keyflow_core::events::EventIdentity;
        event.idempotency_key.is_none()
            && matches!(
                event.identity,
                EventIdentity::Anonymous | EventIdentity::ContactId(_)
            )
    }

    pub(crate) fn new(
        id: String,
        project_id: &str,
        event: &keyflow_core::events::NewEvent,
        contact_id: Option<String>,
        now: i64,
    ) -> Self {
        EventRow {
            id,
            project_id: project_id.to_string(),
            name: event.name.clone(),
            contact_id,
            anonymous_id: event.anonymous_id.clone(),
            properties: event.properties.clone(),
            timestamp: event.timestamp,
            received_at: now,
            idempotency_key: event.idempotency_key.clone(),
        }
    }

    /// Ids and rows of events that need no lookups (see [`Self::needs_lookups`]):
    /// built here, without touching the database.
    pub(crate) fn lookup_free(
        project_id: &str,
        events: &[keyflow_core::events::NewEvent],
        now: i64,
    ) -> (Vec<crate::EventOutcome>, Vec<EventRow>) {
        events
            .iter()
            .map(|event| {
                let id = crate::new_id();
                (
                    crate::EventOutcome {
                        id: id.clone(),
                        duplicate: false,
                    },
                    EventRow::new(id, project_id, event, None, now),
                )
            })
            .unzip()
    }

    /// Whether preparing this event touches the database at all (contact
    /// lookups, idempotency claims). Events that do not — anonymous, without
    /// an idempotency key: the bulk of tracking — can be written with a
    /// single statement and no transaction around it.
    pub(crate) fn needs_lookups(event: &keyflow_core::events::NewEvent) -> bool {
        use keyflow_core::events::EventIdentity;
        event.idempotency_key.is_some() || !matches!(event.identity, EventIdentity::Anonymous)
    }
}

pub(crate) fn contact_conflict() -> StoreError {
    StoreError::Conflict("a different contact already has this email or external_id".into())
}

/// The raw columns of a `contacts` row ([`CONTACT_COLUMNS`]).
#[derive(sqlx::FromRow)]
pub(crate) struct ContactRow {
    pub id: String,
    pub project_id: String,
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub subscribed: bool,
    pub properties: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ContactRow {
    pub(crate) fn into_model(self) -> StoreResult<Contact> {
        Ok(Contact {
            fields: ContactFields {
                email: self.email,
                external_id: self.external_id,
                first_name: self.first_name,
                last_name: self.last_name,
                subscribed: self.subscribed,
                properties: properties_from_column("properties", &self.properties)?,
            },
            id: self.id,
            project_id: self.project_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl EventRow {
    pub(crate) fn into_model(self) -> StoreResult<Event> {
        Ok(Event {
            properties: properties_from_column("properties", &self.properties)?,
            id: self.id,
            project_id: self.project_id,
            name: self.name,
            contact_id: self.contact_id,
            anonymous_id: self.anonymous_id,
            timestamp: self.timestamp,
            received_at: self.received_at,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// The column a lookup matches and the value it compares (emails by their
/// NFC, case-folded key).
pub(crate) fn lookup_column(lookup: &ContactLookup) -> (&'static str, String) {
    match lookup {
        ContactLookup::Id(id) => ("id", id.clone()),
        ContactLookup::Email(email) => ("email_key", email_key(email)),
        ContactLookup::ExternalId(x) => ("external_id", x.clone()),
    }
}

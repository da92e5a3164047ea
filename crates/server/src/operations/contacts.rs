//! Contact writes (API, Segment `identify`, subscribers): the store call,
//! then the change published once it is committed.

use keyflow_core::clock::UnixMillis;
use keyflow_core::contacts::{ContactChanges, ContactLookup};
use keyflow_store::{AuditContext, Contact, Store, StoreResult, UpsertActions, UpsertOutcome};

use crate::changes::{Change, ChangeBus};

fn announce(bus: &dyn ChangeBus, project_id: &str, outcome: &UpsertOutcome) {
    let contact_id = outcome.contact.id.clone();
    let project_id = project_id.to_string();
    bus.publish(if outcome.created {
        Change::ContactCreated {
            project_id,
            contact_id,
        }
    } else {
        Change::ContactUpdated {
            project_id,
            contact_id,
        }
    });
}

/// Creates or updates one contact (matched by external id, then email).
pub async fn upsert_contact(
    store: &dyn Store,
    bus: &dyn ChangeBus,
    project_id: &str,
    changes: &ContactChanges,
    actions: UpsertActions,
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<UpsertOutcome> {
    let outcome = store
        .upsert_contact(project_id, changes, actions, audit, now)
        .await?;
    announce(bus, project_id, &outcome);
    Ok(outcome)
}

/// Many upserts in one transaction; each applied item is announced.
pub async fn upsert_contacts(
    store: &dyn Store,
    bus: &dyn ChangeBus,
    project_id: &str,
    items: &[ContactChanges],
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<Vec<StoreResult<UpsertOutcome>>> {
    let outcomes = store.upsert_contacts(project_id, items, audit, now).await?;
    for outcome in outcomes.iter().flatten() {
        announce(bus, project_id, outcome);
    }
    Ok(outcomes)
}

/// Partial update of an existing contact; `None` (nothing published) if there is none.
#[allow(clippy::too_many_arguments)]
pub async fn update_contact(
    store: &dyn Store,
    bus: &dyn ChangeBus,
    project_id: &str,
    lookup: &ContactLookup,
    changes: &ContactChanges,
    action: keyflow_store::AuditAction,
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<Option<Contact>> {
    let updated = store
        .update_contact(project_id, lookup, changes, action, audit, now)
        .await?;
    if let Some(contact) = &updated {
        bus.publish(Change::ContactUpdated {
            project_id: project_id.to_string(),
            contact_id: contact.id.clone(),
        });
    }
    Ok(updated)
}

/// Deletes a contact (its events stay, detached); `false` if there was none.
pub async fn delete_contact(
    store: &dyn Store,
    bus: &dyn ChangeBus,
    project_id: &str,
    id: &str,
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<bool> {
    let deleted = store.delete_contact(project_id, id, audit, now).await?;
    if deleted {
        bus.publish(Change::ContactDeleted {
            project_id: project_id.to_string(),
            contact_id: id.to_string(),
        });
    }
    Ok(deleted)
}

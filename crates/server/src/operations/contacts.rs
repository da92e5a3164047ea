//! Contact writes (API, Segment `identify`, subscribers): the store call
//! (audited in its transaction), then the change published once committed.

use keyflow_core::contacts::{ContactChanges, ContactLookup};
use keyflow_store::{AuditAction, Contact, StoreResult, UpsertActions, UpsertOutcome};
use serde_json::{Value, json};

use super::Ctx;
use crate::changes::{Change, ChangeBus};

/// Publishes what a committed write did: created or updated, and the
/// subscription when it changed.
fn announce(bus: &dyn ChangeBus, project_id: &str, outcome: &UpsertOutcome) {
    let contact_id = outcome.contact.id.clone();
    let project_id = project_id.to_string();
    if outcome.subscription_changed {
        bus.publish(Change::SubscriptionChanged {
            project_id: project_id.clone(),
            contact_id: contact_id.clone(),
            subscribed: outcome.contact.fields.subscribed,
        });
    }
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

/// Creates or updates one contact (matched by external id, then email);
/// `details` go into its audit entry (e.g. `{"via": "segment"}`).
pub async fn upsert_contact(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    project_id: &str,
    changes: &ContactChanges,
    actions: UpsertActions,
    details: Value,
) -> StoreResult<UpsertOutcome> {
    let audit = ctx.contact_audit(workspace_id, details);
    let outcome = ctx
        .store
        .upsert_contact(project_id, changes, actions, Some(&audit), ctx.now)
        .await?;
    announce(ctx.bus, project_id, &outcome);
    Ok(outcome)
}

/// Many upserts in one transaction; each applied item is announced.
pub async fn upsert_contacts(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    project_id: &str,
    items: &[ContactChanges],
    details: Value,
) -> StoreResult<Vec<StoreResult<UpsertOutcome>>> {
    let audit = ctx.contact_audit(workspace_id, details);
    let outcomes = ctx
        .store
        .upsert_contacts(project_id, items, Some(&audit), ctx.now)
        .await?;
    for outcome in outcomes.iter().flatten() {
        announce(ctx.bus, project_id, outcome);
    }
    Ok(outcomes)
}

/// Partial update of an existing contact, audited as `action`; `None`
/// (nothing published) if there is none.
pub async fn update_contact(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    project_id: &str,
    lookup: &ContactLookup,
    changes: &ContactChanges,
    action: AuditAction,
) -> StoreResult<Option<Contact>> {
    let audit = ctx.contact_audit(workspace_id, json!({}));
    let updated = ctx
        .store
        .update_contact(project_id, lookup, changes, action, Some(&audit), ctx.now)
        .await?;
    if let Some(outcome) = &updated {
        announce(ctx.bus, project_id, outcome);
    }
    Ok(updated.map(|outcome| outcome.contact))
}

/// Deletes a contact (its events stay, detached); `false` if there was none.
pub async fn delete_contact(
    ctx: &Ctx<'_>,
    workspace_id: &str,
    project_id: &str,
    id: &str,
) -> StoreResult<bool> {
    let audit = ctx.contact_audit(workspace_id, json!({}));
    let deleted = ctx
        .store
        .delete_contact(project_id, id, Some(&audit), ctx.now)
        .await?;
    if deleted {
        ctx.bus.publish(Change::ContactDeleted {
            project_id: project_id.to_string(),
            contact_id: id.to_string(),
        });
    }
    Ok(deleted)
}

//! Contacts: create-or-update (SPEC §3), partial updates, deletion, lookups.

use async_trait::async_trait;
use keyflow_core::clock::UnixMillis;
use keyflow_core::contacts::{ContactChanges, ContactLookup, apply_changes, email_key};

use super::audit::write_audit;
use crate::backend::{Backend, Db, Run, WriteTx};
use crate::columns::{
    CONTACT_COLUMNS, ContactRow, contact_conflict, lookup_column, page_limit, properties_to_column,
};
use crate::{
    AuditAction, AuditContext, AuditEntry, AuditTarget, Contact, Page, StoreError, StoreResult,
    UpsertActions, UpsertOutcome, new_id,
};

#[async_trait]
pub trait ContactStore: Send + Sync {
    /// Create-or-update matched by `external_id`, then by email
    /// (case-insensitive); properties merge. Writes one audit entry when
    /// `audit` is given. `Conflict` if the email or external id belongs to
    /// another contact.
    async fn upsert_contact(
        &self,
        project_id: &str,
        changes: &ContactChanges,
        actions: UpsertActions,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<UpsertOutcome>;
    /// Many upserts in one transaction; each item succeeds or fails alone.
    async fn upsert_contacts(
        &self,
        project_id: &str,
        items: &[ContactChanges],
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Vec<StoreResult<UpsertOutcome>>>;
    async fn get_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
    ) -> StoreResult<Option<Contact>>;
    /// Partial update of an existing contact; `None` if there is none.
    async fn update_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
        changes: &ContactChanges,
        action: AuditAction,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Option<UpsertOutcome>>;
    /// Deletes a contact; its events stay, detached. `false` if there was none.
    async fn delete_contact(
        &self,
        project_id: &str,
        id: &str,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    async fn list_contacts(
        &self,
        project_id: &str,
        subscribed_only: bool,
        page: &Page,
    ) -> StoreResult<Vec<Contact>>;
}

/// One contact by id, email (its NFC, case-folded key) or external id.
pub(crate) async fn find_contact<DB: Db>(
    conn: &mut DB::Connection,
    project_id: &str,
    lookup: &ContactLookup,
) -> StoreResult<Option<Contact>> {
    let (column, value) = lookup_column(lookup);
    let sql =
        format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE project_id = $1 AND {column} = $2");
    // By email or external id, planned for its values each time on
    // PostgreSQL (an unnamed statement): a plan cached while `contacts` was
    // small chose the project-only index and scanned every contact of the
    // project per lookup (docs/benchmarks.md). By id it stays a cached
    // statement: re-planning cost a third of `GET /v1/contacts/{id}`.
    let plan_each_time = <DB as Db>::NAME != "sqlite" && !matches!(lookup, ContactLookup::Id(_));
    let row: Option<ContactRow> = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
        .persistent(!plan_each_time)
        .arg(project_id)
        .arg(value)
        .optional(conn)
        .await?;
    row.map(ContactRow::into_model).transpose()
}

async fn write_contact<DB: Db>(
    tx: &mut DB::Connection,
    contact: &Contact,
    exists: bool,
) -> StoreResult<()> {
    let f = &contact.fields;
    let query = if exists {
        sqlx::query::<DB>(
            "UPDATE contacts SET email = $1, email_key = $2, external_id = $3, first_name = $4, \
             last_name = $5, subscribed = $6, properties = $7, updated_at = $8 \
             WHERE project_id = $9 AND id = $10",
        )
    } else {
        sqlx::query::<DB>(
            "INSERT INTO contacts (email, email_key, external_id, first_name, last_name, \
             subscribed, properties, updated_at, project_id, id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
    };
    let mut query = query
        .arg(&f.email)
        .arg(f.email.as_deref().map(email_key))
        .arg(&f.external_id)
        .arg(&f.first_name)
        .arg(&f.last_name)
        .arg(f.subscribed)
        .arg(properties_to_column(&f.properties))
        .arg(contact.updated_at)
        .arg(&contact.project_id)
        .arg(&contact.id);
    if !exists {
        query = query.arg(contact.created_at);
    }
    query
        .run(tx)
        .await
        .map_err(|e| match e.for_write("contact") {
            StoreError::Conflict(_) => contact_conflict(),
            other => other,
        })?;
    Ok(())
}

async fn audit_contact<DB: Db>(
    tx: &mut DB::Connection,
    contact: &Contact,
    action: AuditAction,
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<()> {
    let Some(ctx) = audit else { return Ok(()) };
    let entry = AuditEntry {
        id: new_id(),
        workspace_id: ctx.workspace_id.clone(),
        project_id: Some(contact.project_id.clone()),
        at: now,
        actor: ctx.actor.clone(),
        action: action.as_str().to_string(),
        target: AuditTarget {
            kind: "contact".into(),
            id: Some(contact.id.clone()),
            name: contact
                .fields
                .email
                .clone()
                .or_else(|| contact.fields.external_id.clone()),
        },
        ip: ctx.ip.clone(),
        details: ctx.details.clone(),
    };
    write_audit::<DB>(tx, &entry).await
}

/// The create-or-update of SPEC §3 inside a transaction.
async fn upsert_contact_in<DB: Db>(
    tx: &mut DB::Connection,
    project_id: &str,
    changes: &ContactChanges,
    actions: UpsertActions,
    audit: Option<&AuditContext>,
    now: UnixMillis,
) -> StoreResult<UpsertOutcome> {
    let mut existing = None;
    if let Some(x) = &changes.external_id {
        existing =
            find_contact::<DB>(tx, project_id, &ContactLookup::ExternalId(x.clone())).await?;
    }
    if existing.is_none()
        && let Some(email) = &changes.email
    {
        existing = find_contact::<DB>(tx, project_id, &ContactLookup::Email(email.clone())).await?;
        // Matched by email but it already carries another external id: a different person.
        if let (Some(found), Some(_)) = (&existing, &changes.external_id)
            && found.fields.external_id.is_some()
        {
            return Err(contact_conflict());
        }
    }
    let fields = apply_changes(existing.as_ref().map(|c| &c.fields), changes)
        .map_err(StoreError::Invalid)?;
    let before = existing.as_ref().map(|c| c.fields.clone());
    let created = existing.is_none();
    let was_subscribed = existing.as_ref().is_some_and(|c| c.fields.subscribed);
    let contact = match existing {
        Some(c) => Contact {
            fields,
            updated_at: now,
            ..c
        },
        None => Contact {
            id: new_id(),
            project_id: project_id.to_string(),
            fields,
            created_at: now,
            updated_at: now,
        },
    };
    write_contact::<DB>(tx, &contact, !created).await?;
    let depth = audit.map_or(0, |a| a.workflow_depth);
    super::jobs::record_contact_triggers::<DB>(tx, &contact, before.as_ref(), depth).await?;
    // Subscribing an existing contact through the subscribers API is
    // recorded as a subscriber creation.
    let newly_subscribed = !was_subscribed
        && contact.fields.subscribed
        && actions.created == UpsertActions::SUBSCRIBER.created;
    let action = if created || newly_subscribed {
        actions.created
    } else {
        actions.updated
    };
    audit_contact::<DB>(tx, &contact, action, audit, now).await?;
    let subscription_changed = was_subscribed != contact.fields.subscribed;
    Ok(UpsertOutcome {
        contact,
        created,
        subscription_changed,
    })
}

#[async_trait]
impl<B: Backend> ContactStore for B {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn upsert_contact(
        &self,
        project_id: &str,
        changes: &ContactChanges,
        actions: UpsertActions,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<UpsertOutcome> {
        // A concurrent create of the same contact makes the first attempt
        // conflict; the second finds and updates it.
        let mut attempt = 0;
        loop {
            let mut tx = self.begin_write().await?;
            match upsert_contact_in::<B::Db>(&mut tx, project_id, changes, actions, audit, now)
                .await
            {
                Ok(outcome) => {
                    B::contacts_changing(&mut tx).await?;
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Err(StoreError::Conflict(_)) if attempt == 0 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn upsert_contacts(
        &self,
        project_id: &str,
        items: &[ContactChanges],
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Vec<StoreResult<UpsertOutcome>>> {
        let mut tx = self.begin_write().await?;
        let mut results = Vec::with_capacity(items.len());
        for changes in items {
            // Each item in a savepoint of its own: a refused one leaves no trace.
            let mut item = sqlx::Connection::begin(&mut *tx).await?;
            let actions = UpsertActions::CONTACT;
            match upsert_contact_in::<B::Db>(&mut item, project_id, changes, actions, audit, now)
                .await
            {
                Ok(outcome) => {
                    item.commit().await?;
                    results.push(Ok(outcome));
                }
                Err(e) => {
                    item.rollback().await?;
                    results.push(Err(e));
                }
            }
        }
        B::contacts_changing(&mut tx).await?;
        tx.commit().await?;
        Ok(results)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
    ) -> StoreResult<Option<Contact>> {
        if let Some(direct) = self.read_contact(project_id, lookup) {
            return direct;
        }
        // One statement needs no transaction (BEGIN and COMMIT would be two
        // more round trips on the hottest read).
        let mut conn = self.pool().acquire().await?;
        find_contact::<B::Db>(&mut conn, project_id, lookup).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn update_contact(
        &self,
        project_id: &str,
        lookup: &ContactLookup,
        changes: &ContactChanges,
        action: AuditAction,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<Option<UpsertOutcome>> {
        let mut tx = self.begin_write().await?;
        let Some(current) = find_contact::<B::Db>(&mut tx, project_id, lookup).await? else {
            return Ok(None);
        };
        let fields = apply_changes(Some(&current.fields), changes).map_err(StoreError::Invalid)?;
        let subscription_changed = fields.subscribed != current.fields.subscribed;
        let contact = Contact {
            fields,
            updated_at: now,
            ..current
        };
        write_contact::<B::Db>(&mut tx, &contact, true).await?;
        let depth = audit.map_or(0, |a| a.workflow_depth);
        super::jobs::record_contact_triggers::<B::Db>(
            &mut tx,
            &contact,
            Some(&current.fields),
            depth,
        )
        .await?;
        audit_contact::<B::Db>(&mut tx, &contact, action, audit, now).await?;
        B::contacts_changing(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(UpsertOutcome {
            contact,
            created: false,
            subscription_changed,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_contact(
        &self,
        project_id: &str,
        id: &str,
        audit: Option<&AuditContext>,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let lookup = ContactLookup::Id(id.to_string());
        let Some(contact) = find_contact::<B::Db>(&mut tx, project_id, &lookup).await? else {
            return Ok(false);
        };
        // SQLite finds a contact's events through its two contact tables
        // (migration 0018; its triggers update them as the events change).
        let unlink = if B::Db::NAME == "sqlite" {
            "UPDATE events SET contact_id = NULL WHERE project_id = $1 AND contact_id = $2 \
             AND id IN (SELECT id FROM event_contacts WHERE project_id = $1 AND contact_id = $2 \
             UNION ALL SELECT id FROM event_contacts_recent WHERE project_id = $1 AND contact_id = $2)"
        } else {
            "UPDATE events SET contact_id = NULL WHERE project_id = $1 AND contact_id = $2"
        };
        sqlx::query::<B::Db>(unlink)
            .arg(project_id)
            .arg(id)
            .run(&mut tx)
            .await?;
        sqlx::query::<B::Db>("DELETE FROM workflow_entries WHERE contact_id = $1")
            .arg(id)
            .run(&mut tx)
            .await?;
        sqlx::query::<B::Db>("DELETE FROM contacts WHERE project_id = $1 AND id = $2")
            .arg(project_id)
            .arg(id)
            .run(&mut tx)
            .await?;
        audit_contact::<B::Db>(&mut tx, &contact, AuditAction::ContactDeleted, audit, now).await?;
        B::contacts_changing(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_contacts(
        &self,
        project_id: &str,
        subscribed_only: bool,
        page: &Page,
    ) -> StoreResult<Vec<Contact>> {
        let mut conn = self.pool().acquire().await?;
        // One statement per shape, each a range of one index
        // (`contacts_by_project`, or `contacts_subscribed`): conditions like
        // `$4 IS NULL OR id < $4` kept the planners from seeking to the
        // cursor, so every page read all the contacts before it.
        let subscribed = if subscribed_only {
            "AND subscribed = $3"
        } else {
            "AND $3"
        };
        let after = if page.cursor.is_some() {
            "AND id < $2"
        } else {
            "AND $2 IS NULL"
        };
        let sql = format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts WHERE project_id = $1 {subscribed} {after} \
             ORDER BY id DESC LIMIT $4"
        );
        let rows: Vec<ContactRow> = sqlx::query::<B::Db>(sqlx::AssertSqlSafe(sql))
            .arg(project_id)
            .arg(&page.cursor)
            .arg(true)
            .arg(page_limit(page.limit))
            .all(&mut conn)
            .await?;
        rows.into_iter().map(ContactRow::into_model).collect()
    }
}

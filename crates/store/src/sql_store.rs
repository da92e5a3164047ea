//! The SQL shared by both backends.
//!
//! `sqlx::query` is generic over the database only through heavy trait bounds,
//! so instead [`impl_sql_store!`] stamps the same statements out once per
//! backend type. The SQL here is deliberately portable (SQLite ≥ 3.35 and
//! PostgreSQL ≥ 12 both accept it); a backend-specific statement belongs in that
//! backend's module. Row decoding and encoding helpers below are plain
//! functions over already-read column values, shared as they are.

use keyflow_core::ip::IpRule;
use keyflow_core::key_settings::KeySettings;
use keyflow_core::{Environment, KeyDigest, KeyType, Plan, RateLimit, Role, ScopeSet};

use crate::{Actor, ApiKey, AuditEntry, AuditTarget, StoreError, StoreResult};

/// One embedded migration.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The migration after which contacts' emails are re-keyed in NFC.
pub(crate) const CONTACT_EMAILS_NFC: i64 = 10;

pub(crate) const KEY_COLUMNS: &str = "k.id, k.project_id, k.name, k.key_type, k.scopes, k.prefix, k.digest, \
     k.created_at, k.created_by_type, k.created_by_id, k.created_by_name, k.created_by_prefix, k.expires_at, \
     k.revoked_at, k.last_used_at, k.last_used_ip, k.ip_allowlist, k.allowed_events, k.allowed_origins, k.rate_limit, k.rolled_at";

pub(crate) const INSERT_KEY: &str = "INSERT INTO api_keys (id, project_id, name, key_type, scopes, prefix, digest, \
     created_at, created_by_type, created_by_id, created_by_name, created_by_prefix, expires_at, revoked_at, \
     last_used_at, last_used_ip, ip_allowlist, allowed_events, allowed_origins, rate_limit) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (id, workspace_id, project_id, at, actor_type, \
     actor_id, actor_name, actor_prefix, action, target_type, target_id, target_name, ip, details) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

pub(crate) const AUDIT_COLUMNS: &str = "id, workspace_id, project_id, at, actor_type, actor_id, actor_name, \
     actor_prefix, action, target_type, target_id, target_name, ip, details";

/// Rows per statement when flushing last-used data (3 parameters each).
pub(crate) const USAGE_CHUNK: usize = 500;

pub(crate) fn usage_update_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3))
        .collect();
    format!(
        "WITH v (id, t, ip) AS (VALUES {}) \
         UPDATE api_keys SET last_used_at = v.t, last_used_ip = v.ip FROM v \
         WHERE api_keys.id = v.id AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.t)",
        values.join(", ")
    )
}

/// The columns of an actor: (type, id, name, prefix).
pub(crate) fn actor_columns(
    actor: &Actor,
) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
    match actor {
        Actor::Operator { id, email } => ("operator", Some(id), Some(email), None),
        Actor::ApiKey { id, name, prefix } => ("api_key", Some(id), Some(name), Some(prefix)),
        Actor::InstanceAdmin => ("instance_admin", None, None, None),
    }
}

pub(crate) fn actor_from_columns(
    kind: &str,
    id: Option<String>,
    name: Option<String>,
    prefix: Option<String>,
) -> StoreResult<Actor> {
    Ok(match kind {
        "operator" => Actor::Operator {
            id: id.unwrap_or_default(),
            email: name.unwrap_or_default(),
        },
        "api_key" => Actor::ApiKey {
            id: id.unwrap_or_default(),
            name: name.unwrap_or_default(),
            prefix: prefix.unwrap_or_default(),
        },
        "instance_admin" => Actor::InstanceAdmin,
        other => return Err(StoreError::Corrupt(format!("unknown actor type {other:?}"))),
    })
}

/// The JSON-encoded settings columns of a key.
pub(crate) struct SettingsColumns {
    pub ip_allowlist: String,
    pub allowed_events: Option<String>,
    pub allowed_origins: Option<String>,
    pub rate_limit: Option<String>,
}

pub(crate) fn settings_columns(s: &KeySettings) -> StoreResult<SettingsColumns> {
    let json = |v: &dyn erased_json::ToJson| v.to_json();
    Ok(SettingsColumns {
        ip_allowlist: json(&s.ip_allowlist)?,
        allowed_events: s.allowed_events.as_ref().map(|v| json(v)).transpose()?,
        allowed_origins: s.allowed_origins.as_ref().map(|v| json(v)).transpose()?,
        rate_limit: s.rate_limit.as_ref().map(|v| json(v)).transpose()?,
    })
}

mod erased_json {
    use crate::{StoreError, StoreResult};

    pub trait ToJson {
        fn to_json(&self) -> StoreResult<String>;
    }
    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> StoreResult<String> {
            serde_json::to_string(self).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
    }
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn scopes_to_column(scopes: ScopeSet) -> String {
    scopes.to_strings().join(" ")
}

/// The raw columns of an `api_keys` row, read by the backend.
pub(crate) struct KeyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub key_type: String,
    pub scopes: String,
    pub prefix: String,
    pub digest: String,
    pub created_at: i64,
    pub created_by_type: String,
    pub created_by_id: Option<String>,
    pub created_by_name: Option<String>,
    pub created_by_prefix: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
    pub ip_allowlist: String,
    pub allowed_events: Option<String>,
    pub allowed_origins: Option<String>,
    pub rate_limit: Option<String>,
    pub rolled_at: Option<i64>,
}

impl KeyRow {
    pub(crate) fn into_model(self) -> StoreResult<ApiKey> {
        let key_type = KeyType::parse_any(&self.key_type)
            .ok_or_else(|| StoreError::Corrupt(format!("key type {:?}", self.key_type)))?;
        let scopes = ScopeSet::parse_all(self.scopes.split_whitespace())
            .map_err(|s| StoreError::Corrupt(format!("scope {s:?}")))?;
        let digest = KeyDigest::from_hex(&self.digest)
            .ok_or_else(|| StoreError::Corrupt("digest".into()))?;
        let ip_allowlist: Vec<IpRule> = from_json("ip_allowlist", &self.ip_allowlist)?;
        let allowed_events = self
            .allowed_events
            .as_deref()
            .map(|t| from_json("allowed_events", t))
            .transpose()?;
        let allowed_origins = self
            .allowed_origins
            .as_deref()
            .map(|t| from_json("allowed_origins", t))
            .transpose()?;
        let rate_limit: Option<RateLimit> = self
            .rate_limit
            .as_deref()
            .map(|t| from_json("rate_limit", t))
            .transpose()?;
        Ok(ApiKey {
            id: self.id,
            project_id: self.project_id,
            key_type,
            scopes,
            prefix: self.prefix,
            digest,
            settings: KeySettings {
                name: self.name,
                expires_at: self.expires_at,
                ip_allowlist,
                allowed_events,
                allowed_origins,
                rate_limit,
            },
            created_at: self.created_at,
            created_by: actor_from_columns(
                &self.created_by_type,
                self.created_by_id,
                self.created_by_name,
                self.created_by_prefix,
            )?,
            last_used_at: self.last_used_at,
            last_used_ip: self.last_used_ip,
            revoked_at: self.revoked_at,
            rolled_at: self.rolled_at,
        })
    }
}

pub(crate) struct AuditRow {
    pub id: String,
    pub workspace_id: String,
    pub project_id: Option<String>,
    pub at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    pub actor_prefix: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub ip: Option<String>,
    pub details: String,
}

impl AuditRow {
    pub(crate) fn into_model(self) -> StoreResult<AuditEntry> {
        Ok(AuditEntry {
            id: self.id,
            workspace_id: self.workspace_id,
            project_id: self.project_id,
            at: self.at,
            actor: actor_from_columns(
                &self.actor_type,
                self.actor_id,
                self.actor_name,
                self.actor_prefix,
            )?,
            action: self.action,
            target: AuditTarget {
                kind: self.target_type,
                id: self.target_id,
                name: self.target_name,
            },
            ip: self.ip,
            details: from_json("details", &self.details)?,
        })
    }
}

pub(crate) fn parse_plan(text: &str) -> StoreResult<Plan> {
    Plan::parse(text).ok_or_else(|| StoreError::Corrupt(format!("plan {text:?}")))
}

pub(crate) fn parse_role(text: &str) -> StoreResult<Role> {
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("role {text:?}")))
}

pub(crate) fn parse_environment(text: &str) -> StoreResult<Environment> {
    Environment::parse(text).ok_or_else(|| StoreError::Corrupt(format!("environment {text:?}")))
}

pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}

pub(crate) const CONTACT_COLUMNS: &str = "id, project_id, email, external_id, first_name, last_name, subscribed, \
     properties, created_at, updated_at";

pub(crate) const EVENT_COLUMNS: &str = "id, project_id, name, contact_id, anonymous_id, properties, timestamp, received_at, idempotency_key";

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

/// The `list_events` statement with only the filters given, each a plain
/// condition the planner can match to an index (an `$2 IS NULL OR …` form
/// matches none). SQLite plans without statistics and would walk the primary
/// key through every event of the project, so there the index is named.
/// Placeholders are numbered in this order: project, contact, name, since,
/// until, cursor, limit — skipping absent filters.
pub(crate) fn list_events_sql(
    filter: &crate::EventFilter,
    after_cursor: bool,
    sqlite: bool,
) -> String {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events");
    if sqlite {
        // A contact's events are the narrower set when both filters are given.
        if filter.contact_id.is_some() {
            sql.push_str(" INDEXED BY events_contact");
        } else if filter.name.is_some() {
            sql.push_str(" INDEXED BY events_name");
        }
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

/// An event row ready to insert.
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
    pub(crate) fn is_plain(event: &keyflow_core::events::NewEvent) -> bool {
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

/// Implements [`crate::Store`] for a backend struct with a `pool: sqlx::Pool<$db>`
/// field and a `MIGRATIONS: &[Migration]` constant, plus an associated
/// `async fn lock_migrations(tx)` that serialises concurrent migrators and
/// `async fn lock_workspace(tx, id)` that serialises membership changes, and
/// `async fn begin_write(&self)` that opens a transaction meant to write, as
/// the module's `WriteTx` type.
///
/// The few statements built with `format!` only splice in the column-list
/// constants above and numbered placeholders, never input, hence
/// `AssertSqlSafe`.
macro_rules! impl_sql_store {
    ($store:ty, $db:ty, $name:literal) => {
        use async_trait::async_trait;
        use keyflow_core::clock::UnixMillis;
        use keyflow_core::key_settings::KeySettings;
        use keyflow_core::{KeyDigest, Plan};
        use sqlx::Row as _;

        use keyflow_core::contacts::{ContactChanges, ContactFields, ContactLookup, apply_changes, email_key};
        use keyflow_core::events::{EventIdentity, IDEMPOTENCY_WINDOW_MS, NewEvent};
        use $crate::sql_store::{
            AUDIT_COLUMNS, AuditRow, CONTACT_COLUMNS, EventRow, INSERT_AUDIT,
            INSERT_KEY, KEY_COLUMNS, KeyRow, USAGE_CHUNK, actor_columns, contact_conflict,
            list_events_sql, page_limit, parse_environment, parse_plan, parse_role, properties_from_column, properties_to_column,
            scopes_to_column, settings_columns, usage_update_sql,
        };
        use $crate::{
            ApiKey, AuditAction, AuditContext, AuditEntry, AuditFilter, AuditTarget, AuthKey, Contact, Event, EventFilter, EventOutcome,
            DailyUsage, KeyUsage, Membership, MetricsCredential, Operator, Page, Project, ProjectSettings, Session, Store, StoreError,
            StoreResult,
            UpsertActions, UpsertOutcome, Workspace, new_id,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        /// A transaction meant to write, from `begin_write` (the backend's
        /// `WriteTx`: on SQLite it also holds the instance's write turn).
        type Tx<'a> = WriteTx<'a>;
        /// A bare connection: helpers that only run statements take this, so the
        /// SQLite writer can call them inside a transaction it manages itself.
        type Conn = <$db as sqlx::Database>::Connection;

        fn key_from_row(row: &DbRow) -> StoreResult<ApiKey> {
            KeyRow {
                id: row.try_get("id")?,
                project_id: row.try_get("project_id")?,
                name: row.try_get("name")?,
                key_type: row.try_get("key_type")?,
                scopes: row.try_get("scopes")?,
                prefix: row.try_get("prefix")?,
                digest: row.try_get("digest")?,
                created_at: row.try_get("created_at")?,
                created_by_type: row.try_get("created_by_type")?,
                created_by_id: row.try_get("created_by_id")?,
                created_by_name: row.try_get("created_by_name")?,
                created_by_prefix: row.try_get("created_by_prefix")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                last_used_at: row.try_get("last_used_at")?,
                last_used_ip: row.try_get("last_used_ip")?,
                ip_allowlist: row.try_get("ip_allowlist")?,
                allowed_events: row.try_get("allowed_events")?,
                allowed_origins: row.try_get("allowed_origins")?,
                rate_limit: row.try_get("rate_limit")?,
                rolled_at: row.try_get("rolled_at")?,
            }
            .into_model()
        }

        fn audit_from_row(row: &DbRow) -> StoreResult<AuditEntry> {
            AuditRow {
                id: row.try_get("id")?,
                workspace_id: row.try_get("workspace_id")?,
                project_id: row.try_get("project_id")?,
                at: row.try_get("at")?,
                actor_type: row.try_get("actor_type")?,
                actor_id: row.try_get("actor_id")?,
                actor_name: row.try_get("actor_name")?,
                actor_prefix: row.try_get("actor_prefix")?,
                action: row.try_get("action")?,
                target_type: row.try_get("target_type")?,
                target_id: row.try_get("target_id")?,
                target_name: row.try_get("target_name")?,
                ip: row.try_get("ip")?,
                details: row.try_get("details")?,
            }
            .into_model()
        }

        async fn write_audit(tx: &mut Conn, e: &AuditEntry) -> StoreResult<()> {
            let (actor_type, actor_id, actor_name, actor_prefix) = actor_columns(&e.actor);
            sqlx::query(INSERT_AUDIT)
                .bind(&e.id)
                .bind(&e.workspace_id)
                .bind(&e.project_id)
                .bind(e.at)
                .bind(actor_type)
                .bind(actor_id)
                .bind(actor_name)
                .bind(actor_prefix)
                .bind(&e.action)
                .bind(&e.target.kind)
                .bind(&e.target.id)
                .bind(&e.target.name)
                .bind(&e.ip)
                .bind(e.details.to_string())
                .execute(&mut *tx)
                .await?;
            Ok(())
        }

        /// Commits `tx` with its audit entry when the change happened; otherwise
        /// drops it (rolling back) and reports `false`.
        async fn commit_if(mut tx: Tx<'_>, done: bool, audit: &AuditEntry) -> StoreResult<bool> {
            if done {
                write_audit(&mut tx, audit).await?;
                tx.commit().await?;
            }
            Ok(done)
        }

        fn operator_from_row(r: &DbRow) -> StoreResult<Operator> {
            Ok(Operator {
                id: r.try_get("id")?,
                email: r.try_get("email")?,
                password_hash: r.try_get("password_hash")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn membership_from_row(r: &DbRow) -> StoreResult<Membership> {
            Ok(Membership {
                workspace_id: r.try_get("workspace_id")?,
                operator_id: r.try_get("operator_id")?,
                role: parse_role(r.try_get("role")?)?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn project_from_row(r: &DbRow) -> StoreResult<Project> {
            Ok(Project {
                id: r.try_get("id")?,
                workspace_id: r.try_get("workspace_id")?,
                name: r.try_get("name")?,
                environment: parse_environment(r.try_get("environment")?)?,
                created_at: r.try_get("created_at")?,
            })
        }

        /// Contacts stored before emails were compared in NFC: their email and
        /// key are recomputed (only non-ASCII emails can change). A contact
        /// whose NFC key another contact of its project already holds keeps
        /// its old key (merging two contacts is the tenant's call) and is
        /// logged.
        async fn rekey_contact_emails(tx: &mut Conn) -> StoreResult<()> {
            let rows = sqlx::query(
                "SELECT project_id, id, email, email_key FROM contacts \
                 WHERE email IS NOT NULL AND octet_length(email) <> length(email)",
            )
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let project_id: String = row.try_get("project_id")?;
                let id: String = row.try_get("id")?;
                let email: String = row.try_get("email")?;
                let old_key: Option<String> = row.try_get("email_key")?;
                let new_email = keyflow_core::text::nfc_email(&email);
                let new_key = email_key(&new_email);
                if new_email == email && old_key.as_deref() == Some(new_key.as_str()) {
                    continue;
                }
                let taken: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM contacts WHERE project_id = $1 AND email_key = $2 AND id <> $3",
                )
                .bind(&project_id)
                .bind(&new_key)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(other) = taken {
                    tracing::warn!(
                        contact = %id,
                        other_contact = %other,
                        project = %project_id,
                        "two contacts have the same email in NFC; this one keeps its old comparison key"
                    );
                    continue;
                }
                sqlx::query("UPDATE contacts SET email = $1, email_key = $2 WHERE project_id = $3 AND id = $4")
                    .bind(&new_email)
                    .bind(&new_key)
                    .bind(&project_id)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }

        async fn write_key(tx: &mut Conn, k: &ApiKey) -> StoreResult<()> {
            let (created_type, created_id, created_name, created_prefix) = actor_columns(&k.created_by);
            let columns = settings_columns(&k.settings)?;
            sqlx::query(INSERT_KEY)
                .bind(&k.id)
                .bind(&k.project_id)
                .bind(&k.settings.name)
                .bind(k.key_type.as_str())
                .bind(scopes_to_column(k.scopes))
                .bind(&k.prefix)
                .bind(k.digest.to_hex())
                .bind(k.created_at)
                .bind(created_type)
                .bind(created_id)
                .bind(created_name)
                .bind(created_prefix)
                .bind(k.settings.expires_at)
                .bind(k.revoked_at)
                .bind(k.last_used_at)
                .bind(&k.last_used_ip)
                .bind(columns.ip_allowlist)
                .bind(columns.allowed_events)
                .bind(columns.allowed_origins)
                .bind(columns.rate_limit)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, "api key"))?;
            Ok(())
        }


        fn contact_from_row(row: &DbRow) -> StoreResult<Contact> {
            Ok(Contact {
                id: row.try_get("id")?,
                project_id: row.try_get("project_id")?,
                fields: ContactFields {
                    email: row.try_get("email")?,
                    external_id: row.try_get("external_id")?,
                    first_name: row.try_get("first_name")?,
                    last_name: row.try_get("last_name")?,
                    subscribed: row.try_get("subscribed")?,
                    properties: properties_from_column("properties", row.try_get("properties")?)?,
                },
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn event_from_row(row: &DbRow) -> StoreResult<Event> {
            Ok(Event {
                id: row.try_get("id")?,
                project_id: row.try_get("project_id")?,
                name: row.try_get("name")?,
                contact_id: row.try_get("contact_id")?,
                anonymous_id: row.try_get("anonymous_id")?,
                properties: properties_from_column("properties", row.try_get("properties")?)?,
                timestamp: row.try_get("timestamp")?,
                received_at: row.try_get("received_at")?,
                idempotency_key: row.try_get("idempotency_key")?,
            })
        }

        async fn find_contact(conn: &mut Conn, project_id: &str, lookup: &ContactLookup) -> StoreResult<Option<Contact>> {
            let (column, value) = match lookup {
                ContactLookup::Id(id) => ("id", id.clone()),
                ContactLookup::Email(email) => ("email_key", email_key(email)),
                ContactLookup::ExternalId(x) => ("external_id", x.clone()),
            };
            let sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE project_id = $1 AND {column} = $2");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(project_id)
                .bind(value)
                .fetch_optional(&mut *conn)
                .await?;
            row.as_ref().map(contact_from_row).transpose()
        }

        async fn write_contact(tx: &mut Conn, contact: &Contact, exists: bool) -> StoreResult<()> {
            let f = &contact.fields;
            let query = if exists {
                sqlx::query(
                    "UPDATE contacts SET email = $1, email_key = $2, external_id = $3, first_name = $4, \
                     last_name = $5, subscribed = $6, properties = $7, updated_at = $8 \
                     WHERE project_id = $9 AND id = $10",
                )
            } else {
                sqlx::query(
                    "INSERT INTO contacts (email, email_key, external_id, first_name, last_name, subscribed, \
                     properties, updated_at, project_id, id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
            };
            let mut query = query
                .bind(&f.email)
                .bind(f.email.as_deref().map(email_key))
                .bind(&f.external_id)
                .bind(&f.first_name)
                .bind(&f.last_name)
                .bind(f.subscribed)
                .bind(properties_to_column(&f.properties))
                .bind(contact.updated_at)
                .bind(&contact.project_id)
                .bind(&contact.id);
            if !exists {
                query = query.bind(contact.created_at);
            }
            query.execute(&mut *tx).await.map_err(|e| match StoreError::from_write(e, "contact") {
                StoreError::Conflict(_) => contact_conflict(),
                other => other,
            })?;
            Ok(())
        }

        async fn audit_contact(
            tx: &mut Conn,
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
                    name: contact.fields.email.clone().or_else(|| contact.fields.external_id.clone()),
                },
                ip: ctx.ip.clone(),
                details: ctx.details.clone(),
            };
            write_audit(tx, &entry).await
        }

        /// The create-or-update of SPEC §3 inside a transaction.
        async fn upsert_contact_in(
            tx: &mut Conn,
            project_id: &str,
            changes: &ContactChanges,
            actions: UpsertActions,
            audit: Option<&AuditContext>,
            now: UnixMillis,
        ) -> StoreResult<UpsertOutcome> {
            let mut existing = None;
            if let Some(x) = &changes.external_id {
                existing = find_contact(tx, project_id, &ContactLookup::ExternalId(x.clone())).await?;
            }
            if existing.is_none() {
                if let Some(email) = &changes.email {
                    existing = find_contact(tx, project_id, &ContactLookup::Email(email.clone())).await?;
                    // Matched by email but it already carries another external id: a different person.
                    if let (Some(found), Some(_)) = (&existing, &changes.external_id) {
                        if found.fields.external_id.is_some() {
                            return Err(contact_conflict());
                        }
                    }
                }
            }
            let fields = apply_changes(existing.as_ref().map(|c| &c.fields), changes).map_err(StoreError::Invalid)?;
            let created = existing.is_none();
            let was_subscribed = existing.as_ref().is_some_and(|c| c.fields.subscribed);
            let contact = match existing {
                Some(c) => Contact { fields, updated_at: now, ..c },
                None => Contact {
                    id: new_id(),
                    project_id: project_id.to_string(),
                    fields,
                    created_at: now,
                    updated_at: now,
                },
            };
            write_contact(tx, &contact, !created).await?;
            let action = if created || (!was_subscribed && contact.fields.subscribed && actions.created == UpsertActions::SUBSCRIBER.created) {
                actions.created
            } else {
                actions.updated
            };
            audit_contact(tx, &contact, action, audit, now).await?;
            Ok(UpsertOutcome { contact, created })
        }

        /// Finds or creates the contact an event names; `None` for anonymous events.
        async fn resolve_identity(
            conn: &mut Conn,
            project_id: &str,
            identity: &EventIdentity,
            field: &str,
            now: UnixMillis,
        ) -> StoreResult<Option<String>> {
            let (lookup, email, external_id) = match identity {
                EventIdentity::Anonymous => return Ok(None),
                EventIdentity::ContactId(id) => {
                    return match find_contact(conn, project_id, &ContactLookup::Id(id.clone())).await? {
                        Some(c) => Ok(Some(c.id)),
                        None => Err(StoreError::Invalid(keyflow_core::FieldError::new(
                            field,
                            "no contact with this id in this project",
                        ))),
                    };
                }
                EventIdentity::ExternalId { external_id, email } => {
                    (ContactLookup::ExternalId(external_id.clone()), email.clone(), Some(external_id.clone()))
                }
                EventIdentity::Email(email) => (ContactLookup::Email(email.clone()), Some(email.clone()), None),
            };
            if let Some(found) = find_contact(conn, project_id, &lookup).await? {
                return Ok(Some(found.id));
            }
            // Unknown: create it. ON CONFLICT DO NOTHING absorbs a concurrent
            // creation; the re-read below then finds that one. If the email is
            // taken by a contact with another external id, create without it.
            for with_email in [true, false] {
                let email = if with_email { email.clone() } else { None };
                sqlx::query(
                    "INSERT INTO contacts (id, project_id, email, email_key, external_id, subscribed, properties, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, '{}', $7, $7) ON CONFLICT DO NOTHING",
                )
                .bind(new_id())
                .bind(project_id)
                .bind(&email)
                .bind(email.as_deref().map(email_key))
                .bind(&external_id)
                .bind(false)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                if let Some(found) = find_contact(conn, project_id, &lookup).await? {
                    return Ok(Some(found.id));
                }
            }
            Err(contact_conflict())
        }

        /// First half of ingesting: claims idempotency keys and resolves (or
        /// creates) contacts in `tx`, and returns the rows still to insert.
        /// Writes happen only for idempotency keys and email/external-id identities.
        pub(crate) async fn prepare_events(
            conn: &mut Conn,
            project_id: &str,
            events: &[NewEvent],
            now: UnixMillis,
        ) -> StoreResult<(Vec<EventOutcome>, Vec<EventRow>)> {
            let mut outcomes = Vec::with_capacity(events.len());
            let mut rows: Vec<EventRow> = Vec::with_capacity(events.len());
            let mut resolved: std::collections::HashMap<&EventIdentity, Option<String>> = std::collections::HashMap::new();
            for (i, event) in events.iter().enumerate() {
                let id = new_id();
                if let Some(key) = &event.idempotency_key {
                    let claimed: Option<String> = sqlx::query_scalar(
                        "INSERT INTO event_idempotency (project_id, key, event_id, created_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (project_id, key) DO UPDATE SET event_id = excluded.event_id, \
                         created_at = excluded.created_at WHERE event_idempotency.created_at < $5 RETURNING event_id",
                    )
                    .bind(project_id)
                    .bind(key)
                    .bind(&id)
                    .bind(now)
                    .bind(now - IDEMPOTENCY_WINDOW_MS)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if claimed.is_none() {
                        let first: String = sqlx::query_scalar(
                            "SELECT event_id FROM event_idempotency WHERE project_id = $1 AND key = $2",
                        )
                        .bind(project_id)
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?;
                        outcomes.push(EventOutcome { id: first, duplicate: true });
                        continue;
                    }
                }
                let contact_id = match resolved.get(&event.identity) {
                    Some(known) => known.clone(),
                    None => {
                        let field = format!("events[{i}].contact_id");
                        let found = resolve_identity(conn, project_id, &event.identity, &field, now).await?;
                        resolved.insert(&event.identity, found.clone());
                        found
                    }
                };
                rows.push(EventRow::new(id.clone(), project_id, event, contact_id, now));
                outcomes.push(EventOutcome { id, duplicate: false });
            }
            Ok((outcomes, rows))
        }

        #[async_trait]
        impl Store for $store {
            fn backend_name(&self) -> &'static str {
                $name
            }

            async fn migrate(&self) -> StoreResult<Vec<String>> {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS keyflow_migrations \
                     (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                )
                .execute(&self.pool)
                .await?;
                let mut tx = self.begin_write().await?;
                Self::lock_migrations(&mut tx).await?;
                let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM keyflow_migrations")
                    .fetch_all(&mut *tx)
                    .await?;
                let mut names = Vec::new();
                for m in Self::MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
                    sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(|e| StoreError::Migration {
                        name: m.name.to_string(),
                        reason: e.to_string(),
                    })?;
                    if m.version == $crate::sql_store::CONTACT_EMAILS_NFC {
                        rekey_contact_emails(&mut tx).await?;
                    }
                    sqlx::query("INSERT INTO keyflow_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                        .bind(m.version)
                        .bind(m.name)
                        .bind(keyflow_core::Clock::now_ms(&keyflow_core::SystemClock))
                        .execute(&mut *tx)
                        .await?;
                    names.push(m.name.to_string());
                }
                tx.commit().await?;
                Ok(names)
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_workspace(&self, w: &Workspace) -> StoreResult<()> {
                sqlx::query("INSERT INTO workspaces (id, name, plan, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&w.id)
                    .bind(&w.name)
                    .bind(w.plan.as_str())
                    .bind(w.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| StoreError::from_write(e, "workspace"))?;
                Ok(())
            }

            async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>> {
                let row = sqlx::query("SELECT id, name, plan, created_at FROM workspaces WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| {
                    Ok(Workspace {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        plan: parse_plan(r.try_get("plan")?)?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .transpose()
            }

            async fn set_workspace_plan(&self, id: &str, plan: Plan, audit: &AuditEntry) -> StoreResult<Option<Plan>> {
                let mut tx = self.begin_write().await?;
                let previous: Option<String> = sqlx::query_scalar("SELECT plan FROM workspaces WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(previous) = previous else {
                    return Ok(None);
                };
                sqlx::query("UPDATE workspaces SET plan = $1 WHERE id = $2")
                    .bind(plan.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                write_audit(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(Some(parse_plan(&previous)?))
            }

            async fn create_project(&self, p: &Project) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO projects (id, workspace_id, name, environment, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&p.id)
                .bind(&p.workspace_id)
                .bind(&p.name)
                .bind(p.environment.as_str())
                .bind(p.created_at)
                .execute(&self.pool)
                .await
                .map_err(|e| StoreError::from_write(e, "project"))?;
                Ok(())
            }

            async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
                let row = sqlx::query(
                    "SELECT id, workspace_id, name, environment, created_at FROM projects WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(project_from_row).transpose()
            }

            async fn create_operator(
                &self,
                op: &Operator,
                m: &Membership,
                audit: Option<&AuditEntry>,
            ) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query("INSERT INTO operators (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&op.id)
                    .bind(&op.email)
                    .bind(&op.password_hash)
                    .bind(op.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_write(e, "an operator with this email"))?;
                sqlx::query(
                    "INSERT INTO memberships (workspace_id, operator_id, role, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&m.workspace_id)
                .bind(&m.operator_id)
                .bind(m.role.as_str())
                .bind(m.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, "membership"))?;
                if let Some(audit) = audit {
                    write_audit(&mut tx, audit).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn find_operator_by_email(&self, email: &str) -> StoreResult<Option<Operator>> {
                let row = sqlx::query("SELECT id, email, password_hash, created_at FROM operators WHERE email = $1")
                    .bind(email.to_lowercase())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(operator_from_row).transpose()
            }

            async fn get_membership(&self, workspace_id: &str, operator_id: &str) -> StoreResult<Option<Membership>> {
                let row = sqlx::query(
                    "SELECT workspace_id, operator_id, role, created_at FROM memberships \
                     WHERE workspace_id = $1 AND operator_id = $2",
                )
                .bind(workspace_id)
                .bind(operator_id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(membership_from_row).transpose()
            }

            async fn list_memberships(&self, operator_id: &str) -> StoreResult<Vec<Membership>> {
                let rows = sqlx::query(
                    "SELECT workspace_id, operator_id, role, created_at FROM memberships \
                     WHERE operator_id = $1 ORDER BY created_at",
                )
                .bind(operator_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(membership_from_row).collect()
            }

            async fn get_operator(&self, id: &str) -> StoreResult<Option<Operator>> {
                let row = sqlx::query("SELECT id, email, password_hash, created_at FROM operators WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(operator_from_row).transpose()
            }

            async fn list_members(&self, workspace_id: &str) -> StoreResult<Vec<(Operator, Membership)>> {
                let rows = sqlx::query(
                    "SELECT o.id, o.email, o.password_hash, o.created_at AS o_created_at, m.workspace_id, \
                     m.operator_id, m.role, m.created_at FROM memberships m JOIN operators o ON o.id = m.operator_id \
                     WHERE m.workspace_id = $1 ORDER BY m.created_at, o.email",
                )
                .bind(workspace_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let operator = Operator {
                            id: r.try_get("id")?,
                            email: r.try_get("email")?,
                            password_hash: r.try_get("password_hash")?,
                            created_at: r.try_get("o_created_at")?,
                        };
                        Ok((operator, membership_from_row(r)?))
                    })
                    .collect()
            }

            async fn set_member_role(
                &self,
                workspace_id: &str,
                operator_id: &str,
                role: keyflow_core::Role,
                audit: &AuditEntry,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                Self::lock_workspace(&mut tx, workspace_id).await?;
                // The last owner cannot be demoted: checked in the statement
                // itself, not only by the caller's earlier read.
                let done = sqlx::query(
                    "UPDATE memberships SET role = $1 WHERE workspace_id = $2 AND operator_id = $3 \
                     AND ($1 = 'owner' OR role <> 'owner' OR \
                     (SELECT COUNT(*) FROM memberships o WHERE o.workspace_id = $2 AND o.role = 'owner') > 1)",
                )
                .bind(role.as_str())
                .bind(workspace_id)
                .bind(operator_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                commit_if(tx, done, audit).await
            }

            async fn remove_member(&self, workspace_id: &str, operator_id: &str, audit: &AuditEntry) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                Self::lock_workspace(&mut tx, workspace_id).await?;
                let done = sqlx::query(
                    "DELETE FROM memberships WHERE workspace_id = $1 AND operator_id = $2 AND (role <> 'owner' OR \
                     (SELECT COUNT(*) FROM memberships o WHERE o.workspace_id = $1 AND o.role = 'owner') > 1)",
                )
                .bind(workspace_id)
                .bind(operator_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                commit_if(tx, done, audit).await
            }

            async fn count_active_keys(&self, workspace_id: &str, now: UnixMillis) -> StoreResult<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM api_keys k JOIN projects p ON p.id = k.project_id \
                     WHERE p.workspace_id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
                )
                .bind(workspace_id)
                .bind(now)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn project_settings(&self, project_id: &str) -> StoreResult<ProjectSettings> {
                let row = sqlx::query("SELECT rate_limit, metrics_cache_ttl_minutes FROM project_settings WHERE project_id = $1")
                    .bind(project_id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(r) = row else { return Ok(ProjectSettings::default()) };
                let rate_limit: Option<String> = r.try_get("rate_limit")?;
                Ok(ProjectSettings {
                    rate_limit: rate_limit
                        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("rate_limit: {e}"))))
                        .transpose()?,
                    metrics_cache_ttl_minutes: r.try_get("metrics_cache_ttl_minutes")?,
                })
            }

            async fn set_project_settings(&self, project_id: &str, settings: &ProjectSettings, audit: &AuditEntry) -> StoreResult<()> {
                let rate_limit = settings
                    .rate_limit
                    .map(|rl| serde_json::to_string(&rl).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()?;
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO project_settings (project_id, rate_limit, metrics_cache_ttl_minutes) VALUES ($1, $2, $3) \
                     ON CONFLICT (project_id) DO UPDATE SET rate_limit = excluded.rate_limit, \
                     metrics_cache_ttl_minutes = excluded.metrics_cache_ttl_minutes",
                )
                .bind(project_id)
                .bind(rate_limit)
                .bind(settings.metrics_cache_ttl_minutes)
                .execute(&mut *tx)
                .await?;
                commit_if(tx, true, audit).await.map(|_| ())
            }

            async fn metrics_credential(&self, project_id: &str) -> StoreResult<Option<MetricsCredential>> {
                let row = sqlx::query(
                    "SELECT project_id, id, secret_digest, ip_allowlist, created_at, last_used_at \
                     FROM metrics_credentials WHERE project_id = $1",
                )
                .bind(project_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let digest: String = row.try_get("secret_digest")?;
                let allowlist: String = row.try_get("ip_allowlist")?;
                Ok(Some(MetricsCredential {
                    project_id: row.try_get("project_id")?,
                    id: row.try_get("id")?,
                    secret_digest: keyflow_core::KeyDigest::from_hex(&digest)
                        .ok_or_else(|| StoreError::Corrupt("metrics credential digest".into()))?,
                    ip_allowlist: $crate::sql_store::from_json("ip_allowlist", &allowlist)?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                }))
            }

            async fn put_metrics_credential(&self, c: &MetricsCredential, audit: &AuditEntry) -> StoreResult<MetricsCredential> {
                let allowlist = serde_json::to_string(&c.ip_allowlist).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mut tx = self.begin_write().await?;
                // A rotation keeps the stored allow-list (never the caller's
                // copy, which a concurrent change may have made stale).
                let stored: String = sqlx::query_scalar(
                    "INSERT INTO metrics_credentials (project_id, id, secret_digest, ip_allowlist, created_at, last_used_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (project_id) DO UPDATE SET id = excluded.id, \
                     secret_digest = excluded.secret_digest, created_at = excluded.created_at, last_used_at = NULL \
                     RETURNING ip_allowlist",
                )
                .bind(&c.project_id)
                .bind(&c.id)
                .bind(c.secret_digest.to_hex())
                .bind(allowlist)
                .bind(c.created_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, "metrics credential"))?;
                commit_if(tx, true, audit).await?;
                Ok(MetricsCredential {
                    ip_allowlist: $crate::sql_store::from_json("ip_allowlist", &stored)?,
                    last_used_at: None,
                    ..c.clone()
                })
            }

            async fn update_metrics_credential(
                &self,
                project_id: &str,
                ip_allowlist: Option<&[keyflow_core::IpRule]>,
                cache_ttl_minutes: Option<i64>,
                audit: &AuditEntry,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                // Write first: on SQLite a transaction that starts by reading
                // cannot wait for the write lock (it fails with SQLITE_BUSY).
                let allowlist = ip_allowlist
                    .map(|rules| serde_json::to_string(rules).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .transpose()?;
                let exists = sqlx::query(
                    "UPDATE metrics_credentials SET ip_allowlist = COALESCE($2, ip_allowlist) WHERE project_id = $1",
                )
                .bind(project_id)
                .bind(allowlist)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !exists {
                    return Ok(false);
                }
                if let Some(ttl) = cache_ttl_minutes {
                    // The TTL is a project setting (also on /settings); keep its rate limit.
                    sqlx::query(
                        "INSERT INTO project_settings (project_id, rate_limit, metrics_cache_ttl_minutes) VALUES ($1, NULL, $2) \
                         ON CONFLICT (project_id) DO UPDATE SET metrics_cache_ttl_minutes = excluded.metrics_cache_ttl_minutes",
                    )
                    .bind(project_id)
                    .bind(ttl)
                    .execute(&mut *tx)
                    .await?;
                }
                commit_if(tx, true, audit).await
            }

            async fn count_operators(&self) -> StoreResult<i64> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM operators").fetch_one(&self.pool).await?)
            }

            async fn list_projects(&self, workspace_id: &str) -> StoreResult<Vec<Project>> {
                let rows = sqlx::query(
                    "SELECT id, workspace_id, name, environment, created_at FROM projects \
                     WHERE workspace_id = $1 ORDER BY id",
                )
                .bind(workspace_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(project_from_row).collect()
            }

            async fn create_session(&self, session: &Session, audit: &[AuditEntry]) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO sessions (id_hash, operator_id, csrf_token, created_at, last_seen_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&session.id_hash)
                .bind(&session.operator_id)
                .bind(&session.csrf_token)
                .bind(session.created_at)
                .bind(session.last_seen_at)
                .execute(&mut *tx)
                .await?;
                for entry in audit {
                    write_audit(&mut tx, entry).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
                let row = sqlx::query(
                    "SELECT id_hash, operator_id, csrf_token, created_at, last_seen_at FROM sessions WHERE id_hash = $1",
                )
                .bind(id_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(Session {
                        id_hash: r.try_get("id_hash")?,
                        operator_id: r.try_get("operator_id")?,
                        csrf_token: r.try_get("csrf_token")?,
                        created_at: r.try_get("created_at")?,
                        last_seen_at: r.try_get("last_seen_at")?,
                    })
                })
                .transpose()
            }

            async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StoreResult<()> {
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                    .bind(at)
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn insert_api_key(&self, key: &ApiKey, audit: &AuditEntry) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                write_key(&mut tx, key).await?;
                write_audit(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_api_key(&self, project_id: &str, id: &str) -> StoreResult<Option<ApiKey>> {
                let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.project_id = $1 AND k.id = $2");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(project_id).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(key_from_row).transpose()
            }

            async fn find_key_for_auth(&self, digest: &KeyDigest) -> StoreResult<Option<AuthKey>> {
                if let Some(direct) = self.read_key_for_auth(digest) {
                    return direct;
                }
                let sql = format!(
                    "SELECT {KEY_COLUMNS}, p.workspace_id AS p_workspace_id, p.environment AS p_environment \
                     FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.digest = $1"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(digest.to_hex()).fetch_optional(&self.pool).await?;
                row.map(|r| {
                    Ok(AuthKey {
                        key: key_from_row(&r)?,
                        workspace_id: r.try_get("p_workspace_id")?,
                        environment: parse_environment(r.try_get("p_environment")?)?,
                    })
                })
                .transpose()
            }

            async fn list_api_keys(
                &self,
                project_id: &str,
                include_revoked: bool,
                page: &Page,
            ) -> StoreResult<Vec<ApiKey>> {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.project_id = $1 \
                     AND ($2 OR k.revoked_at IS NULL) AND ($3 IS NULL OR k.id < $3) \
                     ORDER BY k.id DESC LIMIT $4"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(project_id)
                    .bind(include_revoked)
                    .bind(&page.cursor)
                    .bind(page_limit(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(key_from_row).collect()
            }

            async fn update_api_key_settings(
                &self,
                project_id: &str,
                id: &str,
                read: &ApiKey,
                s: &KeySettings,
                audit: &AuditEntry,
            ) -> StoreResult<bool> {
                let columns = settings_columns(s)?;
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE api_keys SET name = $1, expires_at = $2, ip_allowlist = $3, allowed_events = $4, \
                     allowed_origins = $5, rate_limit = $6 \
                     WHERE project_id = $7 AND id = $8 AND revoked_at IS NULL \
                     AND expires_at IS NOT DISTINCT FROM $9 AND rolled_at IS NOT DISTINCT FROM $10",
                )
                .bind(&s.name)
                .bind(s.expires_at)
                .bind(columns.ip_allowlist)
                .bind(columns.allowed_events)
                .bind(columns.allowed_origins)
                .bind(columns.rate_limit)
                .bind(project_id)
                .bind(id)
                .bind(read.settings.expires_at)
                .bind(read.rolled_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                commit_if(tx, done, audit).await
            }

            async fn revoke_api_key(
                &self,
                project_id: &str,
                id: &str,
                at: UnixMillis,
                audit: &AuditEntry,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(project_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                commit_if(tx, done, audit).await
            }

            async fn roll_api_key(
                &self,
                project_id: &str,
                old_id: &str,
                old_expires_at: UnixMillis,
                new_key: &ApiKey,
                audit: &AuditEntry,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                // An earlier expiry the key already had is kept.
                let done = sqlx::query(
                    "UPDATE api_keys SET expires_at = CASE WHEN expires_at IS NOT NULL AND expires_at < $1 \
                     THEN expires_at ELSE $1 END, rolled_at = $4 \
                     WHERE project_id = $2 AND id = $3 AND revoked_at IS NULL AND rolled_at IS NULL",
                )
                .bind(old_expires_at)
                .bind(project_id)
                .bind(old_id)
                .bind(new_key.created_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if done {
                    write_key(&mut tx, new_key).await?;
                    write_audit(&mut tx, audit).await?;
                    tx.commit().await?;
                }
                Ok(done)
            }

            async fn record_key_usage(&self, usage: &[KeyUsage]) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                for chunk in usage.chunks(USAGE_CHUNK) {
                    let sql = usage_update_sql(chunk.len());
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for u in chunk {
                        query = query.bind(&u.key_id).bind(u.last_used_at).bind(&u.ip);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn add_daily_usage(&self, rows: &[(String, DailyUsage)]) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                for (key_id, u) in rows {
                    sqlx::query(
                        "INSERT INTO key_usage_daily (key_id, day, requests, errors, rate_limited) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id, day) DO UPDATE SET \
                         requests = key_usage_daily.requests + excluded.requests, \
                         errors = key_usage_daily.errors + excluded.errors, \
                         rate_limited = key_usage_daily.rate_limited + excluded.rate_limited",
                    )
                    .bind(key_id)
                    .bind(u.day)
                    .bind(u.requests)
                    .bind(u.errors)
                    .bind(u.rate_limited)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn daily_usage(&self, key_id: &str, since_day: i64) -> StoreResult<Vec<DailyUsage>> {
                let rows = sqlx::query(
                    "SELECT day, requests, errors, rate_limited FROM key_usage_daily \
                     WHERE key_id = $1 AND day >= $2 ORDER BY day",
                )
                .bind(key_id)
                .bind(since_day)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DailyUsage {
                            day: r.try_get("day")?,
                            requests: r.try_get("requests")?,
                            errors: r.try_get("errors")?,
                            rate_limited: r.try_get("rate_limited")?,
                        })
                    })
                    .collect()
            }

            async fn insert_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                write_audit(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn search_audit(
                &self,
                workspace_id: &str,
                project_id: &str,
                filter: &AuditFilter,
                page: &Page,
            ) -> StoreResult<Vec<AuditEntry>> {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE workspace_id = $1 \
                     AND (project_id = $2 OR project_id IS NULL) AND ($3 IS NULL OR id < $3) \
                     AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR actor_id = $6 OR actor_name = $6) \
                     ORDER BY id DESC LIMIT $4"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(workspace_id)
                    .bind(project_id)
                    .bind(&page.cursor)
                    .bind(page_limit(page.limit))
                    .bind(&filter.action)
                    .bind(&filter.actor)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(audit_from_row).collect()
            }
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
                    match upsert_contact_in(&mut tx, project_id, changes, actions, audit, now).await {
                        Ok(outcome) => {
                            tx.commit().await?;
                            return Ok(outcome);
                        }
                        Err(StoreError::Conflict(_)) if attempt == 0 => attempt += 1,
                        Err(e) => return Err(e),
                    }
                }
            }

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
                    let mut item = sqlx::Connection::begin(&mut *tx).await?;
                    match upsert_contact_in(&mut item, project_id, changes, UpsertActions::CONTACT, audit, now).await {
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
                tx.commit().await?;
                Ok(results)
            }

            async fn get_contact(&self, project_id: &str, lookup: &ContactLookup) -> StoreResult<Option<Contact>> {
                // One statement needs no transaction (BEGIN and COMMIT would be
                // two more round trips on the hottest read).
                if let Some(direct) = self.read_contact(project_id, lookup) {
                    return direct;
                }
                let mut conn = self.pool.acquire().await?;
                find_contact(&mut conn, project_id, lookup).await
            }

            async fn update_contact(
                &self,
                project_id: &str,
                lookup: &ContactLookup,
                changes: &ContactChanges,
                action: AuditAction,
                audit: Option<&AuditContext>,
                now: UnixMillis,
            ) -> StoreResult<Option<Contact>> {
                let mut tx = self.begin_write().await?;
                let Some(current) = find_contact(&mut tx, project_id, lookup).await? else {
                    return Ok(None);
                };
                let fields = apply_changes(Some(&current.fields), changes).map_err(StoreError::Invalid)?;
                let contact = Contact { fields, updated_at: now, ..current };
                write_contact(&mut tx, &contact, true).await?;
                audit_contact(&mut tx, &contact, action, audit, now).await?;
                tx.commit().await?;
                Ok(Some(contact))
            }

            async fn delete_contact(
                &self,
                project_id: &str,
                id: &str,
                audit: Option<&AuditContext>,
                now: UnixMillis,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let Some(contact) = find_contact(&mut tx, project_id, &ContactLookup::Id(id.to_string())).await? else {
                    return Ok(false);
                };
                sqlx::query("UPDATE events SET contact_id = NULL WHERE project_id = $1 AND contact_id = $2")
                    .bind(project_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM contacts WHERE project_id = $1 AND id = $2")
                    .bind(project_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                audit_contact(&mut tx, &contact, AuditAction::ContactDeleted, audit, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn list_contacts(&self, project_id: &str, subscribed_only: bool, page: &Page) -> StoreResult<Vec<Contact>> {
                let sql = format!(
                    "SELECT {CONTACT_COLUMNS} FROM contacts WHERE project_id = $1 AND (NOT $2 OR subscribed = $3) \
                     AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(project_id)
                    .bind(subscribed_only)
                    .bind(true)
                    .bind(&page.cursor)
                    .bind(page_limit(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(contact_from_row).collect()
            }

            async fn ingest_events(&self, project_id: &str, events: Vec<NewEvent>, now: UnixMillis) -> StoreResult<Vec<EventOutcome>> {
                self.ingest(project_id, events, now).await
            }

            async fn list_events(&self, project_id: &str, filter: &EventFilter, page: &Page) -> StoreResult<Vec<Event>> {
                let sql = list_events_sql(filter, page.cursor.is_some(), $name == "sqlite");
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(project_id);
                // Bound in the order `list_events_sql` numbers them.
                for text in [&filter.contact_id, &filter.name].into_iter().flatten() {
                    query = query.bind(text);
                }
                for time in [filter.since, filter.until].into_iter().flatten() {
                    query = query.bind(time);
                }
                if let Some(cursor) = &page.cursor {
                    query = query.bind(cursor);
                }
                let rows = query.bind(page_limit(page.limit)).fetch_all(&self.pool).await?;
                rows.iter().map(event_from_row).collect()
            }
        }
    };
}

pub(crate) use impl_sql_store;

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

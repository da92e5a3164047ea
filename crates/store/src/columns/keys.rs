//! The columns of API keys and their usage.

use keyflow_core::ip::IpRule;
use keyflow_core::key_settings::KeySettings;
use keyflow_core::{KeyDigest, KeyType, RateLimit, ScopeSet};

use super::{actor_from_columns, from_json, parse_environment, to_json};
use crate::{ApiKey, AuthKey, DailyUsage, StoreError, StoreResult};

pub(crate) const KEY_COLUMNS: &str = "k.id, k.project_id, k.name, k.key_type, k.scopes, k.prefix, k.digest, \
     k.created_at, k.created_by_type, k.created_by_id, k.created_by_name, k.created_by_prefix, k.expires_at, \
     k.revoked_at, k.last_used_at, k.last_used_ip, k.ip_allowlist, k.allowed_events, k.allowed_origins, k.rate_limit, k.rolled_at";

pub(crate) const INSERT_KEY: &str = "INSERT INTO api_keys (id, project_id, name, key_type, scopes, prefix, digest, \
     created_at, created_by_type, created_by_id, created_by_name, created_by_prefix, expires_at, revoked_at, \
     last_used_at, last_used_ip, ip_allowlist, allowed_events, allowed_origins, rate_limit) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

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

/// The JSON-encoded settings columns of a key.
pub(crate) struct SettingsColumns {
    pub ip_allowlist: String,
    pub allowed_events: Option<String>,
    pub allowed_origins: Option<String>,
    pub rate_limit: Option<String>,
}

pub(crate) fn settings_columns(s: &KeySettings) -> StoreResult<SettingsColumns> {
    Ok(SettingsColumns {
        ip_allowlist: to_json(&s.ip_allowlist)?,
        allowed_events: s.allowed_events.as_ref().map(to_json).transpose()?,
        allowed_origins: s.allowed_origins.as_ref().map(to_json).transpose()?,
        rate_limit: s.rate_limit.as_ref().map(to_json).transpose()?,
    })
}

pub(crate) fn scopes_to_column(scopes: ScopeSet) -> String {
    scopes.to_strings().join(" ")
}

/// The raw columns of an `api_keys` row ([`KEY_COLUMNS`]).
#[derive(sqlx::FromRow)]
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

/// A key with its project's workspace and environment ([`KEY_COLUMNS`]
/// plus `p_workspace_id`, `p_environment`).
#[derive(sqlx::FromRow)]
pub(crate) struct AuthKeyRow {
    #[sqlx(flatten)]
    pub key: KeyRow,
    pub p_workspace_id: String,
    pub p_environment: String,
}

impl AuthKeyRow {
    pub(crate) fn into_model(self) -> StoreResult<AuthKey> {
        Ok(AuthKey {
            key: self.key.into_model()?,
            workspace_id: self.p_workspace_id,
            environment: parse_environment(&self.p_environment)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DailyUsageRow {
    pub day: i64,
    pub requests: i64,
    pub errors: i64,
    pub rate_limited: i64,
}

impl From<DailyUsageRow> for DailyUsage {
    fn from(r: DailyUsageRow) -> Self {
        DailyUsage {
            day: r.day,
            requests: r.requests,
            errors: r.errors,
            rate_limited: r.rate_limited,
        }
    }
}

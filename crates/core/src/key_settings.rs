//! Validation of the per-key settings of SPEC §2 (create and PATCH bodies).
//! Pure: it takes the decoded request and `now`, and returns either the
//! settings to store or every field error at once.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer};

use crate::clock::UnixMillis;
use crate::error::FieldError;
use crate::ip::{IpRule, parse_network};
use crate::keys::KeyType;
use crate::rate_limit::RateLimit;
use crate::scopes::ScopeSet;
use crate::timefmt::parse_rfc3339;

pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_ALLOWLIST_ROWS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 200;
pub const MAX_ALLOWED_EVENTS: usize = 1000;
pub const MAX_ORIGINS: usize = 100;

#[derive(Debug, Clone, Deserialize)]
pub struct IpRuleInput {
    pub cidr: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitInput {
    pub limit: i64,
    pub period_seconds: i64,
}

/// `POST /v1/keys` body. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateKeyRequest {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub key_type: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub ip_allowlist: Option<Vec<IpRuleInput>>,
    pub allowed_events: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitInput>,
}

/// `PATCH /v1/keys/{id}` body: an absent field is unchanged, `null` clears.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PatchKeyRequest {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub ip_allowlist: Option<Option<Vec<IpRuleInput>>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_events: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_origins: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitInput>>,
    /// Scopes and type are fixed at creation; their mere presence is a 422.
    #[serde(default, deserialize_with = "present")]
    pub scopes: Option<Option<serde_json::Value>>,
    #[serde(default, rename = "type", deserialize_with = "present")]
    pub key_type: Option<Option<serde_json::Value>>,
}

/// Distinguishes "field present (maybe null)" from "field absent".
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The mutable settings of a key, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySettings {
    pub name: String,
    pub expires_at: Option<UnixMillis>,
    pub ip_allowlist: Vec<IpRule>,
    pub allowed_events: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub rate_limit: Option<RateLimit>,
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeySpec {
    pub key_type: KeyType,
    pub scopes: ScopeSet,
    pub settings: KeySettings,
    /// What the request named; the rest may be narrowed or inherited from
    /// a restricted creator.
    pub given: GivenSettings,
}

/// Which optional fields a create request named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenSettings {
    pub scopes: bool,
    pub ip_allowlist: bool,
    pub expires_at: bool,
    pub allowed_events: bool,
    pub allowed_origins: bool,
    pub rate_limit: bool,
}

impl GivenSettings {
    /// Everything named (a spec built in code, not from a request).
    pub const ALL: GivenSettings = GivenSettings {
        scopes: true,
        ip_allowlist: true,
        expires_at: true,
        allowed_events: true,
        allowed_origins: true,
        rate_limit: true,
    };

    pub fn has(&self, r: crate::restrictions::Restriction) -> bool {
        use crate::restrictions::Restriction;
        match r {
            Restriction::IpAllowlist => self.ip_allowlist,
            Restriction::ExpiresAt => self.expires_at,
            Restriction::AllowedEvents => self.allowed_events,
            Restriction::AllowedOrigins => self.allowed_origins,
            Restriction::RateLimit => self.rate_limit,
        }
    }
}

/// Collects field errors so one response reports all of them.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
}

pub fn validate_create(
    req: &CreateKeyRequest,
    now: UnixMillis,
) -> Result<NewKeySpec, Vec<FieldError>> {
    let mut errors = Errors::default();
    let name = check_name(req.name.as_deref(), &mut errors);
    let key_type = match req.key_type.as_deref() {
        None => {
            errors.add("type", "type is required: secret, client or read_only");
            None
        }
        Some(t) => {
            let parsed = KeyType::parse_api_type(t);
            if parsed.is_none() {
                errors.add(
                    "type",
                    format!("unknown key type {t:?}: use secret, client or read_only"),
                );
            }
            parsed
        }
    };
    let mut scopes = ScopeSet::EMPTY;
    if let Some(key_type) = key_type {
        scopes = match &req.scopes {
            None => ScopeSet::default_for(key_type),
            Some(names) => check_scopes(names, key_type, &mut errors),
        };
    }
    let settings = KeySettings {
        name,
        expires_at: req
            .expires_at
            .as_deref()
            .and_then(|t| check_expiry(t, now, &mut errors)),
        ip_allowlist: req
            .ip_allowlist
            .as_deref()
            .map(|rows| check_allowlist(rows, &mut errors))
            .unwrap_or_default(),
        allowed_events: req
            .allowed_events
            .as_deref()
            .map(|names| check_event_names(names, &mut errors)),
        allowed_origins: req
            .allowed_origins
            .as_deref()
            .map(|origins| check_origins(origins, key_type, &mut errors)),
        rate_limit: req
            .rate_limit
            .as_ref()
            .and_then(|rl| check_rate_limit(rl, &mut errors)),
    };
    match key_type {
        Some(key_type) if errors.0.is_empty() => Ok(NewKeySpec {
            key_type,
            scopes,
            settings,
            given: GivenSettings {
                scopes: req.scopes.is_some(),
                ip_allowlist: req.ip_allowlist.is_some(),
                expires_at: req.expires_at.is_some(),
                allowed_events: req.allowed_events.is_some(),
                allowed_origins: req.allowed_origins.is_some(),
                rate_limit: req.rate_limit.is_some(),
            },
        }),
        _ => Err(errors.0),
    }
}

/// Applies a PATCH to the current settings of a key of `key_type`.
pub fn apply_patch(
    current: &KeySettings,
    key_type: KeyType,
    patch: &PatchKeyRequest,
    now: UnixMillis,
) -> Result<KeySettings, Vec<FieldError>> {
    let mut errors = Errors::default();
    if patch.scopes.is_some() {
        errors.add(
            "scopes",
            "scopes are fixed at creation; create a new key and revoke this one",
        );
    }
    if patch.key_type.is_some() {
        errors.add(
            "type",
            "the type is fixed at creation; create a new key and revoke this one",
        );
    }
    let mut next = current.clone();
    if let Some(name) = &patch.name {
        next.name = check_name(name.as_deref(), &mut errors);
    }
    if let Some(expiry) = &patch.expires_at {
        next.expires_at = expiry
            .as_deref()
            .and_then(|t| check_expiry(t, now, &mut errors));
    }
    if let Some(rows) = &patch.ip_allowlist {
        next.ip_allowlist = rows
            .as_deref()
            .map(|rows| check_allowlist(rows, &mut errors))
            .unwrap_or_default();
    }
    if let Some(events) = &patch.allowed_events {
        next.allowed_events = events.as_deref().map(|n| check_event_names(n, &mut errors));
    }
    if let Some(origins) = &patch.allowed_origins {
        next.allowed_origins = origins
            .as_deref()
            .map(|o| check_origins(o, Some(key_type), &mut errors));
    }
    if let Some(rl) = &patch.rate_limit {
        next.rate_limit = rl.as_ref().and_then(|rl| check_rate_limit(rl, &mut errors));
    }
    if errors.0.is_empty() {
        Ok(next)
    } else {
        Err(errors.0)
    }
}

fn check_name(name: Option<&str>, errors: &mut Errors) -> String {
    let Some(name) = name else {
        errors.add("name", "name is required");
        return String::new();
    };
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 {
        errors.add("name", "name must not be empty");
    } else if chars > MAX_NAME_CHARS {
        errors.add(
            "name",
            format!("name must be at most {MAX_NAME_CHARS} characters"),
        );
    } else if crate::text::has_forbidden_name_chars(trimmed) {
        errors.add(
            "name",
            "name must not contain control or bidirectional formatting characters",
        );
    }
    trimmed.to_string()
}

fn check_scopes(names: &[String], key_type: KeyType, errors: &mut Errors) -> ScopeSet {
    let mut set = ScopeSet::EMPTY;
    let allowed = ScopeSet::allowed_for(key_type);
    for (i, name) in names.iter().enumerate() {
        match crate::scopes::Scope::parse(name) {
            None => errors.add(format!("scopes[{i}]"), format!("unknown scope {name:?}")),
            Some(scope) if !allowed.contains(scope) => errors.add(
                format!("scopes[{i}]"),
                format!("a {} key may not hold {scope}", key_type.as_str()),
            ),
            Some(scope) => set = set.with(scope),
        }
    }
    if names.is_empty() {
        errors.add(
            "scopes",
            "a key needs at least one scope (omit the field for the type's default)",
        );
    }
    set
}

fn check_expiry(text: &str, now: UnixMillis, errors: &mut Errors) -> Option<UnixMillis> {
    match parse_rfc3339(text) {
        None => {
            errors.add(
                "expires_at",
                "expires_at must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z",
            );
            None
        }
        Some(t) if t <= now => {
            errors.add("expires_at", "expires_at must be in the future");
            None
        }
        Some(t) => Some(t),
    }
}

/// An IP allow-list on its own (the metrics credential has one too): the same
/// rules and field paths (`ip_allowlist[i].cidr`) as a key's.
pub fn validate_allowlist(rows: &[IpRuleInput]) -> Result<Vec<IpRule>, Vec<FieldError>> {
    let mut errors = Errors::default();
    let rules = check_allowlist(rows, &mut errors);
    if errors.0.is_empty() {
        Ok(rules)
    } else {
        Err(errors.0)
    }
}

/// Metrics cache TTL bounds in minutes (SPEC §4: at least 5; at most a week).
pub const METRICS_CACHE_TTL_MINUTES: std::ops::RangeInclusive<i64> = 5..=10_080;

fn check_allowlist(rows: &[IpRuleInput], errors: &mut Errors) -> Vec<IpRule> {
    if rows.len() > MAX_ALLOWLIST_ROWS {
        errors.add(
            "ip_allowlist",
            format!("at most {MAX_ALLOWLIST_ROWS} entries"),
        );
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Some(net) = parse_network(&row.cidr) else {
            errors.add(
                format!("ip_allowlist[{i}].cidr"),
                format!("{:?} is not an IPv4/IPv6 address or CIDR", row.cidr),
            );
            continue;
        };
        // `10.0.0.1/8` would silently mean all of 10.0.0.0/8: say so.
        if crate::ip::has_host_bits(&row.cidr) {
            errors.add(
                format!("ip_allowlist[{i}].cidr"),
                format!(
                    "{} has host bits set: it would mean the network {net}; write {net} (or the address alone)",
                    row.cidr.trim()
                ),
            );
            continue;
        }
        if !seen.insert(net) {
            errors.add(
                format!("ip_allowlist[{i}].cidr"),
                format!("{net} is listed twice"),
            );
            continue;
        }
        let description = row.description.as_deref().unwrap_or("").trim().to_string();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            errors.add(
                format!("ip_allowlist[{i}].description"),
                format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            );
        }
        out.push(IpRule {
            cidr: net.to_string(),
            description,
        });
    }
    out
}

/// Event names NFC-normalised, as the ingest path compares them.
fn check_event_names(names: &[String], errors: &mut Errors) -> Vec<String> {
    if names.len() > MAX_ALLOWED_EVENTS {
        errors.add(
            "allowed_events",
            format!("at most {MAX_ALLOWED_EVENTS} names"),
        );
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match crate::events::check_event_name(&format!("allowed_events[{i}]"), name) {
            Err(e) => errors.0.push(e),
            Ok(name) if !out.contains(&name) => out.push(name),
            Ok(_) => {}
        }
    }
    out
}

fn check_origins(
    origins: &[String],
    key_type: Option<KeyType>,
    errors: &mut Errors,
) -> Vec<String> {
    if key_type.is_some_and(|t| t != KeyType::Client) {
        errors.add(
            "allowed_origins",
            "allowed_origins applies to client keys only",
        );
        return Vec::new();
    }
    if origins.len() > MAX_ORIGINS {
        errors.add("allowed_origins", format!("at most {MAX_ORIGINS} origins"));
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, origin) in origins.iter().enumerate() {
        match normalise_origin(origin) {
            Some(o) if !out.contains(&o) => out.push(o),
            Some(_) => {}
            None => errors.add(
                format!("allowed_origins[{i}]"),
                format!("{origin:?} is not an origin like https://app.example.com"),
            ),
        }
    }
    out
}

/// `scheme://host[:port]`, lower-cased, nothing after the authority.
pub fn normalise_origin(origin: &str) -> Option<String> {
    let lower = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let valid_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if rest.is_empty() || !rest.chars().all(valid_char) {
        return None;
    }
    Some(format!("{scheme}://{rest}"))
}

fn check_rate_limit(input: &RateLimitInput, errors: &mut Errors) -> Option<RateLimit> {
    let limit = u32::try_from(input.limit).ok();
    let period = u32::try_from(input.period_seconds).ok();
    if let (Some(limit), Some(period_seconds)) = (limit, period) {
        let rl = RateLimit {
            limit,
            period_seconds,
        };
        if rl.is_valid() {
            return Some(rl);
        }
    }
    errors.add(
        "rate_limit",
        format!(
            "limit must be 1..={} and period_seconds 1..={}",
            RateLimit::MAX_LIMIT,
            RateLimit::MAX_PERIOD_SECONDS
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> CreateKeyRequest {
        serde_json::from_value(json).unwrap()
    }
    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_by_type() {
        let spec =
            validate_create(&req(serde_json::json!({"name": "ci", "type": "client"})), 0).unwrap();
        assert_eq!(spec.scopes.to_strings(), vec!["events:write"]);
        assert!(spec.settings.ip_allowlist.is_empty());
    }

    #[test]
    fn reports_every_bad_field() {
        let errors = validate_create(
            &req(serde_json::json!({
                "name": "x".repeat(65), "type": "read_only", "scopes": ["keys:read", "bogus"],
                "expires_at": "2000-01-01T00:00:00Z",
                "ip_allowlist": [{"cidr": "10.0.0.0/33"}, {"cidr": "1.2.3.4"}, {"cidr": "1.2.3.4/32"}],
                "allowed_origins": ["https://a.example"],
                "rate_limit": {"limit": 0, "period_seconds": 60}
            })),
            2_000_000_000_000,
        )
        .unwrap_err();
        assert_eq!(
            fields(errors),
            vec![
                "name",
                "scopes[0]",
                "scopes[1]",
                "expires_at",
                "ip_allowlist[0].cidr",
                "ip_allowlist[2].cidr",
                "allowed_origins",
                "rate_limit"
            ]
        );
    }

    #[test]
    fn patch_rejects_scopes_and_clears_with_null() {
        let current = KeySettings {
            name: "a".into(),
            expires_at: Some(5_000),
            rate_limit: Some(RateLimit::per_minute(5)),
            ..Default::default()
        };
        let patch: PatchKeyRequest =
            serde_json::from_value(serde_json::json!({"expires_at": null, "name": "b"})).unwrap();
        let next = apply_patch(&current, KeyType::Secret, &patch, 0).unwrap();
        assert_eq!(next.expires_at, None);
        assert_eq!(next.name, "b");
        assert_eq!(next.rate_limit, current.rate_limit);
        let patch: PatchKeyRequest =
            serde_json::from_value(serde_json::json!({"scopes": null})).unwrap();
        assert_eq!(
            fields(apply_patch(&current, KeyType::Secret, &patch, 0).unwrap_err()),
            vec!["scopes"]
        );
    }

    #[test]
    fn origins() {
        assert_eq!(
            normalise_origin("HTTPS://App.Example.com/"),
            Some("https://app.example.com".into())
        );
        assert_eq!(
            normalise_origin("http://localhost:3000"),
            Some("http://localhost:3000".into())
        );
        assert_eq!(normalise_origin("https://a.com/path"), None);
        assert_eq!(normalise_origin("ftp://a.com"), None);
    }
}

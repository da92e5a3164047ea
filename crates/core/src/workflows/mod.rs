//! Workflow definitions (SPEC §10): a trigger and a list of steps, read from
//! the JSON a client sends and checked as a whole, every problem reported
//! with its path (`steps[2].then[0].url`). What is stored is the checked
//! form, serialised back; the runner reads only that.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::FieldError;

pub mod conditions;
pub mod runs;
pub mod templates;

pub use conditions::{Condition, Facts, Op, all_hold};

/// Steps in a definition at most, nested branches included.
pub const MAX_STEPS: usize = 50;
/// Branches inside branches at most.
pub const MAX_BRANCH_DEPTH: usize = 5;
/// The longest `wait`: 90 days.
pub const MAX_WAIT_SECONDS: u64 = 90 * 86_400;
/// A workflow's name: 1 to 64 characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Headers of one webhook step at most, and their size.
pub const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// A webhook URL's length at most.
const MAX_URL_BYTES: usize = 2048;

/// Keeps a present JSON `null` apart from an absent field.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Draft,
    Active,
    Paused,
    Archived,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Draft => "draft",
            WorkflowStatus::Active => "active",
            WorkflowStatus::Paused => "paused",
            WorkflowStatus::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Draft, Self::Active, Self::Paused, Self::Archived]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reentry {
    EveryTime,
    #[default]
    OneActiveRun,
    Once,
}

impl Reentry {
    pub fn as_str(self) -> &'static str {
        match self {
            Reentry::EveryTime => "every_time",
            Reentry::OneActiveRun => "one_active_run",
            Reentry::Once => "once",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::EveryTime, Self::OneActiveRun, Self::Once]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    Event {
        event: String,
        #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
        conditions: Vec<Condition>,
    },
    ContactUpdated {
        property: String,
        /// `Some(null)`: the property was removed.
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        to: Option<Value>,
    },
    SubscriptionChanged {
        subscribed: bool,
    },
    Api,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    #[default]
    Post,
    Put,
    Patch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    Webhook {
        url: String,
        #[serde(default)]
        method: WebhookMethod,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    UpdateContact {
        properties: Map<String, Value>,
    },
    Subscribe,
    Unsubscribe,
    Wait {
        seconds: u64,
    },
    Branch {
        #[serde(rename = "if")]
        conditions: Vec<Condition>,
        then: Vec<Step>,
        #[serde(default, rename = "else")]
        otherwise: Vec<Step>,
    },
    Exit,
}

/// Reads a trigger (at path `trigger`).
pub fn parse_trigger(value: &Value) -> Result<Trigger, Vec<FieldError>> {
    let mut errors = Vec::new();
    let trigger = trigger(value, &mut errors);
    match trigger {
        Some(t) if errors.is_empty() => Ok(t),
        _ => Err(errors),
    }
}

fn trigger(value: &Value, errors: &mut Vec<FieldError>) -> Option<Trigger> {
    let object = object_of_type(
        value,
        "trigger",
        &["event", "contact_updated", "subscription_changed", "api"],
        errors,
    )?;
    let (kind, fields): (&str, &[&str]) = match object.get("type").and_then(Value::as_str)? {
        "event" => ("event", &["type", "event", "where"]),
        "contact_updated" => ("contact_updated", &["type", "property", "to"]),
        "subscription_changed" => ("subscription_changed", &["type", "subscribed"]),
        _ => ("api", &["type"]),
    };
    if !only_fields(object, "trigger", fields, errors) {
        return None;
    }
    match kind {
        "event" => {
            let event = match object.get("event").and_then(Value::as_str) {
                Some(name) => crate::events::check_event_name("trigger.event", name)
                    .map_err(|e| errors.push(e))
                    .ok()?,
                None => {
                    errors.push(FieldError::new(
                        "trigger.event",
                        "is required: the event name",
                    ));
                    return None;
                }
            };
            let conditions = match object.get("where") {
                Some(list) => conditions::parse_list(list, "trigger.where", errors),
                None => Vec::new(),
            };
            Some(Trigger::Event { event, conditions })
        }
        "contact_updated" => {
            let property = property_name(object.get("property"), "trigger.property", errors)?;
            Some(Trigger::ContactUpdated {
                property,
                to: object.get("to").cloned(),
            })
        }
        "subscription_changed" => match object.get("subscribed").and_then(Value::as_bool) {
            Some(subscribed) => Some(Trigger::SubscriptionChanged { subscribed }),
            None => {
                errors.push(FieldError::new(
                    "trigger.subscribed",
                    "must be true or false",
                ));
                None
            }
        },
        _ => Some(Trigger::Api),
    }
}

/// Reads the steps (at path `steps`).
pub fn parse_steps(value: &Value) -> Result<Vec<Step>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut count = 0;
    let steps = step_list(value, "steps", 0, &mut count, &mut errors);
    if value.as_array().is_some_and(Vec::is_empty) {
        errors.push(FieldError::new("steps", "must hold at least one step"));
    }
    if count > MAX_STEPS {
        errors.push(FieldError::new(
            "steps",
            format!("{count} steps in all; at most {MAX_STEPS}, nested branches included"),
        ));
    }
    if errors.is_empty() {
        Ok(steps)
    } else {
        Err(errors)
    }
}

fn step_list(
    value: &Value,
    path: &str,
    depth: usize,
    count: &mut usize,
    errors: &mut Vec<FieldError>,
) -> Vec<Step> {
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new(path, "must be a list of steps"));
        return Vec::new();
    };
    let mut steps = Vec::new();
    for (i, item) in items.iter().enumerate() {
        *count += 1;
        // Counting stops mattering once the limit is passed; reading on
        // would only repeat it for every remaining step.
        if *count > MAX_STEPS * 2 {
            break;
        }
        if let Some(step) = step(item, &format!("{path}[{i}]"), depth, count, errors) {
            steps.push(step);
        }
    }
    steps
}

fn step(
    value: &Value,
    path: &str,
    depth: usize,
    count: &mut usize,
    errors: &mut Vec<FieldError>,
) -> Option<Step> {
    const KINDS: &[&str] = &[
        "webhook",
        "update_contact",
        "subscribe",
        "unsubscribe",
        "wait",
        "branch",
        "exit",
    ];
    let object = object_of_type(value, path, KINDS, errors)?;
    let kind = object.get("type").and_then(Value::as_str)?;
    let fields: &[&str] = match kind {
        "webhook" => &["type", "url", "method", "headers", "body"],
        "update_contact" => &["type", "properties"],
        "wait" => &["type", "seconds"],
        "branch" => &["type", "if", "then", "else"],
        _ => &["type"],
    };
    if !only_fields(object, path, fields, errors) {
        return None;
    }
    match kind {
        "webhook" => webhook(object, path, errors),
        "update_contact" => {
            let Some(properties) = object.get("properties").and_then(Value::as_object) else {
                errors.push(FieldError::new(
                    format!("{path}.properties"),
                    "must be an object of properties to merge (null removes one)",
                ));
                return None;
            };
            let mut ok = true;
            for key in properties.keys() {
                if property_name(Some(&Value::String(key.clone())), "", &mut Vec::new()).is_none() {
                    errors.push(FieldError::new(
                        format!("{path}.properties.{key}"),
                        format!(
                            "property names are 1 to {} characters",
                            conditions::MAX_NAME_CHARS
                        ),
                    ));
                    ok = false;
                }
            }
            if let Err(message) = templates::check(&Value::Object(properties.clone())) {
                errors.push(FieldError::new(format!("{path}.properties"), message));
                ok = false;
            }
            ok.then(|| Step::UpdateContact {
                properties: properties.clone(),
            })
        }
        "subscribe" => Some(Step::Subscribe),
        "unsubscribe" => Some(Step::Unsubscribe),
        "wait" => {
            match object.get("seconds").and_then(Value::as_u64) {
                Some(seconds) if (1..=MAX_WAIT_SECONDS).contains(&seconds) => {
                    Some(Step::Wait { seconds })
                }
                _ => {
                    errors.push(FieldError::new(
                    format!("{path}.seconds"),
                    format!("must be a whole number of seconds from 1 to {MAX_WAIT_SECONDS} (90 days)"),
                ));
                    None
                }
            }
        }
        "branch" => {
            if depth >= MAX_BRANCH_DEPTH {
                errors.push(FieldError::new(
                    path,
                    format!("branches nest at most {MAX_BRANCH_DEPTH} deep"),
                ));
                return None;
            }
            let conditions = match object.get("if") {
                Some(list) => conditions::parse_list(list, &format!("{path}.if"), errors),
                None => {
                    errors.push(FieldError::new(
                        format!("{path}.if"),
                        "is required: a list of conditions",
                    ));
                    return None;
                }
            };
            let Some(then) = object.get("then") else {
                errors.push(FieldError::new(
                    format!("{path}.then"),
                    "is required: a list of steps",
                ));
                return None;
            };
            let then = step_list(then, &format!("{path}.then"), depth + 1, count, errors);
            let otherwise = match object.get("else") {
                Some(list) => step_list(list, &format!("{path}.else"), depth + 1, count, errors),
                None => Vec::new(),
            };
            Some(Step::Branch {
                conditions,
                then,
                otherwise,
            })
        }
        _ => Some(Step::Exit),
    }
}

fn webhook(object: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) -> Option<Step> {
    let before = errors.len();
    let url = object
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Err(message) = check_url(url) {
        errors.push(FieldError::new(format!("{path}.url"), message));
    }
    let method = match object.get("method") {
        None => WebhookMethod::Post,
        Some(Value::String(m)) if m == "POST" => WebhookMethod::Post,
        Some(Value::String(m)) if m == "PUT" => WebhookMethod::Put,
        Some(Value::String(m)) if m == "PATCH" => WebhookMethod::Patch,
        Some(_) => {
            errors.push(FieldError::new(
                format!("{path}.method"),
                "must be POST, PUT or PATCH",
            ));
            WebhookMethod::Post
        }
    };
    let mut headers = BTreeMap::new();
    match object.get("headers") {
        None => {}
        Some(Value::Object(map)) if map.len() <= MAX_HEADERS => {
            for (name, value) in map {
                let at = format!("{path}.headers.{name}");
                match (check_header_name(name), value.as_str()) {
                    (Err(message), _) => errors.push(FieldError::new(at, message)),
                    (Ok(()), Some(text))
                        if text.len() <= MAX_HEADER_VALUE_BYTES
                            && !text.chars().any(|c| c.is_control() && c != '\t') =>
                    {
                        if let Err(message) = templates::check(value) {
                            errors.push(FieldError::new(at, message));
                        } else {
                            headers.insert(name.to_ascii_lowercase(), text.to_string());
                        }
                    }
                    (Ok(()), _) => errors.push(FieldError::new(
                        at,
                        format!("must be text of at most {MAX_HEADER_VALUE_BYTES} bytes, without line breaks"),
                    )),
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            format!("{path}.headers"),
            format!("must be an object of at most {MAX_HEADERS} header names to text values"),
        )),
    }
    let body = object.get("body").cloned();
    if let Some(body) = &body
        && let Err(message) = templates::check(body)
    {
        errors.push(FieldError::new(format!("{path}.body"), message));
    }
    (errors.len() == before).then(|| Step::Webhook {
        url: url.to_string(),
        method,
        headers,
        body,
    })
}

/// An absolute `http`/`https` URL with a host and no credentials in it.
/// (Where it points is checked when it is called: names resolve then.)
pub fn check_url(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_URL_BYTES {
        return Err(format!(
            "must be an http or https URL of at most {MAX_URL_BYTES} bytes"
        ));
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http or https".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password (send credentials in headers)".into());
    }
    Ok(())
}

/// Headers a step may set: valid names, and none Keyflow sets itself.
fn check_header_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err("is not a valid header name".into());
    }
    let lower = name.to_ascii_lowercase();
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "user-agent",
    ];
    if RESERVED.contains(&lower.as_str()) || lower.starts_with("webhook-") {
        return Err("is set by Keyflow and cannot be changed".into());
    }
    Ok(())
}

fn property_name(
    value: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match value.and_then(Value::as_str) {
        Some(name)
            if !name.is_empty()
                && name.chars().count() <= conditions::MAX_NAME_CHARS
                && !name.chars().any(char::is_control) =>
        {
            Some(name.to_string())
        }
        _ => {
            errors.push(FieldError::new(
                path,
                format!(
                    "must be a property name of 1 to {} characters",
                    conditions::MAX_NAME_CHARS
                ),
            ));
            None
        }
    }
}

/// `value` as an object whose `type` is one of `kinds`.
fn object_of_type<'v>(
    value: &'v Value,
    path: &str,
    kinds: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<&'v Map<String, Value>> {
    let kind = value.get("type").and_then(Value::as_str);
    match (value.as_object(), kind) {
        (Some(object), Some(kind)) if kinds.contains(&kind) => Some(object),
        _ => {
            errors.push(FieldError::new(
                format!("{path}.type"),
                format!("must be one of {}", kinds.join(", ")),
            ));
            None
        }
    }
}

/// False (with an error) when `object` has a field not in `fields`.
fn only_fields(
    object: &Map<String, Value>,
    path: &str,
    fields: &[&str],
    errors: &mut Vec<FieldError>,
) -> bool {
    match object.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(unknown) => {
            errors.push(FieldError::new(
                format!("{path}.{unknown}"),
                format!("is not a field here (allowed: {})", fields.join(", ")),
            ));
            false
        }
        None => true,
    }
}

/// Checks a workflow's name: 1 to 64 printable characters.
pub fn check_name(name: &str) -> Result<String, FieldError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || crate::text::has_forbidden_name_chars(name) {
        return Err(FieldError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests;

//! Events (SPEC §3): validation, NFC-normalised names, identity.

use serde::Deserialize;
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

use crate::clock::UnixMillis;
use crate::contacts::{MAX_EXTERNAL_ID_CHARS, normalise_email};
use crate::error::FieldError;
use crate::json_limits::properties_json;
use crate::timefmt::parse_rfc3339;

pub const MAX_EVENT_NAME_CHARS: usize = 128;
pub const MAX_BATCH: usize = 1000;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// An idempotency key is remembered this long.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventInput {
    pub name: Option<String>,
    pub contact_id: Option<String>,
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub properties: Option<Map<String, Value>>,
    pub timestamp: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Who an event is about. An unknown email or external id creates the contact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventIdentity {
    ContactId(String),
    ExternalId {
        external_id: String,
        email: Option<String>,
    },
    Email(String),
    Anonymous,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub name: String,
    pub identity: EventIdentity,
    pub anonymous_id: Option<String>,
    /// The properties object as JSON text, checked against SPEC's limits and
    /// serialised once here (the store writes it as is).
    pub properties: String,
    pub timestamp: UnixMillis,
    pub idempotency_key: Option<String>,
}

/// NFC, so "café" typed two ways is one event name.
pub fn normalise_event_name(name: &str) -> String {
    // Most names (all ASCII ones) are NFC already: skip the rewrite.
    match unicode_normalization::is_nfc_quick(name.chars()) {
        unicode_normalization::IsNormalized::Yes => name.to_string(),
        _ => name.nfc().collect(),
    }
}

pub fn check_event_name(field: &str, name: &str) -> Result<String, FieldError> {
    event_name(name).map_err(|message| FieldError::new(field, message))
}

fn event_name(name: &str) -> Result<String, String> {
    let normalised = normalise_event_name(name.trim());
    let chars = normalised.chars().count();
    // Bidirectional controls too: a name that displays as another
    // ("Trojan Source") would mislead every page and export that shows it.
    if chars == 0
        || chars > MAX_EVENT_NAME_CHARS
        || crate::text::has_forbidden_name_chars(&normalised)
    {
        return Err(format!(
            "event names are 1 to {MAX_EVENT_NAME_CHARS} printable characters, without bidirectional controls"
        ));
    }
    Ok(normalised)
}

/// Field errors of one event; field names (`events[3].name`) are only
/// formatted for the errors there are.
struct Errors<'a> {
    prefix: &'a str,
    found: Vec<FieldError>,
}

impl Errors<'_> {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.found
            .push(FieldError::new(format!("{}{field}", self.prefix), message));
    }
}

fn optional_id(field: &str, value: Option<String>, errors: &mut Errors) -> Option<String> {
    let value = value?;
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_EXTERNAL_ID_CHARS || v.chars().any(char::is_control)
    {
        errors.add(
            field,
            format!("must be 1 to {MAX_EXTERNAL_ID_CHARS} printable characters"),
        );
        return None;
    }
    if v.len() == value.len() {
        Some(value)
    } else {
        Some(v.to_string())
    }
}

/// Validates one event; `prefix` names batch items (`events[3].`).
pub fn validate_event(
    input: EventInput,
    now: UnixMillis,
    prefix: &str,
) -> Result<NewEvent, Vec<FieldError>> {
    let mut errors = Errors {
        prefix,
        found: Vec::new(),
    };
    let name = match input.name.as_deref() {
        None => {
            errors.add("name", "name is required");
            None
        }
        Some(n) => event_name(n).map_err(|m| errors.add("name", m)).ok(),
    };
    let contact_id = optional_id("contact_id", input.contact_id, &mut errors);
    let external_id = optional_id("external_id", input.external_id, &mut errors);
    let anonymous_id = optional_id("anonymous_id", input.anonymous_id, &mut errors);
    let idempotency_key = match input.idempotency_key {
        Some(k) if k.is_empty() || k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS => {
            errors.add(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            );
            None
        }
        other => other,
    };
    let email_given = input.email.is_some();
    let email = input.email.as_deref().and_then(|e| {
        let ok = normalise_email(e);
        if ok.is_none() {
            errors.add("email", "must be an email address");
        }
        ok
    });
    let identity = if let Some(id) = contact_id {
        Some(EventIdentity::ContactId(id))
    } else if let Some(external_id) = external_id {
        Some(EventIdentity::ExternalId { external_id, email })
    } else if let Some(email) = email {
        Some(EventIdentity::Email(email))
    } else if anonymous_id.is_some() {
        Some(EventIdentity::Anonymous)
    } else {
        if !email_given {
            errors.add(
                "contact_id",
                "identify who the event is about: contact_id, email, external_id or anonymous_id",
            );
        }
        None
    };
    let timestamp = match input.timestamp.as_deref() {
        None => Some(now),
        Some(t) => {
            let parsed = parse_rfc3339(t);
            if parsed.is_none() {
                errors.add(
                    "timestamp",
                    "must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z",
                );
            }
            parsed
        }
    };
    let properties = match input.properties {
        None => Ok("{}".to_string()),
        Some(map) => properties_json(&map),
    }
    .map_err(|m| errors.add("properties", m))
    .ok();
    match (name, identity, timestamp, properties) {
        (Some(name), Some(identity), Some(timestamp), Some(properties))
            if errors.found.is_empty() =>
        {
            Ok(NewEvent {
                name,
                identity,
                anonymous_id,
                properties,
                timestamp,
                idempotency_key,
            })
        }
        _ => Err(errors.found),
    }
}

/// A batch is validated all-or-nothing: every item's errors, or every event.
pub fn validate_batch(
    inputs: Vec<EventInput>,
    now: UnixMillis,
) -> Result<Vec<NewEvent>, Vec<FieldError>> {
    if inputs.is_empty() || inputs.len() > MAX_BATCH {
        return Err(vec![FieldError::new(
            "events",
            format!("send 1 to {MAX_BATCH} events"),
        )]);
    }
    let mut events = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match validate_event(input, now, &format!("events[{i}].")) {
            Ok(e) => events.push(e),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

/// The first name outside a key's `allowed_events`, if any.
pub fn first_disallowed<'a>(events: &'a [NewEvent], allowed: Option<&[String]>) -> Option<&'a str> {
    let allowed = allowed?;
    events
        .iter()
        .map(|e| e.name.as_str())
        .find(|name| !allowed.iter().any(|a| a == name))
}

#[cfg(test)]
mod tests {

    #[test]
    fn event_names_refuse_controls_and_bidi_overrides() {
        for bad in [
            "",
            "a\u{0}b",
            "line\nbreak",
            "\u{202E}exe.evil",
            "x\u{2066}y",
            "\u{200F}",
        ] {
            assert!(check_event_name("name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_event_name("name", " café ").unwrap(), "café");
        assert!(
            check_event_name("name", "عربي").is_ok(),
            "right-to-left text itself is fine"
        );
    }
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> EventInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_are_nfc() {
        let composed = validate_event(
            input(json!({"name": "caf\u{e9}", "anonymous_id": "a"})),
            0,
            "",
        )
        .unwrap();
        let decomposed = validate_event(
            input(json!({"name": "cafe\u{301}", "anonymous_id": "a"})),
            0,
            "",
        )
        .unwrap();
        assert_eq!(composed.name, decomposed.name);
        assert!(
            validate_event(
                input(json!({"name": "x".repeat(129), "anonymous_id": "a"})),
                0,
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn identity_precedence_and_requirement() {
        let e = validate_event(
            input(json!({"name": "n", "email": "a@b.co", "external_id": "u1"})),
            0,
            "",
        )
        .unwrap();
        assert_eq!(
            e.identity,
            EventIdentity::ExternalId {
                external_id: "u1".into(),
                email: Some("a@b.co".into())
            }
        );
        let errs = validate_event(input(json!({"name": "n"})), 0, "events[0].").unwrap_err();
        assert_eq!(errs[0].field, "events[0].contact_id");
        let e = validate_event(
            input(json!({"name": "n", "anonymous_id": "x", "timestamp": "2030-01-01T00:00:00Z"})),
            5,
            "",
        )
        .unwrap();
        assert_eq!(e.identity, EventIdentity::Anonymous);
        assert_eq!(e.properties, "{}");
        assert_eq!(e.timestamp, parse_rfc3339("2030-01-01T00:00:00Z").unwrap());
        assert!(
            validate_event(
                input(json!({"name": "n", "anonymous_id": "x", "timestamp": "yesterday"})),
                5,
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn properties_are_serialised_once_and_ids_trimmed() {
        let e = validate_event(
            input(
                json!({"name": "n", "anonymous_id": " v1 ", "properties": {"plan": "pro", "n": 2}}),
            ),
            0,
            "",
        )
        .unwrap();
        assert_eq!(e.properties, r#"{"n":2,"plan":"pro"}"#);
        assert_eq!(e.anonymous_id.as_deref(), Some("v1"));
        let big =
            json!({"name": "n", "anonymous_id": "v", "properties": {"x": "y".repeat(33 * 1024)}});
        let errs = validate_event(input(big), 0, "events[2].").unwrap_err();
        assert_eq!(errs[0].field, "events[2].properties");
    }

    #[test]
    fn batches_are_all_or_nothing() {
        let ok = json!({"name": "a", "anonymous_id": "x"});
        let bad = json!({"name": "", "anonymous_id": "x"});
        let errs = validate_batch(vec![input(ok.clone()), input(bad)], 0).unwrap_err();
        assert_eq!(errs[0].field, "events[1].name");
        assert!(validate_batch(vec![input(ok); 1001], 0).is_err());
        assert!(validate_batch(Vec::new(), 0).is_err());
    }

    #[test]
    fn allowed_events() {
        let events = validate_batch(
            vec![
                input(json!({"name": "a", "anonymous_id": "x"})),
                input(json!({"name": "b", "anonymous_id": "x"})),
            ],
            0,
        )
        .unwrap();
        assert_eq!(first_disallowed(&events, None), None);
        assert_eq!(
            first_disallowed(&events, Some(&["a".to_string()])),
            Some("b")
        );
    }
}

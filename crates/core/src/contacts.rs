//! Contacts (SPEC §3): validation of create/update input and the merge rules.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::json_limits::{check_properties, merge_properties};

pub const MAX_EXTERNAL_ID_CHARS: usize = 255;
pub const MAX_NAME_CHARS: usize = 255;

/// `POST /v1/contacts`, `PATCH /v1/contacts/{id}`, a batch item, a subscriber signup.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContactInput {
    pub email: Option<String>,
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub last_name: Option<Option<String>>,
    pub subscribed: Option<bool>,
    pub properties: Option<Map<String, Value>>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The stored fields of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactFields {
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub subscribed: bool,
    pub properties: Map<String, Value>,
}

/// A validated change to apply to a contact (new or existing).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactChanges {
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub subscribed: Option<bool>,
    pub properties: Map<String, Value>,
}

/// How to find a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactLookup {
    Id(String),
    Email(String),
    ExternalId(String),
}

pub fn normalise_email(email: &str) -> Option<String> {
    let email = crate::text::nfc_email(email);
    let email = email.as_str();
    let (local, domain) = email.split_once('@')?;
    let valid = email.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    valid.then(|| email.to_string())
}

/// The comparison form of an email: NFC, case-insensitive.
pub fn email_key(email: &str) -> String {
    crate::text::nfc_email(email).to_lowercase()
}

fn check_text(
    field: String,
    value: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > max || crate::text::has_forbidden_name_chars(trimmed) {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {max} printable characters (no control or bidirectional formatting characters)"),
        ));
        return None;
    }
    Some(trimmed.to_string())
}

/// Validates input. `require_identity`: create-or-update needs email or
/// external_id; a PATCH does not. `prefix` names batch items (`contacts[3].`).
pub fn validate_contact(
    input: &ContactInput,
    require_identity: bool,
    prefix: &str,
) -> Result<ContactChanges, Vec<FieldError>> {
    let mut errors = Vec::new();
    let f = |name: &str| format!("{prefix}{name}");
    let email = input.email.as_deref().and_then(|e| {
        let ok = normalise_email(e);
        if ok.is_none() {
            errors.push(FieldError::new(
                f("email"),
                "must be an email address like ada@example.com",
            ));
        }
        ok
    });
    let external_id = input
        .external_id
        .as_deref()
        .and_then(|x| check_text(f("external_id"), x, MAX_EXTERNAL_ID_CHARS, &mut errors));
    if require_identity && input.email.is_none() && input.external_id.is_none() {
        errors.push(FieldError::new(
            f("email"),
            "email or external_id is required",
        ));
    }
    let mut name = |field: &str, v: &Option<Option<String>>| -> Option<Option<String>> {
        v.as_ref().map(|inner| {
            inner
                .as_deref()
                .and_then(|text| check_text(f(field), text, MAX_NAME_CHARS, &mut errors))
        })
    };
    let first_name = name("first_name", &input.first_name);
    let last_name = name("last_name", &input.last_name);
    let properties = input.properties.clone().unwrap_or_default();
    if let Err(e) = check_properties(&f("properties"), &properties) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(ContactChanges {
            email,
            external_id,
            first_name,
            last_name,
            subscribed: input.subscribed,
            properties,
        })
    } else {
        Err(errors)
    }
}

/// Applies changes to a contact's current fields (`None` for a new contact).
pub fn apply_changes(
    current: Option<&ContactFields>,
    changes: &ContactChanges,
) -> Result<ContactFields, FieldError> {
    let base = current.cloned().unwrap_or_default();
    let properties = merge_properties(&base.properties, &changes.properties);
    check_properties("properties", &properties)?;
    Ok(ContactFields {
        email: changes.email.clone().or(base.email),
        external_id: changes.external_id.clone().or(base.external_id),
        first_name: changes.first_name.clone().unwrap_or(base.first_name),
        last_name: changes.last_name.clone().unwrap_or(base.last_name),
        subscribed: changes.subscribed.unwrap_or(base.subscribed),
        properties,
    })
}

/// `{email_or_id}` in subscriber paths: an `@` means an email.
pub fn lookup_from_path(value: &str) -> ContactLookup {
    if value.contains('@') {
        ContactLookup::Email(value.to_string())
    } else {
        ContactLookup::Id(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> ContactInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn identity_is_required_for_upserts() {
        let errs = validate_contact(&input(json!({"first_name": "Ada"})), true, "").unwrap_err();
        assert_eq!(errs[0].field, "email");
        assert!(validate_contact(&input(json!({"first_name": "Ada"})), false, "").is_ok());
        let errs =
            validate_contact(&input(json!({"email": "nope"})), true, "contacts[2].").unwrap_err();
        assert_eq!(errs[0].field, "contacts[2].email");
    }

    #[test]
    fn merge_rules() {
        let current = ContactFields {
            email: Some("a@b.co".into()),
            first_name: Some("Ada".into()),
            properties: json!({"plan": "pro", "seats": 2})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        let changes = validate_contact(
            &input(json!({"last_name": "Lovelace", "first_name": null, "properties": {"plan": null, "country": "UK"}})),
            false,
            "",
        )
        .unwrap();
        let next = apply_changes(Some(&current), &changes).unwrap();
        assert_eq!(next.email.as_deref(), Some("a@b.co"));
        assert_eq!(next.first_name, None);
        assert_eq!(next.last_name.as_deref(), Some("Lovelace"));
        assert_eq!(
            Value::Object(next.properties),
            json!({"seats": 2, "country": "UK"})
        );
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalise_email(" Ada@Example.com "),
            Some("Ada@Example.com".into())
        );
        assert_eq!(email_key("Ada@Example.com"), "ada@example.com");
        for bad in ["", "a", "a@b", "@b.co", "a@.co", "a b@c.co", "a@b.co."] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }
}

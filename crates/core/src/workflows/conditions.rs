//! Conditions of triggers and branches (SPEC §10): `{"field", "op",
//! "value"?}`, all of a list must hold. Fields name the contact, the event
//! that started the run, or the run's variables; nothing else is read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::present;
use crate::FieldError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    Exists,
    NotExists,
}

impl Op {
    const ALL: [(&'static str, Op); 9] = [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("contains", Op::Contains),
        ("exists", Op::Exists),
        ("not_exists", Op::NotExists),
    ];

    /// The operator's name in a definition (`"gte"`).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("eq", |(name, _)| *name)
    }

    fn parse(name: &str) -> Option<Op> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, op)| *op)
    }

    fn takes_value(self) -> bool {
        !matches!(self, Op::Exists | Op::NotExists)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
}

/// Where a condition's field is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    ContactEmail,
    ContactExternalId,
    ContactSubscribed,
    ContactProperty(&'a str),
    EventName,
    EventProperty(&'a str),
    Variable(&'a str),
}

/// The most characters a property or variable name may have.
pub const MAX_NAME_CHARS: usize = 128;

impl<'a> Field<'a> {
    /// Reads `contact.email`, `contact.properties.NAME`, `event.name`, …
    pub fn parse(text: &'a str) -> Option<Field<'a>> {
        let named = |rest: &'a str| {
            let ok = !rest.is_empty()
                && rest.chars().count() <= MAX_NAME_CHARS
                && !rest.chars().any(char::is_control);
            ok.then_some(rest)
        };
        Some(match text {
            "contact.email" => Field::ContactEmail,
            "contact.external_id" => Field::ContactExternalId,
            "contact.subscribed" => Field::ContactSubscribed,
            "event.name" => Field::EventName,
            _ => {
                if let Some(rest) = text.strip_prefix("contact.properties.") {
                    Field::ContactProperty(named(rest)?)
                } else if let Some(rest) = text.strip_prefix("event.properties.") {
                    Field::EventProperty(named(rest)?)
                } else if let Some(rest) = text.strip_prefix("variables.") {
                    Field::Variable(named(rest)?)
                } else {
                    return None;
                }
            }
        })
    }
}

/// What a run knows when it evaluates conditions and templates: the contact
/// as it is now, the event that started the run (if any), its variables.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub contact_email: Option<String>,
    pub contact_external_id: Option<String>,
    pub contact_subscribed: bool,
    pub contact_properties: serde_json::Map<String, Value>,
    pub event_name: Option<String>,
    pub event_properties: serde_json::Map<String, Value>,
    pub variables: serde_json::Map<String, Value>,
}

impl Facts {
    /// The value at `field`; `None` when it is absent (or JSON `null`).
    pub fn get(&self, field: &Field<'_>) -> Option<Value> {
        let text = |v: &Option<String>| v.clone().map(Value::String);
        let value = match field {
            Field::ContactEmail => text(&self.contact_email),
            Field::ContactExternalId => text(&self.contact_external_id),
            Field::ContactSubscribed => Some(Value::Bool(self.contact_subscribed)),
            Field::ContactProperty(name) => self.contact_properties.get(*name).cloned(),
            Field::EventName => text(&self.event_name),
            Field::EventProperty(name) => self.event_properties.get(*name).cloned(),
            Field::Variable(name) => self.variables.get(*name).cloned(),
        };
        value.filter(|v| !v.is_null())
    }
}

/// Reads a list of conditions at `path` (`trigger.where`,
/// `steps[2].if`), reporting every bad one.
pub(super) fn parse_list(
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<Condition> {
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new(path, "must be a list of conditions"));
        return Vec::new();
    };
    let mut conditions = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(condition) = parse_one(item, &at, errors) {
            conditions.push(condition);
        }
    }
    conditions
}

fn parse_one(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Condition> {
    let Some(object) = value.as_object() else {
        errors.push(FieldError::new(
            path,
            "must be an object: {\"field\", \"op\", \"value\"}",
        ));
        return None;
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "field" | "op" | "value"))
    {
        errors.push(FieldError::new(
            format!("{path}.{unknown}"),
            "is not a condition field (field, op, value)",
        ));
        return None;
    }
    let field = match object.get("field").and_then(Value::as_str) {
        Some(text) if Field::parse(text).is_some() => text.to_string(),
        _ => {
            errors.push(FieldError::new(
                format!("{path}.field"),
                "must be contact.email, contact.external_id, contact.subscribed, \
                 contact.properties.NAME, event.name, event.properties.NAME or variables.NAME",
            ));
            return None;
        }
    };
    let Some(op) = object.get("op").and_then(Value::as_str).and_then(Op::parse) else {
        errors.push(FieldError::new(
            format!("{path}.op"),
            "must be one of eq, neq, gt, gte, lt, lte, contains, exists, not_exists",
        ));
        return None;
    };
    let value = object.get("value").cloned();
    match (&value, op.takes_value()) {
        (None, true) => {
            errors.push(FieldError::new(
                format!("{path}.value"),
                "is required for this op",
            ));
            return None;
        }
        (Some(_), false) => {
            errors.push(FieldError::new(
                format!("{path}.value"),
                "must be left out for exists and not_exists",
            ));
            return None;
        }
        (Some(v), true)
            if matches!(op, Op::Gt | Op::Gte | Op::Lt | Op::Lte)
                && !(v.is_number() || v.is_string()) =>
        {
            errors.push(FieldError::new(
                format!("{path}.value"),
                "must be a number or a string for gt, gte, lt and lte",
            ));
            return None;
        }
        _ => {}
    }
    Some(Condition { field, op, value })
}

impl Condition {
    /// Whether the condition holds over `facts`. A field that is absent
    /// satisfies only `not_exists` and `neq`.
    pub fn holds(&self, facts: &Facts) -> bool {
        let Some(field) = Field::parse(&self.field) else {
            return false;
        };
        let actual = facts.get(&field);
        let expected = self.value.as_ref();
        match self.op {
            Op::Exists => actual.is_some(),
            Op::NotExists => actual.is_none(),
            Op::Eq => actual.as_ref() == expected,
            Op::Neq => actual.as_ref() != expected,
            Op::Contains => match (actual, expected) {
                (Some(Value::String(text)), Some(Value::String(part))) => {
                    text.contains(part.as_str())
                }
                (Some(Value::Array(items)), Some(item)) => items.contains(item),
                _ => false,
            },
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let ordering = match (actual, expected) {
                    (Some(Value::Number(a)), Some(Value::Number(b))) => a
                        .as_f64()
                        .zip(b.as_f64())
                        .and_then(|(a, b)| a.partial_cmp(&b)),
                    (Some(Value::String(a)), Some(Value::String(b))) => Some(a.as_str().cmp(b)),
                    _ => None,
                };
                ordering.is_some_and(|o| match self.op {
                    Op::Gt => o.is_gt(),
                    Op::Gte => o.is_ge(),
                    Op::Lt => o.is_lt(),
                    _ => o.is_le(),
                })
            }
        }
    }
}

/// Whether every condition holds (an empty list holds).
pub fn all_hold(conditions: &[Condition], facts: &Facts) -> bool {
    conditions.iter().all(|c| c.holds(facts))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn condition(value: Value) -> Result<Condition, Vec<FieldError>> {
        let mut errors = Vec::new();
        let list = parse_list(&json!([value]), "c", &mut errors);
        if errors.is_empty() {
            Ok(list.into_iter().next().unwrap())
        } else {
            Err(errors)
        }
    }

    fn facts() -> Facts {
        Facts {
            contact_email: Some("ada@example.com".into()),
            contact_subscribed: true,
            contact_properties: json!({"plan": "pro", "seats": 12, "tags": ["a", "b"]})
                .as_object()
                .unwrap()
                .clone(),
            event_name: Some("trial_ended".into()),
            event_properties: json!({"amount": 30.5}).as_object().unwrap().clone(),
            ..Facts::default()
        }
    }

    #[test]
    fn conditions_hold_as_the_spec_says() {
        let f = facts();
        let holds = |v: Value| condition(v).unwrap().holds(&f);
        assert!(holds(
            json!({"field": "contact.properties.plan", "op": "eq", "value": "pro"})
        ));
        assert!(!holds(
            json!({"field": "contact.properties.plan", "op": "neq", "value": "pro"})
        ));
        assert!(holds(
            json!({"field": "contact.properties.seats", "op": "gte", "value": 12})
        ));
        assert!(!holds(
            json!({"field": "contact.properties.seats", "op": "gt", "value": 12})
        ));
        assert!(holds(
            json!({"field": "event.properties.amount", "op": "lt", "value": 31})
        ));
        assert!(holds(
            json!({"field": "contact.email", "op": "contains", "value": "@example"})
        ));
        assert!(holds(
            json!({"field": "contact.properties.tags", "op": "contains", "value": "b"})
        ));
        assert!(holds(
            json!({"field": "contact.subscribed", "op": "eq", "value": true})
        ));
        assert!(holds(
            json!({"field": "event.name", "op": "eq", "value": "trial_ended"})
        ));
        assert!(holds(
            json!({"field": "contact.properties.gone", "op": "not_exists"})
        ));
        assert!(!holds(
            json!({"field": "contact.properties.gone", "op": "exists"})
        ));
        assert!(holds(
            json!({"field": "variables.x", "op": "neq", "value": 1})
        ));
        // Comparing a number with a string holds neither way.
        assert!(!holds(
            json!({"field": "contact.properties.seats", "op": "lt", "value": "z"})
        ));
        assert!(!holds(
            json!({"field": "contact.properties.seats", "op": "gte", "value": "1"})
        ));
    }

    #[test]
    fn bad_conditions_say_where() {
        let fields = |v: Value| -> Vec<String> {
            condition(v)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(json!({"field": "contact.password", "op": "eq", "value": 1})),
            ["c[0].field"]
        );
        assert_eq!(
            fields(json!({"field": "contact.email", "op": "like", "value": 1})),
            ["c[0].op"]
        );
        assert_eq!(
            fields(json!({"field": "contact.email", "op": "eq"})),
            ["c[0].value"]
        );
        assert_eq!(
            fields(json!({"field": "contact.email", "op": "exists", "value": 1})),
            ["c[0].value"]
        );
        assert_eq!(
            fields(json!({"field": "contact.email", "op": "gt", "value": [1]})),
            ["c[0].value"]
        );
        assert_eq!(
            fields(json!({"field": "contact.email", "op": "eq", "value": 1, "x": 2})),
            ["c[0].x"]
        );
        assert_eq!(fields(json!("contact.email = 1")), ["c[0]"]);
        assert_eq!(
            fields(json!({"field": "variables.", "op": "exists"})),
            ["c[0].field"]
        );
    }
}

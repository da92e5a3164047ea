//! `{{…}}` templates in webhook bodies, headers and `update_contact`
//! properties (SPEC §10). Only these are replaced: `{{contact.email}}`,
//! `{{contact.external_id}}`, `{{contact.properties.NAME}}`,
//! `{{event.properties.NAME}}`, `{{variables.NAME}}`, `{{run.id}}`; nothing
//! is evaluated. A definition naming anything else is refused when saved.

use serde_json::Value;

use super::conditions::{Facts, Field};

/// One `{{…}}` of a template.
#[derive(Debug, PartialEq, Eq)]
enum Placeholder<'a> {
    Field(Field<'a>),
    RunId,
}

fn placeholder(inner: &str) -> Option<Placeholder<'_>> {
    let inner = inner.trim();
    if inner == "run.id" {
        return Some(Placeholder::RunId);
    }
    match Field::parse(inner)? {
        field @ (Field::ContactEmail
        | Field::ContactExternalId
        | Field::ContactProperty(_)
        | Field::EventProperty(_)
        | Field::Variable(_)) => Some(Placeholder::Field(field)),
        _ => None,
    }
}

/// The pieces of a template: literal text and placeholders, in order.
/// `Err` names the first `{{…}}` that is not allowed (or never closed).
fn pieces(template: &str) -> Result<Vec<Result<&str, Placeholder<'_>>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Ok(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("{{{{ is not closed in {:?}", shorten(rest)));
        };
        let inner = &after[..end];
        let Some(found) = placeholder(inner) else {
            return Err(format!(
                "{{{{{inner}}}}} is not a template: use contact.email, contact.external_id, \
                 contact.properties.NAME, event.properties.NAME, variables.NAME or run.id"
            ));
        };
        out.push(Err(found));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Ok(rest));
    }
    Ok(out)
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Checks every string inside `value` (keys included); `Err` says what is
/// wrong with the first bad one.
pub fn check(value: &Value) -> Result<(), String> {
    match value {
        Value::String(text) => pieces(text).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(check),
        Value::Object(map) => map.iter().try_for_each(|(key, value)| {
            pieces(key)?;
            check(value)
        }),
        _ => Ok(()),
    }
}

/// A value as text in a template: strings as they are, absent and `null`
/// as nothing, anything else as JSON.
fn as_text(value: Option<Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
    }
}

/// `template` with its placeholders replaced from `facts` and `run_id`
/// (a template that does not check is returned as written), or `None` once
/// the text rendered so far passes `budget` bytes: each placeholder can
/// stand for a 32 KiB value, so a short definition could otherwise render
/// gigabytes.
pub fn render_text(
    template: &str,
    facts: &Facts,
    run_id: &str,
    budget: &mut usize,
) -> Option<String> {
    let Ok(pieces) = pieces(template) else {
        *budget = budget.checked_sub(template.len())?;
        return Some(template.to_string());
    };
    let mut out = String::new();
    for piece in pieces {
        let text = match piece {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(Placeholder::RunId) => std::borrow::Cow::Borrowed(run_id),
            Err(Placeholder::Field(field)) => std::borrow::Cow::Owned(as_text(facts.get(&field))),
        };
        *budget = budget.checked_sub(text.len())?;
        out.push_str(&text);
    }
    Some(out)
}

/// Every string of `value` rendered (keys included), within `budget`
/// bytes of rendered text in all (`None` past it).
pub fn render(value: &Value, facts: &Facts, run_id: &str, budget: &mut usize) -> Option<Value> {
    Some(match value {
        Value::String(text) => Value::String(render_text(text, facts, run_id, budget)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, facts, run_id, budget))
                .collect::<Option<_>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = render_text(k, facts, run_id, budget)?;
                out.insert(key, render(v, facts, run_id, budget)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn placeholders_are_replaced_and_nothing_else_is_evaluated() {
        let facts = Facts {
            contact_email: Some("ada@example.com".into()),
            contact_properties: json!({"plan": "pro", "seats": 3})
                .as_object()
                .unwrap()
                .clone(),
            variables: json!({"coupon": "X1"}).as_object().unwrap().clone(),
            ..Facts::default()
        };
        let body = json!({
            "to": "{{contact.email}}",
            "text": "Plan {{ contact.properties.plan }} x{{contact.properties.seats}} {{variables.coupon}}{{variables.none}} run {{run.id}}",
            "nested": ["{{event.properties.missing}}", 1, true],
        });
        check(&body).unwrap();
        assert_eq!(
            render(&body, &facts, "run_1", &mut 10_000).unwrap(),
            json!({
                "to": "ada@example.com",
                "text": "Plan pro x3 X1 run run_1",
                "nested": ["", 1, true],
            })
        );
        for bad in [
            "{{contact.password}}",
            "{{ 1 + 1 }}",
            "{{contact.subscribed}}",
            "{{event.name}}",
            "{{run.id",
            "{{}}",
        ] {
            assert!(check(&json!({"a": bad})).is_err(), "{bad}");
        }
        assert!(check(&json!({"{{evil}}": 1})).is_err());
        // Text that only looks like a template is kept.
        assert_eq!(
            render_text("a } b { c", &facts, "r", &mut 100).unwrap(),
            "a } b { c"
        );
        // Thousands of copies of a large value stop at the budget.
        let big = Facts {
            variables: json!({"b": "A".repeat(30_000)})
                .as_object()
                .unwrap()
                .clone(),
            ..Facts::default()
        };
        let many = Value::Array(vec![json!("{{variables.b}}"); 8_000]);
        assert!(render(&many, &big, "r", &mut 256_000).is_none());
        let long = "{{variables.b}}".repeat(8_000);
        assert!(render_text(&long, &big, "r", &mut 256_000).is_none());
        let mut budget = 100_000;
        let three = Value::Array(vec![json!("{{variables.b}}"); 3]);
        assert!(render(&three, &big, "r", &mut budget).is_some());
        assert_eq!(budget, 10_000);
    }
}

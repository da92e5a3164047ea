//! A workflow's trigger as a form (SPEC §10, dashboard): what starts the
//! runs is chosen from a list, and only that kind's fields are read (an
//! event name and conditions; a property and the value it changes to;
//! subscribing or unsubscribing). The form is turned into the API's JSON,
//! so the core checks it exactly as it checks an API call, and its
//! problems are named by the form's labels rather than by JSON paths.
//!
//! Values (a condition's, `to`) are typed text (`keyflow_core::typed_text`):
//! JSON when they are JSON (`42`, `"42"`), text otherwise (`pro`).

use std::collections::HashMap;

use keyflow_core::FieldError;
use keyflow_core::typed_text;
use keyflow_core::workflows::{Condition, Trigger};
use serde_json::{Value, json};

/// The kinds of trigger, as (value, label).
pub const KINDS: [(&str, &str); 4] = [
    ("event", "An event arrives"),
    ("contact_updated", "A contact property changes"),
    (
        "subscription_changed",
        "A contact subscribes or unsubscribes",
    ),
    ("api", "A call to the API"),
];

/// A condition's operators, as (value, label).
pub const OPS: [(&str, &str); 9] = [
    ("eq", "equals"),
    ("neq", "does not equal"),
    ("gt", "is greater than"),
    ("gte", "is at least"),
    ("lt", "is less than"),
    ("lte", "is at most"),
    ("contains", "contains"),
    ("exists", "is set"),
    ("not_exists", "is not set"),
];

/// One condition row, as shown or typed.
pub struct ConditionRow {
    pub field: String,
    pub op: String,
    pub value: String,
}

/// The form's fields, as shown or typed.
pub struct TriggerForm {
    pub kind: String,
    pub event: String,
    pub conditions: Vec<ConditionRow>,
    pub property: String,
    pub to: String,
    pub subscribed: bool,
}

impl TriggerForm {
    /// A stored trigger's fields (a new workflow's: an API trigger).
    pub fn of(trigger: Option<&Trigger>) -> Self {
        let mut form = Self {
            kind: "api".into(),
            event: String::new(),
            conditions: Vec::new(),
            property: String::new(),
            to: String::new(),
            subscribed: true,
        };
        match trigger {
            Some(Trigger::Event { event, conditions }) => {
                form.kind = "event".into();
                form.event.clone_from(event);
                form.conditions = conditions.iter().map(row_of).collect();
            }
            Some(Trigger::ContactUpdated { property, to }) => {
                form.kind = "contact_updated".into();
                form.property.clone_from(property);
                form.to = to.as_ref().map(typed_text::write).unwrap_or_default();
            }
            Some(Trigger::SubscriptionChanged { subscribed }) => {
                form.kind = "subscription_changed".into();
                form.subscribed = *subscribed;
            }
            Some(Trigger::Api) | None => {}
        }
        form.pad();
        form
    }

    /// What was typed (to show again with a problem).
    pub fn typed(values: &HashMap<String, String>) -> Self {
        let get = |name: &str| values.get(name).cloned().unwrap_or_default();
        let mut form = Self {
            kind: get("trigger_type"),
            event: get("trigger_event"),
            conditions: rows(values),
            property: get("trigger_property"),
            to: get("trigger_to"),
            subscribed: get("trigger_subscribed") != "false",
        };
        form.conditions
            .retain(|r| !r.field.is_empty() || !r.value.is_empty());
        form.pad();
        form
    }

    /// A blank row to add a condition with.
    fn pad(&mut self) {
        self.conditions.push(ConditionRow {
            field: String::new(),
            op: "eq".into(),
            value: String::new(),
        });
    }
}

/// The trigger the form describes, as the API takes it (`None`: the form
/// has no trigger fields; the trigger stays as it is).
pub fn trigger_json(values: &HashMap<String, String>) -> Option<Value> {
    let kind = values.get("trigger_type")?.trim();
    let get = |name: &str| values.get(name).map_or("", |v| v.trim());
    Some(match kind {
        "event" => {
            let mut trigger = json!({"type": "event", "event": get("trigger_event")});
            let conditions: Vec<Value> = rows(values)
                .into_iter()
                // A row with neither field nor value is a blank row.
                .filter(|r| !r.field.is_empty() || !r.value.is_empty())
                .map(|r| {
                    let mut condition = json!({"field": r.field, "op": r.op});
                    if let Some(value) = typed_text::read(&r.value) {
                        condition["value"] = value;
                    }
                    condition
                })
                .collect();
            if !conditions.is_empty() {
                trigger["where"] = Value::Array(conditions);
            }
            trigger
        }
        "contact_updated" => {
            let mut trigger =
                json!({"type": "contact_updated", "property": get("trigger_property")});
            if let Some(to) = typed_text::read(get("trigger_to")) {
                trigger["to"] = to;
            }
            trigger
        }
        "subscription_changed" => match get("trigger_subscribed") {
            "true" => json!({"type": "subscription_changed", "subscribed": true}),
            "false" => json!({"type": "subscription_changed", "subscribed": false}),
            other => json!({"type": "subscription_changed", "subscribed": other}),
        },
        other => json!({"type": other}),
    })
}

/// A problem's field in the form's words (`trigger.where[1].op` →
/// "Condition 2, operator"); other fields as they are.
pub fn label(error: &FieldError) -> FieldError {
    let field = &error.field;
    let named = if let Some(rest) = field.strip_prefix("trigger.where[") {
        let (index, part) = rest.split_once(']').unwrap_or((rest, ""));
        let n = index.parse::<usize>().map_or(0, |i| i + 1);
        let part = match part.trim_start_matches('.') {
            "field" => ", field",
            "op" => ", operator",
            "value" => ", value",
            _ => "",
        };
        format!("Condition {n}{part}")
    } else {
        match field.as_str() {
            "trigger" | "trigger.type" => "Starts when".into(),
            "trigger.event" => "Event name".into(),
            "trigger.where" => "Conditions".into(),
            "trigger.property" => "Property".into(),
            "trigger.to" => "Changes to".into(),
            "trigger.subscribed" => "Subscription".into(),
            _ => field.clone(),
        }
    };
    FieldError::new(named, error.message.clone())
}

fn rows(values: &HashMap<String, String>) -> Vec<ConditionRow> {
    // Every row the form has (the body limit bounds them): a trigger made
    // through the API may have any number of conditions, and saving its
    // form must not drop any.
    (0..)
        .map_while(|i| {
            let field = values.get(&format!("where_field_{i}"))?;
            Some(ConditionRow {
                field: field.trim().to_string(),
                op: values
                    .get(&format!("where_op_{i}"))
                    .map_or("eq", |op| op.trim())
                    .to_string(),
                value: values
                    .get(&format!("where_value_{i}"))
                    .map_or("", |v| v.trim())
                    .to_string(),
            })
        })
        .collect()
}

fn row_of(condition: &Condition) -> ConditionRow {
    ConditionRow {
        field: condition.field.clone(),
        op: condition.op.as_str().to_string(),
        value: condition
            .value
            .as_ref()
            .map(typed_text::write)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_kind_becomes_the_apis_trigger() {
        let event = form(&[
            ("trigger_type", "event"),
            ("trigger_event", "trial_ended"),
            ("trigger_property", "ignored"),
            ("where_field_0", "event.properties.plan"),
            ("where_op_0", "eq"),
            ("where_value_0", "pro"),
            ("where_field_1", "event.properties.seats"),
            ("where_op_1", "gte"),
            ("where_value_1", "5"),
            ("where_field_2", ""),
            ("where_op_2", "eq"),
            ("where_value_2", ""),
        ]);
        assert_eq!(
            trigger_json(&event).unwrap(),
            json!({"type": "event", "event": "trial_ended", "where": [
                {"field": "event.properties.plan", "op": "eq", "value": "pro"},
                {"field": "event.properties.seats", "op": "gte", "value": 5}]})
        );
        let changed = form(&[
            ("trigger_type", "contact_updated"),
            ("trigger_property", "plan"),
            ("trigger_to", "\"42\""),
        ]);
        assert_eq!(
            trigger_json(&changed).unwrap(),
            json!({"type": "contact_updated", "property": "plan", "to": "42"})
        );
        let any = form(&[
            ("trigger_type", "contact_updated"),
            ("trigger_property", "plan"),
        ]);
        assert_eq!(
            trigger_json(&any).unwrap(),
            json!({"type": "contact_updated", "property": "plan"})
        );
        let unsubscribed = form(&[
            ("trigger_type", "subscription_changed"),
            ("trigger_subscribed", "false"),
        ]);
        assert_eq!(
            trigger_json(&unsubscribed).unwrap(),
            json!({"type": "subscription_changed", "subscribed": false})
        );
        assert_eq!(
            trigger_json(&form(&[("trigger_type", "api")])).unwrap(),
            json!({"type": "api"})
        );
        assert!(trigger_json(&form(&[("name", "x")])).is_none());
    }

    #[test]
    fn a_stored_trigger_fills_the_form_and_survives_the_round_trip() {
        let stored = keyflow_core::workflows::parse_trigger(&json!({
            "type": "event", "event": "paid",
            "where": [{"field": "event.properties.amount", "op": "gt", "value": 100},
                      {"field": "contact.email", "op": "exists"}]
        }))
        .unwrap();
        let shown = TriggerForm::of(Some(&stored));
        assert_eq!(shown.kind, "event");
        assert_eq!(shown.conditions.len(), 3, "two conditions and a blank row");
        let mut values = form(&[("trigger_type", "event"), ("trigger_event", "paid")]);
        for (i, row) in shown.conditions.iter().enumerate() {
            values.insert(format!("where_field_{i}"), row.field.clone());
            values.insert(format!("where_op_{i}"), row.op.clone());
            values.insert(format!("where_value_{i}"), row.value.clone());
        }
        let again = keyflow_core::workflows::parse_trigger(&trigger_json(&values).unwrap());
        assert_eq!(again.unwrap(), stored);
    }

    #[test]
    fn problems_are_named_by_the_forms_labels() {
        let named = |field: &str| label(&FieldError::new(field, "m")).field;
        assert_eq!(named("trigger.where[1].op"), "Condition 2, operator");
        assert_eq!(named("trigger.where[0].field"), "Condition 1, field");
        assert_eq!(named("trigger.event"), "Event name");
        assert_eq!(named("steps[2].url"), "steps[2].url");
    }
}

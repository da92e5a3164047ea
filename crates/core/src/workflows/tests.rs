use serde_json::json;

use super::*;

fn error_fields(value: Value) -> Vec<String> {
    parse_steps(&value)
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect()
}

#[test]
fn a_full_definition_reads_and_round_trips() {
    let trigger = json!({"type": "event", "event": "trial_ended",
        "where": [{"field": "event.properties.plan", "op": "eq", "value": "pro"}]});
    let steps = json!([
        {"type": "webhook", "url": "https://billing.example.com/hook", "method": "PUT",
         "headers": {"X-Team": "{{variables.team}}"},
         "body": {"email": "{{contact.email}}", "run": "{{run.id}}"}},
        {"type": "wait", "seconds": 259200},
        {"type": "branch", "if": [{"field": "contact.properties.paid", "op": "not_exists"}],
         "then": [{"type": "update_contact", "properties": {"status": "churned", "old": null}},
                  {"type": "unsubscribe"}],
         "else": [{"type": "exit"}]},
        {"type": "subscribe"}
    ]);
    let t = parse_trigger(&trigger).unwrap();
    let s = parse_steps(&steps).unwrap();
    assert_eq!(s.len(), 4);
    // What is stored reads back as the same definition.
    let stored_t: Trigger = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
    let stored_s: Vec<Step> = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(stored_t, t);
    assert_eq!(stored_s, s);
    // Header names are kept in lower case; `null` in properties survives.
    let Step::Webhook {
        headers, method, ..
    } = &s[0]
    else {
        panic!()
    };
    assert_eq!(headers.get("x-team").unwrap(), "{{variables.team}}");
    assert_eq!(*method, WebhookMethod::Put);
    let Step::Branch { then, .. } = &s[2] else {
        panic!()
    };
    let Step::UpdateContact { properties } = &then[0] else {
        panic!()
    };
    assert_eq!(properties.get("old"), Some(&Value::Null));
    for trigger in [
        json!({"type": "contact_updated", "property": "plan", "to": null}),
        json!({"type": "contact_updated", "property": "plan"}),
        json!({"type": "subscription_changed", "subscribed": false}),
        json!({"type": "api"}),
    ] {
        let t = parse_trigger(&trigger).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), trigger);
    }
}

#[test]
fn problems_are_reported_at_their_path() {
    assert_eq!(
        error_fields(json!([
            {"type": "exit"},
            {"type": "wait", "seconds": 0},
            {"type": "branch", "if": [], "then": [{"type": "webhook", "url": "ftp://x"}]},
            {"type": "teleport"},
            {"type": "webhook", "url": "https://u:p@example.com", "method": "GET",
             "headers": {"Host": "x", "ok": "a\nb", "bad name": "1"}, "body": {"a": "{{secret}}"}},
            {"type": "update_contact", "properties": {"": 1, "a": "{{contact.subscribed}}"}},
            {"type": "subscribe", "extra": 1}
        ])),
        [
            "steps[1].seconds",
            "steps[2].then[0].url",
            "steps[3].type",
            "steps[4].url",
            "steps[4].method",
            "steps[4].headers.Host",
            "steps[4].headers.bad name",
            "steps[4].headers.ok",
            "steps[4].body",
            "steps[5].properties.",
            "steps[5].properties",
            "steps[6].extra",
        ]
    );
    let bad_trigger = |v: Value| -> Vec<String> {
        parse_trigger(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(bad_trigger(json!({"type": "cron"})), ["trigger.type"]);
    assert_eq!(bad_trigger(json!({"type": "event"})), ["trigger.event"]);
    assert_eq!(
        bad_trigger(
            json!({"type": "event", "event": "x", "where": [{"field": "x", "op": "eq", "value": 1}]})
        ),
        ["trigger.where[0].field"]
    );
    assert_eq!(
        bad_trigger(json!({"type": "subscription_changed"})),
        ["trigger.subscribed"]
    );
    assert_eq!(
        bad_trigger(json!({"type": "api", "event": "x"})),
        ["trigger.event"]
    );
    assert_eq!(error_fields(json!({"type": "exit"})), ["steps"]);
    assert_eq!(error_fields(json!([])), ["steps"]);
}

#[test]
fn size_and_depth_are_bounded() {
    let many: Vec<Value> = (0..51).map(|_| json!({"type": "exit"})).collect();
    assert_eq!(error_fields(Value::Array(many)), ["steps"]);
    let fifty: Vec<Value> = (0..50).map(|_| json!({"type": "exit"})).collect();
    assert!(parse_steps(&Value::Array(fifty)).is_ok());
    // Branches count, and their steps too.
    let mut nested = json!([{"type": "exit"}]);
    for _ in 0..5 {
        nested = json!([{"type": "branch", "if": [], "then": nested}]);
    }
    assert!(parse_steps(&nested).is_ok());
    let too_deep = json!([{"type": "branch", "if": [], "then": nested}]);
    let fields = error_fields(too_deep);
    assert_eq!(fields, ["steps[0].then[0].then[0].then[0].then[0].then[0]"]);
    // A huge list stops being read early, still refused.
    let huge: Vec<Value> = (0..100_000).map(|_| json!({"type": "exit"})).collect();
    assert_eq!(error_fields(Value::Array(huge)), ["steps"]);
    assert!(check_name("  Onboarding  ").is_ok());
    assert!(check_name("").is_err());
    assert!(check_name(&"x".repeat(65)).is_err());
}

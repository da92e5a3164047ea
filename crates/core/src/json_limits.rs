//! Limits on client-supplied JSON: property objects and nesting depth.

use serde_json::{Map, Value};

use crate::error::FieldError;

pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
pub const MAX_PROPERTY_KEYS: usize = 256;
pub const MAX_JSON_DEPTH: usize = 32;

/// Nesting depth of a JSON value (a scalar is 0, `{}` is 1).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a stored properties object against SPEC's limits.
pub fn check_properties(field: &str, props: &Map<String, Value>) -> Result<(), FieldError> {
    properties_json(props)
        .map(|_| ())
        .map_err(|m| FieldError::new(field, m))
}

/// The properties object as the JSON text to store, once it is within SPEC's
/// limits (the size limit is on this text); else the problem, for the caller
/// to attach to its field name.
pub fn properties_json(props: &Map<String, Value>) -> Result<String, String> {
    if props.len() > MAX_PROPERTY_KEYS {
        return Err(format!("at most {MAX_PROPERTY_KEYS} keys"));
    }
    let text = serde_json::to_string(props).map_err(|e| format!("could not be encoded: {e}"))?;
    if text.len() > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "at most {} KiB of JSON",
            MAX_PROPERTIES_BYTES / 1024
        ));
    }
    if props.values().map(depth).max().unwrap_or(0) + 1 > MAX_JSON_DEPTH {
        return Err(format!("nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    Ok(text)
}

/// Merges `patch` into `base`: a `null` value removes the key.
pub fn merge_properties(
    base: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = base.clone();
    for (k, v) in patch {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_limits() {
        let base = json!({"plan": "pro", "seats": 3})
            .as_object()
            .unwrap()
            .clone();
        let patch = json!({"plan": null, "country": "NL"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            Value::Object(merge_properties(&base, &patch)),
            json!({"seats": 3, "country": "NL"})
        );
        let mut many = Map::new();
        for i in 0..257 {
            many.insert(format!("k{i}"), json!(i));
        }
        assert!(check_properties("properties", &many).is_err());
        let big = json!({"x": "y".repeat(33 * 1024)})
            .as_object()
            .unwrap()
            .clone();
        assert!(check_properties("properties", &big).is_err());
        let mut deep = json!(1);
        for _ in 0..32 {
            deep = json!([deep]);
        }
        let nested = json!({ "d": deep }).as_object().unwrap().clone();
        assert!(check_properties("properties", &nested).is_err());
        assert_eq!(depth(&json!({"a": [1]})), 2);
    }
}

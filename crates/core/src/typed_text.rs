//! Values typed as text where JSON values are wanted: a workflow trigger's
//! form fields and the cells of a contacts CSV file. A text is read as JSON
//! when it is JSON (`42`, `true`, `null`, `"42"`, `[1]`) and as plain text
//! otherwise, so `pro` needs no quotes; writing a value gives the text that
//! reads back as that same value.

use serde_json::Value;

/// A typed text's value; `None` when nothing was typed. A number is read as
/// a number only when JSON writes it back the same way: `123456789012345678901234`
/// (an id too long for a float) and `1.50` stay text, never silently rounded.
pub fn read(text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let text_value = || Value::String(text.to_string());
    Some(match serde_json::from_str::<Value>(text) {
        Ok(Value::Number(n)) if n.to_string() != text => text_value(),
        Ok(value) => value,
        Err(_) => text_value(),
    })
}

/// The text that [`read`] turns back into `value`: plain text unless it
/// would read as something else (`"42"`, `" padded "` and `""` are quoted).
pub fn write(value: &Value) -> String {
    match value {
        Value::String(text)
            if !text.is_empty()
                && text.trim() == text
                && serde_json::from_str::<Value>(text).is_err() =>
        {
            text.clone()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn text_is_text_and_json_is_json() {
        assert_eq!(read("pro"), Some(json!("pro")));
        assert_eq!(read("42"), Some(json!(42)));
        assert_eq!(read("\"42\""), Some(json!("42")));
        assert_eq!(read("02134"), Some(json!("02134")), "not a JSON number");
        assert_eq!(read("+1 555 0100"), Some(json!("+1 555 0100")));
        let long_id = "123456789012345678901234";
        assert_eq!(
            read(long_id),
            Some(json!(long_id)),
            "not rounded to a float"
        );
        assert_eq!(read("1.50"), Some(json!("1.50")));
        assert_eq!(read("-7"), Some(json!(-7)));
        assert_eq!(read(""), None);
    }

    #[test]
    fn written_values_read_back_as_themselves() {
        for value in [
            json!("pro"),
            json!("42"),
            json!("true"),
            json!(" padded "),
            json!(""),
            json!(42),
            json!(1.5),
            json!(false),
            json!(null),
            json!(["a", {"b": 1}]),
        ] {
            let text = write(&value);
            assert_eq!(read(&text).unwrap_or(json!("")), value, "{value} as {text}");
        }
    }

    proptest! {
        #[test]
        fn any_string_survives_the_round_trip(text in ".*") {
            let value = Value::String(text);
            let written = write(&value);
            prop_assert_eq!(read(&written).unwrap_or(Value::String(String::new())), value);
        }
    }
}

//! JSON request bodies with SPEC's errors: 415 for other content types, 413
//! past the body limit, 400 for malformed JSON, 422 with the field path for
//! wrong types. Unknown fields are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use keyflow_core::ErrorCode;
use keyflow_core::json_limits::MAX_JSON_DEPTH;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body (with or without a content type) is `T::default()`.
pub struct JsonOrEmpty<T>(pub T);

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from_status(rejection.status())
        } else {
            ApiError::new(
                ErrorCode::InvalidJson,
                "The request body could not be read.",
            )
        }
    })
}

/// Nesting depth of raw JSON (brackets outside strings), checked before parsing.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether the JSON text holds an escaped NUL (`\u0000`) in a string.
/// Escapes are walked pair by pair, so `\\u0000` (a backslash, then
/// "u0000") is not one.
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|b| *b == b'\\') {
        let at = i + offset;
        if bytes.get(at + 1) == Some(&b'u') && bytes.get(at + 2..at + 6) == Some(b"0000") {
            return true;
        }
        i = at + 2;
        if i >= bytes.len() {
            break;
        }
    }
    false
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // PostgreSQL cannot store NUL in text; refused alike on both stores.
    if has_escaped_nul(bytes) {
        return Err(ApiError::field(
            "body",
            "strings must not contain the NUL character (\\u0000)",
        ));
    }
    if nesting_depth(bytes) > MAX_JSON_DEPTH {
        return Err(ApiError::field(
            "body",
            format!("JSON is nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    // Every body is an object: serde would also build a struct from an
    // array of its fields in order (`["team"]` as `{"plan": "team"}`).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::field("body", "must be a JSON object"),
                Err(e) => ApiError::new(
                    ErrorCode::InvalidJson,
                    format!("The body is not valid JSON: {e}"),
                ),
            },
        );
    }
    // The common case, valid input, parses without tracking the path; only a
    // failure parses again with the tracker to name the field at fault.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => Err(explain_failure::<T>(bytes)),
    }
}

/// The error for a body that does not parse as `T`: the field path for wrong
/// data, `invalid_json` for broken syntax.
fn explain_failure<T: DeserializeOwned>(bytes: &[u8]) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, ApiError> = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            let message = hide_value(&strip_position(&inner.to_string()));
            let mut field = if path == "." { String::new() } else { path };
            // "missing field `x`" is reported at the parent; name the field itself.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(missing);
            }
            if field.is_empty() {
                field.push_str("body");
            }
            ApiError::field(&field, message)
        } else {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("The body is not valid JSON: {inner}"),
            )
        }
    });
    match parsed.and_then(|_| {
        de.end().map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("The body is not valid JSON: {e}"),
            )
        })
    }) {
        Err(error) => error,
        // Unreachable unless the two parsers disagree; say so rather than panic.
        Ok(()) => ApiError::new(ErrorCode::InvalidJson, "The body could not be parsed."),
    }
}

/// serde's `invalid type: string "…", expected …` quotes the value it got,
/// which may be a secret sent in the wrong place (a bare client secret as
/// the body): keep the type, drop the value.
fn hide_value(message: &str) -> String {
    for kind in ["string \"", "string `"] {
        if let Some(start) = message.find(kind)
            && let Some(end) = message.rfind(", expected")
            && end > start
        {
            return format!("{}string{}", &message[..start], &message[end..]);
        }
    }
    message.to_string()
}

/// serde_json appends " at line X column Y", which means nothing to a field path.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::from_status(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let bytes = read_body(req, state).await?;
        // No body, or JSON's `null`: the defaults.
        if bytes.iter().all(u8::is_ascii_whitespace) || (json && bytes.trim_ascii() == b"null") {
            return Ok(JsonOrEmpty(T::default()));
        }
        if !json {
            return Err(ApiError::from_status(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ));
        }
        parse_json(&bytes).map(JsonOrEmpty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Plan {
        plan: String,
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(parse_json::<Plan>(br#" {"plan": "team"}"#).is_ok());
        // serde alone would take the array as the struct's fields in order.
        for body in [&br#"["team"]"#[..], b"42", b"null", br#""team""#] {
            let e = parse_json::<Plan>(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{body:?}");
            assert!(
                e.message.ends_with("body: must be a JSON object"),
                "{body:?}"
            );
        }
        let broken = parse_json::<Plan>(b"[1,").unwrap_err();
        assert_eq!(broken.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn escaped_nul_is_found_exactly() {
        assert!(has_escaped_nul(br#"{"a":"x\u0000"}"#));
        assert!(has_escaped_nul(br#"{"a\u0000":1}"#));
        assert!(!has_escaped_nul(br#"{"a":"x\\u0000"}"#));
        assert!(has_escaped_nul(br#"{"a":"\u00001"}"#));
        assert!(!has_escaped_nul(br#"{"a":"\u0001"}"#));
        assert!(!has_escaped_nul(br#"{"a":"\"}"#));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Row {
        cidr: String,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        rows: Vec<Row>,
        n: Option<u32>,
    }

    fn field_of(json: &str) -> String {
        let err = parse_json::<Body>(json.as_bytes()).unwrap_err();
        err.details["fields"][0]["field"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn field_paths() {
        assert_eq!(field_of(r#"{"rows": [{"x": 1}]}"#), "rows[0].cidr");
        assert_eq!(field_of(r#"{"rows": [], "n": "five"}"#), "n");
        assert_eq!(field_of(r#"{}"#), "rows");
        assert_eq!(field_of(r#"[]"#), "body");
        let err = parse_json::<Body>(b"{").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        let err = parse_json::<Body>(br#"{"rows": []} trailing"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        let deep = format!(
            "{{\"rows\": [], \"x\": {}{}}}",
            "[".repeat(32),
            "]".repeat(32)
        );
        assert_eq!(
            parse_json::<Body>(deep.as_bytes()).unwrap_err().code,
            ErrorCode::ValidationFailed
        );
        let ok = format!(
            "{{\"rows\": [], \"x\": {}{}}}",
            "[".repeat(31),
            "]".repeat(31)
        );
        assert!(parse_json::<Body>(ok.as_bytes()).is_ok());
        assert_eq!(nesting_depth(br#"{"a": "[[[[\"{{"}"#), 1);
    }

    #[test]
    fn refused_values_are_not_repeated() {
        let secret = "cU4HsecretSecretSecret0123456789abcdef";
        for body in [
            format!("\"{secret}\""),
            format!(r#"{{"rows": [], "n": "{secret}"}}"#),
        ] {
            let err = parse_json::<Body>(body.as_bytes()).unwrap_err();
            let text = serde_json::to_string(&err.details).unwrap() + &err.message;
            assert!(!text.contains(secret), "{text}");
            // A bare string is not an object; a string field is the wrong type.
            assert!(
                text.contains("invalid type: string, expected")
                    || text.contains("body: must be a JSON object"),
                "{text}"
            );
        }
    }
}

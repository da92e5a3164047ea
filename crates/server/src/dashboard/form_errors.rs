//! What was wrong with a submitted form, said the way people read forms: a
//! summary at the top whose entries link to their fields, and each field's
//! message next to it, in words ("IP allow-list, row 3: address", never
//! `ip_allowlist[2].cidr`), tied to its input with `aria-invalid` and
//! `aria-describedby`.

use keyflow_core::FieldError;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct FormErrors(Vec<ShownError>);

#[derive(Debug, Clone, PartialEq)]
pub struct ShownError {
    /// The id of the input the message belongs to (the summary links to it).
    pub id: String,
    /// The field's name as the form shows it.
    pub label: String,
    pub message: String,
}

impl FormErrors {
    /// One message for the input `id`.
    pub fn one(id: &str, label: &str, message: impl Into<String>) -> Self {
        Self(vec![ShownError {
            id: id.to_string(),
            label: label.to_string(),
            message: message.into(),
        }])
    }

    /// A refusal that belongs to no one field (shown in the summary only).
    pub fn general(message: impl Into<String>) -> Self {
        Self::one("", "", message)
    }

    /// The API's field errors (`ip_allowlist[2].cidr`) on the dashboard's
    /// inputs (`cidr_2`, "IP allow-list, row 3: address").
    pub fn from_fields(fields: &[FieldError]) -> Self {
        let mut shown: Vec<ShownError> = Vec::new();
        for f in fields {
            let (id, label) = input_of(&f.field);
            // One message per input: a list field may report several items.
            if shown.iter().any(|s| s.id == id) {
                continue;
            }
            shown.push(ShownError {
                id,
                label,
                message: sentence(&f.message),
            });
        }
        Self(shown)
    }

    /// Adds the message of input `id`.
    pub fn push(&mut self, id: &str, label: &str, message: impl Into<String>) {
        self.0.push(ShownError {
            id: id.to_string(),
            label: label.to_string(),
            message: message.into(),
        });
    }

    /// An operation's refusal: its field errors on their inputs when it
    /// has them, else its message in the summary.
    pub fn from_refusal(e: crate::operations::OpError) -> Self {
        if let crate::operations::OpError::Refused { details, .. } = &e
            && let Some(fields) = details["fields"].as_array()
        {
            let fields: Vec<FieldError> = fields
                .iter()
                .map(|f| FieldError {
                    field: f["field"].as_str().unwrap_or_default().to_string(),
                    message: f["message"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            if !fields.is_empty() {
                return Self::from_fields(&fields);
            }
        }
        Self::general(super::page::refusal(e))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ShownError> {
        self.0.iter()
    }

    /// The message for the input `id`, if it has one.
    pub fn message(&self, id: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.message.as_str())
    }

    /// The message for row `row`'s input `name` (`cidr_2`).
    pub fn row_message(&self, name: &str, row: &usize) -> Option<&str> {
        self.message(&format!("{name}_{row}"))
    }

    /// `aria-invalid` and `aria-describedby` for the input `id` when it has
    /// a message. Templates print it unescaped: ids are the dashboard's own
    /// (literals and row numbers), never user text.
    pub fn attrs(&self, id: &str) -> String {
        if self.message(id).is_some() {
            format!(" aria-invalid=\"true\" aria-describedby=\"{id}-error\"")
        } else {
            String::new()
        }
    }

    pub fn row_attrs(&self, name: &str, row: &usize) -> String {
        self.attrs(&format!("{name}_{row}"))
    }
}

/// The dashboard input and its label for an API field path.
fn input_of(field: &str) -> (String, String) {
    let (head, rest) = match field.split_once('[') {
        Some((head, rest)) => (head, Some(rest)),
        None => (field.split('.').next().unwrap_or(field), None),
    };
    let row = rest
        .and_then(|r| r.split_once(']'))
        .and_then(|(n, tail)| Some((n.parse::<usize>().ok()?, tail.trim_start_matches('.'))));
    let fixed = |id: &str, label: &str| (id.to_string(), label.to_string());
    match (head, row) {
        ("ip_allowlist", Some((n, "description"))) => (
            format!("description_{n}"),
            format!("IP allow-list, row {}: description", n + 1),
        ),
        ("ip_allowlist", Some((n, _))) => (
            format!("cidr_{n}"),
            format!("IP allow-list, row {}: address", n + 1),
        ),
        ("ip_allowlist", None) => fixed("cidr_0", "IP allow-list"),
        ("name", _) => fixed("name", "Name"),
        ("expires_at" | "expires_in_seconds", _) => fixed("expires_at", "Expires"),
        ("scopes" | "type", _) => fixed("permissions", "Permissions"),
        ("allowed_events", _) => fixed("allowed_events", "Allowed events"),
        ("allowed_origins", _) => fixed("allowed_origins", "Allowed origins"),
        ("rate_limit", _) => fixed("limit", "Rate limit"),
        ("email", _) => fixed("email", "Email"),
        ("password", _) => fixed("password", "Password"),
        ("role", _) => fixed("role", "Role"),
        ("workspace", _) => fixed("workspace", "Workspace"),
        ("project", _) => fixed("project", "First project"),
        ("plan", _) => fixed("plan", "Plan"),
        ("cache_ttl_minutes" | "metrics_cache_ttl_minutes", _) => fixed("ttl", "Cache TTL"),
        (other, _) => (other.to_string(), other.replace('_', " ")),
    }
}

/// "must be a valid CIDR" → "Must be a valid CIDR."
fn sentence(message: &str) -> String {
    let mut chars = message.trim().chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(field: &str, message: &str) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    #[test]
    fn api_paths_become_inputs_and_words() {
        let errors = FormErrors::from_fields(&[
            field(
                "ip_allowlist[2].cidr",
                "must be an IP address or CIDR range",
            ),
            field("ip_allowlist[0].description", "is too long"),
            field("allowed_events[1]", "must be 1 to 128 characters"),
            field("allowed_events[3]", "must be 1 to 128 characters"),
            field("name", "is required"),
        ]);
        let shown: Vec<(&str, &str, &str)> = errors
            .iter()
            .map(|e| (e.id.as_str(), e.label.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "cidr_2",
                    "IP allow-list, row 3: address",
                    "Must be an IP address or CIDR range."
                ),
                (
                    "description_0",
                    "IP allow-list, row 1: description",
                    "Is too long."
                ),
                (
                    "allowed_events",
                    "Allowed events",
                    "Must be 1 to 128 characters."
                ),
                ("name", "Name", "Is required."),
            ]
        );
        assert_eq!(
            errors.attrs("name"),
            r#" aria-invalid="true" aria-describedby="name-error""#
        );
        assert_eq!(errors.attrs("expires_at"), "");
        assert_eq!(
            errors.row_attrs("cidr", &2),
            r#" aria-invalid="true" aria-describedby="cidr_2-error""#
        );
        assert_eq!(errors.row_attrs("cidr", &1), "");
    }
}

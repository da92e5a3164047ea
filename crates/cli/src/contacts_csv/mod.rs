//! Contacts as CSV (SPEC §9): `keyflow contacts import` and `export`.
//!
//! The columns: `email`, `external_id`, `first_name`, `last_name`,
//! `subscribed`, and one per property, `properties.NAME` (a column with any
//! other name is a property of that name too). Export writes exactly what
//! import reads, so an export imported into another project gives the same
//! contacts. Property cells are typed text (`keyflow_core::typed_text`): `42`
//! is a number, `"42"` and `pro` are text.

pub mod export;
pub mod import;

/// What a column of the file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Email,
    ExternalId,
    FirstName,
    LastName,
    Subscribed,
    Property(String),
    /// `id`, `created_at`, `updated_at`: Keyflow assigns them.
    Ignored,
}

/// The fixed columns, in the order export writes them.
pub const FIELDS: [&str; 5] = [
    "email",
    "external_id",
    "first_name",
    "last_name",
    "subscribed",
];

/// Each header cell's column; duplicates and empty names are refused.
pub fn columns_of(headers: &csv::StringRecord) -> Result<Vec<Column>, String> {
    let mut columns = Vec::with_capacity(headers.len());
    for (i, header) in headers.iter().enumerate() {
        let raw = header.trim_start_matches('\u{feff}');
        let name = raw.trim();
        let column = match name.to_ascii_lowercase().as_str() {
            "" => return Err(format!("column {} of the header row has no name", i + 1)),
            "email" => Column::Email,
            "external_id" => Column::ExternalId,
            "first_name" => Column::FirstName,
            "last_name" => Column::LastName,
            "subscribed" => Column::Subscribed,
            "id" | "created_at" | "updated_at" => Column::Ignored,
            // `properties.NAME` exactly as written (a name may be empty or
            // start with a space: export writes every name it finds).
            _ => match raw.strip_prefix("properties.") {
                Some(property) => Column::Property(property.to_string()),
                None => Column::Property(name.to_string()),
            },
        };
        if column != Column::Ignored && columns.contains(&column) {
            return Err(format!("the header row names {name:?} twice"));
        }
        columns.push(column);
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_fields_and_properties() {
        let headers = csv::StringRecord::from(vec![
            "\u{feff}Email",
            "external_id",
            "properties.plan",
            "seats",
            "id",
            "properties.a.b",
            "properties.",
            "properties. padded ",
        ]);
        assert_eq!(
            columns_of(&headers).unwrap(),
            [
                Column::Email,
                Column::ExternalId,
                Column::Property("plan".into()),
                Column::Property("seats".into()),
                Column::Ignored,
                Column::Property("a.b".into()),
                Column::Property("".into()),
                Column::Property(" padded ".into()),
            ]
        );
        for bad in [
            vec!["email", "EMAIL"],
            vec!["plan", "properties.plan"],
            vec!["email", ""],
            vec!["properties.", "properties."],
        ] {
            assert!(
                columns_of(&csv::StringRecord::from(bad.clone())).is_err(),
                "{bad:?}"
            );
        }
    }
}

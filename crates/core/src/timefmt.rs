//! RFC 3339 <-> Unix milliseconds. Storage keeps integer milliseconds so both
//! database backends agree; the wire uses RFC 3339 UTC.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::UnixMillis;

pub fn format_rfc3339(ms: UnixMillis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t.format(&Rfc3339).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub fn parse_rfc3339(text: &str) -> Option<UnixMillis> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let ms = 1_790_000_000_123;
        let text = format_rfc3339(ms);
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(parse_rfc3339(&text), Some(ms));
    }

    #[test]
    fn accepts_offsets_and_rejects_garbage() {
        assert_eq!(
            parse_rfc3339("2030-01-01T01:00:00+01:00"),
            parse_rfc3339("2030-01-01T00:00:00Z")
        );
        assert_eq!(parse_rfc3339("tomorrow"), None);
        assert_eq!(parse_rfc3339("2030-01-01"), None);
    }
}

//! Rules for human-readable names (keys, contacts, workspaces, projects).

/// Bidirectional formatting characters (embeddings, overrides, isolates and
/// marks). In a name they can make text display in another order than it is
/// stored ("Trojan Source"): a key named to look like another.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether a name holds a character no name should: a control character
/// (NUL included) or a bidirectional formatting character.
pub fn has_forbidden_name_chars(name: &str) -> bool {
    name.chars().any(|c| c.is_control() || is_bidi_control(c))
}

/// An email as stored and compared: trimmed and NFC-normalised, so that the
/// same address typed with composed or decomposed accents is one address.
pub fn nfc_email(email: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    email.trim().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_and_bidi() {
        assert!(!has_forbidden_name_chars("Zoë's key (prod)"));
        assert!(has_forbidden_name_chars("a\u{202E}txt.exe"));
        assert!(has_forbidden_name_chars("a\u{2066}b"));
        assert!(has_forbidden_name_chars("a\u{200F}"));
        assert!(has_forbidden_name_chars("a\0b"));
    }

    #[test]
    fn emails_compare_in_nfc() {
        assert_eq!(nfc_email(" jose\u{0301}@x.io "), "jos\u{e9}@x.io");
    }
}

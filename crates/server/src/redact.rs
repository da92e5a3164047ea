//! Keeps API keys out of logs: anything shaped like a key, anywhere in a
//! logged text (after percent-decoding, so `%5F` for `_` or `Bearer%20<key>`
//! change nothing), is cut to its display prefix.

/// `text` percent-decoded (invalid sequences kept as they are), then with
/// every key-shaped run cut to its first 12 characters and `…`.
pub fn redact_keys(text: &str) -> String {
    let decoded = percent_decode(text);
    let mut out = String::with_capacity(decoded.len());
    let mut rest = decoded.as_str();
    while let Some(at) = find_key_start(rest) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let run = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if run >= MIN_KEY_LIKE {
            out.push_str(&tail[..keyflow_core::keys::PREFIX_LEN.min(run)]);
            out.push('…');
        } else {
            out.push_str(&tail[..run]);
        }
        rest = &tail[run..];
    }
    out.push_str(rest);
    out
}

/// A near-miss (a key with a typo or cut short) is redacted too: it may be
/// a real key. Shorter runs (`sk_`, a word) are not keys.
const MIN_KEY_LIKE: usize = 20;

fn find_key_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find(|&i| {
        matches!(&bytes[i..i + 3], b"sk_" | b"ck_" | b"ro_" | b"mk_") && text.is_char_boundary(i)
    })
}

fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_keys;
    use keyflow_core::{Environment, KeyType};

    #[test]
    fn keys_are_cut_wherever_they_appear() {
        let key = keyflow_core::keys::generate_key(KeyType::Secret, Environment::Live).unwrap();
        let k = &key.text;
        let underscore_encoded = k.replacen('_', "%5F", 2);
        for path in [
            format!("/v1/keys/{k}"),
            format!("/v1/keys/Bearer%20{k}"),
            format!("/v1/keys/{k}%0A"),
            format!("/v1/keys/{k}.json"),
            format!("/v1/keys/{k},"),
            format!("/v1/keys/prefix{k}"),
            format!("/v1/keys/{underscore_encoded}/roll"),
            format!("/v1/{}", &k[..k.len() - 1]),
        ] {
            let redacted = redact_keys(&path);
            assert!(!redacted.contains(&k[12..20]), "{path} -> {redacted}");
            assert!(redacted.contains(&key.prefix), "{path} -> {redacted}");
        }
        assert_eq!(
            redact_keys("/v1/keys/01a2-uuid/roll"),
            "/v1/keys/01a2-uuid/roll"
        );
        assert_eq!(redact_keys("/v1/task_list/ro_ok"), "/v1/task_list/ro_ok");
        assert_eq!(redact_keys("/v1/a%zz"), "/v1/a%zz");
    }
}

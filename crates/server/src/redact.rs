//! Keeps API keys out of logs, and logs free of forged lines: anything
//! shaped like a key, anywhere in a logged text (after percent-decoding,
//! repeated so that double encoding changes nothing), is cut to a short
//! prefix; everything but printable ASCII is written back percent-encoded,
//! so a path cannot start a new log line (`%0A`, U+2028), carry terminal
//! escapes or reorder what a reader sees (bidirectional controls).

/// `text` percent-decoded, with every key-shaped run cut to its first 12
/// characters and `…`, every other long alphanumeric run (a key's secret
/// part without its prefix) to its first 4, and everything but printable
/// ASCII re-encoded. Text still encoded after [`DECODE_ROUNDS`] rounds is
/// not logged at all.
pub fn redact_keys(text: &str) -> String {
    let mut decoded = text.to_string();
    let mut settled = false;
    for _ in 0..DECODE_ROUNDS {
        let next = percent_decode(&decoded);
        if next == decoded {
            settled = true;
            break;
        }
        decoded = next;
    }
    if !settled {
        return "(a path percent-encoded more than 8 times, not logged)".to_string();
    }
    let mut out = String::with_capacity(decoded.len());
    let mut rest = decoded.as_str();
    while let Some(at) = find_key_start(rest) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let run = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
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
    cut_long_runs(&out)
}

/// Percent-decoding rounds before a path counts as deliberately obscured.
const DECODE_ROUNDS: usize = 8;

/// Any run of at least this many ASCII letters and digits is treated as a
/// secret (a key's 38-character body, a client secret) whatever precedes it.
const LONG_RUN: usize = 32;

fn cut_long_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= LONG_RUN {
            out.push_str(&run[..4]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut out);
        if !(c.is_ascii_graphic() || c == ' ' || c == '…') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A near-miss (a key with a typo or cut short) is redacted too: it may be
/// a real key. Shorter runs (`sk_`, a word) are not keys.
const MIN_KEY_LIKE: usize = 20;

fn find_key_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find(|&i| {
        matches!(&bytes[i..i + 3], b"sk_" | b"ck_" | b"ro_" | b"mk_" | b"mt_")
            && text.is_char_boundary(i)
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
            format!("/v1/keys/{}", k.replacen('_', "%255F", 2)),
            format!("/v1/keys/{}", k.to_uppercase()),
            format!("/v1/keys/{}", k.replacen('_', "-", 2)),
        ] {
            let redacted = redact_keys(&path);
            let body = &k[12..20];
            assert!(
                !redacted.contains(body) && !redacted.contains(&body.to_uppercase()),
                "{path} -> {redacted}"
            );
        }
        // The secret part alone, with nothing before it.
        assert!(!redact_keys(&format!("/v1/x/{}", &k[8..])).contains(&k[12..40]));
        // No forged log lines, terminal escapes or reordered text.
        assert_eq!(
            redact_keys("/v1/x%0A2026-01-01%20INFO%20forged%1B[31m"),
            "/v1/x%0A2026-01-01 INFO forged%1B[31m"
        );
        assert_eq!(
            redact_keys("/v1/a%E2%80%A8b%E2%80%AEc"),
            "/v1/a%E2%80%A8b%E2%80%AEc"
        );
        // Encoded over and over: not logged.
        let mut nested = k.clone();
        for _ in 0..9 {
            nested = nested.replace('%', "%25").replace('_', "%5F");
        }
        // A whole key in a path becomes its display prefix and `…`.
        assert_eq!(
            redact_keys(&format!("/v1/keys/{k}")),
            format!("/v1/keys/{}…", key.prefix)
        );
        let redacted = redact_keys(&format!("/v1/keys/{nested}"));
        assert!(!redacted.contains(&k[12..20]), "{redacted}");
        assert_eq!(
            redact_keys("/v1/keys/01a2-uuid/roll"),
            "/v1/keys/01a2-uuid/roll"
        );
        assert_eq!(redact_keys("/v1/task_list/ro_ok"), "/v1/task_list/ro_ok");
        assert_eq!(redact_keys("/v1/a%zz"), "/v1/a%zz");
    }

    #[test]
    fn metrics_access_tokens_are_cut_whole() {
        let (token, _) = crate::metrics_token::mint().unwrap();
        let redacted = redact_keys(&format!("/v1/metrics/events.count?token={token}&x=1"));
        assert!(!redacted.contains(&token[12..20]), "{redacted}");
        assert!(redacted.ends_with("…&x=1"), "{redacted}");
    }
}

//! Metrics API access tokens (SPEC §4): what `POST /v1/metrics/token` hands
//! out for a credential id and its client secret.
//!
//! A token is `mt_` and 43 random base62 characters (over 256 bits). Only
//! its SHA-256 is stored (`metrics_tokens`, with the credential id and the
//! expiry), like keys and client secrets: a copy of the database yields no
//! working token. Every instance reads the same table, so a token works on
//! all of them; rotating the credential leaves its tokens naming an id that
//! no longer exists, so they stop at once.

use keyflow_core::KeyDigest;
use keyflow_core::keys::random_base62;

const PREFIX: &str = "mt_";
const RANDOM_LEN: usize = 43;

/// Lifetime of a token unless the exchange asks for another.
pub const DEFAULT_TTL_SECS: i64 = 900;
/// The longest lifetime a token may have (SPEC §4: at most one hour).
pub const MAX_TTL_SECS: i64 = 3600;
/// The shortest lifetime the exchange grants.
pub const MIN_TTL_SECS: i64 = 60;

/// A new token and the digest to store.
pub fn mint() -> Option<(String, KeyDigest)> {
    let token = format!("{PREFIX}{}", random_base62(RANDOM_LEN).ok()?);
    let digest = KeyDigest::of(&token);
    Some((token, digest))
}

/// The digest of `presented` if it is shaped like a token (checked before
/// any lookup, so garbage never reaches the cache or the database).
pub fn digest_of(presented: &str) -> Option<KeyDigest> {
    let random = presented.strip_prefix(PREFIX)?;
    (random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| KeyDigest::of(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_recognised_and_distinct() {
        let (a, digest) = mint().unwrap();
        let (b, _) = mint().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("mt_") && a.len() == 46, "{a}");
        assert_eq!(digest_of(&a), Some(digest));
        for garbage in [
            "",
            "mt_",
            "mt_short",
            &format!("{a}x"),
            &a[..a.len() - 1],
            &a.replacen('m', "M", 1),
            &format!("mt_{}-", &a[3..a.len() - 1]),
        ] {
            assert!(digest_of(garbage).is_none(), "{garbage}");
        }
    }
}

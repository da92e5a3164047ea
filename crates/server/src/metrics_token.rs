//! Metrics API access tokens (SPEC §4): what `POST /v1/metrics/token` hands
//! out for a credential id and its client secret.
//!
//! A token is stateless, so every instance accepts it without shared
//! memory: `mt_<payload>.<mac>`, the payload `<credential id>.<expiry ms>`
//! and the MAC an HMAC-SHA256 of it keyed by the credential's stored secret
//! digest. Rotating the credential replaces its id and digest, so every
//! token of the old one stops working at once; the expiry caps the rest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use keyflow_core::KeyDigest;
use keyflow_core::clock::UnixMillis;
use sha2::Sha256;

const PREFIX: &str = "mt_";
/// Keeps these MACs apart from any other use of the same digest.
const DOMAIN: &[u8] = b"keyflow metrics access token v1\n";

/// Lifetime of a token unless the exchange asks for another.
pub const DEFAULT_TTL_SECS: i64 = 900;
/// The longest lifetime a token may have (SPEC §4: at most one hour).
pub const MAX_TTL_SECS: i64 = 3600;
/// The shortest lifetime the exchange grants.
pub const MIN_TTL_SECS: i64 = 60;

/// A token's claims, read before its MAC is checked (the MAC needs the
/// credential the claims name).
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    pub credential_id: String,
    pub expires_at: UnixMillis,
    payload: String,
    mac: Vec<u8>,
}

fn mac_of(digest: &KeyDigest, payload: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&digest.0).ok()?;
    mac.update(DOMAIN);
    mac.update(payload.as_bytes());
    Some(mac)
}

/// A token for `credential_id` (whose secret digest is `digest`), valid until `expires_at`.
pub fn issue(credential_id: &str, digest: &KeyDigest, expires_at: UnixMillis) -> Option<String> {
    let payload = format!("{credential_id}.{expires_at}");
    let mac = mac_of(digest, &payload)?.finalize().into_bytes();
    Some(format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(mac)
    ))
}

/// Reads a token's claims; `None` if it is not shaped like one of ours.
pub fn read(token: &str) -> Option<Claims> {
    let body = token.strip_prefix(PREFIX)?;
    let (payload, mac) = body.split_once('.')?;
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    let (credential_id, expires_at) = payload.rsplit_once('.')?;
    Some(Claims {
        credential_id: credential_id.to_string(),
        expires_at: expires_at.parse().ok()?,
        payload,
        mac,
    })
}

impl Claims {
    /// Whether the MAC is the credential's (compared in constant time).
    pub fn signed_by(&self, digest: &KeyDigest) -> bool {
        mac_of(digest, &self.payload).is_some_and(|mac| mac.verify_slice(&self.mac).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(secret: &str) -> KeyDigest {
        KeyDigest::of(secret)
    }

    #[test]
    fn a_token_reads_back_and_verifies_only_with_its_digest() {
        let token = issue("mk_live_abc", &digest("s1"), 1_000).unwrap();
        assert!(token.starts_with("mt_"));
        let claims = read(&token).unwrap();
        assert_eq!(claims.credential_id, "mk_live_abc");
        assert_eq!(claims.expires_at, 1_000);
        assert!(claims.signed_by(&digest("s1")));
        assert!(!claims.signed_by(&digest("s2")), "a rotated secret");
    }

    #[test]
    fn tampered_tokens_fail() {
        let token = issue("mk_live_abc", &digest("s1"), 1_000).unwrap();
        let (payload, mac) = token.strip_prefix("mt_").unwrap().split_once('.').unwrap();
        // A later expiry or another credential under the same MAC.
        for forged in ["mk_live_abc.99999", "mk_live_xyz.1000"] {
            let forged = format!("mt_{}.{mac}", URL_SAFE_NO_PAD.encode(forged));
            let claims = read(&forged).unwrap();
            assert!(!claims.signed_by(&digest("s1")), "{forged}");
        }
        // A flipped MAC bit.
        let mut bytes = URL_SAFE_NO_PAD.decode(mac).unwrap();
        bytes[0] ^= 1;
        let flipped = format!("mt_{payload}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(!read(&flipped).unwrap().signed_by(&digest("s1")));
        for garbage in ["", "mt_", "mt_x", "mt_!!.??", "sk_live_abc", "mt_YWJj.YWJj"] {
            assert!(
                read(garbage).is_none_or(|c| !c.signed_by(&digest("s1"))),
                "{garbage}"
            );
        }
    }
}

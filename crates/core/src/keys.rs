//! The API key format of SPEC §2:
//! `<type>_<env>_<32 base62 random><6 base62 CRC32 checksum>`.
//!
//! Only the SHA-256 digest of a key is ever stored. The checksum lets us reject
//! typos and random guesses before touching the cache or the database.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const RANDOM_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 6;
/// The prefix shown after creation, e.g. `sk_live_AbCd`.
pub const PREFIX_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Secret,
    Client,
    ReadOnly,
    /// Metrics credential ids (`mk_…`); never valid as a `/v1` bearer key.
    Metrics,
}

impl KeyType {
    pub const API_TYPES: [KeyType; 3] = [KeyType::Secret, KeyType::Client, KeyType::ReadOnly];

    pub fn wire_prefix(self) -> &'static str {
        match self {
            KeyType::Secret => "sk",
            KeyType::Client => "ck",
            KeyType::ReadOnly => "ro",
            KeyType::Metrics => "mk",
        }
    }

    /// The JSON `type` name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Secret => "secret",
            KeyType::Client => "client",
            KeyType::ReadOnly => "read_only",
            KeyType::Metrics => "metrics",
        }
    }

    /// Parses a JSON `type` name of an API key (not `metrics`).
    pub fn parse_api_type(s: &str) -> Option<Self> {
        Self::API_TYPES.into_iter().find(|t| t.as_str() == s)
    }

    pub fn parse_any(s: &str) -> Option<Self> {
        [
            KeyType::Secret,
            KeyType::Client,
            KeyType::ReadOnly,
            KeyType::Metrics,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    fn from_wire_prefix(s: &str) -> Option<Self> {
        match s {
            "sk" => Some(KeyType::Secret),
            "ck" => Some(KeyType::Client),
            "ro" => Some(KeyType::ReadOnly),
            "mk" => Some(KeyType::Metrics),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not have the shape <type>_<env>_<random><checksum>")]
    Malformed,
    #[error("the key's checksum does not match")]
    BadChecksum,
    #[error("the operating system's random source failed")]
    RandomSourceFailed,
}

/// A key that passed the format and checksum checks. Holds the secret text,
/// so its `Debug` shows only the prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub key_type: KeyType,
    pub environment: Environment,
    text: &'a str,
}

impl ParsedKey<'_> {
    pub fn prefix(&self) -> &str {
        &self.text[..PREFIX_LEN]
    }
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(self.text)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…)", self.prefix())
    }
}

/// SHA-256 of the full key text: the only form in which a key is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key_text: &str) -> Self {
        Self(Sha256::digest(key_text.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex32(&self.0)
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        parse_hex32(hex).map(Self)
    }
}

/// 32 bytes (a SHA-256 digest or HMAC tag) as 64 lower-case hex digits.
pub fn hex32(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The inverse of [`hex32`]: exactly 64 lower-case hex digits.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0])?;
        let lo = hex_value(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({})", &self.to_hex()[..12])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A freshly minted key. The text is revealed once, then dropped.
pub struct NewKey {
    pub text: String,
    pub digest: KeyDigest,
    pub prefix: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey({}…)", self.prefix)
    }
}

/// Mints a key from the OS CSPRNG.
pub fn generate_key(key_type: KeyType, env: Environment) -> Result<NewKey, KeyFormatError> {
    let mut body = String::with_capacity(8 + RANDOM_LEN + CHECKSUM_LEN);
    body.push_str(key_type.wire_prefix());
    body.push('_');
    body.push_str(env.as_str());
    body.push('_');
    body.push_str(&random_base62(RANDOM_LEN)?);
    let checksum = checksum_of(&body);
    body.push_str(&checksum);
    Ok(NewKey {
        digest: KeyDigest::of(&body),
        prefix: body[..PREFIX_LEN].to_string(),
        text: body,
    })
}

/// Random base62 text by rejection sampling (no modulo bias).
pub fn random_base62(len: usize) -> Result<String, KeyFormatError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|_| KeyFormatError::RandomSourceFailed)?;
        for &b in &buf {
            // 248 = 4 * 62: bytes at or above it would bias the distribution.
            if b < 248 && out.len() < len {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// 6-char base62 of CRC32, zero-padded (62^6 > 2^32, so it always fits).
fn checksum_of(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// Checks shape and checksum. No I/O: a failure here never reaches the database.
pub fn parse_key(text: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let bytes = text.as_bytes();
    // "sk_live_" (8) or "sk_test_" (8) + random + checksum.
    if bytes.len() != 8 + RANDOM_LEN + CHECKSUM_LEN || !text.is_ascii() {
        return Err(KeyFormatError::Malformed);
    }
    let key_type = KeyType::from_wire_prefix(&text[..2]).ok_or(KeyFormatError::Malformed)?;
    if bytes[2] != b'_' || bytes[7] != b'_' {
        return Err(KeyFormatError::Malformed);
    }
    let environment = Environment::parse(&text[3..7]).ok_or(KeyFormatError::Malformed)?;
    if !bytes[8..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::Malformed);
    }
    let (body, checksum) = text.split_at(8 + RANDOM_LEN);
    if checksum_of(body) != checksum {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(ParsedKey {
        key_type,
        environment,
        text,
    })
}

/// The display prefix of a key text (first 12 chars), or the whole text if shorter.
pub fn display_prefix(text: &str) -> &str {
    text.get(..PREFIX_LEN).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_type() -> impl Strategy<Value = KeyType> {
        prop_oneof![
            Just(KeyType::Secret),
            Just(KeyType::Client),
            Just(KeyType::ReadOnly),
            Just(KeyType::Metrics)
        ]
    }
    fn any_env() -> impl Strategy<Value = Environment> {
        prop_oneof![Just(Environment::Live), Just(Environment::Test)]
    }

    #[test]
    fn shape_matches_the_spec() {
        let key = generate_key(KeyType::Secret, Environment::Live).unwrap();
        assert_eq!(key.text.len(), 46);
        assert!(key.text.starts_with("sk_live_"));
        assert_eq!(key.prefix.len(), 12);
        assert_eq!(&key.text[..12], key.prefix);
        assert!(!format!("{key:?}").contains(&key.text));
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = KeyDigest::of("x");
        assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(KeyDigest::from_hex("zz"), None);
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            "",
            "sk_live_",
            "xx_live_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sk-live-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(
                parse_key(bad).unwrap_err(),
                KeyFormatError::Malformed,
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn generated_keys_always_parse(t in any_type(), e in any_env()) {
            let key = generate_key(t, e).unwrap();
            let parsed = parse_key(&key.text).unwrap();
            prop_assert_eq!(parsed.key_type, t);
            prop_assert_eq!(parsed.environment, e);
            prop_assert_eq!(parsed.digest(), key.digest);
        }

        #[test]
        fn any_single_character_change_is_rejected(
            t in any_type(), e in any_env(), pos in 0usize..46, replacement in proptest::char::any()
        ) {
            let key = generate_key(t, e).unwrap();
            let original = key.text.chars().nth(pos).unwrap();
            prop_assume!(original != replacement);
            let mut changed: Vec<char> = key.text.chars().collect();
            changed[pos] = replacement;
            let changed: String = changed.into_iter().collect();
            prop_assert!(parse_key(&changed).is_err());
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = parse_key(&s);
        }
    }
}

//! A filter of the keys in a run of idempotency claims ([`super::claims`]):
//! a blocked Bloom filter, so that a key that is in no run (every fresh
//! key) is looked up in almost none of them.
//!
//! Each key sets 8 bits inside one 512-bit block chosen by its hash (two
//! 256-bit halves, 8 bits of a second hash each): one cache line per run and
//! key. At 12 bits per key about 1 key in 200 not in a run still probes it
//! (measured by the test below). The filter is stored with its run, so its
//! hash must never change for a database: SHA-256 under a random secret the
//! database keeps (migration 0024), so that no tenant can choose keys whose
//! hashes collide (a run's entries of one hash are all read and checked), and
//! a format byte that any other code reads as "no filter" (probe the run).

use sha2::{Digest, Sha256};

/// Bits per key.
const BITS_PER_KEY: usize = 12;
const FORMAT: u8 = 1;

pub(crate) struct ClaimFilter {
    blocks: Vec<[u64; 8]>,
}

/// The hash of (project, key) under the database's `secret`; stable for a
/// database. Project ids are UTF-8, which never holds the byte 0xff.
pub(crate) fn key_hash(secret: &[u8], project_id: &str, key: &str) -> u64 {
    let mut digest = Sha256::new();
    digest.update(secret);
    digest.update(project_id.as_bytes());
    digest.update([0xff]);
    digest.update(key.as_bytes());
    let digest = digest.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// A second hash of a hash, for the bits inside its block.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ClaimFilter {
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let blocks = (keys * BITS_PER_KEY).div_ceil(512).max(1);
        Self {
            blocks: vec![[0; 8]; blocks],
        }
    }

    /// The block and the 8 bits (a byte of a second hash each, alternating
    /// between the block's halves) of `hash`.
    fn place(blocks: usize, hash: u64) -> (usize, impl Iterator<Item = usize>) {
        let block = ((u128::from(hash) * blocks as u128) >> 64) as usize;
        let bits = mix(hash);
        (
            block,
            (0..8).map(move |i| ((bits >> (i * 8)) as usize & 0xff) * 2 + i % 2),
        )
    }

    pub(crate) fn insert(&mut self, hash: u64) {
        let (block, bits) = Self::place(self.blocks.len(), hash);
        for bit in bits {
            self.blocks[block][bit / 64] |= 1 << (bit % 64);
        }
    }

    /// `false` only when the key was never inserted.
    pub(crate) fn may_hold(&self, hash: u64) -> bool {
        let (block, mut bits) = Self::place(self.blocks.len(), hash);
        bits.all(|bit| self.blocks[block][bit / 64] & (1 << (bit % 64)) != 0)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.blocks.len() * 64);
        out.push(FORMAT);
        for word in self.blocks.iter().flatten() {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// `None` for another format or a damaged filter: the run is then
    /// probed for every key, which is slower but never wrong.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&format, words) = bytes.split_first()?;
        if format != FORMAT || words.is_empty() || words.len() % 64 != 0 {
            return None;
        }
        let blocks = words
            .chunks_exact(64)
            .map(|block| {
                let mut out = [0u64; 8];
                for (word, bytes) in out.iter_mut().zip(block.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(bytes);
                    *word = u64::from_le_bytes(b);
                }
                out
            })
            .collect();
        Some(Self { blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef";
    const HASH_P_K: u64 = 0x99bb_b672_f7a7_28a1;

    #[test]
    fn holds_every_key_inserted_and_few_others() {
        let mut filter = ClaimFilter::with_capacity(50_000);
        for i in 0..50_000 {
            filter.insert(key_hash(SECRET, "p1", &format!("key-{i}")));
        }
        let filter = ClaimFilter::from_bytes(&filter.to_bytes()).unwrap();
        for i in 0..50_000 {
            assert!(filter.may_hold(key_hash(SECRET, "p1", &format!("key-{i}"))));
        }
        let others = (0..100_000)
            .filter(|i| filter.may_hold(key_hash(SECRET, "p1", &format!("other-{i}"))))
            .count();
        // 12 bits and 8 of them per key in a block: well under 1 %.
        assert!(others < 1_000, "{others} of 100 000 other keys pass");
        // The project is part of the key.
        let same_key_elsewhere = (0..50_000)
            .filter(|i| filter.may_hold(key_hash(SECRET, "p2", &format!("key-{i}"))))
            .count();
        assert!(same_key_elsewhere < 500, "{same_key_elsewhere}");
    }

    #[test]
    fn the_hash_never_changes_and_depends_on_the_secret() {
        // Filters are stored with their runs: a new hash would make stored
        // filters miss keys they hold. Computed independently (Python's
        // hashlib: SHA-256 of secret, project, 0xff, key; first 8 bytes, LE).
        assert_eq!(key_hash(b"secret", "p", "k"), HASH_P_K);
        assert_ne!(key_hash(b"other", "p", "k"), HASH_P_K);
        assert_ne!(key_hash(b"secret", "pk", ""), HASH_P_K);
    }

    #[test]
    fn other_formats_and_damage_read_as_no_filter() {
        let bytes = ClaimFilter::with_capacity(10).to_bytes();
        assert!(ClaimFilter::from_bytes(&bytes).is_some());
        assert!(ClaimFilter::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(ClaimFilter::from_bytes(&other).is_none());
        assert!(ClaimFilter::from_bytes(&[]).is_none());
        assert!(ClaimFilter::from_bytes(&[FORMAT]).is_none());
    }
}

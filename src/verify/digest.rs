//! Block digests: what verify keeps of a block of offsets instead of one entry per record,
//! so its memory does not grow with the record count. A digest is a multiset hash: the
//! record count and the wrapping sum of a 128-bit hash of each record's identity (its source
//! offset, and what is compared of it). Two blocks with equal digests hold the same records
//! (up to a 2^-128 accident); any missing, extra, duplicated or altered record changes the
//! sum, and the order records arrive in does not. Blocks whose digests differ are re-read
//! record by record (the drill-down in `mod.rs`), so the digest only decides where to look.

/// Count and wrapping sum of 128-bit record hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub sum: u128,
}

impl Digest {
    pub fn add(&mut self, h: u128) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
    }

    pub fn merge(&mut self, other: &Digest) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

/// Domains keep one kind of hash from ever equalling another for the same words.
const COPY: u64 = 1;
const CONTENT: u64 = 2;
const OFFSET: u64 = 3;

/// A copied record as compared with its timestamp: (offset, content digest, timestamp).
pub fn record(offset: i64, content: u64, timestamp: Option<i64>) -> u128 {
    let (tag, ts) = match timestamp {
        Some(t) => (1, t as u64),
        None => (0, 0),
    };
    hash(&[COPY, offset as u64, content, tag, ts])
}

/// A copied record compared by content only (the target set its own timestamp).
pub fn content(offset: i64, content: u64) -> u128 {
    hash(&[CONTENT, offset as u64, content])
}

/// A source offset alone (poison records, dead-letter entries).
pub fn offset(offset: i64) -> u128 {
    hash(&[OFFSET, offset as u64])
}

/// XXH3's 128-bit hash of the words (little-endian): not cryptographic, but verify guards
/// against accidents, not an adversary who controls both clusters. (It replaced two lanes
/// of chained murmur3 finalisers, 6% of verify's instructions (callgrind); the
/// digests are computed within one run and stored nowhere, so the function may change.)
fn hash(words: &[u64]) -> u128 {
    let mut buf = [0u8; 8 * MAX_WORDS];
    let n = words.len().min(MAX_WORDS);
    for (chunk, w) in buf.chunks_exact_mut(8).zip(&words[..n]) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    debug_assert_eq!(n, words.len());
    xxhash_rust::xxh3::xxh3_128(&buf[..8 * n])
}

/// The most words a record's hash takes (`record`).
const MAX_WORDS: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn of(records: &[(i64, u64, Option<i64>)]) -> Digest {
        let mut d = Digest::default();
        for (o, c, t) in records {
            d.add(record(*o, *c, *t));
        }
        d
    }

    #[test]
    fn the_same_records_in_any_order_give_the_same_digest() {
        let a = of(&[(1, 10, Some(5)), (2, 20, Some(6)), (3, 30, None)]);
        let b = of(&[(3, 30, None), (1, 10, Some(5)), (2, 20, Some(6))]);
        assert_eq!(a, b);
        // Merging halves is adding them.
        let mut m = of(&[(3, 30, None)]);
        m.merge(&of(&[(1, 10, Some(5)), (2, 20, Some(6))]));
        assert_eq!(m, a);
    }

    #[test]
    fn every_kind_of_difference_changes_the_digest() {
        let want = of(&[(1, 10, Some(5)), (2, 20, Some(6)), (3, 30, Some(7))]);
        for (what, got) in [
            ("missing", of(&[(1, 10, Some(5)), (3, 30, Some(7))])),
            (
                "unexpected",
                of(&[
                    (1, 10, Some(5)),
                    (2, 20, Some(6)),
                    (3, 30, Some(7)),
                    (4, 40, Some(8)),
                ]),
            ),
            // Same count: one record twice, another not at all.
            (
                "duplicate hiding a gap",
                of(&[(1, 10, Some(5)), (1, 10, Some(5)), (3, 30, Some(7))]),
            ),
            (
                "altered content",
                of(&[(1, 10, Some(5)), (2, 21, Some(6)), (3, 30, Some(7))]),
            ),
            (
                "altered timestamp",
                of(&[(1, 10, Some(5)), (2, 20, Some(9)), (3, 30, Some(7))]),
            ),
            (
                "lost timestamp",
                of(&[(1, 10, Some(5)), (2, 20, None), (3, 30, Some(7))]),
            ),
            // Contents swapped between offsets: the offsets are in the hash.
            (
                "swapped",
                of(&[(1, 20, Some(5)), (2, 10, Some(6)), (3, 30, Some(7))]),
            ),
        ] {
            assert_ne!(got, want, "{what}");
        }
        // A duplicate and a missing record cannot cancel out in the sum either.
        let mut d = Digest::default();
        d.add(offset(1));
        d.add(offset(1));
        let mut e = Digest::default();
        e.add(offset(0));
        e.add(offset(2));
        assert_ne!(d, e);
    }

    #[test]
    fn kinds_of_hash_do_not_collide_and_spread_over_all_bits() {
        assert_ne!(record(1, 2, None), content(1, 2));
        assert_ne!(offset(1), content(1, 0));
        // Nearby inputs differ in about half the bits of both lanes.
        let (a, b) = (offset(1_000_000), offset(1_000_001));
        let diff = (a ^ b).count_ones();
        assert!((40..=88).contains(&diff), "{diff} bits differ");
        assert_ne!((a >> 64) as u64, (b >> 64) as u64);
        assert_ne!(a as u64, b as u64);
    }
}

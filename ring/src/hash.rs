//! The hashing rule: key -> 64-bit hash -> partition.
//!
//! A key's hash is `xxh3_64(key)` (unseeded, so every node and every client agree), and its
//! partition is the top `log2(Q)` bits of that hash. Taking the top bits makes partition `p` the
//! contiguous arc `[p * 2^64 / Q, (p + 1) * 2^64 / Q)` of the hash space, like Riak's ring, so
//! doubling `Q` would split every partition `p` into `2p` and `2p + 1` and never mix keys of
//! different partitions.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::RingError;
use crate::ids::PartitionId;

/// The partition count of a new cluster when the operator does not choose one (see docs/RING.md
/// for why 64).
pub const DEFAULT_PARTITIONS: u16 = 64;
/// The smallest partition count accepted: below 8 a cluster of 3+ nodes cannot be balanced.
pub const MIN_PARTITIONS: u16 = 8;
/// The largest partition count accepted: per-partition overhead (Merkle trees, transfers,
/// handoff bookkeeping) grows linearly with `Q`.
pub const MAX_PARTITIONS: u16 = 4096;

/// Hashes a key with xxh3 (64 bits, no seed).
///
/// Call it once per request and feed the result to [`partition_for_hash`], or use
/// [`crate::PartitionMap::partition_for_key`], which does both.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The partition of a hash: its top `log2(q)` bits.
///
/// `q` must come from [`validate_partition_count`] (a power of two). The computation is
/// `(hash * q) >> 64`, which for `q = 2^k` is exactly `hash >> (64 - k)`; for any other `q` it
/// still returns a value in `0..q` (an even "fast range" reduction) instead of panicking, and for
/// `q == 0` it returns partition 0.
pub fn partition_for_hash(hash: u64, q: u16) -> PartitionId {
    let scaled = (u128::from(hash) * u128::from(q)) >> 64;
    // `scaled < q <= u16::MAX`, so the narrowing cast is lossless.
    PartitionId(scaled as u16)
}

/// Checks a partition count: a power of two from [`MIN_PARTITIONS`] to [`MAX_PARTITIONS`].
///
/// Call it on any `Q` that comes from configuration, the command line or the network before
/// building a map with it.
pub fn validate_partition_count(q: u32) -> Result<u16, RingError> {
    let in_range = (u32::from(MIN_PARTITIONS)..=u32::from(MAX_PARTITIONS)).contains(&q);
    if in_range && q.is_power_of_two() {
        u16::try_from(q).map_err(|_| RingError::InvalidPartitionCount(q))
    } else {
        Err(RingError::InvalidPartitionCount(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_xxh3_64() {
        // Known xxh3_64 value of the empty input; a change of hash function would remap every key.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"dynakv"), xxh3_64(b"dynakv"));
    }

    #[test]
    fn partition_is_the_top_bits() {
        for q in [8u16, 64, 1024, 4096] {
            let bits = q.trailing_zeros();
            for hash in [
                0u64,
                1,
                u64::MAX,
                0x8000_0000_0000_0000,
                0x1234_5678_9abc_def0,
            ] {
                let expected = (hash >> (64 - bits)) as u16;
                assert_eq!(partition_for_hash(hash, q), PartitionId(expected));
            }
        }
        assert_eq!(partition_for_hash(u64::MAX, 64), PartitionId(63));
        assert_eq!(partition_for_hash(0, 64), PartitionId(0));
    }

    proptest::proptest! {
        #[test]
        fn partition_is_in_range_and_monotone(a: u64, b: u64, k in 3u32..=12) {
            let q = 1u16 << k;
            let (pa, pb) = (partition_for_hash(a, q), partition_for_hash(b, q));
            proptest::prop_assert!(pa.0 < q && pb.0 < q);
            // Top bits: a larger hash never lands in an earlier partition (arcs are contiguous).
            if a <= b {
                proptest::prop_assert!(pa <= pb);
            }
        }
    }

    #[test]
    fn partition_is_always_in_range() {
        let mut hash = 0x9e37_79b9_7f4a_7c15_u64;
        for q in [8u16, 16, 64, 512, 4096, 3, 1, 0] {
            for _ in 0..1000 {
                hash = hash.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let p = partition_for_hash(hash, q);
                assert!(p.0 < q.max(1), "q={q} p={p}");
            }
        }
    }

    #[test]
    fn keys_spread_evenly_over_64_partitions() {
        let q = DEFAULT_PARTITIONS;
        let mut counts = vec![0u32; usize::from(q)];
        let keys = 100_000u32;
        for i in 0..keys {
            let key = format!("key-{i}");
            counts[partition_for_hash(key_hash(key.as_bytes()), q).index()] += 1;
        }
        // Expected 1562.5 per partition, standard deviation about 39: allow +/- 15%.
        let expected = f64::from(keys) / f64::from(q);
        for (p, &c) in counts.iter().enumerate() {
            let dev = (f64::from(c) - expected).abs() / expected;
            assert!(
                dev < 0.15,
                "partition {p} holds {c} keys, expected about {expected}"
            );
        }
    }

    #[test]
    fn partition_counts_are_validated() {
        for q in [8u32, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            assert_eq!(validate_partition_count(q), Ok(q as u16));
        }
        for q in [0u32, 1, 2, 4, 7, 12, 63, 100, 8192, 65_536, u32::MAX] {
            assert_eq!(
                validate_partition_count(q),
                Err(RingError::InvalidPartitionCount(q))
            );
        }
    }
}

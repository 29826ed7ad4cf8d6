//! The error type of the crate.

use crate::hash::{MAX_PARTITIONS, MIN_PARTITIONS};

/// Everything that can go wrong in `dynakv-ring`. Each variant renders as one clear line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A partition count that is not a power of two in `MIN_PARTITIONS..=MAX_PARTITIONS`.
    #[error(
        "invalid partition count {0}: must be a power of two from {MIN_PARTITIONS} to {MAX_PARTITIONS}"
    )]
    InvalidPartitionCount(u32),
    /// A map was asked for with no members to own the partitions.
    #[error("the member set is empty: at least one node must own the partitions")]
    NoMembers,
    /// A list of owners (or a second map) does not have the expected number of partitions, e.g. a
    /// decoded map whose `q` disagrees with its owner list, or two maps of different `Q` compared.
    #[error("partition count mismatch: expected {expected} partitions, found {actual}")]
    WrongLength {
        /// The partition count that was expected.
        expected: usize,
        /// The partition count that was found.
        actual: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_clear() {
        assert_eq!(
            RingError::InvalidPartitionCount(100).to_string(),
            "invalid partition count 100: must be a power of two from 8 to 4096"
        );
        assert_eq!(
            RingError::WrongLength {
                expected: 64,
                actual: 63
            }
            .to_string(),
            "partition count mismatch: expected 64 partitions, found 63"
        );
    }
}

//! The identifiers of nodes and partitions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity of a cluster member (a node), as used in the partition map.
///
/// Ids are chosen by the operator or the membership layer; the ring only needs them to be
/// distinct and totally ordered (the order is the deterministic tie-break everywhere).
/// `Display` prints the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The index of a partition, `0..Q`. Partition `p` holds the keys whose hash falls in the
/// `p`-th of `Q` equal arcs of the `u64` hash space (see [`crate::partition_for_hash`]).
/// `Display` prints the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u16);

impl PartitionId {
    /// The partition number as a `usize`, for indexing.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_bare_number() {
        assert_eq!(NodeId(42).to_string(), "42");
        assert_eq!(PartitionId(7).to_string(), "7");
        assert_eq!(PartitionId(7).index(), 7);
    }
}

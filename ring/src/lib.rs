//! Key hashing, the partition map and rebalance planning for dynakv.
//!
//! Everything here is pure data and pure functions: no I/O, no clock, no randomness, and no
//! iteration over hash maps, so every node (and the simulator) computes the same answer from the
//! same inputs.
//!
//! # Layout
//!
//! - [`ids`]: [`NodeId`] and [`PartitionId`], the two identifiers everything else is
//!   indexed by.
//! - [`hash`]: the hashing rule (key -> `u64` with xxh3, `u64` -> partition by its top
//!   bits) and the partition-count limits ([`DEFAULT_PARTITIONS`] and friends).
//! - [`map`]: [`PartitionMap`], which node owns which partition, and the questions
//!   asked of it on every request: owner, preference list, fallback walk, moves between two maps.
//! - [`planner`]: [`plan`], the claim/rebalance planner that turns the current map
//!   and a new member set into a balanced map with the fewest possible moves.
//! - [`error`]: [`RingError`], the one error enum of the crate.
//!
//! # Typical use
//!
//! ```
//! use std::collections::BTreeSet;
//! use dynakv_ring::{plan, NodeId, PartitionMap, DEFAULT_PARTITIONS};
//!
//! let members: BTreeSet<NodeId> = [1, 2, 3].into_iter().map(NodeId).collect();
//! let map = PartitionMap::initial(DEFAULT_PARTITIONS, &members)?;
//! let p = map.partition_for_key(b"user:42");
//! let replicas = map.preference_list(p, 3);
//! assert_eq!(replicas.len(), 3);
//!
//! // A fourth node joins: plan the new map and see which partitions must be transferred.
//! let mut grown = members.clone();
//! grown.insert(NodeId(4));
//! let next = plan(&map, &grown)?;
//! assert_eq!(map.moves(&next).len(), 16);
//! # Ok::<(), dynakv_ring::RingError>(())
//! ```

pub mod error;
pub mod hash;
pub mod ids;
pub mod map;
pub mod planner;

pub use error::RingError;
pub use hash::{
    key_hash, partition_for_hash, validate_partition_count, DEFAULT_PARTITIONS, MAX_PARTITIONS,
    MIN_PARTITIONS,
};
pub use ids::{NodeId, PartitionId};
pub use map::{Move, PartitionMap};
pub use planner::{plan, SPACING_WINDOW};

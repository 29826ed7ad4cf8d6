//! The partition map: which node owns which partition, and the questions asked of it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::RingError;
use crate::hash::{key_hash, partition_for_hash, validate_partition_count};
use crate::ids::{NodeId, PartitionId};

/// Which node owns each of the `Q` partitions.
///
/// The map is the unit that gossip spreads and [`crate::plan`] produces. Invariant: it always has
/// a valid partition count (a power of two in `8..=4096`) and exactly that many owners; decoding
/// (serde) checks it too, so a map that arrives from the network is never malformed.
///
/// The ring order matters: partition `p` is followed by `p + 1` (and `Q - 1` by `0`). The replicas
/// of a key are the first `N` distinct owners met walking that order from its partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPartitionMap")]
pub struct PartitionMap {
    q: u16,
    owners: Vec<NodeId>,
}

/// The wire shape of a [`PartitionMap`], checked by `TryFrom` before it becomes one.
#[derive(Deserialize)]
struct RawPartitionMap {
    q: u16,
    owners: Vec<NodeId>,
}

impl TryFrom<RawPartitionMap> for PartitionMap {
    type Error = RingError;

    fn try_from(raw: RawPartitionMap) -> Result<Self, RingError> {
        validate_partition_count(u32::from(raw.q))?;
        if raw.owners.len() != usize::from(raw.q) {
            return Err(RingError::WrongLength {
                expected: usize::from(raw.q),
                actual: raw.owners.len(),
            });
        }
        Ok(PartitionMap {
            q: raw.q,
            owners: raw.owners,
        })
    }
}

/// One partition that changes owner between two maps: the data of `partition` must be
/// transferred from `from` to `to` (see [`PartitionMap::moves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition whose owner changes.
    pub partition: PartitionId,
    /// Its owner in the old map (the node that hands the data off).
    pub from: NodeId,
    /// Its owner in the new map (the node that receives the data).
    pub to: NodeId,
}

impl PartitionMap {
    /// The map of a brand-new cluster: the sorted members take partitions round-robin, so
    /// partition `i` goes to `members[i % len]`.
    ///
    /// Call it once, when the cluster is created; afterwards every membership change goes through
    /// [`crate::plan`], which moves as little as possible. Errors: `q` not a valid partition count
    /// ([`RingError::InvalidPartitionCount`]), no members ([`RingError::NoMembers`]).
    pub fn initial(q: u16, members: &BTreeSet<NodeId>) -> Result<Self, RingError> {
        let q = validate_partition_count(u32::from(q))?;
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        // BTreeSet iterates in ascending order, which makes the layout deterministic.
        let owners = members
            .iter()
            .copied()
            .cycle()
            .take(usize::from(q))
            .collect();
        Ok(PartitionMap { q, owners })
    }

    /// A map from an explicit owner list, `owners[p]` owning partition `p`.
    ///
    /// Use it for tests, tools and stored maps; the length must be a valid partition count
    /// (otherwise [`RingError::InvalidPartitionCount`] with the length).
    pub fn from_owners(owners: Vec<NodeId>) -> Result<Self, RingError> {
        let len = u32::try_from(owners.len()).unwrap_or(u32::MAX);
        let q = validate_partition_count(len)?;
        Ok(PartitionMap { q, owners })
    }

    /// The number of partitions `Q` (fixed for the life of the cluster).
    pub fn partition_count(&self) -> u16 {
        self.q
    }

    /// The partition of a key (xxh3 hash, top `log2(Q)` bits). Call it on every request.
    pub fn partition_for_key(&self, key: &[u8]) -> PartitionId {
        partition_for_hash(key_hash(key), self.q)
    }

    /// The owner (primary) of partition `p`.
    ///
    /// A `p` out of range (`p >= Q`, e.g. from a peer with a different map) wraps to `p % Q`
    /// instead of panicking; validate partition ids from the network if that matters.
    pub fn owner(&self, p: PartitionId) -> NodeId {
        self.owners[self.wrap(p.index())]
    }

    /// All owners, indexed by partition number.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// The nodes that own at least one partition.
    ///
    /// This is the map's view of the membership: with more members than partitions some members
    /// own nothing and do not appear here (see [`crate::plan`]).
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.owners.iter().copied().collect()
    }

    /// How many partitions each owning node holds. Use it to check balance or report load.
    pub fn counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for &node in &self.owners {
            *counts.entry(node).or_insert(0) += 1;
        }
        counts
    }

    /// The partitions `node` owns as primary, in ascending order (empty if it owns none).
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partition_ids()
            .filter(|&p| self.owner(p) == node)
            .collect()
    }

    /// The replicas of partition `p`: walking partitions `p, p + 1, ...` (wrapping), the first
    /// `n` distinct owners, primary first.
    ///
    /// Call it to route a request for a key of partition `p` with replication factor `n`. It is
    /// shorter than `n` only when fewer than `n` nodes own partitions. `p` wraps like
    /// [`Self::owner`].
    pub fn preference_list(&self, p: PartitionId, n: usize) -> Vec<NodeId> {
        let mut list: Vec<NodeId> = Vec::with_capacity(n);
        if n == 0 {
            return list;
        }
        let start = self.wrap(p.index());
        for i in 0..self.owners.len() {
            let node = self.owners[(start + i) % self.owners.len()];
            // A linear `contains` beats a set for the small n (3-5) used in practice.
            if !list.contains(&node) {
                list.push(node);
                if list.len() == n {
                    break;
                }
            }
        }
        list
    }

    /// Every distinct owner in walk order from partition `p`: the preference list first, then the
    /// fallback order in which sloppy quorum picks substitutes for unreachable replicas.
    ///
    /// `walk(p)[..n] == preference_list(p, n)` for every `n`.
    pub fn walk(&self, p: PartitionId) -> Vec<NodeId> {
        let start = self.wrap(p.index());
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        for i in 0..self.owners.len() {
            let node = self.owners[(start + i) % self.owners.len()];
            if seen.insert(node) {
                order.push(node);
            }
        }
        order
    }

    /// The partitions `node` holds a replica of with replication factor `n`: those whose
    /// `preference_list(p, n)` contains it, in ascending order.
    ///
    /// Call it to know what a node must store, verify with anti-entropy, or fetch after a join.
    pub fn replicated_partitions(&self, node: NodeId, n: usize) -> Vec<PartitionId> {
        self.partition_ids()
            .filter(|&p| self.preference_list(p, n).contains(&node))
            .collect()
    }

    /// The partitions whose owner differs between `self` (old) and `new`, in ascending order.
    ///
    /// Call it after [`crate::plan`] to schedule transfers. Both maps must have the same `Q` (it
    /// is fixed for a cluster); if they do not, only the first `min(Q_old, Q_new)` partitions are
    /// compared; use [`Self::try_moves`] to get an error instead.
    pub fn moves(&self, new: &PartitionMap) -> Vec<Move> {
        self.owners
            .iter()
            .zip(&new.owners)
            .enumerate()
            .filter(|(_, (old, new))| old != new)
            .map(|(p, (&from, &to))| Move {
                partition: PartitionId(p as u16),
                from,
                to,
            })
            .collect()
    }

    /// Like [`Self::moves`], but a different partition count is an error
    /// ([`RingError::WrongLength`]). Use it on maps that come from the network.
    pub fn try_moves(&self, new: &PartitionMap) -> Result<Vec<Move>, RingError> {
        if self.q != new.q {
            return Err(RingError::WrongLength {
                expected: usize::from(self.q),
                actual: usize::from(new.q),
            });
        }
        Ok(self.moves(new))
    }

    /// How many pairs of partitions less than `window` apart (on the ring) share an owner.
    ///
    /// 0 means every run of `window` consecutive partitions has distinct owners, so every
    /// preference list of length up to `window` is exactly the owners of consecutive partitions
    /// and replica load follows primary load. A diagnostic for the planner's spacing goal.
    pub fn spacing_violations(&self, window: usize) -> usize {
        let q = self.owners.len();
        let reach = window.saturating_sub(1).min(q / 2);
        (0..q)
            .flat_map(|p| (1..=reach).map(move |d| (p, (p + d) % q)))
            .filter(|&(a, b)| self.owners[a] == self.owners[b])
            .count()
    }

    /// A map from owners the planner has already checked (length = a valid `q`).
    pub(crate) fn from_checked(q: u16, owners: Vec<NodeId>) -> Self {
        PartitionMap { q, owners }
    }

    fn partition_ids(&self) -> impl Iterator<Item = PartitionId> {
        (0..self.q).map(PartitionId)
    }

    fn wrap(&self, index: usize) -> usize {
        index % self.owners.len()
    }
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;

//! The cluster state, a state-based CRDT: members, the partition map, heartbeats.
//!
//! # The merge and its laws
//!
//! [`ClusterState::merge`] is a join (least upper bound) of three independent parts, each a
//! join-semilattice, so the whole is one too:
//!
//! - **members**: the union of the ids; for an id in both, the entry with the larger
//!   [`Member::merge_key`] wins: `(status == Removed, version, status, addr)`. That is "the
//!   higher version wins", ties broken by status precedence `Removed > Leaving > Valid >
//!   Joining` (the change further along the lifecycle wins) and then by the address. Putting
//!   `Removed` first makes it sticky: a removed id never comes back, whatever version the other
//!   side carries.
//! - **map**: the [`VersionedMap`] with the larger `(epoch, proposer)` wins; a tie on the version
//!   (possible only after concurrent [`reconcile`](ClusterState::reconcile)s from different
//!   views) is broken by the planned member set and then the owner list, so it is still a total
//!   order.
//! - **heartbeats**: per node, the maximum `(generation, counter)`.
//!
//! Each part is "take the maximum under a total order" (per key), so the merge is
//! **commutative**, **associative** and **idempotent**, and **monotone**: the result is `>=` both
//! inputs entry by entry, so merging never loses a newer entry. `state_props.rs` checks all four
//! with generated states, concurrent conflicting changes included.
//!
//! The parameters ([`ClusterParams`]) are fixed at creation and must be equal on both sides;
//! merging states of different parameters is refused ([`GossipError::ParamsMismatch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use dynakv_ring::{validate_partition_count, NodeId, PartitionMap};
use serde::{Deserialize, Serialize};

use crate::error::GossipError;

/// The most ids the member table may hold, removed ones included (they stay as tombstones).
/// Together with [`MAX_ADDR_LEN`] and the ring's 4096-partition limit it bounds every message.
pub const MAX_MEMBERS: usize = 1024;

/// The longest node address accepted, in bytes (a DNS name of 253 bytes plus a port fits).
pub const MAX_ADDR_LEN: usize = 256;

/// The membership status of a node. Its `Ord` is the merge precedence:
/// `Joining < Valid < Leaving < Removed`.
///
/// There is deliberately no "down" status: up/down is the local opinion of each node's failure
/// detector ([`crate::PhiDetector`]), never a membership change. An operator gets rid of a dead
/// node with [`ClusterState::stage_remove`], which goes straight to `Removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Staged to join: owns partitions in the map, is receiving their data.
    Joining,
    /// A full member: owns partitions and serves them.
    Valid,
    /// Staged to leave: owns nothing in the map any more, is handing its data off.
    Leaving,
    /// Gone for good; the id can never be reused.
    Removed,
}

impl Status {
    /// Whether a node with this status is given partitions by the planner (joining and valid
    /// nodes do; leaving and removed nodes do not).
    pub fn owns_data(self) -> bool {
        matches!(self, Status::Joining | Status::Valid)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Joining => "joining",
            Status::Valid => "valid",
            Status::Leaving => "leaving",
            Status::Removed => "removed",
        })
    }
}

/// One row of the member table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Where peers reach the node (`host:port`), at most [`MAX_ADDR_LEN`] bytes.
    pub addr: String,
    /// Its membership status.
    pub status: Status,
    /// Bumped by every change to this row; the higher version wins the merge.
    pub version: u64,
}

impl Member {
    /// The total order the merge takes the maximum of (see the module docs).
    pub fn merge_key(&self) -> (bool, u64, Status, &str) {
        (
            self.status == Status::Removed,
            self.version,
            self.status,
            &self.addr,
        )
    }
}

/// A node's liveness counter, spread by gossip and read by the failure detector.
///
/// `generation` must grow on every restart of the node (the driver passes it in: a persisted
/// incarnation, or the wall-clock start time), so a restarted node's small counters still win.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Heartbeat {
    /// The incarnation of the node; a new one resets the failure detector's history.
    pub generation: u64,
    /// Bumped by the node on every gossip round.
    pub counter: u64,
}

/// The version of a partition map: `(epoch, proposer)`, compared in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapVersion {
    /// One more than the epoch of the map it was planned from.
    pub epoch: u64,
    /// The node that staged the change (a reconcile keeps the proposer of the map it fixes).
    pub proposer: NodeId,
}

impl fmt::Display for MapVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.epoch, self.proposer)
    }
}

/// A partition map with its version and the owning member set it was planned for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionedMap {
    /// Its version; the higher one wins the merge.
    pub version: MapVersion,
    /// The owning members (joining + valid) the map was planned for. It can differ from
    /// `map.members()`, which omits members that own nothing (more members than partitions);
    /// [`ClusterState::reconcile`] compares it with the member table.
    pub planned_for: BTreeSet<NodeId>,
    /// The map itself.
    pub map: PartitionMap,
}

impl VersionedMap {
    /// The total order the merge takes the maximum of (see the module docs).
    pub fn merge_key(&self) -> (MapVersion, &BTreeSet<NodeId>, &[NodeId]) {
        (self.version, &self.planned_for, self.map.owners())
    }
}

/// The parameters fixed when the cluster is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterParams {
    /// The partition count `Q` (a power of two in `8..=4096`).
    pub partitions: u16,
    /// The replication factor `N`.
    pub replicas: u8,
}

impl fmt::Display for ClusterParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Q={} N={}", self.partitions, self.replicas)
    }
}

impl ClusterParams {
    /// Checks `Q` is a valid partition count and `1 <= N <= Q`.
    pub fn validate(&self) -> Result<(), GossipError> {
        validate_partition_count(u32::from(self.partitions))?;
        if self.replicas == 0 || u16::from(self.replicas) > self.partitions {
            return Err(GossipError::InvalidReplicas {
                replicas: self.replicas,
                partitions: self.partitions,
            });
        }
        Ok(())
    }

    /// `Ok` if `other` equals `self`, else [`GossipError::ParamsMismatch`].
    pub fn check_same(&self, other: &ClusterParams) -> Result<(), GossipError> {
        if self == other {
            Ok(())
        } else {
            Err(GossipError::ParamsMismatch {
                ours: self.to_string(),
                theirs: other.to_string(),
            })
        }
    }
}

/// What a merge changed, so the caller can react (events, failure detector).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Ids whose member row changed (new ones included), ascending.
    pub members: Vec<NodeId>,
    /// The map before the merge, if the merge replaced it.
    pub previous_map: Option<VersionedMap>,
    /// Heartbeats that advanced, with their new value, ascending by id.
    pub heartbeats: Vec<(NodeId, Heartbeat)>,
}

impl MergeOutcome {
    /// Whether the membership (members or map) changed; heartbeats do not count.
    pub fn membership_changed(&self) -> bool {
        !self.members.is_empty() || self.previous_map.is_some()
    }
}

/// The cluster state every node holds a replica of: members, partition map, heartbeats.
///
/// Change it only through the staging methods (`stage_join` and friends, in `changes.rs`) on
/// the node where the operator asked for the change, and through [`Self::merge`] everywhere
/// else. Gossip carries it in parts ([`crate::Delta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub(crate) params: ClusterParams,
    pub(crate) members: BTreeMap<NodeId, Member>,
    pub(crate) map: VersionedMap,
    pub(crate) heartbeats: BTreeMap<NodeId, Heartbeat>,
}

impl ClusterState {
    /// The state of a brand-new cluster whose `founders` (id -> address) are all valid members
    /// owning the round-robin initial map (version `1@<smallest founder>`).
    ///
    /// Call it once, on the node that creates the cluster (`dynakv dev` may found several at
    /// once); every other node gets the state by joining. Errors: invalid parameters, no
    /// founders, too many, or an invalid address.
    pub fn new(
        params: ClusterParams,
        founders: &BTreeMap<NodeId, String>,
    ) -> Result<Self, GossipError> {
        params.validate()?;
        if founders.len() > MAX_MEMBERS {
            return Err(GossipError::TooManyMembers);
        }
        let mut members = BTreeMap::new();
        for (&node, addr) in founders {
            check_addr(addr)?;
            let member = Member {
                addr: addr.clone(),
                status: Status::Valid,
                version: 1,
            };
            members.insert(node, member);
        }
        let planned_for: BTreeSet<NodeId> = founders.keys().copied().collect();
        let map = PartitionMap::initial(params.partitions, &planned_for)?;
        let proposer = planned_for
            .first()
            .copied()
            .ok_or(dynakv_ring::RingError::NoMembers)?;
        Ok(ClusterState {
            params,
            members,
            map: VersionedMap {
                version: MapVersion { epoch: 1, proposer },
                planned_for,
                map,
            },
            heartbeats: BTreeMap::new(),
        })
    }

    /// The parameters fixed at creation.
    pub fn params(&self) -> ClusterParams {
        self.params
    }

    /// The member table, removed ids included.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// One member row, if the id is known.
    pub fn member(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node)
    }

    /// The members the planner gives partitions to: joining and valid ones.
    pub fn owning_members(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.status.owns_data())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The current partition map with its version. Route requests with `.map`.
    pub fn map(&self) -> &VersionedMap {
        &self.map
    }

    /// The heartbeats known, by node.
    pub fn heartbeats(&self) -> &BTreeMap<NodeId, Heartbeat> {
        &self.heartbeats
    }

    /// Raises `node`'s heartbeat to `hb` if that is newer (the max-merge of one entry). The
    /// gossiper calls it for its own heartbeat every round.
    pub fn observe_heartbeat(&mut self, node: NodeId, hb: Heartbeat) -> bool {
        let entry = self.heartbeats.entry(node).or_default();
        if hb > *entry {
            *entry = hb;
            true
        } else {
            false
        }
    }

    /// A deterministic 64-bit fingerprint of the membership (members and map, not heartbeats).
    ///
    /// Two nodes with equal fingerprints agree on the membership (barring a hash collision);
    /// use it to show "the cluster agrees" in status output or to measure convergence. It is
    /// FNV-1a over a fixed encoding, so it is stable across processes of one build.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for (id, m) in &self.members {
            h.u64(u64::from(id.0));
            member_hash(&mut h, m);
        }
        h.u64(map_hash(&self.map));
        h.finish()
    }

    /// Merges another replica of the cluster state into this one (the CRDT join; see the
    /// module docs for the rule and its laws) and reports what changed.
    ///
    /// Call it with every state received from a peer. Errors, leaving `self` unchanged:
    /// different parameters, a map of the wrong partition count, or a result over
    /// [`MAX_MEMBERS`].
    pub fn merge(&mut self, other: &ClusterState) -> Result<MergeOutcome, GossipError> {
        self.params.check_same(&other.params)?;
        self.merge_parts(&other.members, Some(&other.map), &other.heartbeats)
    }

    /// The merge of a partial state (a gossip delta): `members` and `heartbeats` may be any
    /// subset, `map` may be absent. Same rule and checks as [`Self::merge`].
    pub(crate) fn merge_parts(
        &mut self,
        members: &BTreeMap<NodeId, Member>,
        map: Option<&VersionedMap>,
        heartbeats: &BTreeMap<NodeId, Heartbeat>,
    ) -> Result<MergeOutcome, GossipError> {
        // Check everything before touching anything, so an error leaves the state as it was.
        if let Some(vm) = map {
            if vm.map.partition_count() != self.params.partitions {
                return Err(GossipError::Malformed(format!(
                    "map of {} partitions, the cluster has {}",
                    vm.map.partition_count(),
                    self.params.partitions
                )));
            }
        }
        for m in members.values() {
            check_addr(&m.addr)?;
        }
        let new_ids = members
            .keys()
            .filter(|id| !self.members.contains_key(id))
            .count();
        if self.members.len() + new_ids > MAX_MEMBERS {
            return Err(GossipError::TooManyMembers);
        }

        let mut outcome = MergeOutcome::default();
        for (&id, theirs) in members {
            match self.members.get_mut(&id) {
                Some(mine) if mine.merge_key() >= theirs.merge_key() => {}
                Some(mine) => {
                    *mine = theirs.clone();
                    outcome.members.push(id);
                }
                None => {
                    self.members.insert(id, theirs.clone());
                    outcome.members.push(id);
                }
            }
        }
        if let Some(theirs) = map {
            if theirs.merge_key() > self.map.merge_key() {
                outcome.previous_map = Some(std::mem::replace(&mut self.map, theirs.clone()));
            }
        }
        for (&id, &hb) in heartbeats {
            if self.observe_heartbeat(id, hb) {
                outcome.heartbeats.push((id, hb));
            }
        }
        Ok(outcome)
    }

    /// Checks a state that arrived whole (a join reply): valid parameters, a map of `Q`
    /// partitions, sizes within the limits.
    pub fn validate(&self) -> Result<(), GossipError> {
        self.params.validate()?;
        if self.map.map.partition_count() != self.params.partitions {
            return Err(GossipError::Malformed("map size differs from Q".into()));
        }
        if self.members.len() > MAX_MEMBERS || self.heartbeats.len() > MAX_MEMBERS {
            return Err(GossipError::TooManyMembers);
        }
        if self.map.planned_for.len() > MAX_MEMBERS {
            return Err(GossipError::Malformed(
                "planned member set too large".into(),
            ));
        }
        self.members.values().try_for_each(|m| check_addr(&m.addr))
    }
}

/// `Ok` if `addr` is 1 to [`MAX_ADDR_LEN`] bytes.
pub(crate) fn check_addr(addr: &str) -> Result<(), GossipError> {
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        // Truncate what we echo back: the error may be shown to an operator or logged.
        let shown: String = addr.chars().take(64).collect();
        return Err(GossipError::InvalidAddr(shown));
    }
    Ok(())
}

/// Feeds the merge-relevant fields of a member row into `h`.
pub(crate) fn member_hash(h: &mut Fnv, m: &Member) {
    h.u64(m.version);
    h.u64(m.status as u64);
    h.bytes(m.addr.as_bytes());
}

/// A content hash of a versioned map (version, planned set, owners).
pub(crate) fn map_hash(vm: &VersionedMap) -> u64 {
    let mut h = Fnv::new();
    h.u64(vm.version.epoch);
    h.u64(u64::from(vm.version.proposer.0));
    h.u64(vm.planned_for.len() as u64);
    for id in &vm.planned_for {
        h.u64(u64::from(id.0));
    }
    for id in vm.map.owners() {
        h.u64(u64::from(id.0));
    }
    h.finish()
}

/// FNV-1a, 64 bit: tiny, deterministic, no dependency. Used for digests and fingerprints,
/// where a (very unlikely) collision only delays an exchange by one message.
#[derive(Debug)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        // Length first, so that ("ab", "c") and ("a", "bc") hash differently.
        self.u64(bytes.len() as u64);
        bytes.iter().for_each(|&b| self.byte(b));
    }

    pub(crate) fn u64(&mut self, v: u64) {
        v.to_le_bytes().into_iter().for_each(|b| self.byte(b));
    }

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

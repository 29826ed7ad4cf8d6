//! Membership changes: the one explicit path by which the cluster state changes.
//!
//! An operator command (`dynakv join`, `leave`, `remove`) becomes a [`Change`] staged on one
//! node with [`ClusterState::apply`]: the member row gets a higher version and its new status,
//! and, if the set of owning members (joining + valid) changed, the partition map is replanned
//! with [`dynakv_ring::plan`] from the current map, at epoch + 1 with the staging node as
//! proposer. The new state then spreads by gossip and is merged everywhere.
//!
//! # Concurrent changes
//!
//! Two changes staged concurrently on different nodes both produce a map of the same epoch; the
//! merge keeps one (the higher proposer), so the other change's member row arrives without its
//! map. [`ClusterState::reconcile`] repairs that: whenever the winning map was planned for a
//! different owning set than the member table's, it replans from the winning map at epoch + 1,
//! keeping the winning map's proposer. It reads nothing but the state, so every node that
//! reconciles the same state computes the same map, and the CRDT converges (tested with random
//! concurrent change sets in `state_props.rs`). The gossiper reconciles after every merge.

use std::collections::BTreeSet;

use dynakv_ring::{plan, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::GossipError;
use crate::state::{check_addr, ClusterState, MapVersion, Member, Status, VersionedMap};

/// A membership change an operator (or the node itself) asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new node joins (`dynakv join SEED`, staged by the seed): status joining.
    Join {
        /// The new node's id (never used before in this cluster).
        node: NodeId,
        /// Where peers reach it.
        addr: String,
    },
    /// A node leaves gracefully (`dynakv leave`): status leaving, its partitions replanned.
    Leave(NodeId),
    /// A node is removed for good (`dynakv remove NODE`, for a dead node): status removed.
    Remove(NodeId),
    /// A joining node has received all its partitions: status valid.
    MarkValid(NodeId),
    /// A leaving node has handed off everything: status removed.
    FinishLeave(NodeId),
}

impl ClusterState {
    /// Stages `change` on behalf of node `by` and returns the new state (see the module docs).
    ///
    /// Call it on the node where the change was asked for, then gossip the result
    /// ([`crate::Gossiper::stage`] does both). Errors leave nothing changed.
    pub fn apply(&self, by: NodeId, change: &Change) -> Result<ClusterState, GossipError> {
        match change {
            Change::Join { node, addr } => self.stage_join(by, *node, addr),
            Change::Leave(node) => self.stage_leave(by, *node),
            Change::Remove(node) => self.stage_remove(by, *node),
            Change::MarkValid(node) => self.mark_valid(*node),
            Change::FinishLeave(node) => self.finish_leave(*node),
        }
    }

    /// Adds `node` as joining at `addr` and replans the map so it gets its share.
    ///
    /// Errors: the id is already in the table ([`GossipError::AlreadyMember`], or
    /// [`GossipError::Removed`] for a removed id), the table is full, or a bad address.
    pub fn stage_join(
        &self,
        by: NodeId,
        node: NodeId,
        addr: &str,
    ) -> Result<ClusterState, GossipError> {
        check_addr(addr)?;
        if let Some(m) = self.members.get(&node) {
            return Err(match m.status {
                Status::Removed => GossipError::Removed(node),
                status => GossipError::AlreadyMember { node, status },
            });
        }
        if self.members.len() >= crate::state::MAX_MEMBERS {
            return Err(GossipError::TooManyMembers);
        }
        let mut next = self.clone();
        let member = Member {
            addr: addr.to_owned(),
            status: Status::Joining,
            version: 1,
        };
        next.members.insert(node, member);
        next.replan(by, node)?;
        Ok(next)
    }

    /// Marks `node` (joining or valid) as leaving and replans the map without it; the node
    /// then hands its partitions off and finishes with [`Self::finish_leave`].
    ///
    /// Errors: unknown node, a node already leaving or removed, or the last owning node.
    pub fn stage_leave(&self, by: NodeId, node: NodeId) -> Result<ClusterState, GossipError> {
        let member = self.known(node)?;
        if !member.status.owns_data() {
            return Err(wrong(node, "joining or valid", member.status));
        }
        let mut next = self.clone();
        next.set_status(node, Status::Leaving);
        next.replan(by, node)?;
        Ok(next)
    }

    /// Removes `node` for good (the operator's way to get rid of a dead node) and replans the
    /// map without it. Its partitions must then be rebuilt from the other replicas, since the
    /// node itself is gone.
    ///
    /// Errors: unknown node, already removed, or the last owning node.
    pub fn stage_remove(&self, by: NodeId, node: NodeId) -> Result<ClusterState, GossipError> {
        let member = self.known(node)?;
        if member.status == Status::Removed {
            return Err(GossipError::Removed(node));
        }
        let mut next = self.clone();
        next.set_status(node, Status::Removed);
        next.replan(by, node)?;
        Ok(next)
    }

    /// Promotes a joining node to valid. Call it once the node has received every partition the
    /// map gives it. The map does not change (joining nodes already own their partitions).
    ///
    /// Errors: unknown node, or a node that is not joining.
    pub fn mark_valid(&self, node: NodeId) -> Result<ClusterState, GossipError> {
        let member = self.known(node)?;
        if member.status != Status::Joining {
            return Err(wrong(node, "joining", member.status));
        }
        let mut next = self.clone();
        next.set_status(node, Status::Valid);
        Ok(next)
    }

    /// Turns a leaving node into removed. Call it once the node has handed off everything; it
    /// is refused while the current map still gives it partitions.
    ///
    /// Errors: unknown node, a node that is not leaving, or one that still owns partitions.
    pub fn finish_leave(&self, node: NodeId) -> Result<ClusterState, GossipError> {
        let member = self.known(node)?;
        if member.status != Status::Leaving {
            return Err(wrong(node, "leaving", member.status));
        }
        let partitions = self.map.map.partitions_of(node).len();
        if partitions > 0 {
            return Err(GossipError::StillOwnsPartitions { node, partitions });
        }
        let mut next = self.clone();
        next.set_status(node, Status::Removed);
        Ok(next)
    }

    /// Replans the map if it was planned for another owning set than the member table's (a
    /// change whose map lost a concurrent merge). Returns whether the map changed.
    ///
    /// Call it after every merge. The new map is `plan(current map, owning members)` at version
    /// `(epoch + 1, same proposer)`: a function of the state alone, so all nodes agree on it.
    /// With no owning member left (e.g. the last two nodes left concurrently) there is nothing
    /// to plan for, and the map stays as it is until a node joins.
    pub fn reconcile(&mut self) -> Result<bool, GossipError> {
        let owning = self.owning_members();
        if owning == self.map.planned_for || owning.is_empty() {
            return Ok(false);
        }
        let version = MapVersion {
            epoch: self.map.version.epoch + 1,
            proposer: self.map.version.proposer,
        };
        self.install_plan(version, owning)?;
        Ok(true)
    }

    /// Whether the map was planned for exactly the current owning members (no reconcile due).
    pub fn is_reconciled(&self) -> bool {
        self.owning_members() == self.map.planned_for
    }

    fn known(&self, node: NodeId) -> Result<&Member, GossipError> {
        self.members
            .get(&node)
            .ok_or(GossipError::UnknownNode(node))
    }

    /// Sets a known member's status and bumps its version.
    fn set_status(&mut self, node: NodeId, status: Status) {
        if let Some(m) = self.members.get_mut(&node) {
            m.status = status;
            m.version += 1;
        }
    }

    /// After a staged change to `changed`: replans at `(epoch + 1, by)` if the owning set moved.
    fn replan(&mut self, by: NodeId, changed: NodeId) -> Result<(), GossipError> {
        let owning = self.owning_members();
        if owning.is_empty() {
            return Err(GossipError::LastMember(changed));
        }
        if owning != self.map.planned_for {
            let version = MapVersion {
                epoch: self.map.version.epoch + 1,
                proposer: by,
            };
            self.install_plan(version, owning)?;
        }
        Ok(())
    }

    fn install_plan(
        &mut self,
        version: MapVersion,
        owning: BTreeSet<NodeId>,
    ) -> Result<(), GossipError> {
        let map = plan(&self.map.map, &owning)?;
        self.map = VersionedMap {
            version,
            planned_for: owning,
            map,
        };
        Ok(())
    }
}

fn wrong(node: NodeId, expected: &'static str, actual: Status) -> GossipError {
    GossipError::WrongStatus {
        node,
        expected,
        actual,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::ClusterParams;

    fn cluster(ids: &[u32]) -> ClusterState {
        let founders: BTreeMap<NodeId, String> = ids
            .iter()
            .map(|&i| (NodeId(i), format!("10.0.0.{i}:7000")))
            .collect();
        let params = ClusterParams {
            partitions: 64,
            replicas: 3,
        };
        ClusterState::new(params, &founders).expect("valid cluster")
    }

    #[test]
    fn join_replans_with_minimal_movement() {
        let s = cluster(&[1, 2, 3]);
        let j = s
            .stage_join(NodeId(1), NodeId(4), "10.0.0.4:7000")
            .expect("join");
        assert_eq!(j.member(NodeId(4)).map(|m| m.status), Some(Status::Joining));
        assert_eq!(
            j.map().version,
            MapVersion {
                epoch: 2,
                proposer: NodeId(1)
            }
        );
        assert_eq!(j.map().map.partitions_of(NodeId(4)).len(), 16);
        assert_eq!(s.map().map.moves(&j.map().map).len(), 16);
        let v = j.mark_valid(NodeId(4)).expect("valid");
        assert_eq!(v.map(), j.map(), "mark_valid does not move partitions");
        assert_eq!(
            v.member(NodeId(4)).map(|m| (m.status, m.version)),
            Some((Status::Valid, 2))
        );
    }

    #[test]
    fn leave_then_finish() {
        let s = cluster(&[1, 2, 3]);
        let l = s.stage_leave(NodeId(2), NodeId(3)).expect("leave");
        assert!(l.map().map.partitions_of(NodeId(3)).is_empty());
        assert_eq!(l.map().planned_for, [NodeId(1), NodeId(2)].into());
        let r = l.finish_leave(NodeId(3)).expect("finish");
        assert_eq!(r.member(NodeId(3)).map(|m| m.status), Some(Status::Removed));
        assert_eq!(r.map(), l.map());
    }

    #[test]
    fn nonsense_is_refused() {
        let s = cluster(&[1, 2]);
        let e = s.stage_remove(NodeId(1), NodeId(9));
        assert_eq!(e, Err(GossipError::UnknownNode(NodeId(9))));
        assert!(matches!(
            s.stage_join(NodeId(1), NodeId(2), "x:1"),
            Err(GossipError::AlreadyMember { .. })
        ));
        assert!(matches!(
            s.stage_join(NodeId(1), NodeId(5), ""),
            Err(GossipError::InvalidAddr(_))
        ));
        let r = s.stage_remove(NodeId(1), NodeId(2)).expect("remove");
        assert_eq!(
            r.stage_leave(NodeId(1), NodeId(2)).map(|_| ()),
            Err(wrong(NodeId(2), "joining or valid", Status::Removed))
        );
        assert_eq!(
            r.stage_remove(NodeId(1), NodeId(2)),
            Err(GossipError::Removed(NodeId(2)))
        );
        assert_eq!(
            r.stage_join(NodeId(1), NodeId(2), "x:1"),
            Err(GossipError::Removed(NodeId(2)))
        );
        assert_eq!(
            r.stage_leave(NodeId(1), NodeId(1)),
            Err(GossipError::LastMember(NodeId(1)))
        );
        assert!(matches!(
            s.mark_valid(NodeId(1)),
            Err(GossipError::WrongStatus { .. })
        ));
        assert!(matches!(
            s.finish_leave(NodeId(1)),
            Err(GossipError::WrongStatus { .. })
        ));
        // A leaving node whose map still gives it partitions (a stale map) cannot finish.
        let mut stale = s.stage_leave(NodeId(1), NodeId(2)).expect("leave");
        stale.map = s.map.clone();
        assert!(matches!(
            stale.finish_leave(NodeId(2)),
            Err(GossipError::StillOwnsPartitions { partitions: 32, .. })
        ));
    }

    #[test]
    fn concurrent_join_and_leave_converge_after_reconcile() {
        let s = cluster(&[1, 2, 3]);
        let a = s
            .stage_join(NodeId(1), NodeId(4), "10.0.0.4:7000")
            .expect("join");
        let b = s.stage_leave(NodeId(2), NodeId(3)).expect("leave");
        let mut ab = a.clone();
        ab.merge(&b).expect("merge");
        let mut ba = b.clone();
        ba.merge(&a).expect("merge");
        assert_eq!(ab, ba);
        assert_eq!(
            ab.map().version.proposer,
            NodeId(2),
            "higher proposer wins the tie"
        );
        assert!(!ab.is_reconciled(), "the join lost its map");
        assert!(ab.reconcile().expect("reconcile"));
        assert!(ba.reconcile().expect("reconcile"));
        assert_eq!(ab, ba, "every node reconciles to the same map");
        assert_eq!(
            ab.map().planned_for,
            [NodeId(1), NodeId(2), NodeId(4)].into()
        );
        assert_eq!(
            ab.map().version,
            MapVersion {
                epoch: 3,
                proposer: NodeId(2)
            }
        );
        assert!(
            !ab.reconcile().expect("reconcile"),
            "reconcile is idempotent"
        );
    }
}

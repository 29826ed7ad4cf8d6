//! The router's side of membership: what the gossiper decides ([`MembershipEvent`]) reaches
//! transfers, the partition map and anti-entropy here, and transfer progress
//! ([`TransferFacts`]) reaches membership. Also the public membership accessors of
//! [`NodeCore`] and operator requests (`handle_admin`, `stage_change`).

use dynakv_gossip::{Change, ClusterState, GossipMsg, Status};
use dynakv_ring::NodeId;

use super::membership::{MembershipEvent, TransferFacts};
use super::node::{NodeCore, Origin};
use crate::error::Result;
use crate::store::Store;

/// The router's side of membership: what the gossiper decides reaches transfers, the map and
/// anti-entropy here, and transfer progress reaches membership.
impl<S: Store> NodeCore<S> {
    /// Ask `seed` (at `addr`) for the cluster state: how a running node that is not in a
    /// cluster joins one (`dynakv join`). Ignored once the node has joined.
    pub fn add_join_seed(&mut self, seed: NodeId, addr: String) {
        if self.membership.add_join_seed(self.ctx.id(), seed, addr) {
            self.sync_links();
        }
    }

    /// Re-decide the peer links (see [`Membership::sync_links`]).
    pub(super) fn sync_links(&mut self) {
        self.membership
            .sync_links(&mut self.ctx, &self.liveness.links_up);
    }

    /// The address `node` advertises in the cluster state.
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        self.cluster_state()
            .and_then(|s| s.member(node))
            .map(|m| m.addr.clone())
    }

    /// The cluster state this node knows (`None` before it has joined).
    pub fn cluster_state(&self) -> Option<&ClusterState> {
        self.membership.state()
    }

    /// This node's membership status, if it is in the cluster.
    pub fn member_status(&self) -> Option<Status> {
        self.membership.status_of(self.ctx.id())
    }

    /// Has this node been removed from the cluster (the driver should stop it)?
    pub fn is_removed(&self) -> bool {
        self.membership.is_removed(self.ctx.id())
    }

    /// Has this node got the cluster state (a joining node has not, until its seed answers)?
    pub fn is_joined(&self) -> bool {
        self.membership.joined
    }

    /// Maintenance: the removed-node linger (see [`Membership::removed_linger`]).
    pub(super) fn removed_linger(&mut self) {
        let held: u64 = self.handoff.pending.values().sum();
        self.membership
            .removed_linger(&mut self.ctx, &self.liveness.links_up, held);
    }

    /// An operator's membership request (`dynakv leave`, `dynakv remove`): refused with a
    /// reason, or staged and gossiped.
    pub(super) fn handle_admin(&mut self, origin: Origin, admin: super::types::AdminRequest) {
        let me = self.ctx.id();
        let (change, what) = match admin {
            super::types::AdminRequest::Leave => {
                (Change::Leave(me), format!("node {me} is leaving"))
            }
            super::types::AdminRequest::Remove { node, force } => {
                let refusal = self
                    .membership
                    .remove_refusal(me, &self.peers(), node, force);
                if let Some(why) = refusal {
                    self.ctx.respond(
                        origin,
                        super::types::ClientReply::Error(
                            super::types::RequestError::ChangeRefused(why),
                        ),
                    );
                    return;
                }
                (Change::Remove(node), format!("node {node} removed"))
            }
        };
        let reply = match self.stage_change(change) {
            Ok(()) => super::types::ClientReply::Admin(what),
            Err(e) => super::types::ClientReply::Error(super::types::RequestError::ChangeRefused(
                e.to_string(),
            )),
        };
        self.ctx.respond(origin, reply);
    }

    /// Stage an operator's change on this node (`dynakv leave` / `remove`) and gossip it.
    ///
    /// Errors: [`Error::NotJoined`] before this node has a cluster state, and the gossiper's
    /// refusal ([`Error::Gossip`]: a removed or unknown node, the last member, ...).
    pub fn stage_change(&mut self, change: Change) -> Result<()> {
        self.membership.stage(&mut self.ctx, change)?;
        self.after_gossip();
        Ok(())
    }

    /// Maintenance: one gossip round when it is due.
    pub(super) fn gossip_tick(&mut self) {
        if self.membership.gossip_tick(&mut self.ctx) {
            self.after_gossip();
        }
    }

    /// A gossip message from a peer.
    pub(super) fn on_gossip(&mut self, from: NodeId, msg: GossipMsg) {
        if self.membership.on_gossip(&mut self.ctx, from, msg) {
            self.after_gossip();
        }
    }

    /// Route what the gossiper decided: a new map plans transfers, then the node routes by it
    /// and forgets the trees of partitions it no longer replicates; a join expects the
    /// partitions the node now replicates. Then persist, re-sync links, and check progress.
    fn after_gossip(&mut self) {
        let (events, changed) = self.membership.take_events(&mut self.ctx);
        for event in events {
            match event {
                MembershipEvent::Joined { map } => {
                    self.ctx.install_map(map);
                    self.transfers
                        .expect_join_transfers(&mut self.ctx, &self.membership);
                }
                MembershipEvent::MapChanged {
                    previous,
                    current,
                    plan,
                } => {
                    if plan {
                        self.transfers
                            .plan(&mut self.ctx, &self.membership, &previous, &current);
                    }
                    self.ctx.install_map(current);
                    let mine = &self.ctx.mine;
                    self.aae.trees.retain(|p, _| mine.contains(p));
                }
            }
        }
        if changed {
            self.membership.persist(&mut self.ctx);
            self.sync_links();
        }
        self.membership_progress();
    }

    /// A joining node becomes valid once it received every partition it expects; a leaving
    /// node is removed once it handed everything off.
    pub(super) fn membership_progress(&mut self) {
        let facts = TransferFacts {
            incoming_pending: self.transfers.incoming_pending(&self.membership),
            outgoing_pending: self.transfers.outgoing_pending(),
            hints_held: self.handoff.pending.values().sum(),
        };
        let Some(change) = self.membership.progress_change(&self.ctx, facts) else {
            return;
        };
        if let Err(e) = self.stage_change(change) {
            tracing::debug!(error = %e, "membership change not staged yet");
        }
    }
}

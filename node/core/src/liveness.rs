//! Local failure detection ([`Liveness`]): which peers this node itself believes down
//! (unanswered requests, lost connections), the links its driver reports up, and the
//! `NodeCore` methods that combine that with the gossip failure detector.

use std::collections::{BTreeMap, BTreeSet};

use dynakv_ring::NodeId;

use super::membership::Membership;
use super::node::NodeCore;
use crate::store::Store;

/// Local failure detection: which peers this node believes down (unanswered requests, lost
/// connections), and when to probe them next.
///
/// Inputs (through `NodeCore`): `Input::PeerStatus` (`link_reported`), any message from a peer
/// (`mark_up`), operations whose targets stayed silent (`mark_down`, also through
/// `CoordEnv::mark_down`), and the maintenance tick (probes of down peers). Other mechanisms
/// read it through a [`PeerView`].
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Peers believed down, since when (local opinion; feeds sloppy quorum).
    pub(super) down: BTreeMap<NodeId, u64>,
    /// When the down peers are probed next.
    pub(super) next_probe: u64,
    /// Peers the driver reports a live connection to (for status).
    pub(super) links_up: BTreeSet<NodeId>,
}

impl Liveness {
    /// Does this node itself believe `peer` down (not counting the gossip detector)?
    pub(super) fn believes_down(&self, peer: NodeId) -> bool {
        self.down.contains_key(&peer)
    }

    /// `peer` stayed silent (or its link went down) at `now`; true if it was not down yet.
    pub(super) fn mark_down(&mut self, peer: NodeId, now: u64) -> bool {
        if self.down.contains_key(&peer) {
            return false;
        }
        self.down.insert(peer, now);
        true
    }

    /// `peer` was heard from; true if it was believed down until now.
    pub(super) fn mark_up(&mut self, peer: NodeId) -> bool {
        self.down.remove(&peer).is_some()
    }

    /// The driver reported `peer`'s link up or down (`Input::PeerStatus`).
    pub(super) fn link_reported(&mut self, peer: NodeId, up: bool) {
        if up {
            self.links_up.insert(peer);
        } else {
            self.links_up.remove(&peer);
        }
    }
}

/// What the other mechanisms may ask of failure detection (read-only): this node's own
/// opinion combined with the gossip detector's. Built by `NodeCore` for the call that needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerView<'a> {
    me: NodeId,
    now: u64,
    liveness: &'a Liveness,
    membership: &'a Membership,
}

impl<'a> PeerView<'a> {
    /// The view of node `me` at `now`.
    pub(super) fn new(
        me: NodeId,
        now: u64,
        liveness: &'a Liveness,
        membership: &'a Membership,
    ) -> Self {
        Self {
            me,
            now,
            liveness,
            membership,
        }
    }

    /// Does this node currently believe `peer` is down?
    pub(super) fn is_down(&self, peer: NodeId) -> bool {
        peer != self.me
            && (self.liveness.believes_down(peer)
                || self.membership.gossip_says_down(peer, self.now))
    }
}

/// Node `me` heard nothing from `peer` (or its link went down) at `now`: believe it down.
pub(super) fn suspect(liveness: &mut Liveness, me: NodeId, now: u64, peer: NodeId) {
    if peer != me && liveness.mark_down(peer, now) {
        tracing::info!(%peer, "peer considered down");
    }
}

impl<S: Store> NodeCore<S> {
    /// The failure-detection view handed to mechanisms.
    pub(super) fn peers(&self) -> PeerView<'_> {
        PeerView::new(
            self.ctx.id(),
            self.ctx.now,
            &self.liveness,
            &self.membership,
        )
    }

    /// Does this node currently believe `peer` is down?
    pub fn is_down(&self, peer: NodeId) -> bool {
        self.peers().is_down(peer)
    }

    /// Peers this node currently believes down.
    pub fn down_peers(&self) -> Vec<NodeId> {
        let mut peers: BTreeSet<NodeId> = self.liveness.down.keys().copied().collect();
        peers.extend(self.ctx.members.iter().copied());
        peers.into_iter().filter(|p| self.is_down(*p)).collect()
    }

    pub(super) fn mark_down(&mut self, peer: NodeId) {
        suspect(&mut self.liveness, self.ctx.id(), self.ctx.now, peer);
    }

    pub(super) fn mark_up(&mut self, peer: NodeId) {
        if self.liveness.mark_up(peer) {
            tracing::info!(%peer, "peer is back");
            // Hints and transfer batches for it may go at once.
            self.handoff.peer_is_back(peer);
            self.transfers.peer_is_back(peer);
        }
    }
}

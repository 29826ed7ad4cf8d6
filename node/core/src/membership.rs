//! Membership inside the core: the gossiper (from `dynakv-gossip`), its persistence, the partition
//! map it decides, and the operator's changes (join, leave, remove).
//!
//! The cluster state is persisted in the store's `meta` space whenever it changes, so a node
//! restarts with the membership it last knew. A map change plans partition transfers
//! (`transfer.rs`) before the node routes by the new map.

use std::collections::BTreeMap;

use dynakv_gossip::{
    Change, ClusterParams, ClusterState, GossipConfig, GossipEvent, GossipMsg, Gossiper, Status,
};
use dynakv_ring::{NodeId, PartitionMap};
use rand::Rng;

use super::node::NodeCore;
use super::types::{Effect, PeerMsg};
use crate::codec;
use crate::error::{Error, Result};
use crate::store::{Space, Store};

/// Key of the persisted cluster state in [`Space::Meta`].
const CLUSTER_KEY: &[u8] = b"cluster";

/// The address a node started from a static map advertises (the driver knows the real ones).
pub fn static_addr(node: NodeId) -> String {
    format!("node-{node}")
}

/// How many lingers a removed node waits at most for its hints to reach their owners.
pub(super) const REMOVED_HANDOFF_FACTOR: u64 = 30;

/// How a node enters the cluster when it starts.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A founder of a cluster whose founding members own `map` (or a node restarting with the
    /// cluster state persisted in its store, which wins). Members are known by placeholder
    /// addresses (`static_addr`); the simulator and tests use this.
    Founder { map: PartitionMap },
    /// Like `Founder`, with the founding members' real addresses (the `dynakv node` driver).
    Founders {
        map: PartitionMap,
        addrs: BTreeMap<NodeId, String>,
    },
    /// A new node that joins through a seed; it serves nothing until it has the cluster state.
    Join {
        /// Where peers reach this node.
        addr: String,
        /// A member of the cluster to ask.
        seed: NodeId,
        /// The seed's address.
        seed_addr: String,
    },
}

/// Membership's state: the gossiper (cluster state, failure detector) and joining progress.
///
/// Inputs (through `NodeCore`): `PeerMsg::Gossip` (`on_gossip`), the maintenance tick
/// (`gossip_tick`), operator changes (`stage_change`), and transfer progress
/// (`membership_progress`).
#[derive(Debug, Default)]
pub(super) struct Membership {
    /// The gossiper (`None` only while the core is being built).
    pub(super) gossip: Option<dynakv_gossip::Gossiper>,
    /// Has this node got the cluster state? A joining node serves nothing before.
    pub(super) joined: bool,
    /// Seeds to ask while this node has not joined yet.
    pub(super) join_seeds: Vec<(NodeId, String)>,
    /// The address this node was started to listen on, when it joins (shown by status
    /// before the cluster state lists it).
    pub(super) my_addr: Option<String>,
    /// The peers this node keeps a link to, at their advertised address (see `sync_links`).
    pub(super) links: BTreeMap<NodeId, String>,
    /// Since when this node knows it was removed (local clock).
    pub(super) removed_since: Option<u64>,
    /// Peers this node saw removed, and when (local clock): it keeps its link to each while
    /// the peer is up, for at most [`REMOVED_HANDOFF_FACTOR`] lingers, so a removed node can
    /// hand over the hints it holds before it stops.
    pub(super) removed_peers: BTreeMap<NodeId, u64>,
    /// The stop effect was emitted.
    pub(super) stop_sent: bool,
}

impl<S: Store> NodeCore<S> {
    /// Set up the gossiper: from the persisted state if there is one, else per `boot`.
    pub(super) fn init_membership(&mut self, boot: Bootstrap) -> Result<()> {
        let seed: u64 = self.ctx.rng.gen();
        let cfg = GossipConfig {
            interval_us: u64::from(self.ctx.cfg.gossip_interval_ms) * 1000,
            ..GossipConfig::default()
        };
        let persisted: Option<ClusterState> = match self.ctx.store.get(Space::Meta, CLUSTER_KEY)? {
            Some(bytes) => Some(
                codec::decode(&bytes)
                    .map_err(|e| Error::DataDir(format!("unreadable cluster state: {e}")))?,
            ),
            None => None,
        };
        let me = self.ctx.id();
        let gossiper = match (persisted, boot) {
            (Some(state), _) => Gossiper::with_state(me, state, 1, seed, cfg, self.ctx.now),
            (None, Bootstrap::Founder { map }) => {
                self.found_cluster(&map, &BTreeMap::new(), seed, cfg)
            }
            (None, Bootstrap::Founders { map, addrs }) => {
                self.found_cluster(&map, &addrs, seed, cfg)
            }
            (
                None,
                Bootstrap::Join {
                    addr,
                    seed: seed_node,
                    seed_addr,
                },
            ) => {
                self.membership.my_addr = Some(addr.clone());
                let mut g = Gossiper::new(me, addr, 1, seed, cfg);
                g.add_seed(seed_node, seed_addr.clone());
                self.membership.join_seeds.push((seed_node, seed_addr));
                Ok(g)
            }
        }
        .map_err(|e| Error::Config(format!("membership: {e}")))?;
        if let Some(state) = gossiper.state() {
            let map = state.map().map.clone();
            self.ctx.install_map(map);
            self.membership.joined = true;
        }
        self.membership.gossip = Some(gossiper);
        self.persist_cluster();
        Ok(())
    }

    /// A new cluster whose founders own `map`; their addresses from `addrs`, placeholders
    /// for the ones not listed.
    fn found_cluster(
        &self,
        map: &PartitionMap,
        addrs: &BTreeMap<NodeId, String>,
        seed: u64,
        cfg: GossipConfig,
    ) -> std::result::Result<Gossiper, dynakv_gossip::GossipError> {
        let params = ClusterParams {
            partitions: map.partition_count(),
            replicas: self.ctx.cfg.n,
        };
        let founders = map
            .members()
            .into_iter()
            .map(|m| (m, addrs.get(&m).cloned().unwrap_or_else(|| static_addr(m))))
            .collect();
        let state = ClusterState::new(params, &founders)?;
        Gossiper::with_state(self.ctx.id(), state, 1, seed, cfg, self.ctx.now)
    }

    /// Ask `seed` (at `addr`) for the cluster state: how a running node that is not in a
    /// cluster joins one (`dynakv join`). Ignored once the node has joined.
    pub fn add_join_seed(&mut self, seed: NodeId, addr: String) {
        if self.membership.joined || seed == self.ctx.id() {
            return;
        }
        if let Some(g) = self.membership.gossip.as_mut() {
            g.add_seed(seed, addr.clone());
        }
        self.membership.join_seeds.push((seed, addr));
        self.sync_links();
    }

    /// Decide which peers this node keeps a link to: every member of the cluster state that is
    /// not removed (at its advertised address), plus the seeds while joining, plus peers
    /// removed a short while ago that are still up (they hand their hints over before they
    /// stop; see `removed_peers`). Emits
    /// [`Effect::Link`] for a new peer or a changed address and [`Effect::Unlink`] for a peer
    /// that is gone. Called whenever the cluster state or the seeds change.
    pub(super) fn sync_links(&mut self) {
        let me = self.ctx.id();
        let mut wanted: BTreeMap<NodeId, String> = BTreeMap::new();
        let window = u64::from(self.ctx.cfg.removed_linger_ms) * 1000 * REMOVED_HANDOFF_FACTOR;
        // While the driver reports the link up, or for two lingers after the removal was seen
        // (time for the removed node to connect, e.g. to a member that was paused); once its
        // process is gone the link goes down and is not made again.
        let grace = u64::from(self.ctx.cfg.removed_linger_ms) * 1000 * 2;
        let lingering = |id: &NodeId| {
            self.membership.removed_peers.get(id).is_some_and(|since| {
                self.ctx.now < since + window
                    && (self.liveness.links_up.contains(id) || self.ctx.now < since + grace)
            })
        };
        if let Some(state) = self.cluster_state() {
            for (id, m) in state.members() {
                if *id != me
                    && (m.status != Status::Removed || (!self.is_removed() && lingering(id)))
                {
                    wanted.insert(*id, m.addr.clone());
                }
            }
        }
        if !self.membership.joined {
            for (id, addr) in &self.membership.join_seeds {
                wanted.entry(*id).or_insert_with(|| addr.clone());
            }
        }
        let gone: Vec<NodeId> = self
            .membership
            .links
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for peer in gone {
            self.ctx.effects.push(Effect::Unlink { peer });
        }
        for (peer, addr) in &wanted {
            if self.membership.links.get(peer) != Some(addr) {
                self.ctx.effects.push(Effect::Link {
                    peer: *peer,
                    addr: addr.clone(),
                });
            }
        }
        self.membership.links = wanted;
    }

    /// The address `node` advertises in the cluster state.
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        self.cluster_state()
            .and_then(|s| s.member(node))
            .map(|m| m.addr.clone())
    }

    /// The cluster state this node knows (`None` before it has joined).
    pub fn cluster_state(&self) -> Option<&ClusterState> {
        self.membership.gossip.as_ref().and_then(|g| g.state())
    }

    /// This node's membership status, if it is in the cluster.
    pub fn member_status(&self) -> Option<Status> {
        self.cluster_state()
            .and_then(|s| s.member(self.ctx.id()))
            .map(|m| m.status)
    }

    /// Has this node been removed from the cluster (the driver should stop it)?
    pub fn is_removed(&self) -> bool {
        self.member_status() == Some(Status::Removed)
    }

    /// Has this node got the cluster state (a joining node has not, until its seed answers)?
    pub fn is_joined(&self) -> bool {
        self.membership.joined
    }

    /// A removed node keeps gossiping for `removed_linger_ms` so its removal spreads, then
    /// asks its driver to stop it (once). It first hands over the hints it holds (they may be
    /// the only copy of a write), waiting up to [`REMOVED_HANDOFF_FACTOR`] lingers for owners
    /// that are unreachable. Called from the maintenance tick.
    pub(super) fn removed_linger(&mut self) {
        // Links kept to removed peers end when the peer goes down or the window passes.
        if !self.membership.removed_peers.is_empty() {
            let window = u64::from(self.ctx.cfg.removed_linger_ms) * 1000 * REMOVED_HANDOFF_FACTOR;
            let now = self.ctx.now;
            self.membership
                .removed_peers
                .retain(|_, since| now < *since + window);
            // Emits effects only for links that change.
            self.sync_links();
        }
        if !self.is_removed() || self.membership.stop_sent {
            return;
        }
        let now = self.ctx.now;
        let since = *self.membership.removed_since.get_or_insert_with(|| {
            tracing::warn!(linger_ms = self.ctx.cfg.removed_linger_ms,
                "this node was removed from the cluster; it keeps running a little so the removal spreads, then stops");
            now
        });
        let linger = u64::from(self.ctx.cfg.removed_linger_ms) * 1000;
        let held: u64 = self.handoff.pending.values().sum();
        if now < since + linger || (held > 0 && now < since + linger * REMOVED_HANDOFF_FACTOR) {
            return;
        }
        if held > 0 {
            tracing::error!(hints = held, "stopping with hints this node could not hand over (their owners stayed unreachable); those writes survive only where other replicas took them");
        }
        self.membership.stop_sent = true;
        self.ctx.effects.push(Effect::Stop {
            reason: "removed from the cluster".into(),
        });
    }

    /// An operator's membership request (`dynakv leave`, `dynakv remove`): refused with a
    /// reason, or staged and gossiped.
    pub(super) fn handle_admin(
        &mut self,
        origin: super::node::Origin,
        admin: super::types::AdminRequest,
    ) {
        let me = self.ctx.id();
        let (change, what) = match admin {
            super::types::AdminRequest::Leave => {
                (Change::Leave(me), format!("node {me} is leaving"))
            }
            super::types::AdminRequest::Remove { node, force } => {
                if let Some(why) = self.remove_refusal(node, force) {
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

    /// Why `dynakv remove NODE` must not go ahead without `--force`: the node is up and
    /// reachable (this node has a link to it, or hears it through gossip), so removing it would
    /// throw away whatever only it holds, while `leave` hands that off first.
    pub(super) fn remove_refusal(&self, node: NodeId, force: bool) -> Option<String> {
        let member = self.cluster_state().and_then(|s| s.member(node).cloned())?;
        if force || member.status == Status::Removed {
            return None; // the gossiper reports a second removal itself
        }
        let reachable = node == self.ctx.id() || !self.is_down(node);
        reachable.then(|| {
            format!(
                "node {node} is up and reachable: removing it would drop the writes and hints only \
                 it holds. Make it leave instead (`dynakv leave --node {}`: it hands its data off, \
                 then stops), or pass --force if it must go now",
                member.addr
            )
        })
    }

    /// Stage an operator's change on this node (`dynakv leave` / `remove`) and gossip it.
    ///
    /// Errors: [`Error::NotJoined`] before this node has a cluster state, and the gossiper's
    /// refusal ([`Error::Gossip`]: a removed or unknown node, the last member, ...).
    pub fn stage_change(&mut self, change: Change) -> Result<()> {
        let now = self.ctx.now;
        let g = self.membership.gossip.as_mut().ok_or(Error::NotJoined)?;
        let outbox = g.stage(now, change)?;
        self.send_gossip(outbox);
        self.after_gossip();
        Ok(())
    }

    fn send_gossip(&mut self, outbox: Vec<(NodeId, GossipMsg)>) {
        for (to, msg) in outbox {
            self.ctx.send(to, PeerMsg::Gossip(msg));
        }
    }

    /// Called from the maintenance tick: one gossip round when it is due.
    pub(super) fn gossip_tick(&mut self) {
        let now = self.ctx.now;
        let Some(g) = self.membership.gossip.as_mut() else {
            return;
        };
        if now < g.next_tick_us() {
            return;
        }
        if g.state().is_none() {
            // Still joining: keep asking every seed (a refusal may be passing, e.g. a seed that
            // was itself restarting); the refusal reasons are logged for the operator.
            for (seed, addr) in &self.membership.join_seeds {
                g.add_seed(*seed, addr.clone());
            }
        }
        let outbox = g.tick(now);
        self.send_gossip(outbox);
        self.after_gossip();
    }

    /// A gossip message from a peer.
    pub(super) fn on_gossip(&mut self, from: NodeId, msg: GossipMsg) {
        let now = self.ctx.now;
        let Some(g) = self.membership.gossip.as_mut() else {
            return;
        };
        match g.handle(now, from, msg) {
            Ok(outbox) => self.send_gossip(outbox),
            Err(e) => tracing::warn!(%from, error = %e, "gossip message refused"),
        }
        self.after_gossip();
    }

    /// Act on what the gossiper decided: a new map (plan transfers, then route by it),
    /// membership changes (persist), our own removal.
    fn after_gossip(&mut self) {
        let Some(g) = self.membership.gossip.as_mut() else {
            return;
        };
        let events = g.take_events();
        let current = g.state().map(|s| s.map().map.clone());
        let mut changed = false;
        for event in events {
            changed = true;
            match event {
                GossipEvent::Joined { .. } => {
                    let Some(current) = current.clone() else {
                        continue;
                    };
                    tracing::info!(node = %self.ctx.id(), "joined the cluster");
                    self.membership.joined = true;
                    self.ctx.install_map(current);
                    self.transfers
                        .expect_join_transfers(&mut self.ctx, &self.membership);
                }
                GossipEvent::MapChanged { previous, .. } => {
                    let Some(current) = current.clone() else {
                        continue;
                    };
                    if self.membership.joined && previous != current {
                        self.transfers
                            .plan(&mut self.ctx, &self.membership, &previous, &current);
                    }
                    self.ctx.install_map(current.clone());
                    // Forget hash trees of partitions this node no longer replicates.
                    let mine = self.ctx.mine.clone();
                    self.aae.trees.retain(|p, _| mine.contains(p));
                }
                GossipEvent::MemberChanged { node, status } => {
                    tracing::info!(%node, %status, "member changed");
                    if status == Status::Removed && node != self.ctx.id() {
                        self.membership.removed_peers.insert(node, self.ctx.now);
                    }
                }
                GossipEvent::JoinRefused { seed, reason } => {
                    tracing::error!(%seed, %reason, "join refused");
                    self.ctx.stats.join_refusals += 1;
                }
            }
        }
        if changed {
            self.persist_cluster();
            self.sync_links();
        }
        self.membership_progress();
    }

    fn persist_cluster(&mut self) {
        let Some(state) = self.cluster_state() else {
            return;
        };
        match codec::encode(state)
            .map_err(Error::from)
            .and_then(|b| self.ctx.store.put(Space::Meta, CLUSTER_KEY, &b))
        {
            Ok(()) => self.ctx.dirty = true,
            Err(e) => tracing::error!(error = %e, "cannot persist the cluster state"),
        }
    }

    /// A joining node becomes valid once it received every partition it expects; a leaving
    /// node is removed once it handed everything off.
    pub(super) fn membership_progress(&mut self) {
        let me = self.ctx.id();
        let change = match self.member_status() {
            // Only once the map is planned with this node in it: before, no transfer to it is
            // known, and "nothing pending" would mean nothing.
            Some(Status::Joining)
                if self.incoming_pending() == 0
                    && self
                        .cluster_state()
                        .is_some_and(|s| s.map().planned_for.contains(&me)) =>
            {
                Change::MarkValid(me)
            }
            Some(Status::Leaving)
                if self.outgoing_pending() == 0
                    && self.handoff.pending.values().all(|c| *c == 0)
                    && self.ctx.map.partitions_of(me).is_empty() =>
            {
                Change::FinishLeave(me)
            }
            _ => return,
        };
        if let Err(e) = self.stage_change(change) {
            tracing::debug!(error = %e, "membership change not staged yet");
        }
    }
}

impl Membership {
    /// The gossip failure detector's opinion of `peer` at `now` (`false` for a peer it does
    /// not watch).
    pub(super) fn gossip_says_down(&self, peer: NodeId, now: u64) -> bool {
        let Some(g) = &self.gossip else {
            return false;
        };
        let Some(state) = g.state() else { return false };
        match state.member(peer) {
            Some(m) if m.status != Status::Removed => !g.is_up(peer, now),
            _ => false,
        }
    }

    /// `node`'s membership status, if it is in the cluster.
    pub(super) fn status_of(&self, node: NodeId) -> Option<Status> {
        self.state().and_then(|s| s.member(node)).map(|m| m.status)
    }

    /// Has `node` been removed from the cluster?
    pub(super) fn is_removed(&self, node: NodeId) -> bool {
        self.status_of(node) == Some(Status::Removed)
    }

    /// The cluster state gossip agreed on, once this node has it.
    pub(super) fn state(&self) -> Option<&ClusterState> {
        self.gossip.as_ref().and_then(|g| g.state())
    }
}

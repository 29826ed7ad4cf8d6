//! Membership inside the core: the gossiper (from `dynakv-gossip`), its persistence, the partition
//! map it decides, and the operator's changes (join, leave, remove).
//!
//! The cluster state is persisted in the store's `meta` space whenever it changes, so a node
//! restarts with the membership it last knew. A map change plans partition transfers
//! (`transfer.rs`) before the node routes by the new map.

use std::collections::{BTreeMap, BTreeSet};

use dynakv_gossip::{
    Change, ClusterParams, ClusterState, GossipConfig, GossipEvent, GossipMsg, Gossiper, Status,
};
use dynakv_ring::{NodeId, PartitionMap};
use rand::Rng;

use super::ctx::Ctx;
use super::liveness::PeerView;
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
/// Inputs (routed by `NodeCore`): `PeerMsg::Gossip` (`on_gossip`), the maintenance tick
/// (`gossip_tick`, `removed_linger`), operator changes (`stage`), and transfer progress
/// (`progress_change`, with [`TransferFacts`]). What the gossiper decided comes back from
/// `take_events` as [`MembershipEvent`]s for `NodeCore` to route (plan transfers, route by the
/// new map, forget trees).
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

/// What the gossiper decided that other mechanisms act on, in the order it happened.
#[derive(Debug, Clone)]
pub(super) enum MembershipEvent {
    /// This node joined: route by `map`, then expect the partitions it now replicates.
    Joined { map: PartitionMap },
    /// The map changed from `previous` to `current`: plan transfers first when `plan` (this
    /// node had joined when the change came), then route by `current`.
    MapChanged {
        previous: PartitionMap,
        current: PartitionMap,
        plan: bool,
    },
}

/// What membership must know of transfers and handoff to finish a join or a leave.
#[derive(Debug, Clone, Copy)]
pub(super) struct TransferFacts {
    /// Incoming transfers not finished.
    pub(super) incoming_pending: usize,
    /// Outgoing transfers not finished.
    pub(super) outgoing_pending: usize,
    /// Hints this node still holds.
    pub(super) hints_held: u64,
}

impl Membership {
    /// Set up the gossiper: from the persisted state if there is one, else per `boot`.
    pub(super) fn init<S: Store>(&mut self, ctx: &mut Ctx<S>, boot: Bootstrap) -> Result<()> {
        let seed: u64 = ctx.rng.gen();
        let cfg = GossipConfig {
            interval_us: u64::from(ctx.cfg.gossip_interval_ms) * 1000,
            ..GossipConfig::default()
        };
        let persisted: Option<ClusterState> = match ctx.store.get(Space::Meta, CLUSTER_KEY)? {
            Some(bytes) => Some(
                codec::decode(&bytes)
                    .map_err(|e| Error::DataDir(format!("unreadable cluster state: {e}")))?,
            ),
            None => None,
        };
        let me = ctx.id();
        let gossiper = match (persisted, boot) {
            (Some(state), _) => Gossiper::with_state(me, state, 1, seed, cfg, ctx.now),
            (None, Bootstrap::Founder { map }) => {
                Self::found_cluster(ctx, &map, &BTreeMap::new(), seed, cfg)
            }
            (None, Bootstrap::Founders { map, addrs }) => {
                Self::found_cluster(ctx, &map, &addrs, seed, cfg)
            }
            (
                None,
                Bootstrap::Join {
                    addr,
                    seed: seed_node,
                    seed_addr,
                },
            ) => {
                self.my_addr = Some(addr.clone());
                let mut g = Gossiper::new(me, addr, 1, seed, cfg);
                g.add_seed(seed_node, seed_addr.clone());
                self.join_seeds.push((seed_node, seed_addr));
                Ok(g)
            }
        }
        .map_err(|e| Error::Config(format!("membership: {e}")))?;
        if let Some(state) = gossiper.state() {
            let map = state.map().map.clone();
            ctx.install_map(map);
            self.joined = true;
        }
        self.gossip = Some(gossiper);
        self.persist(ctx);
        Ok(())
    }

    /// A new cluster whose founders own `map`; their addresses from `addrs`, placeholders
    /// for the ones not listed.
    fn found_cluster<S: Store>(
        ctx: &Ctx<S>,
        map: &PartitionMap,
        addrs: &BTreeMap<NodeId, String>,
        seed: u64,
        cfg: GossipConfig,
    ) -> std::result::Result<Gossiper, dynakv_gossip::GossipError> {
        let params = ClusterParams {
            partitions: map.partition_count(),
            replicas: ctx.cfg.n,
        };
        let founders = map
            .members()
            .into_iter()
            .map(|m| (m, addrs.get(&m).cloned().unwrap_or_else(|| static_addr(m))))
            .collect();
        let state = ClusterState::new(params, &founders)?;
        Gossiper::with_state(ctx.id(), state, 1, seed, cfg, ctx.now)
    }

    /// Ask `seed` (at `addr`) for the cluster state; false when there is nothing to do (this
    /// node has joined, or `seed` is itself). The caller then re-syncs the links.
    pub(super) fn add_join_seed(&mut self, me: NodeId, seed: NodeId, addr: String) -> bool {
        if self.joined || seed == me {
            return false;
        }
        if let Some(g) = self.gossip.as_mut() {
            g.add_seed(seed, addr.clone());
        }
        self.join_seeds.push((seed, addr));
        true
    }

    /// Decide which peers this node keeps a link to: every member of the cluster state that is
    /// not removed (at its advertised address), plus the seeds while joining, plus peers
    /// removed a short while ago that are still up (`links_up`: the links the driver reports
    /// up; they hand their hints over before they stop; see `removed_peers`). Emits
    /// [`Effect::Link`] for a new peer or a changed address and [`Effect::Unlink`] for a peer
    /// that is gone. Called whenever the cluster state or the seeds change.
    pub(super) fn sync_links<S: Store>(&mut self, ctx: &mut Ctx<S>, links_up: &BTreeSet<NodeId>) {
        let me = ctx.id();
        let mut wanted: BTreeMap<NodeId, String> = BTreeMap::new();
        if let Some(state) = self.state() {
            for (id, m) in state.members() {
                if *id != me
                    && (m.status != Status::Removed
                        || (!self.is_removed(me)
                            && self.is_lingering(&ctx.cfg, ctx.now, links_up, *id)))
                {
                    wanted.insert(*id, m.addr.clone());
                }
            }
        }
        if !self.joined {
            for (id, addr) in &self.join_seeds {
                wanted.entry(*id).or_insert_with(|| addr.clone());
            }
        }
        let gone: Vec<NodeId> = self
            .links
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for peer in gone {
            ctx.effects.push(Effect::Unlink { peer });
        }
        for (peer, addr) in &wanted {
            if self.links.get(peer) != Some(addr) {
                ctx.effects.push(Effect::Link {
                    peer: *peer,
                    addr: addr.clone(),
                });
            }
        }
        self.links = wanted;
    }

    /// A removed node keeps gossiping for `removed_linger_ms` so its removal spreads, then
    /// asks its driver to stop it (once). It first hands over the `hints_held` it holds (they
    /// may be the only copy of a write), waiting up to [`REMOVED_HANDOFF_FACTOR`] lingers for
    /// owners that are unreachable. Called from the maintenance tick.
    pub(super) fn removed_linger<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        links_up: &BTreeSet<NodeId>,
        hints_held: u64,
    ) {
        // Links kept to removed peers end when the peer goes down or the window passes.
        if !self.removed_peers.is_empty() {
            let window = u64::from(ctx.cfg.removed_linger_ms) * 1000 * REMOVED_HANDOFF_FACTOR;
            let now = ctx.now;
            self.removed_peers.retain(|_, since| now < *since + window);
            // Emits effects only for links that change.
            self.sync_links(ctx, links_up);
        }
        if !self.is_removed(ctx.id()) || self.stop_sent {
            return;
        }
        let now = ctx.now;
        let since = *self.removed_since.get_or_insert_with(|| {
            tracing::warn!(linger_ms = ctx.cfg.removed_linger_ms,
                "this node was removed from the cluster; it keeps running a little so the removal spreads, then stops");
            now
        });
        let linger = u64::from(ctx.cfg.removed_linger_ms) * 1000;
        let held = hints_held;
        if now < since + linger || (held > 0 && now < since + linger * REMOVED_HANDOFF_FACTOR) {
            return;
        }
        if held > 0 {
            tracing::error!(hints = held, "stopping with hints this node could not hand over (their owners stayed unreachable); those writes survive only where other replicas took them");
        }
        self.stop_sent = true;
        ctx.effects.push(Effect::Stop {
            reason: "removed from the cluster".into(),
        });
    }

    /// Why `dynakv remove NODE` must not go ahead without `--force`: the node is up and
    /// reachable (this node has a link to it, or hears it through gossip), so removing it would
    /// throw away whatever only it holds, while `leave` hands that off first.
    pub(super) fn remove_refusal(
        &self,
        me: NodeId,
        peers: &PeerView<'_>,
        node: NodeId,
        force: bool,
    ) -> Option<String> {
        let member = self.state().and_then(|s| s.member(node).cloned())?;
        if force || member.status == Status::Removed {
            return None; // the gossiper reports a second removal itself
        }
        let reachable = node == me || !peers.is_down(node);
        reachable.then(|| {
            format!(
                "node {node} is up and reachable: removing it would drop the writes and hints only \
                 it holds. Make it leave instead (`dynakv leave --node {}`: it hands its data off, \
                 then stops), or pass --force if it must go now",
                member.addr
            )
        })
    }

    /// Stage an operator's change on this node and gossip it (the caller then routes
    /// `take_events`).
    pub(super) fn stage<S: Store>(&mut self, ctx: &mut Ctx<S>, change: Change) -> Result<()> {
        let g = self.gossip.as_mut().ok_or(Error::NotJoined)?;
        let outbox = g.stage(ctx.now, change)?;
        Self::send_gossip(ctx, outbox);
        Ok(())
    }

    fn send_gossip<S: Store>(ctx: &mut Ctx<S>, outbox: Vec<(NodeId, GossipMsg)>) {
        for (to, msg) in outbox {
            ctx.send(to, PeerMsg::Gossip(msg));
        }
    }

    /// Called from the maintenance tick: one gossip round when it is due. True when a round
    /// ran (the caller then routes `take_events`).
    pub(super) fn gossip_tick<S: Store>(&mut self, ctx: &mut Ctx<S>) -> bool {
        let now = ctx.now;
        let Some(g) = self.gossip.as_mut() else {
            return false;
        };
        if now < g.next_tick_us() {
            return false;
        }
        if g.state().is_none() {
            // Still joining: keep asking every seed (a refusal may be passing, e.g. a seed that
            // was itself restarting); the refusal reasons are logged for the operator.
            for (seed, addr) in &self.join_seeds {
                g.add_seed(*seed, addr.clone());
            }
        }
        let outbox = g.tick(now);
        Self::send_gossip(ctx, outbox);
        true
    }

    /// A gossip message from a peer. True when the gossiper took it (the caller then routes
    /// `take_events`).
    pub(super) fn on_gossip<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        msg: GossipMsg,
    ) -> bool {
        let now = ctx.now;
        let Some(g) = self.gossip.as_mut() else {
            return false;
        };
        match g.handle(now, from, msg) {
            Ok(outbox) => Self::send_gossip(ctx, outbox),
            Err(e) => tracing::warn!(%from, error = %e, "gossip message refused"),
        }
        true
    }

    /// Take what the gossiper decided, updating membership's own state as it goes (joined,
    /// removed peers), and return what the other mechanisms act on, in order. The flag says
    /// whether anything changed (the caller then persists and re-syncs the links).
    pub(super) fn take_events<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
    ) -> (Vec<MembershipEvent>, bool) {
        let Some(g) = self.gossip.as_mut() else {
            return (Vec::new(), false);
        };
        let events = g.take_events();
        let current = g.state().map(|s| s.map().map.clone());
        let mut out = Vec::new();
        let mut changed = false;
        for event in events {
            changed = true;
            match event {
                GossipEvent::Joined { .. } => {
                    let Some(current) = current.clone() else {
                        continue;
                    };
                    tracing::info!(node = %ctx.id(), "joined the cluster");
                    self.joined = true;
                    out.push(MembershipEvent::Joined { map: current });
                }
                GossipEvent::MapChanged { previous, .. } => {
                    let Some(current) = current.clone() else {
                        continue;
                    };
                    let plan = self.joined && previous != current;
                    out.push(MembershipEvent::MapChanged {
                        previous,
                        current,
                        plan,
                    });
                }
                GossipEvent::MemberChanged { node, status } => {
                    tracing::info!(%node, %status, "member changed");
                    if status == Status::Removed && node != ctx.id() {
                        self.removed_peers.insert(node, ctx.now);
                    }
                }
                GossipEvent::JoinRefused { seed, reason } => {
                    tracing::error!(%seed, %reason, "join refused");
                    ctx.stats.join_refusals += 1;
                }
            }
        }
        (out, changed)
    }

    /// Persist the cluster state (durable with the next drain).
    pub(super) fn persist<S: Store>(&self, ctx: &mut Ctx<S>) {
        let Some(state) = self.state() else {
            return;
        };
        // A write the disk refuses is retried before any data is stored (`meta.rs`).
        match codec::encode(state) {
            Ok(b) => {
                ctx.put_meta(Space::Meta, CLUSTER_KEY, &b);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the cluster state"),
        }
    }

    /// A joining node becomes valid once it received every partition it expects; a leaving
    /// node is removed once it handed everything off. The change to stage, if any.
    pub(super) fn progress_change<S: Store>(
        &self,
        ctx: &Ctx<S>,
        facts: TransferFacts,
    ) -> Option<Change> {
        let me = ctx.id();
        match self.status_of(me) {
            // Only once the map is planned with this node in it: before, no transfer to it is
            // known, and "nothing pending" would mean nothing.
            Some(Status::Joining)
                if facts.incoming_pending == 0
                    && self
                        .state()
                        .is_some_and(|s| s.map().planned_for.contains(&me)) =>
            {
                Some(Change::MarkValid(me))
            }
            Some(Status::Leaving)
                if facts.outgoing_pending == 0
                    && facts.hints_held == 0
                    && ctx.map.partitions_of(me).is_empty() =>
            {
                Some(Change::FinishLeave(me))
            }
            _ => None,
        }
    }

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

    /// Should this node keep a link to `peer`, removed from the cluster? While the driver
    /// reports the link up, or for two lingers after this node saw the removal (time for the
    /// removed node to connect, e.g. to a member that was paused), within the handoff window,
    /// so it can hand its hints over.
    pub(super) fn is_lingering(
        &self,
        cfg: &crate::config::CoreConfig,
        now: u64,
        links_up: &BTreeSet<NodeId>,
        peer: NodeId,
    ) -> bool {
        let linger = u64::from(cfg.removed_linger_ms) * 1000;
        self.removed_peers.get(&peer).is_some_and(|since| {
            now < since + linger * REMOVED_HANDOFF_FACTOR
                && (links_up.contains(&peer) || now < since + 2 * linger)
        })
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

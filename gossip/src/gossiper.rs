//! The gossiper: a sans-IO state machine that spreads the cluster state and feeds the failure
//! detector.
//!
//! The driver owns the clock, the sockets and the timer. It calls [`Gossiper::tick`] every
//! [`GossipConfig::interval_us`], [`Gossiper::handle`] with every message received, and
//! [`Gossiper::stage`] for an operator's membership change; each returns the messages to send as
//! `(destination, message)` pairs. Randomness comes from a ChaCha8 generator seeded by the
//! driver, so a simulation replays exactly.
//!
//! # Rounds
//!
//! Every round a node bumps its own heartbeat and starts a push-pull exchange
//! ([`GossipMsg::Syn`], see [`crate::message`]) with up to [`GossipConfig::fanout`] random peers
//! that its failure detector thinks are up, plus, with probability `down / (up + 1)`, one peer it
//! thinks is down, so that a recovered peer is noticed (Cassandra does the same).
//!
//! # Push on change
//!
//! A staged change is pushed at once ([`GossipMsg::Push`]) to [`GossipConfig::push_fanout`]
//! random live peers, and every node whose membership a merge changes relays it the same way
//! (a node relays a given change at most once, since a second copy changes nothing). Periodic
//! rounds then reach any node the relay missed.
//!
//! # Joining
//!
//! A new node is created with [`Gossiper::new`] (no state) and given seeds with
//! [`Gossiper::add_seed`]. Each tick it sends a [`GossipMsg::JoinRequest`] to one seed until it
//! is answered. The seed stages the join itself (it is the proposer), replies
//! [`GossipMsg::JoinAccept`] with the whole state, and pushes the change. A node that is
//! already a member at the same address (a restart, or a retried request) just gets the
//! state; a removed id or an id taken by another address gets [`GossipMsg::JoinRefused`].

mod join;

use std::collections::BTreeMap;

use dynakv_ring::{NodeId, PartitionMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::changes::Change;
use crate::error::GossipError;
use crate::message::{Delta, GossipMsg};
use crate::phi::{PhiConfig, PhiDetector};
use crate::state::{ClusterParams, ClusterState, Heartbeat, MapVersion, MergeOutcome, Status};

/// Messages to send: `(destination, message)`. Replies produced by [`Gossiper::handle`] go to
/// the `from` it was given, so the driver can answer on the connection the request came in on.
pub type Outbox = Vec<(NodeId, GossipMsg)>;

/// The gossiper's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GossipConfig {
    /// Peers contacted per round. Default 3.
    pub fanout: usize,
    /// Peers a change is pushed (and relayed) to; 0 turns pushing off. Default 3.
    pub push_fanout: usize,
    /// The round length the driver should call [`Gossiper::tick`] at, in µs. Default 1 s.
    pub interval_us: u64,
    /// The failure detector's parameters.
    pub phi: PhiConfig,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            fanout: 3,
            push_fanout: 3,
            interval_us: 1_000_000,
            phi: PhiConfig::default(),
        }
    }
}

/// What happened, for the node to act on; drain with [`Gossiper::take_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// This node received the cluster state from a seed and is now part of the cluster.
    Joined {
        /// The version of the map it received.
        map: MapVersion,
    },
    /// A seed refused this node's join.
    JoinRefused {
        /// The seed that refused (it is dropped from the seed list).
        seed: NodeId,
        /// The seed's reason.
        reason: String,
    },
    /// A member row changed (or appeared). A `Removed` status for this very node means it was
    /// removed from the cluster and should shut down.
    MemberChanged {
        /// The member.
        node: NodeId,
        /// Its new status.
        status: Status,
    },
    /// The partition map changed: schedule transfers with `previous.moves(&current)`.
    MapChanged {
        /// The map this node routed with before.
        previous: PartitionMap,
        /// The version of the new map (the map itself is in [`Gossiper::state`]).
        version: MapVersion,
    },
}

/// The membership state machine of one node (see the module docs).
#[derive(Debug)]
pub struct Gossiper {
    me: NodeId,
    addr: String,
    generation: u64,
    config: GossipConfig,
    /// `None` until the node has joined a cluster.
    state: Option<ClusterState>,
    rng: ChaCha8Rng,
    detector: PhiDetector,
    seeds: BTreeMap<NodeId, String>,
    events: Vec<GossipEvent>,
    next_tick_us: u64,
}

impl Gossiper {
    /// A node that is not in a cluster yet; give it seeds with [`Self::add_seed`] and tick it.
    ///
    /// `generation` should be larger than on any earlier run of this node id (a persisted
    /// incarnation counter, or the wall-clock start time in µs); if the state this node gets
    /// remembers a run with a generation as high, the gossiper goes one above it. `rng_seed`
    /// seeds peer choice.
    pub fn new(
        me: NodeId,
        addr: String,
        generation: u64,
        rng_seed: u64,
        config: GossipConfig,
    ) -> Self {
        Gossiper {
            me,
            addr,
            generation,
            config,
            state: None,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            detector: PhiDetector::new(config.phi),
            seeds: BTreeMap::new(),
            events: Vec::new(),
            next_tick_us: 0,
        }
    }

    /// A node with a known state: a founder of a new cluster ([`ClusterState::new`]) or a node
    /// restarting from the state it persisted. `me` must be in the state.
    pub fn with_state(
        me: NodeId,
        state: ClusterState,
        generation: u64,
        rng_seed: u64,
        config: GossipConfig,
        now_us: u64,
    ) -> Result<Self, GossipError> {
        state.validate()?;
        let addr = state
            .member(me)
            .ok_or(GossipError::UnknownNode(me))?
            .addr
            .clone();
        let mut g = Gossiper::new(me, addr, generation, rng_seed, config);
        g.install(state, now_us);
        Ok(g)
    }

    /// A one-node cluster founded by `me` (what `dynakv start` does without `--join`).
    pub fn bootstrap(
        me: NodeId,
        addr: String,
        params: ClusterParams,
        generation: u64,
        rng_seed: u64,
        config: GossipConfig,
        now_us: u64,
    ) -> Result<Self, GossipError> {
        let state = ClusterState::new(params, &[(me, addr)].into())?;
        Gossiper::with_state(me, state, generation, rng_seed, config, now_us)
    }

    /// Adds a seed (from `--join`): a node of the cluster to ask for the state. The driver
    /// learns the seed's id from the connection handshake. Seeds are also gossiped with when
    /// this node knows no live peer.
    pub fn add_seed(&mut self, seed: NodeId, addr: String) {
        if seed != self.me {
            self.seeds.insert(seed, addr);
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The cluster state, once joined. Persist it on every [`GossipEvent`] to restart from it.
    pub fn state(&self) -> Option<&ClusterState> {
        self.state.as_ref()
    }

    /// The heartbeat generation this node runs with (see [`Self::new`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The gossiper's parameters.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// When the driver should call [`Self::tick`] next, in µs (0 before the first tick).
    pub fn next_tick_us(&self) -> u64 {
        self.next_tick_us
    }

    /// The address of a member or a seed, for the driver to connect to.
    pub fn addr_of(&self, node: NodeId) -> Option<&str> {
        if node == self.me {
            return Some(&self.addr);
        }
        self.state
            .as_ref()
            .and_then(|s| s.member(node))
            .map(|m| m.addr.as_str())
            .or_else(|| self.seeds.get(&node).map(String::as_str))
    }

    /// The failure detector's suspicion of `peer` at `now_us` (this node's opinion only).
    pub fn phi(&self, peer: NodeId, now_us: u64) -> f64 {
        self.detector.phi(peer, now_us)
    }

    /// Whether `peer` is up at `now_us` in this node's opinion (this node always is). Feed it to
    /// sloppy quorum; it never changes the membership.
    pub fn is_up(&self, peer: NodeId, now_us: u64) -> bool {
        peer == self.me || self.detector.is_up(peer, now_us)
    }

    /// The non-removed members that are up at `now_us`, this node included.
    pub fn up_set(&self, now_us: u64) -> std::collections::BTreeSet<NodeId> {
        let Some(state) = &self.state else {
            return [self.me].into();
        };
        state
            .members()
            .iter()
            .filter(|(&id, m)| m.status != Status::Removed && self.is_up(id, now_us))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Drains the events since the last call.
    pub fn take_events(&mut self) -> Vec<GossipEvent> {
        std::mem::take(&mut self.events)
    }

    /// One gossip round: bump this node's heartbeat and start exchanges (see the module docs);
    /// before joining, send a join request to a seed. Call it every
    /// [`GossipConfig::interval_us`].
    pub fn tick(&mut self, now_us: u64) -> Outbox {
        self.next_tick_us = now_us.saturating_add(self.config.interval_us);
        let Some(state) = &mut self.state else {
            let seeds: Vec<NodeId> = self.seeds.keys().copied().collect();
            let request = GossipMsg::JoinRequest {
                node: self.me,
                addr: self.addr.clone(),
            };
            return seeds
                .choose(&mut self.rng)
                .map(|&s| (s, request))
                .into_iter()
                .collect();
        };
        let counter = match state.heartbeats().get(&self.me) {
            Some(hb) if hb.generation == self.generation => hb.counter + 1,
            _ => 1,
        };
        let hb = Heartbeat {
            generation: self.generation,
            counter,
        };
        state.observe_heartbeat(self.me, hb);

        let (up, down) = self.peers(now_us);
        let mut targets: Vec<NodeId> = up
            .choose_multiple(&mut self.rng, self.config.fanout)
            .copied()
            .collect();
        if !down.is_empty() {
            let p = down.len() as f64 / (up.len() + 1) as f64;
            if self.rng.gen_bool(p.min(1.0)) {
                targets.extend(down.choose(&mut self.rng));
            }
        }
        if up.is_empty() && down.is_empty() {
            // Alone in the member table (e.g. restarted from an old state): try a seed.
            let seeds: Vec<NodeId> = self.seeds.keys().copied().collect();
            targets.extend(seeds.choose(&mut self.rng));
        }
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let digest = state.digest();
        targets
            .into_iter()
            .map(|t| (t, GossipMsg::Syn(digest.clone())))
            .collect()
    }

    /// Handles a message `from` a peer at `now_us` and returns the replies and relays.
    ///
    /// Errors (the message is dropped, the state unchanged; log it): a message over the limits,
    /// or for other cluster parameters. Messages that need a state before this node has one
    /// are ignored.
    pub fn handle(
        &mut self,
        now_us: u64,
        from: NodeId,
        msg: GossipMsg,
    ) -> Result<Outbox, GossipError> {
        msg.validate(self.state.as_ref().map(ClusterState::params))?;
        match msg {
            GossipMsg::Syn(digest) => Ok(self
                .state
                .as_ref()
                .map(|state| {
                    let delta = state.delta_for(&digest);
                    let digest = state.may_lack(&digest).then(|| state.digest());
                    (from, GossipMsg::Ack { delta, digest })
                })
                .into_iter()
                .collect()),
            GossipMsg::Ack { delta, digest } => {
                let mut out = self.absorb(now_us, from, &delta)?;
                if let (Some(digest), Some(state)) = (digest, &self.state) {
                    let back = state.delta_for(&digest);
                    if !back.is_empty() {
                        out.push((from, GossipMsg::Ack2(back)));
                    }
                }
                Ok(out)
            }
            GossipMsg::Ack2(delta) | GossipMsg::Push(delta) => self.absorb(now_us, from, &delta),
            GossipMsg::JoinRequest { node, addr } => self.on_join_request(now_us, from, node, addr),
            GossipMsg::JoinAccept(state) => self.on_join_accept(now_us, from, *state),
            GossipMsg::JoinRefused { reason } => {
                self.seeds.remove(&from);
                self.events
                    .push(GossipEvent::JoinRefused { seed: from, reason });
                Ok(Vec::new())
            }
        }
    }

    /// Stages a membership change on this node (the proposer) and pushes the new state.
    ///
    /// Call it for an operator command received by this node, and for `MarkValid` /
    /// `FinishLeave` once transfers are done. Errors: see [`ClusterState::apply`].
    pub fn stage(&mut self, now_us: u64, change: Change) -> Result<Outbox, GossipError> {
        let state = self.state.as_mut().ok_or(GossipError::NotJoined)?;
        let next = state.apply(self.me, &change)?;
        let old = std::mem::replace(state, next);
        let changed: Vec<NodeId> = self
            .state
            .iter()
            .flat_map(|s| s.members())
            .filter(|(id, m)| old.member(**id) != Some(*m))
            .map(|(&id, _)| id)
            .collect();
        let outcome = MergeOutcome {
            members: changed,
            previous_map: self
                .state
                .as_ref()
                .filter(|s| s.map() != old.map())
                .map(|_| old.map().clone()),
            heartbeats: Vec::new(),
        };
        self.after_merge(now_us, outcome);
        Ok(self.push_change(now_us, None))
    }

    /// Pushes this node's membership (rows and map) to [`GossipConfig::push_fanout`] random
    /// live peers, other than `except`. [`Self::stage`] and merges that change something call
    /// it; call it yourself to spread a state restored from disk.
    pub fn push_change(&mut self, now_us: u64, except: Option<NodeId>) -> Outbox {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let delta = state.membership_delta();
        let (mut up, _) = self.peers(now_us);
        up.retain(|&p| Some(p) != except);
        up.choose_multiple(&mut self.rng, self.config.push_fanout)
            .map(|&p| (p, GossipMsg::Push(delta.clone())))
            .collect()
    }

    /// The non-removed peers in member order, split by the detector's opinion at `now_us`.
    fn peers(&self, now_us: u64) -> (Vec<NodeId>, Vec<NodeId>) {
        let Some(state) = &self.state else {
            return (Vec::new(), Vec::new());
        };
        state
            .members()
            .iter()
            .filter(|(&id, m)| id != self.me && m.status != Status::Removed)
            .map(|(&id, _)| id)
            .partition(|&id| self.detector.is_up(id, now_us))
    }

    /// Merges a delta from `from`, reconciles, emits events, relays a membership change.
    fn absorb(&mut self, now_us: u64, from: NodeId, delta: &Delta) -> Result<Outbox, GossipError> {
        let Some(state) = &mut self.state else {
            return Ok(Vec::new());
        };
        let mut outcome = state.merge_delta(delta)?;
        let relay = outcome.membership_changed();
        if !state.is_reconciled() {
            let before = state.map().clone();
            if state.reconcile()? && outcome.previous_map.is_none() {
                outcome.previous_map = Some(before);
            }
        }
        self.after_merge(now_us, outcome);
        Ok(if relay {
            self.push_change(now_us, Some(from))
        } else {
            Vec::new()
        })
    }

    /// Feeds the detector and records events for what a merge (or a staged change) changed.
    fn after_merge(&mut self, now_us: u64, outcome: MergeOutcome) {
        let Some(state) = &self.state else {
            return;
        };
        for id in outcome.members {
            let Some(status) = state.member(id).map(|m| m.status) else {
                continue;
            };
            if status == Status::Removed {
                self.detector.forget(id);
            } else if id != self.me {
                self.detector.watch(id, now_us);
            }
            self.events
                .push(GossipEvent::MemberChanged { node: id, status });
        }
        for (id, hb) in outcome.heartbeats {
            let live = state
                .member(id)
                .is_some_and(|m| m.status != Status::Removed);
            if id != self.me && live {
                self.detector.heartbeat(id, hb, now_us);
            }
        }
        if let Some(previous) = outcome.previous_map {
            self.events.push(GossipEvent::MapChanged {
                previous: previous.map,
                version: state.map().version,
            });
        }
    }

    /// Takes a whole state (founding, restart or join): watches its members.
    fn install(&mut self, state: ClusterState, now_us: u64) {
        // The state may remember an earlier run of this node with a generation at least as high
        // (the driver forgot to raise it): go above it, or our heartbeats would never win.
        if let Some(old) = state.heartbeats().get(&self.me) {
            if old.generation >= self.generation {
                self.generation = old.generation.saturating_add(1);
            }
        }
        for (&id, m) in state.members() {
            if id != self.me && m.status != Status::Removed {
                self.detector.watch(id, now_us);
            }
        }
        for (&id, &hb) in state.heartbeats() {
            if id != self.me
                && state
                    .member(id)
                    .is_some_and(|m| m.status != Status::Removed)
            {
                self.detector.heartbeat(id, hb, now_us);
            }
        }
        self.state = Some(state);
    }
}

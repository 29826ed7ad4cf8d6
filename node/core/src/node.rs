//! The node state machine: identity, input dispatch, the replica role, timers and effects.
//!
//! The coordinator role (get/put/delete with quorums) lives in `coordinator.rs`, as another
//! `impl` block of the same type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dynakv_ring::{NodeId, PartitionId, PartitionMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::aae::AntiEntropy;
use super::config::{CoreConfig, PlantedBug};
use super::coordinator::Coordinator;
use super::hints::HintedHandoff;
pub(super) use super::liveness::Liveness;
use super::membership::Membership;
use super::ops::PendingOp;
use super::reaper::Reaper;
use super::timers::{Timer, TimerTable};
use super::transfer::Transfers;
use super::types::{
    ClientReply, ClientRequest, CoordMsg, CoreStats, Effect, HandoffMsg, Input, Object, OpId,
    PeerMsg, ProbeMsg, RequestId,
};
use crate::codec;
use crate::dvv::Actor;
use crate::error::{Error, Result};
use crate::store::{Space, Store};

/// Key of the identity record in [`Space::Meta`].
const IDENTITY_KEY: &[u8] = b"identity";

/// What a data directory remembers about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    node: NodeId,
    incarnation: u64,
}

/// Most self-sent messages delivered per input (a bound on any self-message chain).
const MAX_LOOPBACK_PER_INPUT: usize = 1024;

/// A change to a partition's replicated data, routed by `NodeCore::on_data_change` to every
/// mechanism that keeps state derived from the data.
#[derive(Debug, Clone, Copy)]
pub(super) enum DataChange<'a> {
    /// `key` now holds `object`, encoded as `record`.
    Written {
        partition: PartitionId,
        key: &'a [u8],
        record: &'a [u8],
        object: &'a Object,
    },
    /// `key` was removed (a reaped tombstone).
    Removed {
        partition: PartitionId,
        key: &'a [u8],
    },
    /// The whole partition was dropped (handed off to its new replicas).
    PartitionDropped { partition: PartitionId },
}

/// Where the answer to an operation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client connected to this node.
    Client(RequestId),
    /// Another node that forwarded the request to us.
    Peer { node: NodeId, op: OpId },
}

/// One dynakv node as a deterministic state machine (see DESIGN.md: the sans-IO rule).
///
/// Drive it with [`NodeCore::handle`] for every input, call [`NodeCore::drain_effects`] after a
/// batch of inputs to get what to send (it makes the store durable first), and call
/// [`NodeCore::handle`] with [`Input::Timeout`] once the time from [`NodeCore::poll_timeout`]
/// has come. Time is handed in as microseconds on the node's own monotonic clock.
#[derive(Debug)]
pub struct NodeCore<S: Store> {
    // Shared context: what every mechanism reads or writes.
    pub(super) cfg: CoreConfig,
    pub(super) actor: Actor,
    pub(super) map: PartitionMap,
    /// Members of the current map (cached: asked for on hot paths).
    pub(super) members: BTreeSet<NodeId>,
    /// Partitions this node replicates under the current map (cached).
    pub(super) mine: Vec<PartitionId>,
    pub(super) store: S,
    pub(super) rng: ChaCha8Rng,
    pub(super) now: u64,
    /// The one timer table: the maintenance tick and the operations' timers.
    pub(super) timers: TimerTable,
    pub(super) effects: Vec<Effect>,
    /// Messages this node sent to itself, delivered after the current input.
    pub(super) loopback: VecDeque<PeerMsg>,
    /// Writes since the last sync: `drain_effects` syncs before any effect leaves.
    pub(super) dirty: bool,
    /// Set when a store sync failed: the node then acknowledges nothing until it restarts
    /// (fail-stop; see [`NodeCore::storage_failure`]).
    pub(super) fenced: Option<String>,
    pub(super) stats: CoreStats,
    // The mechanisms, each with its own state (see each type's doc for its inputs).
    pub(super) liveness: Liveness,
    pub(super) coord: Coordinator,
    pub(super) handoff: HintedHandoff,
    pub(super) aae: AntiEntropy,
    pub(super) reaper: Reaper,
    pub(super) membership: Membership,
    pub(super) transfers: Transfers,
}

impl<S: Store> NodeCore<S> {
    /// Start a node on `store`. Reads the node's identity from the store; a store without one
    /// (new or wiped) gets a fresh incarnation drawn from `seed`, persisted before anything else,
    /// so dots minted before a wipe are never minted again. `seed` must differ between starts
    /// (the real driver draws it from the OS, the simulator from its seeded RNG).
    pub fn open(cfg: CoreConfig, store: S, map: PartitionMap, seed: u64, now: u64) -> Result<Self> {
        Self::open_with(
            cfg,
            store,
            super::membership::Bootstrap::Founder { map },
            seed,
            now,
        )
    }

    /// Like [`NodeCore::open`], choosing how the node enters the cluster: as a founder with a
    /// known map, or by joining through a seed. A store that already holds a cluster state
    /// restarts with that state either way.
    pub fn open_with(
        cfg: CoreConfig,
        mut store: S,
        boot: super::membership::Bootstrap,
        seed: u64,
        now: u64,
    ) -> Result<Self> {
        let map = match &boot {
            super::membership::Bootstrap::Founder { map }
            | super::membership::Bootstrap::Founders { map, .. } => map.clone(),
            super::membership::Bootstrap::Join { .. } => {
                // A placeholder until the seed's state arrives; nothing is served meanwhile.
                PartitionMap::initial(dynakv_ring::MIN_PARTITIONS, &BTreeSet::from([cfg.node]))?
            }
        };
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // A new incarnation on every start, drawn at random rather than derived from what the
        // disk says: a disk that lost a tail of synced writes, or was restored from an old copy,
        // may not remember the last one, and a counter minted under it could be minted again.
        let incarnation = if cfg.has_bug(PlantedBug::ReuseDotsAfterWipe) {
            0
        } else {
            rng.gen()
        };
        let incarnation = match store.get(Space::Meta, IDENTITY_KEY)? {
            Some(bytes) => {
                let id: Identity = codec::decode(&bytes)
                    .map_err(|e| Error::DataDir(format!("unreadable node identity: {e}")))?;
                if id.node != cfg.node {
                    return Err(Error::DataDir(format!(
                        "this data belongs to node {}, not node {}",
                        id.node, cfg.node
                    )));
                }
                if cfg.has_bug(PlantedBug::KeepIncarnation) {
                    // Planted bug: trust the disk's last incarnation (dot reuse after power loss).
                    id.incarnation
                } else {
                    incarnation
                }
            }
            None => incarnation,
        };
        // Recorded (for the node-id check and for operators), and durable before any dot.
        let id = Identity {
            node: cfg.node,
            incarnation,
        };
        store.put(Space::Meta, IDENTITY_KEY, &codec::encode(&id)?)?;
        store.sync()?;
        let next_op = rng.gen::<u64>() >> 1;
        let tick = u64::from(cfg.tick_ms) * 1000;
        let mut timers = TimerTable::default();
        timers.set(now + tick, Timer::Maintenance);
        let mut core = Self {
            actor: Actor {
                node: cfg.node,
                incarnation,
            },
            cfg,
            map,
            members: BTreeSet::new(),
            mine: Vec::new(),
            store,
            rng,
            now,
            timers,
            effects: Vec::new(),
            loopback: VecDeque::new(),
            dirty: false,
            fenced: None,
            stats: CoreStats::default(),
            liveness: Liveness {
                down: BTreeMap::new(),
                next_probe: now + tick,
                links_up: BTreeSet::new(),
            },
            coord: Coordinator::new(next_op, now),
            handoff: HintedHandoff::default(),
            aae: AntiEntropy {
                next_exchange: now + tick,
                ..AntiEntropy::default()
            },
            reaper: Reaper::default(),
            membership: Membership::default(),
            transfers: Transfers::default(),
        };
        let initial = core.map.clone();
        core.install_map(initial);
        core.recount_hints()?;
        core.load_transfers()?;
        core.init_membership(boot)?;
        if core.membership.joined {
            let map = core.map.clone();
            core.prune_moot_transfers(&map);
        }
        core.sync_links();
        if core.dirty {
            core.store.sync()?;
            core.dirty = false;
        }
        Ok(core)
    }

    /// Retire the current actor identity: draw a new random incarnation and persist it. Called
    /// when this node drops data it may have minted dots for (delivered hints, reaped
    /// tombstones, handed-off partitions): with the data gone it could no longer tell which
    /// counters it used, so it must never mint under the old identity again. Random, not the
    /// next number, so it cannot meet an incarnation drawn at some other start.
    pub(super) fn retire_actor(&mut self) -> bool {
        let incarnation: u64 = self.rng.gen();
        let id = Identity {
            node: self.cfg.node,
            incarnation,
        };
        match codec::encode(&id)
            .map_err(Error::from)
            .and_then(|b| self.store.put(Space::Meta, IDENTITY_KEY, &b))
        {
            Ok(()) => {
                self.actor.incarnation = incarnation;
                self.dirty = true;
                self.stats.actor_retirements += 1;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot persist a new incarnation; keeping the data");
                false
            }
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.node
    }

    /// The actor identity that new dots minted here carry.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The partition map the node routes by.
    pub fn partition_map(&self) -> &PartitionMap {
        &self.map
    }

    /// Replace the partition map (when the cluster changes).
    pub fn set_partition_map(&mut self, map: PartitionMap) {
        self.install_map(map);
    }

    /// Route by `map` from now on, and refresh what is derived from it.
    pub(super) fn install_map(&mut self, map: PartitionMap) {
        self.members = map.members();
        self.mine = map.replicated_partitions(self.cfg.node, usize::from(self.cfg.n));
        self.map = map;
    }

    /// The settings the core runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Counters for status pages and tests.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Operations still waiting for replies or their deadline.
    pub fn pending_ops(&self) -> usize {
        self.coord.ops.len()
    }

    /// The store (read-only), for status and checkers.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, writable: only for injecting disk faults (the simulator's failing disk).
    /// Writing data through it would bypass the core's bookkeeping.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Give the store back (when the driver shuts the node down or the simulator crashes it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Feed one input at time `now` (microseconds). Effects queue up until
    /// [`NodeCore::drain_effects`].
    pub fn handle(&mut self, now: u64, input: Input) {
        self.now = self.now.max(now);
        if let Some(reason) = &self.fenced {
            // Fail-stop: answer clients with the reason, take part in nothing else. Peers see
            // silence and route around this node (sloppy quorum, hints).
            if let Input::Client { id, .. } = input {
                let e = super::types::RequestError::StorageFailed {
                    node: self.cfg.node,
                    reason: reason.clone(),
                };
                self.stats.requests_failed += 1;
                self.effects.push(Effect::Reply {
                    id,
                    reply: ClientReply::Error(e),
                });
            }
            return;
        }
        match input {
            Input::Peer { from, msg } => self.handle_peer(from, msg),
            Input::Client { id, request } => {
                self.handle_client(super::node::Origin::Client(id), request)
            }
            Input::Timeout => self.handle_timeouts(),
            Input::PeerStatus { peer, up } => {
                self.liveness.link_reported(peer, up);
                if up {
                    self.mark_up(peer)
                } else {
                    self.mark_down(peer)
                }
            }
        }
        self.deliver_loopback();
    }

    /// Deliver the messages this node sent to itself, in order, after the input that caused
    /// them: no network, no loss, the same in production and in the simulator. Bounded per
    /// input; what is left waits for the next call (`poll_timeout` asks for one at once).
    fn deliver_loopback(&mut self) {
        let me = self.id();
        for _ in 0..MAX_LOOPBACK_PER_INPUT {
            let Some(msg) = self.loopback.pop_front() else {
                return;
            };
            self.handle_peer(me, msg);
        }
    }

    /// The next time at which the core wants [`Input::Timeout`], if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.fenced.is_some() {
            return None;
        }
        if !self.loopback.is_empty() {
            return Some(self.now);
        }
        self.timers.next()
    }

    /// Take every queued effect. Syncs the store first when anything was written, so no ack,
    /// reply or replica message can leave before the data it reports is durable.
    ///
    /// When the sync fails the node *fences* itself for good (until restarted): the queued
    /// effects are dropped (peers and clients time out), operations in flight are abandoned,
    /// and from then on clients get [`super::types::RequestError::StorageFailed`] and peers get
    /// nothing. A failed fsync may have dropped dirty pages from the kernel's cache, so a later
    /// sync that "succeeds" would not prove the earlier writes durable (PostgreSQL's fsyncgate).
    /// A restart re-reads the store and takes a new actor identity.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        if self.dirty && self.fenced.is_none() {
            let synced = if self.cfg.has_bug(PlantedBug::AckBeforeStore) {
                // Planted bug: acknowledge without making the writes durable.
                Ok(())
            } else {
                self.store.sync()
            };
            match synced {
                Ok(()) => self.dirty = false,
                Err(e) if self.cfg.has_bug(PlantedBug::RetryFailedSync) => {
                    // Planted bug: drop this batch but keep serving, trusting the next sync.
                    self.stats.sync_failures += 1;
                    tracing::error!(error = %e, "store sync failed");
                    self.effects.clear();
                    return Vec::new();
                }
                Err(e) => self.fence(e.to_string()),
            }
        }
        std::mem::take(&mut self.effects)
    }

    /// Stop acknowledging anything after a failed sync (see [`NodeCore::drain_effects`]).
    fn fence(&mut self, reason: String) {
        tracing::error!(
            reason = %reason,
            "store sync failed: this node stops serving until it is restarted; \
             check the disk, then restart the node"
        );
        self.stats.sync_failures += 1;
        self.fenced = Some(reason);
        self.effects.clear();
        self.loopback.clear();
        self.coord.ops.clear();
    }

    /// Why the node stopped serving, if a store sync failed (it then answers every client
    /// request with [`super::types::RequestError::StorageFailed`] until restarted).
    pub fn storage_failure(&self) -> Option<&str> {
        self.fenced.as_deref()
    }

    pub(super) fn next_op_id(&mut self) -> OpId {
        self.coord.next_op_id()
    }

    /// Send `msg` to `to`; a message to this node itself is delivered by the core
    /// (`deliver_loopback`), never by the driver.
    pub(super) fn send(&mut self, to: NodeId, msg: impl Into<PeerMsg>) {
        if to == self.id() {
            self.loopback.push_back(msg.into());
            return;
        }
        self.effects.push(Effect::Send {
            to,
            msg: msg.into(),
        });
    }

    pub(super) fn respond(&mut self, origin: Origin, reply: ClientReply) {
        if matches!(reply, ClientReply::Error(_)) {
            self.stats.requests_failed += 1;
        } else {
            self.stats.requests_ok += 1;
        }
        match origin {
            Origin::Client(id) => self.effects.push(Effect::Reply { id, reply }),
            Origin::Peer { node, op } => self.send(node, CoordMsg::ForwardReply { op, reply }),
        }
    }

    /// Route a peer message to the mechanism that owns it.
    fn handle_peer(&mut self, from: NodeId, msg: PeerMsg) {
        self.mark_up(from);
        match msg {
            PeerMsg::Replica(m) => self.on_replica_msg(from, m),
            PeerMsg::Coord(m) => self.on_coord_msg(from, m),
            PeerMsg::Probe(ProbeMsg::Ping { nonce }) => self.send(from, ProbeMsg::Pong { nonce }),
            PeerMsg::Probe(ProbeMsg::Pong { .. }) => {}
            PeerMsg::Handoff(HandoffMsg::Batch { batch, items }) => {
                self.on_hint_batch(from, batch, items)
            }
            PeerMsg::Handoff(HandoffMsg::BatchAck { batch, result }) => {
                self.on_hint_batch_ack(from, batch, result)
            }
            PeerMsg::Aae(m) => {
                if let Err(e) = self.on_aae(from, m) {
                    tracing::warn!(%from, error = %e, "anti-entropy step failed");
                }
            }
            PeerMsg::Reap(m) => self.on_reap_msg(from, m),
            PeerMsg::Gossip(m) => self.on_gossip(from, m),
            PeerMsg::Transfer(m) => self.on_transfer_msg(from, m),
        }
    }

    /// Forwarded writes: coordinate them once (duplicates are dropped), pass replies back.
    fn on_coord_msg(&mut self, from: NodeId, msg: CoordMsg) {
        match msg {
            CoordMsg::Forward { op, request } => {
                if !self.coord.first_forward(from, op) {
                    return; // a duplicate: the first copy is (or was) being coordinated
                }
                self.handle_client(Origin::Peer { node: from, op }, request);
            }
            CoordMsg::ForwardReply { op, reply } => self.on_forward_reply(op, reply),
        }
    }

    fn handle_client(&mut self, origin: Origin, request: ClientRequest) {
        if self.coord.ops.len() >= self.cfg.max_pending_ops {
            let e = super::types::RequestError::Overloaded {
                pending: self.coord.ops.len() as u64,
            };
            return self.respond(origin, ClientReply::Error(e));
        }
        if self.is_removed() {
            let e = super::types::RequestError::Removed { node: self.id() };
            return self.respond(origin, ClientReply::Error(e));
        }
        if !self.membership.joined {
            let e = super::types::RequestError::NotJoined { node: self.id() };
            return self.respond(origin, ClientReply::Error(e));
        }
        match request {
            ClientRequest::Get { key, opts } => self.start_get(origin, key, opts),
            ClientRequest::Put {
                key,
                value,
                context,
                opts,
            } => self.start_write(origin, key, super::types::Value::Data(value), context, opts),
            ClientRequest::Delete { key, context, opts } => {
                self.start_write(origin, key, super::types::Value::Tombstone, context, opts)
            }
            ClientRequest::PartitionMap => {
                let map = self.map.clone();
                self.respond(origin, ClientReply::PartitionMap(map));
            }
            ClientRequest::Admin(admin) => self.handle_admin(origin, admin),
        }
    }

    fn handle_timeouts(&mut self) {
        if self.timers.take_maintenance(self.now) {
            let next = self.now + u64::from(self.cfg.tick_ms) * 1000;
            self.timers.set(next, Timer::Maintenance);
            self.maintenance();
        }
        while let Some(op) = self.timers.pop_due_op(self.now) {
            self.on_deadline(op);
        }
    }

    /// Periodic work: hinted handoff, anti-entropy, probes of down peers, tombstone reaping.
    fn maintenance(&mut self) {
        self.gossip_tick();
        self.transfer_tick();
        self.stray_tick();
        self.handoff_tick();
        if self.now >= self.aae.next_exchange {
            self.aae.next_exchange = self.now + u64::from(self.cfg.aae_interval_ms) * 1000;
            self.aae_tick();
        }
        if self.now >= self.liveness.next_probe {
            self.liveness.next_probe = self.now + 1_000_000;
            let down: Vec<NodeId> = self.liveness.down.keys().copied().collect();
            for peer in down {
                let nonce = self.next_op_id();
                self.send(peer, ProbeMsg::Ping { nonce });
            }
        }
        self.reaper_tick();
        self.removed_linger();
    }

    /// Take one unit of the read-repair budget (a bounded number per second).
    pub(super) fn repair_budget(&mut self) -> bool {
        let ok = self
            .coord
            .take_repair_budget(self.now, self.cfg.read_repair_per_sec);
        if !ok {
            self.stats.read_repairs_skipped += 1;
        }
        ok
    }

    /// Register an operation with its deadline.
    pub(super) fn add_op(&mut self, op: OpId, deadline: u64, pending: PendingOp) {
        self.timers.set(deadline, Timer::Op(op));
        self.coord.ops.insert(op, pending);
    }

    /// Forget an operation and its deadline.
    pub(super) fn remove_op(&mut self, op: OpId) -> Option<PendingOp> {
        let pending = self.coord.ops.remove(&op)?;
        for t in pending.timers() {
            self.timers.cancel(t, Timer::Op(op));
        }
        Some(pending)
    }
}

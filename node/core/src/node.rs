//! `NodeCore`, the router: it owns the shared context ([`Ctx`]) and one state machine per
//! mechanism, and does nothing but route. Every input goes to the mechanism that owns it, with
//! the context and a read-only view of what that mechanism may know of the others
//! (`PeerView`, `CoordEnv`); what one mechanism's step means for another comes
//! back as a value (a `DataEvent`, a `MembershipEvent`, a finished transfer) that the router
//! hands on. Also here: identity/incarnation at start, the loopback of self-sent messages, the
//! maintenance tick's order, and `drain_effects` (sync, then effects; fail-stop on a failed
//! sync).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dynakv_ring::{NodeId, PartitionMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::aae::AntiEntropy;
use super::config::{CoreConfig, PlantedBug};
use super::coordinator::Coordinator;
use super::ctx::{Ctx, Identity, IDENTITY_KEY};
use super::hints::HintedHandoff;
pub(super) use super::liveness::{Liveness, PeerView};
use super::membership::Membership;
use super::reaper::Reaper;
use super::scrub::Scrub;
use super::timers::{Timer, TimerTable};
use super::transfer::Transfers;
use super::types::{
    ClientReply, ClientRequest, CoordMsg, CoreStats, Effect, HandoffMsg, Input, OpId, PeerMsg,
    ProbeMsg, RequestId,
};
use super::write::WriteBody;
use crate::codec;
use crate::dvv::Actor;
use crate::error::{Error, Result};
use crate::store::{Space, Store};

/// Most self-sent messages delivered per input (a bound on any self-message chain).
const MAX_LOOPBACK_PER_INPUT: usize = 1024;

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
    /// The shared context: configuration, identity, map, store, time, outputs.
    pub(super) ctx: Ctx<S>,
    // The mechanisms, each with its own state (see each type's doc for its inputs).
    pub(super) liveness: Liveness,
    pub(super) coord: Coordinator,
    pub(super) handoff: HintedHandoff,
    pub(super) aae: AntiEntropy,
    pub(super) reaper: Reaper,
    pub(super) scrub: Scrub,
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
        let clocks = super::clocks::Clocks::load(&store)?;
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
            ctx: Ctx {
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
                events: Vec::new(),
                dirty: false,
                fenced: None,
                stats: CoreStats::default(),
                next_id: next_op,
                corrupt: std::cell::RefCell::new(Vec::new()),
                mint_floor: BTreeMap::new(),
                clocks,
                meta_debt: Default::default(),
            },
            liveness: Liveness {
                down: BTreeMap::new(),
                next_probe: now + tick,
                links_up: BTreeSet::new(),
            },
            coord: Coordinator::new(now),
            handoff: HintedHandoff::default(),
            aae: AntiEntropy {
                next_exchange: now + tick,
                ..AntiEntropy::default()
            },
            reaper: Reaper::default(),
            scrub: Scrub::default(),
            membership: Membership::default(),
            transfers: Transfers::default(),
        };
        let initial = core.ctx.map.clone();
        core.ctx.install_map(initial);
        core.handoff.recount(&core.ctx)?;
        core.transfers.load(&core.ctx)?;
        core.membership.init(&mut core.ctx, boot)?;
        if core.membership.joined {
            let map = core.ctx.map.clone();
            core.transfers.prune_moot_transfers(&mut core.ctx, &map);
        }
        core.sync_links();
        core.route_events();
        if core.ctx.dirty {
            core.ctx.store.sync()?;
            core.ctx.dirty = false;
        }
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.ctx.cfg.node
    }

    /// The actor identity that new dots minted here carry.
    pub fn actor(&self) -> Actor {
        self.ctx.actor
    }

    /// The partition map the node routes by.
    pub fn partition_map(&self) -> &PartitionMap {
        &self.ctx.map
    }

    /// Replace the partition map (when the cluster changes).
    pub fn set_partition_map(&mut self, map: PartitionMap) {
        self.ctx.install_map(map);
    }

    /// The settings the core runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.ctx.cfg
    }

    /// Counters for status pages and tests.
    pub fn stats(&self) -> CoreStats {
        self.ctx.stats
    }

    /// Operations still waiting for replies or their deadline, and forwarded writes waiting
    /// for their forwarder's grant (both count against `max_pending_ops`).
    pub fn pending_ops(&self) -> usize {
        self.coord.ops.len() + self.coord.awaiting.len()
    }

    /// The store (read-only), for status and checkers.
    pub fn store(&self) -> &S {
        &self.ctx.store
    }

    /// The store, writable: only for injecting disk faults (the simulator's failing disk).
    /// Writing data through it would bypass the core's bookkeeping.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.ctx.store
    }

    /// Give the store back (when the driver shuts the node down or the simulator crashes it).
    pub fn into_store(self) -> S {
        self.ctx.store
    }

    /// Feed one input at time `now` (microseconds). Effects queue up until
    /// [`NodeCore::drain_effects`].
    pub fn handle(&mut self, now: u64, input: Input) {
        self.ctx.now = self.ctx.now.max(now);
        if let Some(reason) = &self.ctx.fenced {
            // Fail-stop: answer clients with the reason, take part in nothing else. Peers see
            // silence and route around this node (sloppy quorum, hints).
            if let Input::Client { id, .. } = input {
                let e = super::types::RequestError::StorageFailed {
                    node: self.ctx.cfg.node,
                    reason: reason.clone(),
                };
                self.ctx.stats.requests_failed += 1;
                self.ctx.effects.push(Effect::Reply {
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
        self.route_events();
        self.deliver_loopback();
    }

    /// Deliver the messages this node sent to itself, in order, after the input that caused
    /// them: no network, no loss, the same in production and in the simulator. Bounded per
    /// input; what is left waits for the next call (`poll_timeout` asks for one at once).
    fn deliver_loopback(&mut self) {
        let me = self.ctx.id();
        for _ in 0..MAX_LOOPBACK_PER_INPUT {
            let Some(msg) = self.ctx.loopback.pop_front() else {
                return;
            };
            self.handle_peer(me, msg);
            self.route_events();
        }
    }

    /// Hand the data events of the last step to the mechanisms that derive state from the
    /// data, in the order they happened. Called after every input, every self-sent message and
    /// every step of the maintenance tick, so no mechanism acts on state that lags the store.
    pub(super) fn route_events(&mut self) {
        self.ctx.set_aside_corrupt();
        if self.ctx.events.is_empty() {
            return;
        }
        let mut events = std::mem::take(&mut self.ctx.events);
        for event in events.drain(..) {
            self.aae.on_data_event(&event);
            self.reaper.on_data_event(&event, &self.ctx);
        }
        // Keep the buffer's capacity for the next step.
        if self.ctx.events.is_empty() {
            self.ctx.events = events;
        }
    }

    /// The next time at which the core wants [`Input::Timeout`], if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.ctx.fenced.is_some() {
            return None;
        }
        if !self.ctx.loopback.is_empty() {
            return Some(self.ctx.now);
        }
        self.ctx.timers.next()
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
        if self.ctx.dirty && self.ctx.fenced.is_none() {
            let synced = if self.ctx.cfg.has_bug(PlantedBug::AckBeforeStore) {
                // Planted bug: acknowledge without making the writes durable.
                Ok(())
            } else {
                self.ctx.store.sync()
            };
            match synced {
                Ok(()) => self.ctx.dirty = false,
                Err(e) if self.ctx.cfg.has_bug(PlantedBug::RetryFailedSync) => {
                    // Planted bug: drop this batch but keep serving, trusting the next sync.
                    self.ctx.stats.sync_failures += 1;
                    tracing::error!(error = %e, "store sync failed");
                    self.ctx.effects.clear();
                    return Vec::new();
                }
                Err(e) => self.fence(e.to_string()),
            }
        }
        std::mem::take(&mut self.ctx.effects)
    }

    /// Stop acknowledging anything after a failed sync (see [`NodeCore::drain_effects`]).
    fn fence(&mut self, reason: String) {
        tracing::error!(
            reason = %reason,
            "store sync failed: this node stops serving until it is restarted; \
             check the disk, then restart the node"
        );
        self.ctx.stats.sync_failures += 1;
        self.ctx.fenced = Some(reason);
        self.ctx.effects.clear();
        self.ctx.loopback.clear();
        self.coord.ops.clear();
    }

    /// Why the node stopped serving, if a store sync failed (it then answers every client
    /// request with [`super::types::RequestError::StorageFailed`] until restarted).
    pub fn storage_failure(&self) -> Option<&str> {
        self.ctx.fenced.as_deref()
    }

    /// Route a peer message to the mechanism that owns it.
    fn handle_peer(&mut self, from: NodeId, msg: PeerMsg) {
        self.mark_up(from);
        match msg {
            PeerMsg::Replica(m) => self.on_replica_msg(from, m),
            PeerMsg::Coord(m) => self.on_coord_msg(from, m),
            PeerMsg::Probe(ProbeMsg::Ping { nonce }) => {
                self.ctx.send(from, ProbeMsg::Pong { nonce })
            }
            PeerMsg::Probe(ProbeMsg::Pong { .. }) => {}
            PeerMsg::Handoff(HandoffMsg::Batch { batch, items }) => {
                self.handoff
                    .on_hint_batch(&mut self.ctx, &self.membership, from, batch, items)
            }
            PeerMsg::Handoff(HandoffMsg::BatchAck { batch, result }) => self
                .handoff
                .on_hint_batch_ack(&mut self.ctx, from, batch, result),
            PeerMsg::Aae(m) => {
                if let Err(e) = self.aae.on_msg(&mut self.ctx, from, m) {
                    tracing::warn!(%from, error = %e, "anti-entropy step failed");
                }
            }
            PeerMsg::Gossip(m) => self.on_gossip(from, m),
            PeerMsg::Transfer(m) => {
                if self
                    .transfers
                    .on_msg(&mut self.ctx, &self.membership, from, m)
                {
                    self.membership_progress();
                }
            }
        }
    }

    /// Forwarded writes: claim each copy from its forwarder, coordinate the one granted, pass
    /// replies back (forward.rs).
    fn on_coord_msg(&mut self, from: NodeId, msg: CoordMsg) {
        match msg {
            CoordMsg::Forward { op, request } => {
                self.coord.on_forward(&mut self.ctx, from, op, request)
            }
            CoordMsg::Claim { op, nonce } => self.coord.on_claim(&mut self.ctx, from, op, nonce),
            CoordMsg::Grant { op, nonce, granted } => {
                if let Some(request) = self.coord.on_grant(&mut self.ctx, from, op, nonce, granted)
                {
                    self.handle_client(Origin::Peer { node: from, op }, request);
                }
            }
            CoordMsg::ForwardReply { op, reply } => {
                self.coord.on_forward_reply(&mut self.ctx, op, reply)
            }
        }
    }

    fn handle_client(&mut self, origin: Origin, request: ClientRequest) {
        if self.pending_ops() >= self.ctx.cfg.max_pending_ops {
            let e = super::types::RequestError::Overloaded {
                pending: self.pending_ops() as u64,
            };
            return self.ctx.respond(origin, ClientReply::Error(e));
        }
        if self.is_removed() {
            let e = super::types::RequestError::Removed {
                node: self.ctx.id(),
            };
            return self.ctx.respond(origin, ClientReply::Error(e));
        }
        if !self.membership.joined {
            let e = super::types::RequestError::NotJoined {
                node: self.ctx.id(),
            };
            return self.ctx.respond(origin, ClientReply::Error(e));
        }
        let (ctx, coord, mut env) = self.split_for_coordinator();
        match request {
            ClientRequest::Get { key, opts } => coord.start_get(ctx, &mut env, origin, key, opts),
            ClientRequest::Put {
                key,
                value,
                context,
                opts,
            } => {
                let value = super::types::Value::Data(value);
                let body = WriteBody::Mint { value, context };
                coord.start_write(ctx, &mut env, origin, key, body, opts)
            }
            ClientRequest::Delete { key, context, opts } => {
                let value = super::types::Value::Tombstone;
                let body = WriteBody::Mint { value, context };
                coord.start_write(ctx, &mut env, origin, key, body, opts)
            }
            ClientRequest::Restore { key, object, opts } => {
                let body = WriteBody::Merge(object);
                coord.start_write(ctx, &mut env, origin, key, body, opts)
            }
            ClientRequest::Scan {
                partition,
                after,
                limit,
            } => {
                let reply = super::scan::scan_page(ctx, partition, after.as_deref(), limit);
                ctx.respond(origin, reply);
            }
            ClientRequest::PartitionMap => {
                let map = ctx.map.clone();
                ctx.respond(origin, ClientReply::PartitionMap(map));
            }
            ClientRequest::Admin(admin) => self.handle_admin(origin, admin),
        }
    }

    fn handle_timeouts(&mut self) {
        if self.ctx.timers.take_maintenance(self.ctx.now) {
            let next = self.ctx.now + u64::from(self.ctx.cfg.tick_ms) * 1000;
            self.ctx.timers.set(next, Timer::Maintenance);
            self.maintenance();
        }
        while let Some(op) = self.ctx.timers.pop_due_op(self.ctx.now) {
            let (ctx, coord, mut env) = self.split_for_coordinator();
            coord.on_deadline(ctx, &mut env, op);
        }
    }

    /// Periodic work: hinted handoff, anti-entropy, probes of down peers, tombstone reaping.
    fn maintenance(&mut self) {
        // Metadata the disk refused goes first: until it is written no data is stored.
        if let Err(e) = self.ctx.settle_meta() {
            tracing::debug!(error = %e, "node metadata still waits for the disk");
        }
        self.gossip_tick();
        self.route_events();
        self.transfers.tick(&mut self.ctx, &self.membership);
        self.route_events();
        self.transfers.stray_tick(&mut self.ctx, &self.membership);
        self.route_events();
        self.handoff.tick(&mut self.ctx, &self.membership);
        self.route_events();
        let peers = PeerView::new(
            self.ctx.id(),
            self.ctx.now,
            &self.liveness,
            &self.membership,
        );
        self.aae.tick(&mut self.ctx, &peers);
        self.route_events();
        if self.ctx.now >= self.liveness.next_probe {
            self.liveness.next_probe = self.ctx.now + 1_000_000;
            let down: Vec<NodeId> = self.liveness.down.keys().copied().collect();
            for peer in down {
                let nonce = self.ctx.next_op_id();
                self.ctx.send(peer, ProbeMsg::Ping { nonce });
            }
        }
        self.reaper.tick(&mut self.ctx, &self.transfers);
        self.route_events();
        self.coord.awaiting.expire(self.ctx.now);
        self.scrub.tick(&mut self.ctx);
        self.route_events();
        self.removed_linger();
    }
}

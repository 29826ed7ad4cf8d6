//! The simulated world: real node cores over a simulated network and disk, driven by one event
//! queue in virtual time. Everything random comes from one seeded RNG, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use dynakv_core::store::MemStore;
use dynakv_core::{
    static_addr, AaeMsg, AdminRequest, Bootstrap, ClientReply, ClientRequest, CoreConfig, Effect,
    HandoffMsg, Input, NodeCore, PeerMsg, ReplicaMsg, RequestId, Stored, TransferMsg,
};
use dynakv_ring::{NodeId, PartitionId, PartitionMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{FaultParams, SimConfig};
use crate::error::SimError;

/// When the world's operator stops a removed member that did not stop itself: after the
/// core's own linger (10 s) plus some slack.
const OPERATOR_RETIRE_US: u64 = 12_000_000;

/// Request timeout the simulated nodes use, milliseconds.
pub const SIM_REQUEST_TIMEOUT_MS: u32 = 1_000;

/// Writes seen applied by some coordinator (sent in a replica write), whatever their client
/// was told.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub values: BTreeSet<Vec<u8>>,
    /// Per key, the join of the contexts of every tombstone object sent.
    pub tombstones: BTreeMap<Vec<u8>, dynakv_proto::dvv::NodeClock>,
}

/// Something that happens at a virtual time.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A peer message arrives.
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: PeerMsg,
    },
    /// A client request arrives at a node.
    Request {
        node: NodeId,
        id: RequestId,
        request: ClientRequest,
    },
    /// A node's reply arrives at its client.
    Reply { id: RequestId, reply: ClientReply },
    /// A node's core asked to be woken up.
    Timer { node: NodeId, generation: u64 },
    /// A client decides what to do next.
    ClientNext { client: usize },
    /// A client stops waiting for a request.
    GiveUp { id: RequestId },
    /// Time to inject another scheduled fault.
    FaultTick,
    /// A crashed node comes back (with a wiped disk if `wipe`).
    Restart { node: NodeId, wipe: bool },
    /// A paused node resumes.
    Resume { node: NodeId },
    /// A partition or clog ends.
    HealCut { cut: u64 },
    /// The next read of the quiet phase.
    QuietNext,
    /// The world's operator stops a removed member that is still around well after its
    /// linger (it crashed or lost its disk meanwhile, so its core never said `Stop`).
    Retire { node: NodeId },
    /// The operator fixes a node's failing or full disk; a node that stopped serving after a
    /// failed sync is restarted.
    FixDisk { node: NodeId },
    /// Every running node's driver checks its peer connections (`crate::links`).
    LinkWatch,
}

impl Event {
    fn code(&self) -> u8 {
        match self {
            Event::Deliver { .. } => 1,
            Event::Request { .. } => 2,
            Event::Reply { .. } => 3,
            Event::Timer { .. } => 4,
            Event::ClientNext { .. } => 5,
            Event::GiveUp { .. } => 6,
            Event::FaultTick => 7,
            Event::Restart { .. } => 8,
            Event::Resume { .. } => 9,
            Event::HealCut { .. } => 10,
            Event::QuietNext => 11,
            Event::Retire { .. } => 12,
            Event::FixDisk { .. } => 13,
            Event::LinkWatch => 14,
        }
    }
}

/// One event in the queue, ordered by time then by scheduling order.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated node: its core while up, its disk while down, its clock.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub id: NodeId,
    pub core: Option<NodeCore<MemStore>>,
    pub disk: Option<MemStore>,
    pub paused: bool,
    pub held: Vec<Input>,
    pub timer_at: Option<u64>,
    pub generation: u64,
    pub skew_us: u64,
    pub drift_ppm: i64,
    pub cfg: CoreConfig,
    /// A spare that has not joined yet.
    pub spare: bool,
    /// One of the nodes that founded the cluster (the others joined later).
    pub founder: bool,
    /// Removed from the cluster and stopped for good.
    pub retired: bool,
    /// Removed, and stopping after a linger.
    pub retiring: bool,
    /// The links its core asked for (`Effect::Link`/`Unlink`) since it last started, as a
    /// driver keeps them; the liveness check compares them with the membership.
    pub links: BTreeMap<NodeId, String>,
    /// What its driver last told its core about each link (`Input::PeerStatus`).
    pub link_watch: crate::links::LinkWatches,
    /// Its last start failed (a failing disk): it stays down until the operator fixes the disk.
    pub start_failed: bool,
    /// `torn`: the power goes during this node's next step that writes, after its writes and
    /// before their sync; it is down for a while afterwards (virtual microseconds):
    /// (down time, latest moment to cut even if no step wrote anything).
    pub cut_in_next_step: Option<(u64, u64)>,
}

impl SimNode {
    /// The node's own clock at virtual time `v` (offset plus drift).
    pub fn local(&self, v: u64) -> u64 {
        let drift = i128::from(v) * i128::from(self.drift_ppm) / 1_000_000;
        (i128::from(v) + i128::from(self.skew_us) + drift).max(0) as u64
    }

    /// The first virtual time at which the node's clock reads at least `local`.
    pub fn virtual_at(&self, local: u64) -> u64 {
        let base = i128::from(local) - i128::from(self.skew_us);
        let v = base * 1_000_000 / (1_000_000 + i128::from(self.drift_ppm));
        (v.max(0) as u64) + 1
    }

    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }

    /// Part of the cluster (founded or joined, not removed): up, crashed or paused.
    pub fn is_active(&self) -> bool {
        !self.spare && !self.retired
    }
}

/// The state of the simulated network.
#[derive(Debug, Default)]
pub(crate) struct Network {
    /// Links currently cut, with how many active cuts cover them.
    pub blocked: BTreeMap<(NodeId, NodeId), u32>,
    /// Links currently clogged, with how many clogs cover them.
    pub clogged: BTreeMap<(NodeId, NodeId), u32>,
    /// Active cuts and clogs by id: (links, is_clog).
    pub cuts: BTreeMap<u64, (Vec<(NodeId, NodeId)>, bool)>,
    /// Messages held by clogged links, released when the clog ends.
    pub held: Vec<(NodeId, NodeId, PeerMsg)>,
    pub next_cut: u64,
    pub latency: BTreeMap<(NodeId, NodeId), u64>,
    pub loss: f64,
    pub dup: f64,
    pub jitter_us: u64,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

/// The running hash of the event trace.
struct Digest(Xxh3);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({:016x})", self.0.digest())
    }
}

/// The whole simulation.
#[derive(Debug)]
pub struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) params: FaultParams,
    pub(crate) rng: ChaCha8Rng,
    /// How much of a crashed node's unsynced writes survive (`torn`): a stream of its own, so
    /// runs without the fault draw exactly what they drew before it existed.
    pub(crate) torn_rng: ChaCha8Rng,
    /// Which messages the network delivers again (`replay`): a stream of its own, likewise.
    replay_rng: ChaCha8Rng,
    /// When the last replayed message lands (the quiet phase lasts long enough after it for
    /// anti-entropy to repair what it brought).
    pub(crate) last_replay_at: u64,
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) map: PartitionMap,
    pub(crate) net: Network,
    digest: Digest,
    pub(crate) events: u64,
    pub(crate) faults: BTreeMap<&'static str, u32>,
    pub(crate) wipes_left: u32,
    pub(crate) membership_changes: u32,
    /// Counters of cores that crashed or were removed (a restart starts from zero).
    pub(crate) past_stats: Vec<dynakv_core::CoreStats>,
    /// Breaches of the store's durability contract seen while the run went on (an effect left
    /// a node while writes it may depend on were not durable).
    pub(crate) contract_breaches: Vec<(String, Vec<String>)>,
    /// Records a node removed although its answer for the key afterwards no longer covers
    /// what they held (the checker's `removal-cover`): the key and what happened.
    pub(crate) uncovered_removals: Vec<(String, String)>,
    /// What coordinators were seen applying (values, and per key the contexts of tombstones).
    pub(crate) applied: Applied,
    /// Replica writes delivered and not yet acknowledged: (replica, coordinator, op) -> the
    /// partition, key and the context of what the write carried, so the ack can be checked
    /// against the replica's own map and store.
    pending_replica_writes:
        BTreeMap<(NodeId, NodeId, u64), (PartitionId, bytes::Bytes, dynakv_proto::dvv::NodeClock)>,
    /// Acks a node should not have sent (the checker's `primary-ack` and `ack-without-copy`):
    /// the invariant, the key and what happened.
    pub(crate) ack_breaches: Vec<(&'static str, String, String)>,
    /// Records the `corrupt` fault damaged: node, key, virtual time.
    pub(crate) corrupted: Vec<(NodeId, String, u64)>,
    /// When a fault took synced data from a node (wipe, power loss, corruption).
    pub(crate) data_losses: Vec<u64>,
    /// When the first membership change happened (maps differ from then on).
    pub(crate) first_membership_change: Option<u64>,
    /// Until when the current `hold` fault holds its link.
    pub(crate) hold_until: u64,
    pub(crate) trace: Option<Vec<String>>,
    pub(crate) workload: crate::workload::Workload,
}

impl World {
    /// Build the world for one seed: nodes, clocks, link latencies and fault intensities.
    pub fn new(seed: u64, cfg: SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = FaultParams::draw(&cfg, &mut rng);
        let members: BTreeSet<NodeId> = (1..=cfg.nodes).map(NodeId).collect();
        let spares = if cfg.faults.has(crate::config::FaultKind::Membership) {
            cfg.spares
        } else {
            0
        };
        let everyone: BTreeSet<NodeId> = (1..=cfg.nodes + spares).map(NodeId).collect();
        let map = PartitionMap::initial(cfg.partitions, &members)?;
        let mut nodes = Vec::new();
        for id in &everyone {
            // Nodes need not share their tuning (a rolling config change): each draws its own
            // background-work settings; quorum defaults and limits stay cluster-wide.
            let core_cfg = CoreConfig {
                node: *id,
                n: cfg.n,
                r: cfg.r,
                w: cfg.w,
                request_timeout_ms: SIM_REQUEST_TIMEOUT_MS,
                // Faster background work than production, so a run exercises it often.
                tick_ms: 50,
                fallback_after_ms: rng.gen_range(100..=300),
                aae_interval_ms: rng.gen_range(150..=400),
                // A full pass over a node's few hundred records takes a second or two, so a
                // record corrupted in the chaos phase is found within the quiet phase even if
                // no read touches it (the preloaded keys are not read there).
                scrub_per_sec: rng.gen_range(100..=300),
                read_repair: rng.gen_bool(0.85),
                handoff_batch: rng.gen_range(1..=64),
                transfer_batch: rng.gen_range(1..=256),
                tombstone_grace_ms: if cfg.reap { 3_000 } else { 0 },
                removed_linger_ms: cfg.removed_linger_ms,
                handoff_backoff_max_ms: 5_000,
                max_value_bytes: crate::workload::SIM_MAX_VALUE_BYTES,
                planted_bug: cfg.bug,
                ..CoreConfig::default()
            };
            let skew_us = if params.max_skew_us > 0 {
                rng.gen_range(0..=params.max_skew_us)
            } else {
                0
            };
            let drift_ppm = if params.max_drift_ppm > 0 {
                let d = params.max_drift_ppm as i64;
                rng.gen_range(-d..=d)
            } else {
                0
            };
            let mut node = SimNode {
                id: *id,
                core: None,
                disk: None,
                paused: false,
                held: Vec::new(),
                timer_at: None,
                generation: 0,
                skew_us,
                drift_ppm,
                cfg: core_cfg.clone(),
                spare: !members.contains(id),
                founder: members.contains(id),
                retired: false,
                retiring: false,
                links: BTreeMap::new(),
                link_watch: BTreeMap::new(),
                start_failed: false,
                cut_in_next_step: None,
            };
            let seed = rng.gen();
            if !node.spare {
                let local = node.local(0);
                let core = NodeCore::open(
                    core_cfg,
                    MemStore::new().log_changes(),
                    map.clone(),
                    seed,
                    local,
                )?;
                node.core = Some(core);
            }
            nodes.push(node);
        }
        let mut net = Network {
            loss: params.loss,
            dup: params.dup,
            jitter_us: params.jitter_us,
            ..Network::default()
        };
        for a in &everyone {
            for b in &everyone {
                let base = params.latency_us / 2 + rng.gen_range(0..=params.latency_us);
                net.latency.insert((*a, *b), base.max(1));
            }
        }
        let workload = crate::workload::Workload::new(&cfg);
        let trace = cfg.trace_key.as_ref().map(|_| Vec::new());
        let mut world = Self {
            wipes_left: params.max_wipes,
            membership_changes: 0,
            past_stats: Vec::new(),
            contract_breaches: Vec::new(),
            uncovered_removals: Vec::new(),
            applied: Applied::default(),
            pending_replica_writes: BTreeMap::new(),
            ack_breaches: Vec::new(),
            corrupted: Vec::new(),
            data_losses: Vec::new(),
            first_membership_change: None,
            hold_until: 0,
            cfg,
            params,
            rng,
            // "torn" in ASCII: any fixed offset from the seed gives an independent stream.
            torn_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x746f_726e),
            // "replay".
            replay_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x7265_706c_6179),
            last_replay_at: 0,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            map,
            net,
            digest: Digest(Xxh3::new()),
            events: 0,
            faults: BTreeMap::new(),
            trace,
            workload,
        };
        world.schedule(crate::links::LINK_WATCH_US, Event::LinkWatch);
        Ok(world)
    }

    pub(crate) fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        }));
    }

    /// Run events until the queue is empty or virtual time passes `until`.
    /// Returns false if it stopped because of the time bound.
    pub(crate) fn run_until(&mut self, until: u64, stop: &mut dyn FnMut(&World) -> bool) -> bool {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                return false;
            }
            if stop(self) {
                return true;
            }
            let Some(Reverse(s)) = self.queue.pop() else {
                break;
            };
            self.now = s.at;
            self.events += 1;
            self.digest.0.update(&s.at.to_le_bytes());
            self.digest.0.update(&[s.event.code()]);
            self.dispatch(s.event);
        }
        true
    }

    /// Hash of every event processed so far: equal digests mean identical runs.
    pub fn trace_digest(&self) -> u64 {
        self.digest.0.digest()
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        let idx = (id.0 as usize).saturating_sub(1);
        &mut self.nodes[idx]
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => {
                self.note_msg(from, to, &msg);
                self.digest.0.update(&from.0.to_le_bytes());
                self.digest.0.update(&to.0.to_le_bytes());
                self.input(to, Input::Peer { from, msg });
            }
            Event::Request { node, id, request } => {
                self.digest.0.update(&id.to_le_bytes());
                self.input(node, Input::Client { id, request });
            }
            Event::Reply { id, reply } => self.on_reply(id, reply),
            Event::Timer { node, generation } => {
                let n = self.node_mut(node);
                if n.generation != generation || n.paused || !n.is_up() {
                    return;
                }
                n.timer_at = None;
                self.input(node, Input::Timeout);
            }
            Event::ClientNext { client } => self.client_next(client),
            Event::GiveUp { id } => self.give_up(id),
            Event::FaultTick => self.fault_tick(),
            Event::Restart { node, wipe } => self.restart(node, wipe),
            Event::Resume { node } => self.resume(node),
            Event::Retire { node } => {
                if !self.node_mut(node).retired {
                    self.retire(node);
                }
            }
            Event::HealCut { cut } => self.heal_cut(cut),
            Event::QuietNext => self.quiet_next(),
            Event::FixDisk { node } => self.fix_disk(node),
            Event::LinkWatch => self.watch_links(),
        }
    }

    /// Hand an input to a node (dropped if it is down, held if it is paused).
    pub(crate) fn input(&mut self, id: NodeId, input: Input) {
        let now = self.now;
        let replica_write = match &input {
            Input::Peer {
                from,
                msg:
                    PeerMsg::Replica(ReplicaMsg::Write {
                        op,
                        partition,
                        key,
                        object,
                        ..
                    }),
            } => Some((
                (id, *from, *op),
                (*partition, key.clone(), object.context().clone()),
            )),
            _ => None,
        };
        let node = self.node_mut(id);
        if node.paused {
            node.held.push(input);
            return;
        }
        let local = node.local(now);
        let Some(core) = node.core.as_mut() else {
            return;
        };
        core.handle(local, input);
        if let Some((write, target)) = replica_write {
            self.pending_replica_writes.insert(write, target);
        }
        self.after_input(id);
    }

    /// The `primary-ack` and `ack-without-copy` checks, on every ack a node sends as a primary
    /// (`Stored::Replica`). It comes only from a node that replicates the partition under its
    /// own map at that moment: a node that handed the partition off must keep the write as
    /// hints for the current owners and ack as a fallback; otherwise a coordinator with a stale
    /// map counts a primary that is not one (toward `pw`, and toward the copies reads look at).
    /// And the node's answer for the key covers what the write carried: an ack for a write the
    /// disk refused counts a copy that does not exist.
    fn check_primary_ack(&mut self, id: NodeId, to: NodeId, msg: &PeerMsg) {
        let PeerMsg::Replica(ReplicaMsg::WriteAck { op, result }) = msg else {
            return;
        };
        let Some((p, key, carried)) = self.pending_replica_writes.remove(&(id, to, *op)) else {
            return;
        };
        if !matches!(result, Ok(Stored::Replica)) {
            return;
        }
        let now = self.now;
        let Some(core) = self.node_mut(id).core.as_ref() else {
            return;
        };
        let n = usize::from(core.config().n);
        let owns = core.partition_map().preference_list(p, n).contains(&id);
        let covered = match core.replica_answer(p, &key) {
            Ok(Some(answer)) => answer.context().descends(&carried),
            _ => false,
        };
        let breach = if !owns {
            Some(("primary-ack", format!(
                "t={now}us node {id} acked op {op} of node {to} as a primary for partition {p}, which it does not replicate under its own map"
            )))
        } else if !covered {
            Some(("ack-without-copy", format!(
                "t={now}us node {id} acked op {op} of node {to} as stored, but its answer for the key does not cover what the write carried"
            )))
        } else {
            None
        };
        if let (Some((invariant, what)), true) = (breach, self.ack_breaches.len() < 10) {
            self.ack_breaches
                .push((invariant, String::from_utf8_lossy(&key).into_owned(), what));
        }
    }

    /// Carry out a node's effects and arm its timer.
    pub(crate) fn after_input(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node_mut(id);
        if node.core.is_none() {
            return;
        }
        let writes = node.core.as_ref().map_or(0, |c| c.store().unsynced_ops());
        // Wait for a step that writes (most are timer ticks that do not), but not for ever.
        let due = node
            .cut_in_next_step
            .is_some_and(|(_, until)| writes > 0 || now >= until);
        if let (true, Some((down, _))) = (due, node.cut_in_next_step.take()) {
            // The power goes between this step's writes and their sync: nothing it decided
            // leaves the node, and the disk keeps a random prefix of its writes (`crash`).
            self.trace_line(format!(
                "t={}us node {id} POWER CUT mid-step ({writes} writes not synced)",
                self.now
            ));
            self.crash(id);
            self.restart_after(id, down);
            return;
        }
        let node = self.node_mut(id);
        let Some(core) = node.core.as_mut() else {
            return;
        };
        let effects = core.drain_effects();
        let uncovered = uncovered_removals(core);
        let synced = core.store_mut().take_synced();
        let (unsynced, lost) = (core.store().unsynced_ops(), core.store().lost_ops());
        let next = core.poll_timeout().map(|t| node.virtual_at(t));
        let generation = node.generation;
        if let Some(at) = next {
            if node.timer_at.is_none_or(|cur| at < cur) {
                node.timer_at = Some(at);
                self.schedule(
                    at,
                    Event::Timer {
                        node: id,
                        generation,
                    },
                );
            }
        }
        self.note_synced(synced);
        for (key, what) in uncovered {
            if self.uncovered_removals.len() < 10 {
                let line = format!("t={}us node {id} removed {what}", self.now);
                self.uncovered_removals.push((key, line));
            }
        }
        if unsynced + lost > 0 && effects.iter().any(carries_data) {
            let line = format!(
                "t={}us node {id} let effects out with {unsynced} unsynced and {lost} lost writes",
                self.now
            );
            if self.contract_breaches.len() < 10 {
                let what = effects
                    .iter()
                    .filter(|e| carries_data(e))
                    .take(5)
                    .map(|e| format!("{e:?}").chars().take(160).collect())
                    .collect();
                self.contract_breaches.push((line, what));
            }
        }
        let mut stop = false;
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => {
                    self.check_primary_ack(id, to, &msg);
                    self.send(id, to, msg);
                }
                Effect::Stop { .. } => stop = true,
                Effect::Link { peer, addr } => {
                    self.node_mut(id).links.insert(peer, addr);
                }
                Effect::Unlink { peer } => {
                    self.node_mut(id).links.remove(&peer);
                }
                Effect::Reply { id: req, reply } => {
                    let at = self.now + self.net.latency.get(&(id, id)).copied().unwrap_or(1);
                    self.schedule(at, Event::Reply { id: req, reply });
                }
            }
        }
        self.retire_removed(id);
        if stop {
            self.retire(id);
        }
    }

    /// Start `id` again from its disk `delay_us` from now.
    fn restart_after(&mut self, id: NodeId, delay_us: u64) {
        let at = self.now + delay_us;
        self.schedule(
            at,
            Event::Restart {
                node: id,
                wipe: false,
            },
        );
    }

    /// The operator fixes `id`'s disk: a full one gets space, and a node that stopped serving
    /// after a failed sync is restarted (from its disk, which kept everything it synced).
    pub(crate) fn fix_disk(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if let Some(disk) = node.disk.as_mut() {
            // Down meanwhile: the disk is fixed before the node comes back.
            disk.set_full(false);
            disk.set_nearly_full(0);
            disk.fail_next_syncs(0);
            if node.start_failed {
                self.restart_after(id, 1);
                return;
            }
        }
        let Some(core) = node.core.as_mut() else {
            return;
        };
        core.store_mut().set_full(false);
        core.store_mut().set_nearly_full(0);
        core.store_mut().fail_next_syncs(0);
        if core.storage_failure().is_some() {
            self.trace_line(format!("t={}us node {id} DISK FIXED, restarting", self.now));
            self.crash(id);
            self.restart_after(id, 1);
        }
    }

    /// Put a message on the simulated network: loss, partitions, clogs, latency, duplication.
    pub(crate) fn send(&mut self, from: NodeId, to: NodeId, msg: PeerMsg) {
        self.net.sent += 1;
        self.note_applied(&msg);
        if self.net.blocked.contains_key(&(from, to)) {
            self.net.dropped += 1;
            return;
        }
        if self.net.loss > 0.0 && self.rng.gen_bool(self.net.loss) {
            self.net.dropped += 1;
            return;
        }
        if self.net.clogged.contains_key(&(from, to)) {
            self.net.held.push((from, to, msg));
            return;
        }
        let base = self.net.latency.get(&(from, to)).copied().unwrap_or(100);
        let jitter = if self.net.jitter_us > 0 {
            self.rng.gen_range(0..=self.net.jitter_us)
        } else {
            0
        };
        let at = self.now + base + jitter;
        if self.net.dup > 0.0 && self.rng.gen_bool(self.net.dup) {
            self.net.duplicated += 1;
            let replay = at + self.rng.gen_range(0..500_000);
            self.schedule(
                replay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.maybe_replay(from, to, &msg, at);
        self.schedule(at, Event::Deliver { from, to, msg });
    }

    /// `replay`: during the chaos phase, deliver a few of the messages that carry data once
    /// more, seconds later (after the heal, often after a delete and its reap).
    fn maybe_replay(&mut self, from: NodeId, to: NodeId, msg: &PeerMsg, at: u64) {
        const SHARE: f64 = 0.10;
        if !self.cfg.faults.has(crate::config::FaultKind::Replay)
            || !self.workload.in_chaos()
            || !carries_versions(msg)
            || !self.replay_rng.gen_bool(SHARE)
        {
            return;
        }
        let later = at + self.replay_rng.gen_range(2_000_000..20_000_000);
        self.last_replay_at = self.last_replay_at.max(later);
        self.count_fault("replay");
        self.schedule(
            later,
            Event::Deliver {
                from,
                to,
                msg: msg.clone(),
            },
        );
    }

    /// A coordinator sends every new value to the key's other targets right after storing it,
    /// and anti-entropy, hints and transfers carry stored versions on: a version in any of them
    /// was minted, so what they carry is the evidence that a write whose outcome the client
    /// never learned was applied somewhere (see the checker's `acked-write-lost`). A delete
    /// coordinated by a node that was paused past its client's timeout may reach the others
    /// only through anti-entropy (N=3 R=W=1 seed 137).
    fn note_applied(&mut self, msg: &PeerMsg) {
        let objects: Vec<(&[u8], &dynakv_core::Object)> = match msg {
            PeerMsg::Replica(ReplicaMsg::Write { key, object, .. }) => vec![(key, object)],
            PeerMsg::Handoff(HandoffMsg::Batch { items, .. }) => {
                items.iter().map(|i| (i.key.as_ref(), &i.object)).collect()
            }
            PeerMsg::Aae(
                dynakv_core::AaeMsg::Exchange { objects, .. }
                | dynakv_core::AaeMsg::Objects { objects, .. }
                | dynakv_core::AaeMsg::ClockReply { objects, .. },
            )
            | PeerMsg::Transfer(TransferMsg::Batch { items: objects, .. }) => {
                objects.iter().map(|(k, o)| (k.as_ref(), o)).collect()
            }
            _ => return,
        };
        for (key, object) in objects {
            self.note_object_applied(key, object);
        }
    }

    /// Take object records a node's disk made durable as applied: a coordinator stores its new
    /// object before it sends it, and a disk that refuses the write's next step (the clock's
    /// record) fails the request after the object landed. Such a tombstone may reach the
    /// other replicas only through the node's clock (a reap, or a write merged over it), never
    /// as a tombstone in a message (soak seed 52650).
    fn note_synced(&mut self, synced: Vec<dynakv_core::store::Synced>) {
        for (space, key, bytes) in synced {
            let key = dynakv_core::store::object_key(space, &key).map(<[u8]>::to_vec);
            if let (Some(key), Ok(object)) = (key, dynakv_proto::codec::decode_object(&bytes)) {
                self.note_object_applied(&key, &object);
            }
        }
    }

    /// Record `object`'s values (and, for a tombstone, its context) as applied to `key`.
    fn note_object_applied(&mut self, key: &[u8], object: &dynakv_core::Object) {
        let mut tombstone = false;
        for (_, v) in object.versions() {
            match v {
                dynakv_core::Value::Data(b) => {
                    if !self.applied.values.contains(b.as_ref()) {
                        self.applied.values.insert(b.to_vec());
                    }
                }
                dynakv_core::Value::Tombstone => tombstone = true,
            }
        }
        if tombstone {
            self.applied
                .tombstones
                .entry(key.to_vec())
                .or_default()
                .merge(object.context());
        }
    }

    /// Record a trace line for the traced key, if this message touches it.
    fn note_msg(&mut self, from: NodeId, to: NodeId, msg: &PeerMsg) {
        let Some(trace_key) = self.cfg.trace_key.clone() else {
            return;
        };
        let (what, key) = match msg {
            PeerMsg::Replica(ReplicaMsg::Write {
                key,
                object,
                op,
                hint,
                ..
            }) => (
                format!(
                    "replica-write op={op:?} hint={hint:?} values={:?} ctx={:?}",
                    crate::checker::describe(object),
                    object.context()
                ),
                key,
            ),
            PeerMsg::Replica(ReplicaMsg::Read { key, .. }) => ("replica-read".to_string(), key),
            PeerMsg::Handoff(HandoffMsg::Batch { items, .. }) => {
                let Some(item) = items
                    .iter()
                    .find(|i| i.key.as_ref() == trace_key.as_bytes())
                else {
                    return;
                };
                let what = format!(
                    "hint-handoff values={:?}",
                    crate::checker::describe(&item.object)
                );
                let line = format!("t={}us node {} -> node {}: {what}", self.now, from, to);
                self.trace_line(line);
                return;
            }
            PeerMsg::Transfer(TransferMsg::Batch { items, .. })
            | PeerMsg::Aae(AaeMsg::Exchange { objects: items, .. })
            | PeerMsg::Aae(AaeMsg::Objects { objects: items, .. }) => {
                let kind = match msg {
                    PeerMsg::Transfer(_) => "transfer",
                    _ => "anti-entropy",
                };
                for (_, object) in items
                    .iter()
                    .filter(|(k, _)| k.as_ref() == trace_key.as_bytes())
                {
                    let what = format!("{kind} values={:?}", crate::checker::describe(object));
                    let line = format!("t={}us node {} -> node {}: {what}", self.now, from, to);
                    self.trace_line(line);
                }
                return;
            }
            _ => return,
        };
        if key.as_ref() == trace_key.as_bytes() {
            let line = format!("t={}us node {} -> node {}: {what}", self.now, from, to);
            self.trace_line(line);
        }
    }

    pub(crate) fn trace_line(&mut self, line: String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(line);
        }
    }

    /// Crash a node: its core is gone, its disk loses unsynced writes (or, with `torn`, all
    /// but a random prefix of them).
    pub(crate) fn crash(&mut self, id: NodeId) {
        let torn = self.cfg.faults.has(crate::config::FaultKind::Torn);
        let node = self.node_mut(id);
        let Some(core) = node.core.take() else {
            return;
        };
        let stats = core.stats();
        let mut disk = core.into_store();
        let unsynced = disk.unsynced_ops();
        let kept = if torn {
            let keep = self.torn_rng.gen_range(0..=unsynced);
            disk.crash_torn(keep)
        } else {
            disk.crash();
            0
        };
        // What stays on disk may be a coordinator's new value that it never got to send.
        self.note_synced(disk.take_synced());
        let node = self.node_mut(id);
        node.disk = Some(disk);
        node.generation += 1;
        node.timer_at = None;
        node.held.clear();
        node.paused = false;
        self.past_stats.push(stats);
        if torn && unsynced > 0 {
            self.count_fault("torn");
            let line = format!(
                "t={}us node {id} TORN CRASH: {kept} of {unsynced} unsynced writes kept",
                self.now
            );
            self.trace_line(line);
        }
        self.trace_line(format!("t={}us node {id} CRASHED", self.now));
    }

    /// Start a crashed node again, from its disk or (if `wipe`) from an empty one.
    pub(crate) fn restart(&mut self, id: NodeId, wipe: bool) {
        let seed: u64 = self.rng.gen();
        let now = self.now;
        let map = self.map.clone();
        let node = self.node_mut(id);
        if node.is_up() {
            return;
        }
        if !node.is_active() {
            return;
        }
        let founder = node.founder;
        let fresh = || MemStore::new().log_changes();
        let disk = node.disk.take().unwrap_or_else(fresh);
        let store = if wipe { fresh() } else { disk };
        let local = node.local(now);
        // A wiped node has forgotten the cluster: it asks a member for the state again. One
        // with its disk restarts from the cluster state it persisted.
        let boot = if wipe || !founder {
            match self.seed_for(id) {
                Some(seed) => Bootstrap::Join {
                    addr: static_addr(id),
                    seed,
                    seed_addr: static_addr(seed),
                },
                None => Bootstrap::Founder { map },
            }
        } else {
            Bootstrap::Founder { map }
        };
        let node = self.node_mut(id);
        node.links.clear();
        node.link_watch.clear();
        // The disk outlives a failed start (the real process exits; its files stay).
        let mut kept = store.clone();
        match NodeCore::open_with(node.cfg.clone(), store, boot, seed, local) {
            Ok(core) => {
                node.core = Some(core);
                node.start_failed = false;
            }
            Err(dynakv_core::Error::Storage(e)) => {
                kept.crash();
                node.disk = Some(kept);
                node.start_failed = true;
                self.trace_line(format!("t={now}us node {id} FAILED TO START: {e}"));
                return;
            }
            Err(e) => panic!("simulated node {id} failed to restart: {e}"),
        }
        let line = format!(
            "t={now}us node {id} RESTARTED{}",
            if wipe { " WIPED" } else { "" }
        );
        self.trace_line(line);
        // A real driver arms the core's timers as soon as it starts; without this a node that
        // crashed while joining would never tick again (nobody talks to a node that is not yet a
        // member), so it would never ask its seed again.
        self.input(id, Input::Timeout);
    }

    /// Let a paused node run again, handling everything that arrived meanwhile.
    pub(crate) fn resume(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if !node.paused {
            return;
        }
        node.paused = false;
        let held = std::mem::take(&mut node.held);
        node.timer_at = None;
        for input in held {
            self.input(id, input);
        }
        self.input(id, Input::Timeout);
    }

    /// Cut or clog a set of links until a `HealCut` event.
    pub(crate) fn add_cut(&mut self, links: Vec<(NodeId, NodeId)>, clog: bool, duration: u64) {
        let id = self.net.next_cut;
        self.net.next_cut += 1;
        for l in &links {
            let map = if clog {
                &mut self.net.clogged
            } else {
                &mut self.net.blocked
            };
            *map.entry(*l).or_insert(0) += 1;
        }
        self.net.cuts.insert(id, (links, clog));
        let at = self.now + duration;
        self.schedule(at, Event::HealCut { cut: id });
    }

    pub(crate) fn heal_cut(&mut self, id: u64) {
        let Some((links, clog)) = self.net.cuts.remove(&id) else {
            return;
        };
        for l in links {
            let map = if clog {
                &mut self.net.clogged
            } else {
                &mut self.net.blocked
            };
            if let Some(c) = map.get_mut(&l) {
                *c -= 1;
                if *c == 0 {
                    map.remove(&l);
                }
            }
        }
        if clog {
            let (release, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net.held)
                .into_iter()
                .partition(|(f, t, _)| !self.net.clogged.contains_key(&(*f, *t)));
            self.net.held = keep;
            for (from, to, msg) in release {
                self.send(from, to, msg);
            }
        }
    }

    /// A member other than `me` to join through (the lowest running id, deterministic).
    pub(crate) fn seed_for(&self, me: NodeId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|n| {
                n.id != me
                    && n.is_active()
                    && n.core.as_ref().is_some_and(|c| {
                        c.is_joined() && c.member_status() == Some(dynakv_gossip::Status::Valid)
                    })
            })
            .map(|n| n.id)
    }

    /// A spare starts and joins the cluster through a member.
    pub(crate) fn join_spare(&mut self, id: NodeId) {
        let Some(seed_node) = self.seed_for(id) else {
            return;
        };
        let seed: u64 = self.rng.gen();
        let now = self.now;
        let node = self.node_mut(id);
        if !node.spare {
            return;
        }
        node.spare = false;
        let local = node.local(now);
        let boot = Bootstrap::Join {
            addr: static_addr(id),
            seed: seed_node,
            seed_addr: static_addr(seed_node),
        };
        match NodeCore::open_with(
            node.cfg.clone(),
            MemStore::new().log_changes(),
            boot,
            seed,
            local,
        ) {
            Ok(core) => node.core = Some(core),
            Err(e) => panic!("simulated node {id} failed to start: {e}"),
        }
        self.trace_line(format!(
            "t={now}us node {id} JOINS through node {seed_node}"
        ));
        self.input(id, Input::Timeout);
    }

    /// An operator asks a member to leave the cluster.
    pub(crate) fn leave(&mut self, id: NodeId) {
        if self.node_mut(id).paused {
            return;
        }
        if self.admin(id, AdminRequest::Leave) {
            let line = format!("t={}us node {id} LEAVES", self.now);
            self.trace_line(line);
            self.after_input(id);
        }
    }

    /// Hand an operator's admin request to `at`'s core now; false when `at` is not running.
    fn admin(&mut self, at: NodeId, request: AdminRequest) -> bool {
        let now = self.now;
        let node = self.node_mut(at);
        let local = node.local(now);
        let Some(core) = node.core.as_mut() else {
            return false;
        };
        core.handle(
            local,
            Input::Client {
                id: u64::MAX,
                request: ClientRequest::Admin(request),
            },
        );
        true
    }

    /// A member that learns it was removed is no longer used by clients; its core keeps it
    /// running a few gossip rounds (so the news spreads) and then emits `Effect::Stop`.
    fn retire_removed(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        // A removed node that lost its disk asks to join again and is refused: it is gone.
        let refused = node
            .core
            .as_ref()
            .is_some_and(|c| !c.is_joined() && c.stats().join_refusals > 0)
            && self.removed_by_cluster(id);
        let node = self.node_mut(id);
        if refused {
            if let Some(core) = node.core.take() {
                self.past_stats.push(core.stats());
            }
            let node = self.node_mut(id);
            node.retired = true;
            node.generation += 1;
            let line = format!(
                "t={}us node {id} refused (removed earlier) and stopped",
                self.now
            );
            self.trace_line(line);
            return;
        }
        let node = self.node_mut(id);
        if node.retiring || !node.core.as_ref().is_some_and(|c| c.is_removed()) {
            return;
        }
        // Clients stop sending to it; the core itself says when to stop (`Effect::Stop`).
        // A removed node that crashes or is wiped during its linger may come back with an
        // older cluster state and never learn it was removed (the security issue's "removed
        // id rejoins" case); the world's operator stops it then.
        node.retiring = true;
        let at = self.now + OPERATOR_RETIRE_US;
        self.schedule(at, Event::Retire { node: id });
    }

    /// Does a running member see `id` as removed?
    fn removed_by_cluster(&self, id: NodeId) -> bool {
        self.nodes.iter().filter_map(|n| n.core.as_ref()).any(|c| {
            c.cluster_state()
                .and_then(|s| s.member(id))
                .is_some_and(|m| m.status == dynakv_gossip::Status::Removed)
        })
    }

    /// Stop a removed member for good.
    pub(crate) fn retire(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node_mut(id);
        // It learned it was removed a while ago; crashed or not, it is gone now.
        if let Some(core) = node.core.take() {
            self.past_stats.push(core.stats());
        }
        let node = self.node_mut(id);
        node.retired = true;
        node.disk = None;
        node.generation += 1;
        self.trace_line(format!("t={now}us node {id} REMOVED and stopped"));
        self.finish_removal(id);
    }

    /// A stopped node that decided it was removed may not have told anyone (it crashed or its
    /// disk failed right after): the operator then removes it through a running member, as
    /// `dynakv admin remove` would.
    pub(crate) fn finish_removal(&mut self, id: NodeId) {
        let now = self.now;
        let Some(member) = self.nodes.iter().find_map(|n| {
            let c = n.core.as_ref()?;
            let sees_removed = c
                .cluster_state()
                .and_then(|s| s.member(id))
                .is_none_or(|m| m.status == dynakv_gossip::Status::Removed);
            (n.id != id && !n.paused && c.is_joined() && !c.is_removed() && !sees_removed)
                .then_some(n.id)
        }) else {
            return;
        };
        // The operator knows the process is gone, even if the members' failure detectors
        // have not noticed yet: `dynakv remove --force`.
        let remove = AdminRequest::Remove {
            node: id,
            force: true,
        };
        if self.admin(member, remove) {
            self.trace_line(format!(
                "t={now}us operator removes node {id} via node {member}"
            ));
            self.after_input(member);
        }
    }

    /// Transfers not finished, over running members.
    pub(crate) fn transfers_pending(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.outgoing_pending() + c.incoming_pending())
            .sum()
    }

    /// Do all running members route by the same map, with no join or leave in progress?
    pub(crate) fn membership_settled(&self) -> bool {
        let cores: Vec<&NodeCore<MemStore>> = self
            .nodes
            .iter()
            .filter(|n| n.is_active())
            .filter_map(|n| n.core.as_ref())
            .collect();
        let Some(first) = cores.first() else {
            return true;
        };
        // Each running member keeps links to exactly the other members that are not removed
        // (what its core asked its driver for).
        let links_match = self.nodes.iter().filter(|n| n.is_active()).all(|n| {
            let Some(c) = n.core.as_ref() else {
                return true;
            };
            let wanted: BTreeSet<NodeId> = c
                .cluster_state()
                .map(|s| {
                    s.members()
                        .iter()
                        .filter(|(id, m)| {
                            **id != c.id() && m.status != dynakv_gossip::Status::Removed
                        })
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            n.links.keys().copied().collect::<BTreeSet<NodeId>>() == wanted
        });
        links_match
            && cores.iter().all(|c| {
                c.is_joined()
                    && c.partition_map() == first.partition_map()
                    && c.cluster_state().is_some_and(|s| {
                        s.members().values().all(|m| {
                            !matches!(
                                m.status,
                                dynakv_gossip::Status::Joining | dynakv_gossip::Status::Leaving
                            )
                        })
                    })
            })
    }

    /// The map every running member agrees on (the first one's, when they do not).
    pub(crate) fn final_map(&self) -> PartitionMap {
        self.nodes
            .iter()
            .filter(|n| n.is_active())
            .find_map(|n| n.core.as_ref().map(|c| c.partition_map().clone()))
            .unwrap_or_else(|| self.map.clone())
    }

    /// Debugging aid: the whole trace of the traced key.
    pub fn debug_trace(&self) -> Vec<String> {
        self.trace.clone().unwrap_or_default()
    }

    /// Debugging aid: each node's view of membership.
    pub fn debug_membership(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => format!(
                    "node {} links={:?} down_view={:?} joined={} status={:?} map_counts={:?} members={:?} out={} in={}",
                    n.id,
                    n.links.keys().map(|k| k.0).collect::<Vec<_>>(),
                    c.down_peers(),
                    c.is_joined(),
                    c.member_status(),
                    c.partition_map().counts(),
                    c.cluster_state().map(|s| s
                        .members()
                        .iter()
                        .map(|(id, m)| (id.0, m.status.to_string(), m.version))
                        .collect::<Vec<_>>()),
                    c.outgoing_pending(),
                    c.incoming_pending()
                ),
                None => format!("node {} down spare={} retired={}", n.id, n.spare, n.retired),
            })
            .collect()
    }

    /// Hints still held anywhere, per holder.
    pub(crate) fn hints_pending(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.hints_pending().values().sum::<u64>())
            .sum()
    }

    /// End every fault: network whole, no loss or duplication, every node up and running.
    pub(crate) fn heal_all(&mut self) {
        let cuts: Vec<u64> = self.net.cuts.keys().copied().collect();
        for c in cuts {
            self.heal_cut(c);
        }
        self.net.loss = 0.0;
        self.net.dup = 0.0;
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids.iter().copied() {
            self.fix_disk(id);
            if self.node_mut(id).is_active() && !self.node_mut(id).is_up() {
                self.restart(id, false);
            }
            self.resume(id);
        }
        for id in ids {
            if self.node_mut(id).retired {
                self.finish_removal(id);
            }
        }
    }
}

/// The records `core`'s last step removed from partitions it still answers for, whose causal
/// information its answer for the key (the partition clock's fill) no longer covers: a late
/// copy of a version they superseded would then be taken back (a reap before the clock covers
/// the tombstone). Removals of lost keys and of partitions the node no longer replicates are
/// not judged: the node answers nothing for those keys.
fn uncovered_removals(core: &mut NodeCore<MemStore>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (p, key, bytes) in core.store_mut().take_removed() {
        let Ok(old) = dynakv_proto::codec::decode_object(&bytes) else {
            continue; // a corrupt record: the key is marked lost
        };
        let Ok(Some(answer)) = core.replica_answer(p, &key) else {
            continue;
        };
        if !answer.context().descends(old.context()) {
            out.push((
                String::from_utf8_lossy(&key).into_owned(),
                format!(
                    "a record of partition {} whose context {:?} its answer {:?} does not cover",
                    p.0,
                    old.context(),
                    answer.context()
                ),
            ));
        }
    }
    out
}

/// Does this message carry versions of keys, or start a write (what a late copy can bring back)?
fn carries_versions(msg: &PeerMsg) -> bool {
    matches!(
        msg,
        PeerMsg::Replica(ReplicaMsg::Write { .. })
            | PeerMsg::Handoff(HandoffMsg::Batch { .. })
            | PeerMsg::Aae(
                dynakv_core::AaeMsg::Exchange { .. }
                    | dynakv_core::AaeMsg::Objects { .. }
                    | dynakv_core::AaeMsg::ClockReply { .. }
            )
            | PeerMsg::Transfer(TransferMsg::Batch { .. })
            | PeerMsg::Coord(
                dynakv_core::CoordMsg::Forward { .. }
                    | dynakv_core::CoordMsg::Claim { .. }
                    | dynakv_core::CoordMsg::Grant { .. }
            )
    )
}

/// Does this effect report or carry data (so it must wait for durability)? Error replies, links
/// and stops do not.
fn carries_data(effect: &Effect) -> bool {
    match effect {
        Effect::Send { .. } => true,
        Effect::Reply { reply, .. } => !matches!(reply, ClientReply::Error(_)),
        _ => false,
    }
}

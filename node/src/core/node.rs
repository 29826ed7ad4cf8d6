//! The node state machine: identity, input dispatch, the replica role, timers and effects.
//!
//! The coordinator role (get/put/delete with quorums) lives in `coordinator.rs`, as another
//! `impl` block of the same type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId, PartitionMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::{CoreConfig, PlantedBug};
use super::coordinator::PendingOp;
use super::types::{
    ClientReply, ClientRequest, Effect, Input, Object, OpId, PeerMsg, ReplicaError, RequestId,
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
    incarnation: u32,
}

/// Counters for `status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    /// Client requests answered successfully.
    pub requests_ok: u64,
    /// Client requests answered with an error.
    pub requests_failed: u64,
    /// Replica writes merged into the local store.
    pub replica_writes: u64,
    /// Objects sent back to stale replicas after a get.
    pub read_repairs: u64,
    /// Writes that left a key with more siblings than the warning threshold.
    pub sibling_warnings: u64,
    /// Store syncs that failed (their effects were dropped, never acknowledged).
    pub sync_failures: u64,
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
    pub(super) cfg: CoreConfig,
    pub(super) actor: Actor,
    pub(super) map: PartitionMap,
    pub(super) store: S,
    pub(super) rng: ChaCha8Rng,
    pub(super) now: u64,
    pub(super) next_op: OpId,
    pub(super) ops: BTreeMap<OpId, PendingOp>,
    pub(super) deadlines: BTreeSet<(u64, OpId)>,
    pub(super) effects: Vec<Effect>,
    pub(super) dirty: bool,
    pub(super) stats: CoreStats,
    /// Forwarded writes already accepted, so a duplicated or replayed `Forward` message is not
    /// coordinated twice (which would write the value again under a second dot).
    pub(super) seen_forwards: BTreeSet<(NodeId, OpId)>,
    pub(super) seen_forwards_order: VecDeque<(NodeId, OpId)>,
}

/// How many forwarded requests are remembered for de-duplication.
const SEEN_FORWARDS: usize = 4096;

impl<S: Store> NodeCore<S> {
    /// Start a node on `store`. Reads the node's identity from the store; a store without one
    /// (new or wiped) gets a fresh incarnation drawn from `seed`, persisted before anything else,
    /// so dots minted before a wipe are never minted again. `seed` must differ between starts
    /// (the real driver draws it from the OS, the simulator from its seeded RNG).
    pub fn open(
        cfg: CoreConfig,
        mut store: S,
        map: PartitionMap,
        seed: u64,
        now: u64,
    ) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
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
                id.incarnation
            }
            None => {
                let incarnation = if cfg.planted_bug == Some(PlantedBug::ReuseDotsAfterWipe) {
                    0
                } else {
                    rng.gen()
                };
                let id = Identity {
                    node: cfg.node,
                    incarnation,
                };
                store.put(Space::Meta, IDENTITY_KEY, &codec::encode(&id)?)?;
                store.sync()?;
                incarnation
            }
        };
        let next_op = rng.gen::<u64>() >> 1;
        Ok(Self {
            actor: Actor {
                node: cfg.node,
                incarnation,
            },
            cfg,
            map,
            store,
            rng,
            now,
            next_op,
            ops: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            effects: Vec::new(),
            dirty: false,
            stats: CoreStats::default(),
            seen_forwards: BTreeSet::new(),
            seen_forwards_order: VecDeque::new(),
        })
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
        self.ops.len()
    }

    /// The store (read-only), for status and checkers.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Give the store back (when the driver shuts the node down or the simulator crashes it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Feed one input at time `now` (microseconds). Effects queue up until
    /// [`NodeCore::drain_effects`].
    pub fn handle(&mut self, now: u64, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Peer { from, msg } => self.handle_peer(from, msg),
            Input::Client { id, request } => {
                self.handle_client(super::node::Origin::Client(id), request)
            }
            Input::Timeout => self.handle_timeouts(),
        }
    }

    /// The next time at which the core wants [`Input::Timeout`], if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadlines.iter().next().map(|(t, _)| *t)
    }

    /// Take every queued effect. Syncs the store first when anything was written, so no ack,
    /// reply or replica message can leave before the data it reports is durable. When the sync
    /// fails, the effects are dropped (peers and clients time out) and the failure is counted:
    /// acknowledging an undurable write would be a lie.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        if self.dirty {
            if self.cfg.planted_bug == Some(PlantedBug::AckBeforeStore) {
                // Planted bug: acknowledge without making the writes durable.
            } else if let Err(e) = self.store.sync() {
                tracing::error!(error = %e, "store sync failed; dropping unacknowledged effects");
                self.stats.sync_failures += 1;
                self.effects.clear();
                return Vec::new();
            }
            self.dirty = false;
        }
        std::mem::take(&mut self.effects)
    }

    pub(super) fn next_op_id(&mut self) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        self.next_op
    }

    pub(super) fn send(&mut self, to: NodeId, msg: PeerMsg) {
        self.effects.push(Effect::Send { to, msg });
    }

    pub(super) fn respond(&mut self, origin: Origin, reply: ClientReply) {
        if matches!(reply, ClientReply::Error(_)) {
            self.stats.requests_failed += 1;
        } else {
            self.stats.requests_ok += 1;
        }
        match origin {
            Origin::Client(id) => self.effects.push(Effect::Reply { id, reply }),
            Origin::Peer { node, op } => self.send(node, PeerMsg::ForwardReply { op, reply }),
        }
    }

    /// Read and decode the stored object for a key.
    pub(super) fn load(&self, p: PartitionId, key: &[u8]) -> Result<Option<Object>> {
        match self.store.get(Space::Partition(p), key)? {
            Some(bytes) => Ok(Some(codec::decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Encode and write an object; durable at the next drain.
    pub(super) fn save(&mut self, p: PartitionId, key: &[u8], object: &Object) -> Result<()> {
        let bytes = codec::encode_object(object)?;
        self.store.put(Space::Partition(p), key, &bytes)?;
        self.dirty = true;
        let count = object.value_count();
        if count > self.cfg.sibling_warn as usize {
            self.stats.sibling_warnings += 1;
            tracing::warn!(
                siblings = count,
                warn_at = self.cfg.sibling_warn,
                "key has many siblings: clients should read and write back a merged value"
            );
        }
        Ok(())
    }

    /// Merge two objects: the DVVSet sync, or the planted last-write-wins bug.
    pub(super) fn merge(&self, a: &Object, b: &Object) -> Object {
        let merged = a.sync(b);
        if self.cfg.planted_bug == Some(PlantedBug::LastWriteWins) {
            merged.keep_only_newest()
        } else {
            merged
        }
    }

    /// Merge `incoming` into what this node stores for `key` (the replica role).
    pub(super) fn merge_into_store(
        &mut self,
        p: PartitionId,
        key: &[u8],
        incoming: &Object,
    ) -> std::result::Result<Object, ReplicaError> {
        incoming
            .validate()
            .map_err(|e| ReplicaError::Rejected(e.to_string()))?;
        let local = self
            .load(p, key)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let merged = match local {
            Some(local) if self.cfg.planted_bug != Some(PlantedBug::OverwriteOnReplica) => {
                self.merge(&local, incoming)
            }
            _ => incoming.clone(),
        };
        self.save(p, key, &merged)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.stats.replica_writes += 1;
        Ok(merged)
    }

    fn handle_peer(&mut self, from: NodeId, msg: PeerMsg) {
        match msg {
            PeerMsg::ReplicaWrite {
                op,
                partition,
                key,
                object,
            } => {
                let result = self.merge_into_store(partition, &key, &object).map(|_| ());
                self.send(from, PeerMsg::ReplicaWriteAck { op, result });
            }
            PeerMsg::ReplicaRead { op, partition, key } => {
                let result = self
                    .load(partition, &key)
                    .map_err(|e| ReplicaError::Storage(e.to_string()));
                self.send(from, PeerMsg::ReplicaReadReply { op, result });
            }
            PeerMsg::Forward { op, request } => {
                if !self.seen_forwards.insert((from, op)) {
                    return; // a duplicate: the first copy is (or was) being coordinated
                }
                self.seen_forwards_order.push_back((from, op));
                if self.seen_forwards_order.len() > SEEN_FORWARDS {
                    if let Some(old) = self.seen_forwards_order.pop_front() {
                        self.seen_forwards.remove(&old);
                    }
                }
                self.handle_client(Origin::Peer { node: from, op }, request);
            }
            PeerMsg::ReplicaWriteAck { op, result } => self.on_write_ack(from, op, result),
            PeerMsg::ReplicaReadReply { op, result } => self.on_read_reply(from, op, result),
            PeerMsg::ForwardReply { op, reply } => self.on_forward_reply(op, reply),
        }
    }

    fn handle_client(&mut self, origin: Origin, request: ClientRequest) {
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
        }
    }

    fn handle_timeouts(&mut self) {
        while let Some(&(deadline, op)) = self.deadlines.iter().next() {
            if deadline > self.now {
                break;
            }
            self.deadlines.remove(&(deadline, op));
            self.on_deadline(op);
        }
    }

    /// Register an operation with its deadline.
    pub(super) fn add_op(&mut self, op: OpId, deadline: u64, pending: PendingOp) {
        self.deadlines.insert((deadline, op));
        self.ops.insert(op, pending);
    }

    /// Forget an operation and its deadline.
    pub(super) fn remove_op(&mut self, op: OpId) -> Option<PendingOp> {
        let pending = self.ops.remove(&op)?;
        self.deadlines.remove(&(pending.deadline(), op));
        Some(pending)
    }

    /// Read every key of a partition (for checkers, anti-entropy and transfers).
    pub fn partition_objects(&self, p: PartitionId) -> Result<Vec<(Bytes, Object)>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(Space::Partition(p), after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                out.push((Bytes::from(k), codec::decode_object(&v)?));
            }
        }
        Ok(out)
    }
}

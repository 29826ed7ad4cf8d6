//! The step-by-step harness: several real node cores wired together directly (no latency, no
//! randomness), with links that can be cut, for tests that drive one exchange at a time and
//! assert exactly what happened. The randomized world (`world`) is the other driver of this
//! crate; both run the same `NodeCore`. Test code: it panics on anything unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use dynakv_core::store::MemStore;
use dynakv_core::{
    ClientReply, ClientRequest, CoreConfig, Effect, GetReply, Input, NodeCore, PeerMsg, PutReply,
    ReplicaMsg, RequestError, RequestOptions,
};
use dynakv_proto::dvv::{Actor, NodeClock, VersionVector};
use dynakv_ring::{NodeId, PartitionMap};

/// A cluster of node cores in one process.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, NodeCore<MemStore>>,
    queue: VecDeque<(NodeId, NodeId, PeerMsg)>,
    cut: BTreeSet<(NodeId, NodeId)>,
    replies: BTreeMap<u64, ClientReply>,
    pub now: u64,
    next_req: u64,
    pub delivered: u64,
    /// The links each node's core asked for (`Effect::Link`/`Unlink`), as a driver keeps them.
    pub links: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Nodes whose core asked to be stopped (`Effect::Stop`).
    pub stopped: BTreeSet<NodeId>,
    /// Every message sent since [`Cluster::record`] turned recording on (cut links included),
    /// to deliver again with [`Cluster::inject`] (a duplicate, or a copy that arrives late).
    pub recorded: Vec<(NodeId, NodeId, PeerMsg)>,
    recording: bool,
}

pub fn n(i: u32) -> NodeId {
    NodeId(i)
}

impl Cluster {
    /// `count` nodes (ids 1..=count), 64 partitions, the given quorum defaults.
    pub fn new(count: u32, nval: u8, r: u8, w: u8) -> Self {
        Self::with_config(count, nval, r, w, |_| {})
    }

    /// Like [`Cluster::new`], with a hook to change every node's config.
    pub fn with_config(count: u32, nval: u8, r: u8, w: u8, tune: impl Fn(&mut CoreConfig)) -> Self {
        let members: BTreeSet<NodeId> = (1..=count).map(NodeId).collect();
        let map = PartitionMap::initial(64, &members).expect("map");
        let mut nodes = BTreeMap::new();
        for id in &members {
            let mut cfg = CoreConfig {
                node: *id,
                n: nval,
                r,
                w,
                request_timeout_ms: 1_000,
                ..CoreConfig::default()
            };
            tune(&mut cfg);
            let core = NodeCore::open(cfg, MemStore::new(), map.clone(), u64::from(id.0) * 7919, 0)
                .expect("open");
            nodes.insert(*id, core);
        }
        Self {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            replies: BTreeMap::new(),
            now: 0,
            next_req: 1,
            delivered: 0,
            links: BTreeMap::new(),
            stopped: BTreeSet::new(),
            recorded: Vec::new(),
            recording: false,
        }
    }

    pub fn actor(&self, id: NodeId) -> Actor {
        self.nodes[&id].actor()
    }

    /// Drop every message from `a` to `b` and from `b` to `a` until [`Cluster::heal`].
    pub fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Drop every message from `from` to `to` (one way) until `heal`.
    pub fn cut_one(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Cut `id` off from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut_both(id, other);
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Undo every cut to or from `id` (the others stay).
    pub fn heal_node(&mut self, id: NodeId) {
        self.cut.retain(|(a, b)| *a != id && *b != id);
    }

    fn collect(&mut self, id: NodeId) {
        let effects = self.nodes.get_mut(&id).expect("node").drain_effects();
        for e in effects {
            match e {
                Effect::Send { to, msg } => {
                    if self.recording {
                        self.recorded.push((id, to, msg.clone()));
                    }
                    if !self.cut.contains(&(id, to)) {
                        self.queue.push_back((id, to, msg));
                    }
                }
                Effect::Reply { id, reply } => {
                    self.replies.insert(id, reply);
                }
                Effect::Stop { .. } => {
                    self.stopped.insert(id);
                }
                Effect::Link { peer, .. } => {
                    self.links.entry(id).or_default().insert(peer);
                }
                Effect::Unlink { peer } => {
                    self.links.entry(id).or_default().remove(&peer);
                }
            }
        }
    }

    /// Deliver queued messages until the network is quiet.
    pub fn run(&mut self) {
        let mut budget = 100_000;
        while self.step() {
            budget -= 1;
            assert!(budget > 0, "message storm");
        }
    }

    /// Deliver the next queued message only (false when none was queued): for tests that stop
    /// in the middle of an exchange.
    pub fn step(&mut self) -> bool {
        let Some((from, to, msg)) = self.queue.pop_front() else {
            return false;
        };
        if !self.cut.contains(&(from, to)) {
            self.delivered += 1;
            let now = self.now;
            self.nodes
                .get_mut(&to)
                .expect("node")
                .handle(now, Input::Peer { from, msg });
            self.collect(to);
        }
        true
    }

    /// Keep (or stop keeping) a copy of every message sent in [`Cluster::recorded`].
    pub fn record(&mut self, on: bool) {
        self.recording = on;
    }

    /// Deliver `msg` from `from` to `to` once more (as the network may), then until quiet.
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: PeerMsg) {
        self.queue.push_back((from, to, msg));
        self.run();
    }

    /// Move time forward, firing timers, then deliver until quiet.
    pub fn advance(&mut self, ms: u64) {
        self.tick(ms);
        self.run();
    }

    /// Move time forward and fire the timers due, delivering nothing (see [`Cluster::step`]).
    pub fn tick(&mut self, ms: u64) {
        self.now += ms * 1000;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let due = self.nodes[&id]
                .poll_timeout()
                .is_some_and(|t| t <= self.now);
            if due {
                let now = self.now;
                self.nodes
                    .get_mut(&id)
                    .expect("node")
                    .handle(now, Input::Timeout);
                self.collect(id);
            }
        }
    }

    /// Let `ms` of time pass in 50 ms steps (background work: handoff, anti-entropy, reaping).
    pub fn run_for(&mut self, ms: u64) {
        for _ in 0..ms.div_ceil(50) {
            self.advance(50);
        }
    }

    /// Stop a node and start it again (seed `seed`) on what `disk` makes of its store.
    fn reboot(&mut self, id: NodeId, seed: u64, disk: impl FnOnce(MemStore) -> MemStore) {
        let old = self.nodes.remove(&id).expect("node");
        let cfg = old.config().clone();
        let map = old.partition_map().clone();
        let store = disk(old.into_store());
        let core = NodeCore::open(cfg, store, map, seed, self.now).expect("open");
        self.nodes.insert(id, core);
    }

    /// Start a new node `id` (same config as node 1) that joins the cluster through `seed`.
    pub fn join(&mut self, id: NodeId, seed: NodeId) {
        let mut cfg = self.nodes[&n(1)].config().clone();
        cfg.node = id;
        let boot = dynakv_core::Bootstrap::Join {
            addr: dynakv_core::static_addr(id),
            seed,
            seed_addr: dynakv_core::static_addr(seed),
        };
        let core = NodeCore::open_with(cfg, MemStore::new(), boot, 777 + u64::from(id.0), self.now)
            .expect("open");
        self.nodes.insert(id, core);
        self.collect(id);
    }

    /// Replace a node's store with an empty one (a wiped disk) and restart it.
    pub fn wipe(&mut self, id: NodeId) {
        // Every life gets its own seed (its operation ids start from it).
        self.reboot(id, 424242 + self.now + u64::from(id.0), |_| MemStore::new());
    }

    /// Power-cycle a node: its disk loses what was not synced (and any injected disk fault is
    /// cleared, as an operator would fix the disk first), then the node starts from it.
    pub fn restart(&mut self, id: NodeId) {
        self.reboot(id, 515151 + self.now + u64::from(id.0), |mut disk| {
            disk.crash();
            disk.fail_next_syncs(0);
            disk.set_full(false);
            disk.set_nearly_full(0);
            disk.refuse_spaces(&[]);
            disk
        });
    }

    /// Power-cycle a node whose disk also loses its last `batches` *synced* batches (a lying
    /// write cache), then start it again.
    pub fn power_cycle(&mut self, id: NodeId, batches: usize) {
        self.reboot(id, 616161 + self.now + u64::from(id.0), |mut disk| {
            disk.power_loss(batches);
            disk
        });
    }

    /// Every node's view of pending hints, summed.
    pub fn hints_pending(&self) -> u64 {
        self.nodes
            .values()
            .map(|c| c.hints_pending().values().sum::<u64>())
            .sum()
    }

    /// The first `count` keys (`k0`, `k1`, ...) whose one replica, with N=1, is `owner`.
    pub fn keys_only_on(&self, owner: NodeId, count: usize) -> Vec<String> {
        let map = self.map();
        (0..100_000)
            .map(|i| format!("k{i}"))
            .filter(|k| map.preference_list(map.partition_for_key(k.as_bytes()), 1) == [owner])
            .take(count)
            .collect()
    }

    /// With the key's owner cut off, write `key` through `at` until `at` holds it as a hint:
    /// the first put finds the owner silent, the next goes to `at` as a fallback.
    pub fn hint_through(&mut self, at: NodeId, key: &str, value: &str) {
        let opts = RequestOptions {
            w: Some(1),
            ..RequestOptions::default()
        };
        let _ = self.put(at, key, value, &NodeClock::new(), opts);
        self.run_for(5_000);
        self.put_w1(at, key, value, &NodeClock::new());
    }

    /// Remove `node` from the cluster (forced), asking `at`.
    pub fn remove_node(&mut self, at: NodeId, node: NodeId) {
        let reply = self.request(
            at,
            ClientRequest::Admin(dynakv_core::AdminRequest::Remove { node, force: true }),
        );
        assert!(matches!(reply, ClientReply::Admin(_)), "{reply:?}");
    }

    /// The partition map (the same on every node).
    pub fn map(&self) -> PartitionMap {
        self.nodes
            .values()
            .next()
            .expect("node")
            .partition_map()
            .clone()
    }

    /// Send a request to `at` and deliver until quiet, without waiting for the reply: see
    /// [`Cluster::take_reply`].
    pub fn submit(&mut self, at: NodeId, request: ClientRequest) -> u64 {
        let id = self.next_req;
        self.next_req += 1;
        let now = self.now;
        self.nodes
            .get_mut(&at)
            .expect("node")
            .handle(now, Input::Client { id, request });
        self.collect(at);
        self.run();
        id
    }

    /// The reply to a submitted request, if it has come.
    pub fn take_reply(&mut self, id: u64) -> Option<ClientReply> {
        self.replies.remove(&id)
    }

    /// Send a request to `at`, deliver until quiet, and wait up to the timeout for a reply.
    pub fn request(&mut self, at: NodeId, request: ClientRequest) -> ClientReply {
        let id = self.submit(at, request);
        for _ in 0..20 {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            self.advance(200);
        }
        panic!("no reply to request {id}");
    }

    pub fn put(
        &mut self,
        at: NodeId,
        key: &str,
        value: &str,
        ctx: &NodeClock,
        opts: RequestOptions,
    ) -> ClientReply {
        self.request(
            at,
            ClientRequest::Put {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                context: ctx.clone(),
                opts,
            },
        )
    }

    pub fn put_ok(&mut self, at: NodeId, key: &str, value: &str, ctx: &NodeClock) -> PutReply {
        match self.put(at, key, value, ctx, RequestOptions::default()) {
            ClientReply::Written(p) => p,
            other => panic!("put {value} at {at} failed: {other:?}"),
        }
    }

    /// A put that only needs the coordinator's own ack (W=1), for scripted histories.
    pub fn put_w1(&mut self, at: NodeId, key: &str, value: &str, ctx: &NodeClock) -> PutReply {
        let opts = RequestOptions {
            w: Some(1),
            ..RequestOptions::default()
        };
        match self.put(at, key, value, ctx, opts) {
            ClientReply::Written(p) => p,
            other => panic!("put {value} at {at} failed: {other:?}"),
        }
    }

    pub fn delete_w1(&mut self, at: NodeId, key: &str, ctx: &NodeClock) -> PutReply {
        let opts = RequestOptions {
            w: Some(1),
            ..RequestOptions::default()
        };
        match self.request(
            at,
            ClientRequest::Delete {
                key: Bytes::from(key.to_string()),
                context: ctx.clone(),
                opts,
            },
        ) {
            ClientReply::Written(p) => p,
            other => panic!("delete at {at} failed: {other:?}"),
        }
    }

    pub fn get(&mut self, at: NodeId, key: &str, opts: RequestOptions) -> ClientReply {
        self.request(
            at,
            ClientRequest::Get {
                key: Bytes::from(key.to_string()),
                opts,
            },
        )
    }

    pub fn get_ok(&mut self, at: NodeId, key: &str) -> GetReply {
        match self.get(at, key, RequestOptions::default()) {
            ClientReply::Got(g) => g,
            other => panic!("get at {at} failed: {other:?}"),
        }
    }

    /// Whether node `at` stores a record of `key` (in the partition its map gives the key).
    pub fn stores_key(&self, at: NodeId, key: &str) -> bool {
        let core = &self.nodes[&at];
        let p = core.partition_map().partition_for_key(key.as_bytes());
        core.partition_objects(p)
            .expect("scan")
            .iter()
            .any(|(k, _)| k.as_ref() == key.as_bytes())
    }

    /// What every replica of `key` holds (N=3), merged by an R=3 read through `at`, as a set.
    pub fn read_all(&mut self, at: NodeId, key: &str) -> BTreeSet<String> {
        let all = RequestOptions {
            r: Some(3),
            ..RequestOptions::default()
        };
        match self.get(at, key, all) {
            ClientReply::Got(g) => strings(&g.values),
            other => panic!("read of every replica at {at} failed: {other:?}"),
        }
    }

    /// Deliver late copies (`keys[i]` with `objects[i]`) to `to` as replica writes from `from`,
    /// each only if `to` replicates the key under its map (N=3); the keys delivered.
    pub fn late_replica_writes(
        &mut self,
        from: NodeId,
        to: NodeId,
        keys: &[String],
        objects: &[dynakv_core::Object],
    ) -> Vec<String> {
        let map = self.nodes[&to].partition_map().clone();
        let mut delivered = Vec::new();
        for (k, o) in keys.iter().zip(objects) {
            let p = map.partition_for_key(k.as_bytes());
            if !map.preference_list(p, 3).contains(&to) {
                continue;
            }
            let node = self.nodes.get_mut(&to).expect("node");
            node.handle(
                0,
                Input::Peer {
                    from,
                    msg: PeerMsg::Replica(ReplicaMsg::Write {
                        op: 7_000 + delivered.len() as u64,
                        partition: p,
                        key: k.clone().into(),
                        object: o.clone(),
                        hint: None,
                    }),
                },
            );
            node.drain_effects();
            delivered.push(k.clone());
        }
        delivered
    }

    /// Read a key only from `at`'s own store (R=1 at a replica, with other links cut), as a set.
    pub fn local(&mut self, at: NodeId, key: &str) -> (BTreeSet<String>, NodeClock) {
        let saved = self.cut.clone();
        self.isolate(at);
        let opts = RequestOptions {
            r: Some(1),
            ..RequestOptions::default()
        };
        let reply = self.get(at, key, opts);
        self.cut = saved;
        self.queue.clear();
        match reply {
            ClientReply::Got(g) => (strings(&g.values), g.context),
            other => panic!("local get at {at} failed: {other:?}"),
        }
    }

    /// Anti-entropy stand-in: push `from`'s stored object for `key` to `to` as a replica write.
    pub fn sync_key(&mut self, from: NodeId, to: NodeId, key: &str) {
        let map = self.nodes[&from].partition_map().clone();
        let p = map.partition_for_key(key.as_bytes());
        let object = self.nodes[&from]
            .partition_objects(p)
            .expect("scan")
            .into_iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, o)| o)
            .expect("key present at source");
        let now = self.now;
        self.nodes.get_mut(&to).expect("node").handle(
            now,
            Input::Peer {
                from,
                msg: ReplicaMsg::Write {
                    op: 0,
                    partition: p,
                    key: Bytes::from(key.to_string()),
                    object,
                    hint: None,
                }
                .into(),
            },
        );
        let _ = self.nodes.get_mut(&to).expect("node").drain_effects();
    }
}

/// Another key of `key`'s partition under `c`'s current map (`other-<i>`).
pub fn key_in_same_partition(c: &Cluster, key: &str) -> String {
    let map = c.map();
    let p = map.partition_for_key(key.as_bytes());
    (0..10_000)
        .map(|i| format!("other-{i}"))
        .find(|k| map.partition_for_key(k.as_bytes()) == p)
        .expect("a key of the same partition")
}

/// The object node `id` stores for `key` in its partition, read straight from its store.
pub fn stored_object(c: &Cluster, id: NodeId, key: &str) -> Option<dynakv_core::Object> {
    use dynakv_core::store::{Space, Store};
    let p = c.map().partition_for_key(key.as_bytes());
    let bytes = c.nodes[&id]
        .store()
        .get(Space::Partition(p), key.as_bytes())
        .ok()??;
    dynakv_proto::codec::decode_object(&bytes).ok()
}

/// The key `user:42` and its primaries (N=3) under `c`'s current map.
pub fn key_with_primaries(c: &Cluster) -> (String, Vec<NodeId>) {
    let map = c.map();
    let key = "user:42".to_string();
    let p = map.partition_for_key(key.as_bytes());
    (key, map.preference_list(p, 3))
}

pub fn strings(values: &[Bytes]) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| String::from_utf8(v.to_vec()).expect("utf8"))
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn vv(entries: &[(Actor, u64)]) -> NodeClock {
    NodeClock::from_vector(&VersionVector::from_entries(entries.to_vec()))
}

pub fn expect_error(reply: ClientReply) -> RequestError {
    match reply {
        ClientReply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

//! Anti-entropy repair cost: time for one full anti-entropy cycle between two replicas that hold
//! K keys and differ in D of them. The claim to check: the cost follows D, not K.
//!
//! Run: `cargo bench -p dynakv-node --bench aae_repair`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dynakv_core::store::MemStore;
use dynakv_core::{CoreConfig, Effect, Input, NodeCore, Object, ReplicaMsg, Value};
use dynakv_proto::dvv::{Actor, NodeClock};
use dynakv_ring::{NodeId, PartitionMap};

const Q: u16 = 8;

struct Pair {
    a: NodeCore<MemStore>,
    b: NodeCore<MemStore>,
    map: PartitionMap,
    now: u64,
    round: u64,
}

fn core(id: u32, map: &PartitionMap) -> NodeCore<MemStore> {
    let cfg = CoreConfig {
        node: NodeId(id),
        n: 2,
        r: 1,
        w: 1,
        tick_ms: 10,
        // Only node 1 starts exchanges (node 2 answers), so a cycle is one pass over Q.
        aae_interval_ms: if id == 1 { 10 } else { 3_600_000 },
        tombstone_grace_ms: 0,
        ..CoreConfig::default()
    };
    NodeCore::open(cfg, MemStore::new(), map.clone(), u64::from(id), 0).expect("open")
}

fn object(i: u64, round: u64) -> Object {
    let actor = Actor {
        node: NodeId(9),
        incarnation: 1,
    };
    let v = Value::Data(Bytes::from(format!("value-{i}-{round}")));
    // A version that supersedes every earlier round: context {actor: round}.
    let mut ctx = NodeClock::new();
    ctx.add_range(actor, 1, round);
    Object::update(&Object::new(), &ctx, actor, v)
        .expect("a dot")
        .0
}

/// Write `key` straight into one node, as a replica write from an outside coordinator.
fn write(core: &mut NodeCore<MemStore>, map: &PartitionMap, now: u64, key: &str, o: Object) {
    let key = Bytes::from(key.to_string());
    core.handle(
        now,
        Input::Peer {
            from: NodeId(9),
            msg: ReplicaMsg::Write {
                op: 0,
                partition: map.partition_for_key(&key),
                key,
                object: o,
                hint: None,
            }
            .into(),
        },
    );
    let _ = core.drain_effects();
}

impl Pair {
    fn new(keys: u64) -> Self {
        let members: BTreeSet<NodeId> = [NodeId(1), NodeId(2)].into_iter().collect();
        let map = PartitionMap::initial(Q, &members).expect("map");
        let mut pair = Pair {
            a: core(1, &map),
            b: core(2, &map),
            map,
            now: 0,
            round: 0,
        };
        for i in 0..keys {
            let o = object(i, 0);
            write(&mut pair.a, &pair.map, 0, &format!("key-{i}"), o.clone());
            write(&mut pair.b, &pair.map, 0, &format!("key-{i}"), o);
        }
        pair.cycle(); // builds the trees
        pair
    }

    /// Run one full anti-entropy cycle (every partition once) and deliver until quiet.
    fn cycle(&mut self) {
        for _ in 0..Q {
            self.now += 10_000;
            let now = self.now;
            // Both nodes tick: node 2's gossip heartbeats keep node 1's failure detector from
            // declaring it down (anti-entropy skips peers believed down).
            self.a.handle(now, Input::Timeout);
            self.b.handle(now, Input::Timeout);
            let mut queue: Vec<(NodeId, Effect)> = self
                .a
                .drain_effects()
                .into_iter()
                .map(|e| (NodeId(1), e))
                .chain(self.b.drain_effects().into_iter().map(|e| (NodeId(2), e)))
                .collect();
            while let Some((from, e)) = queue.pop() {
                let Effect::Send { to, msg } = e else {
                    continue;
                };
                let (target, id) = if to == NodeId(1) {
                    (&mut self.a, NodeId(1))
                } else if to == NodeId(2) {
                    (&mut self.b, NodeId(2))
                } else {
                    continue;
                };
                target.handle(now, Input::Peer { from, msg });
                queue.extend(target.drain_effects().into_iter().map(|e| (id, e)));
            }
        }
    }

    /// Make `diffs` keys differ: newer versions on node 1 only.
    fn diverge(&mut self, diffs: u64, keys: u64) {
        self.round += 1;
        let step = (keys / diffs.max(1)).max(1);
        for d in 0..diffs {
            let i = (d * step) % keys;
            let o = object(i, self.round);
            write(&mut self.a, &self.map, self.now, &format!("key-{i}"), o);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("aae_full_cycle");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for keys in [1_000u64, 10_000, 100_000] {
        let mut pair = Pair::new(keys);
        for diffs in [1u64, 10, 100] {
            group.bench_with_input(
                BenchmarkId::new(format!("keys_{keys}"), format!("diffs_{diffs}")),
                &diffs,
                |b, &diffs| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            pair.diverge(diffs, keys);
                            let start = Instant::now();
                            pair.cycle();
                            total += start.elapsed();
                        }
                        total
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

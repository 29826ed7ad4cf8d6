//! Criterion benchmarks of the node's hot pure paths: key hashing, object (DCC) sync and update
//! with 1-3 siblings, and encode/decode of a replica message.
//!
//! Run: `cargo bench -p dynakv-node --bench hot_paths`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dynakv_core::{Object, PeerMsg, ReplicaMsg, Value};
use dynakv_proto::codec;
use dynakv_proto::dvv::{Actor, NodeClock};
use dynakv_ring::{NodeId, PartitionId, PartitionMap};

fn actor(n: u32) -> Actor {
    Actor {
        node: NodeId(n),
        incarnation: 7 * u64::from(n),
    }
}

/// An object with `siblings` concurrent values of 1 KiB from distinct coordinators.
fn object(siblings: u32) -> Object {
    let mut o = Object::new();
    for i in 0..siblings {
        let v = Value::Data(Bytes::from(vec![b'x'; 1024]));
        let (written, _) =
            Object::update(&Object::new(), &NodeClock::new(), actor(i + 1), v).expect("a dot");
        o = o.sync(&written);
    }
    o
}

fn bench(c: &mut Criterion) {
    let members = (1..=5).map(NodeId).collect();
    let map = PartitionMap::initial(64, &members).expect("map");
    c.bench_function("key_to_partition_16B", |b| {
        let key = b"user:0000012345ab";
        b.iter(|| map.partition_for_key(black_box(key)))
    });

    let mut sync = c.benchmark_group("dvv_sync");
    for s in 1..=3 {
        let a = object(s);
        let (newer, _) = Object::update(
            &a,
            a.context(),
            actor(9),
            Value::Data(Bytes::from_static(b"new")),
        )
        .expect("a dot");
        sync.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter(|| black_box(&a).sync(black_box(&newer)))
        });
    }
    sync.finish();

    let mut update = c.benchmark_group("dvv_update");
    for s in 1..=3 {
        let server = object(s);
        let ctx = server.context().clone();
        update.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter(|| {
                let v = Value::Data(Bytes::from_static(b"v"));
                Object::update(black_box(&server), &ctx, actor(1), v)
            })
        });
    }
    update.finish();

    let mut wire = c.benchmark_group("replica_write_1KiB");
    for s in 1..=3 {
        let msg = PeerMsg::Replica(ReplicaMsg::Write {
            op: 42,
            partition: PartitionId(7),
            key: Bytes::from_static(b"user:0000012345ab"),
            object: object(s),
            hint: None,
        });
        let bytes = codec::encode(&msg).expect("encode");
        wire.bench_with_input(BenchmarkId::new("encode", s), &s, |b, _| {
            b.iter(|| codec::encode(black_box(&msg)))
        });
        wire.bench_with_input(BenchmarkId::new("decode", s), &s, |b, _| {
            b.iter(|| codec::decode::<PeerMsg>(black_box(&bytes)))
        });
    }
    wire.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

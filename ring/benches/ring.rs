//! Benchmarks of the hot paths (hashing, preference lists) and of the planner.
//!
//! Run: `cargo bench -p dynakv-ring -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dynakv_ring::{key_hash, plan, NodeId, PartitionId, PartitionMap, DEFAULT_PARTITIONS};

fn nodes(ids: std::ops::Range<u32>) -> BTreeSet<NodeId> {
    ids.map(NodeId).collect()
}

/// key -> partition, the work done on every request before routing.
fn hashing(c: &mut Criterion) {
    let map = PartitionMap::initial(DEFAULT_PARTITIONS, &nodes(1..6)).expect("valid map");
    let mut group = c.benchmark_group("hash");
    for len in [16usize, 256] {
        let key: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("key_hash", len), &key, |b, key| {
            b.iter(|| key_hash(black_box(key)))
        });
        group.bench_with_input(
            BenchmarkId::new("partition_for_key", len),
            &key,
            |b, key| b.iter(|| map.partition_for_key(black_box(key))),
        );
    }
    group.finish();
}

/// The replicas of a partition, computed on every request (N = 3, Q = 64, 5 nodes).
fn preference_list(c: &mut Criterion) {
    let map = PartitionMap::initial(DEFAULT_PARTITIONS, &nodes(1..6)).expect("valid map");
    c.bench_function("preference_list/q64_m5_n3", |b| {
        let mut p = 0u16;
        b.iter(|| {
            p = (p + 1) % DEFAULT_PARTITIONS;
            map.preference_list(black_box(PartitionId(p)), 3)
        })
    });
}

/// One node joins a 1024-partition cluster of 8 (runs on membership changes only).
fn planner(c: &mut Criterion) {
    let members = nodes(1..9);
    let map = PartitionMap::initial(1024, &members).expect("valid map");
    let mut grown = members.clone();
    grown.insert(NodeId(9));
    c.bench_function("plan/join_q1024_m8_to_9", |b| {
        b.iter(|| plan(black_box(&map), black_box(&grown)).expect("non-empty"))
    });
}

/// The worst case of the planner, O(moves * Q): 63 nodes join a one-node cluster of 4096
/// partitions at once, so almost every partition moves.
fn planner_worst_case(c: &mut Criterion) {
    let map = PartitionMap::initial(4096, &nodes(1..2)).expect("valid map");
    let members = nodes(1..65);
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    group.bench_function("scratch_q4096_m1_to_64", |b| {
        b.iter(|| plan(black_box(&map), black_box(&members)).expect("non-empty"))
    });
    group.finish();
}

criterion_group!(
    benches,
    hashing,
    preference_list,
    planner,
    planner_worst_case
);
criterion_main!(benches);

//! Metadata growth under delete churn (safety issue, item 4): `ops` operations on 100 keys of a
//! 3-node cluster (N=3, R=W=2), 80% read-then-put and 20% read-then-delete, each write with the
//! context just read. Every `ops / 10` operations it prints the largest context (version-vector
//! entries and token bytes) any key has, the stored bytes per node and the actors the cluster
//! has minted under; the nodes restart (new incarnations) every `restart_every` operations, and
//! every 10,000 operations the cluster idles 5 s (so tombstones can pass a 3 s grace).
//!
//! ```sh
//! cargo run --release -p dynakv-simulator --example metadata -- 1000000 keep 100000
//! cargo run --release -p dynakv-simulator --example metadata -- 1000000 reap 100000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::store::{Space, Store};
use dynakv_core::{ClientReply, RequestOptions};
use dynakv_proto::codec::token::encode_context;
use dynakv_simulator::harness::{n, Cluster};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let reap = args.get(2).is_some_and(|a| a == "reap");
    let restart_every: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = if reap { 3_000 } else { 0 };
    });
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let keys: Vec<String> = (0..100).map(|i| format!("key-{i:03}")).collect();
    let mut max_entries = 0;
    let mut max_token = 0;
    println!(
        "mode {} ops {ops} restart_every {restart_every}",
        if reap { "reap" } else { "keep" }
    );
    for i in 1..=ops {
        let key = &keys[rng.gen_range(0..keys.len())];
        let at = n(rng.gen_range(1..=3));
        let got = c.get_ok(at, key);
        max_entries = max_entries.max(got.context.entries().len());
        max_token = max_token.max(encode_context(&got.context).len());
        let reply = if rng.gen_bool(0.2) {
            c.request(
                at,
                dynakv_core::ClientRequest::Delete {
                    key: key.clone().into(),
                    context: got.context,
                    opts: RequestOptions::default(),
                },
            )
        } else {
            c.put(
                at,
                key,
                &format!("v{i}"),
                &got.context,
                RequestOptions::default(),
            )
        };
        assert!(matches!(reply, ClientReply::Written(_)), "{reply:?}");
        if i % 100 == 0 {
            c.advance(50); // background work (anti-entropy, reaping)
        }
        if i % 10_000 == 0 {
            c.run_for(5_000); // an idle moment: tombstones pass their grace and may be reaped
        }
        if restart_every > 0 && i % restart_every == 0 {
            for id in 1..=3 {
                c.restart(n(id));
            }
        }
        if i % (ops / 10).max(1) == 0 {
            let bytes: Vec<usize> = (1..=3)
                .map(|id| {
                    let store = c.nodes[&n(id)].store();
                    let mut total = 0;
                    for p in store.partitions().unwrap() {
                        for (k, v) in store.scan(Space::Partition(p), None, usize::MAX).unwrap() {
                            total += k.len() + v.len();
                        }
                    }
                    total
                })
                .collect();
            let retired: u64 = c.nodes.values().map(|x| x.stats().actor_retirements).sum();
            let reaped: u64 = c.nodes.values().map(|x| x.stats().tombstones_reaped).sum();
            println!(
                "ops {i:>8}: max context {max_entries} entries / {max_token} token bytes; stored bytes per node {bytes:?}; tombstones reaped {reaped}; actor retirements {retired}"
            );
        }
    }
}

//! `dynakv-sim metadata`: how much causal metadata the store keeps under churn (issue 10's
//! measurement: context size and per-partition metadata after 1M operations with 20% deletes on
//! 100 keys). It drives the real cores through the in-memory [`Cluster`] harness, without
//! network faults: clients read a key through a random node and write back with the context
//! they read (a merge), or delete what they read, and every `every` operations the stores of
//! every node are measured. One key, `key-0`, is never deleted: a hot key that lives through
//! the churn of the others, whose context shows what the churn costs a key that stays.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use bytes::Bytes;
use dynakv_core::{ClientReply, ClientRequest, RequestOptions, Value};
use dynakv_ring::{NodeId, PartitionId};

use crate::harness::Cluster;

/// What to run (also the flags of `dynakv-sim metadata`).
#[derive(Debug, Clone, clap::Args)]
pub struct MetadataConfig {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    pub nodes: u32,
    /// Replicas per key.
    #[arg(long, default_value_t = 3)]
    pub n: u8,
    /// Operations (each a read, then a write or a delete).
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: u64,
    /// Keys the clients share.
    #[arg(long, default_value_t = 100)]
    pub keys: u32,
    /// Share of operations that delete what they read.
    #[arg(long, default_value_t = 0.2)]
    pub delete_ratio: f64,
    /// Reap tombstones (3.5 s grace, the least the harness's 1 s request timeout allows); off
    /// keeps them, as production does by default.
    #[arg(long)]
    pub reap: bool,
    /// The seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Measure every this many operations (and at the end).
    #[arg(long, default_value_t = 100_000)]
    pub every: u64,
    /// Restart every node (each start takes a new incarnation, so a new actor) every this many
    /// operations; 0 never.
    #[arg(long, default_value_t = 0)]
    pub restart_every: u64,
}

/// One measurement over every replica's store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataRow {
    /// Operations done so far.
    pub ops: u64,
    /// Stored records (all nodes, all partitions): a key counts once per replica holding it.
    pub records: u64,
    /// Records that hold only tombstones (deleted keys not reaped).
    pub tombstone_records: u64,
    /// Bytes of every stored record (checksum included).
    pub record_bytes: u64,
    /// The largest record.
    pub record_bytes_max: u64,
    /// Version-vector entries of a key's causal context (what a client's token carries): the
    /// largest, and the mean over records.
    pub context_entries_max: u64,
    pub context_entries_mean: f64,
    /// The longest context token a read of one of these records returns, in bytes.
    pub token_bytes_max: u64,
    /// Distinct actors (node lives) named in any stored context.
    pub actors: u64,
    /// Context entries of `key-0`, the key that is never deleted (its largest replica).
    pub hot_key_context_entries: u64,
    /// Actor retirements and tombstones reaped so far (all nodes).
    pub actor_retirements: u64,
    pub tombstones_reaped: u64,
    /// Partition node clocks over all nodes: actor entries and ranges (holes) in total, and the
    /// largest clock's actor entries (what a read of an absent key's fill carries).
    pub clock_actors: u64,
    pub clock_ranges: u64,
    pub clock_actors_max: u64,
}

/// Runs the workload and returns one row per `every` operations (and one at the end).
pub fn run(cfg: &MetadataConfig) -> Vec<MetadataRow> {
    let reap = cfg.reap;
    let w = cfg.n / 2 + 1;
    let mut c = Cluster::with_config(cfg.nodes, cfg.n, w, w, |core| {
        core.tombstone_grace_ms = if reap { 3_500 } else { 0 };
        // Anti-entropy and the scrub are measured elsewhere; keep the run about metadata.
        core.aae_interval_ms = 10_000;
        core.scrub_per_sec = 0;
    });
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let node = |rng: &mut ChaCha8Rng| NodeId(rng.gen_range(1..=cfg.nodes));
    let mut rows = Vec::new();
    for i in 1..=cfg.ops {
        let key = Bytes::from(format!("key-{}", rng.gen_range(0..cfg.keys)));
        let read = c.request(
            node(&mut rng),
            ClientRequest::Get {
                key: key.clone(),
                opts: RequestOptions::default(),
            },
        );
        if let ClientReply::Got(got) = read {
            let hot = key.as_ref() == b"key-0";
            let delete = !hot && !got.values.is_empty() && rng.gen_bool(cfg.delete_ratio);
            let request = if delete {
                ClientRequest::Delete {
                    key,
                    context: got.context,
                    opts: RequestOptions::default(),
                }
            } else {
                ClientRequest::Put {
                    key,
                    value: Bytes::from(format!("v{i}")),
                    context: got.context,
                    opts: RequestOptions::default(),
                }
            };
            c.request(node(&mut rng), request);
        }
        // Background work gets time: handoff, and with reaping the grace runs out.
        if i % 1_000 == 0 {
            c.run_for(if reap { 4_000 } else { 200 });
        }
        if cfg.restart_every > 0 && i % cfg.restart_every == 0 {
            for id in 1..=cfg.nodes {
                c.restart(NodeId(id));
            }
        }
        if i % cfg.every == 0 || i == cfg.ops {
            rows.push(measure(&c, i));
        }
    }
    rows
}

fn measure(c: &Cluster, ops: u64) -> MetadataRow {
    let mut row = MetadataRow {
        ops,
        ..MetadataRow::default()
    };
    let mut actors = std::collections::BTreeSet::new();
    let mut entries_sum = 0u64;
    for core in c.nodes.values() {
        let stats = core.stats();
        row.actor_retirements += stats.actor_retirements;
        row.tombstones_reaped += stats.tombstones_reaped;
        let (_, clock_actors, clock_ranges, _) = core.clock_totals();
        row.clock_actors += clock_actors as u64;
        row.clock_ranges += clock_ranges as u64;
        let partitions = core.partition_map().partition_count();
        for p in 0..partitions {
            if let Some(clock) = core.partition_clock(PartitionId(p)) {
                row.clock_actors_max = row.clock_actors_max.max(clock.actor_count() as u64);
            }
            let Ok(objects) = core.partition_objects(PartitionId(p)) else {
                continue;
            };
            for (key, o) in objects {
                let bytes = dynakv_proto::codec::encode_object(&o).map_or(0, |b| b.len()) as u64;
                let ctx = o.context();
                let entries = o.context().actor_count() as u64;
                if key.as_ref() == b"key-0" {
                    row.hot_key_context_entries = row.hot_key_context_entries.max(entries);
                }
                let token =
                    dynakv_proto::codec::token::bound_context_to_token(&key, ctx).len() as u64;
                row.records += 1;
                row.record_bytes += bytes;
                row.record_bytes_max = row.record_bytes_max.max(bytes);
                row.context_entries_max = row.context_entries_max.max(entries);
                row.token_bytes_max = row.token_bytes_max.max(token);
                entries_sum += entries;
                if o.values().iter().all(|v| matches!(v, Value::Tombstone)) {
                    row.tombstone_records += 1;
                }
                actors.extend(ctx.entries().iter().map(|(a, _)| *a));
            }
        }
    }
    row.actors = actors.len() as u64;
    row.context_entries_mean = if row.records == 0 {
        0.0
    } else {
        entries_sum as f64 / row.records as f64
    };
    row
}

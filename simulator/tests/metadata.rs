//! Issue 10, item 4: under delete churn the causal metadata stays bounded, with tombstones kept
//! (the default) and with reaping on. Contexts name only the N primaries that coordinate, no
//! actor is retired, and every record stays small. (Before the reap floor, every reap retired
//! the reaping nodes' actors and a key that is never deleted gained an entry per retirement;
//! see docs/BENCHMARKS.md.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_simulator::metadata::{run, MetadataConfig, MetadataRow};

/// 30,000 operations on 100 keys, 20% of them deletes, measured every 10,000.
fn churn(reap: bool) -> Vec<MetadataRow> {
    run(&MetadataConfig {
        nodes: 5,
        n: 3,
        ops: 30_000,
        keys: 100,
        delete_ratio: 0.2,
        reap,
        seed: 7,
        every: 10_000,
        restart_every: 0,
    })
}

#[test]
fn with_tombstones_kept_contexts_stay_at_n_entries_under_delete_churn() {
    let rows = churn(false);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r.context_entries_max <= 3, "{r:?}");
        assert!(r.hot_key_context_entries <= 3, "{r:?}");
        assert_eq!(r.actor_retirements, 0, "{r:?}");
        assert_eq!(r.records, 300, "every key on its 3 replicas: {r:?}");
        assert!(r.tombstone_records > 0, "deletes happened: {r:?}");
        assert!(r.record_bytes_max < 128, "{r:?}");
    }
}

#[test]
fn with_reaping_contexts_stay_at_n_entries_and_no_actor_is_retired() {
    let rows = churn(true);
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r.tombstones_reaped > 0, "reaps happened: {r:?}");
        assert_eq!(
            r.actor_retirements, 0,
            "a reap raises the floor instead: {r:?}"
        );
        assert!(r.context_entries_max <= 3, "{r:?}");
        assert!(r.hot_key_context_entries <= 3, "{r:?}");
        assert!(r.record_bytes_max < 128, "{r:?}");
    }
}

//! Availability through outages, in the in-memory harness: sloppy quorum with hints, hinted
//! handoff, anti-entropy after a wipe, read repair, fencing and ownership. (Deletes that stay
//! deleted under tombstone reaping: `reaping_harness.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::store::Store;
use dynakv_core::{ClientReply, RequestError, RequestOptions};
use dynakv_proto::dvv::NodeClock;
use dynakv_ring::NodeId;
use dynakv_simulator::harness::{expect_error, key_with_primaries, n, set, strings, Cluster};

fn w(wv: u8, pw: Option<u8>) -> RequestOptions {
    RequestOptions {
        w: Some(wv),
        pw,
        ..RequestOptions::default()
    }
}

#[test]
fn w3_put_succeeds_through_fallbacks_and_pw2_refuses() {
    let mut c = Cluster::new(5, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    c.isolate(prim[1]);
    c.isolate(prim[2]);
    // The first put discovers the two silent primaries and hands the write to fallbacks.
    let put = match c.put(prim[0], &key, "v1", &NodeClock::new(), w(3, None)) {
        ClientReply::Written(p) => p,
        other => panic!("W=3 put through fallbacks failed: {other:?}"),
    };
    assert_eq!((put.acks, put.primary_acks, put.fallback_acks), (3, 1, 2));
    assert_eq!(c.hints_pending(), 2, "two fallbacks hold a hint each");

    let err = expect_error(c.put(prim[0], &key, "v2", &put.context, w(3, Some(2))));
    assert!(
        matches!(
            err,
            RequestError::PrimariesUnavailable {
                needed: 2,
                available: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("fallbacks do not count"), "{err}");

    // The primaries come back: handoff delivers the hints, which then drain to zero.
    c.heal();
    c.run_for(5_000);
    assert_eq!(c.hints_pending(), 0);
    for p in &prim {
        assert_eq!(c.local(*p, &key).0, set(&["v1"]), "primary {p}");
    }
}

#[test]
fn hints_survive_a_fallback_restart_and_are_resent() {
    let mut c = Cluster::new(5, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    c.isolate(prim[2]);
    c.put_ok(prim[0], &key, "v1", &NodeClock::new());
    c.put_ok(prim[0], &key, "v1b", &NodeClock::new());
    // Force the fallback path: a W=3 write while prim[2] is unreachable.
    let put = c.put(prim[0], &key, "v2", &NodeClock::new(), w(3, None));
    assert!(matches!(put, ClientReply::Written(_)), "{put:?}");
    let holder = *c
        .nodes
        .iter()
        .find(|(_, core)| core.hints_pending().values().sum::<u64>() > 0)
        .expect("a fallback holds a hint")
        .0;
    // Restart the fallback from its (synced) store: the hint is still there.
    let core = c.nodes.remove(&holder).unwrap();
    let (cfg, map) = (core.config().clone(), core.partition_map().clone());
    let mut store = core.into_store();
    store.crash();
    let reopened = dynakv_core::NodeCore::open(cfg, store, map, 99, c.now).unwrap();
    assert_eq!(reopened.hints_pending().get(&prim[2]), Some(&1));
    c.nodes.insert(holder, reopened);
    c.heal();
    c.run_for(5_000);
    assert_eq!(c.hints_pending(), 0);
    assert_eq!(c.local(prim[2], &key).0, set(&["v1", "v1b", "v2"]));
}

#[test]
fn a_wiped_replica_gets_its_data_back_by_anti_entropy() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| cfg.aae_interval_ms = 100);
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        c.put_ok(
            n(1 + (i as u32 % 3)),
            k,
            &format!("v{i}"),
            &NodeClock::new(),
        );
    }
    c.wipe(n(3));
    assert_eq!(c.local(n(3), &keys[0]).0, set(&[]));
    // No reads: only anti-entropy can bring the data back.
    c.run_for(20_000);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.local(n(3), k).0, set(&[&format!("v{i}")]), "key {k}");
    }
    let repaired: u64 = c.nodes.values().map(|n| n.stats().aae_keys_repaired).sum();
    assert!(repaired >= 200, "anti-entropy exchanged {repaired} keys");
}

#[test]
fn anti_entropy_work_follows_the_differences_not_the_data_size() {
    // Two clusters with 50 and 1000 keys, the same 5 keys missed by one replica.
    let mut repaired = Vec::new();
    for total in [50usize, 1000] {
        let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
            cfg.aae_interval_ms = 100;
            cfg.read_repair = false;
        });
        for i in 0..total {
            c.put_ok(n(1), &format!("key-{i}"), "v", &NodeClock::new());
        }
        c.run_for(3_000);
        let before: u64 = c.nodes.values().map(|n| n.stats().aae_keys_repaired).sum();
        c.isolate(n(3));
        for i in 0..5 {
            let ctx = c.get_ok(n(1), &format!("key-{i}")).context;
            c.put_ok(n(1), &format!("key-{i}"), "v2", &ctx);
        }
        c.heal();
        c.run_for(10_000);
        for i in 0..5 {
            assert_eq!(c.local(n(3), &format!("key-{i}")).0, set(&["v2"]));
        }
        let after: u64 = c.nodes.values().map(|n| n.stats().aae_keys_repaired).sum();
        repaired.push(after - before);
    }
    // 20x more data, the same differences: the keys exchanged do not grow with the data.
    assert!(repaired[0] > 0);
    assert!(
        repaired[1] <= repaired[0] * 3,
        "keys exchanged grew with data size: {repaired:?}"
    );
}

#[test]
fn read_repair_is_bounded_per_second() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.read_repair_per_sec = 3;
        cfg.aae_interval_ms = 600_000;
    });
    c.isolate(n(3));
    for i in 0..10 {
        c.put_ok(n(1), &format!("k{i}"), "v", &NodeClock::new());
    }
    c.heal();
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    for i in 0..10 {
        let _ = c.get(n(1), &format!("k{i}"), all);
    }
    let s = c.nodes[&n(1)].stats();
    assert_eq!(s.read_repairs, 3, "{s:?}");
    assert_eq!(s.read_repairs_skipped, 7);
}

/// Item 8 of the safety issue: after a failed sync the node stops serving (it may have lost
/// dirty pages, so a later sync proves nothing), says why, and recovers on restart.
#[test]
fn a_failed_sync_fences_the_node_until_it_restarts() {
    let mut c = Cluster::new(5, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    let broken = prim[1];
    c.nodes
        .get_mut(&broken)
        .unwrap()
        .store_mut()
        .fail_next_syncs(1);
    // The broken replica never acknowledges; the other two make the quorum.
    let put = c.put_ok(prim[0], &key, "v1", &NodeClock::new());
    assert_eq!(put.acks, 2);
    let core = &c.nodes[&broken];
    let reason = core.storage_failure().expect("fenced").to_string();
    assert!(reason.contains("fsync failed"), "{reason}");
    assert_eq!(core.status_report().storage_failure, Some(reason));
    assert_eq!(core.stats().sync_failures, 1);
    // It refuses clients with the reason, even though its disk now "works" again.
    match expect_error(c.get(broken, &key, RequestOptions::default())) {
        RequestError::StorageFailed { node, .. } => assert_eq!(node, broken),
        other => panic!("expected StorageFailed, got {other:?}"),
    }
    // And it takes no part in quorums: a W=3 write needs a fallback.
    let put2 = match c.put(prim[0], &key, "v2", &put.context, w(3, None)) {
        ClientReply::Written(p) => p,
        other => panic!("W=3 put failed: {other:?}"),
    };
    assert!(put2.fallback_acks >= 1, "{put2:?}");
    // After the operator fixes the disk and restarts it, it serves again.
    c.restart(broken);
    assert!(c.nodes[&broken].storage_failure().is_none());
    let got = c.get_ok(broken, &key);
    assert_eq!(strings(&got.values), set(&["v2"]));
}

/// Item 5 of the safety issue: a replica write that reaches a node which no longer replicates
/// the partition (the coordinator's map is stale) is kept as hints for the current replicas and
/// acknowledged as a fallback, never as a primary, and leaves no orphan copy behind.
#[test]
fn a_stale_coordinators_write_to_a_former_owner_counts_as_a_fallback() {
    let mut c = Cluster::new(4, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    let former = prim[2];
    // `former` has moved on to a map without itself; the coordinator still routes by the old one.
    let others: std::collections::BTreeSet<NodeId> =
        (1..=4).map(n).filter(|id| *id != former).collect();
    let newer = dynakv_ring::PartitionMap::initial(64, &others).unwrap();
    c.nodes
        .get_mut(&former)
        .unwrap()
        .set_partition_map(newer.clone());
    let put = match c.put(prim[0], &key, "v1", &NodeClock::new(), w(3, None)) {
        ClientReply::Written(p) => p,
        other => panic!("W=3 put failed: {other:?}"),
    };
    assert_eq!((put.acks, put.primary_acks, put.fallback_acks), (3, 2, 1));
    let core = &c.nodes[&former];
    assert_eq!(core.stats().non_owner_writes, 1);
    let p = newer.partition_for_key(key.as_bytes());
    let held = core
        .store()
        .scan(dynakv_core::store::Space::Partition(p), None, 10)
        .unwrap();
    assert!(
        held.is_empty(),
        "no orphan copy in a partition it does not replicate"
    );
    let owners: Vec<NodeId> = newer.preference_list(p, 3);
    let hinted: Vec<NodeId> = core.hints_pending().keys().copied().collect();
    assert!(
        !hinted.is_empty() && hinted.iter().all(|h| owners.contains(h)),
        "{hinted:?}"
    );
    // And PW=3 cannot be met by it.
    let err = expect_error(c.put(prim[0], &key, "v2", &put.context, w(3, Some(3))));
    assert!(
        matches!(err, RequestError::PrimariesUnavailable { .. }),
        "{err:?}"
    );
}

/// A read's coordinator repairs its own stale copy when the read ends. If the map moved on
/// meanwhile and the coordinator no longer replicates the key, that repair must go where a
/// remote one would (hints for the current replicas), not into a partition store that nobody
/// reads, transfers or repairs (the simulator's `orphan-copy` check found this at seed 808).
#[test]
fn a_read_repair_at_a_coordinator_that_lost_the_partition_leaves_no_orphan_copy() {
    let mut c = Cluster::new(4, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    let coord = prim[0];
    // The coordinator misses the write, so its own copy is stale.
    c.isolate(coord);
    c.put_ok(prim[1], &key, "v1", &NodeClock::new());
    c.heal();
    // The read waits for prim[2] until its deadline, so it ends (and repairs) later.
    c.cut_both(coord, prim[2]);
    let got = c.get_ok(coord, &key);
    assert_eq!(strings(&got.values), set(&["v1"]));
    // Before the read ends, the coordinator moves to a map without itself.
    let others: std::collections::BTreeSet<NodeId> =
        (1..=4).map(n).filter(|id| *id != coord).collect();
    let newer = dynakv_ring::PartitionMap::initial(64, &others).unwrap();
    c.nodes
        .get_mut(&coord)
        .unwrap()
        .set_partition_map(newer.clone());
    c.advance(1_500);
    let core = &c.nodes[&coord];
    assert!(
        core.stats().read_repairs >= 1,
        "the read repaired something"
    );
    let p = newer.partition_for_key(key.as_bytes());
    let held = core
        .store()
        .scan(dynakv_core::store::Space::Partition(p), None, 10)
        .unwrap();
    assert!(held.is_empty(), "orphan copy left behind: {held:?}");
    assert_eq!(core.stats().non_owner_writes, 1, "hinted on instead");
}

/// A copy of a partition left on a node that no longer replicates it, with no transfer under way
/// (a drop that failed on a full disk, or that a crash undid after the transfer's "done" record
/// was synced), may hold the only copy of a write. The sweep hands it to the current replicas
/// and drops it only once they confirmed.
#[test]
fn a_stray_partition_copy_is_handed_over_then_dropped() {
    let mut c = Cluster::new(4, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    let stray = (1..=4).map(n).find(|id| !prim.contains(id)).unwrap();
    let p = c.map().partition_for_key(key.as_bytes());
    let space = dynakv_core::store::Space::Partition(p);
    let v1 = c.put_ok(prim[0], &key, "v1", &NodeClock::new());
    // v2 reaches only prim[0]; its record then survives only as the stray copy.
    c.isolate(prim[0]);
    c.put_w1(prim[0], &key, "v2", &v1.context);
    c.heal();
    let record = c.nodes[&prim[0]]
        .store()
        .get(space, key.as_bytes())
        .unwrap()
        .unwrap();
    c.nodes
        .get_mut(&stray)
        .unwrap()
        .store_mut()
        .put(space, key.as_bytes(), &record)
        .unwrap();
    // prim[0]'s disk loses the record and its partition clock with it (a clock that still
    // named v2 would rightly drop the stray copy as old), and the node restarts.
    let store = c.nodes.get_mut(&prim[0]).unwrap().store_mut();
    store.remove(space, key.as_bytes()).unwrap();
    let clock_key = [b'c', (p.0 >> 8) as u8, p.0 as u8];
    store
        .remove(dynakv_core::store::Space::Clocks, &clock_key)
        .unwrap();
    store.sync().unwrap();
    c.restart(prim[0]);
    c.run_for(8_000);
    let core = &c.nodes[&stray];
    assert_eq!(core.stats().stray_partitions, 1);
    assert!(
        core.store().scan(space, None, 1).unwrap().is_empty(),
        "dropped"
    );
    for r in &prim {
        let (values, _) = c.local(*r, &key);
        assert_eq!(values, set(&["v2"]), "replica {r} got the stray copy");
    }
}

/// A hint written again while a batch that carried it is in flight outlives that batch's ack,
/// even with the same bytes: the copy that came in may be the only one left. Two nodes whose
/// maps disagree hand a hint to each other, and each dropped its copy on the other's ack, so an
/// acknowledged write was lost (N=1 seed 270 of the simulator).
#[test]
fn a_hint_written_again_while_its_batch_is_in_flight_outlives_the_ack() {
    use dynakv_core::{HandoffItem, HandoffMsg, PeerMsg};
    let mut c = Cluster::new(5, 3, 2, 2);
    let (key, prim) = key_with_primaries(&c);
    c.isolate(prim[2]);
    let put = c.put(prim[0], &key, "v", &NodeClock::new(), w(3, None));
    assert!(matches!(put, ClientReply::Written(_)), "{put:?}");
    let holder = *c
        .nodes
        .iter()
        .find(|(_, core)| core.hints_pending().get(&prim[2]) == Some(&1))
        .expect("a fallback holds a hint for the isolated primary")
        .0;
    let p = c.map().partition_for_key(key.as_bytes());
    let object = dynakv_simulator::harness::stored_object(&c, prim[0], &key).expect("stored");
    // The owner takes the handoff batch; its ack is held on the way back.
    c.heal();
    c.cut_one(prim[2], holder);
    c.record(true);
    c.run_for(300);
    let ack = c
        .recorded
        .iter()
        .find(|(from, to, m)| {
            *from == prim[2]
                && *to == holder
                && matches!(m, PeerMsg::Handoff(HandoffMsg::BatchAck { .. }))
        })
        .cloned()
        .expect("the owner acknowledged the batch");
    c.record(false);
    // The same hint comes back to the holder while its batch is in flight.
    let item = HandoffItem {
        partition: p,
        key: key.clone().into(),
        object,
    };
    c.inject(
        prim[1],
        holder,
        PeerMsg::Handoff(HandoffMsg::Batch {
            batch: 4242,
            items: vec![item],
        }),
    );
    c.heal();
    let (from, to, msg) = ack;
    c.inject(from, to, msg);
    assert_eq!(
        c.nodes[&holder].hints_pending().get(&prim[2]),
        Some(&1),
        "the hint written again was dropped on the ack of the batch sent before"
    );
}

/// With N=1, hints for a node removed from the cluster are redirected to the partition's new
/// only replica. When that is the node holding the hints, the hint is merged into its own store
/// and that is all: there is no other replica to hint, which is not a rejection (it used to be
/// set aside in quarantine as well, and could retire the node's actor for nothing).
#[test]
fn with_n1_a_hint_redirected_to_its_holder_is_stored_not_quarantined() {
    let mut c = Cluster::new(2, 1, 1, 1);
    c.run_for(500);
    let key = c.keys_only_on(n(1), 1).remove(0);
    c.isolate(n(1));
    c.hint_through(n(2), &key, "v");
    assert!(c.hints_pending() > 0, "node 2 holds a hint");
    c.remove_node(n(2), n(1));
    c.run_for(5_000);
    let core = &c.nodes[&n(2)];
    assert!(
        core.partition_map().partitions_of(n(1)).is_empty(),
        "node 2 owns everything"
    );
    assert_eq!(c.hints_pending(), 0, "the hint was redirected");
    assert_eq!(core.stats().quarantined, 0, "nothing was set aside");
    assert_eq!(strings(&c.get_ok(n(2), &key).values), set(&["v"]));
}

/// Item 7 of the safety issue, on the redirect path: a hint for a removed node that the holder
/// cannot store (its disk refuses the partition's writes) stays a hint, and is redirected once
/// the disk takes writes again; it is never removed unstored.
#[test]
fn a_redirected_hint_the_disk_refuses_is_kept_and_redirected_later() {
    use dynakv_core::store::Space;
    let mut c = Cluster::new(2, 1, 1, 1);
    c.run_for(500);
    let key = c.keys_only_on(n(1), 1).remove(0);
    let p = c.map().partition_for_key(key.as_bytes());
    c.isolate(n(1));
    c.hint_through(n(2), &key, "v");
    assert_eq!(c.hints_pending(), 1);
    let refuse = |c: &mut Cluster, spaces: &[Space]| {
        c.nodes
            .get_mut(&n(2))
            .unwrap()
            .store_mut()
            .refuse_spaces(spaces)
    };
    refuse(&mut c, &[Space::Partition(p)]);
    c.remove_node(n(2), n(1));
    c.run_for(5_000);
    assert_eq!(c.hints_pending(), 1, "kept while the disk refuses it");
    assert!(!c.stores_key(n(2), &key));
    refuse(&mut c, &[]);
    c.run_for(5_000);
    assert_eq!(c.hints_pending(), 0, "redirected");
    assert_eq!(strings(&c.get_ok(n(2), &key).values), set(&["v"]));
}

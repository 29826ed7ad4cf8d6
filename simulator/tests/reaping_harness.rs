//! Deletes that stay deleted when tombstones are reaped, in the in-memory harness: the
//! partition clocks (late copies dropped however late: held hints, removed nodes, reads open
//! across the reap; the fill of keys a replica no longer holds), reaping with no vote, the
//! snapshot horizon of read repairs, and the floor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::{ClientReply, RequestOptions};
use dynakv_proto::dvv::NodeClock;
use dynakv_simulator::harness::{key_with_primaries, n, set, strings, Cluster};

/// Tombstones reaped so far, over every node.
fn reaped(c: &Cluster) -> u64 {
    c.nodes.values().map(|n| n.stats().tombstones_reaped).sum()
}

/// Delete `key` through `at` with `context` (default options); the delete must be acknowledged.
fn delete(c: &mut Cluster, at: dynakv_ring::NodeId, key: &str, context: NodeClock) {
    let reply = c.request(
        at,
        dynakv_core::ClientRequest::Delete {
            key: key.to_string().into(),
            context,
            opts: RequestOptions::default(),
        },
    );
    assert!(matches!(reply, ClientReply::Written(_)), "{reply:?}");
}

/// In a 4-node cluster with N=3: a key that node 4 does not replicate and whose last primary
/// is node 3 (so node 4 is the fallback that stands in for node 3).
fn key_hinted_from_3_to_4(c: &Cluster) -> String {
    let map = c.map();
    (0..10_000)
        .map(|i| format!("key-{i}"))
        .find(|k| {
            let prim = map.preference_list(map.partition_for_key(k.as_bytes()), 3);
            !prim.contains(&n(4)) && prim[2] == n(3)
        })
        .expect("a key that node 4 does not replicate")
}

#[test]
fn a_deleted_key_stays_deleted_through_hints_partitions_and_reaping() {
    let mut c = Cluster::with_config(5, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 100;
    });
    let (key, prim) = key_with_primaries(&c);
    let ctx = c.put_ok(prim[0], &key, "old", &NodeClock::new()).context;
    // prim[2] misses the delete; with W=3 a fallback takes it as a hint.
    c.isolate(prim[2]);
    let g = c.get_ok(prim[0], &key);
    assert_eq!(g.context, ctx);
    let opts = RequestOptions {
        w: Some(3),
        ..RequestOptions::default()
    };
    let reply = c.request(
        prim[0],
        dynakv_core::ClientRequest::Delete {
            key: key.clone().into(),
            context: g.context.clone(),
            opts,
        },
    );
    assert!(matches!(reply, ClientReply::Written(_)), "{reply:?}");
    // prim[2] still holds "old"; it comes back, hints are handed off, anti-entropy runs, and
    // the reaper removes the tombstone for good once everyone agrees.
    assert_eq!(c.local(prim[2], &key).0, set(&["old"]));
    c.heal();
    c.run_for(15_000);
    assert_eq!(c.hints_pending(), 0);
    assert!(reaped(&c) >= 1, "the tombstone was never reaped");
    for node in &prim {
        assert_eq!(
            c.local(*node, &key).0,
            set(&[]),
            "node {node} resurrected a value"
        );
    }
    // After reaping, a new blind write is a fresh value and is not swallowed by old history.
    let fresh = c.put_ok(prim[1], &key, "new", &NodeClock::new());
    assert!(fresh.dot.is_some());
    c.run_for(2_000);
    assert_eq!(c.read_all(prim[0], &key), set(&["new"]));
}

/// No vote: each replica removes the tombstone on its own clock, so a member that cannot be
/// reached (here one that holds no copy) blocks nothing, and nothing comes back when it returns.
#[test]
fn replicas_reap_on_their_own_while_a_member_is_down() {
    let mut c = Cluster::with_config(4, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
    });
    let ctx = c.put_ok(n(1), "k", "v", &NodeClock::new()).context;
    delete(&mut c, n(1), "k", ctx);
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let outsider = map
        .members()
        .into_iter()
        .find(|m| !map.preference_list(p, 3).contains(m))
        .expect("a non-replica");
    c.isolate(outsider);
    c.run_for(8_000);
    assert!(reaped(&c) >= 3, "every replica reaps without the outsider");
    c.heal();
    c.run_for(5_000);
    assert_eq!(strings(&c.get_ok(n(1), "k").values), set(&[]));
}

/// Item 3 of the safety issue: a read may stay open for as long as its own deadline (up to 10
/// minutes per request, far past any delay), holding a copy of the key read before a delete.
/// The replicas reap while it is open (nothing waits for it), and nothing comes back when it
/// ends: its repair, if one were sent, carries versions every replica's clock drops.
#[test]
fn a_read_open_across_a_reap_brings_nothing_back() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
    });
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let prefs = map.preference_list(p, 3);
    let (owner, coord, other) = (prefs[0], prefs[1], prefs[2]);
    let ctx = c.put_ok(owner, "k", "v", &NodeClock::new()).context;
    // An R=3 read with a 60 s deadline; one replica's answer never reaches it.
    c.cut_one(other, coord);
    let read = c.submit(
        coord,
        dynakv_core::ClientRequest::Get {
            key: "k".into(),
            opts: RequestOptions {
                r: Some(3),
                timeout_ms: Some(60_000),
                ..RequestOptions::default()
            },
        },
    );
    c.run_for(500);
    delete(&mut c, owner, "k", ctx);
    c.run_for(20_000);
    assert!(
        c.take_reply(read).is_none(),
        "the read should still be open"
    );
    assert!(reaped(&c) >= 2, "reaped while a read of the key was open");
    c.heal();
    c.run_for(45_000);
    assert!(
        c.take_reply(read).is_some(),
        "the read ends at its deadline"
    );
    c.run_for(5_000);
    for id in prefs {
        assert_eq!(c.local(id, "k").0, set(&[]), "node {id} holds a value");
    }
    assert_eq!(strings(&c.get_ok(owner, "k").values), set(&[]));
}

/// A get with a long per-request timeout that never gets R replies repairs at its deadline,
/// from replies read back then; past the snapshot horizon (the node's request timeout plus a
/// second) that copy may predate a delete whose tombstone was reaped meanwhile, so the repair
/// is skipped. Within the horizon a repair still goes out (`read_repair_brings_a_stale_replica_up_to_date`).
#[test]
fn a_read_repair_is_never_sent_from_replies_older_than_the_snapshot_horizon() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.aae_interval_ms = 600_000;
    });
    c.isolate(n(3));
    c.put_ok(n(1), "k", "v", &NodeClock::new());
    c.heal();
    assert_eq!(c.local(n(3), "k").0, set(&[]));
    // Node 2's answers never reach node 1: R=3 is out of reach until the 30 s deadline.
    c.cut_one(n(2), n(1));
    let id = c.submit(
        n(1),
        dynakv_core::ClientRequest::Get {
            key: "k".into(),
            opts: RequestOptions {
                r: Some(3),
                timeout_ms: Some(30_000),
                ..RequestOptions::default()
            },
        },
    );
    c.run_for(31_000);
    assert!(
        matches!(c.take_reply(id), Some(ClientReply::Error(_))),
        "the get times out"
    );
    let s = c.nodes[&n(1)].stats();
    assert_eq!(s.read_repairs, 0, "{s:?}");
    assert!(s.read_repairs_skipped >= 1, "{s:?}");
    assert_eq!(
        c.local(n(3), "k").0,
        set(&[]),
        "no repair from a 30 s old read"
    );
}

/// A client can make up a counter of a node's actor (up to the token limit). The node refuses
/// it directly, but another coordinator cannot tell and stores it in the key's context. Were
/// that tombstone reaped, the reaping node's mint floor would rise to the made-up counter and
/// every later write it coordinates in the partition would overflow; it is never reaped
/// instead (no partition clock covers a dot nobody stored), and writes go on.
#[test]
fn a_made_up_counter_in_a_reaped_context_does_not_block_the_partition() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
    });
    let a = c.actor(n(1));
    let near =
        dynakv_simulator::harness::vv(&[(a, dynakv_proto::codec::token::MAX_TOKEN_COUNTER - 1)]);
    // Node 1 refuses a context naming a counter of its own it never minted...
    let err = dynakv_simulator::harness::expect_error(c.put(
        n(1),
        "k",
        "made-up",
        &near,
        RequestOptions::default(),
    ));
    assert!(err.to_string().contains("bad context"), "{err}");
    // ...but node 2 cannot tell, and its object carries the counter to node 1.
    let put = c.put_ok(n(2), "k", "made-up", &near);
    delete(&mut c, n(2), "k", put.context);
    c.run_for(8_000);
    // A context naming a counter nobody minted is never covered by a partition clock, so that
    // tombstone stays (safe; it costs one record). The floor never sees the made-up counter.
    assert_eq!(reaped(&c), 0, "a made-up dot can never be covered");
    let other = dynakv_simulator::harness::key_in_same_partition(&c, "k");
    c.put_ok(n(1), &other, "fine", &NodeClock::new());
    c.put_ok(n(1), "k", "again", &NodeClock::new());
}

/// A node removed by the operator may still be running, cut off, with a hint holding an old
/// value of a deleted key; it hands the hint over when it is reachable again, long after the
/// replicas reaped the tombstone (before the partition clocks, the reap waited for it, and
/// before that a late hint brought the value back). The owner's clock drops the old version.
#[test]
fn a_removed_node_cut_off_with_an_old_hint_cannot_bring_the_value_back() {
    let mut c = Cluster::with_config(4, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.removed_linger_ms = 1_000;
        cfg.aae_interval_ms = 200;
    });
    let key = key_hinted_from_3_to_4(&c);
    // Node 3 misses the write; node 4 keeps it as a hint for node 3.
    c.isolate(n(3));
    let put = c.put_ok(n(1), &key, "old", &NodeClock::new());
    c.run_for(1_000);
    assert_eq!(c.hints_pending(), 1, "node 4 holds the hint");
    // Node 4 is cut off for good (as the operator believes, it is dead) and removed.
    c.isolate(n(4));
    c.heal_node(n(3));
    c.isolate(n(4));
    delete(&mut c, n(1), &key, put.context);
    let remove = dynakv_core::ClientRequest::Admin(dynakv_core::AdminRequest::Remove {
        node: n(4),
        force: true,
    });
    assert!(matches!(c.request(n(1), remove), ClientReply::Admin(_)));
    // Every replica removes the key while node 4 still holds the hint (node 3, which never
    // stored "old", learns its dot from the others' clocks).
    c.run_for(15_000);
    assert!(reaped(&c) >= 2, "reaped while node 4 was away");
    for i in 1..=3 {
        assert!(
            dynakv_simulator::harness::stored_object(&c, n(i), &key).is_none(),
            "node {i} still holds a record of the key"
        );
    }
    // Node 4 comes back, learns it was removed, and hands its hint over: it is dropped.
    c.heal();
    c.run_for(40_000);
    assert_eq!(c.hints_pending(), 0, "node 4 handed its hint over");
    let dropped: u64 = (1..=3)
        .map(|i| c.nodes[&n(i)].stats().late_versions_dropped)
        .sum();
    assert!(dropped >= 1, "no clock dropped the late hint");
    for i in 1..=3 {
        assert_eq!(
            c.local(n(i), &key).0,
            set(&[]),
            "node {i} brought the value back"
        );
    }
    assert_eq!(strings(&c.get_ok(n(1), &key).values), set(&[]));
}

/// A hint batch can still be on the wire (a resend, a copy the network duplicated) after its
/// owner acknowledged it and the holder removed the record. Here node 3 gets the write by
/// handoff, every replica reaps after the delete, and then the old batch arrives again: the
/// clock drops it.
#[test]
fn a_hint_batch_arriving_again_after_the_reap_is_dropped() {
    use dynakv_core::store::{Space, Store};
    use dynakv_core::{HandoffMsg, Input, PeerMsg};
    let mut c = Cluster::with_config(4, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 200;
    });
    let key = key_hinted_from_3_to_4(&c);
    let p = c.map().partition_for_key(key.as_bytes());
    // Node 3 misses the write; node 4 keeps it as a hint for it.
    c.isolate(n(3));
    let put = c.put_ok(n(1), &key, "v", &NodeClock::new());
    c.run_for(1_000);
    let mut hint_key = 3u32.to_be_bytes().to_vec();
    hint_key.extend_from_slice(&p.0.to_be_bytes());
    hint_key.extend_from_slice(key.as_bytes());
    let bytes = c.nodes[&n(4)]
        .store()
        .get(Space::Hints, &hint_key)
        .unwrap()
        .expect("node 4 holds the hint");
    let hint = dynakv_proto::codec::decode_object(&bytes).unwrap();
    c.heal();
    c.run_for(2_000);
    assert_eq!(c.hints_pending(), 0);
    assert_eq!(c.local(n(3), &key).0, set(&["v"]), "node 3 got the hint");
    delete(&mut c, n(1), &key, put.context);
    c.run_for(20_000);
    assert!(reaped(&c) >= 3, "reaped on every replica");
    // The old batch lands again on node 3.
    let node = c.nodes.get_mut(&n(3)).unwrap();
    node.handle(
        0,
        Input::Peer {
            from: n(4),
            msg: PeerMsg::Handoff(HandoffMsg::Batch {
                batch: 77,
                items: vec![dynakv_core::HandoffItem {
                    partition: p,
                    key: key.clone().into(),
                    object: hint,
                }],
            }),
        },
    );
    node.drain_effects();
    assert_eq!(
        c.local(n(3), &key).0,
        set(&[]),
        "node 3 took the old hint back"
    );
    assert!(c.nodes[&n(3)].stats().late_versions_dropped >= 1);
    assert_eq!(strings(&c.get_ok(n(1), &key).values), set(&[]));
}

/// Replay `object` of `key` into every node as a replica write from node `from`: late copies
/// of an old version, as a read repair or a replica write held on its links for minutes would
/// arrive (no grace period or vote can bound such a delay).
fn replay_everywhere(
    c: &mut Cluster,
    from: dynakv_ring::NodeId,
    key: &str,
    object: &dynakv_core::Object,
) {
    let ids: Vec<dynakv_ring::NodeId> = c.nodes.keys().copied().filter(|id| *id != from).collect();
    for id in ids {
        deliver_write(c, from, id, key, object);
    }
}

/// Deliver `object` of `key` to node `to` as a replica write from `from`, right now.
fn deliver_write(
    c: &mut Cluster,
    from: dynakv_ring::NodeId,
    to: dynakv_ring::NodeId,
    key: &str,
    object: &dynakv_core::Object,
) {
    use dynakv_core::{Input, PeerMsg, ReplicaMsg};
    let p = c.map().partition_for_key(key.as_bytes());
    let node = c.nodes.get_mut(&to).unwrap();
    node.handle(
        0,
        Input::Peer {
            from,
            msg: PeerMsg::Replica(ReplicaMsg::Write {
                op: 9_000 + u64::from(to.0),
                partition: p,
                key: key.to_string().into(),
                object: object.clone(),
                hint: None,
            }),
        },
    );
    node.drain_effects();
}

/// Issue 10, item 3, by construction: once a tombstone is reaped, a copy of a version the
/// delete superseded can arrive at every replica however late, and nothing comes back. Each
/// replica's partition clock holds the old version's dot (it stored it, then saw it superseded),
/// so the node-clock check drops the copy; no delay bound is involved. With the planted bug
/// `skip-node-clock-check` the old value is back on every replica.
#[test]
fn late_copies_of_a_reaped_value_are_dropped_by_the_partition_clocks() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| cfg.tombstone_grace_ms = 3_000);
    let put = c.put_ok(n(1), "k", "old", &NodeClock::new());
    c.run();
    let old = dynakv_simulator::harness::stored_object(&c, n(1), "k").unwrap();
    assert!(old.holds(&put.dot.unwrap()));
    delete(&mut c, n(1), "k", put.context);
    c.run_for(20_000);
    assert!(reaped(&c) >= 3, "reaped on every replica");
    replay_everywhere(&mut c, n(1), "k", &old);
    for id in [n(2), n(3)] {
        assert_eq!(
            c.local(id, "k").0,
            set(&[]),
            "node {id} took the old copy back"
        );
    }
    let dropped: u64 = c
        .nodes
        .values()
        .map(|x| x.stats().late_versions_dropped)
        .sum();
    assert!(dropped >= 2, "the clocks dropped the copies ({dropped})");
    assert_eq!(strings(&c.get_ok(n(1), "k").values), set(&[]));
}

/// A replica that missed a delete (or lost it in a power loss) keeps the old value after the
/// others reaped the tombstone. Their answer for the key they no longer hold is the empty object
/// filled with their partition clock's base, which covers the old value's dot: a read drops it
/// and repairs the lagging replica, and anti-entropy does the same without a read.
#[test]
fn a_replica_that_missed_the_delete_is_repaired_by_the_others_fill() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 200;
    });
    let put = c.put_ok(n(1), "k", "old", &NodeClock::new());
    c.run();
    let p = c.map().partition_for_key(b"k");
    let space = dynakv_core::store::Space::Partition(p);
    let bytes = dynakv_core::store::Store::get(c.nodes[&n(3)].store(), space, b"k")
        .unwrap()
        .unwrap();
    delete(&mut c, n(1), "k", put.context);
    c.run_for(20_000);
    assert!(reaped(&c) >= 3, "reaped on every replica");
    // Node 3's disk goes back to before the delete (a power loss of synced writes).
    let store = c.nodes.get_mut(&n(3)).unwrap().store_mut();
    dynakv_core::store::Store::put(store, space, b"k", &bytes).unwrap();
    assert_eq!(c.local(n(3), "k").0, set(&["old"]));
    assert_eq!(
        c.read_all(n(1), "k"),
        set(&[]),
        "the fill hides the old value"
    );
    // Without reads, anti-entropy alone: put it back again and wait.
    let store = c.nodes.get_mut(&n(3)).unwrap().store_mut();
    dynakv_core::store::Store::put(store, space, b"k", &bytes).unwrap();
    c.run_for(20_000);
    assert_eq!(
        c.local(n(3), "k").0,
        set(&[]),
        "anti-entropy repaired node 3"
    );
}

/// A tombstone no clock can cover (a made-up counter) asks anti-entropy to compare its
/// partition out of turn at every try; with no delay that is every tick. The regular round
/// must go on regardless, or a replica that missed a write elsewhere is never repaired (the
/// round used to wait for the out-of-turn queue to empty, which never happened).
#[test]
fn out_of_turn_compares_never_starve_the_anti_entropy_round() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 1;
        cfg.aae_interval_ms = 100;
        cfg.read_repair = false;
    });
    let a = c.actor(n(1));
    let near =
        dynakv_simulator::harness::vv(&[(a, dynakv_proto::codec::token::MAX_TOKEN_COUNTER - 1)]);
    let put = c.put_ok(n(2), "k", "made-up", &near);
    delete(&mut c, n(2), "k", put.context);
    c.run_for(1_000);
    let pk = c.map().partition_for_key(b"k");
    let other = (0..10_000)
        .map(|i| format!("j-{i}"))
        .find(|k| c.map().partition_for_key(k.as_bytes()) != pk)
        .expect("a key of another partition");
    c.isolate(n(3));
    c.put_ok(n(1), &other, "v", &NodeClock::new());
    c.heal();
    c.run_for(30_000);
    assert_eq!(
        c.local(n(3), &other).0,
        set(&["v"]),
        "anti-entropy never compared the other partition"
    );
}

/// A wiped replica rejoins with no clock, so it takes a late copy of a reaped value like a new
/// one. The other replicas answer for the key with their fills, which cover the old version: a
/// quorum read drops it, and anti-entropy repairs the wiped replica (its clock learns the dead
/// dot from theirs, and the context-only record the repair left goes).
#[test]
fn a_wiped_replica_that_takes_a_late_copy_is_repaired_by_the_others_fills() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 200;
    });
    let put = c.put_ok(n(1), "k", "old", &NodeClock::new());
    c.run();
    let old = dynakv_simulator::harness::stored_object(&c, n(1), "k").unwrap();
    delete(&mut c, n(1), "k", put.context);
    c.run_for(20_000);
    assert!(reaped(&c) >= 3, "reaped on every replica");
    c.wipe(n(3));
    c.run_for(500);
    // Node 3 alone gets an old copy, as a replica write held since before the delete.
    deliver_write(&mut c, n(1), n(3), "k", &old);
    assert_eq!(
        c.local(n(3), "k").0,
        set(&["old"]),
        "a wiped node has no clock"
    );
    assert_eq!(
        c.read_all(n(1), "k"),
        set(&[]),
        "the fills hide the old value"
    );
    c.run_for(20_000);
    assert_eq!(c.local(n(3), "k").0, set(&[]), "node 3 repaired");
    assert!(
        dynakv_simulator::harness::stored_object(&c, n(3), "k").is_none(),
        "node 3 removed the context-only record the repair left"
    );
}

/// Found in review of reaping without votes: nodes 1 and 2 remove the tombstone while node 3,
/// which missed the delete, still holds the old value; then the key is written again. The
/// new record on nodes 1 and 2 must still supersede the old value (it starts from their fill,
/// which covers it): otherwise node 3 keeps the old value as a sibling of the new one when the
/// new record reaches it, and reads return the deleted value until anti-entropy catches up.
#[test]
fn a_key_written_again_after_the_reap_still_supersedes_a_lagging_replicas_old_value() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 600_000;
        cfg.read_repair = false;
    });
    // The old value is node 2's dot, the new one node 1's: a write's context covers its own
    // actor's earlier counters anyway, so only another node's old dot shows the hole.
    let put = c.put_ok(n(2), "k", "old", &NodeClock::new());
    c.run();
    c.isolate(n(3));
    delete(&mut c, n(1), "k", put.context);
    c.run_for(10_000);
    assert!(reaped(&c) >= 2, "nodes 1 and 2 reaped");
    assert_eq!(
        c.local(n(3), "k").0,
        set(&["old"]),
        "node 3 missed the delete"
    );
    c.put_ok(n(1), "k", "new", &NodeClock::new());
    c.heal();
    c.run_for(3_000);
    c.sync_key(n(1), n(3), "k");
    assert_eq!(
        c.local(n(3), "k").0,
        set(&["new"]),
        "the new record brought the deleted value back as a sibling"
    );
    assert_eq!(c.read_all(n(2), "k"), set(&["new"]));
}

/// Found in review: a clock write can fail (a full disk) after the clock in memory gained a
/// dot, here a dead one learned from a peer. The reaper must not remove a tombstone on the
/// strength of that memory alone: after a crash the clock on disk would no longer cover the
/// removed tombstone, and the node's fill would stop superseding the old value. It writes the
/// clock first.
#[test]
fn a_reap_never_rests_on_a_clock_that_is_not_on_disk() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.tombstone_grace_ms = 3_000;
        cfg.aae_interval_ms = 200;
        cfg.read_repair = false;
    });
    // Node 3 never stores "old" (its dot reaches its clock only as a peer's dead claim).
    c.isolate(n(3));
    let put = c.put_ok(n(2), "k", "old", &NodeClock::new());
    let old_dot = put.dot.expect("a dot");
    c.run_for(1_000);
    c.heal();
    c.run_for(1_000);
    delete(&mut c, n(1), "k", put.context);
    c.run_for(500);
    let p = c.map().partition_for_key(b"k");
    // Node 3's disk fills up: the dead claim lands in its clock in memory only.
    c.nodes.get_mut(&n(3)).unwrap().store_mut().set_full(true);
    c.run_for(4_000);
    c.nodes.get_mut(&n(3)).unwrap().store_mut().set_full(false);
    c.run_for(8_000);
    c.restart(n(3));
    c.run_for(100);
    let covered = c.nodes[&n(3)]
        .partition_clock(p)
        .is_some_and(|clock| clock.contains(&old_dot));
    let holds_record = dynakv_simulator::harness::stored_object(&c, n(3), "k").is_some();
    assert!(
        covered || holds_record,
        "node 3 removed the tombstone but its clock on disk does not cover the old value"
    );
}

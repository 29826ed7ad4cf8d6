//! Integrity in the in-memory harness: a record the disk corrupted is never served, is
//! repaired from the other replicas, and never lets its node mint a dot twice; partitions are
//! not taken back over a refused metadata write. (Transfer gaps and snapshots:
//! `transfer_harness.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::store::Store;
use dynakv_core::{ClientReply, RequestOptions};
use dynakv_proto::dvv::NodeClock;
use dynakv_ring::NodeId;
use dynakv_simulator::harness::{n, set, strings, Cluster};

/// Flip one bit of `key`'s stored record on `node` (a failing disk).
fn corrupt_record(c: &mut Cluster, node: NodeId, key: &str) {
    let p = c.map().partition_for_key(key.as_bytes());
    let store = c.nodes.get_mut(&node).expect("node").store_mut();
    let space = dynakv_core::store::Space::Partition(p);
    let mut bytes = store
        .get(space, key.as_bytes())
        .expect("read")
        .expect("stored");
    let last = bytes.len() - 1;
    bytes[last / 2] ^= 0x10;
    store.put(space, key.as_bytes(), &bytes).expect("write");
}

/// Whether `node` holds a record of `key` that passes its checksum, and its values.
fn readable(c: &Cluster, node: NodeId, key: &str) -> Option<std::collections::BTreeSet<String>> {
    let p = c.map().partition_for_key(key.as_bytes());
    let bytes = c.nodes[&node]
        .store()
        .get(dynakv_core::store::Space::Partition(p), key.as_bytes())
        .ok()??;
    let o = dynakv_proto::codec::decode_object(&bytes).ok()?;
    Some(
        o.values()
            .into_iter()
            .filter_map(|v| match v {
                dynakv_core::Value::Data(b) => Some(String::from_utf8_lossy(b).into_owned()),
                dynakv_core::Value::Tombstone => None,
            })
            .collect(),
    )
}

/// Issue 13, part 4: a record the disk corrupted is never served. A read treats it as missing
/// (the other replicas answer and read repair writes the key back), the node counts it, and
/// mints later writes under a new actor (its own dots for the key may be lost with it).
#[test]
fn a_corrupt_record_is_not_served_and_read_repair_restores_it() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.scrub_per_sec = 0;
        cfg.aae_interval_ms = 600_000;
    });
    c.put_ok(n(1), "k", "v1", &NodeClock::new());
    corrupt_record(&mut c, n(2), "k");
    assert_eq!(readable(&c, n(2), "k"), None);
    let actor_before = c.actor(n(2));
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    let ClientReply::Got(got) = c.get(n(2), "k", all) else {
        panic!("the read failed")
    };
    assert_eq!(strings(&got.values), set(&["v1"]));
    assert_eq!(c.nodes[&n(2)].stats().corrupt_records, 1);
    assert_eq!(
        readable(&c, n(2), "k"),
        Some(set(&["v1"])),
        "read repair rewrote it"
    );
    assert_ne!(c.actor(n(2)), actor_before, "the actor is retired");
}

/// The scrub finds a corrupt record nobody reads, and anti-entropy restores it from the other
/// replicas; without the scrub it stays corrupt (the trees, built before the disk went bad,
/// still hold the good record's hash, so anti-entropy sees no difference).
#[test]
fn the_scrub_finds_a_corrupt_record_and_anti_entropy_repairs_it() {
    for scrub in [0, 1_000] {
        let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
            cfg.scrub_per_sec = scrub;
            cfg.aae_interval_ms = 200;
        });
        for i in 0..20 {
            c.put_ok(n(1), &format!("k{i}"), "v", &NodeClock::new());
        }
        // Anti-entropy compares every partition once, so every tree is built (from good
        // records) before the disk goes bad.
        c.run_for(60_000);
        corrupt_record(&mut c, n(3), "k7");
        // Long enough for the scrub's pass and for anti-entropy to compare every partition.
        c.run_for(60_000);
        let s = c.nodes[&n(3)].stats();
        if scrub == 0 {
            assert_eq!(readable(&c, n(3), "k7"), None, "nothing looked at it");
            assert_eq!(s.corrupt_records, 0);
        } else {
            assert!(s.scrubbed_records >= 20, "{s:?}");
            assert_eq!(s.corrupt_records, 1);
            assert_eq!(readable(&c, n(3), "k7"), Some(set(&["v"])), "repaired");
        }
    }
}

/// A write that lands on a key whose record is corrupt overwrites it, but the dots this node
/// had minted for the key are lost all the same: the actor must be retired even though the
/// record reads fine again, or the node's next blind write of the key mints a dot it already
/// gave to another value (simulator seeds 641034, 651179, 660724 and 697377: `dot-reused`).
#[test]
fn a_corrupt_record_overwritten_by_a_replica_write_still_retires_the_actor() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.scrub_per_sec = 0;
        cfg.aae_interval_ms = 600_000;
    });
    // Node 1 never gets v1: the write reaches nodes 2 and 3 only.
    c.isolate(n(1));
    let first = c.put_ok(n(2), "k", "v1", &NodeClock::new());
    let minted = first.dot.expect("a put mints a dot");
    c.run_for(2_000);
    c.heal_node(n(1));
    c.run_for(2_000);
    assert_eq!(readable(&c, n(1), "k"), None, "node 1 never got v1");
    corrupt_record(&mut c, n(2), "k");
    // Node 3, the only other holder of v1, is out of node 2's reach: nothing brings v1 back.
    c.cut_both(n(2), n(3));
    let actor_before = c.actor(n(2));
    // A blind write through node 1 carries v2 alone; its replica write to node 2 merges into
    // the key node 2 reads as missing, and overwrites the corrupt record.
    c.put_ok(n(1), "k", "v2", &NodeClock::new());
    c.run_for(2_000);
    assert_eq!(readable(&c, n(2), "k"), Some(set(&["v2"])), "overwritten");
    assert_eq!(c.nodes[&n(2)].stats().corrupt_records, 1);
    assert_ne!(c.actor(n(2)), actor_before, "the actor is retired");
    let again = c.put_ok(n(2), "k", "v3", &NodeClock::new());
    assert_ne!(again.dot, Some(minted), "a dot minted twice");
    // Nor may that blind write claim v1's dot as seen (node 2 mints above every counter it
    // used in the partition and its context covers its whole range): under the old actor it
    // would, and node 3 would drop v1, which no client ever read.
    assert!(!again.context.contains(&minted), "v3 claims v1's dot");
    c.heal();
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    let ClientReply::Got(read) = c.get(n(1), "k", all) else {
        panic!("read failed")
    };
    assert_eq!(strings(&read.values), set(&["v1", "v2", "v3"]));
}

/// A node that finds a record corrupt retires its actor even when its disk refuses the new
/// identity record (a nearly full disk): every start draws a new incarnation anyway, so the
/// record only names the node, while keeping the old actor let the next write that landed
/// mint over the lost record's dots (soak seeds 2280, 99840 and 26 more:
/// `actor-kept-after-loss`).
#[test]
fn a_corrupt_record_retires_the_actor_even_when_the_identity_cannot_be_written() {
    use dynakv_core::store::Space;
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.scrub_per_sec = 0;
        cfg.aae_interval_ms = 600_000;
    });
    c.put_ok(n(2), "k", "v1", &NodeClock::new());
    c.run_for(1_000);
    corrupt_record(&mut c, n(2), "k");
    c.nodes
        .get_mut(&n(2))
        .unwrap()
        .store_mut()
        .refuse_spaces(&[Space::Meta]);
    let actor_before = c.actor(n(2));
    // A read finds the corrupt record and sets it aside.
    let _ = c.get(n(2), "k", RequestOptions::default());
    c.run_for(500);
    assert_eq!(c.nodes[&n(2)].stats().corrupt_records, 1);
    assert_ne!(c.actor(n(2)), actor_before, "the actor is retired");
}

/// A write that lands on a key whose record a load found corrupt in the same step waits for
/// the key's lost mark: with the mark refused (a nearly full disk) the old code wrote the new
/// record, forgot the corruption, and the key was no longer marked lost while the partition
/// clock still named the lost record's dot. The node then judged a good copy of that version
/// old, and its context made the other replicas drop it (soak seed 87118: `acked-write-lost`).
#[test]
fn a_corrupt_record_is_not_overwritten_before_its_lost_mark_is_written() {
    use dynakv_core::store::Space;
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.scrub_per_sec = 0;
        cfg.aae_interval_ms = 600_000;
    });
    // v1 is on nodes 2 and 3 only.
    c.isolate(n(1));
    c.put_ok(n(2), "k", "v1", &NodeClock::new());
    c.run_for(2_000);
    c.heal_node(n(1));
    c.run_for(2_000);
    corrupt_record(&mut c, n(2), "k");
    c.nodes
        .get_mut(&n(2))
        .unwrap()
        .store_mut()
        .refuse_spaces(&[Space::Clocks]);
    // A blind write's replica write merges into the key node 2 reads as missing, in the step
    // that finds the record corrupt; node 3 takes it too, so the write is acknowledged.
    c.put_ok(n(1), "k", "v2", &NodeClock::new());
    c.run_for(2_000);
    assert_eq!(readable(&c, n(2), "k"), None, "overwritten before the mark");
    c.nodes
        .get_mut(&n(2))
        .unwrap()
        .store_mut()
        .refuse_spaces(&[]);
    c.run_for(2_000);
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    for _ in 0..2 {
        let ClientReply::Got(read) = c.get(n(1), "k", all) else {
            panic!("read failed")
        };
        assert_eq!(strings(&read.values), set(&["v1", "v2"]));
        c.run_for(2_000);
    }
    assert_eq!(readable(&c, n(3), "k"), Some(set(&["v1", "v2"])));
    assert_eq!(
        readable(&c, n(2), "k"),
        Some(set(&["v1", "v2"])),
        "repaired"
    );
}

/// Which of `keys` node `at` stores (in any partition).
fn held(c: &Cluster, at: NodeId, keys: &[String]) -> std::collections::BTreeSet<String> {
    keys.iter()
        .filter(|k| c.stores_key(at, k))
        .cloned()
        .collect()
}

/// Node metadata reaches the disk before the data that depends on it. With N=1, node 2 joins
/// node 1 and takes half its partitions (node 1 keeps "finished" records of those transfers),
/// then leaves, while node 1's disk refuses its metadata writes (it filled between two
/// writes): neither the new cluster state nor the removal of the finished records lands, but
/// data writes would. Had node 1 taken the partitions back on top of its old metadata (node 2
/// then drops its copies), a restart would find the old map (node 2 owns them) and its own
/// finished transfers to node 2, and drop the only copy (simulator N=1 seed 22, `--reap`). So
/// node 1 stores nothing until its metadata is written, and no key is lost.
#[test]
fn partitions_are_not_taken_back_over_a_refused_metadata_write() {
    use dynakv_core::store::Space;
    let mut c = Cluster::new(1, 1, 1, 1);
    c.run_for(500);
    let keys: Vec<String> = (0..120).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        c.put_ok(n(1), k, "v", &NodeClock::new());
    }
    let settled = |c: &Cluster| {
        c.nodes
            .values()
            .all(|core| core.outgoing_pending() == 0 && core.incoming_pending() == 0)
    };
    c.join(n(2), n(1));
    for _ in 0..1_200 {
        c.run_for(50);
        if c.nodes[&n(2)].member_status() == Some(dynakv_gossip::Status::Valid) && settled(&c) {
            break;
        }
    }
    let moved = held(&c, n(2), &keys);
    assert!(!moved.is_empty(), "node 2 took some partitions");
    assert!(
        c.nodes[&n(1)]
            .outgoing_transfers()
            .iter()
            .any(|t| t.done && t.to == n(2)),
        "node 1 keeps finished records of its transfers to node 2"
    );
    // Node 2 leaves; node 1's disk takes data but no metadata.
    c.nodes
        .get_mut(&n(1))
        .unwrap()
        .store_mut()
        .refuse_spaces(&[Space::Meta, Space::Transfers]);
    let reply = c.request(
        n(2),
        dynakv_core::ClientRequest::Admin(dynakv_core::AdminRequest::Leave),
    );
    assert!(matches!(reply, ClientReply::Admin(_)), "{reply:?}");
    let given_back = |c: &Cluster| {
        c.nodes[&n(1)]
            .partition_map()
            .partitions_of(n(2))
            .is_empty()
    };
    for _ in 0..200 {
        c.run_for(50);
        if given_back(&c) {
            break;
        }
    }
    assert!(given_back(&c), "node 1 routes by the map without node 2");
    c.run_for(3_000);
    assert_eq!(
        held(&c, n(2), &keys),
        moved,
        "node 1 took partitions back while its map was not on disk"
    );
    // A power cut: node 1 comes back from its disk, cut off so only its disk speaks.
    c.isolate(n(1));
    c.restart(n(1));
    c.run_for(12_000);
    let mut kept = held(&c, n(1), &keys);
    kept.extend(held(&c, n(2), &keys));
    let lost: Vec<&String> = keys.iter().filter(|k| !kept.contains(*k)).collect();
    assert!(lost.is_empty(), "keys lost: {lost:?}");
    // Once the disk takes metadata again, the leave completes and node 1 holds every key.
    c.heal();
    for _ in 0..1_200 {
        c.run_for(50);
        if held(&c, n(1), &keys).len() == keys.len() && settled(&c) {
            break;
        }
    }
    assert_eq!(
        held(&c, n(1), &keys).len(),
        keys.len(),
        "node 1 holds every key"
    );
}

/// A hint the disk corrupted, found when the hints are redirected (their owner was removed),
/// retires the holder's actor as one found by a handoff does: the holder may have minted the
/// lost version as a fallback coordinator, and a later write under the same actor would claim
/// that dot as seen (Riak's kv679). Redirection used to remove such a hint and keep the actor.
#[test]
fn an_unreadable_hint_found_by_redirection_retires_the_actor() {
    use dynakv_core::store::Space;
    let mut c = Cluster::new(2, 1, 1, 1);
    c.run_for(500);
    let keys = c.keys_only_on(n(1), 2);
    c.isolate(n(1));
    for k in &keys {
        c.hint_through(n(2), k, "v");
    }
    assert_eq!(c.hints_pending(), 2);
    // Flip a bit of the first key's hint.
    let store = c.nodes.get_mut(&n(2)).unwrap().store_mut();
    let (record, mut bytes) = store
        .scan(Space::Hints, None, 100)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.ends_with(keys[0].as_bytes()))
        .expect("the hint");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    store.put(Space::Hints, &record, &bytes).unwrap();
    let actor_before = c.actor(n(2));
    c.remove_node(n(2), n(1));
    c.run_for(5_000);
    assert_eq!(c.hints_pending(), 0, "all redirected");
    let core = &c.nodes[&n(2)];
    assert_eq!(
        core.stats().corrupt_records,
        1,
        "the unreadable hint is counted"
    );
    assert_ne!(c.actor(n(2)), actor_before, "the actor is retired");
    assert_eq!(strings(&c.get_ok(n(2), &keys[1]).values), set(&["v"]));
}

/// Item 6 of the safety issue, on the replica path itself: a replica write whose merge would
/// pass the sibling limit, or the byte limit (half the peer frame), is refused with the reason
/// and stores nothing, so the key stays readable, transferable and repairable. (Hint and
/// transfer items past the limits are quarantined: `quorums_siblings_and_vectors.rs`.)
#[test]
fn a_replica_refuses_a_write_whose_merge_passes_the_sibling_or_byte_limit() {
    use dynakv_core::{Effect, Input, Object, PeerMsg, ReplicaError, ReplicaMsg, Value};
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.sibling_warn = 2;
        cfg.sibling_max = 2;
        cfg.max_value_bytes = 1_500;
        cfg.max_key_bytes = 256;
        cfg.max_message_bytes = 4_096;
    });
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let replica = map.preference_list(p, 3)[0];
    let from = if replica == n(1) { n(2) } else { n(1) };
    let siblings = |c: &Cluster, count: u32, size: usize| {
        (1..=count).fold(Object::new(), |o, i| {
            let value = Value::Data(vec![b'a' + i as u8; size].into());
            Object::update(&o, &NodeClock::new(), c.actor(n(i)), value)
                .unwrap()
                .0
        })
    };
    let cases = [
        (siblings(&c, 3, 10), "siblings"),
        (siblings(&c, 2, 1_500), "bytes"),
    ];
    for (op, (object, why)) in (1u64..).zip(cases) {
        let core = c.nodes.get_mut(&replica).unwrap();
        core.handle(
            0,
            Input::Peer {
                from,
                msg: ReplicaMsg::Write {
                    op,
                    partition: p,
                    key: "k".into(),
                    object,
                    hint: None,
                }
                .into(),
            },
        );
        let refusal = core.drain_effects().into_iter().find_map(|e| match e {
            Effect::Send {
                msg:
                    PeerMsg::Replica(ReplicaMsg::WriteAck {
                        result: Err(ReplicaError::Rejected(reason)),
                        ..
                    }),
                ..
            } => Some(reason),
            _ => None,
        });
        let reason = refusal.unwrap_or_else(|| panic!("{why}: not refused"));
        assert!(reason.contains(why), "{why}: {reason}");
        assert_eq!(readable(&c, replica, "k"), None, "{why}: nothing stored");
    }
}

//! The sans-IO core, several nodes wired together in memory: quorums, failures, siblings, and
//! every vector of shared/dvv-vectors.md through the coordinator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::store::MemStore;
use dynakv_core::{
    ClientReply, ClientRequest, CoreConfig, NodeCore, PlantedBug, RequestError, RequestOptions,
};
use dynakv_proto::dvv::NodeClock;
use dynakv_ring::{NodeId, PartitionMap};
use dynakv_simulator::harness::{expect_error, n, set, strings, vv, Cluster};

fn empty() -> NodeClock {
    NodeClock::new()
}

#[test]
fn quorum_write_then_read() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let put = c.put_ok(n(1), "k", "v1", &empty());
    assert!(put.acks >= 2);
    let got = c.get_ok(n(2), "k");
    assert_eq!(strings(&got.values), set(&["v1"]));
    assert_eq!(got.context, put.context);
    // Every replica holds it once the network is quiet.
    for i in 1..=3 {
        assert_eq!(c.local(n(i), "k").0, set(&["v1"]), "node {i}");
    }
}

#[test]
fn write_quorum_fails_with_a_clear_timeout_when_too_few_replicas_answer() {
    let mut c = Cluster::new(3, 3, 2, 2);
    c.isolate(n(2));
    c.isolate(n(3));
    let err = expect_error(c.put(n(1), "k", "v", &empty(), RequestOptions::default()));
    match &err {
        RequestError::Timeout {
            answered,
            needed,
            asked,
            ..
        } => assert_eq!((*answered, *needed, *asked), (1, 2, 3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("1 of 3 replicas answered, 2 needed"),
        "{text}"
    );
    // W=1 still succeeds on the coordinator alone; R=2 does not.
    let opts = RequestOptions {
        w: Some(1),
        ..RequestOptions::default()
    };
    assert!(matches!(
        c.put(n(1), "k", "v", &empty(), opts),
        ClientReply::Written(_)
    ));
    // The coordinator now believes nodes 2 and 3 are down (they never answered) and, with no
    // fallback in a 3-node cluster, refuses a get with R=2 at once.
    let err = expect_error(c.get(n(1), "k", RequestOptions::default()));
    assert!(
        matches!(
            err,
            RequestError::Unavailable {
                needed: 2,
                available: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("needs 2 replicas but only 1"),
        "{err}"
    );
}

#[test]
fn one_node_down_leaves_quorum_two_of_three_available() {
    let mut c = Cluster::new(3, 3, 2, 2);
    c.isolate(n(3));
    let put = c.put_ok(n(1), "k", "v", &empty());
    assert_eq!(put.acks, 2);
    let all = RequestOptions {
        w: Some(3),
        ..RequestOptions::default()
    };
    let err = expect_error(c.put(n(1), "k", "v2", &put.context, all));
    assert!(
        matches!(
            err,
            RequestError::Timeout {
                answered: 2,
                needed: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_options_and_keys_are_refused() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let w4 = RequestOptions {
        w: Some(4),
        ..RequestOptions::default()
    };
    assert!(matches!(
        expect_error(c.put(n(1), "k", "v", &empty(), w4)),
        RequestError::InvalidOptions(_)
    ));
    let r0 = RequestOptions {
        r: Some(0),
        ..RequestOptions::default()
    };
    assert!(matches!(
        expect_error(c.get(n(1), "k", r0)),
        RequestError::InvalidOptions(_)
    ));
    assert!(matches!(
        expect_error(c.put(n(1), "", "v", &empty(), RequestOptions::default())),
        RequestError::BadKey(_)
    ));
    let long_key = "x".repeat(5000);
    assert!(matches!(
        expect_error(c.get(n(1), &long_key, RequestOptions::default())),
        RequestError::BadKey(_)
    ));
    let big = "v".repeat(5 << 20);
    assert!(matches!(
        expect_error(c.put(n(1), "k", &big, &empty(), RequestOptions::default())),
        RequestError::ValueTooLarge { .. }
    ));
    // A cluster configured for N=5 that has only 3 nodes cannot make W=5.
    let mut c = Cluster::new(3, 5, 2, 2);
    let n5 = RequestOptions {
        w: Some(5),
        ..RequestOptions::default()
    };
    assert!(matches!(
        expect_error(c.put(n(1), "k", "v", &empty(), n5)),
        RequestError::Unavailable {
            needed: 5,
            available: 3,
            ..
        }
    ));
}

#[test]
fn concurrent_coordinators_make_siblings_and_a_merge_collapses_them() {
    let mut c = Cluster::new(3, 3, 2, 2);
    c.cut_both(n(1), n(2));
    c.isolate(n(3));
    c.put_w1(n(1), "k", "from-1", &empty());
    c.put_w1(n(2), "k", "from-2", &empty());
    c.heal();
    // R=2 at node 3 (which missed both writes) may see only one sibling; R=3 sees both.
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    let got = match c.get(n(3), "k", all) {
        ClientReply::Got(g) => g,
        other => panic!("{other:?}"),
    };
    assert_eq!(strings(&got.values), set(&["from-1", "from-2"]));
    let merged = c.put_ok(n(3), "k", "merged", &got.context);
    let after = c.get_ok(n(1), "k");
    assert_eq!(strings(&after.values), set(&["merged"]));
    assert_eq!(after.context, merged.context);
}

#[test]
fn writes_at_a_non_replica_are_forwarded_to_a_replica() {
    // 5 nodes, N=3: some keys have node 5 outside their preference list.
    let mut c = Cluster::new(5, 3, 2, 2);
    let map = c.nodes[&n(5)].partition_map().clone();
    let key = (0..1000)
        .map(|i| format!("key-{i}"))
        .find(|k| {
            let p = map.partition_for_key(k.as_bytes());
            !map.preference_list(p, 3).contains(&n(5))
        })
        .expect("a key not replicated on node 5");
    let put = c.put_ok(n(5), &key, "v", &empty());
    let dot = put.dot.expect("dot");
    assert_ne!(dot.actor.node, n(5), "the dot must be minted by a replica");
    assert_eq!(strings(&c.get_ok(n(5), &key).values), set(&["v"]));
}

#[test]
fn read_repair_brings_a_stale_replica_up_to_date() {
    let mut c = Cluster::new(3, 3, 2, 2);
    c.isolate(n(3));
    let put = c.put_ok(n(1), "k", "v1", &empty());
    c.heal();
    assert_eq!(c.local(n(3), "k").0, set(&[]));
    let all = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    match c.get(n(1), "k", all) {
        ClientReply::Got(g) => assert_eq!(g.context, put.context),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.local(n(3), "k").0, set(&["v1"]));
    assert!(c.nodes[&n(1)].stats().read_repairs >= 1);
}

#[test]
fn identity_changes_at_every_start_and_stays_tied_to_its_node() {
    let members = [NodeId(1), NodeId(2)].into_iter().collect();
    let map = PartitionMap::initial(8, &members).unwrap();
    let cfg = CoreConfig {
        node: NodeId(1),
        ..CoreConfig::default()
    };
    let core = NodeCore::open(cfg.clone(), MemStore::new(), map.clone(), 1, 0).unwrap();
    let actor = core.actor();
    let mut store = core.into_store();
    store.crash();
    // A clean restart still takes a new incarnation: the disk cannot prove it lost nothing.
    let again = NodeCore::open(cfg.clone(), store, map.clone(), 2, 0).unwrap();
    assert_eq!(again.actor().node, actor.node);
    assert_ne!(again.actor(), actor);
    let wiped = NodeCore::open(cfg.clone(), MemStore::new(), map.clone(), 3, 0).unwrap();
    assert_ne!(
        wiped.actor(),
        actor,
        "a wiped node must mint dots under a new identity"
    );
    let other = CoreConfig {
        node: NodeId(2),
        ..cfg
    };
    let err = NodeCore::open(other, again.into_store(), map, 4, 0).unwrap_err();
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
}

/// Item 2 of the safety issue: a power loss that takes back synced writes must not let the
/// node mint a dot it already gave to another value (the `keep-incarnation` planted bug did).
#[test]
fn a_power_loss_of_synced_writes_never_reuses_a_dot() {
    let (reused, values) = blind_writes_across_a_power_loss(None);
    assert!(!reused);
    assert_eq!(values, set(&["v1", "v2"]));
    // The check bites: with the planted bug the second write gets v1's dot again.
    let (reused, _) = blind_writes_across_a_power_loss(Some(PlantedBug::KeepIncarnation));
    assert!(reused);
}

/// Two blind writes of one key through node 1, with a power loss of its synced tail between
/// them: whether the second got the first one's dot, and what a later read sees.
fn blind_writes_across_a_power_loss(
    bug: Option<PlantedBug>,
) -> (bool, std::collections::BTreeSet<String>) {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| cfg.planted_bug = bug);
    let key = "blind";
    let coord = n(1);
    let first = c.put_ok(coord, key, "v1", &NodeClock::new());
    // The coordinator loses its last synced batches (its copy of v1 among them) and restarts.
    c.power_cycle(coord, 1);
    assert!(
        c.local(coord, key).0.is_empty(),
        "the power loss took v1 back"
    );
    // Another blind write through the same node: concurrent with v1, so both must survive.
    let second = c.put_ok(coord, key, "v2", &NodeClock::new());
    c.run_for(2_000);
    (
        first.context == second.context,
        strings(&c.get_ok(n(2), key).values),
    )
}

#[test]
fn no_ack_leaves_before_the_write_is_synced() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let id = 99;
    let now = c.now;
    let node = c.nodes.get_mut(&n(1)).unwrap();
    node.handle(
        now,
        dynakv_core::Input::Client {
            id,
            request: ClientRequest::Put {
                key: "k".into(),
                value: "v".into(),
                context: NodeClock::new(),
                opts: RequestOptions {
                    w: Some(1),
                    ..RequestOptions::default()
                },
            },
        },
    );
    assert!(node.store().unsynced_ops() > 0);
    let effects = node.drain_effects();
    assert!(!effects.is_empty());
    assert_eq!(
        node.store().unsynced_ops(),
        0,
        "drain must sync before releasing the ack"
    );
}

// ---- shared/dvv-vectors.md through the coordinator (A = node 1, B = node 2, C = node 3) ----

#[test]
fn vector_1_sequential_overwrite() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let a = c.actor(n(1));
    let p1 = c.put_ok(n(1), "k", "v1", &empty());
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context.clone()),
        (set(&["v1"]), vv(&[(a, 1)]))
    );
    assert_eq!(p1.context, vv(&[(a, 1)]));
    c.put_ok(n(1), "k", "v2", &g.context);
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v2"]), vv(&[(a, 2)]))
    );
}

#[test]
fn vector_2_blind_writes_keep_siblings() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let (a, b) = (c.actor(n(1)), c.actor(n(2)));
    c.put_ok(n(1), "k", "v1", &empty());
    c.put_ok(n(1), "k", "v2", &empty());
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v1", "v2"]), vv(&[(a, 2)]))
    );

    c.isolate(n(1));
    c.isolate(n(2));
    c.put_w1(n(1), "j", "v1", &empty());
    c.put_w1(n(2), "j", "v2", &empty());
    c.heal();
    c.sync_key(n(1), n(2), "j");
    c.sync_key(n(2), n(1), "j");
    for node in [n(1), n(2)] {
        assert_eq!(
            c.local(node, "j"),
            (set(&["v1", "v2"]), vv(&[(a, 1), (b, 1)]))
        );
    }
}

#[test]
fn vector_3_same_stale_context_same_coordinator() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let (a, b) = (c.actor(n(1)), c.actor(n(2)));
    let k = c.put_ok(n(1), "k", "v1", &empty()).context;
    c.put_ok(n(1), "k", "v2", &k);
    c.put_ok(n(1), "k", "v3", &k);
    let g = c.get_ok(n(2), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v2", "v3"]), vv(&[(a, 3)]))
    );

    // Variant: Y goes through B, which holds A's state after sync.
    let k = c.put_ok(n(1), "j", "v1", &empty()).context;
    c.put_ok(n(1), "j", "v2", &k);
    c.put_ok(n(2), "j", "v3", &k);
    let g = c.get_ok(n(3), "j");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v2", "v3"]), vv(&[(a, 2), (b, 1)]))
    );
}

#[test]
fn vector_4_mary_and_peter() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let a = c.actor(n(1));
    c.put_ok(n(1), "k", "v1", &empty());
    let peter = c.get_ok(n(1), "k");
    assert_eq!(peter.context, vv(&[(a, 1)]));
    c.put_ok(n(1), "k", "v2", &empty()); // Mary, blind
    assert_eq!(strings(&c.get_ok(n(1), "k").values), set(&["v1", "v2"]));
    c.put_ok(n(1), "k", "v3", &peter.context);
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v2", "v3"]), vv(&[(a, 3)]))
    );
}

#[test]
fn vector_5_a_covering_context_collapses_siblings() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let (a, b) = (c.actor(n(1)), c.actor(n(2)));
    let k = c.put_ok(n(1), "k", "v1", &empty()).context;
    c.put_ok(n(1), "k", "v2", &k);
    c.put_ok(n(1), "k", "v3", &k);
    let g = c.get_ok(n(1), "k");
    assert_eq!(g.context, vv(&[(a, 3)]));
    c.put_ok(n(2), "k", "v4", &g.context);
    let g = c.get_ok(n(3), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["v4"]), vv(&[(a, 3), (b, 1)]))
    );
}

#[test]
fn vector_6_dynamo_figure_3() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let (sx, sy, sz) = (c.actor(n(1)), c.actor(n(2)), c.actor(n(3)));
    let d1 = c.put_ok(n(1), "k", "D1", &empty()).context;
    let d2 = c.put_ok(n(1), "k", "D2", &d1).context;
    assert_eq!(d2, vv(&[(sx, 2)]));
    c.cut_both(n(2), n(3));
    c.put_w1(n(2), "k", "D3", &d2);
    c.put_w1(n(3), "k", "D4", &d2);
    c.heal();
    c.sync_key(n(2), n(1), "k");
    c.sync_key(n(3), n(1), "k");
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context.clone()),
        (set(&["D3", "D4"]), vv(&[(sx, 2), (sy, 1), (sz, 1)]))
    );
    c.put_ok(n(1), "k", "D5", &g.context);
    let g = c.get_ok(n(2), "k");
    assert_eq!(
        (strings(&g.values), g.context),
        (set(&["D5"]), vv(&[(sx, 3), (sy, 1), (sz, 1)]))
    );
}

#[test]
fn vector_7_a_replica_that_missed_a_write() {
    // (a) A and C sync in either direction: C holds {v2}; v1 does not come back.
    for a_to_c in [true, false] {
        let mut c = Cluster::new(3, 3, 2, 2);
        let a = c.actor(n(1));
        let k = c.put_ok(n(1), "k", "v1", &vv(&[])).context;
        c.isolate(n(3));
        c.put_ok(n(1), "k", "v2", &k);
        c.heal();
        if a_to_c {
            c.sync_key(n(1), n(3), "k");
            assert_eq!(c.local(n(3), "k"), (set(&["v2"]), vv(&[(a, 2)])));
        } else {
            c.sync_key(n(3), n(1), "k");
            assert_eq!(c.local(n(1), "k"), (set(&["v2"]), vv(&[(a, 2)])));
        }
    }
    // (b) Before that sync, C coordinates a blind put.
    let mut c = Cluster::new(3, 3, 2, 2);
    let (a, cc) = (c.actor(n(1)), c.actor(n(3)));
    let k = c.put_ok(n(1), "k", "v1", &empty()).context;
    c.isolate(n(3));
    c.put_ok(n(1), "k", "v2", &k);
    c.put_w1(n(3), "k", "v3", &empty());
    assert_eq!(
        c.local(n(3), "k"),
        (set(&["v1", "v3"]), vv(&[(a, 1), (cc, 1)]))
    );
    c.heal();
    c.sync_key(n(1), n(3), "k");
    assert_eq!(
        c.local(n(3), "k"),
        (set(&["v2", "v3"]), vv(&[(a, 2), (cc, 1)]))
    );
    // (c) A replica that knows {A:1} but holds no value for it, synced with {A:2: v2, v1}.
    let mut c = Cluster::new(3, 3, 2, 2);
    let k = c.put_ok(n(1), "k", "v1", &empty()).context;
    c.isolate(n(1));
    c.put_w1(n(1), "k", "v2", &empty()); // A now holds (A,2,[v2,v1])
    assert_eq!(c.local(n(1), "k").0, set(&["v1", "v2"]));
    c.heal();
    c.isolate(n(3));
    c.delete_w1(n(3), "k", &k); // C knows A:1 and holds only a tombstone
    c.heal();
    c.sync_key(n(1), n(3), "k");
    assert_eq!(c.local(n(3), "k").0, set(&["v2"]));
}

#[test]
fn vector_8_delete_concurrent_with_a_write() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let (a, b) = (c.actor(n(1)), c.actor(n(2)));
    let k0 = c.put_ok(n(1), "k", "v1", &empty()).context;
    c.put_ok(n(1), "k", "v2", &k0);
    c.put_ok(n(1), "k", "v3", &k0);
    let k = c.get_ok(n(1), "k").context;
    assert_eq!(k, vv(&[(a, 3)]));
    c.cut_both(n(1), n(2));
    c.isolate(n(3));
    c.delete_w1(n(1), "k", &k);
    c.put_w1(n(2), "k", "v4", &k);
    c.heal();
    c.sync_key(n(1), n(2), "k");
    c.sync_key(n(2), n(1), "k");
    let g = c.get_ok(n(1), "k");
    assert_eq!(
        (strings(&g.values), g.context.clone()),
        (set(&["v4"]), vv(&[(a, 4), (b, 1)]))
    );
    c.put_ok(n(1), "k", "v5", &g.context);
    let g = c.get_ok(n(2), "k");
    assert_eq!(strings(&g.values), set(&["v5"]));
    // A delete whose context covers everything: not found, but a context comes back.
    let del = c.delete_w1(n(2), "k", &g.context);
    let opts = RequestOptions {
        r: Some(3),
        ..RequestOptions::default()
    };
    let gone = match c.get(n(3), "k", opts) {
        ClientReply::Got(g) => g,
        other => panic!("{other:?}"),
    };
    assert!(gone.values.is_empty());
    assert!(!gone.context.is_empty());
    assert!(gone.context.descends(&del.context));
    c.put_ok(n(3), "k", "v6", &gone.context);
    assert_eq!(strings(&c.get_ok(n(1), "k").values), set(&["v6"]));
    let _ = ClientRequest::PartitionMap;
}

// ---- hostile or mistaken input ----

#[test]
fn a_context_with_an_absurd_counter_is_refused_and_the_key_stays_usable() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let a = c.actor(n(1));
    let crafted = vv(&[(a, 1 << 63)]);
    let err = expect_error(c.put(n(1), "k", "evil", &crafted, RequestOptions::default()));
    assert!(matches!(err, RequestError::InvalidOptions(_)), "{err:?}");
    // At the token limit itself: accepted as a context, but minting above it would store a
    // counter no token can carry and wedge the key, so the write is refused.
    let at_limit = vv(&[(a, dynakv_proto::codec::token::MAX_TOKEN_COUNTER)]);
    let err = expect_error(c.put(n(1), "k", "evil", &at_limit, RequestOptions::default()));
    assert!(matches!(err, RequestError::InvalidOptions(_)), "{err:?}");
    c.put_ok(n(1), "k", "fine", &empty());
    assert_eq!(strings(&c.get_ok(n(1), "k").values), set(&["fine"]));
}

#[test]
fn a_request_n_above_the_clusters_n_is_refused() {
    let mut c = Cluster::new(5, 3, 2, 2);
    let n5 = RequestOptions {
        n: Some(5),
        ..RequestOptions::default()
    };
    let err = expect_error(c.put(n(1), "k", "v", &empty(), n5));
    assert!(err.to_string().contains("cluster's n=3"), "{err}");
}

#[test]
/// (A value without a dot, refused here before objects were DCCs, can no longer be built: a
/// `Dcc` holds only dotted versions, and decoding checks it; see `dvv/dcc/tests.rs`.)
fn replica_writes_for_the_wrong_partition_are_rejected() {
    use dynakv_core::{Input, Object, PeerMsg, ReplicaError, ReplicaMsg, Value};
    use dynakv_proto::dvv::NodeClock;
    let mut c = Cluster::new(3, 3, 2, 2);
    let map = c.map();
    let right = map.partition_for_key(b"k");
    let wrong = dynakv_ring::PartitionId((right.0 + 1) % map.partition_count());
    let actor = c.actor(n(2));
    let (good, _) = Object::update(
        &Object::new(),
        &NodeClock::new(),
        actor,
        Value::Data("v".into()),
    )
    .unwrap();
    let node = c.nodes.get_mut(&n(1)).unwrap();
    node.handle(
        0,
        Input::Peer {
            from: n(2),
            msg: ReplicaMsg::Write {
                op: 7,
                partition: wrong,
                key: "k".into(),
                object: good,
                hint: None,
            }
            .into(),
        },
    );
    let effects = node.drain_effects();
    let refused = effects.iter().any(|e| {
        matches!(
            e,
            dynakv_core::Effect::Send {
                msg: PeerMsg::Replica(ReplicaMsg::WriteAck {
                    result: Err(ReplicaError::Rejected(_) | ReplicaError::Retry(_)),
                    ..
                }),
                ..
            }
        )
    });
    assert!(refused, "{effects:?}");
    assert_eq!(c.local(n(1), "k").0, set(&[]));
}

/// Item 7 (and 6) of the safety issue: an object in a hint batch that the owner cannot apply
/// (here: merged it would pass the sibling limit) is quarantined, not skipped, before the batch
/// is acknowledged, so the fallback's deletion of its copy loses nothing.
#[test]
fn an_unappliable_hint_is_quarantined_before_the_ack() {
    use dynakv_core::store::{Space, Store};
    use dynakv_core::{Effect, HandoffItem, HandoffMsg, Input, Object, PeerMsg, Value};
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.sibling_warn = 2;
        cfg.sibling_max = 2;
    });
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let owner = map.preference_list(p, 3)[0];
    let mut object = Object::new();
    for i in 1..=3 {
        let value = Value::Data(format!("v{i}").into());
        let seen = dynakv_proto::dvv::NodeClock::new();
        object = Object::update(&object, &seen, c.actor(n(i)), value)
            .unwrap()
            .0;
    }
    assert_eq!(object.value_count(), 3);
    let from = if owner == n(1) { n(2) } else { n(1) };
    let core = c.nodes.get_mut(&owner).unwrap();
    core.handle(
        0,
        Input::Peer {
            from,
            msg: PeerMsg::Handoff(HandoffMsg::Batch {
                batch: 9,
                items: vec![HandoffItem {
                    partition: p,
                    key: "k".into(),
                    object,
                }],
            }),
        },
    );
    let effects = core.drain_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Send {
            msg: PeerMsg::Handoff(HandoffMsg::BatchAck {
                batch: 9,
                result: Ok(())
            }),
            ..
        }
    )));
    assert_eq!(core.stats().quarantined, 1);
    assert_eq!(
        core.store()
            .scan(Space::Quarantine, None, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(core.store().get(Space::Partition(p), b"k").unwrap(), None);
    assert_eq!(
        core.store().unsynced_ops(),
        0,
        "quarantined durably before the ack"
    );
}

/// A transfer item the receiver cannot apply (here: merged it would pass the sibling limit) is
/// quarantined, and its key marked lost: the sender's clock snapshot, which names the item's
/// dot, enters the receiver's clock (the pass was whole otherwise), but never judges that key.
/// Otherwise the receiver would hold a dot in its clock that no record of it holds, and would
/// drop the item's live value as old when it came again once the siblings were resolved.
#[test]
fn a_quarantined_transfer_item_is_not_judged_by_the_snapshot() {
    use dynakv_core::{Input, Object, PeerMsg, TransferMsg, Value};
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| {
        cfg.sibling_warn = 2;
        cfg.sibling_max = 2;
    });
    c.put_ok(n(1), "k", "a", &empty());
    c.put_ok(n(2), "k", "b", &empty());
    c.run();
    let p = c.map().partition_for_key(b"k");
    let stranger = dynakv_proto::dvv::Actor::new(NodeId(9), 5);
    let (object, dot) = Object::update(
        &Object::new(),
        &NodeClock::new(),
        stranger,
        Value::Data("c".into()),
    )
    .unwrap();
    let mut snapshot = NodeClock::new();
    snapshot.add(&dot);
    let transfer = |pass: u64, snapshot: Option<NodeClock>| {
        PeerMsg::Transfer(TransferMsg::Batch {
            batch: pass,
            partition: p,
            pass,
            after: None,
            items: vec![("k".into(), object.clone())],
            lost: Vec::new(),
            last: true,
            snapshot,
        })
    };
    let core = c.nodes.get_mut(&n(3)).unwrap();
    core.handle(
        0,
        Input::Peer {
            from: n(1),
            msg: transfer(11, Some(snapshot)),
        },
    );
    core.drain_effects();
    assert_eq!(core.stats().quarantined, 1, "the item was set aside");
    assert!(
        core.partition_clock(p)
            .is_some_and(|clock| clock.contains(&dot)),
        "the snapshot of a whole pass was not adopted"
    );
    // A client resolves the siblings; then the item comes again, and fits.
    let ClientReply::Got(got) = c.get(n(1), "k", RequestOptions::default()) else {
        panic!("read failed")
    };
    c.put_ok(n(1), "k", "d", &got.context);
    c.run();
    let now = c.now;
    let core = c.nodes.get_mut(&n(3)).unwrap();
    core.handle(
        now,
        Input::Peer {
            from: n(1),
            msg: transfer(12, Some(NodeClock::new())),
        },
    );
    core.drain_effects();
    assert_eq!(core.stats().quarantined, 1);
    assert_eq!(
        c.read_all(n(3), "k"),
        ["c", "d"].iter().map(|v| v.to_string()).collect(),
        "the item's value was dropped as old"
    );
}

/// A fabricated actor with one isolated dot at every `step`-th counter from `first`: a context
/// with `count` holes.
fn holes(node: u32, first: u64, step: u64, count: u64) -> NodeClock {
    let actor = dynakv_proto::dvv::Actor::new(NodeId(node), 1);
    let mut clock = NodeClock::new();
    for k in 0..count {
        clock.add(&dynakv_proto::dvv::Dot::new(actor, first + step * k));
    }
    clock
}

/// Risk R9 of the server-wide clocks design: stored contexts stay within the token's limit on
/// holes, so every context a read returns can be written back. A request context past them is refused,
/// and so is a write (or a replica merge) whose result would pass them; the key keeps its value.
#[test]
fn contexts_past_the_token_limits_are_refused_and_never_stored() {
    use dynakv_core::{Effect, Input, Object, PeerMsg, ReplicaError, ReplicaMsg, Value};
    use dynakv_proto::codec::token;
    let mut c = Cluster::new(3, 3, 2, 2);
    // Too many holes in the request itself (the native protocol carries clocks, not tokens).
    let err = expect_error(c.put(
        n(1),
        "k",
        "v",
        &holes(98, 2, 10, token::MAX_CONTEXT_RANGES as u64 + 1),
        RequestOptions::default(),
    ));
    assert!(
        matches!(err, RequestError::ContextTooLarge { ranges: 4097, .. }),
        "{err:?}"
    );
    // Too many actors, in the request or in the merge of two requests within the limit.
    let wide = |from: u32, count: u32| {
        let entries: Vec<_> = (from..from + count)
            .map(|i| (dynakv_proto::dvv::Actor::new(NodeId(i), 1), 1))
            .collect();
        vv(&entries)
    };
    let err = expect_error(c.put(n(1), "w", "v", &wide(1000, 4097), RequestOptions::default()));
    assert!(
        matches!(err, RequestError::ContextTooLarge { actors: 4097, .. }),
        "{err:?}"
    );
    c.put_ok(n(1), "w", "v", &wide(1000, 3000));
    let err = expect_error(c.put(
        n(1),
        "w",
        "v2",
        &wide(9000, 3000),
        RequestOptions::default(),
    ));
    assert!(
        matches!(err, RequestError::ContextTooLarge { .. }),
        "{err:?}"
    );
    let got = c.get_ok(n(1), "w");
    let back = token::context_from_token(&token::context_to_token(&got.context)).unwrap();
    c.put_ok(n(1), "w", "v3", &back);
    // Two contexts within the limits whose union is not.
    c.put_ok(n(1), "k", "first", &holes(99, 2, 10, 3000));
    let err = expect_error(c.put(
        n(1),
        "k",
        "second",
        &holes(99, 5, 10, 3000),
        RequestOptions::default(),
    ));
    assert!(
        matches!(err, RequestError::ContextTooLarge { ranges: 6000, .. }),
        "{err:?}"
    );
    let got = c.get_ok(n(2), "k");
    assert_eq!(strings(&got.values), set(&["first"]));
    let token = token::context_to_token(&got.context);
    assert_eq!(
        token::context_from_token(&token).ok(),
        Some(got.context.clone())
    );
    // A replica refuses a merge past the limits and keeps what it had.
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let owner = map.preference_list(p, 3)[0];
    let (object, _) = Object::update(
        &Object::new(),
        &holes(99, 7, 10, 3000),
        c.actor(n(3)),
        Value::Data("third".into()),
    )
    .unwrap();
    let core = c.nodes.get_mut(&owner).unwrap();
    core.handle(
        0,
        Input::Peer {
            from: n(3),
            msg: ReplicaMsg::Write {
                op: 11,
                partition: p,
                key: "k".into(),
                object,
                hint: None,
            }
            .into(),
        },
    );
    let effects = core.drain_effects();
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: PeerMsg::Replica(ReplicaMsg::WriteAck {
                    result: Err(ReplicaError::Rejected(why)),
                    ..
                }),
                ..
            } if why.contains("token limit")
        )),
        "{effects:?}"
    );
    assert_eq!(c.local(owner, "k").0, set(&["first"]));
}

/// Counters are per (actor, partition): a node never mints one dot for two keys of a
/// partition, so a dot names one version of one key there (what a partition's node clock
/// records). Per-key counters would give both keys `(actor, 1)`.
#[test]
fn dots_are_unique_within_a_partition_not_only_within_a_key() {
    let mut c = Cluster::new(3, 3, 2, 2);
    let other = dynakv_simulator::harness::key_in_same_partition(&c, "k");
    let a = c.actor(n(1));
    let first = c.put_ok(n(1), "k", "v1", &empty()).context.top(&a);
    let second = c.put_ok(n(1), &other, "v2", &empty()).context.top(&a);
    let third = c.put_ok(n(1), "k", "v3", &empty()).context.top(&a);
    assert!(first < second && second < third, "{first} {second} {third}");
}

/// A made-up counter of node 1's actor that reached node 1 inside a peer's object (another
/// coordinator cannot tell it is made up) would lift node 1's partition floor so high that its
/// later writes there overflow; node 1 mints under a new actor instead, and the key stays
/// writable. The same context sent to node 1 directly is refused.
#[test]
fn a_made_up_counter_carried_by_a_peer_makes_the_node_mint_under_a_new_actor() {
    let mut c = Cluster::new(3, 3, 3, 3);
    let a = c.actor(n(1));
    let near = vv(&[(a, dynakv_proto::codec::token::MAX_TOKEN_COUNTER - 1)]);
    let err = expect_error(c.put(n(1), "k", "evil", &near, RequestOptions::default()));
    assert!(matches!(err, RequestError::InvalidOptions(_)), "{err:?}");
    c.put_ok(n(2), "k", "carried", &near);
    let put = c.put_ok(n(1), "k", "fine", &empty());
    let b = c.actor(n(1));
    assert_ne!(a, b, "node 1 took a new actor");
    assert_eq!(put.context.top(&b), 1);
    assert_eq!(
        strings(&c.get_ok(n(1), "k").values),
        set(&["carried", "fine"])
    );
}

//! Property tests of the cluster-state CRDT: the merge laws, the digest/delta exchange, and
//! convergence of concurrent membership changes.

use std::collections::{BTreeMap, BTreeSet};

use dynakv_ring::{NodeId, PartitionMap};
use proptest::prelude::*;

use crate::changes::Change;
use crate::state::{
    ClusterParams, ClusterState, Heartbeat, MapVersion, Member, Status, VersionedMap,
};

const PARAMS: ClusterParams = ClusterParams {
    partitions: 8,
    replicas: 2,
};

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Joining),
        Just(Status::Valid),
        Just(Status::Leaving),
        Just(Status::Removed)
    ]
}

/// Small ranges on purpose: ids, versions and addresses collide often, so ties and conflicting
/// rows (same version, different status or address) are common.
fn member() -> impl Strategy<Value = Member> {
    (prop_oneof![Just("a:1"), Just("b:1")], status(), 0u64..4).prop_map(
        |(addr, status, version)| Member {
            addr: addr.to_owned(),
            status,
            version,
        },
    )
}

fn versioned_map() -> impl Strategy<Value = VersionedMap> {
    (
        0u64..3,
        0u32..3,
        prop::collection::btree_set(0u32..6, 1..4),
        prop::collection::vec(0u32..3, 8),
    )
        .prop_map(|(epoch, proposer, planned, owners)| VersionedMap {
            version: MapVersion {
                epoch,
                proposer: NodeId(proposer),
            },
            planned_for: planned.into_iter().map(NodeId).collect(),
            map: PartitionMap::from_owners(owners.into_iter().map(NodeId).collect())
                .expect("8 owners"),
        })
}

fn state() -> impl Strategy<Value = ClusterState> {
    (
        prop::collection::btree_map(0u32..6, member(), 0..6),
        versioned_map(),
        prop::collection::btree_map(0u32..6, (0u64..3, 0u64..4), 0..6),
    )
        .prop_map(|(members, map, hbs)| ClusterState {
            params: PARAMS,
            members: members.into_iter().map(|(k, v)| (NodeId(k), v)).collect(),
            map,
            heartbeats: hbs
                .into_iter()
                .map(|(k, (generation, counter))| {
                    (
                        NodeId(k),
                        Heartbeat {
                            generation,
                            counter,
                        },
                    )
                })
                .collect(),
        })
}

fn merged(a: &ClusterState, b: &ClusterState) -> ClusterState {
    let mut m = a.clone();
    m.merge(b).expect("same params");
    m
}

/// One push-pull exchange a -> b as the gossiper runs it: Syn, Ack, Ack2.
fn exchange(a: &mut ClusterState, b: &mut ClusterState) {
    let syn = a.digest();
    let delta = b.delta_for(&syn);
    let b_digest = b.may_lack(&syn).then(|| b.digest());
    a.merge_delta(&delta).expect("ack");
    if let Some(d) = b_digest {
        let back = a.delta_for(&d);
        b.merge_delta(&back).expect("ack2");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merge_is_commutative(a in state(), b in state()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in state(), b in state(), c in state()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in state(), b in state()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab);
    }

    /// Merging never loses a newer entry: the result is >= each input, entry by entry, and a
    /// removed id stays removed.
    #[test]
    fn merge_is_monotone(a in state(), b in state()) {
        let m = merged(&a, &b);
        for input in [&a, &b] {
            for (id, row) in &input.members {
                let out = &m.members[id];
                prop_assert!(out.merge_key() >= row.merge_key());
                if row.status == Status::Removed {
                    prop_assert_eq!(out.status, Status::Removed);
                }
            }
            prop_assert!(m.map.merge_key() >= input.map.merge_key());
            for (id, hb) in &input.heartbeats {
                prop_assert!(m.heartbeats[id] >= *hb);
            }
        }
    }

    /// The digest/delta exchange moves exactly what is needed: afterwards both sides hold the
    /// merge of the two states.
    #[test]
    fn one_exchange_equals_the_merge(a in state(), b in state()) {
        let want = merged(&a, &b);
        let (mut x, mut y) = (a.clone(), b.clone());
        exchange(&mut x, &mut y);
        prop_assert_eq!(&x, &want);
        prop_assert_eq!(&y, &want);
        // And between equal states the deltas carry nothing.
        let d = x.delta_for(&y.digest());
        prop_assert!(d.is_empty());
        prop_assert!(!x.may_lack(&y.digest()));
    }
}

/// A random change, staged on a random node: (node index, kind, target id).
fn change_plan() -> impl Strategy<Value = Vec<(usize, u8, u32)>> {
    prop::collection::vec((0usize..4, 0u8..5, 1u32..9), 1..8)
}

fn to_change(kind: u8, target: u32) -> Change {
    let node = NodeId(target);
    match kind {
        0 => Change::Join {
            node,
            addr: format!("10.0.0.{target}:7000"),
        },
        1 => Change::Leave(node),
        2 => Change::Remove(node),
        3 => Change::MarkValid(node),
        _ => Change::FinishLeave(node),
    }
}

/// Four founders (ids 1..=4) with Q = 16; each node stages its changes on its own copy, none of
/// them having seen the others' (maximal concurrency). Refused changes are skipped.
fn staged(plan: &[(usize, u8, u32)]) -> Vec<ClusterState> {
    let founders: BTreeMap<NodeId, String> = (1..=4)
        .map(|i| (NodeId(i), format!("10.0.0.{i}:7000")))
        .collect();
    let params = ClusterParams {
        partitions: 16,
        replicas: 3,
    };
    let base = ClusterState::new(params, &founders).expect("cluster");
    let mut nodes = vec![base; 4];
    for &(i, kind, target) in plan {
        let by = NodeId(i as u32 + 1);
        if let Ok(next) = nodes[i].apply(by, &to_change(kind, target)) {
            nodes[i] = next;
        }
    }
    nodes
}

fn assert_balanced(s: &ClusterState) {
    let owning = s.owning_members();
    if owning.is_empty() {
        return;
    }
    assert_eq!(s.map.planned_for, owning);
    let q = usize::from(s.params.partitions);
    let counts = s.map.map.counts();
    let owners: BTreeSet<NodeId> = counts.keys().copied().collect();
    assert!(
        owners.is_subset(&owning),
        "only owning members own partitions"
    );
    for n in &owning {
        let c = counts.get(n).copied().unwrap_or(0);
        assert!(
            c >= q / owning.len() && c <= q.div_ceil(owning.len()),
            "balanced"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Merging every node's state, in any order, then reconciling gives the same state on
    /// every node, with a balanced map for the final owning set.
    #[test]
    fn concurrent_changes_reconcile_to_one_state(
        plan in change_plan(),
        orders in prop::collection::vec(Just((0usize..4).collect::<Vec<_>>()).prop_shuffle(), 4),
    ) {
        let nodes = staged(&plan);
        let mut results = Vec::new();
        for order in &orders {
            let mut s = nodes[order[0]].clone();
            for &i in &order[1..] {
                s.merge(&nodes[i]).expect("merge");
            }
            s.reconcile().expect("reconcile");
            assert_balanced(&s);
            results.push(s);
        }
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
        // No staged member row was lost.
        for n in &nodes {
            for (id, row) in &n.members {
                prop_assert!(results[0].members[id].merge_key() >= row.merge_key());
            }
        }
    }

    /// Gossip-like: random pairwise exchanges, each followed by a reconcile on both sides (as
    /// the gossiper does), then full sweeps until nothing changes. All nodes end equal.
    #[test]
    fn concurrent_changes_converge_under_random_exchanges(
        plan in change_plan(),
        pairs in prop::collection::vec((0usize..4, 0usize..4), 0..30),
    ) {
        let mut nodes = staged(&plan);
        let step = |nodes: &mut Vec<ClusterState>, i: usize, j: usize| {
            if i == j {
                return;
            }
            let (mut a, mut b) = (nodes[i].clone(), nodes[j].clone());
            exchange(&mut a, &mut b);
            a.reconcile().expect("reconcile");
            b.reconcile().expect("reconcile");
            nodes[i] = a;
            nodes[j] = b;
        };
        for (i, j) in pairs {
            step(&mut nodes, i, j);
        }
        let mut sweeps = 0;
        while nodes.iter().any(|n| n != &nodes[0]) {
            sweeps += 1;
            prop_assert!(sweeps <= 5, "no convergence after 5 sweeps");
            for i in 0..4 {
                for j in 0..4 {
                    step(&mut nodes, i, j);
                }
            }
        }
        assert_balanced(&nodes[0]);
    }
}

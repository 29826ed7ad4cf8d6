//! Property tests of the dotted causal container (`Dcc`) on reachable states.
//!
//! Histories are random, on three replicas: puts at a replica with the context of an earlier
//! state (or none), and one-way syncs. Every operation runs on a
//! `DvvSet` twin as well, and the two must agree at every step (same live values under the same
//! dots, same context): that is what lets `Dcc` replace `DvvSet` without changing behaviour.
//! Then the laws of `sync` and of the replica merge with its node-clock check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use dynakv_proto::dvv::{Actor, Dcc, Dot, DvvSet, NodeClock};
use dynakv_ring::NodeId;
use proptest::prelude::*;
use proptest::sample::Index;

const REPLICAS: usize = 3;

fn actor(i: usize) -> Actor {
    Actor::new(NodeId(10 + i as u32), u64::from(i == 2))
}

#[derive(Debug, Clone)]
enum Op {
    /// A put at `at` with the context of an earlier state (`None` = blind write).
    Put { at: usize, ctx: Option<Index> },
    /// Replica `to` merges the state of replica `from`.
    Sync { from: usize, to: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..REPLICAS, prop::option::weighted(0.8, any::<Index>()))
            .prop_map(|(at, ctx)| Op::Put { at, ctx }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(arb_op(), 0..40)
}

fn dots(s: &DvvSet<u32>) -> Vec<(Dot, u32)> {
    let mut v: Vec<_> = s
        .dotted_values()
        .into_iter()
        .map(|(d, v)| (d.expect("replica values all have dots"), *v))
        .collect();
    v.sort();
    v
}

/// Replays `ops` on both types, asserting agreement after every step; returns every `Dcc`
/// state seen (starting with the empty one) and, per replica, the node clock it would keep
/// (every dot it ever stored or merged).
fn run(ops: &[Op]) -> Result<(Vec<Dcc<u32>>, Vec<NodeClock>), TestCaseError> {
    let mut dvv: Vec<DvvSet<u32>> = vec![DvvSet::empty(); REPLICAS];
    let mut dcc: Vec<Dcc<u32>> = vec![Dcc::new(); REPLICAS];
    let mut clocks = vec![NodeClock::new(); REPLICAS];
    let mut dvv_states = vec![DvvSet::empty()];
    let mut states = vec![Dcc::new()];
    for (n, op) in ops.iter().enumerate() {
        let to = match *op {
            Op::Put { at, ref ctx } => {
                let read = ctx
                    .as_ref()
                    .map(|i| i.get(&dvv_states).join())
                    .unwrap_or_default();
                let value = n as u32;
                dvv[at] =
                    DvvSet::update(DvvSet::new_with_context(&read, value), &dvv[at], actor(at));
                let seen = NodeClock::from_vector(&read);
                let (out, dot) = Dcc::update(&dcc[at], &seen, actor(at), value)
                    .expect("counter below the limit");
                prop_assert!(!dcc[at].context().contains(&dot) && !seen.contains(&dot));
                clocks[at].add(&dot);
                dcc[at] = out;
                at
            }
            Op::Sync { from, to } => {
                dvv[to] = dvv[to].sync(&dvv[from]);
                dcc[to] = dcc[to].sync(&dcc[from]);
                for (d, _) in dcc[from].versions() {
                    clocks[to].add(d);
                }
                to
            }
        };
        let twin = dots(&dvv[to]);
        prop_assert_eq!(dcc[to].versions(), twin.as_slice());
        prop_assert!(dcc[to].context_is_contiguous());
        prop_assert_eq!(dcc[to].top_vector(), dvv[to].join());
        dvv_states.push(dvv[to].clone());
        states.push(dcc[to].clone());
    }
    Ok((states, clocks))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Operation by operation, `Dcc` gives `DvvSet`'s siblings and context (checked inside
    /// `run`), and a dot never names two writes.
    #[test]
    fn dcc_agrees_with_dvvset_on_every_history(ops in arb_ops()) {
        let (states, _) = run(&ops)?;
        let mut named: BTreeMap<Dot, u32> = BTreeMap::new();
        for s in &states {
            for (d, v) in s.versions() {
                prop_assert_eq!(*named.entry(*d).or_insert(*v), *v);
            }
        }
    }

    #[test]
    fn sync_is_commutative_associative_idempotent(
        ops in arb_ops(), i in any::<Index>(), j in any::<Index>(), k in any::<Index>()
    ) {
        let (states, _) = run(&ops)?;
        let (a, b, c) = (i.get(&states), j.get(&states), k.get(&states));
        prop_assert_eq!(a.sync(b), b.sync(a));
        prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)));
        prop_assert_eq!(&a.sync(a), a);
        prop_assert_eq!(&a.sync(&Dcc::new()), a);
    }

    /// The replica merge: with no clock it is `sync`; with one, a dot the clock has seen and the
    /// key does not hold never comes (back) in; the context is the union, the clock gains the
    /// incoming dots, and merging the same copy again changes nothing.
    #[test]
    fn merge_replica_never_lets_a_seen_dead_dot_in(
        ops in arb_ops(), r in 0..REPLICAS, i in any::<Index>()
    ) {
        let (states, clocks) = run(&ops)?;
        let (local, incoming) = (states.last().unwrap(), i.get(&states));
        prop_assert_eq!(
            local.merge_replica(incoming, &mut NodeClock::new(), None),
            local.sync(incoming)
        );
        let before = clocks[r].clone();
        let mut k = before.clone();
        let merged = local.merge_replica(incoming, &mut k, None);
        for (d, _) in merged.versions() {
            prop_assert!(local.holds(d) || !before.contains(d), "{:?} came back", d);
            prop_assert!(local.holds(d) || incoming.holds(d));
        }
        let mut union = local.context().clone();
        union.merge(incoming.context());
        prop_assert_eq!(merged.context(), &union);
        for (d, _) in incoming.versions() {
            prop_assert!(k.contains(d));
        }
        let mut k2 = k.clone();
        prop_assert_eq!(&merged.merge_replica(incoming, &mut k2, None), &merged);
        prop_assert_eq!(k2, k);
    }
}

//! Property tests of the DVVSet laws on *reachable* states.
//!
//! States are produced by replaying random histories on three replicas (actors A, B, C): puts at a
//! replica with a context read from some earlier state (or no context), and one-way syncs between
//! replicas. Every state seen is kept; the laws are then checked on states picked from that history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use dynakv_proto::dvv::{Actor, Dot, DvvSet, VersionVector};
use dynakv_ring::NodeId;
use proptest::prelude::*;
use proptest::sample::Index;

const REPLICAS: usize = 3;

fn actor(i: usize) -> Actor {
    // Replica 2 runs under a later incarnation, to mix incarnations into the actor order.
    Actor::new(NodeId(10 + i as u32), u64::from(i == 2))
}

#[derive(Debug, Clone)]
enum Op {
    /// A put at replica `at`, with the context of an earlier state (`None` = blind write).
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

/// One coordinated put: its inputs and its result.
#[derive(Debug)]
struct PutRecord {
    ctx: VersionVector,
    server: DvvSet<u32>,
    actor: Actor,
    value: u32,
    result: DvvSet<u32>,
}

/// Every state seen (starting with the empty one) and every put made.
struct Run {
    states: Vec<DvvSet<u32>>,
    puts: Vec<PutRecord>,
}

fn run(ops: &[Op]) -> Run {
    let mut replicas: Vec<DvvSet<u32>> = vec![DvvSet::empty(); REPLICAS];
    let mut states = vec![DvvSet::empty()];
    let mut puts = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Put { at, ref ctx } => {
                let ctx = ctx
                    .as_ref()
                    .map(|i| i.get(&states).join())
                    .unwrap_or_default();
                let value = n as u32;
                let server = replicas[at].clone();
                let result =
                    DvvSet::update(DvvSet::new_with_context(&ctx, value), &server, actor(at));
                replicas[at] = result.clone();
                puts.push(PutRecord {
                    ctx,
                    server,
                    actor: actor(at),
                    value,
                    result,
                });
            }
            Op::Sync { from, to } => {
                replicas[to] = replicas[to].sync(&replicas[from]);
            }
        }
        states.push(
            replicas[match *op {
                Op::Put { at, .. } => at,
                Op::Sync { to, .. } => to,
            }]
            .clone(),
        );
    }
    Run { states, puts }
}

fn dots(s: &DvvSet<u32>) -> BTreeMap<Dot, u32> {
    s.dotted_values()
        .into_iter()
        .map(|(d, v)| (d.expect("replica values all have dots"), *v))
        .collect()
}

fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reachable_states_are_valid_and_dots_unique(ops in arb_ops()) {
        let r = run(&ops);
        let mut named: BTreeMap<Dot, u32> = BTreeMap::new();
        for s in &r.states {
            prop_assert!(s.validate().is_ok());
            prop_assert_eq!(dots(s).len(), s.value_count());
            for (d, v) in dots(s) {
                // A dot never names two different writes.
                prop_assert_eq!(*named.entry(d).or_insert(v), v);
            }
        }
    }

    #[test]
    fn sync_is_commutative_associative_idempotent(
        ops in arb_ops(), i in any::<Index>(), j in any::<Index>(), k in any::<Index>()
    ) {
        let r = run(&ops);
        let (a, b, c) = (i.get(&r.states), j.get(&r.states), k.get(&r.states));
        prop_assert_eq!(a.sync(b), b.sync(a));
        prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)));
        prop_assert_eq!(&a.sync(a), a);
        prop_assert_eq!(&a.sync(&DvvSet::empty()), a);
    }

    #[test]
    fn join_of_sync_is_merge_of_joins(ops in arb_ops(), i in any::<Index>(), j in any::<Index>()) {
        let r = run(&ops);
        let (a, b) = (i.get(&r.states), j.get(&r.states));
        prop_assert_eq!(a.sync(b).join(), merged(&a.join(), &b.join()));
    }

    /// sync keeps exactly the values that no side has seen superseded: a dotted value survives iff
    /// every side whose history covers its dot still holds it. Nothing is invented.
    #[test]
    fn sync_keeps_exactly_the_unsuperseded_values(
        ops in arb_ops(), i in any::<Index>(), j in any::<Index>()
    ) {
        let r = run(&ops);
        let (a, b) = (i.get(&r.states), j.get(&r.states));
        let (da, db, ds) = (dots(a), dots(b), dots(&a.sync(b)));
        let (ja, jb) = (a.join(), b.join());
        let mut expected = BTreeMap::new();
        for (d, v) in da.iter().chain(db.iter()) {
            let alive_a = da.contains_key(d) || !ja.covers(d);
            let alive_b = db.contains_key(d) || !jb.covers(d);
            if alive_a && alive_b {
                expected.insert(*d, *v);
            }
        }
        prop_assert_eq!(ds, expected);
    }

    #[test]
    fn update_keeps_uncovered_values_and_drops_covered_ones(ops in arb_ops()) {
        let r = run(&ops);
        for p in &r.puts {
            let after = dots(&p.result);
            for (d, v) in dots(&p.server) {
                if p.ctx.covers(&d) {
                    prop_assert!(!after.contains_key(&d), "covered {:?} survived: {:?}", d, p);
                } else {
                    prop_assert_eq!(after.get(&d), Some(&v), "uncovered {:?} lost: {:?}", d, p);
                }
            }
            // Besides the server's surviving values, only the new one.
            prop_assert_eq!(
                after.len(),
                1 + dots(&p.server).keys().filter(|d| !p.ctx.covers(d)).count()
            );
        }
    }

    #[test]
    fn new_dot_is_fresh(ops in arb_ops()) {
        let r = run(&ops);
        for p in &r.puts {
            let (dot, _) = dots(&p.result)
                .into_iter()
                .find(|(_, v)| *v == p.value)
                .expect("the new value is stored");
            let server_join = p.server.join();
            prop_assert_eq!(dot.actor, p.actor);
            prop_assert!(!p.ctx.covers(&dot));
            prop_assert!(!server_join.covers(&dot));
            prop_assert_eq!(dot.counter, p.ctx.get(&p.actor).max(server_join.get(&p.actor)) + 1);
            prop_assert_eq!(p.result.join().get(&p.actor), dot.counter);
            let mut expected = merged(&p.ctx, &server_join);
            expected.merge(&VersionVector::from_entries(vec![(dot.actor, dot.counter)]));
            prop_assert_eq!(p.result.join(), expected);
            prop_assert!(p.server.less(&p.result));
        }
    }

    /// Client-built sets carry an anonymous value; sync stays commutative and idempotent with them.
    #[test]
    fn sync_with_client_sets(ops in arb_ops(), i in any::<Index>(), j in any::<Index>(), v in any::<u32>()) {
        let r = run(&ops);
        let a = i.get(&r.states);
        let x = DvvSet::new_with_context(&j.get(&r.states).join(), v);
        prop_assert_eq!(x.sync(a), a.sync(&x));
        prop_assert_eq!(x.sync(&x), x.clone());
        let blind = DvvSet::new(v);
        prop_assert_eq!(blind.sync(a), a.sync(&blind));
    }
}

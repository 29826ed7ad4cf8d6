//! The behaviour vectors of `shared/dvv-vectors.md`, replayed on the DVVSet type alone, and on
//! the dotted causal container (`Dcc`) that will replace it: every replica keeps both, every
//! operation runs on both, and every look at a replica asserts that they agree.
//!
//! Each node is a separate replica (`DvvSet<Option<String>>`, `None` = tombstone). A put
//! coordinated by X is `local_X = update(new_with_context(ctx, v), local_X, actor_X)`; replication
//! is `sync`. Sibling sets are compared as sets, contexts exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use dynakv_proto::dvv::{Actor, Dcc, DvvSet, NodeClock, VersionVector};
use dynakv_ring::NodeId;

type Val = Option<String>;

fn actor(node: char) -> Actor {
    Actor::new(NodeId(node as u32), 0)
}

fn ctx(entries: &[(char, u64)]) -> VersionVector {
    VersionVector::from_entries(entries.iter().map(|&(n, c)| (actor(n), c)).collect())
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Replicas by node name.
#[derive(Default)]
struct Cluster {
    replicas: BTreeMap<char, DvvSet<Val>>,
    /// The same replicas as dotted causal containers.
    dccs: BTreeMap<char, Dcc<Val>>,
}

impl Cluster {
    fn local(&self, node: char) -> DvvSet<Val> {
        self.replicas.get(&node).cloned().unwrap_or_default()
    }

    /// `node`'s replica as a `Dcc`, checked against its DVVSet twin: the same live values
    /// under the same dots, and the same context (contiguous, as per-key counters keep it).
    fn dcc(&self, node: char) -> Dcc<Val> {
        let dcc = self.dccs.get(&node).cloned().unwrap_or_default();
        let dvv = self.local(node);
        let mut twin: Vec<_> = dvv
            .dotted_values()
            .into_iter()
            .map(|(d, v)| (d.expect("replica values have dots"), v.clone()))
            .collect();
        twin.sort_by_key(|(d, _)| *d);
        assert_eq!(dcc.versions(), twin.as_slice(), "Dcc versions of {node}");
        assert!(dcc.context_is_contiguous(), "{dcc:?}");
        assert_eq!(dcc.top_vector(), dvv.join(), "Dcc context of {node}");
        dcc
    }

    /// A put coordinated by `node`; returns the context of the result (what the coordinator replies).
    fn put(&mut self, node: char, value: &str, context: &VersionVector) -> VersionVector {
        self.write(node, Some(value.to_string()), context)
    }

    /// A delete (tombstone) coordinated by `node`.
    fn delete(&mut self, node: char, context: &VersionVector) -> VersionVector {
        self.write(node, None, context)
    }

    fn write(&mut self, node: char, value: Val, context: &VersionVector) -> VersionVector {
        let new = DvvSet::update(
            DvvSet::new_with_context(context, value.clone()),
            &self.local(node),
            actor(node),
        );
        new.validate().expect("update keeps the invariants");
        let join = new.join();
        let seen = NodeClock::from_vector(context);
        let (dcc, _) = Dcc::update(&self.dcc(node), &seen, actor(node), value)
            .expect("counter below the limit");
        self.replicas.insert(node, new);
        self.dccs.insert(node, dcc);
        self.dcc(node);
        join
    }

    /// Replicates `from`'s state into `to`.
    fn sync(&mut self, from: char, to: char) {
        let merged = self.local(to).sync(&self.local(from));
        let merged_dcc = self.dcc(to).sync(&self.dcc(from));
        self.replicas.insert(to, merged);
        self.dccs.insert(to, merged_dcc);
        self.dcc(to);
    }

    fn sync_both(&mut self, x: char, y: char) {
        self.sync(x, y);
        self.sync(y, x);
        assert_eq!(self.local(x), self.local(y), "replicas converge");
        assert_eq!(self.dcc(x), self.dcc(y), "Dcc replicas converge");
    }

    /// Every stored value, tombstones written as "⊥".
    fn stored(&self, node: char) -> BTreeSet<String> {
        self.dcc(node);
        let local = self.local(node);
        let stored: BTreeSet<String> = local
            .values()
            .into_iter()
            .map(|v| v.clone().unwrap_or_else(|| "⊥".to_string()))
            .collect();
        assert_eq!(stored.len(), local.value_count(), "no duplicate siblings");
        stored
    }

    /// What a get returns: live values (tombstones are not values) and the context.
    fn get(&self, node: char) -> (BTreeSet<String>, VersionVector) {
        self.dcc(node);
        let local = self.local(node);
        let live = local.values().into_iter().flatten().cloned().collect();
        (live, local.join())
    }
}

#[test]
fn v1_sequential_overwrite() {
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    assert_eq!(c.get('A'), (set(&["v1"]), ctx(&[('A', 1)])));
    assert_eq!(k, ctx(&[('A', 1)]));
    c.put('A', "v2", &k);
    assert_eq!(c.get('A'), (set(&["v2"]), ctx(&[('A', 2)])));
}

#[test]
fn v2_blind_writes_keep_siblings_same_node() {
    let mut c = Cluster::default();
    c.put('A', "v1", &ctx(&[]));
    c.put('A', "v2", &ctx(&[]));
    assert_eq!(c.get('A'), (set(&["v1", "v2"]), ctx(&[('A', 2)])));
}

#[test]
fn v2_blind_writes_keep_siblings_two_nodes() {
    let mut c = Cluster::default();
    c.put('A', "v1", &ctx(&[]));
    c.put('B', "v2", &ctx(&[]));
    c.sync_both('A', 'B');
    for node in ['A', 'B'] {
        assert_eq!(
            c.get(node),
            (set(&["v1", "v2"]), ctx(&[('A', 1), ('B', 1)]))
        );
    }
}

#[test]
fn v3_same_stale_context_same_coordinator() {
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    assert_eq!(k, ctx(&[('A', 1)]));
    c.put('A', "v2", &k); // client X
    c.put('A', "v3", &k); // client Y
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 3)])));
}

#[test]
fn v3_variant_second_client_through_b() {
    // B holds A's state from before X's write.
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    c.sync('A', 'B');
    c.put('A', "v2", &k);
    c.put('B', "v3", &k);
    c.sync_both('A', 'B');
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 2), ('B', 1)])));
}

#[test]
fn v3_variant_b_already_holds_x_write() {
    // B holds A's state after X's write; the result is the same.
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    c.put('A', "v2", &k);
    c.sync('A', 'B');
    c.put('B', "v3", &k);
    assert_eq!(c.get('B'), (set(&["v2", "v3"]), ctx(&[('A', 2), ('B', 1)])));
    c.sync_both('A', 'B');
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 2), ('B', 1)])));
}

#[test]
fn v4_mary_and_peter() {
    let mut c = Cluster::default();
    c.put('A', "v1", &ctx(&[]));
    let (seen, peter) = c.get('A');
    assert_eq!((seen, peter.clone()), (set(&["v1"]), ctx(&[('A', 1)])));
    c.put('A', "v2", &ctx(&[])); // Mary, blind
    assert_eq!(c.get('A').0, set(&["v1", "v2"]));
    c.put('A', "v3", &peter);
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 3)])));
}

#[test]
fn v5_covering_context_collapses_siblings() {
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    c.put('A', "v2", &k);
    c.put('A', "v3", &k);
    c.sync('A', 'B');
    let (_, k3) = c.get('B');
    assert_eq!(k3, ctx(&[('A', 3)]));
    c.put('B', "v4", &k3);
    assert_eq!(c.get('B'), (set(&["v4"]), ctx(&[('A', 3), ('B', 1)])));
    c.sync_both('A', 'B');
    assert_eq!(c.get('A'), (set(&["v4"]), ctx(&[('A', 3), ('B', 1)])));
}

#[test]
fn v6_dynamo_figure_3() {
    let mut c = Cluster::default();
    let k1 = c.put('x', "D1", &ctx(&[]));
    let k2 = c.put('x', "D2", &k1);
    assert_eq!(k2, ctx(&[('x', 2)]));
    c.sync('x', 'y');
    c.sync('x', 'z');
    c.put('y', "D3", &k2);
    c.put('z', "D4", &k2);
    c.sync_both('y', 'z');
    c.sync_both('x', 'y');
    c.sync_both('x', 'z');
    let (values, k) = c.get('x');
    assert_eq!(values, set(&["D3", "D4"]));
    assert_eq!(k, ctx(&[('x', 2), ('y', 1), ('z', 1)]));
    c.put('x', "D5", &k);
    assert_eq!(
        c.get('x'),
        (set(&["D5"]), ctx(&[('x', 3), ('y', 1), ('z', 1)]))
    );
}

/// A, B and C all hold v1 with context {A:1}; then put(v2, {A:1}) @A reaches A and B only.
fn v7_setup() -> Cluster {
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    c.sync('A', 'B');
    c.sync('A', 'C');
    c.put('A', "v2", &k);
    c.sync('A', 'B');
    c
}

#[test]
fn v7a_missed_write_sync_either_direction() {
    let mut c = v7_setup();
    c.sync('A', 'C');
    assert_eq!(c.get('C'), (set(&["v2"]), ctx(&[('A', 2)])));
    let mut c = v7_setup();
    c.sync('C', 'A');
    assert_eq!(c.get('A'), (set(&["v2"]), ctx(&[('A', 2)])));
    c.sync('A', 'C');
    assert_eq!(c.get('C'), (set(&["v2"]), ctx(&[('A', 2)])));
}

#[test]
fn v7b_blind_put_at_the_lagging_replica() {
    let mut c = v7_setup();
    c.put('C', "v3", &ctx(&[]));
    assert_eq!(c.get('C'), (set(&["v1", "v3"]), ctx(&[('A', 1), ('C', 1)])));
    c.sync_both('A', 'C');
    assert_eq!(c.get('C'), (set(&["v2", "v3"]), ctx(&[('A', 2), ('C', 1)])));
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 2), ('C', 1)])));
}

#[test]
fn v7c_known_dot_without_value_stays_dead() {
    // One replica knows {A:1} without a value; the other holds {A:2: v2, v1} (a blind v2 at A).
    let mut c = Cluster::default();
    c.put('A', "v1", &ctx(&[]));
    c.put('A', "v2", &ctx(&[]));
    assert_eq!(c.stored('A'), set(&["v1", "v2"]));
    c.replicas
        .insert('C', DvvSet::from_context(&ctx(&[('A', 1)])));
    c.dccs.insert(
        'C',
        Dcc::from_context(NodeClock::from_vector(&ctx(&[('A', 1)]))),
    );
    c.sync_both('A', 'C');
    assert_eq!(c.get('C'), (set(&["v2"]), ctx(&[('A', 2)])));
}

/// From {v2, v3} with K = {A:3} at A and B: X deletes with K @A, Y puts v4 with K @B.
fn v8_setup() -> Cluster {
    let mut c = Cluster::default();
    let k = c.put('A', "v1", &ctx(&[]));
    c.put('A', "v2", &k);
    let k3 = {
        c.put('A', "v3", &k);
        c.get('A').1
    };
    assert_eq!(c.get('A'), (set(&["v2", "v3"]), ctx(&[('A', 3)])));
    c.sync('A', 'B');
    c.delete('A', &k3);
    c.put('B', "v4", &k3);
    c.sync_both('A', 'B');
    c
}

#[test]
fn v8_delete_concurrent_with_write() {
    let c = v8_setup();
    assert_eq!(c.stored('A'), set(&["⊥", "v4"]));
    let (live, k) = c.get('A');
    assert_eq!(live, set(&["v4"]));
    assert_eq!(k, ctx(&[('A', 4), ('B', 1)]));
    // The context covers the tombstone's dot.
    let local = c.local('A');
    let dots = local.dotted_values();
    let tomb = dots.iter().find(|(_, v)| v.is_none()).expect("tombstone").0;
    assert!(k.covers(&tomb.expect("tombstone has a dot")));
}

#[test]
fn v8_write_after_delete_supersedes_both() {
    let mut c = v8_setup();
    let (_, k) = c.get('B');
    c.put('B', "v5", &k);
    assert_eq!(c.stored('B'), set(&["v5"]));
    c.sync_both('A', 'B');
    assert_eq!(c.get('A').0, set(&["v5"]));
}

#[test]
fn v8_covering_delete_leaves_only_the_tombstone() {
    let mut c = v8_setup();
    let (_, k) = c.get('A');
    let after = c.delete('A', &k);
    assert_eq!(c.stored('A'), set(&["⊥"]));
    let (live, k2) = c.get('A');
    assert!(live.is_empty(), "get = not found");
    assert_eq!(k2, after);
    assert!(k2.descends(&k));
    // A later write with that context supersedes the tombstone.
    c.sync('A', 'B');
    c.put('B', "v6", &k2);
    assert_eq!(c.stored('B'), set(&["v6"]));
}

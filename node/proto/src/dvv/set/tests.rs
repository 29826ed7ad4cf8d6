//! Unit tests of the DVVSet operations on hand-built states (the Erlang `dvvset` examples in
//! spirit, plus the guards against bad input). Behaviour vectors live in `node/tests/dvv_vectors.rs`
//! and the algebraic laws in `node/tests/dvv_props.rs`.

use super::*;
use dynakv_ring::NodeId;

fn a() -> Actor {
    Actor::new(NodeId(1), 0)
}
fn b() -> Actor {
    Actor::new(NodeId(2), 0)
}
fn c() -> Actor {
    Actor::new(NodeId(3), 0)
}

fn entry(actor: Actor, counter: u64, values: &[&'static str]) -> Entry<&'static str> {
    Entry {
        actor,
        counter,
        values: values.to_vec(),
    }
}

fn set(entries: Vec<Entry<&'static str>>, anonymous: &[&'static str]) -> DvvSet<&'static str> {
    DvvSet {
        entries,
        anonymous: anonymous.to_vec(),
    }
}

fn sorted<'v>(mut v: Vec<&'v &'static str>) -> Vec<&'v &'static str> {
    v.sort();
    v
}

#[test]
fn new_and_new_with_context() {
    let s = DvvSet::new("v");
    assert_eq!(s, set(vec![], &["v"]));
    assert!(s.join().is_empty());
    let ctx = VersionVector::from_entries(vec![(b(), 2), (a(), 1)]);
    let s = DvvSet::new_with_context(&ctx, "v");
    assert_eq!(s, set(vec![entry(a(), 1, &[]), entry(b(), 2, &[])], &["v"]));
    assert_eq!(s.join(), ctx);
    assert_eq!(s.dotted_values(), vec![(None, &"v")]);
}

#[test]
fn merge_entry_follows_windows() {
    // (A,2,[v2,v1]) with (A,1,[]) -> v1 is known dead on the right: keep [v2].
    let r = set(vec![entry(a(), 2, &["v2", "v1"])], &[]).sync(&set(vec![entry(a(), 1, &[])], &[]));
    assert_eq!(r, set(vec![entry(a(), 2, &["v2"])], &[]));
    // (A,3,[v3]) with (A,2,[v2,v1]): v2 is dead on the left.
    let r =
        set(vec![entry(a(), 3, &["v3"])], &[]).sync(&set(vec![entry(a(), 2, &["v2", "v1"])], &[]));
    assert_eq!(r, set(vec![entry(a(), 3, &["v3"])], &[]));
    // (A,3,[v3,v2]) with (A,1,[v1]): v1 dead on the left, v2 unknown on the right.
    let r =
        set(vec![entry(a(), 1, &["v1"])], &[]).sync(&set(vec![entry(a(), 3, &["v3", "v2"])], &[]));
    assert_eq!(r, set(vec![entry(a(), 3, &["v3", "v2"])], &[]));
    // Same counter, different windows: the smaller window wins.
    let r =
        set(vec![entry(a(), 2, &["v2", "v1"])], &[]).sync(&set(vec![entry(a(), 2, &["v2"])], &[]));
    assert_eq!(r, set(vec![entry(a(), 2, &["v2"])], &[]));
}

#[test]
fn sync_interleaves_actors() {
    let x = set(vec![entry(a(), 1, &["x"]), entry(c(), 2, &["z"])], &[]);
    let y = set(vec![entry(b(), 1, &["y"]), entry(c(), 1, &[])], &[]);
    let r = x.sync(&y);
    assert_eq!(
        r,
        set(
            vec![
                entry(a(), 1, &["x"]),
                entry(b(), 1, &["y"]),
                entry(c(), 2, &["z"])
            ],
            &[]
        )
    );
    assert_eq!(r, y.sync(&x));
    assert_eq!(sorted(r.values()), vec![&"x", &"y", &"z"]);
    assert_eq!(DvvSet::empty().sync(&x), x);
}

#[test]
fn sync_anonymous_values() {
    // Dominated side loses its anonymous values, concurrent sides keep both (deduplicated).
    let small = set(vec![entry(a(), 1, &[])], &["p"]);
    let big = set(vec![entry(a(), 2, &[])], &["q"]);
    assert_eq!(small.sync(&big).values(), vec![&"q"]);
    assert_eq!(big.sync(&small).values(), vec![&"q"]);
    let other = set(vec![entry(b(), 1, &[])], &["q", "r"]);
    let r = big.sync(&other);
    assert_eq!(sorted(r.values()), vec![&"q", &"r"]);
    assert_eq!(r, other.sync(&big));
    // Equality ignores the order of anonymous values.
    assert_eq!(set(vec![], &["1", "2"]), set(vec![], &["2", "1"]));
    assert_ne!(set(vec![], &["1", "2"]), set(vec![], &["1"]));
}

#[test]
fn less_is_strict_dominance() {
    let x = set(vec![entry(a(), 1, &["x"])], &[]);
    let y = set(vec![entry(a(), 2, &["y"])], &[]);
    let z = set(vec![entry(a(), 1, &[]), entry(b(), 1, &["z"])], &[]);
    let w = set(vec![entry(b(), 1, &["w"])], &[]);
    assert!(x.less(&y) && !y.less(&x));
    assert!(x.less(&z) && !z.less(&x));
    assert!(!x.less(&x));
    assert!(!y.less(&z) && !z.less(&y));
    assert!(!x.less(&w) && !w.less(&x));
    assert!(DvvSet::<&str>::empty().less(&x));
    assert!(!DvvSet::<&str>::empty().less(&DvvSet::empty()));
}

#[test]
fn update_assigns_next_dot() {
    let server = set(
        vec![entry(a(), 2, &["v2", "v1"]), entry(b(), 1, &["w"])],
        &[],
    );
    let ctx = VersionVector::from_entries(vec![(a(), 1)]);
    let r = DvvSet::update(DvvSet::new_with_context(&ctx, "n"), &server, a());
    assert_eq!(
        r,
        set(
            vec![entry(a(), 3, &["n", "v2"]), entry(b(), 1, &["w"])],
            &[]
        )
    );
    let r = DvvSet::update(DvvSet::new("m"), &r, c());
    assert_eq!(r.value_count(), 4);
    assert_eq!(r.join().get(&c()), 1);
    let dots: Vec<_> = r
        .dotted_values()
        .into_iter()
        .map(|(d, v)| (d.unwrap(), *v))
        .collect();
    assert_eq!(
        dots,
        vec![
            (Dot::new(a(), 3), "n"),
            (Dot::new(a(), 2), "v2"),
            (Dot::new(b(), 1), "w"),
            (Dot::new(c(), 1), "m"),
        ]
    );
    // A set without a value only syncs its context in: an empty context keeps everything, a
    // covering one removes everything (without a new dot).
    let kept = DvvSet::update(DvvSet::from_context(&VersionVector::new()), &r, a());
    assert_eq!(kept, r);
    let cleared = DvvSet::update(DvvSet::from_context(&r.join()), &r, a());
    assert!(cleared.is_empty());
    assert_eq!(cleared.join(), r.join());
}

#[test]
fn event_keeps_siblings_and_returns_dot() {
    let mut s = DvvSet::empty();
    assert_eq!(s.event(b(), "1"), Dot::new(b(), 1));
    assert_eq!(s.event(a(), "2"), Dot::new(a(), 1));
    assert_eq!(s.event(b(), "3"), Dot::new(b(), 2));
    assert_eq!(
        s,
        set(vec![entry(a(), 1, &["2"]), entry(b(), 2, &["3", "1"])], &[])
    );
    assert!(s.validate().is_ok());
}

#[test]
fn empty_and_context_only() {
    let e = DvvSet::<&str>::empty();
    assert!(e.is_empty() && e.join().is_empty() && e.value_count() == 0);
    assert_eq!(e, DvvSet::default());
    let ctx = VersionVector::from_entries(vec![(a(), 3)]);
    let s = DvvSet::<&str>::from_context(&ctx);
    assert!(s.is_empty());
    assert_eq!(s.join(), ctx);
}

#[test]
fn map_values_keeps_dots() {
    let s = set(vec![entry(a(), 2, &["x", "y"])], &["z"]);
    let m = s.clone().map_values(str::len);
    assert_eq!(m.join(), s.join());
    let dots: Vec<_> = m.dotted_values().into_iter().map(|(d, _)| d).collect();
    let want: Vec<_> = s.dotted_values().into_iter().map(|(d, _)| d).collect();
    assert_eq!(dots, want);
}

#[test]
fn validate_rejects_broken_sets() {
    let cases = [
        (set(vec![entry(a(), 0, &[])], &[]), "zero counter"),
        (
            set(vec![entry(a(), 1, &["x", "y"])], &[]),
            "holds 2 values but only 1 dots",
        ),
        (
            set(vec![entry(b(), 1, &[]), entry(a(), 1, &[])], &[]),
            "out of actor order",
        ),
        (
            set(vec![entry(a(), 1, &[]), entry(a(), 2, &[])], &[]),
            "repeats an actor",
        ),
        (
            set(vec![entry(a(), MAX_COUNTER + 1, &[])], &[]),
            "above the limit",
        ),
    ];
    for (s, want) in cases {
        match s.validate() {
            Err(Error::Decode(m)) => assert!(m.contains(want), "{m} should mention {want}"),
            other => panic!("expected a decode error mentioning {want}, got {other:?}"),
        }
    }
    let good = set(
        vec![entry(a(), 2, &["x", "y"]), entry(b(), MAX_COUNTER, &[])],
        &["z"],
    );
    assert!(good.validate().is_ok());
}

#[test]
fn ops_on_unvalidated_data_do_not_panic() {
    // Garbage that skipped validation must still not crash the node.
    let bad = set(
        vec![entry(b(), u64::MAX, &["x"]), entry(a(), 0, &["y", "z"])],
        &["w"],
    );
    let good = set(vec![entry(a(), 1, &["q"])], &[]);
    let _ = bad.sync(&good);
    let _ = good.sync(&bad);
    let _ = bad.dotted_values();
    let _ = bad.less(&good);
    let _ = DvvSet::update(DvvSet::new("n"), &bad, b());
}

#[test]
fn bincode_round_trip() {
    let s = set(vec![entry(a(), 2, &["x"]), entry(b(), 1, &["y"])], &[]).map_values(String::from);
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&s, cfg).expect("encode");
    let (back, _): (DvvSet<String>, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");
    assert_eq!(back, s);
    assert!(back.validate().is_ok());
    let vv = s.join();
    let bytes = bincode::serde::encode_to_vec(&vv, cfg).expect("encode");
    let (back, _): (VersionVector, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");
    assert_eq!(back, vv);
}

#[test]
fn version_vector_deserialize_rejects_unsorted() {
    let raw = vec![(b(), 1u64), (a(), 1u64)];
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&raw, cfg).expect("encode");
    let r: Result<(VersionVector, usize), _> = bincode::serde::decode_from_slice(&bytes, cfg);
    assert!(r.is_err());
}

use super::*;
use dynakv_ring::NodeId;

fn a(n: u32) -> Actor {
    Actor::new(NodeId(n), 3)
}

fn dot(n: u32, c: u64) -> Dot {
    Dot::new(a(n), c)
}

fn clock(dots: &[(u32, u64)]) -> NodeClock {
    let mut c = NodeClock::new();
    for &(n, k) in dots {
        c.add(&dot(n, k));
    }
    c
}

fn obj(versions: &[(u32, u64, &'static str)], seen: &[(u32, u64)]) -> Dcc<&'static str> {
    let mut context = clock(seen);
    for &(n, c, _) in versions {
        context.add(&dot(n, c));
    }
    let versions = versions.iter().map(|&(n, c, v)| (dot(n, c), v)).collect();
    Dcc::from_parts(versions, context).unwrap()
}

#[test]
fn a_seen_dot_is_never_added_again() {
    let mut o = obj(&[], &[(1, 1)]);
    assert!(!o.add(dot(1, 1), "old"));
    assert_eq!(o.value_count(), 0);
    assert!(o.add(dot(1, 2), "new"));
    assert_eq!(o.values(), vec![&"new"]);
}

#[test]
fn sparse_dots_of_one_actor_stay_exact() {
    // Counters per partition make an actor's dots in a key sparse: A:5 and A:9 live, A:7
    // superseded elsewhere. A DVVSet would read A:9's entry as covering A:1..=9.
    let mine = obj(&[(1, 5, "five"), (1, 9, "nine")], &[]);
    let theirs = obj(&[], &[(1, 7)]);
    let merged = mine.sync(&theirs);
    assert_eq!(merged.values(), vec![&"five", &"nine"]);
    assert!(!merged.context().contains(&dot(1, 6)));
    assert!(!merged.context_is_contiguous());
    // Whoever saw A:5 (and only it) drops exactly that version.
    let after = theirs.sync(&obj(&[], &[(1, 5)])).sync(&merged);
    assert_eq!(after.values(), vec![&"nine"]);
}

#[test]
fn sync_keeps_a_version_only_where_no_side_superseded_it() {
    let x = obj(&[(1, 1, "v1"), (2, 1, "w1")], &[]);
    let y = obj(&[(2, 1, "w1"), (3, 1, "u1")], &[(1, 1)]);
    let m = x.sync(&y);
    assert_eq!(m.values(), vec![&"w1", &"u1"]);
    assert_eq!(m, y.sync(&x));
    assert_eq!(m.sync(&m), m);
}

#[test]
fn the_node_clock_check_drops_a_late_copy_of_a_deleted_value() {
    // The replica stored v1 as A:1, then a delete superseded it and the key was removed: its
    // clock still holds A:1 (and the delete's dot A:2). A copy of v1 arriving any time later
    // is recognised as old.
    let mut k = clock(&[(1, 1), (1, 2)]);
    let absent: Dcc<&str> = Dcc::new();
    let late = obj(&[(1, 1, "v1")], &[]);
    let merged = absent.merge_replica(&late, &mut k, None);
    assert_eq!(merged.value_count(), 0);
    assert_eq!(k, clock(&[(1, 1), (1, 2)]));
    // Without the check (a plain sync) it would come back.
    assert_eq!(absent.sync(&late).values(), vec![&"v1"]);
}

#[test]
fn merge_replica_adds_unseen_versions_and_records_their_dots() {
    let mut k = clock(&[(1, 1)]);
    let local = obj(&[(1, 1, "v1")], &[]);
    let incoming = obj(&[(2, 4, "w")], &[(1, 1)]);
    let merged = local.merge_replica(&incoming, &mut k, None);
    assert_eq!(
        merged.values(),
        vec![&"w"],
        "the incoming context superseded v1"
    );
    assert!(k.contains(&dot(2, 4)));
    // A late copy of what was superseded, or of w itself, changes nothing.
    let again = merged.merge_replica(&local, &mut k, None);
    assert_eq!(again, merged);
    assert_eq!(merged.merge_replica(&incoming, &mut k, None), merged);
}

#[test]
fn merge_replica_with_an_empty_clock_is_sync() {
    let x = obj(&[(1, 1, "v1"), (2, 2, "w2")], &[(3, 1)]);
    let y = obj(&[(2, 2, "w2"), (3, 2, "u2")], &[(1, 1)]);
    assert_eq!(x.merge_replica(&y, &mut NodeClock::new(), None), x.sync(&y));
}

#[test]
fn a_transfer_snapshot_drops_local_versions_the_sender_saw_superseded() {
    // The sender saw A:1 and no longer holds it; its batch holds the key without A:1's
    // version (or not at all): the receiver's stale A:1 goes.
    let local = obj(&[(1, 1, "v1"), (2, 1, "w1")], &[]);
    let incoming: Dcc<&str> = Dcc::new();
    let snapshot = clock(&[(1, 1)]);
    let merged = local.merge_replica(&incoming, &mut NodeClock::new(), Some(&snapshot));
    assert_eq!(merged.values(), vec![&"w1"]);
}

#[test]
fn update_mints_the_next_dot_and_discards_what_the_client_saw() {
    let server = obj(&[(1, 1, "v1"), (2, 1, "w1")], &[]);
    let (out, d) = Dcc::update(&server, &clock(&[(1, 1)]), a(1), "v2").unwrap();
    assert_eq!(d, dot(1, 2));
    assert_eq!(out.values(), vec![&"v2", &"w1"]);
    // A client context that knows more of our actor than we hold moves the counter on.
    let (out, d) = Dcc::update(&Dcc::new(), &clock(&[(1, 1), (1, 2), (1, 3)]), a(1), "x").unwrap();
    assert_eq!(d, dot(1, 4));
    assert_eq!(out.value_count(), 1);
}

#[test]
fn from_parts_refuses_unsorted_repeated_or_unseen_versions() {
    let ctx = clock(&[(1, 1), (1, 2)]);
    let unsorted = vec![(dot(1, 2), "b"), (dot(1, 1), "a")];
    assert!(Dcc::from_parts(unsorted, ctx.clone()).is_err());
    let repeated = vec![(dot(1, 1), "a"), (dot(1, 1), "a")];
    assert!(Dcc::from_parts(repeated, ctx.clone()).is_err());
    let unseen = vec![(dot(1, 3), "c")];
    let err = Dcc::from_parts(unseen, ctx.clone()).unwrap_err();
    assert!(err.to_string().contains("outside the context"), "{err}");
    assert!(Dcc::from_parts(vec![(dot(1, 1), "a")], ctx).is_ok());
}

#[test]
fn from_vector_sees_exactly_the_covered_dots() {
    let v = VersionVector::from_entries(vec![(a(1), 3), (a(2), 1)]);
    let c = NodeClock::from_vector(&v);
    assert!(c.contains(&dot(1, 3)) && c.contains(&dot(2, 1)));
    assert!(!c.contains(&dot(1, 4)) && !c.contains(&dot(2, 2)));
    assert_eq!(c.base_vector(), v);
}

#[test]
fn update_refuses_to_mint_past_the_counter_limit() {
    let mut seen = NodeClock::new();
    seen.add_range(a(1), 1, MAX_COUNTER);
    assert!(Dcc::update(&Dcc::new(), &seen, a(1), "x").is_none());
    seen.add_range(a(2), 1, MAX_COUNTER - 1);
    let (_, d) = Dcc::update(&Dcc::new(), &seen, a(2), "x").unwrap();
    assert_eq!(d, dot(2, MAX_COUNTER));
}

#[test]
fn a_dvvset_converts_exactly() {
    let mut set = DvvSet::new("v1");
    set = DvvSet::update(set, &DvvSet::empty(), a(1));
    let w = DvvSet::update(DvvSet::new("w1"), &DvvSet::empty(), a(2));
    let set = set.sync(&w);
    let set = DvvSet::update(DvvSet::new_with_context(&set.join(), "v2"), &set, a(1));
    let w2 = DvvSet::update(DvvSet::new("w2"), &set, a(2));
    let dcc = Dcc::from_dvvset(&w2).unwrap();
    assert_eq!(dcc.values(), vec![&"v2", &"w2"]);
    assert_eq!(dcc.versions().first().map(|v| v.0), Some(dot(1, 2)));
    assert_eq!(dcc.top_vector(), w2.join());
    // A client-built set (a value without a dot) is not a replica state.
    assert!(Dcc::from_dvvset(&DvvSet::new("anonymous")).is_err());
}

#[test]
fn decoding_checks_the_invariants() {
    let o = obj(&[(1, 2, "v"), (2, 1, "w")], &[(1, 1)]);
    let bytes = crate::codec::encode(&o).unwrap();
    let back: Dcc<String> = crate::codec::decode(&bytes).unwrap();
    assert_eq!(back.values(), vec!["v", "w"]);
    assert_eq!(back.context(), o.context());
    // A version whose dot is outside the context, and a clock out of normal form, are refused.
    let forged = (vec![(dot(1, 3), "x".to_string())], clock(&[(1, 1)]));
    let bytes = crate::codec::encode(&forged).unwrap();
    assert!(crate::codec::decode::<Dcc<String>>(&bytes).is_err());
    // One entry (actor, base 1, range 2..=2): the range touches the base, so not normal form.
    let raw = vec![(a(1), 1u64, vec![(2u64, 2u64)])];
    let bytes = crate::codec::encode(&(Vec::<(Dot, String)>::new(), raw)).unwrap();
    let err = crate::codec::decode::<Dcc<String>>(&bytes).unwrap_err();
    assert!(err.to_string().contains("normal form"), "{err}");
}

#[cfg(feature = "planted-bugs")]
#[test]
fn keep_only_newest_drops_siblings_but_not_history() {
    let o = obj(
        &[(1, 2, "a2"), (1, 3, "a3"), (2, 3, "b3"), (3, 1, "c1")],
        &[(1, 1)],
    );
    let k = o.keep_only_newest();
    // Counter tie between A:3 and B:3: the larger actor (B) wins.
    assert_eq!(k.values(), vec![&"b3"]);
    assert_eq!(k.context(), o.context());
    assert!(Dcc::<&str>::new().keep_only_newest().is_empty());
}

//! Property tests of node clocks against a model: a plain set of dots.
//!
//! Random clocks are built from random ranges of a few actors; every operation is compared with
//! the same operation on a `BTreeSet<Dot>`, and the lattice laws of `merge` are checked directly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use dynakv_proto::codec::clock::{decode_clock, encode_clock};
use dynakv_proto::dvv::{Actor, Dot, NodeClock};
use dynakv_ring::NodeId;
use proptest::prelude::*;

fn actor(i: u8) -> Actor {
    Actor::new(NodeId(u32::from(i % 3) + 1), u64::from(i / 3))
}

/// (actor, lo, length): small counters, so ranges overlap, touch and fill gaps often.
fn arb_ranges() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
    prop::collection::vec((0u8..5, 1u64..40, 0u64..6), 0..24)
}

fn build(ranges: &[(u8, u64, u64)]) -> (NodeClock, BTreeSet<Dot>) {
    let mut clock = NodeClock::new();
    let mut model = BTreeSet::new();
    for &(a, lo, len) in ranges {
        clock.add_range(actor(a), lo, lo + len);
        for c in lo..=lo + len {
            model.insert(Dot::new(actor(a), c));
        }
    }
    (clock, model)
}

fn dots_of(clock: &NodeClock) -> BTreeSet<Dot> {
    let mut out = BTreeSet::new();
    for (a, e) in clock.entries() {
        for c in 1..=e.base() {
            out.insert(Dot::new(*a, c));
        }
        for &(lo, hi) in e.ranges() {
            for c in lo..=hi {
                out.insert(Dot::new(*a, c));
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn a_clock_holds_exactly_the_dots_added(ranges in arb_ranges()) {
        let (clock, model) = build(&ranges);
        prop_assert_eq!(dots_of(&clock), model.clone());
        for a in 0..5 {
            for c in 0..50 {
                let d = Dot::new(actor(a), c);
                prop_assert_eq!(clock.contains(&d), model.contains(&d));
            }
        }
        for (a, e) in clock.entries() {
            prop_assert!(!e.is_empty());
            prop_assert!(e.validate());
            // The base is the contiguous prefix: the dot right above it is missing.
            prop_assert!(!model.contains(&Dot::new(*a, e.base() + 1)));
        }
    }

    #[test]
    fn the_normal_form_does_not_depend_on_the_order_of_adds(ranges in arb_ranges()) {
        let (forward, _) = build(&ranges);
        let mut reversed = ranges.clone();
        reversed.reverse();
        let (backward, _) = build(&reversed);
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn merge_is_the_union_and_a_semilattice(
        x in arb_ranges(), y in arb_ranges(), z in arb_ranges()
    ) {
        let ((a, ma), (b, mb), (c, _)) = (build(&x), build(&y), build(&z));
        let mut ab = a.clone();
        ab.merge(&b);
        prop_assert_eq!(dots_of(&ab), ma.union(&mb).copied().collect::<BTreeSet<_>>());
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert_eq!(&ab, &ba);
        let mut aa = a.clone();
        aa.merge(&a);
        prop_assert_eq!(&aa, &a);
        let mut ab_c = ab.clone();
        ab_c.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(ab_c, a_bc);
    }

    #[test]
    fn missing_is_the_set_difference(x in arb_ranges(), y in arb_ranges()) {
        let ((a, ma), (b, mb)) = (build(&x), build(&y));
        let mut missing = BTreeSet::new();
        for (actor, lo, hi) in a.missing_from(&b) {
            prop_assert!(lo <= hi);
            for c in lo..=hi {
                missing.insert(Dot::new(actor, c));
            }
        }
        prop_assert_eq!(missing, ma.difference(&mb).copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn the_base_vector_covers_only_seen_dots(ranges in arb_ranges()) {
        let (clock, model) = build(&ranges);
        let fill = clock.base_vector();
        for a in 0..5 {
            for c in 1..50 {
                let d = Dot::new(actor(a), c);
                if fill.covers(&d) {
                    prop_assert!(model.contains(&d));
                }
            }
        }
    }

    #[test]
    fn clocks_round_trip_through_the_codec(ranges in arb_ranges()) {
        let (clock, _) = build(&ranges);
        let bytes = encode_clock(&clock);
        prop_assert_eq!(decode_clock(&bytes).unwrap(), clock);
    }

    #[test]
    fn decoding_random_bytes_never_panics_and_yields_normal_forms(
        bytes in prop::collection::vec(any::<u8>(), 0..48)
    ) {
        let mut input = vec![0xC1];
        input.extend(bytes);
        if let Ok(clock) = decode_clock(&input) {
            // Whatever decodes re-encodes to the same bytes: one encoding per clock.
            prop_assert_eq!(encode_clock(&clock), input);
        }
    }
}

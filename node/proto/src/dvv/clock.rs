//! Node clocks: the set of dots one partition replica has seen.
//!
//! This is the first building block of the server-wide clocks design
//! (docs/design/server-wide-clocks.md, section 1.1). Per actor, a node clock keeps a contiguous
//! `base` (every dot `1..=base` seen) plus sorted, disjoint ranges above it for the dots seen out of
//! order. Once the gaps fill, the ranges fold into `base` and the entry is one number again, so
//! its size follows the number of actors and of gaps, not of keys or writes.
//!
//! Holes are ranges rather than a bitmap: a gap of any width costs the same 16 bytes.

use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Actor, Dot, VersionVector, MAX_COUNTER};

/// One actor's part of a [`NodeClock`]: dots `1..=base`, plus the inclusive `ranges`.
///
/// Normal form, which every operation keeps and [`ClockEntry::validate`] checks: ranges sorted,
/// each `lo <= hi`, the first starting above `base + 1`, each later one above the previous
/// `hi + 1` (no overlap, no adjacency), every counter in `1..=MAX_COUNTER`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClockEntry {
    base: u64,
    ranges: Vec<(u64, u64)>,
}

impl ClockEntry {
    /// Builds an entry from a base and ranges in normal form; `None` if they are not (see the
    /// type's docs). Use it for decoded data.
    pub fn new(base: u64, ranges: Vec<(u64, u64)>) -> Option<Self> {
        let entry = ClockEntry { base, ranges };
        entry.validate().then_some(entry)
    }

    /// Every dot up to here has been seen.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The dots seen above `base + 1`, as sorted inclusive ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// No dot seen.
    pub fn is_empty(&self) -> bool {
        self.base == 0 && self.ranges.is_empty()
    }

    /// The highest dot seen (0 if none).
    pub fn top(&self) -> u64 {
        self.ranges.last().map_or(self.base, |r| r.1)
    }

    /// Whether dot `counter` has been seen.
    pub fn contains(&self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter <= self.base {
            return true;
        }
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < counter {
                    Ordering::Less
                } else if lo > counter {
                    Ordering::Greater
                } else {
                    Ordering::Equal
                }
            })
            .is_ok()
    }

    /// Records every dot in `lo..=hi` as seen (an empty or zero range changes nothing; counters
    /// above [`MAX_COUNTER`] are cut off there).
    pub fn add_range(&mut self, lo: u64, hi: u64) {
        let lo = lo.max(1);
        let hi = hi.min(MAX_COUNTER);
        if lo > hi || hi <= self.base {
            return;
        }
        let lo = lo.max(self.base + 1);
        // Ranges strictly below the new one (not even adjacent) stay, as do those strictly above;
        // everything in between is absorbed.
        let first = self.ranges.partition_point(|r| r.1.saturating_add(1) < lo);
        let last = self.ranges.partition_point(|r| r.0 <= hi.saturating_add(1));
        let (mut new_lo, mut new_hi) = (lo, hi);
        if let Some(absorbed) = self.ranges.get(first..last) {
            if let (Some(a), Some(b)) = (absorbed.first(), absorbed.last()) {
                new_lo = new_lo.min(a.0);
                new_hi = new_hi.max(b.1);
            }
        }
        self.ranges.splice(first..last, [(new_lo, new_hi)]);
        self.fold();
    }

    /// Records one dot as seen.
    pub fn add(&mut self, counter: u64) {
        self.add_range(counter, counter);
    }

    /// Adds everything `other` has seen. Linear in the ranges of both sides (one pass over the
    /// two sorted interval lists), so a peer's clock with many holes costs what it weighs.
    pub fn merge(&mut self, other: &ClockEntry) {
        if other.ranges.is_empty() {
            self.add_range(1, other.base);
            return;
        }
        let mut merged: Vec<(u64, u64)> =
            Vec::with_capacity(self.ranges.len() + other.ranges.len() + 1);
        let (mut a, mut b) = (self.intervals().peekable(), other.intervals().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            let Some((lo, hi)) = next else { break };
            match merged.last_mut() {
                // Overlapping or adjacent: one interval.
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        drop((a, b));
        let base = match merged.first() {
            Some(&(1, hi)) => hi,
            _ => 0,
        };
        let skip = usize::from(base > 0);
        self.base = base;
        self.ranges = merged.split_off(skip.min(merged.len()));
    }

    /// The dots seen here and not in `other`, as sorted inclusive ranges. Linear in the ranges of
    /// both sides.
    pub fn missing_from(&self, other: &ClockEntry) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut theirs = other.intervals().peekable();
        for (lo, hi) in self.intervals() {
            let mut lo = lo;
            // Intervals of `other` wholly below this one cannot matter to any later one either.
            while theirs.next_if(|&(_, ohi)| ohi < lo).is_some() {}
            while let Some(&(olo, ohi)) = theirs.peek() {
                if olo > hi {
                    break;
                }
                if olo > lo {
                    out.push((lo, olo - 1));
                }
                lo = ohi.saturating_add(1);
                if ohi > hi {
                    break; // it may still cover the start of the next interval
                }
                theirs.next();
                if lo > hi {
                    break;
                }
            }
            if lo <= hi {
                out.push((lo, hi));
            }
        }
        out
    }

    /// Checks the normal form (see the type's docs).
    pub fn validate(&self) -> bool {
        if self.base > MAX_COUNTER {
            return false;
        }
        let mut floor = self.base.saturating_add(1); // the next range must start above this
        for &(lo, hi) in &self.ranges {
            if lo <= floor || lo > hi || hi > MAX_COUNTER {
                return false;
            }
            floor = hi.saturating_add(1);
        }
        true
    }

    /// All seen dots as sorted inclusive intervals, the base first.
    fn intervals(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.base > 0)
            .then_some((1, self.base))
            .into_iter()
            .chain(self.ranges.iter().copied())
    }

    /// Moves a range that starts right above `base` into it.
    fn fold(&mut self) {
        while let Some(&(lo, hi)) = self.ranges.first() {
            if lo > self.base.saturating_add(1) {
                break;
            }
            self.base = self.base.max(hi);
            self.ranges.remove(0);
        }
    }
}

/// The dots a partition replica has seen, per actor (see the [module docs](self)).
///
/// Entries are sorted by actor and never empty, so equal clocks compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeClock {
    entries: Vec<(Actor, ClockEntry)>,
}

impl NodeClock {
    /// A clock that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a clock from decoded entries; `None` unless they are sorted by actor, unique,
    /// non-empty and each in normal form.
    pub fn from_entries(entries: Vec<(Actor, ClockEntry)>) -> Option<Self> {
        let ordered = entries.windows(2).all(|w| match (w.first(), w.get(1)) {
            (Some(a), Some(b)) => a.0 < b.0,
            _ => true,
        });
        let valid = entries.iter().all(|(_, e)| !e.is_empty() && e.validate());
        (ordered && valid).then_some(NodeClock { entries })
    }

    /// The clock that has seen exactly the dots a version vector covers (`1..=n` per actor).
    pub fn from_vector(vector: &VersionVector) -> Self {
        let mut clock = NodeClock::new();
        for (actor, n) in vector.entries() {
            clock.add_range(*actor, 1, *n);
        }
        clock
    }

    /// The per-actor entries, sorted by actor.
    pub fn entries(&self) -> &[(Actor, ClockEntry)] {
        &self.entries
    }

    /// Nothing seen (no actor).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many actors this clock knows.
    pub fn actor_count(&self) -> usize {
        self.entries.len()
    }

    /// How many out-of-order ranges it holds in all (0 once every gap filled).
    pub fn range_count(&self) -> usize {
        self.entries.iter().map(|(_, e)| e.ranges.len()).sum()
    }

    /// The entry of `actor`, if it has seen any of its dots.
    pub fn entry(&self, actor: &Actor) -> Option<&ClockEntry> {
        self.entries
            .binary_search_by(|(a, _)| a.cmp(actor))
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|(_, e)| e)
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.entry(&dot.actor)
            .is_some_and(|e| e.contains(dot.counter))
    }

    /// The highest counter of `actor` seen (0 if none).
    pub fn top(&self, actor: &Actor) -> u64 {
        self.entry(actor).map_or(0, ClockEntry::top)
    }

    /// Records `dot` as seen.
    pub fn add(&mut self, dot: &Dot) {
        self.add_range(dot.actor, dot.counter, dot.counter);
    }

    /// Records every dot of `actor` in `lo..=hi` as seen.
    pub fn add_range(&mut self, actor: Actor, lo: u64, hi: u64) {
        let i = match self.entries.binary_search_by(|(a, _)| a.cmp(&actor)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (actor, ClockEntry::default()));
                i
            }
        };
        if let Some((_, e)) = self.entries.get_mut(i) {
            e.add_range(lo, hi);
            if e.is_empty() {
                self.entries.remove(i);
            }
        }
    }

    /// Adds everything `other` has seen (the union; commutative, associative, idempotent).
    pub fn merge(&mut self, other: &NodeClock) {
        for (actor, e) in &other.entries {
            match self.entries.binary_search_by(|(a, _)| a.cmp(actor)) {
                Ok(i) => {
                    if let Some((_, mine)) = self.entries.get_mut(i) {
                        mine.merge(e);
                    }
                }
                Err(i) => self.entries.insert(i, (*actor, e.clone())),
            }
        }
    }

    /// Whether this clock has seen every dot `other` has seen.
    pub fn descends(&self, other: &NodeClock) -> bool {
        other.missing_from(self).is_empty()
    }

    /// The contiguous part as a version vector: per actor, its `base` (actors without one are
    /// left out). This is what the design calls the fill.
    pub fn base_vector(&self) -> VersionVector {
        VersionVector::from_entries(self.entries.iter().map(|(a, e)| (*a, e.base)).collect())
    }

    /// The dots this clock has seen and `other` has not, as `(actor, lo, hi)` ranges sorted by
    /// actor and counter: what a replica holding `other` should be sent.
    pub fn missing_from(&self, other: &NodeClock) -> Vec<(Actor, u64, u64)> {
        let empty = ClockEntry::default();
        let mut out = Vec::new();
        for (actor, e) in &self.entries {
            let theirs = other.entry(actor).unwrap_or(&empty);
            out.extend(
                e.missing_from(theirs)
                    .into_iter()
                    .map(|(lo, hi)| (*actor, lo, hi)),
            );
        }
        out
    }
}

/// The serde form: `(actor, base, ranges)` per actor. Stored objects and peer messages carry
/// clocks this way (bincode); [`crate::codec::clock`] is the compact form for clock exchanges.
type SerdeEntry = (Actor, u64, Vec<(u64, u64)>);

impl Serialize for NodeClock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter().map(|(a, e)| (a, e.base, &e.ranges)))
    }
}

impl<'de> Deserialize<'de> for NodeClock {
    /// Decoded clocks are untrusted: anything out of normal form is refused.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<SerdeEntry>::deserialize(d)?;
        let mut entries = Vec::with_capacity(raw.len());
        for (i, (actor, base, ranges)) in raw.into_iter().enumerate() {
            let entry = ClockEntry::new(base, ranges).ok_or_else(|| {
                serde::de::Error::custom(format!("clock entry {i} is not in normal form"))
            })?;
            entries.push((actor, entry));
        }
        NodeClock::from_entries(entries).ok_or_else(|| {
            serde::de::Error::custom("clock entries are empty, repeated or out of actor order")
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynakv_ring::NodeId;

    fn a(n: u32) -> Actor {
        Actor::new(NodeId(n), 7)
    }

    #[test]
    fn out_of_order_dots_become_ranges_and_fold_into_the_base() {
        let mut e = ClockEntry::default();
        e.add(3);
        e.add(5);
        assert_eq!((e.base(), e.ranges()), (0, &[(3, 3), (5, 5)][..]));
        e.add(4);
        assert_eq!(e.ranges(), &[(3, 5)]);
        e.add_range(1, 2);
        assert_eq!((e.base(), e.ranges()), (5, &[][..]));
        e.add_range(9, 12);
        e.add_range(7, 7);
        assert_eq!((e.base(), e.ranges()), (5, &[(7, 7), (9, 12)][..]));
        e.add_range(6, 8);
        assert_eq!((e.base(), e.ranges()), (12, &[][..]));
        assert!(e.contains(12) && !e.contains(13) && !e.contains(0));
    }

    #[test]
    fn missing_names_exactly_the_dots_the_other_side_lacks() {
        let mut mine = NodeClock::new();
        mine.add_range(a(1), 1, 10);
        mine.add_range(a(2), 4, 6);
        let mut theirs = NodeClock::new();
        theirs.add_range(a(1), 1, 3);
        theirs.add_range(a(1), 6, 7);
        assert_eq!(
            mine.missing_from(&theirs),
            vec![(a(1), 4, 5), (a(1), 8, 10), (a(2), 4, 6)]
        );
        assert!(theirs
            .missing_from(&mine)
            .iter()
            .all(|&(actor, lo, hi)| (lo..=hi).all(|c| !mine.contains(&Dot::new(actor, c)))));
    }

    #[test]
    fn the_base_vector_is_the_contiguous_part() {
        let mut c = NodeClock::new();
        c.add_range(a(1), 1, 4);
        c.add(&Dot::new(a(1), 9));
        c.add(&Dot::new(a(2), 2));
        assert_eq!(c.base_vector().get(&a(1)), 4);
        assert_eq!(c.base_vector().get(&a(2)), 0);
        assert_eq!(c.top(&a(1)), 9);
        assert_eq!(c.range_count(), 2);
        let mut below = NodeClock::new();
        below.add_range(a(1), 2, 4);
        assert!(c.descends(&below) && !below.descends(&c) && c.descends(&c));
        below.add(&Dot::new(a(1), 8));
        assert!(!c.descends(&below));
    }

    /// Two clocks with many interleaved holes (the odd dots, the even dots) merge into one base,
    /// and each lacks exactly the other's dots: both in one pass (a quadratic merge would take
    /// billions of steps here).
    #[test]
    fn interleaved_clocks_merge_into_one_base() {
        let n = 50_000u64;
        let (mut odd, mut even) = (NodeClock::new(), NodeClock::new());
        for k in 0..n {
            odd.add(&Dot::new(a(1), 2 * k + 1));
            even.add(&Dot::new(a(1), 2 * k + 2));
        }
        assert_eq!(
            (odd.range_count(), even.range_count()),
            (n as usize - 1, n as usize)
        );
        assert_eq!(odd.missing_from(&even).len(), n as usize);
        let mut both = odd.clone();
        both.merge(&even);
        assert_eq!((both.top(&a(1)), both.range_count()), (2 * n, 0));
        assert!(both.descends(&odd) && both.descends(&even) && !odd.descends(&even));
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(ClockEntry::new(3, vec![(4, 5)]).is_none()); // adjacent to the base
        assert!(ClockEntry::new(3, vec![(6, 5)]).is_none()); // backwards
        assert!(ClockEntry::new(3, vec![(5, 6), (7, 8)]).is_none()); // adjacent ranges
        assert!(ClockEntry::new(3, vec![(8, 9), (5, 6)]).is_none()); // unsorted
        assert!(ClockEntry::new(MAX_COUNTER + 1, vec![]).is_none());
        assert!(ClockEntry::new(3, vec![(5, 6), (8, 8)]).is_some());
        let e = ClockEntry::new(1, vec![]).unwrap();
        assert!(NodeClock::from_entries(vec![(a(2), e.clone()), (a(1), e.clone())]).is_none());
        assert!(NodeClock::from_entries(vec![(a(1), ClockEntry::default())]).is_none());
        assert!(NodeClock::from_entries(vec![(a(1), e.clone()), (a(2), e)]).is_some());
    }
}

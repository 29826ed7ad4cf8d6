//! Version vectors: the causal context that clients carry between a read and a write.

use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Actor, Dot};
use crate::error::Error;

/// The largest counter accepted from the network or disk (in a [`VersionVector`] or a
/// [`super::DvvSet`]).
///
/// Honest counters never come near it; the bound leaves headroom so that incrementing a counter can
/// never overflow, whatever a peer sent.
pub const MAX_COUNTER: u64 = 1 << 63;

/// A map from actor to the highest counter seen from that actor: a summary of a causal history.
///
/// This is the causal context returned by [`super::DvvSet::join`] and sent by clients with their
/// writes (as an opaque token, see [`crate::codec::token`]). Internally a vector sorted by actor,
/// without duplicates and without zero counters (a missing actor means counter 0), so that equal
/// histories compare and hash equal.
///
/// Deserialization checks those rules and rejects data that breaks them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(Actor, u64)>,
}

impl VersionVector {
    /// The empty context: has seen nothing. Use it for blind writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from entries in any order: sorts them, merges duplicate actors by taking the
    /// larger counter and drops zero counters. Use it for trusted, locally built data; for data from
    /// the network prefer [`VersionVector::try_from`], which rejects such input instead of fixing it.
    pub fn from_entries(mut entries: Vec<(Actor, u64)>) -> Self {
        entries.retain(|&(_, n)| n > 0);
        entries.sort_unstable();
        // After sorting, the largest counter of each actor is the last of its run.
        let mut out: Vec<(Actor, u64)> = Vec::with_capacity(entries.len());
        for (actor, n) in entries {
            match out.last_mut() {
                Some(last) if last.0 == actor => last.1 = n,
                _ => out.push((actor, n)),
            }
        }
        VersionVector { entries: out }
    }

    /// The highest counter seen from `actor` (0 if none).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.position(actor)
            .map_or(0, |i| self.entries.get(i).map_or(0, |e| e.1))
    }

    /// Whether this context has seen the write named by `dot`. A write whose dot is covered by a
    /// client's context is superseded by that client's write.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Merges `other` into `self` (per actor maximum): the context that has seen both histories.
    /// Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Self) {
        if other.entries.is_empty() {
            return;
        }
        let (a, b) = (&self.entries, &other.entries);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        loop {
            match (a.get(i), b.get(j)) {
                (None, None) => break,
                (Some(&x), None) => {
                    out.push(x);
                    i += 1;
                }
                (None, Some(&y)) => {
                    out.push(y);
                    j += 1;
                }
                (Some(&x), Some(&y)) => match x.0.cmp(&y.0) {
                    Ordering::Less => {
                        out.push(x);
                        i += 1;
                    }
                    Ordering::Greater => {
                        out.push(y);
                        j += 1;
                    }
                    Ordering::Equal => {
                        out.push((x.0, x.1.max(y.1)));
                        i += 1;
                        j += 1;
                    }
                },
            }
        }
        self.entries = out;
    }

    /// Whether this history includes all of `other` (equal counts as descending). Use it to decide
    /// whether one context makes another redundant.
    pub fn descends(&self, other: &Self) -> bool {
        other.entries.iter().all(|(a, n)| self.get(a) >= *n)
    }

    /// The entries, sorted by actor, counters all positive. Use it to encode or inspect the context.
    pub fn entries(&self) -> &[(Actor, u64)] {
        &self.entries
    }

    /// True when the context has seen nothing (a blind write's context).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of actors with a positive counter.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Checks the invariants (sorted, unique actors, counters in `1..=MAX_COUNTER`). Deserialization
    /// and [`VersionVector::try_from`] already run it; call it on values built by other means.
    pub fn validate(&self) -> Result<(), Error> {
        check_entries(&self.entries)
    }

    fn position(&self, actor: &Actor) -> Option<usize> {
        self.entries.binary_search_by(|e| e.0.cmp(actor)).ok()
    }
}

/// Strict conversion for untrusted entries: unlike [`VersionVector::from_entries`] it refuses
/// unsorted or duplicate actors, zero counters and counters above [`MAX_COUNTER`]
/// ([`Error::Decode`]).
impl TryFrom<Vec<(Actor, u64)>> for VersionVector {
    type Error = Error;

    fn try_from(entries: Vec<(Actor, u64)>) -> Result<Self, Error> {
        check_entries(&entries)?;
        Ok(VersionVector { entries })
    }
}

/// The shared rule check; the message names the first problem found.
pub(crate) fn check_entries(entries: &[(Actor, u64)]) -> Result<(), Error> {
    for (i, (actor, n)) in entries.iter().enumerate() {
        if *n == 0 {
            return Err(Error::Decode(format!(
                "version vector entry {i} has a zero counter"
            )));
        }
        if *n > MAX_COUNTER {
            return Err(Error::Decode(format!(
                "version vector entry {i} has counter {n} above the limit"
            )));
        }
        if let Some(prev) = i.checked_sub(1).and_then(|p| entries.get(p)) {
            match prev.0.cmp(actor) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(Error::Decode(format!(
                        "version vector entry {i} repeats an actor"
                    )))
                }
                Ordering::Greater => {
                    return Err(Error::Decode(format!(
                        "version vector entry {i} is out of actor order"
                    )))
                }
            }
        }
    }
    Ok(())
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<(Actor, u64)>::deserialize(d)?;
        VersionVector::try_from(entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynakv_ring::NodeId;

    fn act(n: u32) -> Actor {
        Actor::new(NodeId(n), 0)
    }

    #[test]
    fn from_entries_normalises() {
        let vv =
            VersionVector::from_entries(vec![(act(2), 3), (act(1), 0), (act(2), 5), (act(0), 1)]);
        assert_eq!(vv.entries(), &[(act(0), 1), (act(2), 5)]);
        assert_eq!(vv.get(&act(1)), 0);
        assert_eq!(vv.len(), 2);
        assert!(!vv.is_empty());
        assert!(VersionVector::new().is_empty());
    }

    #[test]
    fn merge_covers_descends() {
        let mut a = VersionVector::from_entries(vec![(act(1), 2), (act(3), 1)]);
        let b = VersionVector::from_entries(vec![(act(1), 1), (act(2), 4)]);
        assert!(!a.descends(&b) && !b.descends(&a));
        a.merge(&b);
        assert_eq!(a.entries(), &[(act(1), 2), (act(2), 4), (act(3), 1)]);
        assert!(a.descends(&b));
        assert!(a.covers(&Dot::new(act(2), 4)));
        assert!(!a.covers(&Dot::new(act(2), 5)));
        assert!(!a.covers(&Dot::new(act(9), 1)));
        assert!(a.descends(&VersionVector::new()));
    }

    #[test]
    fn incarnations_are_distinct_actors() {
        let old = Actor::new(NodeId(1), 0);
        let new = Actor::new(NodeId(1), 1);
        let vv = VersionVector::from_entries(vec![(old, 7)]);
        assert!(!vv.covers(&Dot::new(new, 1)));
    }

    #[test]
    fn try_from_rejects_bad_entries() {
        let bad = [
            (vec![(act(1), 0)], "zero"),
            (vec![(act(2), 1), (act(1), 1)], "order"),
            (vec![(act(1), 1), (act(1), 2)], "repeats"),
            (vec![(act(1), MAX_COUNTER + 1)], "limit"),
        ];
        for (entries, word) in bad {
            match VersionVector::try_from(entries) {
                Err(Error::Decode(m)) => assert!(m.contains(word), "{m}"),
                other => panic!("expected decode error, got {other:?}"),
            }
        }
        assert!(VersionVector::try_from(vec![(act(1), 1), (act(2), 1)]).is_ok());
    }
}

//! The dotted version vector set: the versioned container of one key's siblings.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{Actor, Dot, VersionVector, MAX_COUNTER};
use crate::error::Error;

/// One actor's part of a [`DvvSet`]: dots `1..=counter` are known; `values` (newest first) are the
/// alive values of the newest dots, value `k` having dot `(actor, counter - k)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry<V> {
    actor: Actor,
    counter: u64,
    values: Vec<V>,
}

impl<V> Entry<V> {
    /// The highest dot of this actor that is known without a value (everything up to it is dead).
    fn floor(&self) -> u64 {
        self.counter.saturating_sub(len_u64(self.values.len()))
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The siblings of one key, each tagged with a dot, plus the causal history that produced them.
///
/// See the [module documentation](super) for the representation and the semantics (those of the
/// Erlang `dvvset` module). Typical flow:
/// - a client's write becomes `DvvSet::new_with_context(&ctx, value)` (or [`DvvSet::new`] without a
///   context);
/// - the coordinator calls [`DvvSet::update`] with its stored set and its own [`Actor`];
/// - replicas merge what they receive with [`DvvSet::sync`];
/// - a read returns [`DvvSet::values`] and the context [`DvvSet::join`].
///
/// Data decoded from the network or disk must pass [`DvvSet::validate`] before use.
///
/// Equality compares the entries exactly and the anonymous values as a set (their order carries no
/// meaning).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DvvSet<V> {
    /// Sorted by actor, one entry per actor.
    entries: Vec<Entry<V>>,
    /// Values without a dot yet (only in client-built sets, before [`DvvSet::update`]).
    anonymous: Vec<V>,
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<V: PartialEq> PartialEq for DvvSet<V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.anonymous.iter().all(|v| other.anonymous.contains(v))
            && other.anonymous.iter().all(|v| self.anonymous.contains(v))
    }
}

impl<V: Eq> Eq for DvvSet<V> {}

impl<V> DvvSet<V> {
    /// A client's write without a causal context (a blind write): the value will survive next to
    /// every value already stored. Pass it to [`DvvSet::update`] at the coordinator.
    pub fn new(value: V) -> Self {
        DvvSet {
            entries: Vec::new(),
            anonymous: vec![value],
        }
    }

    /// A client's write that has seen the history `ctx` (the context returned by an earlier read):
    /// at [`DvvSet::update`], every stored value that `ctx` covers is replaced by `value`.
    pub fn new_with_context(ctx: &VersionVector, value: V) -> Self {
        let mut set = Self::from_context(ctx);
        set.anonymous.push(value);
        set
    }

    /// A set with no values and no history: what a replica holds for a key it never saw.
    pub fn empty() -> Self {
        DvvSet {
            entries: Vec::new(),
            anonymous: Vec::new(),
        }
    }

    /// A set that knows the history `ctx` but holds no value. Syncing it into a replica discards the
    /// replica's values that `ctx` covers; useful to express "these writes are obsolete" alone.
    pub fn from_context(ctx: &VersionVector) -> Self {
        DvvSet {
            entries: ctx
                .entries()
                .iter()
                .map(|&(actor, counter)| Entry {
                    actor,
                    counter,
                    values: Vec::new(),
                })
                .collect(),
            anonymous: Vec::new(),
        }
    }

    /// The causal context of this set: per actor, the highest counter known. Return it to clients
    /// with a read (as a token) so that their next write supersedes what they saw.
    pub fn join(&self) -> VersionVector {
        // Entries are sorted and unique; `from_entries` only drops zero counters (never present in
        // valid data) and keeps the order.
        VersionVector::from_entries(self.entries.iter().map(|e| (e.actor, e.counter)).collect())
    }

    /// All sibling values: anonymous ones first, then per actor (in actor order), newest first.
    /// This is what a read returns.
    pub fn values(&self) -> Vec<&V> {
        self.anonymous
            .iter()
            .chain(self.entries.iter().flat_map(|e| e.values.iter()))
            .collect()
    }

    /// Every value with its dot (`None` for anonymous values), in the order of
    /// [`DvvSet::values`]. Use it when individual writes must be tracked (checkers, repair).
    pub fn dotted_values(&self) -> Vec<(Option<Dot>, &V)> {
        let anonymous = self.anonymous.iter().map(|v| (None, v));
        let dotted = self.entries.iter().flat_map(|e| {
            e.values.iter().enumerate().map(move |(k, v)| {
                let counter = e.counter.saturating_sub(len_u64(k));
                (Some(Dot::new(e.actor, counter)), v)
            })
        });
        anonymous.chain(dotted).collect()
    }

    /// The number of sibling values (the length of [`DvvSet::values`]).
    pub fn value_count(&self) -> usize {
        self.anonymous.len() + self.entries.iter().map(|e| e.values.len()).sum::<usize>()
    }

    /// True when the set holds no value (it may still carry a causal history).
    pub fn is_empty(&self) -> bool {
        self.anonymous.is_empty() && self.entries.iter().all(|e| e.values.is_empty())
    }

    /// True when the history of `self` is strictly dominated by that of `other` (every counter of
    /// `self` is at most `other`'s, and the two differ). Values are not compared. Mirrors
    /// `dvvset:less/2`.
    pub fn less(&self, other: &Self) -> bool {
        strictly_greater(&other.entries, &self.entries)
    }

    /// Records a new write of `value` on this set with the next dot of `actor`, keeping every value
    /// already present (they are concurrent with it), and returns that dot. [`DvvSet::update`] uses
    /// it; call it directly only when the writer has seen exactly this set's history and wants to
    /// keep its siblings.
    pub fn event(&mut self, actor: Actor, value: V) -> Dot {
        match self.entries.binary_search_by(|e| e.actor.cmp(&actor)) {
            Ok(i) => match self.entries.get_mut(i) {
                Some(e) => {
                    // Counters are bounded by MAX_COUNTER on input, so this never saturates.
                    e.counter = e.counter.saturating_add(1);
                    e.values.insert(0, value);
                    Dot::new(actor, e.counter)
                }
                None => Dot::new(actor, 0), // unreachable: the index came from the search
            },
            Err(i) => {
                self.entries.insert(
                    i,
                    Entry {
                        actor,
                        counter: 1,
                        values: vec![value],
                    },
                );
                Dot::new(actor, 1)
            }
        }
    }

    /// Transforms every value, keeping dots and history (e.g. to drop payloads but keep the shape,
    /// or to convert between value types).
    pub fn map_values<W>(self, mut f: impl FnMut(V) -> W) -> DvvSet<W> {
        DvvSet {
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    actor: e.actor,
                    counter: e.counter,
                    values: e.values.into_iter().map(&mut f).collect(),
                })
                .collect(),
            anonymous: self.anonymous.into_iter().map(f).collect(),
        }
    }

    /// Checks the invariants that decoded data must satisfy before any other call: entries sorted
    /// by actor without duplicates, counters in `1..=MAX_COUNTER`, and no entry holding more values
    /// than it has dots. Call it on every set received from the network or read from disk.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, e) in self.entries.iter().enumerate() {
            if e.counter == 0 {
                return Err(Error::Decode(format!("dvv entry {i} has a zero counter")));
            }
            if e.counter > MAX_COUNTER {
                return Err(Error::Decode(format!(
                    "dvv entry {i} has counter {} above the limit",
                    e.counter
                )));
            }
            if len_u64(e.values.len()) > e.counter {
                return Err(Error::Decode(format!(
                    "dvv entry {i} holds {} values but only {} dots",
                    e.values.len(),
                    e.counter
                )));
            }
            if let Some(prev) = i.checked_sub(1).and_then(|p| self.entries.get(p)) {
                match prev.actor.cmp(&e.actor) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(Error::Decode(format!("dvv entry {i} repeats an actor")))
                    }
                    Ordering::Greater => {
                        return Err(Error::Decode(format!(
                            "dvv entry {i} is out of actor order"
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}

impl<V: Clone + PartialEq> DvvSet<V> {
    /// Merges two sets (replication, read repair, anti-entropy, hinted handoff): the result knows
    /// both histories and keeps each value that neither side has seen superseded. Mirrors
    /// `dvvset:sync/2`. On sets without anonymous values (all replica state) it is commutative,
    /// associative and idempotent, so replicas converge whatever the order of delivery.
    pub fn sync(&self, other: &Self) -> Self {
        let anonymous = if self.less(other) {
            other.anonymous.clone()
        } else if other.less(self) {
            self.anonymous.clone()
        } else {
            let mut union: Vec<V> =
                Vec::with_capacity(self.anonymous.len() + other.anonymous.len());
            for v in self.anonymous.iter().chain(other.anonymous.iter()) {
                if !union.contains(v) {
                    union.push(v.clone());
                }
            }
            union
        };
        DvvSet {
            entries: sync_entries(&self.entries, &other.entries),
            anonymous,
        }
    }

    /// Applies a client's write at the coordinator. `new` is the client's set (from
    /// [`DvvSet::new`] or [`DvvSet::new_with_context`]), `server` the coordinator's stored set and
    /// `actor` the coordinator's own identity. Every server value covered by the client's context is
    /// dropped, the rest are kept as siblings, and the new value gets the dot
    /// `(actor, max counter known for actor + 1)` — afterwards `result.join().get(&actor)`.
    /// Mirrors `dvvset:update/3`. Store the result and send it to the other replicas.
    ///
    /// If `new` carries several anonymous values, each gets its own dot (in order); if it carries
    /// none, the result is the plain sync of the context into `server`.
    pub fn update(new: Self, server: &Self, actor: Actor) -> Self {
        let DvvSet { entries, anonymous } = new;
        let context_only = DvvSet {
            entries,
            anonymous: Vec::new(),
        };
        let mut out = context_only.sync(server);
        for value in anonymous {
            out.event(actor, value);
        }
        out
    }
}

/// Merges two actor-sorted entry lists; entries of the same actor merge with [`merge_entry`].
fn sync_entries<V: Clone>(a: &[Entry<V>], b: &[Entry<V>]) -> Vec<Entry<V>> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => break,
            (Some(x), None) => {
                out.push(x.clone());
                i += 1;
            }
            (None, Some(y)) => {
                out.push(y.clone());
                j += 1;
            }
            (Some(x), Some(y)) => match x.actor.cmp(&y.actor) {
                Ordering::Less => {
                    out.push(x.clone());
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(y.clone());
                    j += 1;
                }
                Ordering::Equal => {
                    out.push(merge_entry(x, y));
                    i += 1;
                    j += 1;
                }
            },
        }
    }
    out
}

/// Merges two entries of the same actor (as `dvvset`'s merge/4). The result keeps the larger
/// counter; a dot stays alive only if it is alive on every side that knows it, i.e. the alive
/// window starts after the larger floor. The values come from the side with the larger counter
/// (the first on a tie), trimmed to that window.
fn merge_entry<V: Clone>(x: &Entry<V>, y: &Entry<V>) -> Entry<V> {
    let (hi, lo) = if x.counter >= y.counter {
        (x, y)
    } else {
        (y, x)
    };
    let values = if hi.floor() >= lo.floor() {
        hi.values.clone()
    } else {
        let keep = usize::try_from(hi.counter.saturating_sub(lo.floor())).unwrap_or(usize::MAX);
        hi.values.iter().take(keep).cloned().collect()
    };
    Entry {
        actor: hi.actor,
        counter: hi.counter,
        values,
    }
}

/// Whether history `a` strictly dominates history `b` (as `dvvset`'s greater/3). Relies on every
/// counter being positive, which [`DvvSet::validate`] enforces.
fn strictly_greater<V>(a: &[Entry<V>], b: &[Entry<V>]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut strict = false;
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return strict,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (Some(x), Some(y)) => match x.actor.cmp(&y.actor) {
                Ordering::Equal => {
                    match x.counter.cmp(&y.counter) {
                        Ordering::Less => return false,
                        Ordering::Greater => strict = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
                // `a` knows an actor that `b` does not.
                Ordering::Less => {
                    strict = true;
                    i += 1;
                }
                // `b` knows an actor that `a` does not.
                Ordering::Greater => return false,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

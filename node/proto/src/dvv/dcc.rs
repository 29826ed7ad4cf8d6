//! Dotted causal containers: the object the node stores for a key (`types::Object`), in the
//! form the server-wide clocks design needs (docs/design/server-wide-clocks.md, 1.2, 3 and 11).
//!
//! A [`Dcc`] is a set of *versions*, each a value with its own explicit [`Dot`], plus a causal
//! *context*: every dot whose write the holder has seen, live or superseded. Unlike a
//! [`super::DvvSet`], nothing assumes that an actor's live values carry its newest consecutive
//! counters, and the context is a [`NodeClock`] (a base plus ranges above it per actor) rather
//! than a version vector. So it stays exact when an actor's dots in a key are sparse: counters
//! per (actor, partition), or a context that names a dot without the ones below
//! it (section 11, holes 1 and 2). With per-key counters, as the coordinator mints today, every
//! operation gives the same siblings and the same context as the DVVSet one
//! (`node/proto/tests/dcc_props.rs` checks it on random histories).
//!
//! The merge a replica runs ([`Dcc::merge_replica`]) adds the *node-clock check*: an incoming
//! version whose dot the replica's clock has already seen, and which is not live in the key,
//! is old and is dropped. That is what rejects a late copy of a deleted value whatever its age.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Actor, Dot, DvvSet, NodeClock, VersionVector, MAX_COUNTER};
use crate::error::Error;

/// A key's versions and causal context (see the [module docs](self)).
///
/// Invariants, kept by every operation and checked by [`Dcc::from_parts`]: versions sorted by
/// dot with no dot twice, and every version's dot in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dcc<V> {
    versions: Vec<(Dot, V)>,
    context: NodeClock,
}

impl<V> Default for Dcc<V> {
    fn default() -> Self {
        Dcc {
            versions: Vec::new(),
            context: NodeClock::new(),
        }
    }
}

impl<V: Clone> Dcc<V> {
    /// The empty object: no version, nothing seen (an absent key).
    pub fn new() -> Self {
        Self::default()
    }

    /// An object with no version that has seen `context` (what a client context or a
    /// delete's history becomes).
    pub fn from_context(context: NodeClock) -> Self {
        Dcc {
            versions: Vec::new(),
            context,
        }
    }

    /// Builds an object from decoded parts; an error unless the versions are sorted by dot,
    /// unique, and all in the context.
    pub fn from_parts(versions: Vec<(Dot, V)>, context: NodeClock) -> Result<Self, Error> {
        for (i, pair) in versions.windows(2).enumerate() {
            if let [(a, _), (b, _)] = pair {
                if a >= b {
                    return Err(Error::Decode(format!(
                        "dcc version {} is not after version {i}",
                        i + 1
                    )));
                }
            }
        }
        if let Some(i) = versions.iter().position(|(d, _)| !context.contains(d)) {
            return Err(Error::Decode(format!(
                "dcc version {i} has a dot outside the context"
            )));
        }
        Ok(Dcc { versions, context })
    }

    /// The same object as a [`DvvSet`] (the record and backup format before the switch to
    /// DCCs). The DVVSet must be a replica state: every value carries a dot. Exact: the dots
    /// stay and the context is the DVVSet's version vector.
    pub fn from_dvvset(set: &DvvSet<V>) -> Result<Self, Error> {
        set.validate()?;
        let mut versions = Vec::with_capacity(set.value_count());
        for (dot, value) in set.dotted_values() {
            let dot =
                dot.ok_or_else(|| Error::Decode("object holds values without a dot".into()))?;
            versions.push((dot, value.clone()));
        }
        versions.sort_by_key(|(d, _)| *d);
        Self::from_parts(versions, NodeClock::from_vector(&set.join()))
    }

    /// The live versions, sorted by dot.
    pub fn versions(&self) -> &[(Dot, V)] {
        &self.versions
    }

    /// The live values, in dot order.
    pub fn values(&self) -> Vec<&V> {
        self.versions.iter().map(|(_, v)| v).collect()
    }

    /// Every dot the holder has seen.
    pub fn context(&self) -> &NodeClock {
        &self.context
    }

    /// How many versions are live.
    pub fn value_count(&self) -> usize {
        self.versions.len()
    }

    /// No version and nothing seen: the object carries no information at all.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.context.actor_count() == 0
    }

    /// Whether `dot` is one of the live versions.
    pub fn holds(&self, dot: &Dot) -> bool {
        self.versions.binary_search_by(|(d, _)| d.cmp(dot)).is_ok()
    }

    /// Adds the new version `(dot, value)`. Refused (returns `false`, nothing changes) when the
    /// context has already seen `dot`: a dot names one write, and one the holder saw and dropped
    /// is superseded.
    pub fn add(&mut self, dot: Dot, value: V) -> bool {
        if self.context.contains(&dot) {
            return false;
        }
        let at = self.versions.partition_point(|(d, _)| *d < dot);
        self.versions.insert(at, (dot, value));
        self.context.add(&dot);
        true
    }

    /// Drops every version that `seen` has seen and adds `seen` to the context: what a write
    /// with client context `seen` does to the versions it read.
    pub fn discard(&mut self, seen: &NodeClock) {
        self.versions.retain(|(d, _)| !seen.contains(d));
        self.context.merge(seen);
    }

    /// The merge of two objects (the join of DCCs): a version survives if both sides hold it,
    /// or if the side that lacks it has not seen its dot. The context is the union.
    /// Commutative, associative and idempotent.
    pub fn sync(&self, other: &Self) -> Self {
        let mut versions = Vec::with_capacity(self.versions.len().max(other.versions.len()));
        let (mut a, mut b) = (
            self.versions.iter().peekable(),
            other.versions.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some((da, va)), Some((db, _))) if da == db => {
                    versions.push((*da, va.clone()));
                    a.next();
                    b.next();
                }
                (Some((da, va)), Some((db, _))) if da < db => {
                    if !other.context.contains(da) {
                        versions.push((*da, va.clone()));
                    }
                    a.next();
                }
                (_, Some((db, vb))) => {
                    if !self.context.contains(db) {
                        versions.push((*db, vb.clone()));
                    }
                    b.next();
                }
                (Some((da, va)), None) => {
                    if !other.context.contains(da) {
                        versions.push((*da, va.clone()));
                    }
                    a.next();
                }
                (None, None) => break,
            }
        }
        let mut context = self.context.clone();
        context.merge(&other.context);
        Dcc { versions, context }
    }

    /// The coordinator's write (today's rule, per-key counters): the stored object `server`
    /// loses the versions the client's `seen` context covers, and `value` is added with the next
    /// dot of `actor` in the key. Returns the new object and the new dot, or `None` when the
    /// actor's counter in the key is already at [`MAX_COUNTER`] (no dot is left to mint).
    pub fn update(server: &Self, seen: &NodeClock, actor: Actor, value: V) -> Option<(Self, Dot)> {
        let mut out = server.clone();
        out.discard(seen);
        let next = out.context.top(&actor).checked_add(1)?;
        if next > MAX_COUNTER {
            return None;
        }
        let dot = Dot::new(actor, next);
        out.add(dot, value).then_some((out, dot))
    }

    /// [`Dcc::update`] for a minter whose own dots of this key at or below `floor` may have been
    /// reaped: the new dot is above `floor` too, and the new context covers every dot of `actor`
    /// up to the new one, so it stays one contiguous entry however far the counter jumped.
    ///
    /// The caller promises that each of its own dots of this key at or below the new counter is
    /// either in `server` or `seen`, or was superseded and then reaped (which is what `floor`
    /// records); claiming those as seen then loses nothing. A dot it minted and lost any other
    /// way (a delivered hint, a dropped partition, a corrupt record) needs a new actor instead.
    pub fn update_above(
        server: &Self,
        seen: &NodeClock,
        actor: Actor,
        floor: u64,
        value: V,
    ) -> Option<(Self, Dot)> {
        let mut out = server.clone();
        out.discard(seen);
        let next = out.context.top(&actor).max(floor).checked_add(1)?;
        if next > MAX_COUNTER {
            return None;
        }
        if next > 1 {
            out.context.add_range(actor, 1, next - 1);
        }
        let dot = Dot::new(actor, next);
        out.add(dot, value).then_some((out, dot))
    }

    /// The merge a replica runs when a copy `incoming` of the key arrives (section 3.2 of the
    /// design), given its node clock `clock` for the key's partition:
    /// - a local version stays if `incoming` holds it, or if neither `incoming` nor the
    ///   sender's clock `sender` (transfer snapshots only) has seen its dot;
    /// - an incoming version is added only if neither this object's context nor `clock` has
    ///   seen its dot: **the node-clock check**. A dot the replica saw and no longer holds was
    ///   superseded, so a copy carrying it is old, however late it arrives;
    /// - the context becomes the union, and `clock` gains every incoming version's dot (added
    ///   or dropped), so late copies also close the clock's holes.
    ///
    /// With an empty `clock` and no `sender` this is [`Dcc::sync`].
    pub fn merge_replica(
        &self,
        incoming: &Self,
        clock: &mut NodeClock,
        sender: Option<&NodeClock>,
    ) -> Self {
        let mut versions: Vec<(Dot, V)> = self
            .versions
            .iter()
            .filter(|(d, _)| {
                incoming.holds(d)
                    || (!incoming.context.contains(d) && !sender.is_some_and(|s| s.contains(d)))
            })
            .cloned()
            .collect();
        for (d, v) in &incoming.versions {
            if !self.holds(d) && !self.context.contains(d) && !clock.contains(d) {
                let at = versions.partition_point(|(x, _)| x < d);
                versions.insert(at, (*d, v.clone()));
            }
        }
        for (d, _) in &incoming.versions {
            clock.add(d);
        }
        let mut context = self.context.clone();
        context.merge(&incoming.context);
        Dcc { versions, context }
    }

    /// The context as a version vector (per actor, the highest counter seen). Exact only
    /// when the context has no holes ([`Dcc::context_is_contiguous`]), as with per-key counters.
    pub fn top_vector(&self) -> VersionVector {
        VersionVector::from_entries(
            self.context
                .entries()
                .iter()
                .map(|(a, e)| (*a, e.top()))
                .collect(),
        )
    }

    /// Whether every actor's seen dots are `1..=top` (the context is a plain version vector).
    pub fn context_is_contiguous(&self) -> bool {
        self.context.range_count() == 0
    }

    /// The same object with each value transformed by `f` (dots and context unchanged).
    pub fn map_values<W>(self, mut f: impl FnMut(V) -> W) -> Dcc<W> {
        Dcc {
            versions: self.versions.into_iter().map(|(d, v)| (d, f(v))).collect(),
            context: self.context,
        }
    }
}

impl<V: Clone> Dcc<V> {
    /// **Deliberately WRONG merge, for tests only.** Keeps the single version with the highest
    /// counter (ties to the larger actor) and drops its siblings while keeping the whole context,
    /// as a last-write-wins store would. It exists so that the simulator can plant this bug and
    /// prove its checkers catch it; never use it in the store.
    #[cfg(feature = "planted-bugs")]
    pub fn keep_only_newest(&self) -> Self {
        let best = self
            .versions
            .iter()
            .max_by_key(|(d, _)| (d.counter, d.actor))
            .cloned();
        Dcc {
            versions: best.into_iter().collect(),
            context: self.context.clone(),
        }
    }
}

impl<V: Serialize> Serialize for Dcc<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.versions, &self.context).serialize(s)
    }
}

impl<'de, V: Clone + Deserialize<'de>> Deserialize<'de> for Dcc<V> {
    /// Decoded objects are untrusted: they pass [`Dcc::from_parts`]'s checks.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (versions, context) = <(Vec<(Dot, V)>, NodeClock)>::deserialize(d)?;
        Dcc::from_parts(versions, context).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

//! Causality tracking for stored values: actors, dots, version vectors, node clocks, dotted causal
//! containers (the stored object) and dotted version vector sets (the format before them).
//!
//! # Why
//! Every value a node stores is tagged with a *dot*: the identity of the coordinator that accepted
//! the write (an [`Actor`]) and that actor's write counter at the time. Two writes are concurrent
//! when neither saw the other; both must survive as siblings until a client writes back with a
//! context that covers them. Per-server version vectors alone cannot tell "two clients wrote through
//! the same server from the same stale read" apart from "one client overwrote the other"; dots can.
//!
//! # Representation
//! A [`DvvSet`] is a compact encoding of a set of dotted values plus the causal history that produced
//! them:
//! - a list of *entries*, sorted by actor, each `(actor, n, values)`: the actor has issued dots
//!   `1..=n`, and `values` holds, newest first, the values that are still alive for the *newest*
//!   dots of that actor. Value `k` (0-based) of the list carries dot `(actor, n - k)`; every older dot
//!   of that actor is known and obsolete. So the alive dots of one actor always form a contiguous
//!   suffix of its history, which is what keeps the representation small.
//! - a list of *anonymous* values that carry no dot yet: a value freshly built by a client (with
//!   [`DvvSet::new`] or [`DvvSet::new_with_context`]) before a coordinator assigns it a dot in
//!   [`DvvSet::update`]. Replica state normally has none.
//!
//! The causal context handed to clients is the version vector of the entries ([`DvvSet::join`]):
//! per actor, the highest counter seen. It is an exact summary of everything the holder has seen.
//!
//! # Semantics
//! The operations reproduce, operation by operation, the `dvvset` module that Riak uses (Almeida,
//! Baquero, Gonçalves, Preguiça, Fonte, "Scalable and Accurate Causality Tracking for Eventually
//! Consistent Stores", DAIS 2014). In our own words:
//! - **sync** merges two sets. Per actor, the result knows the larger counter, and a value survives
//!   only if every side that knows its dot still holds it: the alive window of the result starts
//!   after the larger of the two "known but dead" prefixes. Anonymous values are kept from the side
//!   whose history strictly dominates, or from both sides when neither dominates. On replica states
//!   (no anonymous values) sync is commutative, associative and idempotent.
//! - **join** returns the causal context.
//! - **update** runs at a coordinator: it syncs the client's context (without its value) with the
//!   server's current set, which discards every server value whose dot the context covers and keeps
//!   the rest, and then records the new value with the next dot of the coordinator's actor.
//! - **less** is strict dominance of the causal histories.
//!
//! # The object the node stores
//! Since 2026-12-04 a key's object is a [`Dcc`] (dotted causal container): explicit dots per
//! version and a [`NodeClock`] as context, exact when an actor's dots in a key are sparse (the
//! counters per (actor, partition) of the server-wide clocks design), with the replica merge's
//! node-clock check. It agrees with [`DvvSet`] operation by operation under today's per-key
//! counters. [`DvvSet`] stays only to read records and backups written before the switch
//! ([`Dcc::from_dvvset`]) and as the reference the property tests compare with.
//!
//! # Identity and dot reuse
//! A dot must never name two different writes. An [`Actor`] therefore includes a 64-bit incarnation
//! that a node draws at random every time it starts (and again whenever it drops data it may have
//! minted dots for): a disk that lost a tail of synced writes, or was restored from an old copy,
//! cannot make it reissue a counter, because counters restart at 1 under an incarnation nobody has
//! seen.

mod clock;
mod dcc;
mod set;
mod version_vector;

pub use clock::{ClockEntry, NodeClock};
pub use dcc::Dcc;
pub use set::DvvSet;
pub use version_vector::{VersionVector, MAX_COUNTER};

use dynakv_ring::NodeId;
use serde::{Deserialize, Serialize};

/// The identity under which a node issues dots.
///
/// Use the node's current actor as the `actor` argument of [`Dcc::update`] whenever that node
/// coordinates a write. `incarnation` must change whenever the node starts (its disk may have lost
/// state: a wipe, a lost tail of synced writes, a restored backup): otherwise the node could
/// reissue dots the cluster already knows and acknowledged writes could be dropped as "already
/// seen".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node that owns this identity.
    pub node: NodeId,
    /// Which life of the node this is: random, drawn at every start.
    pub incarnation: u64,
}

impl Actor {
    /// Builds an actor from its parts.
    pub fn new(node: NodeId, incarnation: u64) -> Self {
        Actor { node, incarnation }
    }
}

/// The unique name of one write: the actor that coordinated it and that actor's counter (from 1).
///
/// Use it to reason about individual values (see [`DvvSet::dotted_values`]) and to ask whether a
/// causal context has seen a write ([`VersionVector::covers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who issued the dot.
    pub actor: Actor,
    /// The actor's event number, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// Builds a dot from its parts.
    pub fn new(actor: Actor, counter: u64) -> Self {
        Dot { actor, counter }
    }
}

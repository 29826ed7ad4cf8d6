//! Membership, failure detection and the convergent cluster state of dynakv, as a sans-IO
//! state machine: no sockets, no clock (time comes in as `u64` microseconds), no OS randomness
//! (the driver passes a seed), no hash-map iteration. The node and the simulator drive the same
//! code. See docs/MEMBERSHIP.md for the protocol as a whole.
//!
//! # Layout
//!
//! - [`state`](crate::state): [`ClusterState`], the CRDT every node holds a replica of (member
//!   table, versioned partition map, heartbeats), its merge and the laws it obeys.
//! - [`changes`](crate::changes): [`Change`] and the staging methods (`stage_join`,
//!   `stage_leave`, `stage_remove`, `mark_valid`, `finish_leave`), the one path by which the
//!   membership changes, and `reconcile`, which makes concurrent changes converge.
//! - [`message`](crate::message): [`GossipMsg`], the digests and deltas of the push-pull
//!   exchange, and the bound on message size ([`MAX_MESSAGE_BYTES`]).
//! - [`gossiper`](crate::gossiper): [`Gossiper`], the per-node state machine: rounds, push on
//!   change, joining through a seed (`gossiper/join.rs`), events for the node.
//! - [`phi`](crate::phi): [`PhiDetector`], the phi-accrual failure detector fed by heartbeats
//!   (a local opinion of up/down, never a membership change).
//! - [`error`](crate::error): [`GossipError`], the one error enum of the crate.
//!
//! # Typical use
//!
//! ```
//! use dynakv_gossip::{ClusterParams, GossipConfig, Gossiper, GossipEvent};
//! use dynakv_ring::NodeId;
//!
//! let params = ClusterParams { partitions: 64, replicas: 3 };
//! let cfg = GossipConfig::default();
//! let mut seed = Gossiper::bootstrap(NodeId(1), "a:7000".into(), params, 1, 11, cfg, 0)?;
//! let mut new = Gossiper::new(NodeId(2), "b:7000".into(), 1, 22, cfg);
//! new.add_seed(NodeId(1), "a:7000".into());
//!
//! // The driver moves messages; here by hand.
//! let (to, request) = new.tick(0).remove(0);
//! assert_eq!(to, NodeId(1));
//! for (to, reply) in seed.handle(0, NodeId(2), request)? {
//!     if to == NodeId(2) {
//!         new.handle(0, NodeId(1), reply)?;
//!     }
//! }
//! assert!(matches!(new.take_events()[0], GossipEvent::Joined { .. }));
//! assert_eq!(new.state().map(|s| s.fingerprint()), seed.state().map(|s| s.fingerprint()));
//! # Ok::<(), dynakv_gossip::GossipError>(())
//! ```

pub mod changes;
pub mod error;
pub mod gossiper;
pub mod message;
pub mod phi;
pub mod state;

pub use changes::Change;
pub use error::GossipError;
pub use gossiper::{GossipConfig, GossipEvent, Gossiper, Outbox};
pub use message::{Delta, Digest, GossipMsg, MapStamp, MemberStamp, MAX_MESSAGE_BYTES};
pub use phi::{PhiConfig, PhiDetector};
pub use state::{
    ClusterParams, ClusterState, Heartbeat, MapVersion, Member, MergeOutcome, Status, VersionedMap,
    MAX_ADDR_LEN, MAX_MEMBERS,
};

#[cfg(test)]
mod state_props;

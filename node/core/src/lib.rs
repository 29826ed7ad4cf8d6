//! dynakv-core: the deterministic sans-IO node core (see DESIGN.md).
//!
//! # Layout
//! - [`config`]: quorum defaults, limits, and the test-only planted bugs.
//! - `status`: `status_report` and `cluster_info`, assembled from the core's state.
//! - [`store`]: the `Store` trait, its durability contract, and the in-memory store.
//! - `ctx`: the shared context every mechanism takes as an argument (config, identity, map,
//!   store and data path, time, RNG, timers, outputs) and the `DataEvent`s the data path emits.
//! - `node`: `NodeCore`, the router: identity/incarnation, dispatch of inputs to the
//!   mechanisms, data events to the mechanisms that derive state from the data, effects.
//! - `replica`: the replica role (replica, fallback, or hinting on for a stale coordinator).
//! - `ops`: pending operations as small state machines (`on_ack`/`on_reply` -> `Progress`).
//! - `coordinator`: get/put/delete against the preference list with N/R/W and PR/PW, sloppy
//!   quorum (fallbacks with hints), forwarding, bounded read repair.
//! - `forward`: writes forwarded to a replica, coordinated at most once (claimed from the
//!   forwarder).
//! - `write`: the coordinator's write path (minting, W/PW acks, run-time fallbacks).
//! - `read`: the coordinator's read path (R/PR replies, bounded read repair).
//! - `hints`: durable hints on fallbacks and hinted handoff with backoff, resumable.
//! - `liveness`: local failure detection (peers believed down, links the driver reports up).
//! - `aae`: per-partition hash trees and the anti-entropy exchange.
//! - `aae_bucket`: one tree bucket's keys and object hashes, packed in one buffer.
//! - `reaper`: removing tombstones for good without resurrecting old values.
//! - `clocks`: per-partition node clocks (every dot stored here), the node-clock check that
//!   drops late copies, and the fill that answers for keys this node no longer holds.
//! - `clock_sync`: replicas close the holes of each other's partition clocks.
//! - `scan`: one page of a partition's stored keys, for `dynakv backup`.
//! - `scrub`: the background walk that checks every stored record at a bounded rate.
//! - `membership`: the gossiper, the persisted cluster state, join/leave progress.
//! - `membership_router`: what membership decides, routed to transfers, the map and
//!   anti-entropy; operator changes; the membership accessors.
//! - `meta`: node metadata (cluster state, transfer records) written before any data that
//!   depends on it; writes the disk refused are retried, and no data is stored meanwhile.
//! - `timers`: the one timer table (maintenance tick, operation timers).
//! - `transfer`: moving partitions to new replicas, checkpointed and resumable.
//! - `transfer_in`: the receiving side of transfers (in order, one pass at a time).
//! - `transfer_records`: the transfers' persisted checkpoints.
//! - `transfer_plan`: what to send and expect after a map change.
//! - `stray`: copies of partitions this node no longer replicates, handed over, then dropped.
//! - [`error`]: the crate's error enum.
//!
//! The core never reads a clock, the OS RNG or a socket and never spawns: time comes in with each
//! input, randomness from a seed, and every output is an [`Effect`] for the driver. Its
//! Cargo.toml has no tokio, quinn, sled, clap or rcgen, and CI checks `cargo tree` for them.

mod aae;
mod aae_bucket;
mod clock_sync;
mod clocks;
pub mod config;
mod coordinator;
mod ctx;
pub mod error;
mod forward;
mod hints;
mod liveness;
mod membership;
mod membership_router;
mod meta;
mod node;
mod ops;
mod read;
mod reaper;
mod replica;
mod scan;
mod scrub;
mod status;
pub mod store;
mod stray;
mod timers;
mod transfer;
mod transfer_in;
mod transfer_plan;
mod transfer_records;
mod write;

/// The formats the core speaks, re-exported for the core's modules and its users.
pub(crate) use dynakv_proto::{codec, dvv, types};

pub use aae::{PartitionTree, BUCKETS, SEGMENTS};
pub use config::{CoreConfig, PlantedBug};
pub use coordinator::MAX_TIMEOUT_MS;
pub use dynakv_proto::types::*;
pub use error::{Error, Result};
pub use membership::{static_addr, Bootstrap};
pub use node::NodeCore;
pub use transfer::{IncomingTransfer, OutgoingTransfer};

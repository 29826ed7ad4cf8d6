//! The deterministic sans-IO node core (see DESIGN.md).
//!
//! # Layout
//! - [`types`]: inputs, effects, client requests/replies and peer messages (plain data).
//! - [`config`]: quorum defaults, limits, and the test-only planted bugs.
//! - `node`: the state machine: identity/incarnation, dispatch, the replica role, timers, effects.
//! - `coordinator`: get/put/delete against the preference list with N/R/W and PR/PW, sloppy
//!   quorum (fallbacks with hints), forwarding, bounded read repair.
//! - `hints`: durable hints on fallbacks and hinted handoff with backoff, resumable.
//! - `aae`: per-partition hash trees and the anti-entropy exchange.
//! - `reaper`: removing tombstones for good without resurrecting old values.
//! - `membership`: the gossiper, the persisted cluster state, operator changes.
//! - `transfer`: moving partitions to new replicas, checkpointed and resumable.
//!
//! The core never reads a clock, the OS RNG or a socket and never spawns: time comes in with each
//! input, randomness from a seed, and every output is an [`types::Effect`] for the driver.

mod aae;
pub mod config;
mod coordinator;
mod hints;
mod membership;
mod node;
mod reaper;
mod transfer;
pub mod types;

pub use aae::{PartitionTree, BUCKETS, SEGMENTS};
pub use config::{CoreConfig, PlantedBug};
pub use coordinator::MAX_TIMEOUT_MS;
pub use membership::{static_addr, Bootstrap};
pub use node::{CoreStats, NodeCore};
pub use transfer::{IncomingTransfer, OutgoingTransfer};
pub use types::*;

//! dynakv-simulator: the deterministic network-fault simulator.
//!
//! It runs the REAL node core (`dynakv_core::NodeCore`, the code the QUIC driver runs) for
//! many nodes in one process, over a simulated network and disk in virtual time. One `u64` seed
//! fixes everything, so any failure replays exactly.
//!
//! # Layout
//! - [`config`]: cluster shape, workload size, allowed faults, and fault intensities per seed.
//! - [`harness`]: the step-by-step harness (cores wired directly, links that can be cut) for
//!   tests that drive one exchange at a time; the core's behaviour tests use it.
//! - `world`: the event queue, the simulated nodes (clock skew/drift, crash, pause, wipe) and
//!   network (latency, jitter, loss, duplication, partitions, clogs).
//! - `links`: each node's driver reporting its peer connections up or down
//!   (`Input::PeerStatus`), as the QUIC driver does.
//! - `faults`: the scheduler that injects partitions, clogs, crashes, wipes and pauses.
//! - `workload`: simulated clients (gets, blind puts, stale-context puts, merges, deletes).
//! - [`checker`]: the client history and the invariant checks.
//! - [`report`]: one run's summary (human text or JSON) and [`run`], the entry point.
//! - [`metadata`]: `dynakv-sim metadata`, the causal metadata the stores keep under churn.
//! - [`error`]: the crate's error enum.

pub mod checker;
pub mod config;
pub mod error;
mod faults;
pub mod harness;
mod links;
pub mod metadata;
pub mod report;
mod workload;
mod world;

pub use config::{FaultKind, FaultSet, SimConfig};
pub use error::SimError;
pub use report::{run, RunReport};
pub use world::World;

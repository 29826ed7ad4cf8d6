//! dynakv-node: one dynakv node.
//!
//! # Layout
//! - [`dvv`]: dotted version vector sets (DVVSet), version vectors, dots and actors.
//! - [`codec`]: the one place where bytes are encoded/decoded (bincode frames, context tokens,
//!   stored records); swap the codec here.
//! - [`error`]: the crate's error enum.
//! - [`net`]: TLS material (cluster CA, node certificates) and framing for the QUIC driver.
//! - [`core`]: the deterministic sans-IO node state machine (coordinator + replica).
//! - [`store`]: the `Store` trait, sled (production) and in-memory (simulator) stores, and the
//!   durability contract.
//! - [`wire`]: the frames on QUIC streams (client <-> node, node <-> node) and the client half of
//!   a request exchange.
//! - [`server`]: the real driver: tokio + quinn + sled around the core; cluster and node config
//!   files; graceful shutdown.

pub mod codec;
pub mod core;
pub mod dvv;
pub mod error;
pub mod net;
pub mod server;
pub mod store;
pub mod wire;

pub use error::{Error, Result};

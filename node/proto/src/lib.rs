//! dynakv-proto: the wire and disk formats of dynakv. No I/O: no tokio, quinn or sled.
//!
//! # Layout
//! - [`dvv`]: dotted version vector sets (DVVSet), version vectors, dots and actors.
//! - [`codec`]: the one place where bytes are encoded/decoded (bincode frames, context tokens,
//!   stored records); swap the codec here.
//! - [`types`]: client requests and replies, request errors, per-request options, and the peer
//!   messages between nodes (nested per mechanism).
//! - [`peer`]: the messages between nodes, one enum per mechanism.
//! - [`wire`]: the frames on QUIC streams (client <-> node, node <-> node), the status report,
//!   the protocol version.
//! - [`json`]: the JSON shapes of read and write replies (the CLI's output, the HTTP API).
//! - [`error`]: the crate's error enum.

pub mod codec;
pub mod dvv;
pub mod error;
pub mod json;
pub mod peer;
pub mod types;
pub mod wire;

pub use error::{Error, Result};
pub use types::*;

//! TLS and framing for the node's QUIC driver.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node certificates (identity `node-{id}.dynakv`) and the
//!   rustls/quinn server and client configs (mutual TLS between nodes, CA-only for clients).
//! - [`frame`]: `u32` big-endian length-prefixed frames on QUIC streams, size-limited before
//!   anything is allocated; plus an I/O-free encoder/decoder.
//! - [`endpoint`]: binding quinn endpoints, dialling a node, and reading the peer's node id from
//!   its verified certificate.
//! - `der` (private): the minimal DER reader behind [`tls::node_id_from_cert`].
//! - `files` (private): reading PEM files and writing them atomically (keys with mode 0600).

mod der;
pub mod endpoint;
mod files;
pub mod frame;
pub mod tls;

pub use endpoint::{client_endpoint, connect, peer_node_id, server_endpoint};
pub use frame::{encode_frame, read_frame, write_frame, FrameDecoder, DEFAULT_MAX_FRAME};
pub use tls::{
    client_config, node_client_config, node_id_from_cert, server_config, ClusterCa, NodeCert, ALPN,
    SERVER_NAME,
};

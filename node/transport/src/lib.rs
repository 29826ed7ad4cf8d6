//! dynakv-transport: TLS, framing and dialling for dynakv's QUIC connections.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node certificates (identity `node-{id}.dynakv`) and the
//!   rustls/quinn server and client configs (mutual TLS between nodes, CA-only for clients);
//!   the ALPN string that carries the protocol version; the TLS config of the HTTPS API.
//! - [`identity`]: who a verified certificate names (a node, or a client and its role), client
//!   certificates, and the roles.
//! - [`frame`]: `u32` big-endian length-prefixed frames on QUIC streams, size-limited before
//!   anything is allocated; plus an I/O-free encoder/decoder.
//! - [`endpoint`]: binding quinn endpoints, dialling a node, and reading the peer's node id from
//!   its verified certificate.
//! - [`call`](mod@call): one request/reply exchange on a new stream (the client half of the
//!   protocol).
//! - [`backoff`]: exponential backoff with jitter for the async retry loops (client failover,
//!   peer reconnects, joining through seeds).
//! - [`error`]: the crate's error enum.
//! - `x509` (private): SAN names, subject and public key of a certificate (rustls-webpki) and
//!   PEM reading (rustls-pki-types).
//! - `files` (private): reading PEM files and writing them atomically (keys with mode 0600).

pub mod backoff;
pub mod call;
pub mod endpoint;
pub mod error;
mod files;
pub mod frame;
pub mod identity;
pub mod tls;
mod x509;

pub use backoff::Backoff;
pub use call::call;
pub use endpoint::{
    certificate_refusal, client_endpoint, connect, is_peer_link, is_version_mismatch, peer_node_id,
    server_endpoint, DIAL_TIMEOUT,
};
pub use error::{Error, Result};
pub use frame::{encode_frame, read_frame, write_frame, FrameDecoder, DEFAULT_MAX_FRAME};
pub use identity::{
    check_client_name, identity_from_cert, peer_identity, ClientCert, Identity, Role,
};
pub use tls::{
    client_config, client_config_with_alpn, https_client_config, https_server_config,
    node_client_config, node_id_from_cert, server_config, ClusterCa, NodeCert, ALPN, PEER_ALPN,
    PROTOCOL_VERSION, SERVER_NAME,
};

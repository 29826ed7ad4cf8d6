//! The one error type of `dynakv-server`.

use thiserror::Error;

/// Every error the node driver reports.
use std::net::SocketAddr;

use dynakv_ring::NodeId;
use dynakv_transport::Role;

#[derive(Debug, Error)]
pub enum Error {
    /// The core refused to start or failed (data directory, storage, configuration).
    #[error(transparent)]
    Core(#[from] dynakv_core::Error),
    /// TLS material or the QUIC transport failed.
    #[error(transparent)]
    Transport(#[from] dynakv_transport::Error),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Proto(#[from] dynakv_proto::Error),
    /// The cluster file describes an impossible ring.
    #[error(transparent)]
    Ring(#[from] dynakv_ring::RingError),
    /// The data directory is missing, unreadable or belongs to another node.
    #[error("data directory problem: {0}")]
    DataDir(String),
    /// A config or cluster file is missing or invalid, or the flags contradict it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Joining the cluster through a seed failed; the message says why.
    #[error("join failed: {0}")]
    Join(String),
    /// The async runtime or a task failed.
    #[error("node runtime: {0}")]
    Runtime(String),
    /// A client certificate whose role is below the one the request needs.
    #[error(
        "permission denied: {what} needs the {needed} role; client {name:?} has the {role} \
         role (issue another certificate with `dynakv ca issue-client --role {needed}`)"
    )]
    RoleTooLow {
        what: &'static str,
        needed: Role,
        name: String,
        role: Role,
    },
    /// A node certificate used for a client request other than a joiner's.
    #[error(
        "permission denied: node certificates are for peers (this one is node {node}'s); use a \
         client certificate from `dynakv ca issue-client`, or set allow_node_clients = true \
         in the node config"
    )]
    NodeCertificate { node: NodeId },
    /// `dynakv join` on a node that is a member of a cluster already.
    #[error("node {0} is already in a cluster")]
    AlreadyInCluster(NodeId),
    /// `dynakv join` with this node itself as the seed.
    #[error("{0} is this node itself")]
    JoinSelf(SocketAddr),
    /// `dynakv join` through a seed that could not be reached or refused.
    #[error("cannot join through {seed}: {reason}")]
    SeedFailed { seed: SocketAddr, reason: String },
    /// The node stopped while the request was handled.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The same configuration error, said of the file at `path` (`what`: "cluster file").
    pub(crate) fn in_file(self, what: &str, path: &std::path::Path) -> Self {
        match self {
            Error::Config(m) => Error::Config(format!("bad {what} {}: {m}", path.display())),
            other => other,
        }
    }
}

/// Result alias for the server crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The one error type of `dynakv-core`.

use thiserror::Error;

/// Every error the node core reports to its driver.
#[derive(Debug, Error)]
pub enum Error {
    /// A record or message could not be encoded or decoded.
    #[error(transparent)]
    Proto(#[from] dynakv_proto::Error),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data directory is missing, unreadable or belongs to another node.
    #[error("data directory problem: {0}")]
    DataDir(String),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Errors from the ring crate.
    #[error(transparent)]
    Ring(#[from] dynakv_ring::RingError),
    /// The node has no cluster state yet (it is still joining).
    #[error("this node is not in a cluster yet")]
    NotJoined,
    /// Errors from the gossip crate (cluster state, staged changes).
    #[error(transparent)]
    Gossip(#[from] dynakv_gossip::GossipError),
}

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The one error type of `dynakv-server`.

use thiserror::Error;

/// Every error the node driver reports.
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
}

/// Result alias for the server crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

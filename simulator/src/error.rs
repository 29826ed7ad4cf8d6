//! The simulator library's error enum.

use thiserror::Error;

/// Errors of the simulator (not invariant violations: those are results, see `checker`).
#[derive(Debug, Error)]
pub enum SimError {
    /// Bad command-line arguments or configuration.
    #[error("{0}")]
    BadArgs(String),
    /// The node core refused to start (should not happen with the in-memory store).
    #[error("node failed to start: {0}")]
    Node(#[from] dynakv_core::Error),
    /// The ring refused the configuration.
    #[error(transparent)]
    Ring(#[from] dynakv_ring::RingError),
}

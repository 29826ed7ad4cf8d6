//! The one error type of the `dynakv-node` library.

use thiserror::Error;

/// Every error the node library reports.
#[derive(Debug, Error)]
pub enum Error {
    /// A causal-context token could not be decoded (bad base64, bad header, truncated, unsorted, ...).
    #[error("malformed context token: {0}")]
    MalformedContext(String),
    /// A frame or stored record could not be decoded.
    #[error("decode error: {0}")]
    Decode(String),
    /// A value could not be encoded.
    #[error("encode error: {0}")]
    Encode(String),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data directory is missing, unreadable or belongs to another node.
    #[error("data directory problem: {0}")]
    DataDir(String),
    /// TLS material (CA, certificate, key) is missing or invalid.
    #[error("tls error: {0}")]
    Tls(String),
    /// A network/transport failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// A frame exceeded the size limit; it was not decoded.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: u64 },
    /// Invalid configuration or request options.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Errors from the ring crate.
    #[error(transparent)]
    Ring(#[from] dynakv_ring::RingError),
}

/// Result alias for the node library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

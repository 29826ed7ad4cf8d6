//! The one error type of `dynakv-proto`.

use thiserror::Error;

/// Every error the wire and disk formats report.
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
}

/// Result alias for the proto crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

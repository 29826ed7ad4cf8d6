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
    /// A stored record failed its checksum (the disk or memory changed it).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A value could not be encoded.
    #[error("encode error: {0}")]
    Encode(String),
}

impl Error {
    /// The same decode failure, said of a part of a larger input (`what`, e.g. "node clock").
    pub(crate) fn within(self, what: &str) -> Self {
        match self {
            Error::Decode(m) => Error::Decode(format!("{what}: {m}")),
            other => other,
        }
    }

    /// A decode failure of a client's causal-context token.
    pub(crate) fn into_context(self) -> Self {
        match self {
            Error::Decode(m) => Error::MalformedContext(m),
            other => other,
        }
    }
}

/// Result alias for the proto crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

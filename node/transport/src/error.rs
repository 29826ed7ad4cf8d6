//! The one error type of `dynakv-transport`.

use thiserror::Error;

/// Every error the transport reports.
#[derive(Debug, Error)]
pub enum Error {
    /// TLS material (CA, certificate, key) is missing or invalid.
    #[error("tls error: {0}")]
    Tls(String),
    /// A network/transport failure (dial, stream, handshake, timeout).
    #[error("transport error: {0}")]
    Transport(String),
    /// The node at `addr` speaks another version of the dynakv protocol (no common ALPN).
    #[error(
        "{addr} speaks another dynakv protocol version (this side speaks version {ours}); \
         run the same dynakv release on every node and client"
    )]
    VersionMismatch { addr: String, ours: u32 },
    /// The node refused this side's certificate at the handshake: none was presented (every
    /// node requires one) or it is not from the cluster's CA. The message says what to do.
    #[error("{0}")]
    CertificateRefused(String),
    /// A frame exceeded the size limit; it was not decoded.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: u64 },
    /// A frame broke the framing (truncated, trailing bytes); the stream is out of sync.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame's payload could not be encoded or decoded.
    #[error(transparent)]
    Proto(#[from] dynakv_proto::Error),
}

/// Result alias for the transport crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! [`ClientError`]: every error the client reports. Each renders as one line that names the node
//! involved when there is one.

use std::net::SocketAddr;

use dynakv_proto::RequestError;

/// Every error the client reports.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could be reached, or (for requests that are never retried elsewhere) the node
    /// went silent after the request was sent; the message lists what was tried and why it
    /// failed.
    #[error("cannot reach the cluster: {0}")]
    Unreachable(String),
    /// The coordinator did not get its quorum in time; carries the node's message.
    #[error("{message} (coordinator {node})")]
    Timeout {
        /// The coordinator's explanation (who answered, how many were needed).
        message: String,
        /// The node that coordinated.
        node: SocketAddr,
    },
    /// The node refused or failed the request (bad options, too large, storage, ...).
    #[error("request failed at {node}: {error}")]
    Request {
        /// The reason.
        error: RequestError,
        /// The node that answered.
        node: SocketAddr,
    },
    /// The node could not serve the request at all (it is not in a cluster yet, is shutting
    /// down, refused a join, or could not decode the request); its message says why.
    #[error("node {node} refused the request: {message}")]
    Refused {
        /// The node's explanation.
        message: String,
        /// The node that refused.
        node: SocketAddr,
    },
    /// A context token could not be decoded.
    #[error("malformed context: {0}")]
    MalformedContext(String),
    /// TLS setup failed (bad CA certificate).
    #[error("tls: {0}")]
    Tls(String),
    /// The settings are unusable: a bad address list, an unreadable CA file (see
    /// [`Client::from_env`](crate::Client::from_env)).
    #[error("{0}")]
    Config(String),
    /// The node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

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

impl ClientError {
    /// May the same request succeed if sent again (after a short wait)? True for failures of
    /// the moment: no node reachable, a quorum not met in time, replicas down or refusing,
    /// an overloaded, joining, removed or failed node (another node may serve), a storage
    /// error. False for requests that can never succeed as they are: bad options, keys,
    /// sizes, contexts or settings, too many siblings (resolve them first), TLS and protocol
    /// errors. A retried put that had been applied makes at worst an equal sibling.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::Timeout { .. } => true,
            ClientError::Refused { .. } => true,
            ClientError::Request { error, .. } => matches!(
                error,
                RequestError::Timeout { .. }
                    | RequestError::Unavailable { .. }
                    | RequestError::PrimariesUnavailable { .. }
                    | RequestError::ReplicasRefused { .. }
                    | RequestError::Storage(_)
                    | RequestError::StorageFailed { .. }
                    | RequestError::Overloaded { .. }
                    | RequestError::Removed { .. }
                    | RequestError::NotJoined { .. }
            ),
            ClientError::MalformedContext(_)
            | ClientError::Tls(_)
            | ClientError::Config(_)
            | ClientError::Protocol(_) => false,
        }
    }

    /// Does this failure hint that the client's cluster view is out of date (a node gone,
    /// removed, not joined, or too few replicas where the view expected them)?
    pub(crate) fn suggests_stale_view(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::Refused { .. } => true,
            ClientError::Request { error, .. } => matches!(
                error,
                RequestError::Unavailable { .. }
                    | RequestError::PrimariesUnavailable { .. }
                    | RequestError::Removed { .. }
                    | RequestError::NotJoined { .. }
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7101))
    }

    fn request(error: RequestError) -> ClientError {
        ClientError::Request { error, node: at() }
    }

    #[test]
    fn failures_of_the_moment_are_retryable_and_bad_requests_are_not() {
        let retry = [
            ClientError::Unreachable("no answer".into()),
            request(RequestError::Overloaded { pending: 300 }),
            request(RequestError::Unavailable {
                op: "put".into(),
                needed: 2,
                available: 1,
            }),
            request(RequestError::NotJoined {
                node: dynakv_ring::NodeId(4),
            }),
        ];
        for e in &retry {
            assert!(e.is_retryable(), "{e}");
        }
        let final_ = [
            request(RequestError::ValueTooLarge { len: 10, max: 5 }),
            request(RequestError::InvalidOptions("r=9".into())),
            request(RequestError::TooManySiblings {
                count: 101,
                max: 100,
            }),
            request(RequestError::ContextTooLarge {
                actors: 1,
                ranges: 4097,
                max_actors: 4096,
                max_ranges: 4096,
                hint: "read the key".into(),
            }),
            ClientError::MalformedContext("bad base64".into()),
            ClientError::Tls("unknown CA".into()),
        ];
        for e in &final_ {
            assert!(!e.is_retryable(), "{e}");
        }
        // A node that is gone or not joined makes the client learn the cluster again; a value
        // that is too large does not.
        assert!(request(RequestError::Removed {
            node: dynakv_ring::NodeId(2)
        })
        .suggests_stale_view());
        assert!(!request(RequestError::ValueTooLarge { len: 10, max: 5 }).suggests_stale_view());
    }
}

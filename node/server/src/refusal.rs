//! What the node tells a client it refused, as typed values: the role a request needed
//! ([`PermissionDenied`]) and why `dynakv join` did not go ahead ([`JoinRefused`]). Their
//! `Display` is the text the client sees in `ServerFrame::Error`.

use std::net::SocketAddr;

use dynakv_ring::NodeId;
use dynakv_transport::Role;

/// A request the caller's certificate does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PermissionDenied {
    /// A client certificate whose role is below the one the request needs.
    #[error(
        "permission denied: {what} needs the {needed} role; client {name:?} has the {role} \
         role (issue another certificate with `dynakv ca issue-client --role {needed}`)"
    )]
    Role {
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
}

/// Why `dynakv join SEED` did not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JoinRefused {
    /// This node is a member of a cluster already.
    #[error("node {0} is already in a cluster")]
    AlreadyInCluster(NodeId),
    /// The seed is this node itself.
    #[error("{0} is this node itself")]
    IsSelf(SocketAddr),
    /// The seed could not be reached or refused to give the cluster's settings.
    #[error("cannot join through {seed}: {reason}")]
    SeedFailed { seed: SocketAddr, reason: String },
    /// The node stopped while the request was handled.
    #[error("the node is shutting down")]
    ShuttingDown,
}

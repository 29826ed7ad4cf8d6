//! The error type of the crate.

use dynakv_ring::{NodeId, RingError};

use crate::state::{Status, MAX_ADDR_LEN, MAX_MEMBERS};

/// Everything that can go wrong in `dynakv-gossip`: a refused membership change, or a message
/// or state that does not fit this cluster. Each variant renders as one clear line, fit to show
/// an operator (the CLI prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// The change names a node that is not in the member table.
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    /// A join for a node id that is already in the member table.
    #[error("node {node} is already a member (status {status})")]
    AlreadyMember {
        /// The node named by the join.
        node: NodeId,
        /// Its current status.
        status: Status,
    },
    /// The node was removed; removed ids never come back (a replacement needs a fresh id).
    #[error("node {0} was removed from the cluster; removed ids are never reused (to bring that machine back, wipe it, issue a certificate for a new id with `dynakv ca issue --id NEW` and join with that id)")]
    Removed(NodeId),
    /// A change that needs another status, e.g. `mark_valid` on a node that is not joining.
    #[error("node {node} is {actual}, but this change needs it to be {expected}")]
    WrongStatus {
        /// The node named by the change.
        node: NodeId,
        /// The status the change needs.
        expected: &'static str,
        /// The status the node has.
        actual: Status,
    },
    /// The change would leave no node to own the partitions.
    #[error("node {0} is the last node owning data; it cannot leave or be removed")]
    LastMember(NodeId),
    /// `finish_leave` on a node the partition map still gives partitions to.
    #[error("node {node} still owns {partitions} partitions; finish its transfers first")]
    StillOwnsPartitions {
        /// The leaving node.
        node: NodeId,
        /// How many partitions it still owns in the current map.
        partitions: usize,
    },
    /// The member table (removed ids included) is full.
    #[error("the member table is full ({MAX_MEMBERS} ids, removed ones included)")]
    TooManyMembers,
    /// An address that is empty or longer than [`MAX_ADDR_LEN`] bytes.
    #[error("invalid address {0:?}: must be 1 to {MAX_ADDR_LEN} bytes")]
    InvalidAddr(String),
    /// A replication factor of 0 or more than the partition count.
    #[error("invalid replication factor {replicas} for {partitions} partitions")]
    InvalidReplicas {
        /// The replication factor asked for.
        replicas: u8,
        /// The partition count of the cluster.
        partitions: u16,
    },
    /// A peer's state or message was made for other cluster parameters (partition count or
    /// replication factor), e.g. a node of another cluster.
    #[error("cluster parameters differ: ours are {ours}, the peer's are {theirs}")]
    ParamsMismatch {
        /// Our parameters, rendered.
        ours: String,
        /// The peer's parameters, rendered.
        theirs: String,
    },
    /// A message over the size limits (too many entries), or otherwise malformed.
    #[error("malformed gossip message: {0}")]
    Malformed(String),
    /// This node has no cluster state yet (it has not joined), so it cannot do that.
    #[error("this node has not joined a cluster yet")]
    NotJoined,
    /// The ring refused to build a map (an invalid partition count, no members).
    #[error("partition map: {0}")]
    Ring(#[from] RingError),
}

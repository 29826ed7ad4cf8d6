//! The frames that travel on QUIC streams, client <-> node and node <-> node.
//!
//! Every frame is one length-prefixed payload (`dynakv_transport::frame`), encoded and decoded only
//! through [`crate::codec`]. A client opens one bidirectional stream per request, writes one
//! [`ClientFrame`], finishes its side and reads one [`ServerFrame`]. Nodes send [`PeerFrame`]s on
//! one long-lived unidirectional stream per direction of their connection.
//!
//! `dynakv_transport::call` is the client half of that exchange.

use std::net::SocketAddr;

use std::collections::BTreeMap;

use dynakv_ring::{NodeId, PartitionId, PartitionMap};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Result;
use crate::types::{ClientReply, ClientRequest, CoreStats, PeerMsg};

/// Largest frame a client accepts from a node (a get reply with many big siblings).
pub const MAX_REPLY_FRAME: usize = 256 << 20;

/// Application error codes used when a node closes a stream or a connection.
pub mod codes {
    /// A frame could not be decoded or broke the protocol.
    pub const MALFORMED: u32 = 1;
    /// A frame announced more bytes than the limit.
    pub const TOO_LARGE: u32 = 2;
    /// A stream kind the connection may not open (a uni stream from a plain client).
    pub const NOT_ALLOWED: u32 = 3;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// A newer connection to the same peer replaced this one.
    pub const REPLACED: u32 = 5;
}

/// What a client sends on a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// A get/put/delete for the core to coordinate.
    Core(ClientRequest),
    /// Ask for members, partition map and quorum defaults (for routing).
    ClusterInfo,
    /// Ask for this node's view of the cluster (for `dynakv status`).
    Status,
    /// Ask a node that is not in a cluster yet to join one through the member at `seed`
    /// (`dynakv join`). Answered with `ServerFrame::Core(ClientReply::Admin(..))` or an error.
    Join {
        /// Address of a member of the cluster to join.
        seed: SocketAddr,
    },
}

/// What a node answers on a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The core's reply (which may itself be a request error).
    Core(ClientReply),
    /// Answer to [`ClientFrame::ClusterInfo`].
    ClusterInfo(ClusterInfo),
    /// Answer to [`ClientFrame::Status`] (boxed: it is much larger than the other replies).
    Status(Box<StatusReport>),
    /// The request frame was malformed or could not be served; the message says why.
    Error(String),
}

/// What a client needs to route requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Every member and the address it listens on.
    pub members: Vec<(NodeId, SocketAddr)>,
    /// Which node owns which partition.
    pub map: PartitionMap,
    /// Default replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Default request timeout (a joining node adopts it).
    pub request_timeout_ms: u32,
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether the answering node has a live connection to it (always true for itself).
    pub up: bool,
    /// Whether the answering node's core believes it down (its local failure detection:
    /// unanswered requests, lost connections, the gossip failure detector). A down member
    /// gets no replica requests; fallbacks stand in for it.
    pub down: bool,
    /// Its membership status in the gossiped cluster state ("joining", "valid", "leaving",
    /// "removed"); `None` when the answering node has no cluster state or does not list it.
    pub membership: Option<String>,
    /// Partitions it owns (first in their preference list).
    pub partitions: usize,
}

/// Which way a partition transfer goes, seen from the answering node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferDirection {
    /// The answering node streams the partition to `peer`.
    Outgoing,
    /// The answering node receives the partition from `peer`.
    Incoming,
}

/// One partition transfer (a partition moving to a new replica after a membership change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// Outgoing or incoming.
    pub direction: TransferDirection,
    /// The partition being moved.
    pub partition: PartitionId,
    /// The node on the other end.
    pub peer: NodeId,
    /// Keys moved so far: acknowledged by the receiver (outgoing) or merged (incoming).
    pub keys: u64,
    /// Keys in the partition when the transfer started; known on the sending side only.
    pub total: Option<u64>,
    /// Keys sent more than once (batches resent after going unanswered, e.g. while the
    /// receiver restarted); known on the sending side only.
    pub resent: Option<u64>,
    /// Whether the transfer has finished.
    pub done: bool,
}

/// A node's view of the cluster, for `dynakv status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The answering node.
    pub node: NodeId,
    /// Every member, in id order.
    pub members: Vec<MemberStatus>,
    /// Total partitions (Q).
    pub partition_count: u16,
    /// Default replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Operations the node is coordinating right now.
    pub pending_ops: u64,
    /// Hints this node holds, per node they are for (only nodes with at least one hint).
    pub hints_pending: BTreeMap<NodeId, u64>,
    /// Partition transfers this node sends or receives (finished ones included until the
    /// core forgets them).
    pub transfers: Vec<TransferStatus>,
    /// Peers the node's core has marked down itself (unanswered requests, lost connections),
    /// in id order. The members' `down` flag also counts the gossip failure detector.
    pub down: Vec<NodeId>,
    /// The core's counters.
    pub stats: CoreStats,
    /// Set when a store sync failed: the node serves nothing until it is restarted.
    pub storage_failure: Option<String>,
    /// The node's admission control: what it refused so it would not grow without bound
    /// (filled in by the server; zero in a core's own report).
    pub admission: AdmissionStats,
}

/// Load a node refused at its front door, and what it holds now (see the node config keys
/// `max_inflight_requests`, `max_requests_per_connection` and `max_client_connections_per_ip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionStats {
    /// Client requests being served right now.
    pub requests_in_flight: u64,
    /// The limit on that.
    pub max_inflight_requests: u64,
    /// The limit on one connection's requests in flight.
    pub max_requests_per_connection: u64,
    /// Client requests answered "overloaded" at once because the limit was reached.
    pub requests_shed: u64,
    /// Client connections closed at once because their address had too many.
    pub connections_refused: u64,
}

/// What a node sends to a peer on its outgoing stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A message for the peer's core.
    Msg(PeerMsg),
}

/// Encodes a frame payload with the project codec.
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>> {
    codec::encode(frame)
}

/// Decodes a frame payload with the project codec.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T> {
    codec::decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestOptions;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() -> Result<()> {
        let f = ClientFrame::Core(ClientRequest::Get {
            key: bytes::Bytes::from_static(b"k"),
            opts: RequestOptions::default(),
        });
        assert_eq!(decode::<ClientFrame>(&encode(&f)?)?, f);
        assert!(decode::<ClientFrame>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<ServerFrame>(&[]).is_err());
        Ok(())
    }
}

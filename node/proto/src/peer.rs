//! Messages between nodes, nested per mechanism: each mechanism of the core gets its own enum
//! and its handler matches only that enum (no catch-all over every message).
//!
//! Adding or changing a variant changes the wire format: bump
//! `dynakv_transport::PROTOCOL_VERSION` with it.

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};
use serde::{Deserialize, Serialize};

use crate::dvv::NodeClock;
use crate::types::{ClientReply, ClientRequest, Object, OpId, ReplicaError};

/// A message from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Coordinator <-> replica: reads and writes of one key.
    Replica(ReplicaMsg),
    /// Coordinator <-> coordinator: a write forwarded to a replica of its key.
    Coord(CoordMsg),
    /// Liveness probes of peers believed down.
    Probe(ProbeMsg),
    /// Hinted handoff from a fallback to the owner.
    Handoff(HandoffMsg),
    /// Merkle-tree anti-entropy.
    Aae(AaeMsg),
    /// Membership gossip (see `dynakv-gossip`).
    Gossip(dynakv_gossip::GossipMsg),
    /// Partition transfers after a membership change.
    Transfer(TransferMsg),
}

/// Reads and writes of one key between a coordinator and the key's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMsg {
    /// Merge `object` into the stored object for `key` and acknowledge once durable. With
    /// `hint`, the receiver is a fallback: it keeps the object as a hint for that node and hands
    /// it off when the node is reachable again.
    Write {
        op: OpId,
        partition: PartitionId,
        key: Bytes,
        object: Object,
        hint: Option<NodeId>,
    },
    /// Answer to [`ReplicaMsg::Write`], sent once the object is durable: where it was kept.
    WriteAck {
        op: OpId,
        result: Result<Stored, ReplicaError>,
    },
    /// Send back the stored object for `key`. With `fallback_for`, the receiver is a fallback
    /// standing in for that node and includes what it holds as hints for it.
    Read {
        op: OpId,
        partition: PartitionId,
        key: Bytes,
        fallback_for: Option<NodeId>,
    },
    /// Answer to [`ReplicaMsg::Read`]; `None` when the replica holds nothing for the key.
    ReadReply {
        op: OpId,
        result: Result<Option<Object>, ReplicaError>,
    },
}

/// Where a replica kept an object it acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// In its replica store: it is one of the key's replicas under its map.
    Replica,
    /// As hints for the key's replicas: it was asked as a fallback, or it no longer replicates
    /// the partition (the sender's map is stale). Counts as a fallback ack, never a primary one.
    Hint,
}

/// Requests one coordinator hands to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordMsg {
    /// Coordinate this client write on my behalf: the sender is not a replica of the key and a
    /// new dot must come from a replica. The receiver asks with [`CoordMsg::Claim`] before it
    /// coordinates, so no copy of this message is coordinated twice.
    Forward { op: OpId, request: ClientRequest },
    /// Answer to [`CoordMsg::Forward`].
    ForwardReply { op: OpId, reply: ClientReply },
    /// May I coordinate forwarded operation `op` now? Sent for every copy of a `Forward` that
    /// arrives; `nonce` names this copy, so an old `Grant` never matches a later one.
    Claim { op: OpId, nonce: u64 },
    /// Answer to [`CoordMsg::Claim`]: `granted` is true for the first claim of an operation the
    /// sender still waits for, and false for every other (a copy already claimed, an operation
    /// that ended, a forwarder that restarted).
    Grant { op: OpId, nonce: u64, granted: bool },
}

/// Liveness probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeMsg {
    /// Sent to a node believed down.
    Ping { nonce: u64 },
    /// Answer to [`ProbeMsg::Ping`].
    Pong { nonce: u64 },
}

/// Hinted handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffMsg {
    /// Objects a fallback held for the receiver. Acknowledge once durable.
    Batch { batch: u64, items: Vec<HandoffItem> },
    /// Answer to [`HandoffMsg::Batch`]; the sender drops the hints only after an `Ok`.
    BatchAck {
        batch: u64,
        result: Result<(), ReplicaError>,
    },
}

/// One hinted object handed to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffItem {
    pub partition: PartitionId,
    pub key: Bytes,
    pub object: Object,
}

/// The five steps of an anti-entropy exchange of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AaeMsg {
    /// Step 1: the sender's segment hashes of a partition's hash tree.
    Segments {
        session: u64,
        partition: PartitionId,
        hashes: Vec<u64>,
    },
    /// Step 2: the receiver's bucket hashes under the segments that differ.
    Buckets {
        session: u64,
        partition: PartitionId,
        buckets: Vec<(u16, u64)>,
    },
    /// Step 3: the sender's keys (with object hashes) in the buckets that differ.
    Keys {
        session: u64,
        partition: PartitionId,
        buckets: Vec<(u16, Vec<(Bytes, u64)>)>,
    },
    /// Step 4: objects the receiver lacks or holds differently, and keys it wants.
    Exchange {
        session: u64,
        partition: PartitionId,
        objects: Vec<(Bytes, Object)>,
        want: Vec<Bytes>,
    },
    /// Step 5: the objects asked for in step 4.
    Objects {
        partition: PartitionId,
        objects: Vec<(Bytes, Object)>,
    },
    /// Sent with step 1: the sender's node clock of the partition (every dot it stored).
    /// With `ask_back`, a receiver whose own clock lacks dots the sender has sends its clock
    /// in return (without `ask_back`), so either side starting an exchange closes both sides'
    /// holes.
    Clock {
        partition: PartitionId,
        clock: NodeClock,
        ask_back: bool,
    },
    /// The answer to `Clock`, for the dots the receiver stored and the sender did not: the
    /// objects that still hold some of them, and the rest (`dead`: stored and superseded
    /// there), which the sender adds to its clock.
    ClockReply {
        partition: PartitionId,
        objects: Vec<(Bytes, Object)>,
        dead: NodeClock,
    },
}

impl AaeMsg {
    /// The partition the exchange is about.
    pub fn partition(&self) -> PartitionId {
        match self {
            AaeMsg::Segments { partition, .. }
            | AaeMsg::Buckets { partition, .. }
            | AaeMsg::Keys { partition, .. }
            | AaeMsg::Exchange { partition, .. }
            | AaeMsg::Objects { partition, .. }
            | AaeMsg::Clock { partition, .. }
            | AaeMsg::ClockReply { partition, .. } => *partition,
        }
    }
}

/// Partition transfers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMsg {
    /// The next batch of a partition's objects, after key `after`.
    Batch {
        batch: u64,
        partition: PartitionId,
        /// Which pass over the sender's data this batch belongs to: drawn when the sender
        /// starts streaming from the first key (and takes its clock snapshot), kept when it
        /// resumes from its cursor. The receiver takes batches of one pass only, in order.
        pass: u64,
        after: Option<Bytes>,
        items: Vec<(Bytes, Object)>,
        /// Keys of the partition whose records the sender lost (corrupt), so not streamed:
        /// those found in this batch's range, and with the last batch every key the sender
        /// has marked lost. The receiver marks them lost too (never judged by its clock), so
        /// the snapshot's dots of the lost records cannot make it refuse their good copies.
        lost: Vec<Bytes>,
        /// No more batches after this one.
        last: bool,
        /// With the last batch: the sender's node clock of the partition as it was when the
        /// pass started. Every dot in it was either still held by a key streamed since, or
        /// superseded, so the receiver adds it to its own clock: it has merged every batch of
        /// the pass, since it takes them only in order.
        snapshot: Option<NodeClock>,
    },
    /// Answer to [`TransferMsg::Batch`], once the batch is durable.
    Ack {
        batch: u64,
        partition: PartitionId,
        /// The last key merged (the sender's new cursor).
        upto: Option<Bytes>,
        done: bool,
        result: Result<(), ReplicaError>,
        /// The batch does not continue what the receiver merged of this pass (it lost batches
        /// to a power cut or a wipe, or the pass is not the one it follows): the sender starts
        /// a new pass from the first key, with a new snapshot.
        start_over: bool,
    },
    /// A receiver that has heard nothing of an expected transfer for a while asks its sender.
    /// `epoch`: the asker's map epoch; a sender with an older map stays silent (it may not
    /// have planned the transfer yet).
    Status { partition: PartitionId, epoch: u64 },
    /// The sender has no transfer of this partition for the asker (it finished, or the sender
    /// lost its state): the receiver stops waiting; anti-entropy covers any difference.
    NoTransfer { partition: PartitionId },
}

macro_rules! into_peer_msg {
    ($($inner:ident => $variant:ident),* $(,)?) => {
        $(impl From<$inner> for PeerMsg {
            fn from(m: $inner) -> PeerMsg {
                PeerMsg::$variant(m)
            }
        })*
    };
}

into_peer_msg!(
    ReplicaMsg => Replica,
    CoordMsg => Coord,
    ProbeMsg => Probe,
    HandoffMsg => Handoff,
    AaeMsg => Aae,
    TransferMsg => Transfer,
);

impl From<dynakv_gossip::GossipMsg> for PeerMsg {
    fn from(m: dynakv_gossip::GossipMsg) -> PeerMsg {
        PeerMsg::Gossip(m)
    }
}

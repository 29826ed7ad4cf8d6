//! Plain data that goes in and out of the core: requests, replies, peer messages, effects.
//!
//! Everything here is `Serialize`/`Deserialize` so the QUIC driver can put it on the wire through
//! [`crate::codec`], and `Clone`/`PartialEq` so the simulator can duplicate, replay and compare it.

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};
use serde::{Deserialize, Serialize};

use crate::dvv::{Dcc, Dot, NodeClock};

/// A stored sibling: client data or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A value written by a client.
    Data(Bytes),
    /// A delete marker. It carries a dot like any value so that a concurrent write survives it.
    Tombstone,
}

impl Value {
    /// The client bytes, or `None` for a tombstone.
    pub fn data(&self) -> Option<&Bytes> {
        match self {
            Value::Data(b) => Some(b),
            Value::Tombstone => None,
        }
    }
}

/// What a replica stores for one key: every concurrent sibling with its dot, and the causal history
/// (a dotted causal container: explicit dots, a node-clock context).
pub type Object = Dcc<Value>;

/// Identifies a coordinator-side operation; unique per coordinator incarnation.
pub type OpId = u64;

/// Identifies a client request inside one driver (the driver maps it back to a stream).
pub type RequestId = u64;

/// Per-request overrides of the cluster defaults. `None` means "use the cluster default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOptions {
    /// Replicas per key (N).
    pub n: Option<u8>,
    /// Replies a get waits for (R).
    pub r: Option<u8>,
    /// Acknowledgements a put or delete waits for (W).
    pub w: Option<u8>,
    /// Replies a get needs from primary replicas (PR); fallbacks do not count toward it.
    pub pr: Option<u8>,
    /// Acknowledgements a write needs from primary replicas (PW); refuses sloppy-only quorums.
    pub pw: Option<u8>,
    /// Request timeout in milliseconds.
    pub timeout_ms: Option<u32>,
}

/// A request from a client (or forwarded by another node on a client's behalf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Read every sibling of a key and its causal context.
    Get { key: Bytes, opts: RequestOptions },
    /// Write a value; `context` is what the client read (empty for a blind write).
    Put {
        key: Bytes,
        value: Bytes,
        context: NodeClock,
        opts: RequestOptions,
    },
    /// Delete (write a tombstone) the siblings covered by `context`.
    Delete {
        key: Bytes,
        context: NodeClock,
        opts: RequestOptions,
    },
    /// Ask for the partition map, so a client can route by key.
    PartitionMap,
    /// A membership change asked for by an operator.
    Admin(AdminRequest),
    /// One page of the keys this node stores for `partition`, a partition it replicates, as
    /// stored: every sibling, tombstones and the causal context. Answered by the node itself,
    /// never forwarded: `dynakv backup` asks every replica and merges. `after` is the last key of
    /// the previous page; at most `limit` keys (and a frame's worth of bytes) come back.
    Scan {
        partition: PartitionId,
        after: Option<Bytes>,
        limit: u32,
    },
    /// Merge a stored object (from a backup) into the key on its replicas, as anti-entropy
    /// does: no new version is minted, versions the cluster holds that are newer stay, and a
    /// value a stored delete covers stays deleted. `dynakv restore` sends one per key.
    Restore {
        key: Bytes,
        object: Object,
        opts: RequestOptions,
    },
}

/// Membership changes an operator asks a node for (`dynakv leave`, `dynakv remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The receiving node leaves the cluster gracefully, handing its partitions off.
    Leave,
    /// Remove a node for good; its partitions are re-planned onto the others. Meant for a dead
    /// node: one that is up and reachable is refused unless `force` (it should `Leave`, which
    /// hands its data off first).
    Remove { node: NodeId, force: bool },
}

impl ClientRequest {
    /// Short name for messages and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientRequest::Get { .. } => "get",
            ClientRequest::Put { .. } => "put",
            ClientRequest::Delete { .. } => "delete",
            ClientRequest::PartitionMap => "partition-map",
            ClientRequest::Admin(_) => "admin",
            ClientRequest::Scan { .. } => "scan",
            ClientRequest::Restore { .. } => "restore",
        }
    }
}

/// A successful read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// Every live sibling (tombstones are left out). Empty when the key is missing or deleted.
    pub values: Vec<Bytes>,
    /// The joined causal context of every reply; write back with it to supersede what was read.
    pub context: NodeClock,
    /// How many replicas answered before the reply was sent.
    pub replied: u8,
    /// How many of those were primary replicas (the rest were fallbacks).
    pub primary_replies: u8,
}

/// A successful write (put or delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    /// The causal context after the write: it covers the new value and everything the coordinating
    /// replica held for the key at the time of the write.
    pub context: NodeClock,
    /// The dot the coordinator gave the new value (used by checkers and debugging tools).
    pub dot: Option<Dot>,
    /// How many replicas acknowledged before the reply was sent.
    pub acks: u8,
    /// How many acknowledgements came from primary replicas.
    pub primary_acks: u8,
    /// How many came from fallbacks holding the write as a hint for a primary that was down.
    pub fallback_acks: u8,
}

/// One page of a partition's stored keys ([`ClientRequest::Scan`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReply {
    /// Keys in order, with their stored objects (records that fail their checksum are left
    /// out: the node repairs them from the other replicas).
    pub items: Vec<(Bytes, Object)>,
    /// Where the next page starts (pass it as `after`); `None`: this was the last page.
    pub next: Option<Bytes>,
}

/// The reply to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// Reply to a get.
    Got(GetReply),
    /// Reply to a put or a delete.
    Written(PutReply),
    /// Reply to [`ClientRequest::PartitionMap`].
    PartitionMap(dynakv_ring::PartitionMap),
    /// Reply to [`ClientRequest::Admin`]: what was staged.
    Admin(String),
    /// Reply to [`ClientRequest::Scan`].
    Scanned(ScanReply),
    /// The request failed.
    Error(RequestError),
}

/// Why a request failed. Every variant renders as one clear line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// The request options are inconsistent (for example W > N).
    #[error("invalid request options: {0}")]
    InvalidOptions(String),
    /// The key is empty or longer than the limit.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The value is longer than the limit.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: u64, max: u64 },
    /// Fewer replicas answered than the quorum needs before the timeout.
    #[error(
        "{op} timed out after {timeout_ms} ms: {answered} of {asked} replicas answered, {needed} needed"
    )]
    Timeout {
        op: String,
        timeout_ms: u32,
        answered: u8,
        needed: u8,
        asked: u8,
    },
    /// Not enough nodes exist or are reachable to even try the quorum.
    #[error("{op} unavailable: needs {needed} replicas but only {available} are up and reachable")]
    Unavailable {
        op: String,
        needed: u8,
        available: u8,
    },
    /// The request demanded PR/PW primary replicas and fewer are reachable or answered.
    #[error(
        "{op} needs {needed} primary replicas (pr/pw) but only {available} answered or are reachable; fallbacks do not count"
    )]
    PrimariesUnavailable {
        op: String,
        needed: u8,
        available: u8,
    },
    /// So many replicas refused the request (a failing disk, an object they would not store)
    /// that the quorum was out of reach; `detail` says who refused and why.
    #[error("{op} refused by {refused} of {asked} replicas: {detail}")]
    ReplicasRefused {
        op: String,
        refused: u8,
        asked: u8,
        detail: String,
    },
    /// The coordinator failed to read or write its own disk (a full disk, a failing one). A
    /// write that fails this way may still have been stored (the object landed and a record
    /// after it did not): its outcome is unknown, as after a timeout. Retry it with the same
    /// value and context, or read first.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The node's disk failed a sync: it stopped serving (fail-stop) until an operator fixes
    /// the disk and restarts it. The request was not applied anywhere.
    #[error(
        "node {node} stopped serving after a storage sync failure ({reason}); fix its disk and restart it, and send requests to another node meanwhile"
    )]
    StorageFailed { node: NodeId, reason: String },
    /// The coordinator has too many requests in flight; retry later or elsewhere.
    #[error("node overloaded: {pending} requests in flight; retry later or on another node")]
    Overloaded { pending: u64 },
    /// The write would push the key past the hard sibling limit.
    #[error(
        "key would hold {count} siblings, past the hard limit of {max}; read it and write back a merged value"
    )]
    TooManySiblings { count: u32, max: u32 },
    /// The node that received the request was removed from the cluster.
    #[error("node {node} was removed from the cluster; send requests to a member")]
    Removed { node: NodeId },
    /// The node that received the request has not joined a cluster (yet).
    #[error("node {node} is not in a cluster yet (joining); send requests to a member")]
    NotJoined { node: NodeId },
    /// A membership change (leave, remove) was refused; the message says why.
    #[error("membership change refused: {0}")]
    ChangeRefused(String),
    /// A scan asked a node for a partition it does not replicate (its map moved on, or the
    /// client's view is stale).
    #[error("node {node} does not replicate partition {partition}; ask one of its replicas")]
    NotReplica {
        node: NodeId,
        partition: PartitionId,
    },
    /// Something the node did not expect; the message says what.
    #[error("internal error: {0}")]
    Internal(String),
    /// The write would give the key a causal context with more actors, or more holes (dots seen
    /// above an actor's contiguous base), than a context token can carry, or the request's own
    /// context has more. Stored contexts stay within the limits so a read can be written back.
    #[error(
        "context of {actors} actors and {ranges} holes is past the limit of {max_actors} actors and {max_ranges} holes; {hint}"
    )]
    ContextTooLarge {
        actors: u64,
        ranges: u64,
        max_actors: u64,
        max_ranges: u64,
        hint: String,
    },
}

/// Counters for `status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    /// Client requests answered successfully.
    pub requests_ok: u64,
    /// Client requests answered with an error.
    pub requests_failed: u64,
    /// Replica writes merged into the local store.
    pub replica_writes: u64,
    /// Objects sent back to stale replicas after a get.
    pub read_repairs: u64,
    /// Writes that left a key with more siblings than the warning threshold.
    pub sibling_warnings: u64,
    /// Store syncs that failed (their effects were dropped, never acknowledged).
    pub sync_failures: u64,
    /// Read repairs skipped because the per-second budget was spent (anti-entropy covers them).
    pub read_repairs_skipped: u64,
    /// Writes sent to a fallback with a hint because a primary was down.
    pub sloppy_writes: u64,
    /// Hint batches sent to owners.
    pub handoff_batches_sent: u64,
    /// Hints the owners acknowledged (and this node dropped).
    pub hints_delivered: u64,
    /// Anti-entropy exchanges started.
    pub aae_exchanges: u64,
    /// Keys found different and exchanged by anti-entropy.
    pub aae_keys_repaired: u64,
    /// Hash trees built from the store.
    pub aae_tree_builds: u64,
    /// Tombstones removed for good by the reaper.
    pub tombstones_reaped: u64,
    /// Versions in incoming copies dropped by the node-clock check: stored here before and
    /// superseded, so the copy was old (a late repair, hint, transfer or held message).
    pub late_versions_dropped: u64,
    /// Objects and dead-dot entries sent to replicas whose partition clocks lacked them.
    pub clock_dots_offered: u64,
    /// Times this node retired its actor identity (after dropping data it may have minted).
    pub actor_retirements: u64,
    /// Join attempts a seed refused.
    pub join_refusals: u64,
    /// Partition transfer batches sent.
    pub transfer_batches_sent: u64,
    /// Keys the receivers acknowledged.
    pub transfer_keys_sent: u64,
    /// Keys received by transfers.
    pub transfer_keys_received: u64,
    /// Partitions dropped after handing them off.
    pub partitions_dropped: u64,
    /// Transfer batches that went unanswered and were resent from the checkpoint.
    pub transfer_batches_retried: u64,
    /// Transfers sent again from the first key because the receiver missed part of a pass
    /// (it lost batches to a power cut or a wipe), or this node could not read the pass's
    /// clock snapshot.
    pub transfer_passes_restarted: u64,
    /// Stored records that failed their checksum or did not decode: found by a read, a
    /// transfer, anti-entropy or the scrub, and removed so the other replicas repair the key
    /// (unreadable hints are dropped).
    pub corrupt_records: u64,
    /// Stored records the background scrub has checked.
    pub scrubbed_records: u64,
    /// Hinted objects other nodes handed to this node and it took in (as their owner, or
    /// re-hinted for the current owners).
    pub hints_received: u64,
    /// Objects from hint or transfer batches this node could not apply (malformed, or past
    /// the size or sibling limits once merged), kept in its `quarantine` space instead of
    /// being dropped, so the sender may delete its copy without losing data.
    pub quarantined: u64,
    /// Replica writes that reached this node after it stopped replicating the partition (the
    /// coordinator's map was stale): kept as hints for the current replicas.
    pub non_owner_writes: u64,
    /// Copies of partitions this node no longer replicates found with no transfer under way (a
    /// failed or lost drop) and handed to the current replicas again.
    pub stray_partitions: u64,
}

/// A failure reported by a replica to a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaError {
    /// The replica could not read or write its store.
    Storage(String),
    /// The replica refused the object for good: malformed, or merging it would pass the size
    /// or sibling limits (a client must resolve the siblings first).
    Rejected(String),
    /// The replica cannot take the object now (it is still joining, or its partition map
    /// disagrees with the sender's); the sender keeps it and tries again later.
    Retry(String),
}

pub use crate::peer::*;

/// An input to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message from another node.
    Peer { from: NodeId, msg: PeerMsg },
    /// A request from a client connected to this node.
    Client {
        id: RequestId,
        request: ClientRequest,
    },
    /// The time returned by `poll_timeout` has come.
    Timeout,
    /// The driver saw a peer's connection come up or go down (local failure detection).
    PeerStatus { peer: NodeId, up: bool },
}

/// An output of the core, for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a message to another node (best effort; the core handles loss with timeouts).
    Send { to: NodeId, msg: PeerMsg },
    /// Answer a client request.
    Reply { id: RequestId, reply: ClientReply },
    /// Keep a connection to `peer`, dialled at `addr` (as the cluster state advertises it);
    /// also sent again when the address changes. Carry out before the sends of the same batch.
    Link { peer: NodeId, addr: String },
    /// Drop the connection to `peer` (removed from the cluster).
    Unlink { peer: NodeId },
    /// Stop this node (exit cleanly): it was removed from the cluster and has lingered long
    /// enough for the removal to spread. Emitted once.
    Stop { reason: String },
}

//! The coordinator role: get, put and delete against a key's preference list with N/R/W quorums.
//!
//! A put is coordinated by a replica of the key (it mints the new dot with its own actor); a node
//! that is not a replica forwards the write to the first one. A get can be coordinated anywhere.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::node::{NodeCore, Origin};
use super::types::{
    ClientReply, ClientRequest, GetReply, Object, OpId, PeerMsg, PutReply, ReplicaError,
    RequestError, RequestOptions, Value,
};
use crate::dvv::{Dot, DvvSet, VersionVector};
use crate::store::Store;

/// Longest request timeout a client may ask for.
pub const MAX_TIMEOUT_MS: u32 = 600_000;

/// Extra time a forwarding node waits beyond the request timeout, so the replica it forwarded to
/// answers (with its own timeout error if need be) before the forwarder gives up.
const FORWARD_GRACE_MS: u64 = 250;

/// Quorum settings resolved for one request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quorum {
    pub n: u8,
    pub needed: u8,
    pub timeout_ms: u32,
}

/// A put or delete waiting for acknowledgements.
#[derive(Debug)]
pub(super) struct WriteOp {
    origin: Origin,
    kind: &'static str,
    targets: Vec<NodeId>,
    acked: BTreeSet<NodeId>,
    failed: BTreeMap<NodeId, ReplicaError>,
    quorum: Quorum,
    context: VersionVector,
    dot: Option<Dot>,
    deadline: u64,
    replied: bool,
}

/// A get waiting for replies (and, after replying, for the rest of them, for read repair).
#[derive(Debug)]
pub(super) struct ReadOp {
    origin: Origin,
    partition: PartitionId,
    key: Bytes,
    targets: Vec<NodeId>,
    replies: BTreeMap<NodeId, Option<Object>>,
    failed: BTreeMap<NodeId, ReplicaError>,
    quorum: Quorum,
    deadline: u64,
    replied: bool,
}

/// A write forwarded to a replica of its key.
#[derive(Debug)]
pub(super) struct ForwardOp {
    origin: Origin,
    kind: &'static str,
    quorum: Quorum,
    deadline: u64,
}

/// An operation this node coordinates.
#[derive(Debug)]
pub(super) enum PendingOp {
    Write(WriteOp),
    Read(ReadOp),
    Forward(ForwardOp),
}

impl PendingOp {
    pub(super) fn deadline(&self) -> u64 {
        match self {
            PendingOp::Write(w) => w.deadline,
            PendingOp::Read(r) => r.deadline,
            PendingOp::Forward(f) => f.deadline,
        }
    }
}

fn error(e: RequestError) -> ClientReply {
    ClientReply::Error(e)
}

impl<S: Store> NodeCore<S> {
    /// Resolve and validate N/R/W and the timeout of a request against the cluster defaults.
    fn quorum(&self, opts: &RequestOptions, read: bool) -> Result<Quorum, RequestError> {
        let n = opts.n.unwrap_or(self.cfg.n);
        if n == 0 {
            return Err(RequestError::InvalidOptions("n must be at least 1".into()));
        }
        let (name, needed) = if read {
            ("r", opts.r.unwrap_or(self.cfg.r.min(n)))
        } else {
            ("w", opts.w.unwrap_or(self.cfg.w.min(n)))
        };
        if needed == 0 || needed > n {
            return Err(RequestError::InvalidOptions(format!(
                "{name} must be between 1 and n={n}, got {needed}"
            )));
        }
        let timeout_ms = opts.timeout_ms.unwrap_or(self.cfg.request_timeout_ms);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(RequestError::InvalidOptions(format!(
                "timeout must be between 1 and {MAX_TIMEOUT_MS} ms, got {timeout_ms}"
            )));
        }
        Ok(Quorum {
            n,
            needed,
            timeout_ms,
        })
    }

    fn check_key(&self, key: &[u8]) -> Result<(), RequestError> {
        if key.is_empty() {
            return Err(RequestError::BadKey("the key is empty".into()));
        }
        if key.len() > self.cfg.max_key_bytes {
            return Err(RequestError::BadKey(format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                self.cfg.max_key_bytes
            )));
        }
        Ok(())
    }

    fn deadline(&self, timeout_ms: u32) -> u64 {
        self.now + u64::from(timeout_ms) * 1000
    }

    /// Start a get: ask every replica, answer after R replies with their merge.
    pub(super) fn start_get(&mut self, origin: Origin, key: Bytes, opts: RequestOptions) {
        let quorum = match self.check_key(&key).and_then(|_| self.quorum(&opts, true)) {
            Ok(q) => q,
            Err(e) => return self.respond(origin, error(e)),
        };
        let partition = self.map.partition_for_key(&key);
        let targets = self.map.preference_list(partition, usize::from(quorum.n));
        if targets.len() < usize::from(quorum.needed) {
            return self.respond(
                origin,
                error(RequestError::Unavailable {
                    op: "get".into(),
                    needed: quorum.needed,
                    available: targets.len() as u8,
                }),
            );
        }
        let op = self.next_op_id();
        let deadline = self.deadline(quorum.timeout_ms);
        self.add_op(
            op,
            deadline,
            PendingOp::Read(ReadOp {
                origin,
                partition,
                key: key.clone(),
                targets: targets.clone(),
                replies: BTreeMap::new(),
                failed: BTreeMap::new(),
                quorum,
                deadline,
                replied: false,
            }),
        );
        for target in targets {
            if target == self.id() {
                let result = self
                    .load(partition, &key)
                    .map_err(|e| ReplicaError::Storage(e.to_string()));
                self.on_read_reply(target, op, result);
            } else {
                self.send(
                    target,
                    PeerMsg::ReplicaRead {
                        op,
                        partition,
                        key: key.clone(),
                    },
                );
            }
        }
    }

    /// Start a put (or, with a tombstone, a delete).
    pub(super) fn start_write(
        &mut self,
        origin: Origin,
        key: Bytes,
        value: Value,
        context: VersionVector,
        opts: RequestOptions,
    ) {
        let kind = if matches!(value, Value::Tombstone) {
            "delete"
        } else {
            "put"
        };
        let checked = self.check_key(&key).and_then(|_| {
            if let Value::Data(v) = &value {
                if v.len() > self.cfg.max_value_bytes {
                    return Err(RequestError::ValueTooLarge {
                        len: v.len() as u64,
                        max: self.cfg.max_value_bytes as u64,
                    });
                }
            }
            self.quorum(&opts, false)
        });
        let quorum = match checked {
            Ok(q) => q,
            Err(e) => return self.respond(origin, error(e)),
        };
        let partition = self.map.partition_for_key(&key);
        let targets = self.map.preference_list(partition, usize::from(quorum.n));
        if targets.len() < usize::from(quorum.needed) {
            return self.respond(
                origin,
                error(RequestError::Unavailable {
                    op: kind.into(),
                    needed: quorum.needed,
                    available: targets.len() as u8,
                }),
            );
        }
        if !targets.contains(&self.id()) {
            return self.forward(origin, kind, quorum, targets[0], key, value, context, opts);
        }

        // Mint the new dot here: update against what this replica holds.
        let local = match self.load(partition, &key) {
            Ok(local) => local.unwrap_or_else(DvvSet::empty),
            Err(e) => return self.respond(origin, error(RequestError::Storage(e.to_string()))),
        };
        let mut object = DvvSet::update(
            DvvSet::new_with_context(&context, value),
            &local,
            self.actor,
        );
        if self.cfg.planted_bug == Some(super::config::PlantedBug::LastWriteWins) {
            object = object.keep_only_newest();
        }
        let count = object.value_count();
        if count > self.cfg.sibling_max as usize {
            return self.respond(
                origin,
                error(RequestError::TooManySiblings {
                    count: count as u32,
                    max: self.cfg.sibling_max,
                }),
            );
        }
        if let Err(e) = self.save(partition, &key, &object) {
            return self.respond(origin, error(RequestError::Storage(e.to_string())));
        }
        let dot = Some(Dot {
            actor: self.actor,
            counter: object.join().get(&self.actor),
        });
        let op = self.next_op_id();
        let deadline = self.deadline(quorum.timeout_ms);
        let me = self.id();
        self.add_op(
            op,
            deadline,
            PendingOp::Write(WriteOp {
                origin,
                kind,
                targets: targets.clone(),
                acked: BTreeSet::from([me]),
                failed: BTreeMap::new(),
                quorum,
                context: object.join(),
                dot,
                deadline,
                replied: false,
            }),
        );
        for target in targets.into_iter().filter(|t| *t != me) {
            self.send(
                target,
                PeerMsg::ReplicaWrite {
                    op,
                    partition,
                    key: key.clone(),
                    object: object.clone(),
                },
            );
        }
        self.check_write_done(op);
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        origin: Origin,
        kind: &'static str,
        quorum: Quorum,
        to: NodeId,
        key: Bytes,
        value: Value,
        context: VersionVector,
        opts: RequestOptions,
    ) {
        if let Origin::Peer { .. } = origin {
            // Already forwarded once: the maps of the two nodes disagree. Refuse rather than loop.
            return self.respond(
                origin,
                error(RequestError::Internal(
                    "forwarded write reached a node that is not a replica (partition maps differ)"
                        .into(),
                )),
            );
        }
        let request = match value {
            Value::Data(value) => ClientRequest::Put {
                key,
                value,
                context,
                opts,
            },
            Value::Tombstone => ClientRequest::Delete { key, context, opts },
        };
        let op = self.next_op_id();
        let deadline = self.deadline(quorum.timeout_ms) + FORWARD_GRACE_MS * 1000;
        self.add_op(
            op,
            deadline,
            PendingOp::Forward(ForwardOp {
                origin,
                kind,
                quorum,
                deadline,
            }),
        );
        self.send(to, PeerMsg::Forward { op, request });
    }

    pub(super) fn on_forward_reply(&mut self, op: OpId, reply: ClientReply) {
        if let Some(PendingOp::Forward(f)) = self.ops.get(&op) {
            let origin = f.origin;
            self.remove_op(op);
            self.respond(origin, reply);
        }
    }

    pub(super) fn on_write_ack(
        &mut self,
        from: NodeId,
        op: OpId,
        result: Result<(), ReplicaError>,
    ) {
        let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) else {
            return; // late, duplicated or unknown: harmless
        };
        if !w.targets.contains(&from) {
            return;
        }
        match result {
            Ok(()) => {
                w.failed.remove(&from);
                w.acked.insert(from);
            }
            Err(e) => {
                if !w.acked.contains(&from) {
                    w.failed.insert(from, e);
                }
            }
        }
        self.check_write_done(op);
    }

    fn check_write_done(&mut self, op: OpId) {
        let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) else {
            return;
        };
        let acks = w.acked.len();
        let needed = usize::from(w.quorum.needed);
        let mut reply = None;
        if !w.replied && acks >= needed {
            w.replied = true;
            reply = Some((
                w.origin,
                ClientReply::Written(PutReply {
                    context: w.context.clone(),
                    dot: w.dot,
                    acks: acks as u8,
                }),
            ));
        } else if !w.replied && w.targets.len() - w.failed.len() < needed {
            // Enough replicas refused that the quorum cannot be reached: fail now.
            w.replied = true;
            let detail = w
                .failed
                .iter()
                .map(|(n, e)| format!("node {n}: {e:?}"))
                .collect::<Vec<_>>()
                .join("; ");
            reply = Some((
                w.origin,
                error(RequestError::Storage(format!(
                    "{} failed on {} of {} replicas ({detail})",
                    w.kind,
                    w.failed.len(),
                    w.targets.len()
                ))),
            ));
        }
        let finished = w.replied && acks + w.failed.len() >= w.targets.len();
        if let Some((origin, reply)) = reply {
            self.respond(origin, reply);
        }
        if finished {
            self.remove_op(op);
        }
    }

    pub(super) fn on_read_reply(
        &mut self,
        from: NodeId,
        op: OpId,
        result: Result<Option<Object>, ReplicaError>,
    ) {
        let Some(PendingOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if !r.targets.contains(&from) || r.replies.contains_key(&from) {
            return;
        }
        match result {
            Ok(object) => {
                if let Some(o) = &object {
                    if o.validate().is_err() {
                        r.failed
                            .insert(from, ReplicaError::Rejected("malformed object".into()));
                        return self.check_read_done(op);
                    }
                }
                r.replies.insert(from, object);
            }
            Err(e) => {
                r.failed.insert(from, e);
            }
        }
        self.check_read_done(op);
    }

    fn merged_replies(&self, r: &ReadOp) -> Object {
        r.replies
            .values()
            .flatten()
            .fold(DvvSet::empty(), |acc, o| self.merge(&acc, o))
    }

    fn check_read_done(&mut self, op: OpId) {
        let Some(PendingOp::Read(r)) = self.ops.get(&op) else {
            return;
        };
        let needed = usize::from(r.quorum.needed);
        let answered = r.replies.len();
        let all_in = answered + r.failed.len() >= r.targets.len();
        let mut reply = None;
        if !r.replied && answered >= needed {
            let merged = self.merged_replies(r);
            reply = Some(ClientReply::Got(GetReply {
                values: merged
                    .values()
                    .into_iter()
                    .filter_map(|v| v.data().cloned())
                    .collect(),
                context: merged.join(),
                replied: answered as u8,
            }));
        } else if !r.replied && r.targets.len() - r.failed.len() < needed {
            reply = Some(error(RequestError::Storage(format!(
                "get failed on {} of {} replicas",
                r.failed.len(),
                r.targets.len()
            ))));
        }
        if let Some(reply) = reply {
            let origin = r.origin;
            if let Some(PendingOp::Read(r)) = self.ops.get_mut(&op) {
                r.replied = true;
            }
            self.respond(origin, reply);
        }
        if all_in {
            self.finish_read(op);
        }
    }

    /// The read is over (every replica answered, or the deadline passed): repair stale replicas.
    fn finish_read(&mut self, op: OpId) {
        let Some(PendingOp::Read(r)) = self.remove_op(op) else {
            return;
        };
        if !self.cfg.read_repair || r.replies.len() < 2 {
            return;
        }
        let merged = self.merged_replies(&r);
        if merged.join().is_empty() {
            return;
        }
        for (node, object) in &r.replies {
            let stale = match object {
                None => true,
                Some(o) => o.sync(&merged) != *o,
            };
            if !stale {
                continue;
            }
            self.stats.read_repairs += 1;
            if *node == self.id() {
                if let Err(e) = self.merge_into_store(r.partition, &r.key, &merged) {
                    tracing::warn!(?e, "local read repair failed");
                }
            } else {
                let repair_op = self.next_op_id();
                self.send(
                    *node,
                    PeerMsg::ReplicaWrite {
                        op: repair_op,
                        partition: r.partition,
                        key: r.key.clone(),
                        object: merged.clone(),
                    },
                );
            }
        }
    }

    /// An operation's deadline passed.
    pub(super) fn on_deadline(&mut self, op: OpId) {
        let Some(pending) = self.ops.remove(&op) else {
            return;
        };
        match pending {
            PendingOp::Write(w) => {
                if !w.replied {
                    self.respond(
                        w.origin,
                        error(RequestError::Timeout {
                            op: w.kind.into(),
                            timeout_ms: w.quorum.timeout_ms,
                            answered: w.acked.len() as u8,
                            needed: w.quorum.needed,
                            asked: w.targets.len() as u8,
                        }),
                    );
                }
            }
            PendingOp::Read(r) => {
                let replied = r.replied;
                let (origin, answered, quorum, asked) =
                    (r.origin, r.replies.len(), r.quorum, r.targets.len());
                // Put it back so finish_read can repair what did answer.
                self.ops.insert(op, PendingOp::Read(r));
                self.finish_read(op);
                if !replied {
                    self.respond(
                        origin,
                        error(RequestError::Timeout {
                            op: "get".into(),
                            timeout_ms: quorum.timeout_ms,
                            answered: answered as u8,
                            needed: quorum.needed,
                            asked: asked as u8,
                        }),
                    );
                }
            }
            PendingOp::Forward(f) => self.respond(
                f.origin,
                error(RequestError::Timeout {
                    op: f.kind.into(),
                    timeout_ms: f.quorum.timeout_ms,
                    answered: 0,
                    needed: f.quorum.needed,
                    asked: f.quorum.n,
                }),
            ),
        }
    }
}

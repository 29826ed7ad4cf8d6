//! The coordinator role: get, put and delete against a key's preference list with N/R/W quorums.
//!
//! A put is coordinated by a replica of the key (it mints the new dot with its own actor); a node
//! that is not a replica forwards the write to the first one. A get can be coordinated anywhere.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::node::{NodeCore, Origin};
use super::types::{
    ClientReply, ClientRequest, CoordMsg, GetReply, Object, OpId, PutReply, ReplicaError,
    ReplicaMsg, RequestError, RequestOptions, Value,
};
use crate::dvv::{Dot, DvvSet, VersionVector};
use crate::store::Store;

/// Longest request timeout a client may ask for.
pub const MAX_TIMEOUT_MS: u32 = 600_000;

/// How long a get that has replied still waits for the other replicas (for read repair).
const READ_REPAIR_WINDOW_US: u64 = 1_000_000;

/// Extra time a forwarding node waits beyond the request timeout, so the replica it forwarded to
/// answers (with its own timeout error if need be) before the forwarder gives up.
const FORWARD_GRACE_MS: u64 = 250;

/// Quorum settings resolved for one request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quorum {
    pub n: u8,
    pub needed: u8,
    /// Replies/acks that must come from primaries (PR/PW).
    pub primaries: u8,
    pub timeout_ms: u32,
}

/// A node a request goes to: a primary, or a fallback standing in for one (sloppy quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub node: NodeId,
    /// The primary this fallback stands in for; `None` for a primary.
    pub hint_for: Option<NodeId>,
}

/// A put or delete waiting for acknowledgements.
#[derive(Debug)]
pub(super) struct WriteOp {
    origin: Origin,
    kind: &'static str,
    partition: PartitionId,
    key: Bytes,
    object: Object,
    targets: Vec<Target>,
    acked: BTreeSet<NodeId>,
    failed: BTreeMap<NodeId, ReplicaError>,
    quorum: Quorum,
    context: VersionVector,
    dot: Option<Dot>,
    deadline: u64,
    /// When unanswered targets get fallbacks (once); `None` after that.
    fallback_at: Option<u64>,
    replied: bool,
}

/// A get waiting for replies (and, after replying, for the rest of them, for read repair).
#[derive(Debug)]
pub(super) struct ReadOp {
    origin: Origin,
    partition: PartitionId,
    key: Bytes,
    targets: Vec<Target>,
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
    /// Every time at which this operation registered a timer.
    pub(super) fn timers(&self) -> Vec<u64> {
        match self {
            PendingOp::Write(w) => std::iter::once(w.deadline).chain(w.fallback_at).collect(),
            PendingOp::Read(r) => vec![r.deadline],
            PendingOp::Forward(f) => vec![f.deadline],
        }
    }
}

fn is_primary(targets: &[Target], node: NodeId) -> bool {
    targets
        .iter()
        .any(|t| t.node == node && t.hint_for.is_none())
}

fn error(e: RequestError) -> ClientReply {
    ClientReply::Error(e)
}

impl<S: Store> NodeCore<S> {
    /// Resolve and validate N/R/W and the timeout of a request against the cluster defaults.
    fn quorum(&self, opts: &RequestOptions, read: bool) -> Result<Quorum, RequestError> {
        let n = opts.n.unwrap_or(self.cfg.n);
        if n == 0 || n > self.cfg.n {
            // More replicas than the cluster's N would put copies where anti-entropy and the
            // reaper never look.
            return Err(RequestError::InvalidOptions(format!(
                "n must be between 1 and the cluster's n={}, got {n}",
                self.cfg.n
            )));
        }
        let (name, needed, pname, primaries) = if read {
            (
                "r",
                opts.r.unwrap_or(self.cfg.r.min(n)),
                "pr",
                opts.pr.unwrap_or(0),
            )
        } else {
            (
                "w",
                opts.w.unwrap_or(self.cfg.w.min(n)),
                "pw",
                opts.pw.unwrap_or(0),
            )
        };
        if needed == 0 || needed > n {
            return Err(RequestError::InvalidOptions(format!(
                "{name} must be between 1 and n={n}, got {needed}"
            )));
        }
        if primaries > needed {
            return Err(RequestError::InvalidOptions(format!(
                "{pname} must be at most {name}={needed}, got {primaries}"
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
            primaries,
            timeout_ms,
        })
    }

    /// The nodes a request for partition `p` goes to: each primary believed up, and for each
    /// one believed down the next healthy node further along the ring (sloppy quorum).
    pub(super) fn select_targets(&self, p: PartitionId, n: u8) -> Vec<Target> {
        let walk = self.map.walk(p);
        let n = usize::from(n).min(walk.len());
        let mut fallbacks = walk[n..].iter().copied().filter(|f| !self.is_down(*f));
        let mut targets = Vec::with_capacity(n);
        for primary in &walk[..n] {
            if !self.is_down(*primary) {
                targets.push(Target {
                    node: *primary,
                    hint_for: None,
                });
            } else if let Some(f) = fallbacks.next() {
                targets.push(Target {
                    node: f,
                    hint_for: Some(*primary),
                });
            }
        }
        targets
    }

    /// The next fallback for `primary` that is not already a target and not believed down.
    fn next_fallback(&self, p: PartitionId, n: u8, targets: &[Target]) -> Option<NodeId> {
        let walk = self.map.walk(p);
        let n = usize::from(n).min(walk.len());
        walk[n..]
            .iter()
            .copied()
            .find(|f| !self.is_down(*f) && !targets.iter().any(|t| t.node == *f))
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

    /// Start a get: ask the targets, answer after R replies (PR of them primaries) with their merge.
    pub(super) fn start_get(&mut self, origin: Origin, key: Bytes, opts: RequestOptions) {
        let quorum = match self.check_key(&key).and_then(|_| self.quorum(&opts, true)) {
            Ok(q) => q,
            Err(e) => return self.respond(origin, error(e)),
        };
        let partition = self.map.partition_for_key(&key);
        let targets = self.select_targets(partition, quorum.n);
        if let Err(e) = self.check_reachable("get", &targets, quorum) {
            return self.respond(origin, error(e));
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
        for t in targets {
            if t.node == self.id() {
                let result = self
                    .local_object(partition, &key, t.hint_for)
                    .map(|o| (!o.join().is_empty() || o.value_count() > 0).then_some(o))
                    .map_err(|e| ReplicaError::Storage(e.to_string()));
                self.on_read_reply(t.node, op, result);
            } else {
                self.send(
                    t.node,
                    ReplicaMsg::Read {
                        op,
                        partition,
                        key: key.clone(),
                        fallback_for: t.hint_for,
                    },
                );
            }
        }
    }

    /// Refuse at once when the targets cannot possibly make the quorum.
    fn check_reachable(&self, op: &str, targets: &[Target], q: Quorum) -> Result<(), RequestError> {
        if targets.len() < usize::from(q.needed) {
            return Err(RequestError::Unavailable {
                op: op.into(),
                needed: q.needed,
                available: targets.len() as u8,
            });
        }
        let primaries = targets.iter().filter(|t| t.hint_for.is_none()).count();
        if primaries < usize::from(q.primaries) {
            return Err(RequestError::PrimariesUnavailable {
                op: op.into(),
                needed: q.primaries,
                available: primaries as u8,
            });
        }
        Ok(())
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
        let max_counter = crate::codec::token::MAX_TOKEN_COUNTER;
        if context.entries().iter().any(|(_, c)| *c > max_counter) {
            return self.respond(
                origin,
                error(RequestError::InvalidOptions(format!(
                    "context has a counter above {max_counter}; it did not come from this cluster"
                ))),
            );
        }
        let partition = self.map.partition_for_key(&key);
        let mut targets = self.select_targets(partition, quorum.n);
        if let Err(e) = self.check_reachable(kind, &targets, quorum) {
            return self.respond(origin, error(e));
        }
        let me = self.id();
        let i_am_primary = targets.iter().any(|t| t.node == me && t.hint_for.is_none());
        let up_primary = targets
            .iter()
            .find(|t| t.hint_for.is_none())
            .map(|t| t.node);
        if let (false, Some(primary), Origin::Client(_)) = (i_am_primary, up_primary, origin) {
            // Prefer a primary to coordinate (and mint the dot): fallbacks mint only when every
            // primary is down, which keeps actor identities stable (see `retire_actor`).
            return self.forward(origin, kind, quorum, primary, key, value, context, opts);
        }
        if !targets.iter().any(|t| t.node == me) {
            if let Origin::Client(_) = origin {
                let to = targets[0].node;
                return self.forward(origin, kind, quorum, to, key, value, context, opts);
            }
            // Forwarded to us although our view says we are no target: coordinate anyway as
            // an extra fallback for the first primary, so the write is not bounced around.
            let owner = self
                .map
                .preference_list(partition, usize::from(quorum.n))
                .first()
                .copied()
                .unwrap_or(me);
            targets.push(Target {
                node: me,
                hint_for: Some(owner),
            });
        }
        let my_target = targets
            .iter()
            .find(|t| t.node == me)
            .copied()
            .unwrap_or(Target {
                node: me,
                hint_for: None,
            });

        // Mint the new dot here: update against what this node holds for the key.
        let local = match self.local_knowledge(partition, &key) {
            Ok(local) => local,
            Err(e) => return self.respond(origin, error(RequestError::Storage(e.to_string()))),
        };
        let object = DvvSet::update(
            DvvSet::new_with_context(&context, value),
            &local,
            self.actor,
        );
        #[cfg(feature = "planted-bugs")]
        let object = if self.cfg.has_bug(super::config::PlantedBug::LastWriteWins) {
            object.keep_only_newest()
        } else {
            object
        };
        if let Err(e) = crate::codec::check_replica_object(&object) {
            return self.respond(
                origin,
                error(RequestError::InvalidOptions(format!("bad context: {e}"))),
            );
        }
        let encoded = crate::codec::encode_object(&object)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if encoded > self.cfg.max_message_bytes / 2 {
            return self.respond(
                origin,
                error(RequestError::ValueTooLarge {
                    len: encoded as u64,
                    max: (self.cfg.max_message_bytes / 2) as u64,
                }),
            );
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
        let stored = match my_target.hint_for {
            None => self
                .save(partition, &key, &object)
                .map_err(|e| e.to_string()),
            Some(owner) => self
                .merge_into_hint(owner, partition, &key, &object)
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        };
        if let Err(e) = stored {
            return self.respond(origin, error(RequestError::Storage(e)));
        }
        let dot = Some(Dot {
            actor: self.actor,
            counter: object.join().get(&self.actor),
        });
        let op = self.next_op_id();
        let deadline = self.deadline(quorum.timeout_ms);
        let fallback_at = self.now + u64::from(self.cfg.fallback_after_ms) * 1000;
        let fallback_at = (fallback_at < deadline).then_some(fallback_at);
        for t in targets.iter().filter(|t| t.node != me) {
            if t.hint_for.is_some() {
                self.stats.sloppy_writes += 1;
            }
            self.send(
                t.node,
                ReplicaMsg::Write {
                    op,
                    partition,
                    key: key.clone(),
                    object: object.clone(),
                    hint: t.hint_for,
                },
            );
        }
        let context = object.join();
        self.add_op(
            op,
            deadline,
            PendingOp::Write(WriteOp {
                origin,
                kind,
                partition,
                key,
                object,
                targets,
                acked: BTreeSet::from([me]),
                failed: BTreeMap::new(),
                quorum,
                context,
                dot,
                deadline,
                fallback_at,
                replied: false,
            }),
        );
        if let Some(at) = fallback_at {
            self.deadlines.insert((at, op));
        }
        self.check_write_done(op);
    }

    /// Sloppy quorum at run time: targets that did not answer within `fallback_after_ms` are
    /// counted as down, and the write also goes to fallbacks with hints for them.
    fn fallback_writes(&mut self, op: OpId) {
        let Some(PendingOp::Write(w)) = self.ops.get(&op) else {
            return;
        };
        if w.replied && w.acked.len() + w.failed.len() >= w.targets.len() {
            return;
        }
        let silent: Vec<Target> = w
            .targets
            .iter()
            .filter(|t| !w.acked.contains(&t.node) && !w.failed.contains_key(&t.node))
            .copied()
            .collect();
        let (partition, n) = (w.partition, w.quorum.n);
        for t in silent {
            self.mark_down(t.node);
            let owner = t.hint_for.unwrap_or(t.node);
            let Some(PendingOp::Write(w)) = self.ops.get(&op) else {
                return;
            };
            let Some(fallback) = self.next_fallback(partition, n, &w.targets) else {
                break;
            };
            let msg = ReplicaMsg::Write {
                op,
                partition,
                key: w.key.clone(),
                object: w.object.clone(),
                hint: Some(owner),
            };
            if let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) {
                w.targets.push(Target {
                    node: fallback,
                    hint_for: Some(owner),
                });
            }
            self.stats.sloppy_writes += 1;
            self.send(fallback, msg);
        }
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
        self.send(to, CoordMsg::Forward { op, request });
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
        if !w.targets.iter().any(|t| t.node == from) {
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
        let primary_acks = w
            .acked
            .iter()
            .filter(|n| is_primary(&w.targets, **n))
            .count();
        let needed = usize::from(w.quorum.needed);
        let needed_primaries = usize::from(w.quorum.primaries);
        let mut reply = None;
        if !w.replied && acks >= needed && primary_acks >= needed_primaries {
            w.replied = true;
            reply = Some((
                w.origin,
                ClientReply::Written(PutReply {
                    context: w.context.clone(),
                    dot: w.dot,
                    acks: acks as u8,
                    primary_acks: primary_acks as u8,
                    fallback_acks: (acks - primary_acks) as u8,
                }),
            ));
        } else if !w.replied && w.targets.len() - w.failed.len() < needed && w.fallback_at.is_none()
        {
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
        if !r.targets.iter().any(|t| t.node == from)
            || r.replies.contains_key(&from)
            || r.failed.contains_key(&from)
        {
            return;
        }
        match result {
            Ok(object) => {
                if let Some(o) = &object {
                    if crate::codec::check_replica_object(o).is_err() {
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
        let primary_replies = r
            .replies
            .keys()
            .filter(|n| is_primary(&r.targets, **n))
            .count();
        let all_in = answered + r.failed.len() >= r.targets.len();
        let mut reply = None;
        if !r.replied && answered >= needed && primary_replies >= usize::from(r.quorum.primaries) {
            let merged = self.merged_replies(r);
            reply = Some(ClientReply::Got(GetReply {
                values: merged
                    .values()
                    .into_iter()
                    .filter_map(|v| v.data().cloned())
                    .collect(),
                context: merged.join(),
                replied: answered as u8,
                primary_replies: primary_replies as u8,
            }));
        } else if !r.replied && r.targets.len() - r.failed.len() < needed {
            reply = Some(error(RequestError::Storage(format!(
                "get failed on {} of {} replicas",
                r.failed.len(),
                r.targets.len()
            ))));
        } else if !r.replied && all_in {
            reply = Some(error(RequestError::PrimariesUnavailable {
                op: "get".into(),
                needed: r.quorum.primaries,
                available: primary_replies as u8,
            }));
        }
        if let Some(reply) = reply {
            let origin = r.origin;
            let window = self.now + READ_REPAIR_WINDOW_US;
            if let Some(PendingOp::Read(r)) = self.ops.get_mut(&op) {
                r.replied = true;
                // Keep waiting for the remaining replicas only briefly: a repair from an old
                // snapshot could bring back something deleted (and reaped) meanwhile.
                if r.deadline > window {
                    let old = r.deadline;
                    r.deadline = window;
                    self.deadlines.remove(&(old, op));
                    self.deadlines.insert((window, op));
                }
            }
            self.respond(origin, reply);
        }
        if all_in {
            self.finish_read(op);
        }
    }

    /// The read is over (every target answered, or the deadline passed): repair the primaries
    /// that answered with stale data (within the read-repair budget).
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
            if !is_primary(&r.targets, *node) {
                continue; // fallbacks hold hints; handoff delivers those
            }
            let stale = match object {
                None => true,
                Some(o) => o.sync(&merged) != *o,
            };
            if !stale || !self.repair_budget() {
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
                    ReplicaMsg::Write {
                        op: repair_op,
                        partition: r.partition,
                        key: r.key.clone(),
                        object: merged.clone(),
                        hint: None,
                    },
                );
            }
        }
    }

    /// A timer of an operation fired: the fallback timer of a write, or a deadline.
    pub(super) fn on_deadline(&mut self, op: OpId) {
        if let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) {
            if let Some(at) = w.fallback_at {
                if self.now >= at && self.now < w.deadline {
                    w.fallback_at = None;
                    self.fallback_writes(op);
                    self.check_write_done(op);
                    return;
                }
            }
        }
        let Some(pending) = self.ops.get(&op) else {
            return;
        };
        if self.now < pending.timers().into_iter().max().unwrap_or(0) {
            return; // an earlier timer of an op whose deadline has not come
        }
        let Some(pending) = self.remove_op(op) else {
            return;
        };
        match pending {
            PendingOp::Write(w) => {
                for t in &w.targets {
                    if !w.acked.contains(&t.node) && !w.failed.contains_key(&t.node) {
                        self.mark_down(t.node);
                    }
                }
                if !w.replied {
                    let primary_acks = w
                        .acked
                        .iter()
                        .filter(|n| is_primary(&w.targets, **n))
                        .count();
                    let e = if w.acked.len() >= usize::from(w.quorum.needed) {
                        RequestError::PrimariesUnavailable {
                            op: w.kind.into(),
                            needed: w.quorum.primaries,
                            available: primary_acks as u8,
                        }
                    } else {
                        RequestError::Timeout {
                            op: w.kind.into(),
                            timeout_ms: w.quorum.timeout_ms,
                            answered: w.acked.len() as u8,
                            needed: w.quorum.needed,
                            asked: w.targets.len() as u8,
                        }
                    };
                    self.respond(w.origin, error(e));
                }
            }
            PendingOp::Read(r) => {
                for t in &r.targets {
                    if !r.replies.contains_key(&t.node) && !r.failed.contains_key(&t.node) {
                        self.mark_down(t.node);
                    }
                }
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

//! The read path of the coordinator: a get asks its targets, answers after R replies (PR of
//! them from primaries) with their merge, then waits briefly for the rest to repair stale
//! primaries (bounded read repair).
//!
//! Inputs: a client get (`start_get`), [`super::types::ReplicaMsg::ReadReply`]s
//! (`on_read_reply`), and the operation's deadline (`on_deadline` in `coordinator.rs`, which
//! calls `finish_read`).

use std::collections::BTreeMap;

use bytes::Bytes;
use dynakv_ring::NodeId;

use super::coordinator::{error, is_primary, PendingOp, ReadOp, READ_REPAIR_WINDOW_US};
use super::node::{NodeCore, Origin};
use super::timers::Timer;
use super::types::{
    ClientReply, GetReply, Object, OpId, ReplicaError, ReplicaMsg, RequestError, RequestOptions,
};
use crate::dvv::DvvSet;
use crate::store::Store;

impl<S: Store> NodeCore<S> {
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

    pub(super) fn on_read_reply(
        &mut self,
        from: NodeId,
        op: OpId,
        result: Result<Option<Object>, ReplicaError>,
    ) {
        let Some(PendingOp::Read(r)) = self.coord.ops.get_mut(&op) else {
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

    pub(super) fn check_read_done(&mut self, op: OpId) {
        let Some(PendingOp::Read(r)) = self.coord.ops.get(&op) else {
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
            if let Some(PendingOp::Read(r)) = self.coord.ops.get_mut(&op) {
                r.replied = true;
                // Keep waiting for the remaining replicas only briefly: a repair from an old
                // snapshot could bring back something deleted (and reaped) meanwhile.
                if r.deadline > window {
                    let old = r.deadline;
                    r.deadline = window;
                    self.timers.cancel(old, Timer::Op(op));
                    self.timers.set(window, Timer::Op(op));
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
    pub(super) fn finish_read(&mut self, op: OpId) {
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
}

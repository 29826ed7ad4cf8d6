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

use super::coordinator::{error, is_primary, READ_REPAIR_WINDOW_US};
use super::ctx::merge_objects;
use super::node::{NodeCore, Origin};
use super::ops::{PendingOp, ReadOp};
use super::timers::Timer;
use super::types::{Object, OpId, ReplicaError, ReplicaMsg, RequestOptions};
use crate::store::Store;

impl<S: Store> NodeCore<S> {
    /// Start a get: ask the targets, answer after R replies (PR of them primaries) with their merge.
    pub(super) fn start_get(&mut self, origin: Origin, key: Bytes, opts: RequestOptions) {
        let quorum = match self.check_key(&key).and_then(|_| self.quorum(&opts, true)) {
            Ok(q) => q,
            Err(e) => return self.respond(origin, error(e)),
        };
        let partition = self.ctx.map.partition_for_key(&key);
        let targets = self.select_targets(partition, quorum.n);
        if let Err(e) = self.check_reachable("get", &targets, quorum) {
            return self.respond(origin, error(e));
        }
        let op = self.ctx.next_op_id();
        let deadline = self.ctx.deadline(quorum.timeout_ms);
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
            if t.node == self.ctx.id() {
                let result = self
                    .local_object(partition, &key, t.hint_for)
                    .map(|o| (!o.join().is_empty() || o.value_count() > 0).then_some(o))
                    .map_err(|e| ReplicaError::Storage(e.to_string()));
                self.on_read_reply(t.node, op, result);
            } else {
                self.ctx.send(
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
        if r.on_reply(from, result) {
            self.check_read_done(op);
        }
    }

    /// Act on the read's progress: reply (then wait for stragglers only briefly), and repair
    /// once every target answered.
    pub(super) fn check_read_done(&mut self, op: OpId) {
        let window = self.ctx.now + READ_REPAIR_WINDOW_US;
        let cfg = &self.ctx.cfg;
        let Some(PendingOp::Read(r)) = self.coord.ops.get_mut(&op) else {
            return;
        };
        let progress = r.progress(|a, b| merge_objects(cfg, a, b));
        if let Some((origin, reply)) = progress.reply {
            if let Some(old) = r.shorten_deadline(window) {
                self.ctx.timers.cancel(old, Timer::Op(op));
                self.ctx.timers.set(window, Timer::Op(op));
            }
            self.respond(origin, reply);
        }
        if progress.finished {
            self.finish_read(op);
        }
    }

    /// The read is over (every target answered, or the deadline passed): repair the primaries
    /// that answered with stale data (within the read-repair budget).
    pub(super) fn finish_read(&mut self, op: OpId) {
        let Some(PendingOp::Read(r)) = self.remove_op(op) else {
            return;
        };
        if !self.ctx.cfg.read_repair || r.replies.len() < 2 {
            return;
        }
        let merged = r.merged(|a, b| self.ctx.merge(a, b));
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
            self.ctx.stats.read_repairs += 1;
            if *node == self.ctx.id() {
                // The same path as a remote repair: the map may have moved since the read
                // started, and a node that no longer replicates the key hints it on instead of
                // keeping an orphan copy.
                if let Err(e) = self.replica_write(r.partition, &r.key, &merged, None) {
                    tracing::warn!(?e, "local read repair failed");
                }
            } else {
                let repair_op = self.ctx.next_op_id();
                self.ctx.send(
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

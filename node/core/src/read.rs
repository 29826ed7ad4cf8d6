//! The read path of the coordinator: a get asks its targets, answers after R replies (PR of
//! them from primaries) with their merge, then waits briefly for the rest to repair stale
//! primaries (bounded read repair).
//!
//! Inputs (methods of [`Coordinator`]): a client get (`start_get`),
//! [`super::types::ReplicaMsg::ReadReply`]s (`on_read_reply`), and the operation's deadline
//! (`on_deadline` in `coordinator.rs`, which calls `finish_read`).

use std::collections::BTreeMap;

use bytes::Bytes;
use dynakv_ring::NodeId;

use super::coordinator::{error, is_primary, snapshot_horizon, READ_REPAIR_WINDOW_US};
use super::coordinator::{CoordEnv, Coordinator};
use super::ctx::merge_objects;
use super::ctx::Ctx;
use super::node::Origin;
use super::ops::{PendingOp, ReadOp};
use super::replica::ReplicaRole;
use super::timers::Timer;
use super::types::{Object, OpId, ReplicaError, ReplicaMsg, RequestOptions};
use crate::store::Store;

impl Coordinator {
    /// Start a get: ask the targets, answer after R replies (PR of them primaries) with their merge.
    pub(super) fn start_get<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        origin: Origin,
        key: Bytes,
        opts: RequestOptions,
    ) {
        let quorum = match Self::check_key(ctx, &key).and_then(|_| Self::quorum(ctx, &opts, true)) {
            Ok(q) => q,
            Err(e) => return ctx.respond(origin, error(e)),
        };
        let partition = ctx.map.partition_for_key(&key);
        let targets = Self::select_targets(ctx, env, partition, quorum.n);
        if let Err(e) = Self::check_reachable("get", &targets, quorum) {
            return ctx.respond(origin, error(e));
        }
        let op = ctx.next_op_id();
        let deadline = ctx.deadline(quorum.timeout_ms);
        self.add_op(
            ctx,
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
                started: ctx.now,
            }),
        );
        for t in targets {
            if t.node == ctx.id() {
                let result = ReplicaRole::answer(ctx, partition, &key, t.hint_for);
                self.on_read_reply(ctx, env, t.node, op, result);
            } else {
                ctx.send(
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

    pub(super) fn on_read_reply<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        from: NodeId,
        op: OpId,
        result: Result<Option<Object>, ReplicaError>,
    ) {
        let Some(PendingOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if r.on_reply(from, result) {
            self.check_read_done(ctx, env, op);
        }
    }

    /// Act on the read's progress: reply (then wait for stragglers only briefly), and repair
    /// once every target answered.
    pub(super) fn check_read_done<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        op: OpId,
    ) {
        let window = ctx.now + READ_REPAIR_WINDOW_US;
        let cfg = &ctx.cfg;
        let Some(PendingOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let progress = r.progress(|a, b| merge_objects(cfg, a, b));
        if let Some((origin, reply)) = progress.reply {
            if let Some(old) = r.shorten_deadline(window) {
                ctx.timers.cancel(old, Timer::Op(op));
                ctx.timers.set(window, Timer::Op(op));
            }
            ctx.respond(origin, reply);
        }
        if progress.finished {
            self.finish_read(ctx, env, op);
        }
    }

    /// The read is over (every target answered, or the deadline passed): repair the primaries
    /// that answered with stale data (within the read-repair budget).
    pub(super) fn finish_read<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        op: OpId,
    ) {
        let Some(PendingOp::Read(r)) = self.remove_op(ctx, op) else {
            return;
        };
        if !ctx.cfg.read_repair || r.replies.len() < 2 {
            return;
        }
        // A repair sends what the replies held when they were read. Later than the snapshot
        // horizon (a per-request timeout can be minutes, and the repair of a read that never
        // got R replies is sent at its deadline) that is stale: skip it, anti-entropy repairs
        // from current data instead. Safety does not rest on this (the clocks drop old copies).
        if ctx.now > r.started + snapshot_horizon(&ctx.cfg) {
            ctx.stats.read_repairs_skipped += 1;
            return;
        }
        let merged = r.merged(|a, b| ctx.merge(a, b));
        if merged.is_empty() {
            return;
        }
        for (node, object) in &r.replies {
            if !is_primary(&r.targets, *node) {
                continue; // fallbacks hold hints; handoff delivers those
            }
            // A replica that holds no record answers with its clock's fill, whose context
            // legitimately differs from the others': it is stale only if it lacks a version.
            let stale = match object {
                None => true,
                Some(o) if o.value_count() == 0 => merged.value_count() > 0,
                Some(o) => o.sync(&merged) != *o,
            };
            if !stale || !self.repair_budget(ctx) {
                continue;
            }
            ctx.stats.read_repairs += 1;
            if *node == ctx.id() {
                // The same path as a remote repair: the map may have moved since the read
                // started, and a node that no longer replicates the key hints it on instead of
                // keeping an orphan copy.
                if let Err(e) = env.replica.write(ctx, r.partition, &r.key, &merged, None) {
                    tracing::warn!(?e, "local read repair failed");
                }
            } else {
                let repair_op = ctx.next_op_id();
                ctx.send(
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

//! The write path of the coordinator: a put or delete mints its dot here (against everything
//! this node holds for the key), goes to the N targets, and answers after W acks (PW of them
//! from primaries); targets silent past `fallback_after_ms` get a hinted fallback (sloppy
//! quorum at run time).
//!
//! Inputs (methods of [`Coordinator`]): a client put/delete (`start_write`),
//! [`super::types::ReplicaMsg::WriteAck`]s (`on_write_ack`), and the write's fallback timer
//! (`on_deadline` in `coordinator.rs`, which calls `fallback_writes`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::NodeId;

use super::coordinator::{error, Target};
use super::coordinator::{CoordEnv, Coordinator};
use super::ctx::Ctx;
use super::node::Origin;
use super::ops::{PendingOp, WriteOp};
use super::timers::Timer;
use super::types::Object;
use super::types::{OpId, ReplicaError, ReplicaMsg, RequestError, RequestOptions, Value};
use crate::dvv::{Dot, NodeClock};
use crate::store::Store;

/// What a write stores on the key's replicas.
#[derive(Debug, Clone)]
pub(super) enum WriteBody {
    /// A put (a value) or a delete (a tombstone): the coordinator mints a new version that
    /// supersedes what `context` covers.
    Mint { value: Value, context: NodeClock },
    /// A restore: a stored object (from a backup) merged as it is, as anti-entropy merges;
    /// nothing is minted.
    Merge(Object),
}

impl WriteBody {
    /// The operation's name in replies and logs.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            WriteBody::Mint {
                value: Value::Tombstone,
                ..
            } => "delete",
            WriteBody::Mint { .. } => "put",
            WriteBody::Merge(_) => "restore",
        }
    }
}

impl Coordinator {
    /// Start a put, a delete or a restore.
    pub(super) fn start_write<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        origin: Origin,
        key: Bytes,
        body: WriteBody,
        opts: RequestOptions,
    ) {
        let kind = body.kind();
        let checked = Self::check_key(ctx, &key).and_then(|_| {
            if let WriteBody::Mint {
                value: Value::Data(v),
                ..
            } = &body
            {
                if v.len() > ctx.cfg.max_value_bytes {
                    return Err(RequestError::ValueTooLarge {
                        len: v.len() as u64,
                        max: ctx.cfg.max_value_bytes as u64,
                    });
                }
            }
            Self::quorum(ctx, &opts, false)
        });
        let quorum = match checked {
            Ok(q) => q,
            Err(e) => return ctx.respond(origin, error(e)),
        };
        let max_counter = crate::codec::token::MAX_TOKEN_COUNTER;
        let claimed = match &body {
            WriteBody::Mint { context, .. } => context.clone(),
            WriteBody::Merge(object) => object.context().clone(),
        };
        if claimed.entries().iter().any(|(_, e)| e.top() > max_counter) {
            return ctx.respond(
                origin,
                error(RequestError::InvalidOptions(format!(
                    "context has a counter above {max_counter}; it did not come from this cluster"
                ))),
            );
        }
        // The native protocol carries contexts as clocks, not tokens: the same limits apply.
        if let Err(e) = check_context(
            &claimed,
            "the request's context did not come from a read of this cluster",
        ) {
            return ctx.respond(origin, error(e));
        }
        let partition = ctx.map.partition_for_key(&key);
        let mut targets = Self::select_targets(ctx, env, partition, quorum.n);
        if let Err(e) = Self::check_reachable(kind, &targets, quorum) {
            return ctx.respond(origin, error(e));
        }
        let me = ctx.id();
        let i_am_primary = targets.iter().any(|t| t.node == me && t.hint_for.is_none());
        let up_primary = targets
            .iter()
            .find(|t| t.hint_for.is_none())
            .map(|t| t.node);
        if let (false, Some(primary), Origin::Client(_)) = (i_am_primary, up_primary, origin) {
            // Prefer a primary to coordinate (and mint the dot): fallbacks mint only when every
            // primary is down, which keeps actor identities stable (see `retire_actor`).
            return self.forward(ctx, origin, kind, quorum, primary, key, body, opts);
        }
        if !targets.iter().any(|t| t.node == me) {
            if let Origin::Client(_) = origin {
                let to = targets[0].node;
                return self.forward(ctx, origin, kind, quorum, to, key, body, opts);
            }
            // Forwarded to us although our view says we are no target: coordinate anyway as
            // an extra fallback, so the write is not bounced around. The hint is for a primary
            // the write does not reach directly: one for a primary that is also a target would
            // be handed to that primary and merge into its copy, and the write, acknowledged
            // as two copies, would rest on one (simulator seed 19955). Only when every primary
            // is a target does it go to the first; acks count by the node a copy ends on
            // (`WriteOp::copies`), so that copy and the first primary's count once.
            let primaries = ctx.map.preference_list(partition, usize::from(quorum.n));
            let owner = primaries
                .iter()
                .find(|p| !targets.iter().any(|t| t.node == **p))
                .or(primaries.first())
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
        let local = match env.replica.local_knowledge(ctx, partition, &key) {
            Ok(local) => local,
            Err(e) => return ctx.respond(origin, error(RequestError::Storage(e.to_string()))),
        };
        // A corrupt local record was read as missing: it may have held dots this node minted
        // for the key, so mint under a new actor (setting it aside retires the current one),
        // never again under one whose dots for this key are lost (Riak's kv679).
        if !ctx.corrupt.get_mut().is_empty() {
            ctx.set_aside_corrupt();
        }
        let minting = matches!(body, WriteBody::Mint { .. });
        let object = match body {
            WriteBody::Mint { value, context } => {
                let floor = ctx.mint_floor(partition);
                #[cfg(feature = "planted-bugs")]
                let floor = if ctx.cfg.has_bug(super::config::PlantedBug::IgnoreReapFloor) {
                    0
                } else {
                    floor
                };
                if context.top(&ctx.actor) > super::reaper::FLOOR_LIMIT {
                    // No honest context gets there: this node has not minted that many dots.
                    return ctx.respond(
                        origin,
                        error(RequestError::InvalidOptions(
                            "bad context: it names a counter of this node far past any it minted"
                                .into(),
                        )),
                    );
                }
                let minted =
                    match Object::update_above(&local, &context, ctx.actor, floor, value.clone()) {
                        // A counter past the floor limit in the stored object came from a made-up
                        // context another coordinator accepted: raising the floor there would
                        // exhaust the partition's counters, so mint under a new actor.
                        Some((_, dot)) if dot.counter > super::reaper::FLOOR_LIMIT => {
                            ctx.retire_actor();
                            Object::update_above(&local, &context, ctx.actor, 0, value)
                        }
                        minted => minted,
                    };
                match minted {
                    Some((object, _)) => object,
                    // The token limit above keeps clients below it, but a peer's copy can carry our
                    // counter up to the limit: refused, never wrapped.
                    None => {
                        return ctx.respond(
                            origin,
                            error(RequestError::InvalidOptions(
                                "bad context: this node's counter for the key is exhausted".into(),
                            )),
                        )
                    }
                }
            }
            // A restore: versions this replica stored and saw superseded stay gone (the
            // node-clock check), as they would at the other replicas.
            WriteBody::Merge(given) => {
                let merged = super::ctx::merge_objects(&ctx.cfg, &local, &given);
                ctx.drop_seen(partition, &key, Some(&local), merged)
            }
        };
        #[cfg(feature = "planted-bugs")]
        let object = if ctx.cfg.has_bug(super::config::PlantedBug::LastWriteWins) {
            object.keep_only_newest()
        } else {
            object
        };
        let encoded = crate::codec::encode_object(&object)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if encoded > ctx.cfg.max_message_bytes / 2 {
            return ctx.respond(
                origin,
                error(RequestError::ValueTooLarge {
                    len: encoded as u64,
                    max: (ctx.cfg.max_message_bytes / 2) as u64,
                }),
            );
        }
        if let Err(e) = check_context(
            object.context(),
            "read the key and write back with its context; writes without a context add to it",
        ) {
            return ctx.respond(origin, error(e));
        }
        let count = object.value_count();
        if count > ctx.cfg.sibling_max as usize {
            return ctx.respond(
                origin,
                error(RequestError::TooManySiblings {
                    count: count as u32,
                    max: ctx.cfg.sibling_max,
                }),
            );
        }
        let dot = minting.then(|| Dot {
            actor: ctx.actor,
            counter: object.context().top(&ctx.actor),
        });
        if let Some(dot) = dot {
            // Past every check: the counter is used from here on, whatever the store call below
            // returns (a failed write may still have reached the disk), so it is never minted
            // again in this partition.
            ctx.raise_mint_floor(partition, dot.counter);
        }
        let stored = match my_target.hint_for {
            None => ctx
                .save(partition, &key, &object)
                .map_err(|e| e.to_string()),
            Some(owner) => env
                .replica
                .handoff
                .merge_into_hint(ctx, env.replica.membership, owner, partition, &key, &object)
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        };
        if let Err(e) = stored {
            // The dot is burned: nobody else got it. As a replica, record it in the partition
            // clock (in memory at once, on disk with the next clock write) so the clocks'
            // bases can pass it; otherwise every context that covers it (this actor's later
            // writes all do) would stay uncovered and its tombstones unreaped. Sound even if
            // the failed write reached the disk: a dot a record still holds is never claimed
            // superseded.
            if let (Some(dot), None) = (dot, my_target.hint_for) {
                if let Err(e) = ctx.note_stored(partition, [dot]) {
                    // Kept in memory; the next clock write persists it.
                    tracing::debug!(error = %e, "burned dot not yet in the stored clock");
                }
            }
            return ctx.respond(origin, error(RequestError::Storage(e)));
        }
        let op = ctx.next_op_id();
        let deadline = ctx.deadline(quorum.timeout_ms);
        // Fallback copies carry the object built now: never later than the snapshot horizon.
        let fallback_at = ctx.now + u64::from(ctx.cfg.fallback_after_ms) * 1000;
        let latest = deadline.min(ctx.now + super::coordinator::snapshot_horizon(&ctx.cfg));
        let fallback_at = (fallback_at < latest).then_some(fallback_at);
        for t in targets.iter().filter(|t| t.node != me) {
            if t.hint_for.is_some() {
                ctx.stats.sloppy_writes += 1;
            }
            ctx.send(
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
        let context = object.context().clone();
        self.add_op(
            ctx,
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
                demoted: BTreeSet::new(),
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
            ctx.timers.set(at, Timer::Op(op));
        }
        self.check_write_done(ctx, op);
    }

    /// Sloppy quorum at run time: targets that did not answer within `fallback_after_ms` are
    /// counted as down, and the write also goes to fallbacks with hints for them.
    pub(super) fn fallback_writes<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        op: OpId,
    ) {
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
            env.mark_down(t.node);
            let owner = t.hint_for.unwrap_or(t.node);
            let Some(PendingOp::Write(w)) = self.ops.get(&op) else {
                return;
            };
            let Some(fallback) = Self::next_fallback(ctx, env, partition, n, &w.targets) else {
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
            ctx.stats.sloppy_writes += 1;
            ctx.send(fallback, msg);
        }
    }

    pub(super) fn on_write_ack<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        op: OpId,
        result: Result<super::types::Stored, ReplicaError>,
    ) {
        let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) else {
            return; // late, duplicated or unknown: harmless
        };
        if w.on_ack(from, result) {
            self.check_write_done(ctx, op);
        }
    }

    /// Act on the write's progress: reply, and forget it once every target answered.
    pub(super) fn check_write_done<S: Store>(&mut self, ctx: &mut Ctx<S>, op: OpId) {
        let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) else {
            return;
        };
        let progress = w.progress();
        if let Some((origin, reply)) = progress.reply {
            ctx.respond(origin, reply);
        }
        if progress.finished {
            self.remove_op(ctx, op);
        }
    }
}

/// A context a token can carry (counters, actors, holes), or the request error that says why it
/// is not. Applied to the request's context (an early refusal, before any merge work) and to the
/// object the write would store: a context whose merge or mint passes a limit would otherwise be
/// stored, and no client could write that key back with a context again.
pub(super) fn check_context(
    context: &crate::dvv::NodeClock,
    hint: &str,
) -> std::result::Result<(), RequestError> {
    use crate::codec::token::{
        check_context_limits, highest_counter, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_RANGES,
        MAX_TOKEN_COUNTER,
    };
    if highest_counter(context) > MAX_TOKEN_COUNTER {
        return Err(RequestError::InvalidOptions(format!(
            "bad context: a counter would pass {MAX_TOKEN_COUNTER}; it did not come from this cluster"
        )));
    }
    check_context_limits(context).map_err(|(actors, ranges)| RequestError::ContextTooLarge {
        actors: actors as u64,
        ranges: ranges as u64,
        max_actors: MAX_CONTEXT_ENTRIES as u64,
        max_ranges: MAX_CONTEXT_RANGES as u64,
        hint: hint.to_string(),
    })
}

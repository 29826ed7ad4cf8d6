//! The coordinator role: get, put and delete against a key's preference list with N/R/W quorums.
//!
//! A put is coordinated by a replica of the key (it mints the new dot with its own actor); a node
//! that is not a replica forwards the write to the first one (forward.rs). A get can be coordinated anywhere.

use std::collections::BTreeMap;

use dynakv_ring::{NodeId, PartitionId};

use super::ctx::Ctx;
use super::liveness::{suspect, Liveness, PeerView};
use super::ops::PendingOp;
use super::replica::ReplicaRole;
use super::timers::Timer;
use super::types::{ClientReply, OpId, RequestError, RequestOptions};
use crate::store::Store;

/// Longest request timeout a client may ask for.
pub const MAX_TIMEOUT_MS: u32 = 600_000;

/// How long a get that has replied still waits for the other replicas (for read repair).
pub(super) const READ_REPAIR_WINDOW_US: u64 = 1_000_000;

/// How long after it started an operation may still send a copy of the key read at its start
/// (a read repair), in microseconds: the node's default request timeout plus the read-repair
/// window. Not a safety bound (a late copy of a deleted version is dropped by the partition
/// clocks however late it comes): an old snapshot is simply not worth sending, anti-entropy
/// repairs from current data instead.
pub(super) fn snapshot_horizon(cfg: &crate::config::CoreConfig) -> u64 {
    u64::from(cfg.request_timeout_ms) * 1000 + READ_REPAIR_WINDOW_US
}

/// The coordinator's state: the operations this node coordinates and what bounds them.
///
/// Inputs (routed by `NodeCore`, each with the shared [`Ctx`] and, where it needs failure
/// detection or the local replica, a [`CoordEnv`]): client requests (`start_get` in read.rs,
/// `start_write` in write.rs), `ReplicaMsg::WriteAck`/`ReadReply` (`on_write_ack`,
/// `on_read_reply`), the `CoordMsg`s of forwarded writes (forward.rs: a `Forward` is claimed
/// from its forwarder, then started like a client request), and the operation timers of the
/// timer table (`on_deadline`). Outputs: replies through `Ctx::respond`, messages through
/// `Ctx::send`, timers in `Ctx::timers`, silent targets through `CoordEnv::mark_down`.
#[derive(Debug)]
pub(super) struct Coordinator {
    /// Operations waiting for replies or their deadline.
    pub(super) ops: BTreeMap<OpId, PendingOp>,
    /// Forwarded writes waiting for their forwarder's [`CoordMsg::Grant`] (forward.rs).
    pub(super) awaiting: super::forward::Awaiting,
    /// Read-repair budget: (start of the current one-second window, repairs sent in it).
    pub(super) repair_window: (u64, u32),
}

impl Coordinator {
    /// A coordinator with no operation.
    pub(super) fn new(now: u64) -> Self {
        Self {
            ops: BTreeMap::new(),
            awaiting: super::forward::Awaiting::default(),
            repair_window: (now, 0),
        }
    }

    /// Take one unit of the read-repair budget (`per_sec` per one-second window starting at
    /// the first repair after the previous window); false when it is spent.
    pub(super) fn take_repair_budget(&mut self, now: u64, per_sec: u32) -> bool {
        if now >= self.repair_window.0 + 1_000_000 {
            self.repair_window = (now, 0);
        }
        if self.repair_window.1 >= per_sec {
            return false;
        }
        self.repair_window.1 += 1;
        true
    }
}

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

pub(super) fn is_primary(targets: &[Target], node: NodeId) -> bool {
    targets
        .iter()
        .any(|t| t.node == node && t.hint_for.is_none())
}

pub(super) fn error(e: RequestError) -> ClientReply {
    ClientReply::Error(e)
}

/// The rest of the node as the coordinator sees it: failure detection (it reads it, and
/// reports targets that stayed silent) and the replica role, for the copy of a write or a read
/// that this node keeps or answers itself. Built by `NodeCore::split_for_coordinator`.
#[derive(Debug)]
pub(super) struct CoordEnv<'a> {
    pub(super) me: NodeId,
    pub(super) now: u64,
    pub(super) liveness: &'a mut Liveness,
    pub(super) replica: ReplicaRole<'a>,
}

impl CoordEnv<'_> {
    /// Does this node currently believe `peer` is down (its own opinion or gossip's)?
    pub(super) fn is_down(&self, peer: NodeId) -> bool {
        PeerView::new(self.me, self.now, self.liveness, self.replica.membership).is_down(peer)
    }

    /// `peer` stayed silent: believe it down from now on (until it is heard from).
    pub(super) fn mark_down(&mut self, peer: NodeId) {
        suspect(self.liveness, self.me, self.now, peer);
    }
}

impl Coordinator {
    /// Take one unit of the read-repair budget (a bounded number per second).
    pub(super) fn repair_budget<S: Store>(&mut self, ctx: &mut Ctx<S>) -> bool {
        let ok = self.take_repair_budget(ctx.now, ctx.cfg.read_repair_per_sec);
        if !ok {
            ctx.stats.read_repairs_skipped += 1;
        }
        ok
    }

    /// Register an operation with its deadline.
    pub(super) fn add_op<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        op: OpId,
        deadline: u64,
        pending: PendingOp,
    ) {
        ctx.timers.set(deadline, Timer::Op(op));
        self.ops.insert(op, pending);
    }

    /// Forget an operation and its deadline.
    pub(super) fn remove_op<S: Store>(&mut self, ctx: &mut Ctx<S>, op: OpId) -> Option<PendingOp> {
        let pending = self.ops.remove(&op)?;
        for t in pending.timers() {
            ctx.timers.cancel(t, Timer::Op(op));
        }
        Some(pending)
    }

    /// Resolve and validate N/R/W and the timeout of a request against the cluster defaults.
    pub(super) fn quorum<S: Store>(
        ctx: &Ctx<S>,
        opts: &RequestOptions,
        read: bool,
    ) -> Result<Quorum, RequestError> {
        let n = opts.n.unwrap_or(ctx.cfg.n);
        if n == 0 || n > ctx.cfg.n {
            // More replicas than the cluster's N would put copies where anti-entropy and the
            // reaper never look.
            return Err(RequestError::InvalidOptions(format!(
                "n must be between 1 and the cluster's n={}, got {n}",
                ctx.cfg.n
            )));
        }
        let (name, needed, pname, primaries) = if read {
            (
                "r",
                opts.r.unwrap_or(ctx.cfg.r.min(n)),
                "pr",
                opts.pr.unwrap_or(0),
            )
        } else {
            (
                "w",
                opts.w.unwrap_or(ctx.cfg.w.min(n)),
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
        let timeout_ms = opts.timeout_ms.unwrap_or(ctx.cfg.request_timeout_ms);
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
    pub(super) fn select_targets<S: Store>(
        ctx: &Ctx<S>,
        env: &CoordEnv<'_>,
        p: PartitionId,
        n: u8,
    ) -> Vec<Target> {
        let walk = ctx.map.walk(p);
        let n = usize::from(n).min(walk.len());
        let mut fallbacks = walk[n..].iter().copied().filter(|f| !env.is_down(*f));
        let mut targets = Vec::with_capacity(n);
        for primary in &walk[..n] {
            if !env.is_down(*primary) {
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
    pub(super) fn next_fallback<S: Store>(
        ctx: &Ctx<S>,
        env: &CoordEnv<'_>,
        p: PartitionId,
        n: u8,
        targets: &[Target],
    ) -> Option<NodeId> {
        let walk = ctx.map.walk(p);
        let n = usize::from(n).min(walk.len());
        walk[n..]
            .iter()
            .copied()
            .find(|f| !env.is_down(*f) && !targets.iter().any(|t| t.node == *f))
    }

    pub(super) fn check_key<S: Store>(ctx: &Ctx<S>, key: &[u8]) -> Result<(), RequestError> {
        if key.is_empty() {
            return Err(RequestError::BadKey("the key is empty".into()));
        }
        if key.len() > ctx.cfg.max_key_bytes {
            return Err(RequestError::BadKey(format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                ctx.cfg.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Refuse at once when the targets cannot possibly make the quorum.
    pub(super) fn check_reachable(
        op: &str,
        targets: &[Target],
        q: Quorum,
    ) -> Result<(), RequestError> {
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

    /// A timer of an operation fired: the fallback timer of a write, or a deadline.
    pub(super) fn on_deadline<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        env: &mut CoordEnv<'_>,
        op: OpId,
    ) {
        if let Some(PendingOp::Write(w)) = self.ops.get_mut(&op) {
            if let Some(at) = w.fallback_at {
                if ctx.now >= at && ctx.now < w.deadline {
                    w.fallback_at = None;
                    self.fallback_writes(ctx, env, op);
                    self.check_write_done(ctx, op);
                    return;
                }
            }
        }
        let Some(pending) = self.ops.get(&op) else {
            return;
        };
        if ctx.now < pending.timers().into_iter().max().unwrap_or(0) {
            return; // an earlier timer of an op whose deadline has not come
        }
        let Some(pending) = self.remove_op(ctx, op) else {
            return;
        };
        match pending {
            PendingOp::Write(w) => {
                for t in &w.targets {
                    if !w.acked.contains(&t.node) && !w.failed.contains_key(&t.node) {
                        env.mark_down(t.node);
                    }
                }
                if !w.replied {
                    let primary_acks = w.primary_acks();
                    let e = if w.copies() >= usize::from(w.quorum.needed) {
                        RequestError::PrimariesUnavailable {
                            op: w.kind.into(),
                            needed: w.quorum.primaries,
                            available: primary_acks as u8,
                        }
                    } else {
                        RequestError::Timeout {
                            op: w.kind.into(),
                            timeout_ms: w.quorum.timeout_ms,
                            answered: w.copies() as u8,
                            needed: w.quorum.needed,
                            asked: w.targets.len() as u8,
                        }
                    };
                    ctx.respond(w.origin, error(e));
                }
            }
            PendingOp::Read(r) => {
                for t in &r.targets {
                    if !r.replies.contains_key(&t.node) && !r.failed.contains_key(&t.node) {
                        env.mark_down(t.node);
                    }
                }
                let replied = r.replied;
                let (origin, answered, quorum, asked) =
                    (r.origin, r.replies.len(), r.quorum, r.targets.len());
                // Put it back so finish_read can repair what did answer.
                self.ops.insert(op, PendingOp::Read(r));
                self.finish_read(ctx, env, op);
                if !replied {
                    ctx.respond(
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
            PendingOp::Forward(f) => ctx.respond(
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

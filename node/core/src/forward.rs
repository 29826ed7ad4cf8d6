//! Forwarded writes, coordinated at most once.
//!
//! A node that is not a replica of a key forwards a client write to one that is. Messages may
//! arrive more than once (a duplicate, a resend after a reconnect), and a copy may arrive after
//! the receiver restarted and forgot the first one. Coordinating a second copy would mint a
//! second dot for the same client write: if the client has since overwritten or deleted the
//! value, it would come back as a sibling (simulator seed 2644).
//!
//! So the receiver does not decide alone. For every copy of a `Forward` it asks the forwarder
//! (`Claim`), and the forwarder grants the first claim of an operation it still waits for and
//! refuses every other. The forwarder's pending operation is the one place that knows whether
//! the write was coordinated, and it lives no longer than the client waits: a restart of either
//! side, a copy however late, and any number of copies leave at most one coordination, with no
//! state on disk and no bound on message delay. The cost is one round trip, on forwarded writes
//! only (clients route to a replica of the key; forwards happen on stale maps and fallbacks).
//!
//! Each claim carries a nonce (a fresh operation id of the receiver), echoed by the grant, so a
//! grant that arrives again, or one for a copy from before a restart, matches no waiting copy.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::NodeId;

use super::coordinator::{error, Coordinator, Quorum, MAX_TIMEOUT_MS};
use super::ctx::Ctx;
use super::node::Origin;
use super::ops::{ForwardOp, PendingOp};
use super::timers::Timer;
use super::types::{
    ClientReply, ClientRequest, CoordMsg, OpId, RequestError, RequestOptions, Value,
};
use crate::store::Store;

/// Extra time a forwarding node waits beyond the request timeout, so the replica it forwarded to
/// answers (with its own timeout error if need be) before the forwarder gives up.
const FORWARD_GRACE_MS: u64 = 250;

/// A forwarded request waiting for its forwarder's grant.
#[derive(Debug)]
struct Waiting {
    /// Names this copy in the `Claim`; only a `Grant` that echoes it starts the request.
    nonce: u64,
    /// The request, or `None` when it arrived while this node was overloaded: then a grant
    /// (which proves this copy is the one) is answered with `Overloaded`, and a refusal with
    /// nothing, so a duplicate never tells the client a write failed that may succeed.
    request: Option<ClientRequest>,
    /// After this the forwarder has given up: the copy is dropped unanswered.
    expires: u64,
}

/// Forwarded requests that arrived and wait for a grant, by (forwarder, its operation id).
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    waiting: BTreeMap<(NodeId, OpId), Waiting>,
    /// The same copies by expiry, to drop those whose forwarder has given up (a claim or a
    /// grant lost on the way): timeouts differ per request, so arrival order is not enough.
    by_expiry: BTreeSet<(u64, NodeId, OpId)>,
}

impl Awaiting {
    /// How many requests wait with their body (they count against `max_pending_ops` with the
    /// operations).
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Drop the copies whose forwarder has given up by `now` (on every forward, grant and
    /// maintenance tick).
    pub(super) fn expire(&mut self, now: u64) {
        while let Some(&(expires, from, op)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.waiting.remove(&(from, op));
        }
    }

    fn insert(&mut self, from: NodeId, op: OpId, w: Waiting) {
        self.by_expiry.insert((w.expires, from, op));
        self.waiting.insert((from, op), w);
    }

    /// Take the copy `nonce` names, if it still waits.
    fn take(&mut self, from: NodeId, op: OpId, nonce: u64) -> Option<Waiting> {
        if self.waiting.get(&(from, op))?.nonce != nonce {
            return None; // a grant seen before, or for a copy this node no longer holds
        }
        let w = self.waiting.remove(&(from, op))?;
        self.by_expiry.remove(&(w.expires, from, op));
        Some(w)
    }
}

/// How long the forwarder of `request` waits for it, in microseconds.
fn forward_wait_us(request: Option<&ClientRequest>, default_ms: u32) -> u64 {
    let opts = match request {
        Some(
            ClientRequest::Get { opts, .. }
            | ClientRequest::Put { opts, .. }
            | ClientRequest::Delete { opts, .. }
            | ClientRequest::Restore { opts, .. },
        ) => Some(opts),
        _ => None,
    };
    let ms = opts
        .and_then(|o| o.timeout_ms)
        .unwrap_or(default_ms)
        .min(MAX_TIMEOUT_MS);
    (u64::from(ms) + FORWARD_GRACE_MS) * 1000
}

impl Coordinator {
    /// Hand a client write to replica `to`, which mints its dot (this node is not a replica, or
    /// prefers a primary to coordinate).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        origin: Origin,
        kind: &'static str,
        quorum: Quorum,
        to: NodeId,
        key: Bytes,
        body: super::write::WriteBody,
        opts: RequestOptions,
    ) {
        if let Origin::Peer { .. } = origin {
            // Already forwarded once: the maps of the two nodes disagree. Refuse rather than loop.
            return ctx.respond(
                origin,
                error(RequestError::Internal(
                    "forwarded write reached a node that is not a replica (partition maps differ)"
                        .into(),
                )),
            );
        }
        use super::write::WriteBody;
        let request = match body {
            WriteBody::Mint {
                value: Value::Data(value),
                context,
            } => ClientRequest::Put {
                key,
                value,
                context,
                opts,
            },
            WriteBody::Mint {
                value: Value::Tombstone,
                context,
            } => ClientRequest::Delete { key, context, opts },
            WriteBody::Merge(object) => ClientRequest::Restore { key, object, opts },
        };
        let op = ctx.next_op_id();
        let deadline = ctx.deadline(quorum.timeout_ms) + FORWARD_GRACE_MS * 1000;
        self.add_op(
            ctx,
            op,
            deadline,
            PendingOp::Forward(ForwardOp {
                origin,
                kind,
                quorum,
                deadline,
                to,
                claimed: None,
            }),
        );
        ctx.send(to, CoordMsg::Forward { op, request });
    }

    /// A copy of a forwarded request arrived from `from`: keep it and ask `from` for the right to
    /// coordinate it. A second copy while the first waits is dropped (the claim is on its way).
    /// When this node is overloaded only the claim is kept, so that the answer `Overloaded`
    /// goes out for the granted copy alone.
    pub(super) fn on_forward<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        op: OpId,
        request: ClientRequest,
    ) {
        self.awaiting.expire(ctx.now);
        if self.awaiting.waiting.contains_key(&(from, op)) {
            return;
        }
        let busy = self.ops.len() + self.awaiting.len();
        let request = if busy >= ctx.cfg.max_pending_ops {
            if busy >= 2 * ctx.cfg.max_pending_ops {
                return; // not even the claim: the forwarder times out (an unknown outcome)
            }
            None
        } else {
            Some(request)
        };
        let nonce = ctx.next_op_id();
        let expires = ctx.now + forward_wait_us(request.as_ref(), ctx.cfg.request_timeout_ms);
        self.awaiting.insert(
            from,
            op,
            Waiting {
                nonce,
                request,
                expires,
            },
        );
        ctx.send(from, CoordMsg::Claim { op, nonce });
    }

    /// `from` asks to coordinate our forwarded operation `op`: yes for the first claim, from
    /// the node it was forwarded to, while the operation waits, and again for a copy of that
    /// same claim (same nonce: a duplicate, which may overtake the first answer); no otherwise.
    /// A grant restarts the wait: the replica starts its own timeout only now.
    pub(super) fn on_claim<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        op: OpId,
        nonce: u64,
    ) {
        let mut rearm = None;
        let granted = match self.ops.get_mut(&op) {
            Some(PendingOp::Forward(f)) if f.to == from => match f.claimed {
                None => {
                    f.claimed = Some(nonce);
                    let deadline = ctx.deadline(f.quorum.timeout_ms) + FORWARD_GRACE_MS * 1000;
                    if deadline > f.deadline {
                        rearm = Some((f.deadline, deadline));
                        f.deadline = deadline;
                    }
                    true
                }
                Some(granted) => granted == nonce,
            },
            _ => false,
        };
        if let Some((old, new)) = rearm {
            ctx.timers.cancel(old, Timer::Op(op));
            ctx.timers.set(new, Timer::Op(op));
        }
        #[cfg(feature = "planted-bugs")]
        let granted = granted || ctx.cfg.has_bug(super::config::PlantedBug::GrantEveryClaim);
        ctx.send(from, CoordMsg::Grant { op, nonce, granted });
    }

    /// The forwarder answered our claim: the copy `nonce` names, if it still waits, is
    /// started when granted (or answered `Overloaded`, if it arrived while this node was) and
    /// dropped when not. Returns the request to start.
    pub(super) fn on_grant<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        op: OpId,
        nonce: u64,
        granted: bool,
    ) -> Option<ClientRequest> {
        self.awaiting.expire(ctx.now);
        let w = self.awaiting.take(from, op, nonce)?;
        if !granted {
            return None;
        }
        if w.request.is_none() {
            let e = RequestError::Overloaded {
                pending: (self.ops.len() + self.awaiting.len()) as u64,
            };
            ctx.respond(Origin::Peer { node: from, op }, error(e));
        }
        w.request
    }

    /// The replica we forwarded `op` to answered: pass the answer to the client.
    pub(super) fn on_forward_reply<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        op: OpId,
        reply: ClientReply,
    ) {
        if let Some(PendingOp::Forward(f)) = self.ops.get(&op) {
            let origin = f.origin;
            self.remove_op(ctx, op);
            ctx.respond(origin, reply);
        }
    }
}

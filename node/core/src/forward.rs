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

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use dynakv_ring::NodeId;

use super::coordinator::{error, Coordinator, Quorum, MAX_TIMEOUT_MS};
use super::ctx::Ctx;
use super::node::Origin;
use super::ops::{ForwardOp, PendingOp};
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
    request: ClientRequest,
    /// After this the forwarder has given up: the copy is dropped unanswered.
    expires: u64,
}

/// Forwarded requests that arrived and wait for a grant, by (forwarder, its operation id).
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    waiting: BTreeMap<(NodeId, OpId), Waiting>,
    /// Arrival order, to drop expired copies oldest first.
    order: VecDeque<(u64, (NodeId, OpId))>,
}

impl Awaiting {
    /// How many requests wait (they count against `max_pending_ops` with the operations).
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Drop the copies whose forwarder has given up by `now`.
    fn expire(&mut self, now: u64) {
        while let Some(&(expires, key)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            if self.waiting.get(&key).is_some_and(|w| w.expires == expires) {
                self.waiting.remove(&key);
            }
        }
    }
}

/// How long the forwarder of `request` waits for it, in microseconds.
fn forward_wait_us(request: &ClientRequest, default_ms: u32) -> u64 {
    let opts = match request {
        ClientRequest::Get { opts, .. }
        | ClientRequest::Put { opts, .. }
        | ClientRequest::Delete { opts, .. }
        | ClientRequest::Restore { opts, .. } => Some(opts),
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
                claimed: false,
            }),
        );
        ctx.send(to, CoordMsg::Forward { op, request });
    }

    /// A copy of a forwarded request arrived from `from`: keep it and ask `from` for the right to
    /// coordinate it. A second copy while the first waits is dropped (the claim is on its way).
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
        if self.ops.len() + self.awaiting.len() >= ctx.cfg.max_pending_ops {
            let e = RequestError::Overloaded {
                pending: (self.ops.len() + self.awaiting.len()) as u64,
            };
            return ctx.respond(Origin::Peer { node: from, op }, error(e));
        }
        let nonce = ctx.next_op_id();
        let expires = ctx.now + forward_wait_us(&request, ctx.cfg.request_timeout_ms);
        self.awaiting.waiting.insert(
            (from, op),
            Waiting {
                nonce,
                request,
                expires,
            },
        );
        self.awaiting.order.push_back((expires, (from, op)));
        ctx.send(from, CoordMsg::Claim { op, nonce });
    }

    /// `from` asks to coordinate our forwarded operation `op`: yes for the first claim, from
    /// the node it was forwarded to, while the operation waits; no otherwise.
    pub(super) fn on_claim<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        op: OpId,
        nonce: u64,
    ) {
        let granted = match self.ops.get_mut(&op) {
            Some(PendingOp::Forward(f)) if f.to == from && !f.claimed => {
                f.claimed = true;
                true
            }
            _ => false,
        };
        #[cfg(feature = "planted-bugs")]
        let granted = granted || ctx.cfg.has_bug(super::config::PlantedBug::GrantEveryClaim);
        ctx.send(from, CoordMsg::Grant { op, nonce, granted });
    }

    /// The forwarder answered our claim: the request it names, if this copy still waits, is
    /// coordinated when granted and dropped when not. Returns the request to start.
    pub(super) fn on_grant(
        &mut self,
        now: u64,
        from: NodeId,
        op: OpId,
        nonce: u64,
        granted: bool,
    ) -> Option<ClientRequest> {
        self.awaiting.expire(now);
        match self.awaiting.waiting.get(&(from, op)) {
            Some(w) if w.nonce == nonce => {}
            _ => return None, // a grant seen before, or for a copy this node no longer holds
        }
        let w = self.awaiting.waiting.remove(&(from, op))?;
        granted.then_some(w.request)
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

//! The replica role: answering coordinators' reads and writes, as a replica, as a fallback
//! (hints) or, when the coordinator's map is stale, by hinting the write on to the current
//! replicas. The data path it stores through (load, merge, save, limits) is on [`Ctx`].
//!
//! Inputs: [`ReplicaMsg::Write`] and [`ReplicaMsg::Read`] from coordinators (routed by
//! `NodeCore::on_replica_msg`), and the local coordinator's own copy of a write or a read
//! ([`ReplicaRole::write`], [`ReplicaRole::local_object`], [`ReplicaRole::local_knowledge`]).

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::coordinator::CoordEnv;
use super::ctx::Ctx;
use super::hints::{hint_owners, load_hint, HintedHandoff};
use super::membership::Membership;
use super::node::NodeCore;
use super::transfer::Transfers;
use super::types::{Object, ReplicaError, ReplicaMsg, Stored};
use crate::error::Result;
use crate::store::Store;

/// The replica role, with what it needs of the other mechanisms to decide where a copy goes:
/// membership (joined, removed, known owners), the hint store, and the transfers in progress
/// (a partition still being handed off is still answered for).
#[derive(Debug)]
pub(super) struct ReplicaRole<'a> {
    pub(super) membership: &'a Membership,
    pub(super) handoff: &'a mut HintedHandoff,
    pub(super) transfers: &'a Transfers,
}

impl ReplicaRole<'_> {
    /// A read asked of this node as a primary: answer only if it replicates the partition under
    /// its own map, or still holds it (an outgoing transfer of it is not finished). A former
    /// owner that handed the partition off would otherwise answer "nothing here" and a stale
    /// coordinator would count that toward R and PR.
    fn check_read_owner<S: Store>(
        &self,
        ctx: &Ctx<S>,
        p: PartitionId,
        fallback_for: Option<NodeId>,
    ) -> std::result::Result<(), ReplicaError> {
        if fallback_for.is_some_and(|o| o != ctx.id())
            || ctx.replicates(p)
            || self.transfers.pending_for(p)
        {
            return Ok(());
        }
        Err(ReplicaError::Retry(format!(
            "node {} no longer replicates partition {p}",
            ctx.id()
        )))
    }

    /// A coordinator's write: keep it as a hint when asked as a fallback; as a replica when
    /// this node replicates the partition under its own map; and otherwise (the coordinator's
    /// map is stale: this node handed the partition off) as hints for the partition's current
    /// replicas, acknowledged as a fallback, so no orphan copy is left where no read, transfer
    /// or reap will look and the coordinator does not count a primary that is not one.
    pub(super) fn write<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        p: PartitionId,
        key: &[u8],
        object: &Object,
        hint: Option<NodeId>,
    ) -> std::result::Result<Stored, ReplicaError> {
        // A removed node stops soon (after its linger): anything it took in now, as a replica
        // or as hints, could leave with it. The coordinator tries another node instead.
        if self.membership.is_removed(ctx.id()) {
            return Err(ReplicaError::Retry("removed from the cluster".into()));
        }
        if let Some(owner) = hint.filter(|o| *o != ctx.id()) {
            return self
                .handoff
                .merge_into_hint(ctx, self.membership, owner, p, key, object)
                .map(|_| Stored::Hint);
        }
        if !self.membership.joined {
            return Err(ReplicaError::Retry("not joined yet".into()));
        }
        let replicas = ctx.replicas(p);
        if replicas.contains(&ctx.id()) || ctx.cfg.has_bug(super::config::PlantedBug::NonOwnerAck) {
            return ctx
                .merge_into_store(p, key, object)
                .map(|_| Stored::Replica);
        }
        ctx.check_peer_key(p, key)?;
        ctx.stats.non_owner_writes += 1;
        self.handoff
            .rehint(ctx, self.membership, p, key, object, &replicas)
            .map(|_| Stored::Hint)
    }

    /// A coordinator's read: what this node holds for the key, if it may answer for it
    /// (`None` when it holds nothing at all).
    pub(super) fn read<S: Store>(
        &self,
        ctx: &Ctx<S>,
        p: PartitionId,
        key: &[u8],
        fallback_for: Option<NodeId>,
    ) -> std::result::Result<Option<Object>, ReplicaError> {
        ctx.check_peer_key(p, key)?;
        self.check_read_owner(ctx, p, fallback_for)?;
        Self::answer(ctx, p, key, fallback_for)
    }

    /// What this node answers a read with: [`ReplicaRole::local_object`], or for a key it holds
    /// nothing of as a replica, the empty object filled with its partition clock's base
    /// (`clocks.rs`: a replica that removed a deleted key still tells the reader that the
    /// versions it saw superseded are gone); `None` when it knows nothing.
    pub(super) fn answer<S: Store>(
        ctx: &Ctx<S>,
        p: PartitionId,
        key: &[u8],
        fallback_for: Option<NodeId>,
    ) -> std::result::Result<Option<Object>, ReplicaError> {
        let o = Self::local_object(ctx, p, key, fallback_for)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        if !o.is_empty() {
            return Ok(Some(o));
        }
        if fallback_for.is_some_and(|owner| owner != ctx.id()) {
            return Ok(None);
        }
        Ok(ctx.filled_absent(p, key))
    }

    /// What this node holds for a key: its replica copy, plus (when standing in for `owner`)
    /// the hint it keeps for that owner.
    pub(super) fn local_object<S: Store>(
        ctx: &Ctx<S>,
        p: PartitionId,
        key: &[u8],
        fallback_for: Option<NodeId>,
    ) -> Result<Object> {
        let mut o = ctx.load(p, key)?.unwrap_or_default();
        if let Some(owner) = fallback_for.filter(|o| *o != ctx.id()) {
            if let Some(h) = load_hint(&ctx.store, owner, p, key)? {
                o = ctx.merge(&o, &h);
            }
        }
        Ok(o)
    }

    /// Everything this node holds for a key: its replica copy (or, for a key it holds no
    /// record of, the fill of its partition clock) and every hint, for any owner. A coordinator
    /// mints from this, so a new dot is above every dot of its actor it holds, and the new
    /// object supersedes what this replica saw deleted: without the fill, a write of a key
    /// whose tombstone was removed here would make this replica answer with a record that no
    /// longer covers the old value a replica that missed the delete still holds.
    pub(super) fn local_knowledge<S: Store>(
        &self,
        ctx: &Ctx<S>,
        p: PartitionId,
        key: &[u8],
    ) -> Result<Object> {
        let mut o = match ctx.load(p, key)? {
            Some(o) => o,
            None => ctx.filled_absent(p, key).unwrap_or_default(),
        };
        for owner in hint_owners(ctx, self.membership, self.handoff) {
            if let Some(h) = load_hint(&ctx.store, owner, p, key)? {
                o = ctx.merge(&o, &h);
            }
        }
        Ok(o)
    }
}

impl<S: Store> NodeCore<S> {
    /// Route a replica message: writes and reads to the replica role, acks and read replies to
    /// the coordinator that is waiting for them.
    pub(super) fn on_replica_msg(&mut self, from: NodeId, msg: ReplicaMsg) {
        let (ctx, coord, mut env) = self.split_for_coordinator();
        match msg {
            ReplicaMsg::Write {
                op,
                partition,
                key,
                object,
                hint,
            } => {
                let result = env.replica.write(ctx, partition, &key, &object, hint);
                let result = match result {
                    Err(ReplicaError::Storage(_))
                        if ctx.cfg.has_bug(super::config::PlantedBug::AckRefusedWrite) =>
                    {
                        Ok(Stored::Replica)
                    }
                    other => other,
                };
                ctx.send(from, ReplicaMsg::WriteAck { op, result });
            }
            ReplicaMsg::Read {
                op,
                partition,
                key,
                fallback_for,
            } => {
                let result = env.replica.read(ctx, partition, &key, fallback_for);
                ctx.send(from, ReplicaMsg::ReadReply { op, result });
            }
            ReplicaMsg::WriteAck { op, result } => coord.on_write_ack(ctx, from, op, result),
            ReplicaMsg::ReadReply { op, result } => {
                coord.on_read_reply(ctx, &mut env, from, op, result)
            }
        }
    }

    /// The coordinator, the shared context, and the rest of the node as the coordinator sees
    /// it, borrowed apart.
    pub(super) fn split_for_coordinator(
        &mut self,
    ) -> (
        &mut Ctx<S>,
        &mut super::coordinator::Coordinator,
        CoordEnv<'_>,
    ) {
        let NodeCore {
            ctx,
            liveness,
            coord,
            handoff,
            membership,
            transfers,
            ..
        } = self;
        let env = CoordEnv {
            me: ctx.id(),
            now: ctx.now,
            liveness,
            replica: ReplicaRole {
                membership,
                handoff,
                transfers,
            },
        };
        (ctx, coord, env)
    }

    /// Read every key of a partition (for checkers, anti-entropy and transfers).
    pub fn partition_objects(&self, p: PartitionId) -> Result<Vec<(Bytes, Object)>> {
        self.ctx.partition_objects(p)
    }
}

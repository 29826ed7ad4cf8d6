//! The replica role: answering coordinators' reads and writes, as a replica, as a fallback
//! (hints) or, when the coordinator's map is stale, by hinting the write on to the current
//! replicas. The data path it stores through (load, merge, save, limits) is on [`Ctx`].
//!
//! Inputs: [`ReplicaMsg`] from coordinators (`on_replica_msg`), and the coordinator's own
//! local writes and reads (`replica_write`, `local_object`, `local_knowledge`).

use std::collections::BTreeSet;

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

#[allow(unused_imports)]
use super::ctx::Ctx;
use super::node::NodeCore;
use super::types::{Object, ReplicaError, ReplicaMsg, Stored};
use crate::error::Result;
use crate::store::Store;

impl<S: Store> NodeCore<S> {
    /// A read asked of this node as a primary: answer only if it replicates the partition under
    /// its own map, or still holds it (an outgoing transfer of it is not finished). A former
    /// owner that handed the partition off would otherwise answer "nothing here" and a stale
    /// coordinator would count that toward R and PR.
    fn check_read_owner(
        &self,
        p: PartitionId,
        fallback_for: Option<NodeId>,
    ) -> std::result::Result<(), ReplicaError> {
        if fallback_for.is_some_and(|o| o != self.ctx.id())
            || self
                .ctx
                .map
                .preference_list(p, usize::from(self.ctx.cfg.n))
                .contains(&self.ctx.id())
            || self.transfer_pending_for(p)
        {
            return Ok(());
        }
        Err(ReplicaError::Retry(format!(
            "node {} no longer replicates partition {p}",
            self.ctx.id()
        )))
    }

    /// A coordinator's write: keep it as a hint when asked as a fallback; as a replica when
    /// this node replicates the partition under its own map; and otherwise (the coordinator's
    /// map is stale: this node handed the partition off) as hints for the partition's current
    /// replicas, acknowledged as a fallback, so no orphan copy is left where no read, transfer
    /// or reap will look and the coordinator does not count a primary that is not one.
    pub(super) fn replica_write(
        &mut self,
        p: PartitionId,
        key: &[u8],
        object: &Object,
        hint: Option<NodeId>,
    ) -> std::result::Result<Stored, ReplicaError> {
        // A removed node stops soon (after its linger): anything it took in now, as a replica
        // or as hints, could leave with it. The coordinator tries another node instead.
        if self.is_removed() {
            return Err(ReplicaError::Retry("removed from the cluster".into()));
        }
        if let Some(owner) = hint.filter(|o| *o != self.ctx.id()) {
            return self
                .merge_into_hint(owner, p, key, object)
                .map(|_| Stored::Hint);
        }
        if !self.membership.joined {
            return Err(ReplicaError::Retry("not joined yet".into()));
        }
        let replicas = self.ctx.map.preference_list(p, usize::from(self.ctx.cfg.n));
        if replicas.contains(&self.ctx.id()) {
            return self
                .ctx
                .merge_into_store(p, key, object)
                .map(|_| Stored::Replica);
        }
        self.ctx.check_peer_object(p, key, object)?;
        self.ctx.stats.non_owner_writes += 1;
        self.rehint(p, key, object, &replicas).map(|_| Stored::Hint)
    }

    /// Owners this node may hold hints for: the members, and anyone it already holds hints for.
    pub(super) fn hint_owners(&self) -> BTreeSet<NodeId> {
        let mut owners = self.ctx.members.clone();
        if let Some(state) = self.cluster_state() {
            owners.extend(state.members().keys().copied());
        }
        owners.extend(self.handoff.pending.keys().copied());
        owners.remove(&self.ctx.id());
        owners
    }

    /// What this node holds for a key: its replica copy, plus (when standing in for `owner`)
    /// the hint it keeps for that owner.
    pub(super) fn local_object(
        &self,
        p: PartitionId,
        key: &[u8],
        fallback_for: Option<NodeId>,
    ) -> Result<Object> {
        let mut o = self.ctx.load(p, key)?.unwrap_or_else(Object::empty);
        if let Some(owner) = fallback_for.filter(|o| *o != self.ctx.id()) {
            if let Some(h) = self.load_hint(owner, p, key)? {
                o = self.ctx.merge(&o, &h);
            }
        }
        Ok(o)
    }

    /// Everything this node holds for a key: its replica copy and every hint, for any owner.
    /// A coordinator mints from this, so a new dot is above every dot of its actor it holds.
    pub(super) fn local_knowledge(&self, p: PartitionId, key: &[u8]) -> Result<Object> {
        let mut o = self.ctx.load(p, key)?.unwrap_or_else(Object::empty);
        for owner in self.hint_owners() {
            if let Some(h) = self.load_hint(owner, p, key)? {
                o = self.ctx.merge(&o, &h);
            }
        }
        Ok(o)
    }

    /// The replica role: merge writes into the store (or a hint), answer reads; and the
    /// coordinator's side of the same exchange (acks and read replies).
    pub(super) fn on_replica_msg(&mut self, from: NodeId, msg: ReplicaMsg) {
        match msg {
            ReplicaMsg::Write {
                op,
                partition,
                key,
                object,
                hint,
            } => {
                let result = self.replica_write(partition, &key, &object, hint);
                self.ctx.send(from, ReplicaMsg::WriteAck { op, result });
            }
            ReplicaMsg::Read {
                op,
                partition,
                key,
                fallback_for,
            } => {
                let result = self
                    .ctx
                    .check_peer_key(partition, &key)
                    .and_then(|_| self.check_read_owner(partition, fallback_for))
                    .and_then(|_| {
                        self.local_object(partition, &key, fallback_for)
                            .map_err(|e| ReplicaError::Storage(e.to_string()))
                    })
                    .map(|o| (!o.join().is_empty() || o.value_count() > 0).then_some(o));
                self.ctx.send(from, ReplicaMsg::ReadReply { op, result });
            }
            ReplicaMsg::WriteAck { op, result } => self.on_write_ack(from, op, result),
            ReplicaMsg::ReadReply { op, result } => self.on_read_reply(from, op, result),
        }
    }

    /// Read every key of a partition (for checkers, anti-entropy and transfers).
    pub fn partition_objects(&self, p: PartitionId) -> Result<Vec<(Bytes, Object)>> {
        self.ctx.partition_objects(p)
    }
}

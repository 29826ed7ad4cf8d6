//! The replica role and the data path: reading, merging and writing objects, and routing
//! every change of the replicated data to the mechanisms that derive state from it
//! ([`DataChange`] -> anti-entropy trees, reaper, sibling warnings).
//!
//! Inputs: [`ReplicaMsg`] from coordinators (`on_replica_msg`); calls from the coordinator,
//! handoff, anti-entropy and transfers that store or read objects (`save`, `merge_into_store`,
//! `local_object`, `local_knowledge`).

use std::collections::BTreeSet;

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::config::{CoreConfig, PlantedBug};
use super::node::{DataChange, NodeCore};
use super::types::{Object, ReplicaError, ReplicaMsg, Stored};
use crate::codec;
use crate::error::Result;
use crate::store::{Space, Store};

/// Merge two objects with a node's config: the DVVSet sync (commutative, associative,
/// idempotent), or the planted last-write-wins bug when that is planted.
pub(super) fn merge_objects(cfg: &CoreConfig, a: &Object, b: &Object) -> Object {
    let merged = a.sync(b);
    #[cfg(feature = "planted-bugs")]
    if cfg.has_bug(PlantedBug::LastWriteWins) {
        return merged.keep_only_newest();
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = cfg;
    merged
}

impl<S: Store> NodeCore<S> {
    /// Read and decode the stored object for a key.
    pub(super) fn load(&self, p: PartitionId, key: &[u8]) -> Result<Option<Object>> {
        match self.store.get(Space::Partition(p), key)? {
            Some(bytes) => Ok(Some(codec::decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Encode and write an object; durable at the next drain. The write is announced to the
    /// mechanisms that keep state derived from the data through [`DataChange`].
    pub(super) fn save(&mut self, p: PartitionId, key: &[u8], object: &Object) -> Result<()> {
        let bytes = codec::encode_object(object)?;
        self.store.put(Space::Partition(p), key, &bytes)?;
        self.dirty = true;
        self.on_data_change(DataChange::Written {
            partition: p,
            key,
            record: &bytes,
            object,
        });
        Ok(())
    }

    /// Remove a key from a partition's store; durable at the next drain. Announced like
    /// [`NodeCore::save`].
    pub(super) fn remove_key(&mut self, p: PartitionId, key: &[u8]) -> Result<()> {
        self.store.remove(Space::Partition(p), key)?;
        self.dirty = true;
        self.on_data_change(DataChange::Removed { partition: p, key });
        Ok(())
    }

    /// Remove a whole partition's data (handed off); announced like [`NodeCore::save`].
    pub(super) fn drop_partition_data(&mut self, p: PartitionId) -> Result<()> {
        self.store.drop_partition(p)?;
        self.dirty = true;
        self.on_data_change(DataChange::PartitionDropped { partition: p });
        Ok(())
    }

    /// The one place where a change to the replicated data reaches the mechanisms that derive
    /// state from it: the anti-entropy trees (hashes) and the reaper (tombstone-only keys),
    /// plus the sibling warning. Every write to a partition space goes through here.
    fn on_data_change(&mut self, change: DataChange<'_>) {
        match change {
            DataChange::Written {
                partition,
                key,
                record,
                object,
            } => {
                self.tree_note(partition, key, Some(record));
                self.note_tombstone(partition, key, object);
                self.warn_siblings(object);
            }
            DataChange::Removed { partition, key } => {
                self.tree_note(partition, key, None);
                self.reaper
                    .tombstones
                    .remove(&(partition, Bytes::copy_from_slice(key)));
            }
            DataChange::PartitionDropped { partition } => {
                self.aae.trees.remove(&partition);
                self.reaper.tombstones.retain(|(p, _), _| *p != partition);
            }
        }
    }

    fn warn_siblings(&mut self, object: &Object) {
        let count = object.value_count();
        if count > self.cfg.sibling_warn as usize {
            self.stats.sibling_warnings += 1;
            tracing::warn!(
                siblings = count,
                warn_at = self.cfg.sibling_warn,
                "key has many siblings: clients should read and write back a merged value"
            );
        }
    }

    /// Merge two objects: the DVVSet sync, or the planted last-write-wins bug
    /// ([`merge_objects`] with this node's config).
    pub(super) fn merge(&self, a: &Object, b: &Object) -> Object {
        merge_objects(&self.cfg, a, b)
    }

    /// Merge `incoming` into what this node stores for `key` (the replica role).
    pub(super) fn merge_into_store(
        &mut self,
        p: PartitionId,
        key: &[u8],
        incoming: &Object,
    ) -> std::result::Result<Object, ReplicaError> {
        self.check_peer_object(p, key, incoming)?;
        // The one guard for every path into a partition store: a copy of a partition this node
        // does not replicate would be read, transferred and repaired by nobody (an orphan).
        // Callers that may meet this (stale maps) hint the object on instead.
        if !self
            .map
            .preference_list(p, usize::from(self.cfg.n))
            .contains(&self.id())
        {
            return Err(ReplicaError::Retry(format!(
                "node {} does not replicate partition {p}",
                self.id()
            )));
        }
        let local = self
            .load(p, key)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let merged = match local {
            Some(local) if !self.cfg.has_bug(PlantedBug::OverwriteOnReplica) => {
                self.merge(&local, incoming)
            }
            _ => incoming.clone(),
        };
        self.check_limits(&merged)?;
        self.save(p, key, &merged)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.stats.replica_writes += 1;
        Ok(merged)
    }

    /// The limits a coordinator applies to a new object, applied to what a merge would store:
    /// replicas may hold siblings the coordinator never saw, and an object past the peer frame
    /// limit could no longer be read remotely, handed off or transferred. Refused with a clear
    /// reason; the sender keeps its copy, and a client write that resolves the siblings (its
    /// context covers them) shrinks the merge below the limits again.
    pub(super) fn check_limits(&self, merged: &Object) -> std::result::Result<(), ReplicaError> {
        let count = merged.value_count();
        if count > self.cfg.sibling_max as usize {
            return Err(ReplicaError::Rejected(format!(
                "merged object would hold {count} siblings, past the limit of {}; read the key and write back a resolved value",
                self.cfg.sibling_max
            )));
        }
        let len = codec::encode_object(merged)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        let max = self.cfg.max_message_bytes / 2;
        if len > max {
            return Err(ReplicaError::Rejected(format!(
                "merged object would take {len} bytes, past the limit of {max}; read the key and write back a resolved value"
            )));
        }
        Ok(())
    }

    /// Keep an object this node received in a batch but cannot apply (`why`), instead of
    /// dropping it: the sender deletes its copy once the batch is acknowledged. Durable with
    /// the batch's ack. The key is `from` (4 bytes), the partition (2 bytes), then the key.
    pub(super) fn quarantine(
        &mut self,
        from: NodeId,
        p: PartitionId,
        key: &[u8],
        object: &Object,
        why: &str,
    ) -> std::result::Result<(), ReplicaError> {
        tracing::error!(%from, partition = %p, %why, "quarantining an object that cannot be applied");
        let mut k = Vec::with_capacity(6 + key.len());
        k.extend_from_slice(&from.0.to_be_bytes());
        k.extend_from_slice(&p.0.to_be_bytes());
        k.extend_from_slice(key);
        let bytes = codec::encode(object).map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.store
            .put(Space::Quarantine, &k, &bytes)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.dirty = true;
        self.stats.quarantined += 1;
        Ok(())
    }

    /// A read asked of this node as a primary: answer only if it replicates the partition under
    /// its own map, or still holds it (an outgoing transfer of it is not finished). A former
    /// owner that handed the partition off would otherwise answer "nothing here" and a stale
    /// coordinator would count that toward R and PR.
    fn check_read_owner(
        &self,
        p: PartitionId,
        fallback_for: Option<NodeId>,
    ) -> std::result::Result<(), ReplicaError> {
        if fallback_for.is_some_and(|o| o != self.id())
            || self
                .map
                .preference_list(p, usize::from(self.cfg.n))
                .contains(&self.id())
            || self.transfer_pending_for(p)
        {
            return Ok(());
        }
        Err(ReplicaError::Retry(format!(
            "node {} no longer replicates partition {p}",
            self.id()
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
        if let Some(owner) = hint.filter(|o| *o != self.id()) {
            return self
                .merge_into_hint(owner, p, key, object)
                .map(|_| Stored::Hint);
        }
        if !self.membership.joined {
            return Err(ReplicaError::Retry("not joined yet".into()));
        }
        let replicas = self.map.preference_list(p, usize::from(self.cfg.n));
        if replicas.contains(&self.id()) {
            return self
                .merge_into_store(p, key, object)
                .map(|_| Stored::Replica);
        }
        self.check_peer_object(p, key, object)?;
        self.stats.non_owner_writes += 1;
        self.rehint(p, key, object, &replicas).map(|_| Stored::Hint)
    }

    /// Refuse a key from a peer that is too long or does not belong to the partition it came
    /// with (a peer with another map or a bug would otherwise store data no read can find).
    pub(super) fn check_peer_key(
        &self,
        p: PartitionId,
        key: &[u8],
    ) -> std::result::Result<(), ReplicaError> {
        if key.is_empty() || key.len() > self.cfg.max_key_bytes {
            return Err(ReplicaError::Rejected(format!(
                "bad key length {}",
                key.len()
            )));
        }
        if self.map.partition_for_key(key) != p || p.0 >= self.map.partition_count() {
            return Err(ReplicaError::Retry(format!(
                "key does not belong to partition {p} (partition maps differ?)"
            )));
        }
        Ok(())
    }

    /// Refuse a key/object pair from a peer that is misplaced or not a replica state.
    pub(super) fn check_peer_object(
        &self,
        p: PartitionId,
        key: &[u8],
        object: &Object,
    ) -> std::result::Result<(), ReplicaError> {
        self.check_peer_key(p, key)?;
        codec::check_replica_object(object).map_err(|e| ReplicaError::Rejected(e.to_string()))
    }

    /// Owners this node may hold hints for: the members, and anyone it already holds hints for.
    pub(super) fn hint_owners(&self) -> BTreeSet<NodeId> {
        let mut owners = self.members.clone();
        if let Some(state) = self.cluster_state() {
            owners.extend(state.members().keys().copied());
        }
        owners.extend(self.handoff.pending.keys().copied());
        owners.remove(&self.id());
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
        let mut o = self.load(p, key)?.unwrap_or_else(Object::empty);
        if let Some(owner) = fallback_for.filter(|o| *o != self.id()) {
            if let Some(h) = self.load_hint(owner, p, key)? {
                o = self.merge(&o, &h);
            }
        }
        Ok(o)
    }

    /// Everything this node holds for a key: its replica copy and every hint, for any owner.
    /// A coordinator mints from this, so a new dot is above every dot of its actor it holds.
    pub(super) fn local_knowledge(&self, p: PartitionId, key: &[u8]) -> Result<Object> {
        let mut o = self.load(p, key)?.unwrap_or_else(Object::empty);
        for owner in self.hint_owners() {
            if let Some(h) = self.load_hint(owner, p, key)? {
                o = self.merge(&o, &h);
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
                self.send(from, ReplicaMsg::WriteAck { op, result });
            }
            ReplicaMsg::Read {
                op,
                partition,
                key,
                fallback_for,
            } => {
                let result = self
                    .check_peer_key(partition, &key)
                    .and_then(|_| self.check_read_owner(partition, fallback_for))
                    .and_then(|_| {
                        self.local_object(partition, &key, fallback_for)
                            .map_err(|e| ReplicaError::Storage(e.to_string()))
                    })
                    .map(|o| (!o.join().is_empty() || o.value_count() > 0).then_some(o));
                self.send(from, ReplicaMsg::ReadReply { op, result });
            }
            ReplicaMsg::WriteAck { op, result } => self.on_write_ack(from, op, result),
            ReplicaMsg::ReadReply { op, result } => self.on_read_reply(from, op, result),
        }
    }

    /// Visit every entry of a space in key order, a page at a time.
    pub(super) fn scan_each(&self, space: Space, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(space, after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in &page {
                f(k, v);
            }
        }
        Ok(())
    }

    /// Read every key of a partition (for checkers, anti-entropy and transfers).
    pub fn partition_objects(&self, p: PartitionId) -> Result<Vec<(Bytes, Object)>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(Space::Partition(p), after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                out.push((Bytes::from(k), codec::decode_object(&v)?));
            }
        }
        Ok(out)
    }
}

//! Tombstone reaping: removing a deleted key for good, without letting an old value come back.
//!
//! The rule (see docs/AVAILABILITY.md): a key whose object holds only tombstones is removed only
//! when
//! 1. it has been tombstone-only on its owner (first node of the preference list) for at least
//!    `tombstone_grace_ms`, so writes and repairs that were in flight have landed;
//! 2. EVERY member of the cluster answers a query: primaries hold exactly the same object (same
//!    hash: the tombstone and nothing newer), and no node holds a hint for the key. A member that
//!    is down or silent blocks the reap;
//! 3. each primary then removes the key only if it still holds exactly that object
//!    (compare-and-delete), and retires its actor identity so that a later write of the key can
//!    never mint a dot that an old copy somewhere could cover.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::aae::object_hash;
use super::ctx::{tombstone_only, Ctx, DataEvent};
use super::node::NodeCore;
use super::types::ReapMsg;
use crate::store::{Space, Store};

/// Reap rounds started per maintenance tick at most.
const ROUNDS_PER_TICK: usize = 8;

#[derive(Debug, Clone)]
struct Round {
    partition: PartitionId,
    key: Bytes,
    hash: u64,
    waiting: BTreeSet<NodeId>,
    deadline: u64,
}

/// State of the reaper on one node.
#[derive(Debug, Default)]
pub(super) struct Reaper {
    rounds: BTreeMap<u64, Round>,
    /// Tombstone-only keys and since when (local clock).
    pub(super) tombstones: BTreeMap<(PartitionId, Bytes), u64>,
}

impl Reaper {
    /// Track tombstone-only keys ([`DataEvent`]s routed here by `NodeCore`).
    pub(super) fn on_data_event<S: Store>(&mut self, event: &DataEvent, ctx: &Ctx<S>) {
        match event {
            DataEvent::Written {
                partition,
                key,
                tombstone_only,
                ..
            }
            | DataEvent::Scanned {
                partition,
                key,
                tombstone_only,
            } => {
                if ctx.cfg.tombstone_grace_ms == 0 {
                    return;
                }
                let k = (*partition, key.clone());
                if *tombstone_only {
                    // The grace counts from the last change: a newer tombstone (a delete that
                    // covers a write this node never saw) restarts it, since copies of that
                    // write may be in flight.
                    self.tombstones.insert(k, ctx.now);
                } else {
                    self.tombstones.remove(&k);
                }
            }
            DataEvent::Removed { partition, key } => {
                self.tombstones.remove(&(*partition, key.clone()));
            }
            DataEvent::PartitionDropped { partition } => {
                self.tombstones.retain(|(p, _), _| p != partition);
            }
        }
    }
}

impl<S: Store> NodeCore<S> {
    /// Tombstone-only keys this node tracks (for status and tests).
    pub fn tombstones_tracked(&self) -> usize {
        self.reaper.tombstones.len()
    }

    /// Called from the maintenance tick: expire rounds, start new ones.
    pub(super) fn reaper_tick(&mut self) {
        let now = self.ctx.now;
        self.reaper.rounds.retain(|_, r| r.deadline > now);
        if self.ctx.cfg.tombstone_grace_ms == 0 {
            return;
        }
        let eager = self.ctx.cfg.has_bug(super::config::PlantedBug::EagerReap);
        let grace = if eager {
            0
        } else {
            u64::from(self.ctx.cfg.tombstone_grace_ms) * 1000
        };
        let n = usize::from(self.ctx.cfg.n);
        if self.reaper.tombstones.is_empty() {
            return;
        }
        let members = self.reap_voters();
        if !eager && members.iter().any(|m| self.is_down(*m)) {
            return; // a member that cannot vote blocks every reap
        }
        let in_round: BTreeSet<(PartitionId, Bytes)> = self
            .reaper
            .rounds
            .values()
            .map(|r| (r.partition, r.key.clone()))
            .collect();
        let candidates: Vec<(PartitionId, Bytes)> = self
            .reaper
            .tombstones
            .iter()
            .filter(|((p, _), since)| {
                now >= **since + grace
                    && self.ctx.map.preference_list(*p, n).first() == Some(&self.ctx.id())
            })
            .map(|(k, _)| k.clone())
            .filter(|k| !in_round.contains(k))
            .take(ROUNDS_PER_TICK)
            .collect();
        for (p, key) in candidates {
            let hash = match self.reapable_hash(p, &key) {
                Some(h) => h,
                None => {
                    self.reaper.tombstones.remove(&(p, key));
                    continue;
                }
            };
            let waiting: BTreeSet<NodeId> = if eager {
                BTreeSet::new() // planted bug: nobody is asked
            } else {
                members
                    .iter()
                    .copied()
                    .filter(|m| *m != self.ctx.id())
                    .collect()
            };
            if self.has_hint_for(p, &key)
                || (!eager && (self.transfer_pending_for(p) || self.op_pending_for(&key)))
            {
                continue;
            }
            let round = self.ctx.next_op_id();
            for m in &waiting {
                self.ctx.send(
                    *m,
                    ReapMsg::Query {
                        round,
                        partition: p,
                        key: key.clone(),
                        hash,
                    },
                );
            }
            let deadline = now + u64::from(self.ctx.cfg.request_timeout_ms) * 1000;
            self.reaper.rounds.insert(
                round,
                Round {
                    partition: p,
                    key,
                    hash,
                    waiting,
                    deadline,
                },
            );
            if self
                .reaper
                .rounds
                .get(&round)
                .is_some_and(|r| r.waiting.is_empty())
            {
                self.finish_round(round);
            }
        }
    }

    /// The hash of the stored object if it is tombstone-only (never trust the tracking map
    /// alone: a write may have landed since).
    fn reapable_hash(&self, p: PartitionId, key: &[u8]) -> Option<u64> {
        let bytes = self.ctx.store.get(Space::Partition(p), key).ok()??;
        let object = crate::codec::decode_object(&bytes).ok()?;
        tombstone_only(&object).then(|| object_hash(&bytes))
    }

    /// Who must vote on a reap: every member that may hold a copy, leaving and joining ones
    /// included (a leaving node still sends its partitions until its transfers finish).
    fn reap_voters(&self) -> BTreeSet<NodeId> {
        let mut voters = self.ctx.members.clone();
        if let Some(state) = self.cluster_state() {
            voters.extend(
                state
                    .members()
                    .iter()
                    .filter(|(_, m)| m.status != dynakv_gossip::Status::Removed)
                    .map(|(id, _)| *id),
            );
        }
        voters
    }

    /// Does this node coordinate an operation on `key` that may still send an old copy (a
    /// read's repair, a write's fallback)? Its deadline may be long (per-request timeouts).
    fn op_pending_for(&self, key: &[u8]) -> bool {
        self.coord.ops.values().any(|op| match op {
            super::ops::PendingOp::Write(w) => w.key.as_ref() == key,
            super::ops::PendingOp::Read(r) => r.key.as_ref() == key,
            super::ops::PendingOp::Forward(_) => false,
        })
    }

    /// Is a copy of partition `p` moving to or from this node? Its old values may still land.
    pub(super) fn transfer_pending_for(&self, p: PartitionId) -> bool {
        self.transfers
            .receiving
            .values()
            .any(|r| r.partition == p && !r.done)
            || self
                .transfers
                .sending
                .values()
                .any(|s| s.rec.partition == p && !s.rec.done)
    }

    fn has_hint_for(&self, p: PartitionId, key: &[u8]) -> bool {
        self.hint_owners()
            .into_iter()
            .any(|owner| matches!(self.load_hint(owner, p, key), Ok(Some(_)) | Err(_)))
    }

    /// Route a reaping message to its phase.
    pub(super) fn on_reap_msg(&mut self, from: NodeId, msg: ReapMsg) {
        match msg {
            ReapMsg::Query {
                round,
                partition,
                key,
                hash,
            } => self.on_reap_query(from, round, partition, key, hash),
            ReapMsg::Vote { round, key, ok } => self.on_reap_vote(from, round, key, ok),
            ReapMsg::Reap {
                partition,
                key,
                hash,
            } => self.on_reap(partition, &key, hash),
        }
    }

    pub(super) fn on_reap_query(
        &mut self,
        from: NodeId,
        round: u64,
        p: PartitionId,
        key: Bytes,
        hash: u64,
    ) {
        let same = match self.ctx.store.get(Space::Partition(p), &key) {
            Ok(Some(_)) => self.reapable_hash(p, &key) == Some(hash),
            Ok(None) => !self
                .ctx
                .map
                .preference_list(p, usize::from(self.ctx.cfg.n))
                .contains(&self.ctx.id()),
            Err(_) => false,
        };
        let ok = same
            && !self.has_hint_for(p, &key)
            && !self.transfer_pending_for(p)
            && !self.op_pending_for(&key);
        self.ctx.send(from, ReapMsg::Vote { round, key, ok });
    }

    pub(super) fn on_reap_vote(&mut self, from: NodeId, round: u64, key: Bytes, ok: bool) {
        let Some(r) = self.reaper.rounds.get_mut(&round) else {
            return;
        };
        if r.key != key {
            return;
        }
        if !ok {
            // Someone holds something else (or a hint): wait another grace period.
            let k = (r.partition, r.key.clone());
            self.reaper.rounds.remove(&round);
            let now = self.ctx.now;
            // Re-arm only if the key is still tombstone-only here (a write may have landed).
            if let Some(since) = self.reaper.tombstones.get_mut(&k) {
                *since = now;
            }
            return;
        }
        r.waiting.remove(&from);
        if r.waiting.is_empty() {
            self.finish_round(round);
        }
    }

    fn finish_round(&mut self, round: u64) {
        let Some(r) = self.reaper.rounds.remove(&round) else {
            return;
        };
        let n = usize::from(self.ctx.cfg.n);
        for replica in self.ctx.map.preference_list(r.partition, n) {
            if replica != self.ctx.id() {
                self.ctx.send(
                    replica,
                    ReapMsg::Reap {
                        partition: r.partition,
                        key: r.key.clone(),
                        hash: r.hash,
                    },
                );
            }
        }
        self.on_reap(r.partition, &r.key, r.hash);
    }

    /// Compare-and-delete: remove the key if it still holds exactly the object voted on.
    pub(super) fn on_reap(&mut self, p: PartitionId, key: &[u8], hash: u64) {
        if self.reapable_hash(p, key) != Some(hash) {
            return;
        }
        let minted_here = self
            .ctx
            .load(p, key)
            .ok()
            .flatten()
            .is_some_and(|o| o.join().get(&self.ctx.actor) > 0);
        // Retire first: the new identity is written before the removal (see hints.rs).
        if minted_here && !self.ctx.retire_actor() {
            return;
        }
        if let Err(e) = self.ctx.remove_key(p, key) {
            tracing::warn!(partition = %p, error = %e, "cannot reap a tombstone");
            return;
        }
        self.ctx.stats.tombstones_reaped += 1;
    }
}

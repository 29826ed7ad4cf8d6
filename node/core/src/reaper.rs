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
use super::coordinator::Coordinator;
use super::ctx::{tombstone_only, Ctx, DataEvent};
use super::hints::{hint_owners, load_hint, HintedHandoff};
use super::liveness::PeerView;
use super::membership::Membership;
use super::node::NodeCore;
use super::transfer::Transfers;
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
///
/// Inputs (routed by `NodeCore`, each with the shared [`Ctx`] and, to vote or reap, the
/// [`ReapGuards`]): `PeerMsg::Reap` (`on_msg`), the maintenance tick (`tick`: expire rounds,
/// start new ones), and every [`DataEvent`] (`on_data_event`: which keys are tombstone-only).
#[derive(Debug, Default)]
pub(super) struct Reaper {
    rounds: BTreeMap<u64, Round>,
    /// Tombstone-only keys and since when (local clock).
    pub(super) tombstones: BTreeMap<(PartitionId, Bytes), u64>,
    /// Where the sweep of context-only records resumes (`sweep_context_only`).
    sweep_after: Option<(PartitionId, Bytes)>,
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
            DataEvent::CompareSoon { .. } => {}
        }
    }
}

/// What the reaper must know of the other mechanisms before it votes or reaps (read-only):
/// who is down, who votes, and whether a hint, a transfer or an operation may still carry an
/// old copy of the key.
pub(super) struct ReapGuards<'a> {
    pub(super) peers: PeerView<'a>,
    pub(super) membership: &'a Membership,
    pub(super) handoff: &'a HintedHandoff,
    pub(super) coord: &'a Coordinator,
    pub(super) transfers: &'a Transfers,
}

impl ReapGuards<'_> {
    /// Who must vote on a reap: every member that may hold a copy, leaving and joining ones
    /// included (a leaving node still sends its partitions until its transfers finish), and
    /// every removed node that may still be running: it lingers to hand its hints over, and a
    /// read it still coordinates can send an old copy of the key as a repair when its deadline
    /// passes. Such a node votes no while it holds a hint for the key or has an operation on
    /// it, and blocks the reap while it cannot be reached, for as long as it may run
    /// ([`Membership::removed_voters`]).
    fn voters<S: Store>(&self, ctx: &Ctx<S>) -> BTreeSet<NodeId> {
        let mut voters = ctx.members.clone();
        if let Some(state) = self.membership.state() {
            voters.extend(
                state
                    .members()
                    .iter()
                    .filter(|(_, m)| m.status != dynakv_gossip::Status::Removed)
                    .map(|(id, _)| *id),
            );
        }
        voters.extend(
            self.membership
                .removed_voters(&ctx.cfg, ctx.now, self.handoff.started_at)
                .into_iter()
                .filter(|p| *p != ctx.id()),
        );
        voters
    }

    /// Does this node hold a hint for the key (or cannot tell), or did it send one within the
    /// grace period (a copy may still be on the wire after the record was acknowledged)?
    fn has_hint_for<S: Store>(&self, ctx: &Ctx<S>, p: PartitionId, key: &[u8]) -> bool {
        let grace_us = u64::from(ctx.cfg.tombstone_grace_ms) * 1000;
        self.handoff.sent_recently(p, key, ctx.now, grace_us)
            || hint_owners(ctx, self.membership, self.handoff)
                .into_iter()
                .any(|owner| matches!(load_hint(&ctx.store, owner, p, key), Ok(Some(_)) | Err(_)))
    }
}

impl Reaper {
    /// Called from the maintenance tick: expire rounds, start new ones.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>, guards: &ReapGuards<'_>) {
        let now = ctx.now;
        self.rounds.retain(|_, r| r.deadline > now);
        if ctx.cfg.tombstone_grace_ms == 0 {
            return;
        }
        let eager = ctx.cfg.has_bug(super::config::PlantedBug::EagerReap);
        let grace = if eager {
            0
        } else {
            u64::from(ctx.cfg.tombstone_grace_ms) * 1000
        };
        let n = usize::from(ctx.cfg.n);
        if self.tombstones.is_empty() {
            return;
        }
        self.sweep_context_only(ctx);
        let members = guards.voters(ctx);
        if !eager && members.iter().any(|m| guards.peers.is_down(*m)) {
            return; // a member that cannot vote blocks every reap
        }
        let in_round: BTreeSet<(PartitionId, Bytes)> = self
            .rounds
            .values()
            .map(|r| (r.partition, r.key.clone()))
            .collect();
        let candidates: Vec<(PartitionId, Bytes)> = self
            .tombstones
            .iter()
            .filter(|((p, _), since)| {
                now >= **since + grace && ctx.map.preference_list(*p, n).first() == Some(&ctx.id())
            })
            .map(|(k, _)| k.clone())
            .filter(|k| !in_round.contains(k))
            .take(ROUNDS_PER_TICK)
            .collect();
        for (p, key) in candidates {
            let hash = match Self::reapable_hash(ctx, p, &key) {
                Some(h) => h,
                None if Self::is_tombstone_only(ctx, p, &key) => {
                    // Not covered by the clock yet (a version it superseded never reached
                    // this node): compare clocks with the other replicas now, and try again
                    // after another grace period.
                    ctx.events.push(DataEvent::CompareSoon { partition: p });
                    if let Some(since) = self.tombstones.get_mut(&(p, key)) {
                        *since = now;
                    }
                    continue;
                }
                None => {
                    self.tombstones.remove(&(p, key));
                    continue;
                }
            };
            let waiting: BTreeSet<NodeId> = if eager {
                BTreeSet::new() // planted bug: nobody is asked
            } else {
                members.iter().copied().filter(|m| *m != ctx.id()).collect()
            };
            if guards.has_hint_for(ctx, p, &key)
                || (!eager
                    && (guards.transfers.pending_for(p) || guards.coord.op_pending_for(&key)))
            {
                continue;
            }
            let round = ctx.next_op_id();
            for m in &waiting {
                ctx.send(
                    *m,
                    ReapMsg::Query {
                        round,
                        partition: p,
                        key: key.clone(),
                        hash,
                    },
                );
            }
            let deadline = now + u64::from(ctx.cfg.request_timeout_ms) * 1000;
            self.rounds.insert(
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
                .rounds
                .get(&round)
                .is_some_and(|r| r.waiting.is_empty())
            {
                self.finish_round(ctx, round);
            }
        }
    }

    /// Remove, on this node alone, records that hold a context and no version (a replica that
    /// held versions a reader's fill showed superseded keeps such a record) once this node's
    /// partition clock covers the context: the absent key's fill then says as much, and the
    /// clock drops every copy the context covers, so no vote is needed. Also those of lost
    /// keys (no fill, no check: the node then knows nothing of the key, and the others' fills
    /// repair whatever old copy lands here). A few per tick.
    fn sweep_context_only<S: Store>(&mut self, ctx: &mut Ctx<S>) {
        const PER_TICK: usize = 32;
        let start = self.sweep_after.take();
        let keys: Vec<(PartitionId, Bytes)> = match &start {
            Some(after) => self
                .tombstones
                .range::<(PartitionId, Bytes), _>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(k, _)| k.clone())
                .take(PER_TICK)
                .collect(),
            None => self.tombstones.keys().take(PER_TICK).cloned().collect(),
        };
        if keys.len() == PER_TICK {
            self.sweep_after = keys.last().cloned();
        }
        for (p, key) in keys {
            // A lost key's record goes too: with no record and no fill this node answers for
            // the key with nothing at all, which claims nothing.
            let removable = matches!(
                ctx.load(p, &key),
                Ok(Some(o)) if o.value_count() == 0
                    && (ctx.clock_covers(p, &key, o.context()) || ctx.key_lost(p, &key))
            );
            if removable {
                match ctx.remove_key(p, &key) {
                    Ok(()) => ctx.stats.tombstones_reaped += 1,
                    Err(e) => {
                        tracing::warn!(partition = %p, error = %e, "cannot remove a context-only record")
                    }
                }
            }
        }
    }

    /// Whether the key's stored object holds only tombstones (or only a context).
    fn is_tombstone_only<S: Store>(ctx: &Ctx<S>, p: PartitionId, key: &[u8]) -> bool {
        matches!(ctx.load(p, key), Ok(Some(o)) if tombstone_only(&o))
    }

    /// The hash of the stored object if it is tombstone-only and this node's partition clock
    /// covers its context (never trust the tracking map alone: a write may have landed
    /// since). The cover is what makes the removal safe: every version the delete superseded
    /// was stored here, so the node-clock check drops any copy of it that arrives later, and
    /// the absent key's fill still tells readers those versions are gone (`clocks.rs`).
    fn reapable_hash<S: Store>(ctx: &Ctx<S>, p: PartitionId, key: &[u8]) -> Option<u64> {
        let bytes = ctx.store.get(Space::Partition(p), key).ok()??;
        let object = crate::codec::decode_object(&bytes).ok()?;
        let covered = ctx.clock_covers(p, key, object.context())
            || ctx.cfg.has_bug(super::config::PlantedBug::EagerReap);
        (tombstone_only(&object) && covered).then(|| object_hash(&bytes))
    }

    /// Route a reaping message to its phase.
    pub(super) fn on_msg<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        msg: ReapMsg,
        guards: &ReapGuards<'_>,
    ) {
        match msg {
            ReapMsg::Query {
                round,
                partition,
                key,
                hash,
            } => Self::on_reap_query(ctx, guards, from, round, partition, key, hash),
            ReapMsg::Vote { round, key, ok } => self.on_reap_vote(ctx, from, round, key, ok),
            ReapMsg::Reap {
                partition,
                key,
                hash,
            } => Self::on_reap(ctx, partition, &key, hash),
        }
    }

    fn on_reap_query<S: Store>(
        ctx: &mut Ctx<S>,
        guards: &ReapGuards<'_>,
        from: NodeId,
        round: u64,
        p: PartitionId,
        key: Bytes,
        hash: u64,
    ) {
        let same = match ctx.store.get(Space::Partition(p), &key) {
            Ok(Some(_)) => {
                let same = Self::reapable_hash(ctx, p, &key) == Some(hash);
                if !same && Self::is_tombstone_only(ctx, p, &key) {
                    // Perhaps only our clock lacks a dot the delete superseded.
                    ctx.events.push(DataEvent::CompareSoon { partition: p });
                }
                same
            }
            Ok(None) => !ctx
                .map
                .preference_list(p, usize::from(ctx.cfg.n))
                .contains(&ctx.id()),
            Err(_) => false,
        };
        let ok = same
            && !guards.has_hint_for(ctx, p, &key)
            && !guards.transfers.pending_for(p)
            && !guards.coord.op_pending_for(&key);
        ctx.send(from, ReapMsg::Vote { round, key, ok });
    }

    fn on_reap_vote<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        round: u64,
        key: Bytes,
        ok: bool,
    ) {
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        if r.key != key {
            return;
        }
        if !ok {
            // Someone holds something else (or a hint): wait another grace period.
            let k = (r.partition, r.key.clone());
            self.rounds.remove(&round);
            let now = ctx.now;
            // Re-arm only if the key is still tombstone-only here (a write may have landed).
            if let Some(since) = self.tombstones.get_mut(&k) {
                *since = now;
            }
            return;
        }
        r.waiting.remove(&from);
        if r.waiting.is_empty() {
            self.finish_round(ctx, round);
        }
    }

    fn finish_round<S: Store>(&mut self, ctx: &mut Ctx<S>, round: u64) {
        let Some(r) = self.rounds.remove(&round) else {
            return;
        };
        let n = usize::from(ctx.cfg.n);
        for replica in ctx.map.preference_list(r.partition, n) {
            if replica != ctx.id() {
                ctx.send(
                    replica,
                    ReapMsg::Reap {
                        partition: r.partition,
                        key: r.key.clone(),
                        hash: r.hash,
                    },
                );
            }
        }
        Self::on_reap(ctx, r.partition, &r.key, r.hash);
    }

    /// Compare-and-delete: remove the key if it still holds exactly the object voted on.
    fn on_reap<S: Store>(ctx: &mut Ctx<S>, p: PartitionId, key: &[u8], hash: u64) {
        if Self::reapable_hash(ctx, p, key) != Some(hash) {
            return;
        }
        // The reaped tombstone may cover dots this actor minted for the key; later mints of
        // this partition go above them (the floor), so no dot is minted twice and the actor
        // is kept. In memory, set before the removal: a restart takes a new actor anyway.
        let top = match ctx.load(p, key) {
            Ok(Some(o)) => o.context().top(&ctx.actor),
            _ => return,
        };
        if top > FLOOR_LIMIT {
            // Honest use never gets near: the counter came from a context a client made up.
            // A floor that high would make every later write of the partition here overflow
            // (refused), so start a new actor instead, with no floor at all; written before
            // the removal (see hints.rs).
            if !ctx.retire_actor() {
                return;
            }
        } else {
            ctx.raise_mint_floor(p, top);
        }
        if let Err(e) = ctx.remove_key(p, key) {
            tracing::warn!(partition = %p, error = %e, "cannot reap a tombstone");
            return;
        }
        ctx.stats.tombstones_reaped += 1;
    }
}

/// The highest mint floor a partition takes (2^48 mints by one actor life is far past honest
/// use); a reaped context or a mint above it retires the actor instead.
pub(super) const FLOOR_LIMIT: u64 = 1 << 48;

impl<S: Store> NodeCore<S> {
    /// Tombstone-only keys this node tracks (for status and tests).
    pub fn tombstones_tracked(&self) -> usize {
        self.reaper.tombstones.len()
    }
}

//! Tombstone reaping: each replica removes a deleted key's record on its own, with no vote, no
//! message and no time bound on the copies still in flight.
//!
//! A replica removes a key whose record holds only tombstones (or only a context) once
//! 1. its partition clock covers the record's context (`clocks.rs`): every version the delete
//!    superseded was stored here, so the node-clock check drops any copy of one that arrives
//!    later, however late, and the absent key's fill still tells readers and peers that those
//!    versions are gone. A record not covered yet asks anti-entropy to compare clocks with the
//!    other replicas now, which fills the holes (`clock_sync.rs`), and is tried again later;
//! 2. it has been tombstone-only for `tombstone_grace_ms`. Safety does not rest on this delay:
//!    it only lets a fresh tombstone, rather than a fill, repair the replicas that missed the
//!    delete, and saves work on keys deleted and written again at once;
//! 3. its key is not lost (`Ctx::key_lost`): a lost key is never filled nor checked, so its
//!    record (tombstone or context-only) is what supersedes old copies there, and it stays:
//!    removed, the replica would answer a read with nothing, and a read that reaches it and a
//!    replica that missed the delete would return the deleted value;
//! 4. no transfer of the partition is moving to or from this node (its batches carry records,
//!    and a record in flight is better than a hole the snapshot must explain).
//!
//! Removing a record this node's actor wrote raises the partition's mint floor above the
//! reaped counters (already there: every mint raises it), so no dot is minted twice and the
//! actor is kept.

use std::collections::BTreeMap;

use bytes::Bytes;
use dynakv_ring::PartitionId;

use super::ctx::{tombstone_only, Ctx, DataEvent};
use super::node::NodeCore;
use super::transfer::Transfers;
use super::types::Object;
use crate::store::Store;

/// Tracked keys looked at per maintenance tick at most.
const PER_TICK: usize = 64;

/// State of the reaper on one node.
///
/// Inputs (routed by `NodeCore`, each with the shared [`Ctx`]): the maintenance tick (`tick`:
/// remove what is due and covered) and every [`DataEvent`] (`on_data_event`: which keys are
/// tombstone-only, and since when).
#[derive(Debug, Default)]
pub(super) struct Reaper {
    /// Tombstone-only keys and since when (local clock).
    pub(super) tombstones: BTreeMap<(PartitionId, Bytes), u64>,
    /// Where the next tick resumes.
    resume_after: Option<(PartitionId, Bytes)>,
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
                    // The delay counts from the last change.
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

    /// Called from the maintenance tick: look at the next few tracked keys and remove those
    /// that are due and covered.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>, transfers: &Transfers) {
        if ctx.cfg.tombstone_grace_ms == 0 || self.tombstones.is_empty() {
            return;
        }
        let eager = ctx.cfg.has_bug(super::config::PlantedBug::EagerReap);
        let delay = if eager {
            0
        } else {
            u64::from(ctx.cfg.tombstone_grace_ms) * 1000
        };
        let keys: Vec<((PartitionId, Bytes), u64)> = match self.resume_after.take() {
            Some(after) => self
                .tombstones
                .range::<(PartitionId, Bytes), _>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                ))
                .take(PER_TICK)
                .map(|(k, s)| (k.clone(), *s))
                .collect(),
            None => self
                .tombstones
                .iter()
                .take(PER_TICK)
                .map(|(k, s)| (k.clone(), *s))
                .collect(),
        };
        if keys.len() == PER_TICK {
            self.resume_after = keys.last().map(|(k, _)| k.clone());
        }
        for ((p, key), since) in keys {
            self.consider(ctx, transfers, p, key, since, delay, eager);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn consider<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        transfers: &Transfers,
        p: PartitionId,
        key: Bytes,
        since: u64,
        delay: u64,
        eager: bool,
    ) {
        // Never trust the tracking map alone: a write may have landed since.
        let object = match ctx.load(p, &key) {
            Ok(Some(o)) if tombstone_only(&o) => o,
            Ok(_) => {
                self.tombstones.remove(&(p, key));
                return;
            }
            Err(_) => return, // unreadable: the scrub sets it aside
        };
        if ctx.key_lost(p, &key) {
            self.tombstones.remove(&(p, key)); // kept for good (see rule 3)
            return;
        }
        if ctx.now < since.saturating_add(delay) {
            return;
        }
        if !eager && transfers.pending_for(p) {
            return;
        }
        if eager || ctx.clock_covers(p, &key, object.context()) {
            self.remove(ctx, p, &key, &object);
            return;
        }
        // A version the delete superseded never reached this node: compare clocks with the
        // other replicas now, and try again after another delay.
        ctx.events.push(DataEvent::CompareSoon { partition: p });
        if let Some(s) = self.tombstones.get_mut(&(p, key)) {
            *s = ctx.now;
        }
    }

    fn remove<S: Store>(&mut self, ctx: &mut Ctx<S>, p: PartitionId, key: &[u8], o: &Object) {
        // The cover must be on disk before the removal is: a clock write that failed (a full
        // disk) leaves memory ahead, and a crash would then take the cover back while the
        // removal stayed (found in review).
        if !ctx.clock_on_disk(p) {
            return;
        }
        let top = o.context().top(&ctx.actor);
        if top > FLOOR_LIMIT {
            // Honest use never gets near: the counter came from a context a client made up.
            // A floor that high would make every later write of the partition here overflow
            // (refused), so start a new actor instead, with no floor at all, before the
            // removal (see hints.rs).
            ctx.retire_actor();
        } else {
            ctx.raise_mint_floor(p, top);
        }
        match ctx.remove_key(p, key) {
            Ok(()) => ctx.stats.tombstones_reaped += 1,
            Err(e) => tracing::warn!(partition = %p, error = %e, "cannot reap a tombstone"),
        }
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

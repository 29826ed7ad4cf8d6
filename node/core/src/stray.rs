//! Stray partition copies: data of a partition this node does not replicate under its map, with
//! no transfer of it under way.
//!
//! A copy normally leaves through a planned transfer and is dropped once every receiver
//! confirmed (`transfer.rs`). Two things can leave one behind: a drop that failed (a full disk)
//! and was never tried again, or a crash that lost the drop while the transfer's "done" record
//! had already reached the disk. Such a copy is read, transferred and repaired by nobody, and it
//! may hold the only copy of a write. So a periodic sweep hands every stray copy to the
//! partition's current replicas (merging is idempotent) and drops it only once they all
//! confirmed. The simulator's `orphan-copy` check holds the sweep to this.

use super::ctx::Ctx;
use super::membership::Membership;
use super::transfer::Transfers;
use crate::store::Store;

/// How often the sweep runs: stray copies are rare, and listing partitions touches every tree.
const SWEEP_INTERVAL_US: u64 = 5_000_000;

impl Transfers {
    /// Maintenance: every few seconds, hand over or drop the stray partition copies.
    pub(super) fn stray_tick<S: Store>(&mut self, ctx: &mut Ctx<S>, membership: &Membership) {
        if ctx.now < self.next_sweep {
            return;
        }
        self.next_sweep = ctx.now + SWEEP_INTERVAL_US;
        // A joining node has no say yet; a removed one hands over hints, and its data is the
        // operator's call (`dynakv remove --force`).
        if !membership.joined
            || (membership.status_of(ctx.id()) == Some(dynakv_gossip::Status::Removed))
        {
            return;
        }
        let held = match ctx.store.partitions() {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list partitions for the stray-copy sweep");
                return;
            }
        };
        let n = usize::from(ctx.cfg.n);
        let me = ctx.id();
        for p in held {
            let replicas = ctx.map.preference_list(p, n);
            if replicas.contains(&me) {
                continue;
            }
            let records: Vec<bool> = self
                .sending
                .iter()
                .filter(|((q, _), _)| *q == p)
                .map(|(_, s)| s.rec.done)
                .collect();
            if records.iter().any(|done| !done) {
                continue; // a transfer of it is under way; it drops the copy when done
            }
            if !records.is_empty() {
                // Every transfer of it finished: the receivers have it (the others already
                // were replicas), and nothing enters a partition this node does not replicate
                // (`merge_into_store`), so only the drop failed or was lost.
                self.maybe_drop_partition(ctx, p);
                continue;
            }
            // No record at all (they are forgotten at the next map change): send it to every
            // current replica; merging what they already have is idempotent.
            tracing::warn!(partition = %p, receivers = ?replicas,
                "a copy of a partition this node does not replicate was left behind: handing it over");
            ctx.stats.stray_partitions += 1;
            let total = Self::count_keys(ctx, p);
            for to in replicas {
                self.start_outgoing(ctx, p, to, total);
            }
        }
    }
}

//! Planning partition transfers: after a map change, what this node must send and expect, and
//! dropping the plans a later map made moot (see `transfer.rs` for the transfers themselves).

use std::collections::BTreeMap;

use dynakv_ring::{NodeId, PartitionId, PartitionMap};

use super::ctx::Ctx;
use super::membership::Membership;
use super::transfer::{in_key, out_key, Transfers};
use crate::store::{Space, Store};

impl Transfers {
    /// The map changed from `old` to `new`: record what this node must send and expect.
    pub(super) fn plan<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        old: &PartitionMap,
        new: &PartitionMap,
    ) {
        let n = usize::from(ctx.cfg.n);
        let me = ctx.id();
        // Finished transfers of earlier changes are history: forget them (status shows the
        // transfers of the current change).
        let finished_out: Vec<(PartitionId, NodeId)> = self
            .sending
            .iter()
            .filter(|(_, s)| s.rec.done)
            .map(|(k, _)| *k)
            .collect();
        for (p, to) in finished_out {
            self.sending.remove(&(p, to));
            ctx.remove_meta(Space::Transfers, &out_key(p, to));
        }
        let finished_in: Vec<(PartitionId, NodeId)> = self
            .receiving
            .iter()
            .filter(|(_, r)| r.done)
            .map(|(k, _)| *k)
            .collect();
        for (p, from) in finished_in {
            self.receiving.remove(&(p, from));
            self.progress.remove(&(p, from));
            ctx.remove_meta(Space::Transfers, &in_key(p, from));
        }
        self.prune_moot_transfers(ctx, new);
        let q = new.partition_count().min(old.partition_count());
        for i in 0..q {
            let p = PartitionId(i);
            let before = old.preference_list(p, n);
            let after = new.preference_list(p, n);
            let added: Vec<NodeId> = after
                .iter()
                .copied()
                .filter(|x| !before.contains(x))
                .collect();
            if added.is_empty() {
                continue;
            }
            let removed: Vec<NodeId> = before
                .iter()
                .copied()
                .filter(|x| !after.contains(x))
                .collect();
            let senders: Vec<NodeId> = if removed.is_empty() {
                before
                    .iter()
                    .copied()
                    .filter(|x| after.contains(x))
                    .take(1)
                    .collect()
            } else {
                removed
            };
            if senders.contains(&me) {
                let total = Self::count_keys(ctx, p);
                for to in added.iter().copied().filter(|t| *t != me) {
                    self.start_outgoing(ctx, p, to, total);
                }
            }
            if added.contains(&me) {
                for from in senders.into_iter().filter(|s| *s != me) {
                    self.expect_incoming(ctx, p, from);
                }
            }
        }
        tracing::info!(
            sending = self.outgoing_pending(),
            receiving = self.incoming_pending(membership),
            "partition map changed: transfers planned"
        );
    }

    /// Forget transfers `map` made moot: outgoing ones to nodes that no longer replicate the
    /// partition (its data goes to the current replicas instead) and incoming ones for
    /// partitions this node no longer replicates. Called on every map change and at startup,
    /// where it also clears records a failed store write left behind (a full disk).
    pub(super) fn prune_moot_transfers<S: Store>(&mut self, ctx: &mut Ctx<S>, map: &PartitionMap) {
        let new = map;
        let n = usize::from(ctx.cfg.n);
        let me = ctx.id();
        // Transfers to nodes that are no longer replicas of the partition are moot: the new map
        // gave it to someone else, who gets it from this plan.
        let moot: Vec<(PartitionId, NodeId)> = self
            .sending
            .iter()
            .filter(|((p, to), s)| !s.rec.done && !new.preference_list(*p, n).contains(to))
            .map(|(k, _)| *k)
            .collect();
        let mut orphaned = BTreeMap::new();
        for (p, to) in moot {
            self.sending.remove(&(p, to));
            if ctx.remove_meta(Space::Transfers, &out_key(p, to)) {
                let _forgotten = ctx.forget_snapshot(p, to);
            }
            orphaned.insert(p, ());
        }
        // A copy that was on its way out and now has no destination must still reach the
        // partition's current replicas: send it to all of them (merging is idempotent).
        for p in orphaned.into_keys() {
            let replicas = new.preference_list(p, n);
            if replicas.contains(&me) {
                continue;
            }
            let total = Self::count_keys(ctx, p);
            for to in replicas {
                if !self.sending.contains_key(&(p, to)) {
                    self.start_outgoing(ctx, p, to, total);
                }
            }
        }
        let moot_in: Vec<(PartitionId, NodeId)> = self
            .receiving
            .iter()
            .filter(|((p, _), r)| !r.done && !new.preference_list(*p, n).contains(&me))
            .map(|(k, _)| *k)
            .collect();
        for (p, from) in moot_in {
            self.receiving.remove(&(p, from));
            ctx.remove_meta(Space::Transfers, &in_key(p, from));
        }
    }
}

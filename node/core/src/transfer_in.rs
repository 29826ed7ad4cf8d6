//! The receiving side of partition transfers: merging batches durably and acknowledging them
//! with the new checkpoint, in order, one pass over the sender's data at a time (a batch that
//! does not continue the pass asks the sender to start over), and adopting the sender's clock
//! snapshot with the last batch of a whole pass.
//!
//! Inputs: [`super::types::TransferMsg::Batch`] and `NoTransfer` (`on_transfer_batch`,
//! `on_transfer_none`), and the moment this node joins (`expect_join_transfers`). Stalled
//! receivers are probed from `Transfers::tick` in `transfer.rs`.

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::ctx::{Ctx, DataEvent};
use super::membership::Membership;
use super::node::NodeCore;
use super::transfer::Transfers;
use super::transfer::{in_key, IncomingTransfer, STALL_US};
use super::types::{Object, ReplicaError, TransferMsg};
use crate::store::Store;

/// How soon a joining node first asks the members whether they send it a partition.
const JOIN_PROBE_AFTER_US: u64 = 1_000_000;

impl Transfers {
    /// This node just joined: it never saw the map before its join, so it cannot tell which
    /// members will send it which partition. It expects each partition it now replicates from
    /// every other member, and asks them soon (`TransferMsg::Status`): a member with the
    /// current map and no such transfer answers `NoTransfer`, a sender streams. The node turns
    /// `valid` only once every member answered one way or the other (`membership_progress`).
    pub(super) fn expect_join_transfers<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
    ) {
        if membership.status_of(ctx.id()) != Some(dynakv_gossip::Status::Joining) {
            return;
        }
        let me = ctx.id();
        // Leaving members too: they may be handing a partition to this node.
        let senders: Vec<NodeId> = membership.state().map_or_else(Vec::new, |s| {
            s.members()
                .iter()
                .filter(|(id, m)| **id != me && m.status != dynakv_gossip::Status::Removed)
                .map(|(id, _)| *id)
                .collect()
        });
        let first_probe = ctx
            .now
            .saturating_sub(STALL_US.saturating_sub(JOIN_PROBE_AFTER_US));
        let mine: Vec<PartitionId> = ctx.mine.to_vec();
        for p in mine {
            for from in senders.iter().copied() {
                if self.receiving.contains_key(&(p, from)) {
                    continue;
                }
                self.expect_incoming(ctx, p, from);
                self.progress.insert((p, from), first_probe);
            }
        }
    }

    /// The receiver's side: merge the batch, checkpoint durably, acknowledge.
    #[allow(clippy::too_many_arguments)] // the fields of one message, plus the context
    pub(super) fn on_transfer_batch<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        from: NodeId,
        batch: u64,
        p: PartitionId,
        body: BatchBody,
    ) -> bool {
        let BatchBody {
            pass,
            after,
            items,
            lost,
            last,
            snapshot,
        } = body;
        let mut result = Ok(());
        let mut upto = None;
        let mut start_over = false;
        if !membership.joined
            || !ctx
                .map
                .preference_list(p, usize::from(ctx.cfg.n))
                .contains(&ctx.id())
        {
            // Not ready (still joining) or our map does not have us as a replica yet: refuse
            // the whole batch so the sender keeps its copy and retries. Acknowledging here
            // would let the sender drop data nobody stored.
            result = Err(ReplicaError::Retry(
                "not (yet) a replica of this partition".into(),
            ));
        }
        // Metadata the disk refused goes first (`meta.rs`): a batch whose items are all known
        // stores nothing, so nothing else would check.
        if result.is_ok() {
            if let Err(e) = ctx.settle_meta() {
                result = Err(ReplicaError::Retry(e.to_string()));
            }
        }
        // The last batch's snapshot may join this node's clock only if it merged every item
        // of the pass the snapshot belongs to. So batches are taken in order, one pass at a
        // time: a batch from the first key starts its pass (or is its first batch sent
        // again); any other must continue the pass this node follows from at or before its
        // checkpoint (one that starts before it is a resend after a lost ack). Anything else
        // means batches of the pass never reached this node's disk (a power cut or a wipe),
        // or belong to another pass (a late copy): the sender starts over from the first key.
        let follows = match after.as_deref() {
            None => true,
            Some(a) => self
                .receiving
                .get(&(p, from))
                .is_some_and(|r| r.pass == pass && r.checkpoint.as_deref().is_some_and(|c| a <= c)),
        };
        if result.is_ok() && !follows {
            start_over = true;
            result = Err(ReplicaError::Retry(
                "this node missed batches of the transfer; start over from the first key".into(),
            ));
        }
        // The sender drops its clock once the last batch is acknowledged: without the snapshot
        // the dots it names would be known nowhere.
        if result.is_ok() && last && snapshot.is_none() {
            result = Err(ReplicaError::Retry(
                "the last batch of a transfer carries the sender's clock snapshot".into(),
            ));
        }
        for (k, o) in items
            .iter()
            .take(if result.is_ok() { usize::MAX } else { 0 })
        {
            let outcome = match ctx.merge_into_store(p, k, o) {
                // Cannot be applied here: kept aside, since the sender drops its copy once the
                // transfer is done. The snapshot names the dots of versions this node does not
                // hold, so the key is marked lost: never judged by the clock.
                Err(ReplicaError::Rejected(why)) => {
                    ctx.mark_lost(p, k);
                    ctx.quarantine(from, p, k, o, &why)
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = outcome {
                result = Err(e);
                break;
            }
            upto = Some(k.clone());
        }
        if result.is_ok() {
            // The keys whose records the sender lost: their dots are in its snapshot.
            for k in &lost {
                match ctx.check_peer_key(p, k) {
                    Ok(()) => ctx.mark_lost(p, k),
                    // Not a key of `p` here: the snapshot's dots are per partition, so none
                    // of them is this key's.
                    Err(e) => {
                        tracing::warn!(partition = %p, %from, ?e, "a transfer names a lost key that is not this partition's")
                    }
                }
            }
            // Lost marks are on disk before the ack, or the batch is refused and sent again.
            if let Err(e) = ctx.settle_meta() {
                result = Err(ReplicaError::Retry(e.to_string()));
                upto = None;
            }
        }
        // The last batch's snapshot names the dots the sender saw superseded (reaped
        // tombstones among them); the sender drops its partition, clock included, once this is
        // acknowledged. So the snapshot is on disk before the ack, or the batch is refused and
        // sent again (the checkpoint stays, so the resend continues the pass).
        if result.is_ok() && last {
            if let Some(snapshot) = snapshot {
                if let Err(e) = ctx.note_dead(p, &snapshot) {
                    tracing::warn!(partition = %p, error = %e, "cannot add a transfer's clock snapshot");
                }
                if !ctx.clock_on_disk(p) {
                    result = Err(ReplicaError::Retry(
                        "cannot write the partition clock with the transfer's snapshot".into(),
                    ));
                    upto = None;
                }
            }
        }
        if result.is_ok() {
            let rec = self
                .receiving
                .entry((p, from))
                .or_insert_with(|| IncomingTransfer::new(p, from));
            if after.is_none() && rec.pass != pass {
                rec.pass = pass;
                rec.checkpoint = None;
            }
            rec.received += items.len() as u64;
            if let Some(k) = &upto {
                // Within a pass the checkpoint only moves forward (a resend of an earlier
                // batch does not take it back).
                if rec.checkpoint.as_deref().is_none_or(|c| k.as_ref() > c) {
                    rec.checkpoint = Some(k.to_vec());
                }
            }
            rec.done |= last;
            let rec = rec.clone();
            self.persist_in(ctx, &rec);
            if last {
                // The old owner may have held writes the other replicas never got (a write
                // whose quorum failed): spread them now rather than in anti-entropy's round.
                ctx.events.push(DataEvent::CompareSoon { partition: p });
            }
            self.progress.insert((p, from), ctx.now);
            ctx.stats.transfer_keys_received += items.len() as u64;
        }
        ctx.send(
            from,
            TransferMsg::Ack {
                batch,
                partition: p,
                upto,
                done: last && result.is_ok(),
                result,
                start_over,
            },
        );
        true
    }

    /// The sender has no transfer of `p` for this node: stop waiting for it.
    pub(super) fn on_transfer_none<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        p: PartitionId,
    ) -> bool {
        if let Some(rec) = self.receiving.get_mut(&(p, from)) {
            if !rec.done {
                rec.done = true;
                let rec = rec.clone();
                self.persist_in(ctx, &rec);
                tracing::info!(partition = %p, %from, "sender has no transfer for us; anti-entropy covers the rest");
                ctx.events.push(DataEvent::CompareSoon { partition: p });
                return true;
            }
        }
        false
    }

    /// Record (durably) that `p` is expected from `from`.
    pub(super) fn expect_incoming<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        p: PartitionId,
        from: NodeId,
    ) {
        let rec = IncomingTransfer::new(p, from);
        self.persist_in(ctx, &rec);
        self.receiving.insert((p, from), rec);
    }

    pub(super) fn persist_in<S: Store>(&mut self, ctx: &mut Ctx<S>, rec: &IncomingTransfer) {
        self.persist_checkpoint(ctx, &in_key(rec.partition, rec.from), rec);
    }
    /// Incoming transfers expected but not finished (a sender that left the cluster for good
    /// no longer counts: anti-entropy fills in what it had).
    pub(super) fn incoming_pending(&self, membership: &Membership) -> usize {
        let state = membership.state();
        self.receiving
            .values()
            .filter(|r| !r.done)
            .filter(|r| {
                state
                    .and_then(|s| s.member(r.from))
                    .is_some_and(|m| m.status != dynakv_gossip::Status::Removed)
            })
            .count()
    }
}

impl<S: Store> NodeCore<S> {
    /// Incoming transfers (for status).
    pub fn incoming_transfers(&self) -> Vec<IncomingTransfer> {
        self.transfers.receiving.values().cloned().collect()
    }

    /// Incoming transfers expected but not finished (a sender that left the cluster for good
    /// no longer counts: anti-entropy fills in what it had).
    pub fn incoming_pending(&self) -> usize {
        self.transfers.incoming_pending(&self.membership)
    }
}

/// The body of a transfer batch, as the receiver handles it.
pub(super) struct BatchBody {
    /// The sender's pass over its data.
    pub(super) pass: u64,
    /// The sender's cursor: the batch holds the keys after it.
    pub(super) after: Option<Bytes>,
    pub(super) items: Vec<(Bytes, Object)>,
    /// Keys the sender lost (corrupt records), whose dots its snapshot names.
    pub(super) lost: Vec<Bytes>,
    pub(super) last: bool,
    /// The sender's clock snapshot (last batch only).
    pub(super) snapshot: Option<dynakv_proto::dvv::NodeClock>,
}

//! Partition transfer: when the map changes, the data of each partition reaches the nodes that
//! became its replicas, in batches, resumable after a crash, and the old copy is dropped only
//! after the new replica confirmed.
//!
//! For each partition p with old replicas R and new replicas R': every node in R \ R' streams
//! its copy to every node in R' \ R (if no node left R, the first node of R streams). Writes
//! during the move already go to R' (the new map), so nothing written meanwhile is lost. Both
//! sides checkpoint durably in the store's `transfers` space: the sender its cursor (the last
//! key the receiver acknowledged), the receiver what it has merged. A sender that restarts, or
//! whose batch went unanswered, resumes from its cursor, so at most one batch is sent twice.
//! Only once the receiver acknowledged the last batch does the sender, if it is no longer a
//! replica of p, drop its copy (and retire its actor identity: see `retire_actor`).

use std::collections::BTreeMap;

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};
use rand::Rng;

use super::clocks::SnapshotProblem;
use super::ctx::Ctx;
use super::membership::Membership;
use super::node::NodeCore;
pub(super) use super::transfer_records::{decode_incoming, decode_outgoing, in_key, out_key};
pub use super::transfer_records::{IncomingTransfer, OutgoingTransfer};
use super::types::{ReplicaError, TransferMsg};
use crate::codec;
use crate::store::{Space, Store};

/// Silence after which a receiver asks its sender whether a transfer still exists.
pub(super) const STALL_US: u64 = 10_000_000;

/// First retry delay of a transfer batch; doubles per failure up to 10 s, and starts over
/// when the receiver is seen again ([`Transfers::peer_is_back`]): a handoff must not sit out
/// a long backoff after the network heals.
const BACKOFF_BASE_US: u64 = 200_000;
const BACKOFF_MAX_US: u64 = 10_000_000;

/// In-memory progress of an outgoing transfer.
#[derive(Debug, Clone)]
pub(super) struct Sending {
    pub(super) rec: OutgoingTransfer,
    inflight: Option<(u64, u64, u64)>, // (batch, deadline, items)
    failures: u32,
    next_attempt: u64,
}

/// Partition transfers' state: both sides, with their checkpoints.
///
/// Inputs (routed by `NodeCore`, each with the shared [`Ctx`] and `Membership` to read): a map
/// change (`plan`, before the node routes by the new map), a join (`expect_join_transfers`),
/// `PeerMsg::Transfer` (`on_msg`; true when a transfer finished, so the router lets
/// membership check its progress), the maintenance tick (`tick`: send, resend, probe; and
/// `stray_tick`), and the start (`load`, `prune_moot_transfers`).
#[derive(Debug, Default)]
pub(super) struct Transfers {
    /// Outgoing transfers, per (partition, receiver).
    pub(super) sending: BTreeMap<(PartitionId, NodeId), Sending>,
    /// Incoming transfers, per (partition, sender).
    pub(super) receiving: BTreeMap<(PartitionId, NodeId), IncomingTransfer>,
    /// When each incoming transfer last made progress (local clock).
    pub(super) progress: BTreeMap<(PartitionId, NodeId), u64>,
    /// When the next sweep for stray partition copies runs (see `stray.rs`).
    pub(super) next_sweep: u64,
}

impl Transfers {
    /// Outgoing transfers not finished.
    pub(super) fn outgoing_pending(&self) -> usize {
        self.sending.values().filter(|s| !s.rec.done).count()
    }

    /// Is a copy of partition `p` moving to or from this node? Its old values may still land.
    pub(super) fn pending_for(&self, p: PartitionId) -> bool {
        self.receiving.values().any(|r| r.partition == p && !r.done)
            || self
                .sending
                .values()
                .any(|s| s.rec.partition == p && !s.rec.done)
    }

    /// `peer` is reachable again: batches waiting out a backoff to it go at the next tick.
    pub(super) fn peer_is_back(&mut self, peer: NodeId) {
        for s in self.sending.values_mut().filter(|s| s.rec.to == peer) {
            s.failures = 0;
            s.next_attempt = 0;
        }
    }
}

impl Transfers {
    /// Load persisted transfers at startup.
    pub(super) fn load<S: Store>(&mut self, ctx: &Ctx<S>) -> crate::Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = ctx.store.scan(Space::Transfers, after.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                if k.starts_with(b"out") {
                    let rec = decode_outgoing(&v)?;
                    self.sending.insert(
                        (rec.partition, rec.to),
                        Sending {
                            rec,
                            inflight: None,
                            failures: 0,
                            next_attempt: 0,
                        },
                    );
                } else if k.starts_with(b"in") {
                    let rec = decode_incoming(&v)?;
                    self.receiving.insert((rec.partition, rec.from), rec);
                }
            }
        }
        Ok(())
    }

    pub(super) fn count_keys<S: Store>(ctx: &Ctx<S>, p: PartitionId) -> u64 {
        let mut count = 0;
        let _ = ctx.scan_each(Space::Partition(p), |_, _| count += 1);
        count
    }

    /// Record (durably) that this node must send partition `p` to `to`.
    pub(super) fn start_outgoing<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        p: PartitionId,
        to: NodeId,
        total: u64,
    ) {
        let rec = OutgoingTransfer {
            partition: p,
            to,
            cursor: None,
            sent: 0,
            total,
            resent: 0,
            done: false,
            pass: 0,
        };
        self.persist_out(ctx, &rec);
        self.sending.insert(
            (p, to),
            Sending {
                rec,
                inflight: None,
                failures: 0,
                next_attempt: ctx.now,
            },
        );
    }

    /// True when the record is in the store now (see [`Transfers::persist_checkpoint`]).
    fn persist_out<S: Store>(&mut self, ctx: &mut Ctx<S>, rec: &OutgoingTransfer) -> bool {
        self.persist_checkpoint(ctx, &out_key(rec.partition, rec.to), rec)
    }

    /// Write one transfer checkpoint (either side); durable at the next drain. One the disk
    /// refuses is written again before any data is stored (`meta.rs`): a restart must not find
    /// records older than the data.
    /// True when the record is in the store now; false when it waits for the disk.
    pub(super) fn persist_checkpoint<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        key: &[u8],
        rec: &impl serde::Serialize,
    ) -> bool {
        match codec::encode(rec) {
            Ok(b) => ctx.put_meta(Space::Transfers, key, &b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a transfer checkpoint");
                false
            }
        }
    }

    /// Called from the maintenance tick: retry unanswered batches, start transfers within the
    /// concurrency limit.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>, membership: &Membership) {
        let now = ctx.now;
        // Receivers: ask about transfers that went silent (the sender may have lost its state).
        let stalled: Vec<(PartitionId, NodeId)> = self
            .receiving
            .iter()
            .filter(|(_, r)| !r.done)
            .map(|(k, _)| *k)
            .filter(|k| {
                let last = *self.progress.entry(*k).or_insert(now);
                now >= last + STALL_US
            })
            .collect();
        for (p, from) in stalled {
            self.progress.insert((p, from), now);
            let epoch = membership.state().map_or(0, |s| s.map().version.epoch);
            ctx.send(
                from,
                TransferMsg::Status {
                    partition: p,
                    epoch,
                },
            );
        }
        let keys: Vec<(PartitionId, NodeId)> = self.sending.keys().copied().collect();
        let mut active = self
            .sending
            .values()
            .filter(|s| !s.rec.done && (s.inflight.is_some() || s.rec.sent > 0))
            .count();
        for key in keys {
            let Some(s) = self.sending.get_mut(&key) else {
                continue;
            };
            if s.rec.done {
                continue;
            }
            if let Some((_, deadline, items)) = s.inflight {
                if now < deadline {
                    continue;
                }
                s.inflight = None;
                s.rec.resent += items;
                ctx.stats.transfer_batches_retried += 1;
                let Some(s) = self.sending.get_mut(&key) else {
                    continue;
                };
                s.failures = s.failures.saturating_add(1);
                let backoff = BACKOFF_BASE_US
                    .saturating_mul(1u64 << s.failures.min(20))
                    .min(BACKOFF_MAX_US);
                let jitter = ctx.rng.gen_range(0..=backoff / 2);
                if let Some(s) = self.sending.get_mut(&key) {
                    s.next_attempt = now + backoff / 2 + jitter;
                }
                continue;
            }
            let fresh = s.rec.sent == 0;
            if now < s.next_attempt || (fresh && active >= ctx.cfg.max_transfers) {
                continue;
            }
            if fresh {
                active += 1;
            }
            self.send_transfer_batch(ctx, key);
        }
    }

    fn send_transfer_batch<S: Store>(&mut self, ctx: &mut Ctx<S>, key: (PartitionId, NodeId)) {
        let Some(s) = self.sending.get(&key) else {
            return;
        };
        let (p, to) = key;
        // A pass from the first key starts with the clock as it is now and a new pass id; a
        // transfer resumed from its cursor keeps both (the record is written after the
        // snapshot, so a restart that finds the pass finds its snapshot). Only with no
        // metadata waiting for the disk, so the record on disk is the one in memory: the
        // previous pass's snapshot goes once the new record is written, and never before
        // (a restart on the older record sends that pass's snapshot), so at most two exist.
        if s.rec.cursor.is_none() && s.rec.sent == 0 {
            if ctx.settle_meta().is_err() {
                return;
            }
            let previous = s.rec.pass;
            let pass = ctx.rng.gen::<u64>().max(1);
            if let Err(e) = ctx.take_transfer_snapshot(p, to, pass) {
                tracing::warn!(partition = %p, error = %e, "cannot snapshot a partition clock");
                return;
            }
            if let Some(s) = self.sending.get_mut(&key) {
                s.rec.pass = pass;
                let rec = s.rec.clone();
                if self.persist_out(ctx, &rec) {
                    ctx.forget_pass_snapshot(p, to, previous);
                }
            }
        }
        let Some(s) = self.sending.get(&key) else {
            return;
        };
        let page = match ctx.store.scan(
            Space::Partition(p),
            s.rec.cursor.as_deref(),
            ctx.cfg.transfer_batch,
        ) {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(partition = %p, error = %e, "cannot read a partition to transfer");
                return;
            }
        };
        let mut last = page.len() < ctx.cfg.transfer_batch;
        let mut items = Vec::with_capacity(page.len());
        let mut lost = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in page {
            if !items.is_empty() && bytes + v.len() > ctx.cfg.max_message_bytes / 2 {
                last = false; // cut to fit the frame limit; the rest follows
                break;
            }
            bytes += v.len();
            match codec::decode_object(&v) {
                Ok(o) => items.push((Bytes::from(k), o)),
                // Not sent: set aside after this step, and repaired from the other replicas
                // by anti-entropy (here and at the receiver, which is one of them). The clock
                // snapshot names its dots, so the receiver marks the key lost (this batch
                // says so), and never judges its copies by the snapshot.
                Err(e) => {
                    let k = Bytes::from(k);
                    ctx.corrupt.get_mut().push((p, k.clone(), e.to_string()));
                    lost.push(k);
                }
            }
        }
        let pass = self.sending.get(&key).map_or(0, |s| s.rec.pass);
        // Without its snapshot the receiver would finish the transfer and this node would
        // drop its clock with nobody holding the dots it names: no last batch goes without.
        let snapshot = match last.then(|| ctx.final_snapshot(p, to, pass, &mut lost)) {
            None => None,
            Some(Ok(snapshot)) => Some(snapshot),
            // Missing or unreadable (a failing disk): take the pass again, with a new one.
            Some(Err(SnapshotProblem::Unreadable)) => {
                tracing::error!(partition = %p, %to, "cannot read the transfer's clock snapshot; sending the partition again");
                if let Some(s) = self.sending.get_mut(&key) {
                    s.rec.resent += s.rec.sent;
                    s.rec.sent = 0;
                    s.rec.cursor = None;
                    s.next_attempt = ctx.now + BACKOFF_BASE_US;
                    ctx.stats.transfer_passes_restarted += 1;
                    let rec = s.rec.clone();
                    self.persist_out(ctx, &rec);
                }
                return;
            }
            // Too many lost keys to name: the partition stays here until an operator acts.
            Some(Err(SnapshotProblem::TooManyLost(count))) => {
                tracing::error!(partition = %p, %to, lost = count,
                    "too many lost keys to hand off with the transfer's clock snapshot; the partition stays here (repair or remove the node)");
                if let Some(s) = self.sending.get_mut(&key) {
                    s.failures = s.failures.saturating_add(1);
                    s.next_attempt = ctx.now + BACKOFF_MAX_US;
                }
                return;
            }
        };
        let batch = ctx.next_op_id();
        let deadline = ctx.now + u64::from(ctx.cfg.request_timeout_ms) * 1000;
        let count = items.len() as u64;
        if let Some(s) = self.sending.get_mut(&key) {
            s.inflight = Some((batch, deadline, count));
        }
        ctx.stats.transfer_batches_sent += 1;
        let after = self
            .sending
            .get(&key)
            .and_then(|s| s.rec.cursor.clone())
            .map(Bytes::from);
        ctx.send(
            to,
            TransferMsg::Batch {
                batch,
                partition: p,
                pass,
                after,
                items,
                lost,
                last,
                snapshot,
            },
        );
    }

    /// The sender's side: advance the cursor; after the last batch, drop the partition if this
    /// node is no longer a replica of it. True when the transfer finished.
    #[allow(clippy::too_many_arguments)] // the fields of one message, plus the context
    fn on_transfer_ack<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        batch: u64,
        p: PartitionId,
        upto: Option<Bytes>,
        done: bool,
        result: Result<(), ReplicaError>,
        start_over: bool,
    ) -> bool {
        let key = (p, from);
        let Some(s) = self.sending.get_mut(&key) else {
            return false;
        };
        let Some((expected, _, items)) = s.inflight else {
            return false;
        };
        if expected != batch {
            return false;
        }
        s.inflight = None;
        if start_over {
            // The receiver missed part of this pass: only a whole pass lets it adopt the
            // snapshot, and dropping this copy without that would leave the snapshot's
            // superseded dots known nowhere.
            tracing::info!(partition = %p, to = %from, "receiver missed part of the transfer; sending it again from the first key");
            s.rec.resent += s.rec.sent;
            s.rec.sent = 0;
            s.rec.cursor = None;
            s.rec.done = false;
            s.failures = 0;
            s.next_attempt = ctx.now + BACKOFF_BASE_US;
            ctx.stats.transfer_passes_restarted += 1;
            let rec = s.rec.clone();
            self.persist_out(ctx, &rec);
            return false;
        }
        if let Err(e) = result {
            tracing::warn!(partition = %p, to = %from, ?e, "transfer batch refused; will retry");
            s.failures = s.failures.saturating_add(1);
            s.next_attempt = ctx.now + BACKOFF_BASE_US;
            return false;
        }
        s.failures = 0;
        s.next_attempt = ctx.now;
        s.rec.sent += items;
        if let Some(k) = upto {
            s.rec.cursor = Some(k.to_vec());
        }
        s.rec.done |= done;
        let rec = s.rec.clone();
        let recorded = self.persist_out(ctx, &rec);
        ctx.stats.transfer_keys_sent += items;
        if rec.done {
            // Only once "done" is written: a restart on the older record resumes the pass and
            // needs its snapshot. A leftover goes with the partition's clock.
            if recorded {
                let _forgotten = ctx.forget_snapshot(p, from);
            }
            self.maybe_drop_partition(ctx, p);
            return true;
        }
        self.send_transfer_batch(ctx, key);
        false
    }

    /// Drop a partition's data once every transfer of it is confirmed and this node is no
    /// longer one of its replicas.
    pub(super) fn maybe_drop_partition<S: Store>(&mut self, ctx: &mut Ctx<S>, p: PartitionId) {
        let n = usize::from(ctx.cfg.n);
        if ctx.map.preference_list(p, n).contains(&ctx.id()) {
            return;
        }
        let pending = self
            .sending
            .values()
            .any(|s| s.rec.partition == p && !s.rec.done);
        if pending {
            return;
        }
        // No drop while metadata waits for the disk (`meta.rs`); checked before the retirement
        // so a drop that cannot happen does not cost an actor.
        if ctx.settle_meta().is_err() {
            return;
        }
        // Retire first: the dropped copy may hold dots this node minted (see hints.rs).
        ctx.retire_actor();
        if let Err(e) = ctx.drop_partition_data(p) {
            tracing::warn!(partition = %p, error = %e, "cannot drop a handed-off partition");
            return;
        }
        ctx.stats.partitions_dropped += 1;
        tracing::info!(partition = %p, "partition handed off and dropped");
    }

    /// Route a transfer message to the sending or the receiving side. True when a transfer
    /// finished: the caller lets membership check whether this node's join or leave is done.
    pub(super) fn on_msg<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        from: NodeId,
        msg: TransferMsg,
    ) -> bool {
        match msg {
            TransferMsg::Batch {
                batch,
                partition,
                pass,
                after,
                items,
                lost,
                last,
                snapshot,
            } => self.on_transfer_batch(
                ctx,
                membership,
                from,
                batch,
                partition,
                super::transfer_in::BatchBody {
                    pass,
                    after,
                    items,
                    lost,
                    last,
                    snapshot,
                },
            ),
            TransferMsg::Ack {
                batch,
                partition,
                upto,
                done,
                result,
                start_over,
            } => self.on_transfer_ack(ctx, from, batch, partition, upto, done, result, start_over),
            TransferMsg::Status { partition, epoch } => {
                self.on_transfer_status(ctx, membership, from, partition, epoch);
                false
            }
            TransferMsg::NoTransfer { partition } => self.on_transfer_none(ctx, from, partition),
        }
    }

    /// A receiver asks whether a transfer of `p` to it still exists.
    fn on_transfer_status<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        from: NodeId,
        p: PartitionId,
        epoch: u64,
    ) {
        let live = self.sending.get(&(p, from)).is_some_and(|s| !s.rec.done);
        // With an older map than the asker's, this node may not have planned the transfer
        // yet: stay silent, the asker asks again.
        let current = membership.state().map_or(0, |s| s.map().version.epoch);
        if !live && current >= epoch {
            ctx.send(from, TransferMsg::NoTransfer { partition: p });
        }
    }
}

impl<S: Store> NodeCore<S> {
    /// Outgoing transfers (for status).
    pub fn outgoing_transfers(&self) -> Vec<OutgoingTransfer> {
        self.transfers
            .sending
            .values()
            .map(|s| s.rec.clone())
            .collect()
    }

    /// Outgoing transfers not finished.
    pub fn outgoing_pending(&self) -> usize {
        self.transfers.outgoing_pending()
    }

    /// Transfers per partition, for status: (partition, peer, sent, total, done, outgoing).
    pub fn transfer_summary(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        m.insert("outgoing_pending".into(), self.outgoing_pending() as u64);
        m.insert("incoming_pending".into(), self.incoming_pending() as u64);
        m.insert(
            "keys_sent".into(),
            self.transfers.sending.values().map(|s| s.rec.sent).sum(),
        );
        m.insert(
            "keys_resent".into(),
            self.transfers.sending.values().map(|s| s.rec.resent).sum(),
        );
        m
    }
}

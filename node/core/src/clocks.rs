//! Partition node clocks: per partition this node replicates, every dot it has stored a version
//! of (data or tombstone), kept as a [`NodeClock`] (a base per actor plus ranges above it).
//!
//! Counters are per (actor, partition) (`Ctx::mint_floor`), so a dot names one version of one
//! key of the partition. A dot in the clock that the key's stored object does not hold was
//! therefore seen here and superseded: a copy that carries it again is old, however late it
//! arrives, and is dropped (**the node-clock check**, `Ctx::merge_into_store`). That is what
//! makes a removed tombstone safe: once the clock's base covers a tombstone's context, every
//! dot the delete superseded is in the clock, and the key can go (`reaper.rs`).
//!
//! A replica that holds no record for a key answers reads and anti-entropy with the empty
//! object *filled* with the clock's base ([`Ctx::filled_absent`]): every dot at or below the
//! base is either a dot of another key or one of this key it saw superseded, so the fill tells
//! a lagging replica (one that missed the delete, or lost it in a power loss) to drop its old
//! value.
//!
//! What the clock may contain is the whole argument, so it only ever gains the dots of versions
//! this node *stored* (never a context: a client's context names dots of other keys too). A
//! record set aside as corrupt takes dots with it that the clock still names; its key goes
//! into a persisted *lost* set, which is never filled, never checked against the clock and
//! never reaped. Dropping a partition drops its clock and lost set.
//!
//! On disk, in [`Space::Clocks`]: `'c' ‖ partition u16 BE` holds the encoded clock
//! (`codec::clock`), `'l' ‖ partition ‖ key` marks a lost key. The clock is written after the
//! data it describes in the same step, so a torn tail leaves it behind its data (it then
//! misses dots, which only delays reaps), never ahead of it. A lost mark is node metadata,
//! written before any later data (`meta.rs`).
//!
//! A transfer hands the clock on: the sender's snapshot, taken as a pass over its data starts,
//! is adopted by the receiver once it merged the whole pass (`transfer_in.rs`), with the
//! sender's lost keys marked lost there too.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_proto::codec::clock::{decode_clock as decode_bare, encode_clock as encode_bare};
use dynakv_proto::dvv::{Dot, NodeClock};
use dynakv_ring::PartitionId;

use super::ctx::Ctx;
use super::types::Object;
use crate::error::Result;
use crate::store::{Space, Store};

const CLOCK_TAG: u8 = b'c';
const LOST_TAG: u8 = b'l';
const SNAPSHOT_TAG: u8 = b's';
const GAP_TAG: u8 = b'g';
/// The most lost keys a transfer names with its snapshot (`Ctx::final_snapshot`).
const MAX_LOST_SENT: usize = 1024;

/// Why the last batch of a transfer cannot carry its snapshot (and is not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SnapshotProblem {
    /// The snapshot of the pass is missing or does not decode: the pass is taken again.
    Unreadable,
    /// More lost keys than one batch may name: the partition stays until an operator acts.
    TooManyLost(usize),
}

fn snapshot_prefix(p: PartitionId, to: dynakv_ring::NodeId) -> Vec<u8> {
    let mut k = vec![SNAPSHOT_TAG];
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&to.0.to_be_bytes());
    k
}

/// The snapshot of pass `pass` of the transfer of `p` to `to`: keyed by its pass, so a sender
/// that restarts on an older transfer record (the newer one refused by a full disk) finds the
/// snapshot of that record's pass, never a later one. Pass 0 (a transfer recorded by protocol
/// 11) has the key of that version.
fn snapshot_key(p: PartitionId, to: dynakv_ring::NodeId, pass: u64) -> Vec<u8> {
    let mut k = snapshot_prefix(p, to);
    if pass != 0 {
        k.extend_from_slice(&pass.to_be_bytes());
    }
    k
}

fn clock_key(p: PartitionId) -> [u8; 3] {
    let [hi, lo] = p.0.to_be_bytes();
    [CLOCK_TAG, hi, lo]
}

fn lost_key(p: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len());
    k.push(LOST_TAG);
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// A clock record as stored: an xxh3 checksum of the encoding, then the encoding. A clock with
/// a flipped bit could still decode, as a clock that claims dots nobody stored.
fn encode_clock(clock: &NodeClock) -> Vec<u8> {
    let body = encode_bare(clock);
    let mut out = xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Decode a record written by [`encode_clock`]; `None` when the checksum or the encoding is bad.
fn decode_clock(bytes: &[u8]) -> Option<NodeClock> {
    let (sum, body) = bytes.split_at_checked(8)?;
    let sum = u64::from_le_bytes(sum.try_into().ok()?);
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return None;
    }
    decode_bare(body).ok()
}

/// The clocks of the partitions this node stores, and their lost keys (loaded at start).
#[derive(Debug, Default)]
pub(super) struct Clocks {
    clocks: BTreeMap<PartitionId, NodeClock>,
    lost: BTreeSet<(PartitionId, Bytes)>,
    /// Partitions whose clock in memory is ahead of the one on disk (its last write failed).
    /// Nothing may be removed on the strength of such a clock until it is written: a crash
    /// would take the cover back while the removal stayed.
    unpersisted: BTreeSet<PartitionId>,
}

impl Clocks {
    /// Read every clock and lost marker. A clock record that does not decode is left out (an
    /// emptier clock only drops fewer copies and delays reaps) and logged.
    pub(super) fn load<S: Store>(store: &S) -> Result<Self> {
        let mut out = Self::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan(Space::Clocks, after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                let (Some(&tag), Some(p)) = (k.first(), k.get(1..3)) else {
                    continue;
                };
                let p = PartitionId(u16::from_be_bytes([p[0], p[1]]));
                match tag {
                    CLOCK_TAG => match decode_clock(&v) {
                        Some(c) => {
                            out.clocks.insert(p, c);
                        }
                        None => tracing::error!(partition = %p,
                            "corrupt partition clock; starting it empty"),
                    },
                    LOST_TAG => {
                        out.lost.insert((p, Bytes::copy_from_slice(&k[3..])));
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The clock of partition `p` (empty if this node stored nothing there).
    pub(super) fn get(&self, p: PartitionId) -> Option<&NodeClock> {
        self.clocks.get(&p)
    }

    /// Whether the record of `key` was lost here (set aside as corrupt).
    pub(super) fn is_lost(&self, p: PartitionId, key: &[u8]) -> bool {
        self.lost.contains(&(p, Bytes::copy_from_slice(key)))
    }

    /// Whether some key of `p` was lost here.
    pub(super) fn has_lost(&self, p: PartitionId) -> bool {
        self.lost
            .range((p, Bytes::new())..)
            .next()
            .is_some_and(|(q, _)| *q == p)
    }

    /// Totals for status: partitions with a clock, actors and ranges over all of them, lost keys.
    pub(super) fn totals(&self) -> (usize, usize, usize, usize) {
        let actors = self.clocks.values().map(NodeClock::actor_count).sum();
        let ranges = self.clocks.values().map(NodeClock::range_count).sum();
        (self.clocks.len(), actors, ranges, self.lost.len())
    }
}

/// The clock's base as a context: every dot `1..=base` of each actor.
fn base_context(clock: &NodeClock) -> NodeClock {
    NodeClock::from_vector(&clock.base_vector())
}

impl<S: Store> Ctx<S> {
    /// Whether `key`'s record was lost here: set aside as corrupt, or found corrupt by a load
    /// during the current input (set aside after it).
    pub(super) fn key_lost(&self, p: PartitionId, key: &[u8]) -> bool {
        self.clocks.is_lost(p, key)
            || self
                .corrupt
                .borrow()
                .iter()
                .any(|(q, k, _)| *q == p && k.as_ref() == key)
    }

    /// Record that this node stored versions with `dots` in partition `p`; persisted (after the
    /// data) when the clock changed.
    pub(super) fn note_stored(
        &mut self,
        p: PartitionId,
        dots: impl IntoIterator<Item = Dot>,
    ) -> Result<()> {
        let clock = self.clocks.clocks.entry(p).or_default();
        let mut changed = false;
        for d in dots {
            if !clock.contains(&d) {
                clock.add(&d);
                changed = true;
            }
        }
        if changed {
            let bytes = encode_clock(clock);
            self.write_clock(p, &bytes)?;
        }
        Ok(())
    }

    /// Write `p`'s encoded clock; on failure, remember that memory is ahead of the disk.
    fn write_clock(&mut self, p: PartitionId, bytes: &[u8]) -> Result<()> {
        match self.store.put(Space::Clocks, &clock_key(p), bytes) {
            Ok(()) => {
                self.dirty = true;
                self.clocks.unpersisted.remove(&p);
                Ok(())
            }
            Err(e) => {
                self.clocks.unpersisted.insert(p);
                // Force a barrier, as for refused metadata (`meta.rs`): a store whose error does
                // not pass then fails it and the node stops serving.
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// Whether `p`'s clock on disk (as of the next sync) is the one in memory, writing it now
    /// if an earlier write failed. The reaper removes a record only then.
    pub(super) fn clock_on_disk(&mut self, p: PartitionId) -> bool {
        if !self.clocks.unpersisted.contains(&p) {
            return true;
        }
        let Some(clock) = self.clocks.clocks.get(&p) else {
            self.clocks.unpersisted.remove(&p);
            return true;
        };
        let bytes = encode_clock(clock);
        self.write_clock(p, &bytes).is_ok()
    }

    /// Add dots a peer stored and saw superseded (`clock_sync.rs`); persisted.
    pub(super) fn note_dead(&mut self, p: PartitionId, dead: &NodeClock) -> Result<()> {
        let clock = self.clocks.clocks.entry(p).or_default();
        if clock.descends(dead) {
            return Ok(());
        }
        clock.merge(dead);
        let bytes = encode_clock(clock);
        self.write_clock(p, &bytes)
    }

    /// Whether a copy of a version with `dot` arriving for `key` is old: its dot was stored
    /// here and is gone. `local` is what the key holds now. Never for a lost key.
    pub(super) fn seen_and_gone(
        &self,
        p: PartitionId,
        key: &[u8],
        local: Option<&Object>,
        dot: &Dot,
    ) -> bool {
        if self
            .cfg
            .has_bug(super::config::PlantedBug::SkipNodeClockCheck)
        {
            return false; // planted bug: trust every copy
        }
        !local.is_some_and(|l| l.holds(dot))
            && self.clocks.get(p).is_some_and(|c| c.contains(dot))
            && !self.key_lost(p, key)
    }

    /// Whether the clock's base covers every dot of `context` (so a tombstone with that
    /// context can be removed: the clock then rejects every copy the delete superseded).
    pub(super) fn clock_covers(&self, p: PartitionId, key: &[u8], context: &NodeClock) -> bool {
        if self.key_lost(p, key) {
            return false;
        }
        let Some(clock) = self.clocks.get(p) else {
            return context.actor_count() == 0;
        };
        context
            .entries()
            .iter()
            .all(|(a, e)| clock.entry(a).is_some_and(|c| e.top() <= c.base()))
    }

    /// What this node answers for a key of `p` it holds no record of: the empty object with
    /// the clock's base as context, when it replicates `p` and the key is not lost; `None`
    /// otherwise (no information).
    pub(super) fn filled_absent(&self, p: PartitionId, key: &[u8]) -> Option<Object> {
        if !self.replicates(p) || self.key_lost(p, key) {
            return None;
        }
        let base = base_context(self.clocks.get(p)?);
        if base.actor_count() == 0 {
            return None;
        }
        let mut o = Object::new();
        o.discard(&base);
        Some(o)
    }

    /// Mark `key` of `p` lost (its record was set aside): never filled, checked or reaped.
    ///
    /// In force in memory at once. The mark is node metadata (`meta.rs`): if the disk refuses
    /// it, no data is written, the key's record included, until it lands. A record written over
    /// the lost one before its mark reached the disk would, after a restart, leave a key that
    /// is not marked lost while the clock names the lost record's dots: good copies of those
    /// dots would then be judged superseded and discarded (soak seed 87118).
    pub(super) fn mark_lost(&mut self, p: PartitionId, key: &[u8]) {
        if self.clocks.lost.insert((p, Bytes::copy_from_slice(key))) {
            self.put_meta(Space::Clocks, &lost_key(p, key), &[]);
        }
    }

    /// Mark `key` lost now if a load found its record corrupt during this step and it is not
    /// marked yet: called before the key's record is written or removed, so the mark is
    /// written (or waits as metadata, which holds the write back) before the record changes.
    pub(super) fn mark_lost_if_found_corrupt(&mut self, p: PartitionId, key: &[u8]) {
        let found = self
            .corrupt
            .get_mut()
            .iter()
            .any(|(q, k, _)| *q == p && k.as_ref() == key);
        if found {
            self.mark_lost(p, key);
        }
    }

    /// Take the snapshot of `p`'s clock for an outgoing transfer to `to` that streamed
    /// nothing yet: a pass from the first key starts (also when the first batch is sent again
    /// after its timeout, which the receiver takes as a new pass). Persisted: a transfer that
    /// resumes from its cursor sends the one taken at its pass's start, never a later one,
    /// which could name dots of keys it streamed before seeing them.
    pub(super) fn take_transfer_snapshot(
        &mut self,
        p: PartitionId,
        to: dynakv_ring::NodeId,
        pass: u64,
    ) -> Result<()> {
        let clock = self.clocks.get(p).cloned().unwrap_or_default();
        self.store.put(
            Space::Clocks,
            &snapshot_key(p, to, pass),
            &encode_clock(&clock),
        )?;
        self.dirty = true;
        Ok(())
    }

    /// What the last batch of a transfer of `p` to `to` carries: the snapshot of its pass,
    /// with every key of `p` lost here added to `lost` (their records were not streamed, and
    /// the snapshot names their dots: the receiver marks them lost). An error when the
    /// snapshot cannot be read, or the lost keys are too many to name in one batch
    /// (`MAX_LOST_SENT`): then no last batch is sent.
    pub(super) fn final_snapshot(
        &self,
        p: PartitionId,
        to: dynakv_ring::NodeId,
        pass: u64,
        lost: &mut Vec<Bytes>,
    ) -> std::result::Result<NodeClock, SnapshotProblem> {
        let mut keys: BTreeSet<Bytes> = lost.iter().cloned().collect();
        keys.extend(
            self.clocks
                .lost
                .range((p, Bytes::new())..)
                .take_while(|(q, _)| *q == p)
                .map(|(_, k)| k.clone()),
        );
        keys.extend(
            self.corrupt
                .borrow()
                .iter()
                .filter(|(q, _, _)| *q == p)
                .map(|(_, k, _)| k.clone()),
        );
        let bytes: usize = keys.iter().map(Bytes::len).sum();
        if keys.len() > MAX_LOST_SENT || bytes > self.cfg.max_message_bytes / 8 {
            return Err(SnapshotProblem::TooManyLost(keys.len()));
        }
        *lost = keys.into_iter().collect();
        match self.store.get(Space::Clocks, &snapshot_key(p, to, pass)) {
            Ok(Some(bytes)) => decode_clock(&bytes).ok_or(SnapshotProblem::Unreadable),
            _ => Err(SnapshotProblem::Unreadable),
        }
    }

    /// Remove the snapshot of one pass (superseded by a new pass whose record is written).
    pub(super) fn forget_pass_snapshot(
        &mut self,
        p: PartitionId,
        to: dynakv_ring::NodeId,
        pass: u64,
    ) {
        if self
            .store
            .remove(Space::Clocks, &snapshot_key(p, to, pass))
            .is_ok()
        {
            self.dirty = true;
        }
    }

    /// Forget the snapshots of every pass of a finished transfer; false when the store
    /// refused (they go with the partition's clock otherwise).
    pub(super) fn forget_snapshot(&mut self, p: PartitionId, to: dynakv_ring::NodeId) -> bool {
        let prefix = snapshot_prefix(p, to);
        let Ok(page) = self.store.scan(Space::Clocks, Some(&prefix), 1024) else {
            return false;
        };
        let mut keys = vec![prefix.clone()];
        keys.extend(
            page.into_iter()
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix)),
        );
        let mut done = true;
        for k in keys {
            done &= self.store.remove(Space::Clocks, &k).is_ok();
        }
        self.dirty = true;
        done
    }

    /// Forget partition `p`'s clock and lost keys (its data was dropped).
    pub(super) fn drop_clock(&mut self, p: PartitionId) -> Result<()> {
        if self.clocks.clocks.contains_key(&p) {
            self.store.remove(Space::Clocks, &clock_key(p))?;
            self.dirty = true;
            self.clocks.clocks.remove(&p);
        }
        self.clocks.unpersisted.remove(&p);
        let lost: Vec<Bytes> = self
            .clocks
            .lost
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, k)| k.clone())
            .collect();
        for k in lost {
            self.clocks.lost.remove(&(p, k.clone()));
            self.store.remove(Space::Clocks, &lost_key(p, &k))?;
            self.dirty = true;
        }
        // Transfer snapshots of `p`, and the gap marks older versions kept per incoming
        // transfer (protocol 11; passes replaced them).
        for tag in [SNAPSHOT_TAG, GAP_TAG] {
            let [hi, lo] = p.0.to_be_bytes();
            let prefix = [tag, hi, lo];
            let page = self.store.scan(Space::Clocks, Some(&prefix), 1024)?;
            for (k, _) in page.iter().take_while(|(k, _)| k.starts_with(&prefix)) {
                self.store.remove(Space::Clocks, k)?;
                self.dirty = true;
            }
        }
        Ok(())
    }
}

impl<S: Store> super::node::NodeCore<S> {
    /// This node's clock of partition `p`, if it stored anything there (for checkers and
    /// tests).
    pub fn partition_clock(&self, p: PartitionId) -> Option<&NodeClock> {
        self.ctx.clocks.get(p)
    }

    /// What this node answers a read of `key` with as a replica: its record, or for a key it
    /// holds nothing of, the fill (for checkers and tests: what a reader merges).
    pub fn replica_answer(&self, p: PartitionId, key: &[u8]) -> Result<Option<Object>> {
        super::replica::ReplicaRole::answer(&self.ctx, p, key, None)
            .map_err(|e| crate::Error::Storage(format!("{e:?}")))
    }

    /// Partition clocks held, their actors and ranges in total, and lost keys (for status and
    /// the simulator's metadata measurements).
    pub fn clock_totals(&self) -> (usize, usize, usize, usize) {
        self.ctx.clocks.totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynakv_proto::dvv::Actor;

    /// A clock record with a flipped bit must not load as another clock: it could name dots
    /// nobody stored, and the fill would claim live versions superseded.
    #[test]
    fn a_clock_record_with_any_flipped_bit_is_refused() {
        let mut clock = NodeClock::new();
        let a = Actor::new(dynakv_ring::NodeId(1), 7);
        clock.add_range(a, 1, 40);
        clock.add_range(a, 45, 50);
        let bytes = encode_clock(&clock);
        assert_eq!(decode_clock(&bytes), Some(clock));
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_clock(&bad), None, "bit {bit}");
        }
        assert_eq!(decode_clock(&bytes[..5]), None);
    }
}

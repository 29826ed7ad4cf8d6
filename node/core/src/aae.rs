//! Active anti-entropy: per-partition hash trees, kept up to date on every write, compared between
//! replicas by descending only into the branches that differ.
//!
//! A partition's tree has [`BUCKETS`] leaf buckets (a key's bucket comes from its hash). A bucket's
//! hash is the wrapping sum of `h(key, object)` over its keys, so a write updates it in O(1):
//! subtract the old term, add the new one. [`SEGMENTS`] segment hashes sum the buckets below them.
//! Trees live in memory and are built from the store the first time a partition is compared
//! (at startup, or after a restart, every tree is rebuilt lazily).
//!
//! An exchange between replicas X and Y of a partition:
//! 1. X sends its segment hashes;
//! 2. Y answers with its bucket hashes under the segments that differ;
//! 3. X sends its (key, object hash) lists for the buckets that differ;
//! 4. Y sends the objects X lacks or holds differently, and names the keys it wants;
//! 5. X sends those. Both sides sync-merge what they receive.
//!
//! So the work of a repair grows with the number of differing keys (times the keys that share a
//! bucket with them), not with the size of the partition. Lost messages just end the exchange;
//! the next one retries.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};
use rand::Rng;

use super::aae_bucket::Bucket;
use super::ctx::Ctx;
use super::ctx::{tombstone_only, DataEvent};
use super::liveness::PeerView;
use super::types::{AaeMsg, Object};
use crate::error::Result;
use crate::store::{Space, Store};

/// Leaf buckets per partition tree.
pub const BUCKETS: usize = 1024;
/// Segments (inner nodes) per partition tree; each covers `BUCKETS / SEGMENTS` buckets.
pub const SEGMENTS: usize = 32;
const PER_SEGMENT: usize = BUCKETS / SEGMENTS;

/// The hash tree of one partition on one replica.
#[derive(Debug, Clone)]
pub struct PartitionTree {
    buckets: Vec<u64>,
    keys: Vec<Bucket>,
}

impl Default for PartitionTree {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            keys: vec![Bucket::default(); BUCKETS],
        }
    }
}

fn bucket_of(key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) % BUCKETS as u64) as usize
}

fn term(key: &[u8], object_hash: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, object_hash)
}

/// The hash of a stored record, the same on every replica holding an equal object.
pub fn object_hash(record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(record)
}

impl PartitionTree {
    /// Record that `key` now holds an object with `hash` (`None`: the key was removed).
    pub fn update(&mut self, key: &[u8], hash: Option<u64>) {
        let b = bucket_of(key);
        let old = match hash {
            Some(h) => self.keys[b].insert(key, h),
            None => self.keys[b].remove(key),
        };
        if let Some(old) = old {
            self.buckets[b] = self.buckets[b].wrapping_sub(term(key, old));
        }
        if let Some(h) = hash {
            self.buckets[b] = self.buckets[b].wrapping_add(term(key, h));
        }
    }

    /// The segment hashes (the tree's second level).
    pub fn segments(&self) -> Vec<u64> {
        self.buckets
            .chunks(PER_SEGMENT)
            .map(|c| c.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
            .collect()
    }

    /// Bucket hashes under the given segments.
    pub fn buckets_under(&self, segments: &[usize]) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for s in segments {
            for b in s * PER_SEGMENT..(s + 1) * PER_SEGMENT {
                if let Some(h) = self.buckets.get(b) {
                    out.push((b as u16, *h));
                }
            }
        }
        out
    }

    /// The keys and object hashes in a bucket.
    pub fn keys_in(&self, bucket: usize) -> Vec<(Bytes, u64)> {
        self.keys
            .get(bucket)
            .map(Bucket::to_vec)
            .unwrap_or_default()
    }

    /// Number of keys in the tree.
    pub fn len(&self) -> usize {
        self.keys.iter().map(Bucket::len).sum()
    }

    /// Does the tree hold no keys?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AntiEntropy {
    /// The tree of a partition, built from the store the first time it is needed.
    pub(super) fn tree<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        p: PartitionId,
    ) -> Result<&mut PartitionTree> {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.trees.entry(p) {
            let mut tree = PartitionTree::default();
            let mut scanned = Vec::new();
            ctx.scan_each(Space::Partition(p), |k, v| {
                tree.update(k, Some(object_hash(v)));
                if let Ok(o) = crate::codec::decode_object(v) {
                    scanned.push((Bytes::copy_from_slice(k), tombstone_only(&o)));
                }
            })?;
            // The reaper rebuilds its view of tombstone-only keys from the same scan.
            for (key, tombstone_only) in scanned {
                ctx.events.push(DataEvent::Scanned {
                    partition: p,
                    key,
                    tombstone_only,
                });
            }
            ctx.stats.aae_tree_builds += 1;
            slot.insert(tree);
        }
        self.trees
            .get_mut(&p)
            .ok_or_else(|| crate::Error::Storage("tree vanished".into()))
    }

    /// Called from the maintenance tick: compare one partition waiting out of turn (`soon`)
    /// with every other replica believed up; and, once `next_exchange` has come, start one
    /// exchange (next partition, random peer believed up). The round goes on however often
    /// partitions are asked for out of turn, so every partition is compared in bounded time.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>, peers: &PeerView<'_>) {
        let n = usize::from(ctx.cfg.n);
        if let Some(p) = self.soon.pop_first() {
            if ctx.mine.contains(&p) {
                for peer in other_replicas(ctx, p, n, peers) {
                    self.start_exchange(ctx, p, peer);
                }
            }
        }
        if ctx.now < self.next_exchange {
            return;
        }
        self.next_exchange = ctx.now + u64::from(ctx.cfg.aae_interval_ms) * 1000;
        let mine = &ctx.mine;
        if mine.is_empty() {
            return;
        }
        self.cursor = (self.cursor + 1) % mine.len();
        let p = mine[self.cursor];
        let peers = other_replicas(ctx, p, n, peers);
        if peers.is_empty() {
            return;
        }
        let peer = peers[ctx.rng.gen_range(0..peers.len())];
        self.start_exchange(ctx, p, peer);
    }

    /// Step 1 of an exchange: send `peer` the segment hashes of this node's tree of `p`.
    fn start_exchange<S: Store>(&mut self, ctx: &mut Ctx<S>, p: PartitionId, peer: NodeId) {
        let hashes = match self.tree(ctx, p) {
            Ok(t) => t.segments(),
            Err(e) => {
                tracing::warn!(partition = %p, error = %e, "cannot build hash tree");
                return;
            }
        };
        let session = ctx.next_op_id();
        ctx.stats.aae_exchanges += 1;
        super::clock_sync::send_clock(ctx, p, peer, true);
        ctx.send(
            peer,
            AaeMsg::Segments {
                session,
                partition: p,
                hashes,
            },
        );
    }

    /// Steps 2-5 of an exchange (see the module doc). Only partitions this node replicates are
    /// compared; every list is capped, and objects are sent up to a byte budget (what does not
    /// fit is repaired by the next exchange). A key that cannot be read is skipped, not fatal.
    pub(super) fn on_msg<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        msg: AaeMsg,
    ) -> Result<()> {
        let partition = msg.partition();
        let n = usize::from(ctx.cfg.n);
        if !ctx.map.preference_list(partition, n).contains(&ctx.id()) {
            return Ok(()); // not ours (maps may differ for a moment): ignore, never build a tree
        }
        let budget = ctx.cfg.max_message_bytes / 2;
        match msg {
            AaeMsg::Segments {
                session, hashes, ..
            } => {
                let tree = self.tree(ctx, partition)?;
                let differing: Vec<usize> = tree
                    .segments()
                    .iter()
                    .zip(hashes.iter().chain(std::iter::repeat(&0)))
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, _)| i)
                    .collect();
                if !differing.is_empty() {
                    let buckets = tree.buckets_under(&differing);
                    ctx.send(
                        from,
                        AaeMsg::Buckets {
                            session,
                            partition,
                            buckets,
                        },
                    );
                }
            }
            AaeMsg::Buckets {
                session, buckets, ..
            } => {
                let tree = self.tree(ctx, partition)?;
                let mut out = Vec::new();
                let mut bytes = 0usize;
                for (b, theirs) in buckets.into_iter().take(BUCKETS) {
                    let ours = tree.buckets.get(usize::from(b)).copied().unwrap_or(0);
                    if ours != theirs {
                        let keys = tree.keys_in(usize::from(b));
                        bytes += keys.iter().map(|(k, _)| k.len() + 8).sum::<usize>();
                        out.push((b, keys));
                        if bytes > budget {
                            break;
                        }
                    }
                }
                if !out.is_empty() {
                    ctx.send(
                        from,
                        AaeMsg::Keys {
                            session,
                            partition,
                            buckets: out,
                        },
                    );
                }
            }
            AaeMsg::Keys {
                session, buckets, ..
            } => {
                let mut objects = Vec::new();
                let mut want = Vec::new();
                let mut bytes = 0usize;
                for (b, their_keys) in buckets.into_iter().take(BUCKETS) {
                    let ours: BTreeMap<Bytes, u64> = self
                        .tree(ctx, partition)?
                        .keys_in(usize::from(b))
                        .into_iter()
                        .collect();
                    let theirs: BTreeMap<Bytes, u64> = their_keys.into_iter().collect();
                    let all: BTreeSet<&Bytes> = ours.keys().chain(theirs.keys()).collect();
                    for k in all {
                        // A key only they hold is also answered with our fill: a copy we
                        // removed (a reaped tombstone) tells them what it superseded.
                        let (send, ask) = match (ours.get(k), theirs.get(k)) {
                            (Some(a), Some(b)) => (a != b, a != b),
                            (Some(_), None) => (true, false),
                            (None, Some(_)) => (true, true),
                            (None, None) => (false, false),
                        };
                        if ask {
                            want.push(k.clone());
                        }
                        if send && bytes <= budget {
                            match ctx.load(partition, k) {
                                Ok(Some(o)) => {
                                    bytes += k.len() + o.value_count() * 64;
                                    bytes += o
                                        .values()
                                        .iter()
                                        .filter_map(|v| v.data().map(|d| d.len()))
                                        .sum::<usize>();
                                    objects.push((k.clone(), o));
                                }
                                Ok(None) => {
                                    if let Some(f) = ctx.filled_absent(partition, k) {
                                        bytes += k.len() + 64;
                                        objects.push((k.clone(), f));
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(partition = %partition, error = %e, "skipping an unreadable key");
                                    ctx.stats.corrupt_records += 1;
                                }
                            }
                        }
                    }
                }
                ctx.stats.aae_keys_repaired += (objects.len() + want.len()) as u64;
                ctx.send(
                    from,
                    AaeMsg::Exchange {
                        session,
                        partition,
                        objects,
                        want,
                    },
                );
            }
            AaeMsg::Exchange { objects, want, .. } => {
                Self::merge_objects(ctx, partition, objects);
                let mut back = Vec::new();
                let mut bytes = 0usize;
                for k in want {
                    if bytes > budget {
                        break;
                    }
                    match ctx.load(partition, &k) {
                        Ok(Some(o)) => {
                            bytes += k.len()
                                + o.values()
                                    .iter()
                                    .filter_map(|v| v.data().map(|d| d.len() + 64))
                                    .sum::<usize>();
                            back.push((k, o));
                        }
                        Ok(None) => {
                            if let Some(f) = ctx.filled_absent(partition, &k) {
                                bytes += k.len() + 64;
                                back.push((k, f));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(partition = %partition, error = %e, "skipping an unreadable key");
                            ctx.stats.corrupt_records += 1;
                        }
                    }
                }
                if !back.is_empty() {
                    ctx.send(
                        from,
                        AaeMsg::Objects {
                            partition,
                            objects: back,
                        },
                    );
                }
            }
            AaeMsg::Objects { objects, .. } => Self::merge_objects(ctx, partition, objects),
            AaeMsg::Clock {
                clock, ask_back, ..
            } => {
                super::clock_sync::on_clock(ctx, from, partition, &clock, ask_back)?;
            }
            AaeMsg::ClockReply { objects, dead, .. } => {
                super::clock_sync::on_clock_reply(ctx, partition, objects, &dead)?;
            }
        }
        Ok(())
    }

    fn merge_objects<S: Store>(ctx: &mut Ctx<S>, p: PartitionId, objects: Vec<(Bytes, Object)>) {
        for (k, o) in objects {
            if let Err(e) = ctx.merge_into_store(p, &k, &o) {
                tracing::warn!(partition = %p, ?e, "anti-entropy merge failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_updates_match_a_rebuild() {
        let mut a = PartitionTree::default();
        for i in 0..500u64 {
            a.update(format!("k{i}").as_bytes(), Some(i));
        }
        a.update(b"k7", Some(99));
        a.update(b"k8", None);
        let mut b = PartitionTree::default();
        for i in 0..500u64 {
            match i {
                7 => b.update(b"k7", Some(99)),
                8 => {}
                _ => b.update(format!("k{i}").as_bytes(), Some(i)),
            }
        }
        assert_eq!(a.segments(), b.segments());
        assert_eq!(a.len(), 499);
        b.update(b"k9", Some(1000));
        let diff: Vec<usize> = a
            .segments()
            .iter()
            .zip(b.segments())
            .enumerate()
            .filter(|(_, (x, y))| **x != *y)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(diff.len(), 1, "one changed key changes one segment");
    }
}

/// The other replicas of `p` this node believes up: who it may compare `p` with.
fn other_replicas<S: Store>(
    ctx: &Ctx<S>,
    p: PartitionId,
    n: usize,
    peers: &PeerView<'_>,
) -> Vec<NodeId> {
    ctx.map
        .preference_list(p, n)
        .into_iter()
        .filter(|x| *x != ctx.id() && !peers.is_down(*x))
        .collect()
}

/// Anti-entropy's state: the hash trees of the partitions compared so far and the schedule.
///
/// Inputs (routed by `NodeCore`, each with the shared [`Ctx`]): `PeerMsg::Aae` (`on_msg`), the
/// maintenance tick (`tick`, with a [`PeerView`] to pick a peer believed up; it starts an
/// exchange once `next_exchange` has come), and every [`DataEvent`] (`on_data_event`, before
/// the next input). Outputs: messages through `Ctx::send`, merges through the data path.
#[derive(Debug, Default)]
pub(super) struct AntiEntropy {
    /// Built trees, per partition; rebuilt from the store on first use.
    pub(super) trees: BTreeMap<PartitionId, PartitionTree>,
    /// Which of this node's partitions the next exchange compares.
    pub(super) cursor: usize,
    /// When the next exchange starts (local clock).
    pub(super) next_exchange: u64,
    /// Partitions to compare with every other replica at the next tick, out of turn
    /// ([`DataEvent::CompareSoon`]).
    pub(super) soon: BTreeSet<PartitionId>,
}

impl AntiEntropy {
    /// Keep the built trees in step with the data ([`DataEvent`]s routed here by `NodeCore`).
    pub(super) fn on_data_event(&mut self, event: &DataEvent) {
        match event {
            DataEvent::Written {
                partition,
                key,
                hash,
                ..
            } => {
                if let Some(tree) = self.trees.get_mut(partition) {
                    tree.update(key, Some(*hash));
                }
            }
            DataEvent::Removed { partition, key } => {
                if let Some(tree) = self.trees.get_mut(partition) {
                    tree.update(key, None);
                }
            }
            DataEvent::PartitionDropped { partition } => {
                self.trees.remove(partition);
                self.soon.remove(partition);
            }
            DataEvent::CompareSoon { partition } => {
                self.soon.insert(*partition);
            }
            DataEvent::Scanned { .. } => {}
        }
    }
}

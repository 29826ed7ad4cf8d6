//! In-memory store for the simulator: models a disk with a page cache, so a crash loses every
//! write that was not synced, and a failing disk: a sync that errors (and, as Linux does after a
//! failed fsync, forgets the writes it could not persist while reads still see them) and a full
//! disk that refuses writes.

use std::collections::BTreeMap;

use dynakv_ring::PartitionId;

use super::{Entry, Space, Store};
use crate::error::Result;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// A record removed from a partition space: (partition, key, what it held).
pub type Removed = (PartitionId, Vec<u8>, Vec<u8>);

/// A record of a space that holds objects (a partition or the hints), as a sync made it
/// durable: (space, record key, bytes).
pub type Synced = (Space, Vec<u8>, Vec<u8>);

/// Synced batches that [`MemStore::power_loss`] can still take back.
const UNDO_BATCHES: usize = 32;

/// How to take back one synced change.
#[derive(Debug, Clone)]
enum Undo {
    Key(Space, Vec<u8>, Option<Vec<u8>>),
    Tree(PartitionId, Option<Tree>),
}

#[derive(Debug, Clone)]
enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Remove(Space, Vec<u8>),
    Drop(PartitionId),
}

/// An in-memory [`Store`]: reads see every write; [`MemStore::crash`] forgets unsynced ones.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    live: BTreeMap<Space, Tree>,
    durable: BTreeMap<Space, Tree>,
    journal: Vec<Op>,
    syncs: u64,
    /// Syncs still to fail (injected).
    failing_syncs: u32,
    /// Writes are refused with "no space left" (injected).
    full: bool,
    /// Every this many-th write is refused (injected; 0: off): a disk with a few free blocks
    /// left, where one write lands and the next does not.
    refuse_every: u32,
    /// Writes tried while `refuse_every` is on.
    tried: u64,
    /// Writes to these spaces are refused (injected): a disk that filled between two writes.
    refused_spaces: Vec<Space>,
    /// Writes a failed sync dropped: visible to reads, gone after a crash.
    lost: usize,
    /// The last synced batches, newest last, as the changes that undo them.
    undo: std::collections::VecDeque<Vec<Undo>>,
    /// Records removed from partition spaces, with what they held, since the last
    /// [`MemStore::take_removed`]; `None` unless [`MemStore::log_changes`] turned it on.
    removed: Option<Vec<Removed>>,
    /// Object records made durable since the last [`MemStore::take_synced`]; `None` unless
    /// [`MemStore::log_changes`] turned it on.
    synced: Option<Vec<Synced>>,
}

impl MemStore {
    /// An empty store (a fresh or wiped disk).
    pub fn new() -> Self {
        Self::default()
    }

    /// This store, keeping every record removed from a partition space (with what it held)
    /// for [`MemStore::take_removed`], and every object record a sync made durable for
    /// [`MemStore::take_synced`]. The simulator checks each removal against the node's clock,
    /// and takes each durable object as evidence that the writes it holds were applied (a
    /// coordinator can store its new object and then fail before sending it anywhere).
    /// Whoever turns it on must take both, or they pile up.
    pub fn log_changes(mut self) -> Self {
        self.removed = Some(Vec::new());
        self.synced = Some(Vec::new());
        self
    }

    /// The object records (partition and hint spaces) syncs made durable since the last call,
    /// in order. Empty unless [`MemStore::log_changes`] turned the log on.
    pub fn take_synced(&mut self) -> Vec<Synced> {
        self.synced.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The records removed from partition spaces since the last call: (partition, key, what the
    /// record held). Empty unless [`MemStore::log_changes`] turned the log on.
    pub fn take_removed(&mut self) -> Vec<Removed> {
        self.removed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Simulate a power loss: every write since the last sync is gone.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
        self.journal.clear();
        self.lost = 0;
    }

    /// A power loss that keeps the first `keep` writes since the last sync, in order, and
    /// loses the rest (sled appends to its log in the background, so a crash leaves some
    /// unsynced writes on disk, always a prefix). The kept writes become a synced batch (a
    /// later [`MemStore::power_loss`] can take them back). Returns how many were kept.
    pub fn crash_torn(&mut self, keep: usize) -> usize {
        let keep = keep.min(self.journal.len());
        self.journal.truncate(keep);
        // Reuse the sync path for the kept prefix (its undo batch included), whatever syncs
        // are set to fail: these writes reached the disk on their own.
        let failing = std::mem::take(&mut self.failing_syncs);
        let kept = if keep > 0 && self.sync().is_ok() {
            keep
        } else {
            0
        };
        self.syncs = self.syncs.saturating_sub(u64::from(kept > 0));
        self.failing_syncs = failing;
        self.crash();
        kept
    }

    /// A power loss on a disk that lies about durability (a volatile write cache, a firmware
    /// bug) or a restore from an old copy: like [`MemStore::crash`], and the last `batches`
    /// *synced* batches are gone too (at most the last 32). Returns how many were taken back.
    pub fn power_loss(&mut self, batches: usize) -> usize {
        let mut taken = 0;
        while taken < batches {
            let Some(batch) = self.undo.pop_back() else {
                break;
            };
            for u in batch.into_iter().rev() {
                match u {
                    Undo::Key(space, key, prev) => {
                        let tree = self.durable.entry(space).or_default();
                        match prev {
                            Some(v) => tree.insert(key, v),
                            None => tree.remove(&key),
                        };
                    }
                    Undo::Tree(p, prev) => {
                        match prev {
                            Some(t) => self.durable.insert(Space::Partition(p), t),
                            None => self.durable.remove(&Space::Partition(p)),
                        };
                    }
                }
            }
            taken += 1;
        }
        self.crash();
        taken
    }

    /// A failing disk: flip one bit of up to `count` stored object records (partition records
    /// and hints) whose object key passes `only` (`pick(n)` chooses among `n` candidates; the
    /// bit comes from `pick` too). The change hits the synced copy, and the cached one unless a
    /// newer write is still unsynced. Returns the partition and object key of each record hit.
    pub fn corrupt(
        &mut self,
        count: usize,
        mut pick: impl FnMut(usize) -> usize,
        only: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Vec<(PartitionId, Vec<u8>)> {
        // Record keys, each hit at most once: a second flip of the same bit would undo the
        // first (seed 4082 of the 100,000-seed soak: a record "corrupted" twice was intact).
        let mut hit: Vec<(Space, Vec<u8>)> = Vec::new();
        let mut out = Vec::new();
        let only = &only;
        for _ in 0..count {
            let candidates: Vec<(Space, Vec<u8>)> = self
                .durable
                .iter()
                .filter(|(s, _)| matches!(s, Space::Partition(_) | Space::Hints))
                .flat_map(|(s, t)| {
                    let hit = &hit;
                    t.iter()
                        .filter(move |(k, v)| {
                            super::object_key(*s, k).is_some_and(|key| only(key, v))
                                && !hit.iter().any(|(hs, hk)| hs == s && hk == *k)
                        })
                        .map(move |(k, _)| (*s, k.clone()))
                })
                .collect();
            if candidates.is_empty() {
                break;
            }
            let (space, key) = candidates[pick(candidates.len()) % candidates.len()].clone();
            let target = match space {
                Space::Partition(p) => (p, key.clone()),
                _ => match crate::hints::parse_hint_key(&key) {
                    Some((_, p, object_key)) => (p, object_key.to_vec()),
                    None => continue,
                },
            };
            let Some(value) = self.durable.get_mut(&space).and_then(|t| t.get_mut(&key)) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let before = value.clone();
            let bit = pick(value.len() * 8);
            value[bit / 8] ^= 1 << (bit % 8);
            let after = value.clone();
            if let Some(cached) = self.live.get_mut(&space).and_then(|t| t.get_mut(&key)) {
                if *cached == before {
                    *cached = after;
                }
            }
            hit.push((space, key));
            out.push(target);
        }
        out
    }

    /// Writes that a crash right now would lose and that a sync could still save.
    pub fn unsynced_ops(&self) -> usize {
        self.journal.len()
    }

    /// Writes that a failed sync dropped: reads still see them but no sync will save them
    /// (PostgreSQL's "fsyncgate": after a failed fsync the kernel marks the pages clean).
    pub fn lost_ops(&self) -> usize {
        self.lost
    }

    /// Make the next `n` syncs fail with an I/O error (a failing disk).
    pub fn fail_next_syncs(&mut self, n: u32) {
        self.failing_syncs = n;
    }

    /// Fill the disk (puts and removes fail with "no space left") or free it again.
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    /// Refuse every `every`-th write from now on (0: stop): a nearly full disk.
    pub fn set_nearly_full(&mut self, every: u32) {
        self.refuse_every = every;
        self.tried = 0;
    }

    /// Refuse every write to `spaces` (empty: stop).
    pub fn refuse_spaces(&mut self, spaces: &[Space]) {
        self.refused_spaces = spaces.to_vec();
    }

    fn refuse_when_full(&mut self, space: Space) -> Result<()> {
        let nearly = self.refuse_every > 0 && {
            self.tried += 1;
            self.tried % u64::from(self.refuse_every) == 0
        };
        if self.full || nearly || self.refused_spaces.contains(&space) {
            return Err(crate::error::Error::Storage(
                "no space left on device (simulated)".into(),
            ));
        }
        Ok(())
    }

    /// The live entries of `space` in key order, after `after` (exclusive).
    fn entries_after<'a>(
        &'a self,
        space: Space,
        after: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a> {
        let Some(tree) = self.live.get(&space) else {
            return Box::new(std::iter::empty());
        };
        match after {
            Some(a) => Box::new(
                tree.range::<[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(tree.iter()),
        }
    }

    /// How many times [`Store::sync`] ran.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    fn apply(map: &mut BTreeMap<Space, Tree>, op: &Op) {
        match op {
            Op::Put(s, k, v) => {
                map.entry(*s).or_default().insert(k.clone(), v.clone());
            }
            Op::Remove(s, k) => {
                if let Some(t) = map.get_mut(s) {
                    t.remove(k);
                }
            }
            Op::Drop(p) => {
                map.remove(&Space::Partition(*p));
            }
        }
    }
}

impl Store for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.live.get(&space).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        self.refuse_when_full(space)?;
        let op = Op::Put(space, key.to_vec(), value.to_vec());
        Self::apply(&mut self.live, &op);
        self.journal.push(op);
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<()> {
        self.refuse_when_full(space)?;
        if let (Some(log), Space::Partition(p)) = (self.removed.as_mut(), space) {
            if let Some(old) = self.live.get(&space).and_then(|t| t.get(key)) {
                log.push((p, key.to_vec(), old.clone()));
            }
        }
        let op = Op::Remove(space, key.to_vec());
        Self::apply(&mut self.live, &op);
        self.journal.push(op);
        Ok(())
    }

    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>> {
        Ok(self
            .entries_after(space, after)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn visit(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(usize, Option<Vec<u8>>)> {
        let mut seen = 0;
        let mut last: Option<&Vec<u8>> = None;
        for (k, v) in self.entries_after(space, after).take(limit) {
            f(k, v);
            seen += 1;
            last = Some(k);
        }
        Ok((seen, last.cloned()))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        Ok(self
            .live
            .iter()
            .filter_map(|(s, t)| match s {
                Space::Partition(p) if !t.is_empty() => Some(*p),
                _ => None,
            })
            .collect())
    }

    fn drop_partition(&mut self, p: PartitionId) -> Result<()> {
        let op = Op::Drop(p);
        Self::apply(&mut self.live, &op);
        self.journal.push(op);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            self.lost += self.journal.len();
            self.journal.clear();
            return Err(crate::error::Error::Storage(
                "fsync failed: input/output error (simulated)".into(),
            ));
        }
        let mut undo = Vec::new();
        for op in std::mem::take(&mut self.journal) {
            undo.push(match &op {
                Op::Put(space, k, _) | Op::Remove(space, k) => Undo::Key(
                    *space,
                    k.clone(),
                    self.durable.get(space).and_then(|t| t.get(k)).cloned(),
                ),
                Op::Drop(p) => Undo::Tree(*p, self.durable.get(&Space::Partition(*p)).cloned()),
            });
            Self::apply(&mut self.durable, &op);
            if let (Some(log), Op::Put(space, k, v)) = (self.synced.as_mut(), op) {
                if super::object_key(space, &k).is_some() {
                    log.push((space, k, v));
                }
            }
        }
        if !undo.is_empty() {
            if self.undo.len() == UNDO_BATCHES {
                self.undo.pop_front();
            }
            self.undo.push_back(undo);
        }
        self.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loses_only_unsynced_writes() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(3));
        s.put(p, b"a", b"1")?;
        s.sync()?;
        s.put(p, b"b", b"2")?;
        s.remove(p, b"a")?;
        assert_eq!(s.get(p, b"a")?, None);
        assert_eq!(s.unsynced_ops(), 2);
        s.crash();
        assert_eq!(s.get(p, b"a")?, Some(b"1".to_vec()));
        assert_eq!(s.get(p, b"b")?, None);
        Ok(())
    }

    #[test]
    fn a_failed_sync_forgets_its_writes_and_a_full_disk_refuses() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(1));
        s.put(p, b"a", b"1")?;
        s.fail_next_syncs(1);
        assert!(s.sync().is_err());
        // Reads still see the write, but no later sync saves it: a crash loses it.
        assert_eq!(s.get(p, b"a")?, Some(b"1".to_vec()));
        assert_eq!((s.unsynced_ops(), s.lost_ops()), (0, 1));
        s.sync()?;
        s.crash();
        assert_eq!(s.get(p, b"a")?, None);
        assert_eq!(s.lost_ops(), 0);
        s.set_full(true);
        assert!(s.put(p, b"b", b"2").is_err());
        assert!(s.remove(p, b"b").is_err());
        s.set_full(false);
        s.put(p, b"b", b"2")?;
        Ok(())
    }

    #[test]
    fn a_nearly_full_disk_refuses_every_few_writes_and_spaces_can_be_refused() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(1));
        s.set_nearly_full(3);
        let landed: Vec<bool> = (0..6u8).map(|i| s.put(p, &[i], b"v").is_ok()).collect();
        assert_eq!(landed, [true, true, false, true, true, false]);
        assert_eq!(s.get(p, &[2])?, None, "a refused write is not visible");
        s.set_nearly_full(0);
        assert!((0..6u8).all(|i| s.put(p, &[i], b"v").is_ok()));
        s.refuse_spaces(&[Space::Meta]);
        assert!(s.put(Space::Meta, b"m", b"1").is_err());
        assert!(s.remove(Space::Meta, b"m").is_err());
        s.put(p, b"data", b"1")?;
        s.refuse_spaces(&[]);
        s.put(Space::Meta, b"m", b"1")?;
        Ok(())
    }

    #[test]
    fn power_loss_takes_back_synced_batches_newest_first() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(2));
        s.put(p, b"a", b"1")?;
        s.sync()?;
        s.put(p, b"a", b"2")?;
        s.put(p, b"b", b"1")?;
        s.sync()?;
        s.drop_partition(PartitionId(2))?;
        s.sync()?;
        s.put(p, b"c", b"unsynced")?;
        assert_eq!(s.power_loss(2), 2);
        assert_eq!(s.get(p, b"a")?, Some(b"1".to_vec()));
        assert_eq!(s.get(p, b"b")?, None);
        assert_eq!(s.get(p, b"c")?, None);
        assert_eq!(s.power_loss(5), 1);
        assert_eq!(s.partitions()?, Vec::<PartitionId>::new());
        Ok(())
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_writes() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(1));
        s.put(p, b"a", b"synced")?;
        s.sync()?;
        s.put(p, b"b", b"first")?;
        s.remove(p, b"a")?;
        s.put(p, b"c", b"third")?;
        assert_eq!(s.crash_torn(2), 2);
        assert_eq!(s.get(p, b"b")?, Some(b"first".to_vec()));
        assert_eq!(s.get(p, b"a")?, None, "the removal was second: kept");
        assert_eq!(s.get(p, b"c")?, None, "the third write was lost");
        assert_eq!(s.unsynced_ops(), 0);
        // The kept prefix is a batch a power loss can take back.
        s.power_loss(1);
        assert_eq!(s.get(p, b"a")?, Some(b"synced".to_vec()));
        assert_eq!(s.get(p, b"b")?, None);
        Ok(())
    }

    #[test]
    fn only_object_records_that_a_sync_made_durable_are_logged() -> Result<()> {
        let p = Space::Partition(PartitionId(3));
        let mut plain = MemStore::new();
        plain.put(p, b"k", b"v")?;
        plain.sync()?;
        assert!(plain.take_synced().is_empty(), "off unless turned on");

        let mut s = MemStore::new().log_changes();
        s.put(p, b"a", b"1")?;
        s.put(Space::Clocks, b"c", b"clock")?;
        s.put(Space::Meta, b"m", b"meta")?;
        assert!(s.take_synced().is_empty(), "not durable yet");
        s.sync()?;
        assert_eq!(s.take_synced(), vec![(p, b"a".to_vec(), b"1".to_vec())]);
        assert!(s.take_synced().is_empty(), "taken once");
        // A failed sync makes nothing durable; a crash forgets what was not synced.
        s.put(p, b"b", b"2")?;
        s.fail_next_syncs(1);
        assert!(s.sync().is_err());
        s.put(p, b"c", b"3")?;
        s.crash();
        assert!(s.take_synced().is_empty());
        // A torn crash makes the prefix it keeps durable.
        s.put(p, b"d", b"4")?;
        s.put(p, b"e", b"5")?;
        assert_eq!(s.crash_torn(1), 1);
        assert_eq!(s.take_synced(), vec![(p, b"d".to_vec(), b"4".to_vec())]);
        Ok(())
    }

    #[test]
    fn scan_pages_in_key_order() -> Result<()> {
        let mut s = MemStore::new();
        let p = Space::Partition(PartitionId(0));
        for k in [b"c", b"a", b"b", b"d"] {
            s.put(p, k, b"v")?;
        }
        let first = s.scan(p, None, 2)?;
        assert_eq!(
            first.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let rest = s.scan(p, Some(b"b"), 10)?;
        assert_eq!(
            rest.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
            vec![b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(s.partitions()?, vec![PartitionId(0)]);
        Ok(())
    }
}

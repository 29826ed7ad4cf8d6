//! In-memory store for the simulator: models a disk with a page cache, so a crash loses every
//! write that was not synced.

use std::collections::BTreeMap;

use dynakv_ring::PartitionId;

use super::{Entry, Space, Store};
use crate::error::Result;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

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
}

impl MemStore {
    /// An empty store (a fresh or wiped disk).
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulate a power loss: every write since the last sync is gone.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
        self.journal.clear();
    }

    /// Writes that a crash right now would lose.
    pub fn unsynced_ops(&self) -> usize {
        self.journal.len()
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
        let op = Op::Put(space, key.to_vec(), value.to_vec());
        Self::apply(&mut self.live, &op);
        self.journal.push(op);
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<()> {
        let op = Op::Remove(space, key.to_vec());
        Self::apply(&mut self.live, &op);
        self.journal.push(op);
        Ok(())
    }

    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>> {
        let Some(tree) = self.live.get(&space) else {
            return Ok(Vec::new());
        };
        let iter: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = match after {
            Some(a) => Box::new(
                tree.range::<[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(tree.iter()),
        };
        Ok(iter
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
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
        for op in std::mem::take(&mut self.journal) {
            Self::apply(&mut self.durable, &op);
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

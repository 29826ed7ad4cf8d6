//! The production store: sled 0.34, one tree per partition plus `meta`, `hints` and `transfers`.

use std::path::Path;

use dynakv_ring::PartitionId;

use dynakv_core::error::{Error, Result};
use dynakv_core::store::{Entry, Space, Store};

/// A [`Store`] on a sled database in a directory.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
}

fn storage(e: sled::Error) -> Error {
    Error::Storage(e.to_string())
}

impl SledStore {
    /// Open (or create) the database in `dir`. A directory sled cannot read gives a clear error
    /// naming the directory instead of a panic.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            // The core syncs explicitly (group commit); the background flush only bounds what an
            // unsynced run could lose.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| {
                Error::DataDir(format!(
                    "cannot open the data directory {}: {e} (is another node using it, or is it corrupt?)",
                    dir.display()
                ))
            })?;
        Ok(Self { db })
    }

    fn tree(&self, space: Space) -> Result<sled::Tree> {
        self.db.open_tree(space.name()).map_err(storage)
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(space)?
            .get(key)
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(space)?.insert(key, value).map_err(storage)?;
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<()> {
        self.tree(space)?.remove(key).map_err(storage)?;
        Ok(())
    }

    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>> {
        let tree = self.tree(space)?;
        let iter = match after {
            Some(a) => {
                tree.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(storage)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let Ok(name) = std::str::from_utf8(&name) else {
                continue;
            };
            if let Some(Space::Partition(p)) = Space::from_name(name) {
                if !self.tree(Space::Partition(p))?.is_empty() {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn drop_partition(&mut self, p: PartitionId) -> Result<()> {
        self.db
            .drop_tree(Space::Partition(p).name())
            .map_err(storage)?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.db.flush().map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_lists_partitions() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Storage(e.to_string()))?;
        {
            let mut s = SledStore::open(dir.path())?;
            s.put(Space::Partition(PartitionId(7)), b"k", b"v")?;
            s.put(Space::Meta, b"identity", b"x")?;
            s.sync()?;
        }
        let mut s = SledStore::open(dir.path())?;
        assert_eq!(
            s.get(Space::Partition(PartitionId(7)), b"k")?,
            Some(b"v".to_vec())
        );
        assert_eq!(s.partitions()?, vec![PartitionId(7)]);
        s.drop_partition(PartitionId(7))?;
        assert_eq!(s.partitions()?, Vec::<PartitionId>::new());
        assert_eq!(s.get(Space::Meta, b"identity")?, Some(b"x".to_vec()));
        Ok(())
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"garbage").expect("write");
        let err = SledStore::open(&file).expect_err("must fail");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}

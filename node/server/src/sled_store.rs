//! The production store: sled 0.34, one tree per partition plus `meta`, `hints` and `transfers`.
//!
//! # Durability
//! sled 0.34's `flush()` writes its log with `pwrite` + `sync_file_range`, which neither flushes
//! the drive's write cache nor the metadata of a growing file, and it never syncs blob files (the
//! separate files that hold pages too large for the log). So [`Store::sync`] here is:
//! 1. `flush()` — every earlier write reaches the log file;
//! 2. `fsync` of every blob file written since the last barrier, then of the `blobs` directory
//!    (so the new names survive);
//! 3. `fdatasync` of the log file `db` (through our own handle: a sync applies to the file, not to
//!    the descriptor that wrote).
//!
//! Only when all three succeed does the core let an ack leave. Any error is returned and the core
//! stops acknowledging (see `NodeCore::drain_effects`): after a failed fsync the kernel may have
//! dropped the dirty pages, so a later "successful" sync would prove nothing.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use dynakv_ring::PartitionId;

use dynakv_core::error::{Error, Result};
use dynakv_core::store::{Entry, Space, Store};

/// A [`Store`] on a sled database in a directory.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    /// sled's log file, kept open for `fdatasync`.
    log: File,
    /// sled's blob directory.
    blobs: PathBuf,
    /// Blob files already made durable (sled never rewrites a blob file in place).
    synced_blobs: BTreeSet<OsString>,
    /// Barriers completed (for tests and status).
    barriers: u64,
}

fn storage(e: sled::Error) -> Error {
    Error::Storage(e.to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

impl SledStore {
    /// Open (or create) the database in `dir` with the default page cache
    /// ([`crate::config::DEFAULT_CACHE_MB`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, crate::config::DEFAULT_CACHE_MB << 20)
    }

    /// Open (or create) the database in `dir`, keeping at most about `cache_bytes` of pages in
    /// memory. A directory sled cannot read gives a clear error naming the directory instead
    /// of a panic.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
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
        // sled 0.34 keeps its log in `<dir>/db` and large pages in `<dir>/blobs/<lsn>`.
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(|e| {
            Error::DataDir(format!(
                "cannot open sled's log file {}: {e}",
                log_path.display()
            ))
        })?;
        let blobs = dir.join("blobs");
        let mut store = Self {
            db,
            log,
            blobs,
            synced_blobs: BTreeSet::new(),
            barriers: 0,
        };
        // Whatever recovery found is made durable before the node serves anything.
        store.sync()?;
        Ok(store)
    }

    /// How many full durability barriers have completed.
    pub fn barriers(&self) -> u64 {
        self.barriers
    }

    /// Bytes the store takes on disk (0 when sled cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn tree(&self, space: Space) -> Result<sled::Tree> {
        self.db.open_tree(space.name()).map_err(storage)
    }

    /// fsync every blob file not yet synced, then the directory if any was new.
    fn sync_blobs(&mut self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot list", &self.blobs, e)),
        };
        let mut present = BTreeSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry.map_err(|e| io("cannot list", &self.blobs, e))?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => f.sync_all().map_err(|e| io("cannot fsync", &path, e))?,
                    // sled may have collected the blob meanwhile: nothing left to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("cannot open", &path, e)),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&self.blobs)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot fsync", &self.blobs, e))?;
        }
        self.synced_blobs = present;
        Ok(())
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
        self.sync_blobs()?;
        self.log
            .sync_data()
            .map_err(|e| Error::Storage(format!("cannot fdatasync sled's log: {e}")))?;
        self.barriers += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reopen a directory this process just closed. sled 0.34 releases its file lock only when
    /// its background threads let go of the database, which can lag the drop by a moment.
    fn reopen(dir: &Path) -> Result<SledStore> {
        let mut last = None;
        for _ in 0..100 {
            match SledStore::open(dir) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Storage("reopen".into())))
    }

    #[test]
    fn survives_reopen_and_lists_partitions() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Storage(e.to_string()))?;
        {
            let mut s = SledStore::open(dir.path())?;
            s.put(Space::Partition(PartitionId(7)), b"k", b"v")?;
            s.put(Space::Meta, b"identity", b"x")?;
            s.sync()?;
        }
        let mut s = reopen(dir.path())?;
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

    /// sled writes pages too large for its log to separate blob files and never fsyncs them;
    /// the barrier must cover them (and survive a reopen).
    #[test]
    fn the_barrier_covers_blob_files() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Storage(e.to_string()))?;
        let big = vec![7u8; 600 * 1024];
        {
            let mut s = SledStore::open(dir.path())?;
            let before = s.barriers();
            s.put(Space::Partition(PartitionId(1)), b"big", &big)?;
            s.sync()?;
            assert_eq!(s.barriers(), before + 1);
            assert!(
                !s.synced_blobs.is_empty(),
                "a 600 KiB value should live in a blob file that the barrier synced"
            );
        }
        let s = reopen(dir.path())?;
        assert_eq!(s.get(Space::Partition(PartitionId(1)), b"big")?, Some(big));
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

//! Metadata before data: node metadata (the cluster state, transfer records) reaches the disk
//! before any data that depends on it.
//!
//! The node acts on its metadata in memory at once: it routes by a new map, forgets finished
//! transfers, starts new ones. If the disk refuses one of those writes (a full disk), the disk
//! keeps the older record, and a restart brings it back. Data stored meanwhile would then be
//! judged by metadata older than the data: a node restarted on an older map took its own old,
//! finished transfer as proof that another node holds a partition it had since taken back as
//! its only owner, and dropped it (N=1, seed 22 of the reap runs).
//!
//! Lost-key marks (`clocks.rs`) are metadata too: a record written over a lost one before its
//! mark is on disk would, after a restart, be judged against dots it never held.
//!
//! So every metadata write goes through [`Ctx::put_meta`] / [`Ctx::remove_meta`]; one that fails
//! is kept in [`MetaDebt`] (the last write per key wins) and tried again before every data write
//! and on every maintenance tick. While any is outstanding the node stores no data and drops no
//! partition ([`Ctx::settle_meta`] fails like a full disk: client and replica writes fail, hint
//! and transfer batches are refused and resent, drops wait for the stray sweep), so whatever a
//! restart finds on disk, its metadata is at least as new as its data. Key removals (the
//! reaper's, a corrupt record's) wait too, and are tried again on later passes.

use std::collections::BTreeMap;

use super::ctx::Ctx;
use crate::error::{Error, Result};
use crate::store::{Space, Store};

/// Metadata writes the disk refused, to be written before any data: per key, the value to put
/// (`Some`) or a removal (`None`).
#[derive(Debug, Default)]
pub(super) struct MetaDebt {
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl MetaDebt {
    /// How many metadata writes wait for the disk.
    pub(super) fn len(&self) -> usize {
        self.writes.len()
    }
}

impl<S: Store> Ctx<S> {
    /// Write a metadata record; durable at the next drain. On failure the write is kept and
    /// retried ([`Ctx::settle_meta`]); true when it is in the store now.
    pub(super) fn put_meta(&mut self, space: Space, key: &[u8], value: &[u8]) -> bool {
        self.write_meta(space, key, Some(value.to_vec()))
    }

    /// Remove a metadata record; like [`Ctx::put_meta`].
    pub(super) fn remove_meta(&mut self, space: Space, key: &[u8]) -> bool {
        self.write_meta(space, key, None)
    }

    fn write_meta(&mut self, space: Space, key: &[u8], value: Option<Vec<u8>>) -> bool {
        let done = match &value {
            Some(v) => self.store.put(space, key, v),
            None => self.store.remove(space, key),
        };
        match done {
            Ok(()) => {
                // A later write of the key supersedes an older one that failed.
                self.meta_debt.writes.remove(&(space, key.to_vec()));
                self.dirty = true;
                true
            }
            Err(e) => {
                tracing::error!(space = %space.name(), error = %e,
                    "cannot write node metadata; no data is stored or dropped until it is written");
                self.meta_debt.writes.insert((space, key.to_vec()), value);
                // Force a barrier: a store whose error is not passing (sled keeps an I/O error
                // until it is reopened) then fails it, and the node stops serving (fail-stop)
                // instead of refusing every write for ever.
                self.dirty = true;
                false
            }
        }
    }

    /// Write the metadata the disk refused before; Ok when none is left. Called before every
    /// data write or drop and on the maintenance tick.
    pub(super) fn settle_meta(&mut self) -> Result<()> {
        if self.meta_debt.writes.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.meta_debt.writes);
        let mut first_error = None;
        for ((space, key), value) in pending {
            let done = match &value {
                Some(v) => self.store.put(space, &key, v),
                None => self.store.remove(space, &key),
            };
            match done {
                Ok(()) => self.dirty = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                    self.meta_debt.writes.insert((space, key), value);
                }
            }
        }
        match first_error {
            None => {
                tracing::info!("node metadata written; storing data again");
                Ok(())
            }
            Some(e) => Err(Error::Storage(format!(
                "{} node metadata write(s) still refused by the disk ({e}); no data is stored \
                 until they are written",
                self.meta_debt.len()
            ))),
        }
    }
}

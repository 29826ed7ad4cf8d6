//! The replica store: a small trait with a sled implementation (production) and an in-memory one
//! (the simulator, which can lose unsynced writes on a crash).
//!
//! # Durability contract
//! - [`Store::put`] and [`Store::remove`] make a change visible to later reads at once, but it is
//!   durable only after the next successful [`Store::sync`].
//! - The core never lets an effect (an ack, a reply, a message carrying new data) leave before the
//!   writes it depends on are synced: [`crate::NodeCore::drain_effects`] syncs first. So a
//!   write is *acknowledged* only once it is *durable* on every replica that acknowledged it, and
//!   a crash can only lose writes nobody was told about.
//! - Syncs are batched: a driver that handles many inputs before draining pays one fsync for all
//!   of them (group commit).

mod mem;

pub use mem::{MemStore, Removed, Synced};

use dynakv_ring::PartitionId;

use crate::error::Result;

/// A keyspace inside a store. Each partition has its own, so it can be listed, hashed and
/// transferred on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The replicated data of one partition.
    Partition(PartitionId),
    /// Node metadata: identity and incarnation.
    Meta,
    /// Hints held for other nodes (sloppy quorum).
    Hints,
    /// Checkpoints of partition transfers.
    Transfers,
    /// Objects received in hint or transfer batches that could not be applied, kept for an
    /// operator instead of being dropped.
    Quarantine,
    /// Per-partition node clocks and lost keys (`clocks.rs`).
    Clocks,
}

impl Space {
    /// The name of the space on disk (a sled tree name).
    pub fn name(&self) -> String {
        match self {
            Space::Partition(p) => format!("p/{:05}", p.0),
            Space::Meta => "meta".to_string(),
            Space::Hints => "hints".to_string(),
            Space::Transfers => "transfers".to_string(),
            Space::Quarantine => "quarantine".to_string(),
            Space::Clocks => "clocks".to_string(),
        }
    }

    /// Parse a name produced by [`Space::name`].
    pub fn from_name(name: &str) -> Option<Space> {
        match name {
            "meta" => Some(Space::Meta),
            "hints" => Some(Space::Hints),
            "transfers" => Some(Space::Transfers),
            "quarantine" => Some(Space::Quarantine),
            "clocks" => Some(Space::Clocks),
            _ => {
                let digits = name.strip_prefix("p/")?;
                digits
                    .parse::<u16>()
                    .ok()
                    .map(|p| Space::Partition(PartitionId(p)))
            }
        }
    }
}

/// The client key a record of `space` stores an object for: the record key itself in a
/// partition, the key inside a hint's record key; `None` for other spaces (or a malformed hint
/// key). For tools that read a store directly (the simulator's checker).
pub fn object_key(space: Space, record_key: &[u8]) -> Option<&[u8]> {
    match space {
        Space::Partition(_) => Some(record_key),
        Space::Hints => crate::hints::parse_hint_key(record_key).map(|(_, _, key)| key),
        _ => None,
    }
}

/// A key/value pair as stored.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Byte-level storage used by the core. Values are opaque here; [`crate::codec`] encodes them.
pub trait Store {
    /// Read one key.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Write one key (visible at once, durable after [`Store::sync`]).
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<()>;
    /// Remove one key (visible at once, durable after [`Store::sync`]).
    fn remove(&mut self, space: Space, key: &[u8]) -> Result<()>;
    /// Up to `limit` entries of a space in key order, starting after `after` (exclusive).
    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>>;
    /// Like [`Store::scan`], but lends each key and value to `f` instead of returning copies
    /// (the background scrub reads every record and keeps none); returns how many entries `f`
    /// saw and the last key. The default goes through `scan`.
    fn visit(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(usize, Option<Vec<u8>>)> {
        let page = self.scan(space, after, limit)?;
        for (k, v) in &page {
            f(k, v);
        }
        Ok((page.len(), page.last().map(|(k, _)| k.clone())))
    }
    /// Partitions that hold at least one key.
    fn partitions(&self) -> Result<Vec<PartitionId>>;
    /// Drop a whole partition (after it has been handed to its new owner).
    fn drop_partition(&mut self, p: PartitionId) -> Result<()>;
    /// Make every earlier put/remove durable.
    fn sync(&mut self) -> Result<()>;
}

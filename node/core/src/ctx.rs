//! The shared context every mechanism works in ([`Ctx`]): configuration, identity, the
//! partition map, the store and the data path, time, randomness, the timer table, and the
//! outputs (effects, self-sent messages, data events).
//!
//! Mechanisms take `&mut Ctx` as an argument next to their own state; they never reach each
//! other's state through it. What one mechanism's action means for another travels as a value:
//! a write to a partition's data pushes a [`DataEvent`] that `NodeCore` routes to the mechanisms
//! that derive state from the data (anti-entropy trees, the reaper).

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId, PartitionMap};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::{CoreConfig, PlantedBug};
use super::node::Origin;
use super::timers::TimerTable;
use super::types::{
    ClientReply, CoordMsg, CoreStats, Effect, Object, OpId, PeerMsg, ReplicaError, Value,
};
use crate::codec;
use crate::dvv::Actor;
use crate::error::{Error, Result};
use crate::store::{Space, Store};

/// Key of the identity record in [`Space::Meta`].
pub(super) const IDENTITY_KEY: &[u8] = b"identity";

/// What a data directory remembers about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Identity {
    pub(super) node: NodeId,
    pub(super) incarnation: u64,
}

/// A change to a partition's replicated data (or a key read back while rebuilding state
/// derived from it). Pushed by the data path ([`Ctx::save`], [`Ctx::remove_key`],
/// [`Ctx::drop_partition_data`]) and routed by `NodeCore` to anti-entropy and the reaper
/// before the next input is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DataEvent {
    /// `key` now holds an object whose encoded record hashes to `hash`.
    Written {
        partition: PartitionId,
        key: Bytes,
        hash: u64,
        tombstone_only: bool,
    },
    /// `key` was read back from the store while a hash tree was rebuilt (the reaper rebuilds
    /// its view of tombstone-only keys from it; the tree already holds it).
    Scanned {
        partition: PartitionId,
        key: Bytes,
        tombstone_only: bool,
    },
    /// `key` was removed (a reaped tombstone).
    Removed { partition: PartitionId, key: Bytes },
    /// The whole partition was dropped (handed off to its new replicas).
    PartitionDropped { partition: PartitionId },
    /// This node's copy of the partition changed in a way its other replicas cannot know of:
    /// a transfer into it finished, or a corrupt record was removed. Anti-entropy compares it
    /// with every other replica at the next tick instead of waiting for its turn in the round,
    /// so what only the old owner held, or what this node lost, spreads within a round trip.
    CompareSoon { partition: PartitionId },
}

/// Does the object hold tombstones and nothing else, or only a context (a reap candidate)?
pub(super) fn tombstone_only(o: &Object) -> bool {
    !o.is_empty() && o.values().iter().all(|v| matches!(v, Value::Tombstone))
}

/// Merge two objects with a node's config: the DVVSet sync (commutative, associative,
/// idempotent), or the planted last-write-wins bug when that is planted.
pub(super) fn merge_objects(cfg: &CoreConfig, a: &Object, b: &Object) -> Object {
    let merged = a.sync(b);
    #[cfg(feature = "planted-bugs")]
    if cfg.has_bug(PlantedBug::LastWriteWins) {
        return merged.keep_only_newest();
    }
    #[cfg(not(feature = "planted-bugs"))]
    let _ = cfg;
    merged
}

/// The shared context: what every mechanism reads, and where their outputs go.
#[derive(Debug)]
pub(super) struct Ctx<S: Store> {
    pub(super) cfg: CoreConfig,
    pub(super) actor: Actor,
    pub(super) map: PartitionMap,
    /// Members of the current map (cached: asked for on hot paths).
    pub(super) members: BTreeSet<NodeId>,
    /// Partitions this node replicates under the current map (cached).
    pub(super) mine: Vec<PartitionId>,
    pub(super) store: S,
    pub(super) rng: ChaCha8Rng,
    /// The node's monotonic clock at the input being handled (microseconds).
    pub(super) now: u64,
    /// The one timer table: the maintenance tick and the operations' timers.
    pub(super) timers: TimerTable,
    /// Effects for the driver, taken by `NodeCore::drain_effects`.
    pub(super) effects: Vec<Effect>,
    /// Messages this node sent to itself, delivered after the current input.
    pub(super) loopback: VecDeque<PeerMsg>,
    /// Data changes not yet routed to the mechanisms that derive state from the data.
    pub(super) events: Vec<DataEvent>,
    /// Writes since the last sync: `drain_effects` syncs before any effect leaves.
    pub(super) dirty: bool,
    /// Set when a store sync failed: the node then acknowledges nothing until it restarts.
    pub(super) fenced: Option<String>,
    pub(super) stats: CoreStats,
    /// The next message/operation id (random start per incarnation, so ids do not repeat).
    pub(super) next_id: OpId,
    /// Stored records found corrupt by [`Ctx::load`] (which stays `&self`, for the read
    /// path): partition, key and why. Set aside by [`Ctx::set_aside_corrupt`] after the input.
    pub(super) corrupt: std::cell::RefCell<Vec<(PartitionId, Bytes, String)>>,
    /// Per partition, the highest counter this actor minted there or found in a tombstone it
    /// reaped there: the coordinator mints above it ([`Dcc::update_above`](crate::dvv::Dcc::update_above)),
    /// so counters are per (actor, partition) and no dot is ever minted for two keys of one
    /// partition (which a partition's node clock needs: a dot names one version). A reaped key
    /// no longer shows which of this actor's dots it held; the floor covers them too, so a reap
    /// never retires the actor (issue 10, item 4). In memory only: every start takes a new
    /// actor, whose counters nothing has seen.
    pub(super) mint_floor: std::collections::BTreeMap<PartitionId, u64>,
    /// The node clocks of the partitions this node stores (`clocks.rs`).
    pub(super) clocks: super::clocks::Clocks,
    /// Metadata writes the disk refused: no data is stored or dropped until they are written
    /// (`meta.rs`).
    pub(super) meta_debt: super::meta::MetaDebt,
}

impl<S: Store> Ctx<S> {
    /// This node's id.
    pub(super) fn id(&self) -> NodeId {
        self.cfg.node
    }

    /// A fresh id for an operation, a batch, a round or a session.
    pub(super) fn next_op_id(&mut self) -> OpId {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// The time `timeout_ms` from now.
    pub(super) fn deadline(&self, timeout_ms: u32) -> u64 {
        self.now + u64::from(timeout_ms) * 1000
    }

    /// The replicas of partition `p` under the current map.
    pub(super) fn replicas(&self, p: PartitionId) -> Vec<NodeId> {
        self.map.preference_list(p, usize::from(self.cfg.n))
    }

    /// Does this node replicate partition `p` under the current map?
    pub(super) fn replicates(&self, p: PartitionId) -> bool {
        self.replicas(p).contains(&self.id())
    }

    /// Route by `map` from now on, and refresh what is derived from it.
    pub(super) fn install_map(&mut self, map: PartitionMap) {
        self.members = map.members();
        self.mine = map.replicated_partitions(self.cfg.node, usize::from(self.cfg.n));
        self.map = map;
    }

    /// Send `msg` to `to`; a message to this node itself is delivered by the core
    /// (`NodeCore::deliver_loopback`), never by the driver.
    pub(super) fn send(&mut self, to: NodeId, msg: impl Into<PeerMsg>) {
        if to == self.id() {
            self.loopback.push_back(msg.into());
            return;
        }
        self.effects.push(Effect::Send {
            to,
            msg: msg.into(),
        });
    }

    /// Answer an operation: a client's reply as an effect, a forwarding node's as a message.
    pub(super) fn respond(&mut self, origin: Origin, reply: ClientReply) {
        if matches!(reply, ClientReply::Error(_)) {
            self.stats.requests_failed += 1;
        } else {
            self.stats.requests_ok += 1;
        }
        match origin {
            Origin::Client(id) => self.effects.push(Effect::Reply { id, reply }),
            Origin::Peer { node, op } => self.send(node, CoordMsg::ForwardReply { op, reply }),
        }
    }

    /// Retire the current actor identity: draw a new random incarnation. Called when this node
    /// drops data it may have minted dots for (delivered hints, reaped tombstones, handed-off
    /// partitions, a corrupt record): with the data gone it could no longer tell which counters
    /// it used, so it must never mint under the old identity again. Random, not the next
    /// number, so it cannot meet an incarnation drawn at some other start. It takes effect in
    /// memory even when the disk refuses the identity record: every start draws a new
    /// incarnation anyway (the record only names the node), and keeping the old actor on a
    /// nearly full disk let the next write that landed mint over a lost record's dots
    /// (`actor-kept-after-loss`, soak seeds 2280, 99840 and 26 more).
    pub(super) fn retire_actor(&mut self) {
        let incarnation: u64 = self.rng.gen();
        self.actor.incarnation = incarnation;
        // The new actor has minted nothing: no floor applies to it.
        self.mint_floor.clear();
        self.dirty = true;
        self.stats.actor_retirements += 1;
        let id = Identity {
            node: self.cfg.node,
            incarnation,
        };
        if let Err(e) = codec::encode(&id)
            .map_err(Error::from)
            .and_then(|b| self.store.put(Space::Meta, IDENTITY_KEY, &b))
        {
            tracing::warn!(error = %e, "cannot record the new incarnation (it is in force anyway)");
        }
    }

    /// The counter this actor mints above in partition `p` (see `mint_floor`).
    pub(super) fn mint_floor(&self, p: PartitionId) -> u64 {
        self.mint_floor.get(&p).copied().unwrap_or(0)
    }

    /// Record that this actor used counters up to `top` in `p`: it minted `top`, or a key of `p`
    /// whose context reaches `top` for this actor is being reaped.
    pub(super) fn raise_mint_floor(&mut self, p: PartitionId, top: u64) {
        let floor = self.mint_floor.entry(p).or_insert(0);
        *floor = (*floor).max(top);
    }

    /// Read and decode the stored object for a key.
    ///
    /// A record that fails its checksum or does not decode is treated as missing (the other
    /// replicas hold the key: read repair and anti-entropy bring it back) and noted for
    /// [`Ctx::set_aside_corrupt`]; it is never served and never stops the node.
    pub(super) fn load(&self, p: PartitionId, key: &[u8]) -> Result<Option<Object>> {
        match self.store.get(Space::Partition(p), key)? {
            Some(bytes) => match codec::decode_object(&bytes) {
                Ok(object) => Ok(Some(object)),
                Err(e) => {
                    self.corrupt
                        .borrow_mut()
                        .push((p, Bytes::copy_from_slice(key), e.to_string()));
                    Ok(None)
                }
            },
            None => Ok(None),
        }
    }

    /// Deal with the corrupt records [`Ctx::load`] found: each is counted (`corrupt_records`),
    /// logged with its partition and key, and removed from the partition, which tells
    /// anti-entropy the key is missing here so the other replicas repair it. A record that
    /// reads fine again (a write merged into the missing key meanwhile) is left in place.
    /// Either way the node then retires its actor: the lost record may have held dots it
    /// minted, and minting the key again under that actor could reuse one (Riak's kv679). A
    /// write merged over the corrupt record does not bring those dots back, so the retirement
    /// must not depend on the record still being corrupt. Called by `NodeCore` after every
    /// input and maintenance step, and by a coordinator before it mints.
    pub(super) fn set_aside_corrupt(&mut self) {
        if self.corrupt.get_mut().is_empty() {
            return;
        }
        let found = std::mem::take(self.corrupt.get_mut());
        for (p, key, why) in found {
            self.stats.corrupt_records += 1;
            let still_corrupt = matches!(
                self.store.get(Space::Partition(p), &key),
                Ok(Some(bytes)) if codec::decode_object(&bytes).is_err()
            );
            tracing::error!(
                partition = %p,
                key = %String::from_utf8_lossy(&key),
                error = %why,
                removed = still_corrupt,
                "corrupt record found; the other replicas will repair the key"
            );
            // The clock still names the lost record's dots: the key must never be filled or
            // checked against it again (`clocks.rs`). Without the mark on disk the corrupt
            // record stays (`remove_key` settles metadata first), so a restart finds it again
            // (a removed record with no mark would be filled after a restart, which would
            // claim its live dots superseded).
            self.mark_lost(p, &key);
            if still_corrupt {
                if let Err(e) = self.remove_key(p, &key) {
                    tracing::error!(partition = %p, error = %e, "cannot remove a corrupt record")
                }
            }
            self.events.push(DataEvent::CompareSoon { partition: p });
        }
        if !self
            .cfg
            .has_bug(super::config::PlantedBug::KeepActorAfterCorruption)
        {
            self.retire_actor();
        }
    }

    /// Encode and write an object; durable at the next drain. Pushes a
    /// [`DataEvent::Written`] for the mechanisms that derive state from the data.
    pub(super) fn save(&mut self, p: PartitionId, key: &[u8], object: &Object) -> Result<()> {
        let bytes = codec::encode_object(object)?;
        self.mark_lost_if_found_corrupt(p, key);
        self.settle_meta()?;
        self.store.put(Space::Partition(p), key, &bytes)?;
        self.dirty = true;
        self.note_stored(p, object.versions().iter().map(|(d, _)| *d))?;
        self.events.push(DataEvent::Written {
            partition: p,
            key: Bytes::copy_from_slice(key),
            hash: super::aae::object_hash(&bytes),
            tombstone_only: tombstone_only(object),
        });
        self.warn_siblings(object);
        Ok(())
    }

    /// Remove a key from a partition's store; durable at the next drain. Pushes a
    /// [`DataEvent::Removed`].
    pub(super) fn remove_key(&mut self, p: PartitionId, key: &[u8]) -> Result<()> {
        // A lost mark (or other metadata) still waiting for the disk goes first: see `save`.
        self.mark_lost_if_found_corrupt(p, key);
        self.settle_meta()?;
        self.store.remove(Space::Partition(p), key)?;
        self.dirty = true;
        self.events.push(DataEvent::Removed {
            partition: p,
            key: Bytes::copy_from_slice(key),
        });
        Ok(())
    }

    /// Remove a whole partition's data (handed off); pushes a [`DataEvent::PartitionDropped`].
    pub(super) fn drop_partition_data(&mut self, p: PartitionId) -> Result<()> {
        // The clock goes first: data without its clock is safe (the clock only misses dots),
        // a clock that outlived its data would claim the dropped versions superseded if the
        // partition came back here.
        self.settle_meta()?;
        self.drop_clock(p)?;
        self.store.drop_partition(p)?;
        self.dirty = true;
        self.events
            .push(DataEvent::PartitionDropped { partition: p });
        Ok(())
    }

    fn warn_siblings(&mut self, object: &Object) {
        let count = object.value_count();
        if count > self.cfg.sibling_warn as usize {
            self.stats.sibling_warnings += 1;
            tracing::warn!(
                siblings = count,
                warn_at = self.cfg.sibling_warn,
                "key has many siblings: clients should read and write back a merged value"
            );
        }
    }

    /// Merge two objects: the DVVSet sync, or the planted last-write-wins bug
    /// ([`merge_objects`] with this node's config).
    pub(super) fn merge(&self, a: &Object, b: &Object) -> Object {
        merge_objects(&self.cfg, a, b)
    }

    /// Merge `incoming` into what this node stores for `key` (the replica role).
    pub(super) fn merge_into_store(
        &mut self,
        p: PartitionId,
        key: &[u8],
        incoming: &Object,
    ) -> std::result::Result<Object, ReplicaError> {
        self.check_peer_key(p, key)?;
        // The one guard for every path into a partition store: a copy of a partition this node
        // does not replicate would be read, transferred and repaired by nobody (an orphan).
        // Callers that may meet this (stale maps) hint the object on instead.
        if !self.replicates(p) && !self.cfg.has_bug(super::config::PlantedBug::NonOwnerAck) {
            return Err(ReplicaError::Retry(format!(
                "node {} does not replicate partition {p}",
                self.id()
            )));
        }
        let local = self
            .load(p, key)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let merged = match &local {
            Some(local) if !self.cfg.has_bug(PlantedBug::OverwriteOnReplica) => {
                self.merge(local, incoming)
            }
            Some(_) => incoming.clone(),
            // A key this replica holds no record of starts from its fill: the record it stores
            // then still supersedes what the replica saw deleted (a removed tombstone), as its
            // answer did while the key was absent.
            // (The check runs first, so the versions the fill would drop count as late.)
            None => match self.filled_absent(p, key) {
                Some(fill) if !self.cfg.has_bug(PlantedBug::SkipNodeClockCheck) => {
                    let checked = self.drop_seen(p, key, None, incoming.clone());
                    self.merge(&fill, &checked)
                }
                _ => incoming.clone(),
            },
        };
        let merged = self.drop_seen(p, key, local.as_ref(), merged);
        if local.is_none()
            && merged.value_count() == 0
            && self.clock_covers(p, key, merged.context())
        {
            // Nothing new: every version was seen and superseded here, and the absent key
            // already answers with a fill that covers the context.
            self.stats.replica_writes += 1;
            return Ok(merged);
        }
        self.check_limits(&merged)?;
        self.save(p, key, &merged)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        // Copies dropped because the context covered them were seen too.
        self.note_stored(p, incoming.versions().iter().map(|(d, _)| *d))
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.stats.replica_writes += 1;
        Ok(merged)
    }

    /// `merged` without the versions the node-clock check rejects: dots stored here before
    /// that `local` (the key's record) no longer holds. Their copies are old, however late.
    pub(super) fn drop_seen(
        &mut self,
        p: PartitionId,
        key: &[u8],
        local: Option<&Object>,
        mut merged: Object,
    ) -> Object {
        let mut seen = dynakv_proto::dvv::NodeClock::new();
        let mut dropped = 0;
        for (d, _) in merged.versions() {
            if self.seen_and_gone(p, key, local, d) {
                seen.add(d);
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.stats.late_versions_dropped += dropped;
            merged.discard(&seen);
        }
        merged
    }

    /// The limits a coordinator applies to a new object, applied to what a merge would store:
    /// replicas may hold siblings the coordinator never saw, and an object past the peer frame
    /// limit could no longer be read remotely, handed off or transferred. Refused with a clear
    /// reason; the sender keeps its copy, and a client write that resolves the siblings (its
    /// context covers them) shrinks the merge below the limits again.
    pub(super) fn check_limits(&self, merged: &Object) -> std::result::Result<(), ReplicaError> {
        let count = merged.value_count();
        if count > self.cfg.sibling_max as usize {
            return Err(ReplicaError::Rejected(format!(
                "merged object would hold {count} siblings, past the limit of {}; read the key and write back a resolved value",
                self.cfg.sibling_max
            )));
        }
        if let Err((actors, ranges)) = codec::token::check_context_limits(merged.context()) {
            return Err(ReplicaError::Rejected(format!(
                "merged object's context would have {actors} actors and {ranges} holes, past the token limits of {} and {}; read the key and write back with its context",
                codec::token::MAX_CONTEXT_ENTRIES,
                codec::token::MAX_CONTEXT_RANGES
            )));
        }
        if codec::token::highest_counter(merged.context()) > codec::token::MAX_TOKEN_COUNTER {
            return Err(ReplicaError::Rejected(format!(
                "merged object would hold a counter above {}, which no context token can carry",
                codec::token::MAX_TOKEN_COUNTER
            )));
        }
        let len = codec::encode_object(merged)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        let max = self.cfg.max_message_bytes / 2;
        if len > max {
            return Err(ReplicaError::Rejected(format!(
                "merged object would take {len} bytes, past the limit of {max}; read the key and write back a resolved value"
            )));
        }
        Ok(())
    }

    /// Keep an object this node received in a batch but cannot apply (`why`), instead of
    /// dropping it: the sender deletes its copy once the batch is acknowledged. Durable with
    /// the batch's ack. The key is `from` (4 bytes), the partition (2 bytes), then the key.
    pub(super) fn quarantine(
        &mut self,
        from: NodeId,
        p: PartitionId,
        key: &[u8],
        object: &Object,
        why: &str,
    ) -> std::result::Result<(), ReplicaError> {
        tracing::error!(%from, partition = %p, %why, "quarantining an object that cannot be applied");
        let mut k = Vec::with_capacity(6 + key.len());
        k.extend_from_slice(&from.0.to_be_bytes());
        k.extend_from_slice(&p.0.to_be_bytes());
        k.extend_from_slice(key);
        let bytes = codec::encode(object).map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.store
            .put(Space::Quarantine, &k, &bytes)
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        self.dirty = true;
        self.stats.quarantined += 1;
        Ok(())
    }

    /// Refuse a key from a peer that is too long or does not belong to the partition it came
    /// with (a peer with another map or a bug would otherwise store data no read can find).
    pub(super) fn check_peer_key(
        &self,
        p: PartitionId,
        key: &[u8],
    ) -> std::result::Result<(), ReplicaError> {
        if key.is_empty() || key.len() > self.cfg.max_key_bytes {
            return Err(ReplicaError::Rejected(format!(
                "bad key length {}",
                key.len()
            )));
        }
        if self.map.partition_for_key(key) != p || p.0 >= self.map.partition_count() {
            return Err(ReplicaError::Retry(format!(
                "key does not belong to partition {p} (partition maps differ?)"
            )));
        }
        Ok(())
    }

    /// Visit every entry of a space in key order, a page at a time.
    pub(super) fn scan_each(&self, space: Space, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(space, after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in &page {
                f(k, v);
            }
        }
        Ok(())
    }

    /// Read every key of a partition (for checkers, anti-entropy and transfers). Corrupt
    /// records are left out and noted, as [`Ctx::load`] does.
    pub(super) fn partition_objects(&self, p: PartitionId) -> Result<Vec<(Bytes, Object)>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan(Space::Partition(p), after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                match codec::decode_object(&v) {
                    Ok(o) => out.push((Bytes::from(k), o)),
                    Err(e) => self
                        .corrupt
                        .borrow_mut()
                        .push((p, Bytes::from(k), e.to_string())),
                }
            }
        }
        Ok(out)
    }
}

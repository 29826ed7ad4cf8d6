//! Hinted handoff: a fallback keeps writes for a primary that was down, durably, and hands them
//! to it when it answers again.
//!
//! Hints live in [`Space::Hints`] under `owner (4 bytes) | partition (2 bytes) | key`, so one
//! owner's hints are a contiguous range. A hint is removed only after the owner acknowledged a
//! batch containing it, and only if it did not change meanwhile (a newer write merged into the same
//! hint is kept for the next batch). Removing acknowledged hints is the checkpoint: after a crash
//! or restart, handoff resumes with what is left instead of starting over.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};
use rand::Rng;

use super::ctx::Ctx;
use super::membership::Membership;
use super::node::NodeCore;
use super::types::{HandoffItem, HandoffMsg, Object, ReplicaError};
use crate::codec;
use crate::error::Result;
use crate::store::{Space, Store};

/// First retry delay of a failed handoff; doubles per failure up to the configured maximum.
const BACKOFF_BASE_US: u64 = 200_000;

/// Handoff progress towards one owner.
#[derive(Debug, Default, Clone)]
pub(super) struct Handoff {
    failures: u32,
    next_attempt: u64,
    inflight: Option<Inflight>,
}

/// Hinted handoff's state: how many hints this node holds per owner, and the handoff to each.
///
/// Inputs (each with the shared [`Ctx`]; `Membership` is read for who is joined and known):
/// writes taken as a fallback or for a stale coordinator (`merge_into_hint`, `rehint`, from the
/// replica role), `HandoffMsg::Batch`/`BatchAck` (`on_hint_batch`, `on_hint_batch_ack`), the
/// maintenance tick (`tick`), a peer coming back (`peer_is_back` resets its backoff), and the
/// start (`recount`).
#[derive(Debug, Default)]
pub(super) struct HintedHandoff {
    /// Hints held per owner.
    pub(super) pending: BTreeMap<NodeId, u64>,
    /// The handoff to each owner (backoff, batch in flight).
    pub(super) peers: BTreeMap<NodeId, Handoff>,
}

impl HintedHandoff {
    /// `owner` is reachable again: its hints may go at once (backoff reset).
    pub(super) fn peer_is_back(&mut self, owner: NodeId) {
        if let Some(h) = self.peers.get_mut(&owner) {
            *h = Handoff::default();
        }
    }
}

#[derive(Debug, Clone)]
struct Inflight {
    batch: u64,
    deadline: u64,
    /// Hint keys sent, with the hash of the bytes sent (removed only if unchanged).
    sent: Vec<(Vec<u8>, u64)>,
}

pub(super) fn hint_key(owner: NodeId, p: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + key.len());
    k.extend_from_slice(&owner.0.to_be_bytes());
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub(crate) fn parse_hint_key(k: &[u8]) -> Option<(NodeId, PartitionId, &[u8])> {
    if k.len() < 6 {
        return None;
    }
    let owner = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
    let p = u16::from_be_bytes([k[4], k[5]]);
    Some((NodeId(owner), PartitionId(p), &k[6..]))
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The hint this node keeps for `owner` for a key, if any.
pub(super) fn load_hint<S: Store>(
    store: &S,
    owner: NodeId,
    p: PartitionId,
    key: &[u8],
) -> Result<Option<Object>> {
    match store.get(Space::Hints, &hint_key(owner, p, key))? {
        Some(b) => Ok(Some(codec::decode_object(&b)?)),
        None => Ok(None),
    }
}

/// Owners this node may hold hints for: the members, and anyone it already holds hints for.
pub(super) fn hint_owners<S: Store>(
    ctx: &Ctx<S>,
    membership: &Membership,
    handoff: &HintedHandoff,
) -> BTreeSet<NodeId> {
    let mut owners = ctx.members.clone();
    if let Some(state) = membership.state() {
        owners.extend(state.members().keys().copied());
    }
    owners.extend(handoff.pending.keys().copied());
    owners.remove(&ctx.id());
    owners
}

impl HintedHandoff {
    /// Count the hints on disk per owner (at startup).
    pub(super) fn recount<S: Store>(&mut self, ctx: &Ctx<S>) -> Result<()> {
        let mut counts: BTreeMap<NodeId, u64> = BTreeMap::new();
        ctx.scan_each(Space::Hints, |k, _| {
            if let Some((owner, _, _)) = parse_hint_key(k) {
                *counts.entry(owner).or_insert(0) += 1;
            }
        })?;
        self.pending = counts;
        Ok(())
    }

    /// Merge `incoming` into the hint for `owner` (the fallback role of a replica write).
    pub(super) fn merge_into_hint<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        owner: NodeId,
        p: PartitionId,
        key: &[u8],
        incoming: &Object,
    ) -> std::result::Result<Object, ReplicaError> {
        ctx.check_peer_key(p, key)?;
        let known = ctx.members.contains(&owner)
            || membership
                .state()
                .is_some_and(|s| s.member(owner).is_some());
        if !known {
            return Err(ReplicaError::Rejected(format!(
                "hint for unknown node {owner}"
            )));
        }
        let storage = |e: crate::Error| ReplicaError::Storage(e.to_string());
        let existing = load_hint(&ctx.store, owner, p, key).map_err(storage)?;
        let merged = match &existing {
            Some(h) => ctx.merge(h, incoming),
            None => incoming.clone(),
        };
        ctx.check_limits(&merged)?;
        Self::store_hint(ctx, owner, p, key, &merged).map_err(storage)?;
        // A hint written while a batch that carried it is in flight must outlive that batch's
        // ack, even when its bytes are unchanged: the copy that came in may be the one the
        // batch's receiver has since handed back (two nodes whose maps disagree pass a hint to
        // each other), and each would otherwise drop its copy on the other's ack (N=1 seed 270).
        if let Some(inflight) = self.peers.get_mut(&owner).and_then(|s| s.inflight.as_mut()) {
            let k = hint_key(owner, p, key);
            inflight.sent.retain(|(sent, _)| *sent != k);
        }
        if existing.is_none() {
            *self.pending.entry(owner).or_insert(0) += 1;
        }
        Ok(merged)
    }

    fn store_hint<S: Store>(
        ctx: &mut Ctx<S>,
        owner: NodeId,
        p: PartitionId,
        key: &[u8],
        o: &Object,
    ) -> Result<()> {
        let bytes = codec::encode_object(o)?;
        ctx.settle_meta()?;
        ctx.store
            .put(Space::Hints, &hint_key(owner, p, key), &bytes)?;
        ctx.dirty = true;
        Ok(())
    }

    /// Keep `object` as hints for each of `replicas` (this node excluded).
    pub(super) fn rehint<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        p: PartitionId,
        key: &[u8],
        object: &Object,
        replicas: &[NodeId],
    ) -> std::result::Result<Object, ReplicaError> {
        let mut last = Err(ReplicaError::Rejected("partition has no replicas".into()));
        let me = ctx.id();
        for r in replicas.iter().copied().filter(|r| *r != me) {
            last = self.merge_into_hint(ctx, membership, r, p, key, object);
            last.as_ref().map_err(Clone::clone)?;
        }
        last
    }

    /// Hints for a node that no longer owns anything (it left or was removed) can never be
    /// handed to it: give them to the current primaries of their partitions instead.
    fn redirect_hints<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        owner: NodeId,
    ) -> Result<()> {
        let n = usize::from(ctx.cfg.n);
        let prefix = owner.0.to_be_bytes();
        loop {
            let page = ctx.store.scan(Space::Hints, Some(&prefix[..]), 64)?;
            let mine: Vec<_> = page
                .into_iter()
                .filter(|(k, _)| parse_hint_key(k).is_some_and(|(o, _, _)| o == owner))
                .collect();
            if mine.is_empty() {
                break;
            }
            for (k, v) in mine {
                let object = match codec::decode_object(&v) {
                    Ok(object) => object,
                    Err(e) => {
                        self.drop_unreadable_hint(ctx, owner, &k, &e.to_string())?;
                        continue;
                    }
                };
                if let Some((_, p, key)) = parse_hint_key(&k) {
                    let replicas = ctx.map.preference_list(p, n);
                    let key = key.to_vec();
                    let mut outcome = Ok(());
                    let here = replicas.contains(&ctx.id());
                    if here {
                        outcome = ctx.merge_into_store(p, &key, &object).map(|_| ());
                    }
                    // Hints for the other replicas; none when this node is the only one (N=1),
                    // where `rehint` would call "no other replica" a rejection.
                    if outcome.is_ok() && !(here && replicas.len() == 1) {
                        outcome = self
                            .rehint(ctx, membership, p, &key, &object, &replicas)
                            .map(|_| ());
                    }
                    let outcome = match outcome {
                        Err(ReplicaError::Rejected(why)) => {
                            // Set aside, the hint leaves what this node mints against: if it
                            // held dots this actor minted, a new actor must mint from now on.
                            if object.context().top(&ctx.actor) > 0 {
                                ctx.retire_actor();
                            }
                            ctx.quarantine(owner, p, &key, &object, &why)
                        }
                        other => other,
                    };
                    if let Err(e) = outcome {
                        // Keep the hint (and the rest): the next tick tries again.
                        return Err(crate::Error::Storage(format!(
                            "cannot redirect hints for node {owner}: {e:?}"
                        )));
                    }
                }
                // Written again above (durable at the same sync, in order) before this removal.
                ctx.store.remove(Space::Hints, &k)?;
                ctx.dirty = true;
            }
        }
        self.pending.remove(&owner);
        self.peers.remove(&owner);
        Ok(())
    }

    /// Drop a hint record that does not decode (a failing disk): it can be delivered nowhere.
    /// It may have held dots this node minted as a fallback coordinator, so the actor retires
    /// first, whatever the removal does: a later write of this actor would otherwise claim the
    /// lost dots as seen and supersede values it never saw (Riak's kv679). Handoff and
    /// redirection both come here; redirection once removed such hints with the actor kept.
    fn drop_unreadable_hint<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        owner: NodeId,
        record: &[u8],
        why: &str,
    ) -> Result<()> {
        tracing::error!(%owner, error = %why, "dropping an unreadable hint");
        ctx.stats.corrupt_records += 1;
        ctx.retire_actor();
        ctx.store.remove(Space::Hints, record)?;
        ctx.dirty = true;
        if let Some(c) = self.pending.get_mut(&owner) {
            *c = c.saturating_sub(1);
        }
        Ok(())
    }

    /// Called from the maintenance tick: start or retry handoff to every owner with hints.
    pub(super) fn tick<S: Store>(&mut self, ctx: &mut Ctx<S>, membership: &Membership) {
        if self.pending.is_empty() {
            return;
        }
        let owners_now = ctx.members.clone();
        let gone: Vec<NodeId> = self
            .pending
            .keys()
            .copied()
            .filter(|o| !owners_now.contains(o) && membership.joined)
            .collect();
        for owner in gone {
            if let Err(e) = self.redirect_hints(ctx, membership, owner) {
                tracing::warn!(%owner, error = %e, "cannot redirect hints");
            }
        }
        let owners: Vec<NodeId> = self
            .pending
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(o, _)| *o)
            .collect();
        for owner in owners {
            let now = ctx.now;
            let state = self.peers.entry(owner).or_default();
            if let Some(inflight) = &state.inflight {
                if now < inflight.deadline {
                    continue;
                }
                // No answer: back off exponentially, with jitter so fallbacks do not stampede.
                state.inflight = None;
                state.failures = state.failures.saturating_add(1);
                let max = u64::from(ctx.cfg.handoff_backoff_max_ms) * 1000;
                let backoff = BACKOFF_BASE_US
                    .saturating_mul(1u64 << state.failures.min(20))
                    .min(max);
                let jitter = ctx.rng.gen_range(0..=backoff / 2);
                let state = self.peers.entry(owner).or_default();
                state.next_attempt = now + backoff / 2 + jitter;
                continue;
            }
            if now >= state.next_attempt {
                if let Err(e) = self.send_handoff_batch(ctx, owner) {
                    tracing::warn!(%owner, error = %e, "cannot read hints for handoff");
                }
            }
        }
    }

    fn send_handoff_batch<S: Store>(&mut self, ctx: &mut Ctx<S>, owner: NodeId) -> Result<()> {
        let prefix = owner.0.to_be_bytes();
        let page = ctx
            .store
            .scan(Space::Hints, Some(&prefix[..]), ctx.cfg.handoff_batch)?;
        let mut items = Vec::new();
        let mut sent = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in page {
            let Some((o, p, key)) = parse_hint_key(&k) else {
                continue;
            };
            if o != owner {
                break;
            }
            // Keep batches well inside the transport's frame limit.
            if !items.is_empty() && bytes + v.len() > ctx.cfg.max_message_bytes / 2 {
                break;
            }
            bytes += v.len();
            let object = match codec::decode_object(&v) {
                Ok(o) => o,
                Err(e) => {
                    // Out of the way, so it does not block every hint behind it; a removal
                    // the disk refuses is tried again with the next batch.
                    if let Err(e) = self.drop_unreadable_hint(ctx, owner, &k, &e.to_string()) {
                        tracing::warn!(%owner, error = %e, "cannot remove an unreadable hint");
                    }
                    continue;
                }
            };
            items.push(HandoffItem {
                partition: p,
                key: Bytes::copy_from_slice(key),
                object,
            });
            sent.push((k.clone(), hash(&v)));
        }
        if items.is_empty() {
            // The count was stale (hints removed by a reap, say): fix it.
            self.pending.remove(&owner);
            return Ok(());
        }
        let batch = ctx.next_op_id();
        let deadline = ctx.now + u64::from(ctx.cfg.request_timeout_ms) * 1000;
        self.peers.entry(owner).or_default().inflight = Some(Inflight {
            batch,
            deadline,
            sent,
        });
        ctx.stats.handoff_batches_sent += 1;
        ctx.send(owner, HandoffMsg::Batch { batch, items });
        Ok(())
    }

    /// The owner's side: merge handed-off objects like replica writes; ack once durable.
    pub(super) fn on_hint_batch<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        membership: &Membership,
        from: NodeId,
        batch: u64,
        items: Vec<HandoffItem>,
    ) {
        let mut result = Ok(());
        let n = usize::from(ctx.cfg.n);
        if !membership.joined {
            // Without the cluster state there is nowhere safe to put them: let the fallback
            // keep its hints and retry.
            ctx.send(
                from,
                HandoffMsg::BatchAck {
                    batch,
                    result: Err(ReplicaError::Storage("not joined yet; retry".into())),
                },
            );
            return;
        }
        for item in items {
            let replicas = ctx.map.preference_list(item.partition, n);
            let outcome = if replicas.contains(&ctx.id()) {
                ctx.merge_into_store(item.partition, &item.key, &item.object)
            } else {
                // Not (or no longer) a replica of this partition (the map moved on): keep the
                // object as hints for the current primaries rather than in a store no read or
                // anti-entropy exchange looks at.
                self.rehint(
                    ctx,
                    membership,
                    item.partition,
                    &item.key,
                    &item.object,
                    &replicas,
                )
            };
            let outcome = match outcome {
                // It can never be applied here: keep it aside (the fallback deletes its copy
                // on our ack) and take the rest, so one bad hint does not block the others.
                Err(ReplicaError::Rejected(why)) => {
                    ctx.quarantine(from, item.partition, &item.key, &item.object, &why)
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = outcome {
                result = Err(e);
                break;
            }
            ctx.stats.hints_received += 1;
        }
        ctx.send(from, HandoffMsg::BatchAck { batch, result });
    }

    /// The fallback's side: the owner has the batch durably; drop the hints it covered.
    pub(super) fn on_hint_batch_ack<S: Store>(
        &mut self,
        ctx: &mut Ctx<S>,
        from: NodeId,
        batch: u64,
        result: Result<(), ReplicaError>,
    ) {
        let Some(state) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(inflight) = state.inflight.take_if(|i| i.batch == batch) else {
            return;
        };
        if let Err(e) = result {
            tracing::warn!(owner = %from, ?e, "owner refused a hint batch; will retry");
            state.failures = state.failures.saturating_add(1);
            state.next_attempt = ctx.now + BACKOFF_BASE_US;
            return;
        }
        state.failures = 0;
        state.next_attempt = ctx.now;
        // Which hints are unchanged since they were sent (only those may go), and did this node
        // mint dots in any of them?
        let mut removable = Vec::new();
        let mut minted_here = false;
        for (k, h) in inflight.sent {
            if let Ok(Some(current)) = ctx.store.get(Space::Hints, &k) {
                if hash(&current) == h {
                    minted_here |= codec::decode_object(&current)
                        .is_ok_and(|o| o.context().top(&ctx.actor) > 0);
                    removable.push(k);
                }
            }
        }
        // Retire the actor BEFORE dropping data minted under it (in force in memory at once;
        // every start draws a new incarnation anyway).
        if minted_here {
            ctx.retire_actor();
        }
        let mut removed = 0u64;
        for k in removable {
            if ctx.store.remove(Space::Hints, &k).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            ctx.dirty = true;
            ctx.stats.hints_delivered += removed;
            if let Some(c) = self.pending.get_mut(&from) {
                *c = c.saturating_sub(removed);
                if *c == 0 {
                    self.pending.remove(&from);
                }
            }
            // More to send? Go on at once rather than waiting for the next tick.
            if self.pending.get(&from).is_some_and(|c| *c > 0) {
                if let Err(e) = self.send_handoff_batch(ctx, from) {
                    tracing::warn!(owner = %from, error = %e, "cannot read hints for handoff");
                }
            }
        }
    }
}

impl<S: Store> NodeCore<S> {
    /// Pending hints per owner, for status.
    pub fn hints_pending(&self) -> BTreeMap<NodeId, u64> {
        self.handoff.pending.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_keys_round_trip_and_group_by_owner() {
        let k = hint_key(NodeId(7), PartitionId(300), b"user:1");
        assert_eq!(
            parse_hint_key(&k),
            Some((NodeId(7), PartitionId(300), &b"user:1"[..]))
        );
        assert!(
            hint_key(NodeId(7), PartitionId(65535), b"zzz")
                < hint_key(NodeId(8), PartitionId(0), b"")
        );
        assert_eq!(parse_hint_key(b"short"), None);
    }
}

//! Closing the holes of partition clocks (`clocks.rs`) between replicas.
//!
//! A replica's clock misses the dots of versions that were superseded before they reached it
//! (a lost replica write, a hint merged with the delete that followed it, a key that moved by
//! transfer after its delete was reaped). Its base then stops below them, and no tombstone
//! whose context reaches past that point can be reaped there. So with every anti-entropy
//! exchange the initiator X also sends its clock of the partition (`AaeMsg::Clock`), and the
//! peer Y answers for the dots it stored that X did not (`AaeMsg::ClockReply`): the objects
//! that still hold some of them, and the rest as `dead`. X merges the objects (their dots enter
//! its clock as they are stored) and adds `dead` to its clock.
//!
//! Why `dead` is safe to claim: a dot in Y's clock that no record of Y holds was stored at Y
//! and then superseded (or Y learnt it the same way), so no live version carries it. Y makes
//! no such claim while a key of the partition is lost (set aside as corrupt, or unreadable
//! during the scan): its clock then names dots of a record nobody can read.
//!
//! Y finds the live dots with one scan of the partition, and only when X misses something;
//! replicas that agree exchange a clock each (a few dozen bytes per actor) and nothing else.

use bytes::Bytes;
use dynakv_proto::dvv::NodeClock;
use dynakv_ring::{NodeId, PartitionId};

use super::ctx::Ctx;
use super::types::{AaeMsg, Object};
use crate::error::Result;
use crate::store::{Space, Store};

/// Send `peer` this node's clock of `p` (with step 1 of an exchange; `ask_back`: see
/// `AaeMsg::Clock`).
pub(super) fn send_clock<S: Store>(ctx: &mut Ctx<S>, p: PartitionId, peer: NodeId, ask_back: bool) {
    let clock = ctx.clocks.get(p).cloned().unwrap_or_default();
    ctx.send(
        peer,
        AaeMsg::Clock {
            partition: p,
            clock,
            ask_back,
        },
    );
}

/// Answer a peer's clock: what this node stored that the peer's clock lacks.
pub(super) fn on_clock<S: Store>(
    ctx: &mut Ctx<S>,
    from: NodeId,
    p: PartitionId,
    theirs: &NodeClock,
    ask_back: bool,
) -> Result<()> {
    if ask_back
        && !theirs
            .missing_from(ctx.clocks.get(p).unwrap_or(&NodeClock::new()))
            .is_empty()
    {
        send_clock(ctx, p, from, false);
    }
    let Some(mine) = ctx.clocks.get(p) else {
        return Ok(());
    };
    let mut missing = NodeClock::new();
    for (actor, lo, hi) in mine.missing_from(theirs) {
        missing.add_range(actor, lo, hi);
    }
    if missing.actor_count() == 0 {
        return Ok(());
    }
    let budget = ctx.cfg.max_message_bytes / 2;
    let mut live = NodeClock::new();
    let mut objects: Vec<(Bytes, Object)> = Vec::new();
    let mut bytes = 0usize;
    let mut unreadable = false;
    ctx.scan_each(Space::Partition(p), |k, v| {
        let Ok(o) = crate::codec::decode_object(v) else {
            unreadable = true;
            return;
        };
        let mut holds = false;
        for (d, _) in o.versions().iter().filter(|(d, _)| missing.contains(d)) {
            live.add(d);
            holds = true;
        }
        if holds && bytes <= budget {
            bytes += k.len()
                + o.values()
                    .iter()
                    .filter_map(|v| v.data().map(|d| d.len() + 64))
                    .sum::<usize>()
                + 64;
            objects.push((Bytes::copy_from_slice(k), o));
        }
    })?;
    let mut dead = NodeClock::new();
    if !unreadable && !ctx.clocks.has_lost(p) {
        for (actor, lo, hi) in missing.missing_from(&live) {
            dead.add_range(actor, lo, hi);
        }
    }
    if objects.is_empty() && dead.actor_count() == 0 {
        return Ok(());
    }
    ctx.stats.clock_dots_offered += objects.len() as u64 + dead.entries().len() as u64;
    ctx.stats.aae_keys_repaired += objects.len() as u64;
    ctx.send(
        from,
        AaeMsg::ClockReply {
            partition: p,
            objects,
            dead,
        },
    );
    Ok(())
}

/// Take a peer's answer: merge the objects, then add the dead dots to this node's clock.
pub(super) fn on_clock_reply<S: Store>(
    ctx: &mut Ctx<S>,
    p: PartitionId,
    objects: Vec<(Bytes, Object)>,
    dead: &NodeClock,
) -> Result<()> {
    for (k, o) in objects {
        if let Err(e) = ctx.merge_into_store(p, &k, &o) {
            tracing::warn!(partition = %p, ?e, "clock sync merge failed");
        }
    }
    if dead.actor_count() > 0 {
        ctx.note_dead(p, dead)?;
    }
    Ok(())
}

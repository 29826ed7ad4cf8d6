//! The history of client operations and the invariant checkers run after the quiet phase.
//!
//! Invariants (DESIGN.md):
//! 1. `acked-write-lost`: each acknowledged put is in the final siblings of its key, or its dot is
//!    covered by the context of a write or delete submitted later (which may legitimately have
//!    superseded it).
//! 2. `unknown-value`: every final sibling is a value some client wrote.
//! 3. `false-concurrency`: no final sibling is covered by the context of an acknowledged write
//!    (that write superseded it, so it must be gone: a resurrected or falsely concurrent value),
//!    and no two siblings carry the same dot.
//!    `dot-reused`: two acknowledged writes of a key never carry the same dot.
//! 4. `divergence`: after the quiet phase, every replica of a key answers with the same data
//!    versions (and the same context when it holds data); see `canonical`.
//! 5. `liveness`: after healing, quorum requests succeed and the run finishes in bounded time.
//! 6. `orphan-copy`: after the quiet phase no running member keeps data of a partition it does not
//!    replicate (such a copy is read, transferred and repaired by nobody).
//! 7. `primary-ack` (checked by the world as messages leave): a node acknowledges a replica write
//!    as a primary only for a partition it replicates under its own map at that moment.
//!    `ack-without-copy` (checked there too): when it does, its answer for the key covers what
//!    the write carried (an ack for a write its disk refused counts a copy that does not exist).
//! 8. `stale-read`: a get whose primary replies intersect the primaries that acknowledged an
//!    earlier write returns nothing that write superseded (`check_stale_reads`).

use std::collections::{BTreeMap, BTreeSet};

use dynakv_core::store::{Space, Store};
use dynakv_core::{Object, Value};
use dynakv_proto::dvv::{Dot, NodeClock};
use serde::Serialize;

use crate::world::{Applied, World};

/// The outcome of a write as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// Acknowledged by a quorum.
    Acked,
    /// Refused before any replica applied it.
    Failed,
    /// Timed out or failed after it may have been applied somewhere.
    Unknown,
}

/// One put or delete a client submitted.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub client: usize,
    pub key: String,
    /// The unique value written, or `None` for a delete.
    pub value: Option<String>,
    /// The causal context the client sent.
    pub context: NodeClock,
    pub outcome: Outcome,
    /// The dot the coordinator gave the value (known for acknowledged writes).
    pub dot: Option<Dot>,
    /// Virtual time of submission, microseconds.
    pub at: u64,
    /// Virtual time the client got its answer, if it did.
    pub done_at: Option<u64>,
    /// Acknowledgements from primary replicas (acknowledged writes).
    pub primary_acks: u8,
}

/// One successful get: what its client saw.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub client: usize,
    pub key: String,
    /// Virtual time of submission and of the answer, microseconds.
    pub at: u64,
    pub done_at: u64,
    pub values: Vec<String>,
    /// Replies from primary replicas the coordinator merged.
    pub primary_replies: u8,
}

/// Everything the clients did and saw.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<WriteRecord>,
    pub written_values: BTreeSet<String>,
    pub gets_ok: u64,
    /// Every successful get of the chaos phase.
    pub reads: Vec<ReadRecord>,
    pub gets_failed: u64,
    /// Restores of old copies (the workload's stand-in for `dynakv restore`) acknowledged.
    pub restores_ok: u64,
    /// With reaping: the dots of the old copies restored, per key, each with the virtual time of
    /// the first restore that carried it. A restore of a copy older than a reap brings its
    /// values back by design, so a write submitted *before* that restore may have covered them
    /// and still lose to them; a write submitted after it may not.
    pub restored_dots: BTreeMap<String, BTreeMap<Dot, u64>>,
    pub sibling_reads: u64,
    pub max_siblings: usize,
    pub quiet_failures: Vec<String>,
}

impl History {
    /// Counts of writes by outcome: (acked, failed, unknown).
    pub fn write_counts(&self) -> (u64, u64, u64) {
        let mut c = (0, 0, 0);
        for w in &self.writes {
            match w.outcome {
                Outcome::Acked => c.0 += 1,
                Outcome::Failed => c.1 += 1,
                Outcome::Unknown | Outcome::Pending => c.2 += 1,
            }
        }
        c
    }
}

/// A broken invariant, with what is needed to understand it.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub key: String,
    pub detail: String,
    /// The last events that touched the key (filled by a traced replay of the seed).
    pub events: Vec<String>,
}

/// Values of an object as readable strings (tombstones shown as `<tombstone>`), with dots.
pub fn describe(o: &Object) -> Vec<String> {
    o.versions()
        .iter()
        .map(|(d, v)| {
            let text = match v {
                Value::Data(b) => String::from_utf8_lossy(b).into_owned(),
                Value::Tombstone => "<tombstone>".into(),
            };
            format!(
                "{text}@{}.{}:{}",
                d.actor.node, d.actor.incarnation, d.counter
            )
        })
        .collect()
}

/// A canonical form of a replica's answer, for comparing replicas: its data versions, and its
/// context when it holds any. Tombstones and the contexts of answers without data differ
/// legitimately while replicas remove deleted keys each on its own (a tombstone on one, a
/// context-only record or the fill of a partition clock on another): each of them supersedes
/// the versions the delete did, which the checks on the merged answers below verify.
fn canonical(o: &Object) -> (Vec<String>, Option<NodeClock>) {
    let mut values: Vec<String> = describe(o)
        .into_iter()
        .filter(|v| !v.starts_with("<tombstone>@"))
        .collect();
    values.sort();
    let context = (!values.is_empty()).then(|| o.context().clone());
    (values, context)
}

/// The partition clocks of some nodes, for a divergence's detail.
fn clocks_of(world: &World, p: dynakv_ring::PartitionId, ids: &[dynakv_ring::NodeId]) -> String {
    ids.iter()
        .map(|id| {
            let clock = world.nodes[(id.0 as usize).saturating_sub(1)]
                .core
                .as_ref()
                .and_then(|c| c.partition_clock(p));
            format!("node {id}: {clock:?}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Run every safety and convergence check on the final state of the world.
pub fn check(world: &World) -> Vec<Violation> {
    let mut out = Vec::new();
    let h = &world.workload.history;
    for q in &h.quiet_failures {
        out.push(Violation {
            invariant: "liveness",
            key: String::new(),
            detail: q.clone(),
            events: Vec::new(),
        });
    }
    for (detail, effects) in &world.contract_breaches {
        out.push(Violation {
            invariant: "durability-contract",
            key: String::new(),
            detail: detail.clone(),
            events: effects.clone(),
        });
    }
    for (invariant, key, detail) in &world.ack_breaches {
        out.push(violation(invariant, key, detail.clone()));
    }
    for (key, detail) in &world.uncovered_removals {
        out.push(violation("removal-cover", key, detail.clone()));
    }
    check_orphans(world, &mut out);
    let mut by_key: BTreeMap<&str, Vec<&WriteRecord>> = BTreeMap::new();
    for w in &h.writes {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    for key in world.workload.checked_keys() {
        let writes = by_key.get(key.as_str()).cloned().unwrap_or_default();
        check_key(world, key, &writes, &h.written_values, &mut out);
    }
    check_stale_reads(world, &by_key, &mut out);
    out
}

/// Invariant 8, `stale-read`: a get submitted after a write or delete was acknowledged by `pa`
/// primaries, and answered from `pr` primaries with `pa + pr > N`, sees that write: it returns
/// no value whose dot the write's context covered (a deleted value back, even for a moment, is
/// what this catches: the final-state checks cannot see one that anti-entropy later removes).
/// Exempt, since the quorums need not intersect then: reads that end after the first
/// membership change (maps differ), writes followed by a fault that took synced data from a
/// node before the read ended, and values of restored dots.
fn check_stale_reads(
    world: &World,
    by_key: &BTreeMap<&str, Vec<&WriteRecord>>,
    out: &mut Vec<Violation>,
) {
    let h = &world.workload.history;
    let n = world.cfg.n;
    // The dots each value was written with. A client that retries after a transport error
    // writes the same value again, under another dot; a value with a write whose dot is not
    // known (its outcome was not acknowledged) cannot be judged, since the copy read may be
    // that one.
    let mut dots_of: BTreeMap<&str, Option<Vec<Dot>>> = BTreeMap::new();
    for w in &h.writes {
        let Some(v) = w.value.as_deref() else {
            continue;
        };
        let entry = dots_of.entry(v).or_insert_with(|| Some(Vec::new()));
        match (w.outcome, w.dot) {
            (Outcome::Acked, Some(d)) => {
                if let Some(ds) = entry.as_mut() {
                    ds.push(d);
                }
            }
            (Outcome::Failed, _) => {}
            _ => *entry = None,
        }
    }
    for r in &h.reads {
        if world
            .first_membership_change
            .is_some_and(|t| t <= r.done_at)
        {
            continue;
        }
        let Some(writes) = by_key.get(r.key.as_str()) else {
            continue;
        };
        for v in &r.values {
            let Some(Some(dots)) = dots_of.get(v.as_str()) else {
                continue;
            };
            let restored = dots.iter().any(|dot| {
                h.restored_dots
                    .get(&r.key)
                    .and_then(|d| d.get(dot))
                    .is_some_and(|t| *t <= r.done_at)
            });
            let Some(dot) = dots.first() else {
                continue;
            };
            if restored {
                continue;
            }
            let stale_against = writes.iter().find(|w| {
                w.outcome == Outcome::Acked
                    && w.done_at.is_some_and(|d| d < r.at)
                    && u16::from(w.primary_acks) + u16::from(r.primary_replies) > u16::from(n)
                    && dots.iter().all(|d| w.context.contains(d))
                    && !world
                        .data_losses
                        .iter()
                        .any(|t| *t >= w.at && *t <= r.done_at)
            });
            if let Some(w) = stale_against {
                out.push(violation(
                    "stale-read",
                    &r.key,
                    format!(
                        "client {}'s get at t={}us ({} primary replies) returned {v:?} ({dot:?}), which client {}'s {} acknowledged at t={}us by {} primaries had superseded",
                        r.client,
                        r.at,
                        r.primary_replies,
                        w.client,
                        if w.value.is_some() { "put" } else { "delete" },
                        w.done_at.unwrap_or_default(),
                        w.primary_acks
                    ),
                ));
                break;
            }
        }
    }
}

fn check_key(
    world: &World,
    key: &str,
    writes: &[&WriteRecord],
    written: &BTreeSet<String>,
    out: &mut Vec<Violation>,
) {
    let map = world.final_map();
    let p = map.partition_for_key(key.as_bytes());
    let replicas = map.preference_list(p, usize::from(world.cfg.n));
    let mut states: Vec<(dynakv_ring::NodeId, Object)> = Vec::new();
    for id in replicas {
        let node = &world.nodes[(id.0 as usize).saturating_sub(1)];
        let Some(core) = node.core.as_ref() else {
            continue;
        };
        // What a reader merges from this replica: its record, or the fill of its partition
        // clock for a key it holds nothing of (a removed tombstone still supersedes).
        let object = match core.store().get(Space::Partition(p), key.as_bytes()) {
            Ok(Some(bytes)) => {
                if let Err(e) = dynakv_proto::codec::decode_object(&bytes) {
                    out.push(violation("corrupt-record", key, format!("node {id}: {e}")));
                    continue;
                }
                match core.replica_answer(p, key.as_bytes()) {
                    Ok(o) => o.unwrap_or_default(),
                    Err(e) => {
                        out.push(violation("corrupt-record", key, format!("node {id}: {e}")));
                        continue;
                    }
                }
            }
            Ok(None) => core
                .replica_answer(p, key.as_bytes())
                .ok()
                .flatten()
                .unwrap_or_default(),
            Err(e) => {
                out.push(violation("corrupt-record", key, format!("node {id}: {e}")));
                continue;
            }
        };
        states.push((id, object));
    }
    let Some((first_id, first)) = states.first().cloned() else {
        return;
    };
    for (id, o) in &states[1..] {
        if canonical(o) != canonical(&first) {
            out.push(violation(
                "divergence",
                key,
                format!(
                    "node {first_id} holds {:?} but node {id} holds {:?}; clocks of partition {p}: {}",
                    canonical(&first),
                    canonical(o),
                    clocks_of(world, p, &[first_id, *id])
                ),
            ));
        }
    }
    let final_obj = states.iter().fold(Object::new(), |acc, (_, o)| acc.sync(o));
    let finals: Vec<(Option<Dot>, String)> = final_obj
        .versions()
        .iter()
        .filter_map(|(d, v)| match v {
            Value::Data(b) => Some((Some(*d), String::from_utf8_lossy(b).into_owned())),
            Value::Tombstone => None,
        })
        .collect();
    let final_values: BTreeSet<&str> = finals.iter().map(|(_, v)| v.as_str()).collect();

    // 2. No value that was never written.
    for (_, v) in &finals {
        if !written.contains(v) {
            out.push(violation(
                "unknown-value",
                key,
                format!("sibling {v:?} was never written"),
            ));
        }
    }
    // 3. No false concurrency: no sibling covered by an acked context; no duplicate dots.
    let mut seen_dots = BTreeSet::new();
    for (dot, v) in &finals {
        let Some(dot) = dot else { continue };
        if !seen_dots.insert(*dot) {
            out.push(violation(
                "false-concurrency",
                key,
                format!("two siblings share dot {dot:?}"),
            ));
        }
        let restored_at = world
            .workload
            .history
            .restored_dots
            .get(key)
            .and_then(|d| d.get(dot))
            .copied();
        if let Some(w) = superseding_write(writes, dot, restored_at) {
            out.push(violation(
                "false-concurrency",
                key,
                format!(
                    "sibling {v:?} ({dot:?}) survives although client {}'s acknowledged {} at t={}us covered it",
                    w.client,
                    if w.value.is_some() { "put" } else { "delete" },
                    w.at
                ),
            ));
        }
    }
    // Dots are never reused: two acknowledged writes of a key never get the same dot.
    let mut minted: BTreeMap<Dot, &WriteRecord> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.outcome == Outcome::Acked) {
        let Some(dot) = w.dot else { continue };
        if let Some(first) = minted.insert(dot, w) {
            out.push(violation(
                "dot-reused",
                key,
                format!(
                    "{dot:?} was given to {:?} (t={}us) and again to {:?} (t={}us)",
                    first.value, first.at, w.value, w.at
                ),
            ));
        }
    }
    // The kv679 rule: a node whose copy of the key was damaged never mints the key again under
    // the actor it had. Its writes claim every counter of its own below the new one as seen
    // (counters are per partition), so a lost dot of its own that other replicas still hold
    // would be superseded by a write that never saw it (a lost write, which `acked-write-lost`
    // shows only when no later client context happens to cover the value).
    for (node, _, t) in world.corrupted.iter().filter(|(_, k, _)| k == key) {
        let before = writes.iter().find(|w| {
            w.outcome == Outcome::Acked
                && w.done_at.is_some_and(|d| d < *t)
                && w.dot.is_some_and(|d| d.actor.node == *node)
        });
        let Some(before) = before else { continue };
        let old = before.dot.map(|d| d.actor);
        if let Some(after) = writes
            .iter()
            .find(|w| w.outcome == Outcome::Acked && w.at > *t && w.dot.map(|d| d.actor) == old)
        {
            out.push(violation(
                "actor-kept-after-loss",
                key,
                format!(
                    "node {node}'s copy was damaged at t={t}us, after it minted {:?} (t={}us), and it minted {:?} (t={}us) under the same actor",
                    before.dot, before.at, after.dot, after.at
                ),
            ));
        }
    }
    // 1. No acknowledged write lost.
    for w in lost_acked_writes(key, writes, &final_values, &world.applied) {
        out.push(violation(
            "acked-write-lost",
            key,
            format!(
                "value {:?} ({}) acknowledged to client {} at t={}us is gone and no later write covered it; final siblings {:?}",
                w.value.as_deref().unwrap_or_default(),
                w.dot.map(|d| format!("{d:?}")).unwrap_or_default(),
                w.client,
                w.at,
                describe(&final_obj)
            ),
        ));
    }
}

/// Invariant 1 for one key: the acknowledged puts whose value is not among the final siblings
/// and whose dot no *applied* write covers. A later write excuses a missing value only if its
/// context covers the value's dot and it was applied: acknowledged, or (its client never
/// learned the outcome) seen applied (`applied`: sent to replicas by its coordinator, carried
/// on by anti-entropy, hints or transfers, or made durable in some node's store). A write that
/// failed, or that timed out before any node stored it, cannot hide a lost acknowledged one,
/// whatever its context claims. That holds for N=1 too, where the coordinator's own store is
/// the only evidence.
fn lost_acked_writes<'a>(
    key: &str,
    writes: &[&'a WriteRecord],
    final_values: &BTreeSet<&str>,
    applied: &Applied,
) -> Vec<&'a WriteRecord> {
    let mut lost = Vec::new();
    for w in writes.iter().filter(|w| w.outcome == Outcome::Acked) {
        let (Some(value), Some(dot)) = (&w.value, w.dot) else {
            continue;
        };
        if final_values.contains(value.as_str()) {
            continue;
        }
        // A write whose value is in the final state was applied, whatever its client heard.
        let was_applied = |x: &WriteRecord| match x.outcome {
            Outcome::Acked => true,
            _ if x
                .value
                .as_ref()
                .is_some_and(|v| final_values.contains(v.as_str())) =>
            {
                true
            }
            Outcome::Failed => false,
            Outcome::Pending | Outcome::Unknown => match &x.value {
                Some(v) => applied.values.contains(v.as_bytes()),
                None => applied
                    .tombstones
                    .get(key.as_bytes())
                    .is_some_and(|t| t.contains(&dot)),
            },
        };
        if !writes
            .iter()
            .any(|x| x.context.contains(&dot) && was_applied(x))
        {
            lost.push(*w);
        }
    }
    lost
}

/// Invariant 6, `orphan-copy`: after the quiet phase (every transfer done, every member on the
/// final map), no running member keeps partition data it does not replicate. Such a copy is
/// read, transferred and repaired by nobody, and may hold the only copy of a write.
fn check_orphans(world: &World, out: &mut Vec<Violation>) {
    let map = world.final_map();
    for node in world.nodes.iter().filter(|n| n.is_active()) {
        let Some(core) = node.core.as_ref() else {
            continue;
        };
        let Ok(held) = core.store().partitions() else {
            continue;
        };
        for p in held {
            if map
                .preference_list(p, usize::from(world.cfg.n))
                .contains(&node.id)
            {
                continue;
            }
            let keys = core
                .store()
                .scan(Space::Partition(p), None, 3)
                .unwrap_or_default();
            let key = keys
                .first()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            out.push(violation(
                "orphan-copy",
                &key,
                format!(
                    "node {} still holds partition {p} (keys from {key:?}), which it does not replicate",
                    node.id
                ),
            ));
        }
    }
}

fn violation(invariant: &'static str, key: &str, detail: String) -> Violation {
    Violation {
        invariant,
        key: key.to_string(),
        detail,
        events: Vec::new(),
    }
}

/// The acknowledged write whose context covered `dot`, so that a sibling with that dot should
/// be gone. A dot brought back by a restore at `restored_at` may outlive the writes submitted
/// before that restore (it came back after they covered it), never one submitted after it.
fn superseding_write<'a>(
    writes: &[&'a WriteRecord],
    dot: &Dot,
    restored_at: Option<u64>,
) -> Option<&'a WriteRecord> {
    writes.iter().copied().find(|w| {
        w.outcome == Outcome::Acked
            && w.context.contains(dot)
            && restored_at.is_none_or(|t| w.at >= t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynakv_proto::dvv::Actor;

    fn actor() -> Actor {
        Actor::new(dynakv_ring::NodeId(1), 7)
    }

    fn record(
        value: Option<&str>,
        context: &[u64],
        outcome: Outcome,
        dot: Option<u64>,
    ) -> WriteRecord {
        WriteRecord {
            client: 0,
            key: "k".into(),
            value: value.map(str::to_string),
            context: NodeClock::from_vector(&dynakv_proto::dvv::VersionVector::from_entries(
                context.iter().map(|c| (actor(), *c)).collect(),
            )),
            outcome,
            dot: dot.map(|c| Dot::new(actor(), c)),
            at: 0,
            done_at: None,
            primary_acks: 0,
        }
    }

    /// The acknowledged put "a" (dot 1) is gone and "b" (if `later` writes it) survives;
    /// `later` is the only other write. Returns the values reported lost.
    fn lost_with(later: WriteRecord, applied: &Applied) -> Vec<String> {
        let acked = record(Some("a"), &[], Outcome::Acked, Some(1));
        let writes = [&acked, &later];
        // The later write's value is gone too (a still later write replaced it): whether it
        // was applied is not shown by the final state. Only what becomes of "a" is asked.
        let finals: BTreeSet<&str> = ["z"].into_iter().collect();
        lost_acked_writes("k", &writes, &finals, applied)
            .into_iter()
            .filter_map(|w| w.value.clone())
            .filter(|v| v == "a")
            .collect()
    }

    /// A restored dot is excused only from the writes that came before its restore.
    #[test]
    fn a_restore_excuses_a_dot_only_from_earlier_writes() {
        let dot = Dot::new(actor(), 1);
        let mut covering = record(Some("b"), &[1], Outcome::Acked, Some(2));
        covering.at = 100;
        let writes = [&covering];
        assert!(superseding_write(&writes, &dot, None).is_some());
        assert!(superseding_write(&writes, &dot, Some(50)).is_some());
        assert!(superseding_write(&writes, &dot, Some(100)).is_some());
        assert!(superseding_write(&writes, &dot, Some(150)).is_none());
        let blind = record(Some("c"), &[], Outcome::Acked, Some(3));
        assert!(superseding_write(&[&blind], &dot, None).is_none());
    }

    #[test]
    fn a_value_still_among_the_siblings_is_not_lost() {
        let acked = record(Some("a"), &[], Outcome::Acked, Some(1));
        let finals: BTreeSet<&str> = ["a"].into_iter().collect();
        assert!(lost_acked_writes("k", &[&acked], &finals, &Applied::default()).is_empty());
        assert_eq!(
            lost_acked_writes("k", &[&acked], &BTreeSet::new(), &Applied::default()).len(),
            1
        );
    }

    #[test]
    fn an_acknowledged_later_write_that_covers_the_dot_excuses_it() {
        let later = record(Some("b"), &[1], Outcome::Acked, Some(2));
        assert!(lost_with(later, &Applied::default()).is_empty());
        // A context that does not cover the dot excuses nothing.
        let blind = record(Some("b"), &[], Outcome::Acked, Some(2));
        assert_eq!(lost_with(blind, &Applied::default()), ["a"]);
    }

    /// A write whose value is among the final siblings was applied, whatever its client heard
    /// (seed 4 with N=3 R=W=1: a timed-out put, forwarded and stored by its coordinator alone,
    /// legitimately superseded the values its context covered).
    #[test]
    fn a_write_whose_value_survives_counts_as_applied() {
        let acked = record(Some("a"), &[], Outcome::Acked, Some(1));
        let later = record(Some("b"), &[1], Outcome::Unknown, None);
        let writes = [&acked, &later];
        let finals: BTreeSet<&str> = ["b"].into_iter().collect();
        assert!(lost_acked_writes("k", &writes, &finals, &Applied::default()).is_empty());
        let finals: BTreeSet<&str> = BTreeSet::new();
        assert_eq!(
            lost_acked_writes("k", &writes, &finals, &Applied::default()).len(),
            1
        );
    }

    /// The rule of the safety issue: a write whose outcome is unknown hides a lost acknowledged
    /// write only if some coordinator was seen applying it.
    #[test]
    fn an_unknown_write_hides_nothing_unless_it_was_seen_applied() {
        for outcome in [Outcome::Unknown, Outcome::Pending] {
            let later = || record(Some("b"), &[1], outcome, None);
            assert_eq!(
                lost_with(later(), &Applied::default()),
                ["a"],
                "{outcome:?}"
            );
            let mut applied = Applied::default();
            applied.values.insert(b"b".to_vec());
            assert!(lost_with(later(), &applied).is_empty(), "{outcome:?}");
        }
    }

    #[test]
    fn an_unknown_delete_excuses_only_through_a_tombstone_seen_covering_the_dot() {
        let delete = || record(None, &[1], Outcome::Unknown, None);
        assert_eq!(lost_with(delete(), &Applied::default()), ["a"]);
        let mut applied = Applied::default();
        applied.tombstones.insert(
            b"k".to_vec(),
            NodeClock::from_vector(&dynakv_proto::dvv::VersionVector::from_entries(vec![(
                actor(),
                1,
            )])),
        );
        assert!(lost_with(delete(), &applied).is_empty());
        // A tombstone of this key that does not cover the dot, or one of another key, is no excuse.
        let mut other = Applied::default();
        other.tombstones.insert(b"k".to_vec(), NodeClock::new());
        other.tombstones.insert(
            b"j".to_vec(),
            NodeClock::from_vector(&dynakv_proto::dvv::VersionVector::from_entries(vec![(
                actor(),
                1,
            )])),
        );
        assert_eq!(lost_with(delete(), &other), ["a"]);
    }

    #[test]
    fn a_failed_write_never_excuses() {
        let mut applied = Applied::default();
        applied.values.insert(b"b".to_vec());
        let failed = record(Some("b"), &[1], Outcome::Failed, None);
        assert_eq!(lost_with(failed, &applied), ["a"]);
    }
}

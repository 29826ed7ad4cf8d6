//! Pending operations as small state machines. The coordinator feeds each one the replies of
//! its targets (`on_ack`, `on_reply`) and asks where it stands (`progress`): the reply to send
//! now, if any (exactly once), and whether the operation is over. The operations never send,
//! store or arm timers themselves; the coordinator does what their progress says.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dynakv_ring::{NodeId, PartitionId};

use super::coordinator::{error, is_primary, Quorum, Target};
use super::node::Origin;
use super::types::{ClientReply, GetReply, Object, PutReply, ReplicaError, RequestError, Stored};
use crate::dvv::{Dot, NodeClock};

/// What a pending operation asks of the coordinator after an input.
#[derive(Debug)]
pub(super) struct Progress {
    /// Send this reply to this origin now (at most once per operation).
    pub(super) reply: Option<(Origin, ClientReply)>,
    /// Every target has answered: the operation is over (for a read: repair, then forget).
    pub(super) finished: bool,
}

/// A put or delete waiting for acknowledgements.
#[derive(Debug)]
pub(super) struct WriteOp {
    pub(super) origin: Origin,
    pub(super) kind: &'static str,
    pub(super) partition: PartitionId,
    pub(super) key: Bytes,
    pub(super) object: Object,
    pub(super) targets: Vec<Target>,
    pub(super) acked: BTreeSet<NodeId>,
    /// Primaries that acknowledged only as fallbacks (their map no longer has them as
    /// replicas: they kept the object as hints for the current ones).
    pub(super) demoted: BTreeSet<NodeId>,
    pub(super) failed: BTreeMap<NodeId, ReplicaError>,
    pub(super) quorum: Quorum,
    pub(super) context: NodeClock,
    pub(super) dot: Option<Dot>,
    pub(super) deadline: u64,
    /// When unanswered targets get fallbacks (once); `None` after that.
    pub(super) fallback_at: Option<u64>,
    pub(super) replied: bool,
}

/// A get waiting for replies (and, after replying, for the rest of them, for read repair).
#[derive(Debug)]
pub(super) struct ReadOp {
    pub(super) origin: Origin,
    pub(super) partition: PartitionId,
    pub(super) key: Bytes,
    pub(super) targets: Vec<Target>,
    pub(super) replies: BTreeMap<NodeId, Option<Object>>,
    pub(super) failed: BTreeMap<NodeId, ReplicaError>,
    pub(super) quorum: Quorum,
    pub(super) deadline: u64,
    pub(super) replied: bool,
    /// When the read started: no reply can hold data read before it (see `snapshot_horizon`).
    pub(super) started: u64,
}

/// A write forwarded to a replica of its key.
#[derive(Debug)]
pub(super) struct ForwardOp {
    pub(super) origin: Origin,
    pub(super) kind: &'static str,
    pub(super) quorum: Quorum,
    pub(super) deadline: u64,
    /// The replica it went to: the only node whose claim is granted.
    pub(super) to: NodeId,
    /// The nonce of the claim granted: no other copy of the forward may be coordinated (a
    /// copy of that same claim is granted again).
    pub(super) claimed: Option<u64>,
}

/// An operation this node coordinates.
#[derive(Debug)]
pub(super) enum PendingOp {
    Write(WriteOp),
    Read(ReadOp),
    Forward(ForwardOp),
}

impl PendingOp {
    /// Every time at which this operation registered a timer.
    pub(super) fn timers(&self) -> Vec<u64> {
        match self {
            PendingOp::Write(w) => std::iter::once(w.deadline).chain(w.fallback_at).collect(),
            PendingOp::Read(r) => vec![r.deadline],
            PendingOp::Forward(f) => vec![f.deadline],
        }
    }
}

/// "node 2: Storage(\"disk full\"); node 3: ..." for an error message.
fn describe_refusals(failed: &BTreeMap<NodeId, ReplicaError>) -> String {
    failed
        .iter()
        .map(|(n, e)| format!("node {n}: {e:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl WriteOp {
    /// How many nodes will keep the object once every hint among the acks is handed off: an
    /// ack counts for the node it stored for, so a fallback's hint counts for its owner, and a
    /// hint for a node that acknowledged itself adds no copy. (The handoff merges the hint into
    /// the owner's copy and drops it: counting both would let a W=2 write rest on one node, as
    /// an extra fallback's hint for a primary that also got the write once did.) A fallback
    /// answers that it stored a hint, as it should; a primary that did so (its map no longer
    /// has it as a replica, so it hinted the current ones) counts as itself.
    pub(super) fn copies(&self) -> usize {
        let home = |node: NodeId| {
            self.targets
                .iter()
                .find(|t| t.node == node)
                .and_then(|t| t.hint_for)
                .unwrap_or(node)
        };
        self.acked
            .iter()
            .map(|n| home(*n))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Acks from primaries that stored the object as replicas.
    pub(super) fn primary_acks(&self) -> usize {
        self.acked
            .iter()
            .filter(|n| is_primary(&self.targets, **n) && !self.demoted.contains(n))
            .count()
    }

    /// Take a target's answer to the replica write. Returns `false` (and changes nothing) when
    /// `from` is not one of this write's targets. An ack replaces an earlier failure of the
    /// same target; a failure never replaces an ack.
    pub(super) fn on_ack(&mut self, from: NodeId, result: Result<Stored, ReplicaError>) -> bool {
        if !self.targets.iter().any(|t| t.node == from) {
            return false;
        }
        match result {
            Ok(stored) => {
                self.failed.remove(&from);
                self.acked.insert(from);
                if stored == Stored::Hint {
                    self.demoted.insert(from);
                }
            }
            Err(e) => {
                if !self.acked.contains(&from) {
                    self.failed.insert(from, e);
                }
            }
        }
        true
    }

    /// Where the write stands: the success reply once W acks (PW of them from primaries) are
    /// in, or a failure once enough targets refused that W is out of reach (and no fallback
    /// can still be tried); finished once replied and every target answered.
    pub(super) fn progress(&mut self) -> Progress {
        let acks = self.copies();
        let answered = self.acked.len();
        let primary_acks = self.primary_acks();
        let needed = usize::from(self.quorum.needed);
        let needed_primaries = usize::from(self.quorum.primaries);
        let mut reply = None;
        if !self.replied && acks >= needed && primary_acks >= needed_primaries {
            self.replied = true;
            reply = Some((
                self.origin,
                ClientReply::Written(PutReply {
                    context: self.context.clone(),
                    dot: self.dot,
                    acks: acks as u8,
                    primary_acks: primary_acks as u8,
                    fallback_acks: (acks - primary_acks) as u8,
                }),
            ));
        } else if !self.replied
            && self.targets.len() - self.failed.len() < needed
            && self.fallback_at.is_none()
        {
            // Enough replicas refused that the quorum cannot be reached: fail now.
            self.replied = true;
            let detail = describe_refusals(&self.failed);
            reply = Some((
                self.origin,
                error(RequestError::ReplicasRefused {
                    op: self.kind.into(),
                    refused: self.failed.len() as u8,
                    asked: self.targets.len() as u8,
                    detail,
                }),
            ));
        }
        let finished = self.replied && answered + self.failed.len() >= self.targets.len();
        Progress { reply, finished }
    }
}

impl ReadOp {
    /// Take a target's answer to the replica read. Returns `false` (and changes nothing) for a
    /// node that is not a target or already answered. (A malformed object never gets here: the
    /// frame carrying it fails to decode.)
    pub(super) fn on_reply(
        &mut self,
        from: NodeId,
        result: Result<Option<Object>, ReplicaError>,
    ) -> bool {
        if !self.targets.iter().any(|t| t.node == from)
            || self.replies.contains_key(&from)
            || self.failed.contains_key(&from)
        {
            return false;
        }
        match result {
            Ok(object) => {
                self.replies.insert(from, object);
            }
            Err(e) => {
                self.failed.insert(from, e);
            }
        }
        true
    }

    /// The merge of every reply so far, with the coordinator's `merge`.
    pub(super) fn merged(&self, merge: impl Fn(&Object, &Object) -> Object) -> Object {
        self.replies
            .values()
            .flatten()
            .fold(Object::new(), |acc, o| merge(&acc, o))
    }

    /// Where the read stands: the reply once R replies (PR of them from primaries) are in, or
    /// a failure once R is out of reach or every target answered without enough primaries;
    /// finished once every target answered.
    pub(super) fn progress(&mut self, merge: impl Fn(&Object, &Object) -> Object) -> Progress {
        let needed = usize::from(self.quorum.needed);
        let answered = self.replies.len();
        let primary_replies = self
            .replies
            .keys()
            .filter(|n| is_primary(&self.targets, **n))
            .count();
        let finished = answered + self.failed.len() >= self.targets.len();
        let mut reply = None;
        if !self.replied
            && answered >= needed
            && primary_replies >= usize::from(self.quorum.primaries)
        {
            let merged = self.merged(merge);
            reply = Some(ClientReply::Got(GetReply {
                values: merged
                    .values()
                    .into_iter()
                    .filter_map(|v| v.data().cloned())
                    .collect(),
                context: merged.context().clone(),
                replied: answered as u8,
                primary_replies: primary_replies as u8,
            }));
        } else if !self.replied && self.targets.len() - self.failed.len() < needed {
            let detail = describe_refusals(&self.failed);
            reply = Some(error(RequestError::ReplicasRefused {
                op: "get".into(),
                refused: self.failed.len() as u8,
                asked: self.targets.len() as u8,
                detail,
            }));
        } else if !self.replied && finished {
            reply = Some(error(RequestError::PrimariesUnavailable {
                op: "get".into(),
                needed: self.quorum.primaries,
                available: primary_replies as u8,
            }));
        }
        if reply.is_some() {
            self.replied = true;
        }
        Progress {
            reply: reply.map(|r| (self.origin, r)),
            finished,
        }
    }

    /// After the reply, wait for the other targets only until `window`: a repair from an old
    /// snapshot could bring back something deleted (and reaped) meanwhile. Returns the old
    /// deadline when it moved (the coordinator re-arms the timer).
    pub(super) fn shorten_deadline(&mut self, window: u64) -> Option<u64> {
        if self.deadline > window {
            let old = self.deadline;
            self.deadline = window;
            Some(old)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::NodeClock;

    fn node(i: u32) -> NodeId {
        NodeId(i)
    }

    fn primary(i: u32) -> Target {
        Target {
            node: node(i),
            hint_for: None,
        }
    }

    fn fallback(i: u32, owner: u32) -> Target {
        Target {
            node: node(i),
            hint_for: Some(node(owner)),
        }
    }

    fn write(targets: Vec<Target>, coordinator: u32, w: u8) -> WriteOp {
        WriteOp {
            origin: Origin::Client(1),
            kind: "put",
            partition: PartitionId(0),
            key: Bytes::from_static(b"k"),
            object: Object::new(),
            targets,
            acked: BTreeSet::from([node(coordinator)]),
            demoted: BTreeSet::new(),
            failed: BTreeMap::new(),
            quorum: Quorum {
                n: 3,
                needed: w,
                primaries: 0,
                timeout_ms: 1_000,
            },
            context: NodeClock::new(),
            dot: None,
            deadline: 0,
            fallback_at: None,
            replied: false,
        }
    }

    fn written(p: &Progress) -> Option<(u8, u8, u8)> {
        match &p.reply {
            Some((_, ClientReply::Written(r))) => Some((r.acks, r.primary_acks, r.fallback_acks)),
            _ => None,
        }
    }

    #[test]
    fn an_extra_fallbacks_hint_for_a_primary_that_acked_adds_no_copy() {
        // Node 4 coordinates as an extra fallback, its copy hinted for primary 1, which is
        // also a target: with W=2, node 4 and node 1 are one copy once the hint is handed off.
        let mut op = write(
            vec![primary(1), primary(2), primary(3), fallback(4, 1)],
            4,
            2,
        );
        assert!(op.on_ack(node(1), Ok(Stored::Replica)));
        let p = op.progress();
        assert_eq!(written(&p), None, "two acks but one copy");
        assert!(op.on_ack(node(2), Ok(Stored::Replica)));
        let p = op.progress();
        assert_eq!(written(&p), Some((2, 2, 0)));
        assert!(!p.finished, "primary 3 has not answered");
        assert!(op.on_ack(node(3), Ok(Stored::Replica)));
        assert!(op.progress().finished);
    }

    #[test]
    fn hints_for_distinct_owners_count_as_distinct_copies() {
        // Coordinator 1 (primary), primaries 2 and 3 silent, fallbacks 4 and 5 hinted for them.
        let mut op = write(
            vec![
                primary(1),
                primary(2),
                primary(3),
                fallback(4, 2),
                fallback(5, 3),
            ],
            1,
            3,
        );
        // Fallbacks answer as they do in the core: they stored a hint.
        assert!(op.on_ack(node(4), Ok(Stored::Hint)));
        assert_eq!(written(&op.progress()), None);
        // A late ack from primary 2 itself: its hint at node 4 is the same copy.
        assert!(op.on_ack(node(2), Ok(Stored::Replica)));
        assert_eq!(written(&op.progress()), None, "1, 2 (twice): two copies");
        assert!(op.on_ack(node(5), Ok(Stored::Hint)));
        assert_eq!(written(&op.progress()), Some((3, 2, 1)));
    }

    #[test]
    fn a_primary_that_stored_a_hint_counts_as_one_copy_but_not_as_a_primary() {
        // Node 2's map no longer has it as a replica: it keeps the object as hints for the
        // current replicas and says so. It is one node holding the write, not a primary ack.
        let mut op = write(vec![primary(1), primary(2), primary(3)], 1, 2);
        op.quorum.primaries = 2;
        assert!(op.on_ack(node(2), Ok(Stored::Hint)));
        assert_eq!(written(&op.progress()), None, "PW=2 needs a second primary");
        assert!(op.on_ack(node(3), Ok(Stored::Replica)));
        assert_eq!(written(&op.progress()), Some((3, 2, 1)));
    }
}

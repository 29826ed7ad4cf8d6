//! The gossip messages, digests and deltas, and the bound on their size.
//!
//! # Push-pull exchange (three messages, as in Cassandra)
//!
//! 1. `A -> B`: [`GossipMsg::Syn`] with A's [`Digest`]: a stamp per member row, the map's
//!    version and hash, and every heartbeat; no addresses, no map.
//! 2. `B -> A`: [`GossipMsg::Ack`] with a [`Delta`] of what A is missing or has older, plus B's
//!    own digest if A's digest shows something B may be missing.
//! 3. `A -> B`: [`GossipMsg::Ack2`] with the [`Delta`] of what B is missing.
//!
//! Steps 2 and 3 carry only rows that differ, so an exchange between nodes that agree costs a
//! digest and two small heartbeat deltas.
//!
//! # Size bound
//!
//! Every message carries at most one map (`Q <= 4096` owners), at most [`MAX_MEMBERS`] member
//! rows (addresses of at most [`MAX_ADDR_LEN`] bytes) and at most [`MAX_MEMBERS`] heartbeats and
//! stamps; [`GossipMsg::validate`] refuses anything bigger before it is merged.
//! [`GossipMsg::size_bound`] adds up the worst-case encoded size of each field (a `u64` as 9
//! bytes, like bincode's varint, a length prefix as 9 bytes), and the worst message is below
//! [`MAX_MESSAGE_BYTES`] (a unit test builds it). The transport's frame limit for gossip must be
//! at least that. Typical figures are far smaller (see docs/MEMBERSHIP.md).

use std::collections::BTreeMap;

use dynakv_ring::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::GossipError;
use crate::state::{
    map_hash, member_hash, ClusterParams, ClusterState, Fnv, Heartbeat, MapVersion, Member, Status,
    VersionedMap, MAX_ADDR_LEN, MAX_MEMBERS,
};

/// An upper bound on the encoded size of any valid gossip message, in bytes (see the module
/// docs). Set the transport's gossip frame limit to at least this.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// The summary of one member row in a digest: enough to order it, plus a hash of the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStamp {
    /// The row's version.
    pub version: u64,
    /// The row's status.
    pub status: Status,
    /// A hash of the whole row, to tell apart rows equal in version and status.
    pub hash: u64,
}

impl MemberStamp {
    fn of(m: &Member) -> Self {
        let mut h = Fnv::new();
        member_hash(&mut h, m);
        MemberStamp {
            version: m.version,
            status: m.status,
            hash: h.finish(),
        }
    }

    /// The known part of [`Member::merge_key`]; equal prefixes with different hashes are
    /// incomparable from the digest alone, so both sides send.
    fn prefix(&self) -> (bool, u64, Status) {
        (self.status == Status::Removed, self.version, self.status)
    }
}

/// The summary of the partition map in a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStamp {
    /// The map's version.
    pub version: MapVersion,
    /// A hash of the whole versioned map.
    pub hash: u64,
}

/// What a node has, in summary: sent first in every exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The sender's cluster parameters, checked by the receiver.
    pub params: ClusterParams,
    /// The sender's map stamp.
    pub map: MapStamp,
    /// A stamp per member row.
    pub members: BTreeMap<NodeId, MemberStamp>,
    /// Every heartbeat the sender knows.
    pub heartbeats: BTreeMap<NodeId, Heartbeat>,
}

/// Part of a cluster state: the rows, map and heartbeats the receiver lacks. Merged with the
/// same rule as a whole state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Member rows.
    pub members: BTreeMap<NodeId, Member>,
    /// The map, if the receiver's is older.
    pub map: Option<VersionedMap>,
    /// Heartbeats.
    pub heartbeats: BTreeMap<NodeId, Heartbeat>,
}

impl Delta {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.map.is_none() && self.heartbeats.is_empty()
    }
}

/// A message between two gossipers. The driver encodes it (bincode) and delivers it to the
/// destination's [`crate::Gossiper::handle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// Step 1 of an exchange: "here is what I have".
    Syn(Digest),
    /// Step 2: "here is what you lack", and, if the sender may lack something, its digest.
    Ack {
        /// What the receiver is missing.
        delta: Delta,
        /// The sender's digest, present when the receiver should answer with an `Ack2`.
        digest: Option<Digest>,
    },
    /// Step 3: "here is what you lack".
    Ack2(Delta),
    /// A changed membership pushed right away (members and map, no reply expected).
    Push(Delta),
    /// A new node asks a seed to be let in.
    JoinRequest {
        /// The new node's id.
        node: NodeId,
        /// Where peers reach it.
        addr: String,
    },
    /// The seed's answer to a join: the whole cluster state, the join staged in it.
    JoinAccept(Box<ClusterState>),
    /// The seed refuses the join (the reason is for the operator).
    JoinRefused {
        /// Why, e.g. "node 4 was removed from the cluster; a removed id cannot be reused".
        reason: String,
    },
}

impl ClusterState {
    /// The digest of this state (step 1 of an exchange).
    pub fn digest(&self) -> Digest {
        Digest {
            params: self.params,
            map: MapStamp {
                version: self.map.version,
                hash: map_hash(&self.map),
            },
            members: self
                .members
                .iter()
                .map(|(&id, m)| (id, MemberStamp::of(m)))
                .collect(),
            heartbeats: self.heartbeats.clone(),
        }
    }

    /// What the owner of `theirs` is missing or has older: every row that differs from their
    /// stamp unless theirs is known to be newer.
    pub fn delta_for(&self, theirs: &Digest) -> Delta {
        let members = self
            .members
            .iter()
            .filter(|(id, m)| match theirs.members.get(id) {
                None => true,
                Some(t) => {
                    let mine = MemberStamp::of(m);
                    mine != *t && mine.prefix() >= t.prefix()
                }
            })
            .map(|(&id, m)| (id, m.clone()))
            .collect();
        let my_map = map_hash(&self.map);
        let map = (my_map != theirs.map.hash && self.map.version >= theirs.map.version)
            .then(|| self.map.clone());
        let heartbeats = self
            .heartbeats
            .iter()
            .filter(|(id, hb)| theirs.heartbeats.get(id).is_none_or(|t| *hb > t))
            .map(|(&id, &hb)| (id, hb))
            .collect();
        Delta {
            members,
            map,
            heartbeats,
        }
    }

    /// Whether the owner of `theirs` may have something newer than this state (then the `Ack`
    /// carries our digest, asking for it).
    pub fn may_lack(&self, theirs: &Digest) -> bool {
        let members = theirs
            .members
            .iter()
            .any(|(id, t)| match self.members.get(id) {
                None => true,
                Some(m) => {
                    let mine = MemberStamp::of(m);
                    mine != *t && t.prefix() >= mine.prefix()
                }
            });
        let map = map_hash(&self.map) != theirs.map.hash && theirs.map.version >= self.map.version;
        let heartbeats = theirs
            .heartbeats
            .iter()
            .any(|(id, t)| self.heartbeats.get(id).is_none_or(|hb| t > hb));
        members || map || heartbeats
    }

    /// The membership as a delta (all rows and the map, no heartbeats): what a push carries.
    pub fn membership_delta(&self) -> Delta {
        Delta {
            members: self.members.clone(),
            map: Some(self.map.clone()),
            heartbeats: BTreeMap::new(),
        }
    }

    /// Merges a delta (same rule as [`Self::merge`]; see [`crate::state`]).
    pub fn merge_delta(&mut self, delta: &Delta) -> Result<crate::MergeOutcome, GossipError> {
        self.merge_parts(&delta.members, delta.map.as_ref(), &delta.heartbeats)
    }
}

impl GossipMsg {
    /// Checks a received message against the limits and our parameters before it is used.
    /// [`crate::Gossiper::handle`] calls it; a driver may call it right after decoding.
    pub fn validate(&self, params: Option<ClusterParams>) -> Result<(), GossipError> {
        let check_digest = |d: &Digest| {
            if let Some(p) = params {
                p.check_same(&d.params)?;
            }
            limit(d.members.len(), "member stamps")?;
            limit(d.heartbeats.len(), "heartbeats")
        };
        let check_delta = |d: &Delta| {
            limit(d.members.len(), "member rows")?;
            limit(d.heartbeats.len(), "heartbeats")?;
            if let Some(m) = &d.map {
                limit(m.planned_for.len(), "planned members")?;
            }
            d.members
                .values()
                .try_for_each(|m| crate::state::check_addr(&m.addr))
        };
        match self {
            GossipMsg::Syn(d) => check_digest(d),
            GossipMsg::Ack { delta, digest } => {
                check_delta(delta)?;
                digest.as_ref().map_or(Ok(()), check_digest)
            }
            GossipMsg::Ack2(d) | GossipMsg::Push(d) => check_delta(d),
            GossipMsg::JoinRequest { addr, .. } => crate::state::check_addr(addr),
            GossipMsg::JoinAccept(state) => state.validate(),
            GossipMsg::JoinRefused { reason } if reason.len() > 1024 => Err(
                GossipError::Malformed("refusal reason over 1024 bytes".into()),
            ),
            GossipMsg::JoinRefused { .. } => Ok(()),
        }
    }

    /// An upper bound on this message's encoded size in bytes (worst case per field; see the
    /// module docs). A valid message is never above [`MAX_MESSAGE_BYTES`].
    pub fn size_bound(&self) -> usize {
        const TAG: usize = 9;
        match self {
            GossipMsg::Syn(d) => TAG + digest_bound(d),
            GossipMsg::Ack { delta, digest } => {
                TAG + delta_bound(delta) + 1 + digest.as_ref().map_or(0, digest_bound)
            }
            GossipMsg::Ack2(d) | GossipMsg::Push(d) => TAG + delta_bound(d),
            GossipMsg::JoinRequest { addr, .. } => TAG + 5 + 9 + addr.len(),
            GossipMsg::JoinAccept(s) => {
                let delta = Delta {
                    members: s.members.clone(),
                    map: Some(s.map.clone()),
                    heartbeats: s.heartbeats.clone(),
                };
                TAG + 3 + 2 + delta_bound(&delta)
            }
            GossipMsg::JoinRefused { reason } => TAG + 9 + reason.len(),
        }
    }
}

fn limit(len: usize, what: &str) -> Result<(), GossipError> {
    if len > MAX_MEMBERS {
        return Err(GossipError::Malformed(format!(
            "{len} {what}, the limit is {MAX_MEMBERS}"
        )));
    }
    Ok(())
}

/// Worst-case bytes: node id 5, u64 9, length prefix 9, enum tag 9.
const ID: usize = 5;
const U64: usize = 9;
const LEN: usize = 9;

fn digest_bound(d: &Digest) -> usize {
    let params = 3 + 2;
    let map = U64 + ID + U64;
    let stamp = ID + U64 + 1 + U64;
    let hb = ID + 2 * U64;
    params + map + LEN + d.members.len() * stamp + LEN + d.heartbeats.len() * hb
}

fn delta_bound(d: &Delta) -> usize {
    let rows: usize = d
        .members
        .values()
        .map(|m| ID + LEN + m.addr.len().min(MAX_ADDR_LEN) + 1 + U64)
        .sum();
    let map = d.map.as_ref().map_or(1, |m| {
        1 + U64 + ID + LEN + m.planned_for.len() * ID + 3 + LEN + m.map.owners().len() * ID
    });
    LEN + rows + map + LEN + d.heartbeats.len() * (ID + 2 * U64)
}

#[cfg(test)]
mod tests {
    use dynakv_ring::MAX_PARTITIONS;

    use super::*;

    /// The largest valid state: 4096 partitions, the member table full of 256-byte addresses,
    /// every heartbeat at its largest.
    fn worst_state() -> ClusterState {
        let founders: BTreeMap<NodeId, String> = (0..MAX_MEMBERS as u32)
            .map(|i| (NodeId(u32::MAX - i), format!("{i:0>256}")))
            .collect();
        let params = ClusterParams {
            partitions: MAX_PARTITIONS,
            replicas: u8::MAX,
        };
        let mut s = ClusterState::new(params, &founders).expect("state");
        for id in founders.keys() {
            s.observe_heartbeat(
                *id,
                Heartbeat {
                    generation: u64::MAX,
                    counter: u64::MAX,
                },
            );
            if let Some(m) = s.members.get_mut(id) {
                m.version = u64::MAX;
            }
        }
        s.map.version.epoch = u64::MAX;
        s
    }

    #[test]
    fn the_worst_message_is_within_the_bound() {
        let s = worst_state();
        let full = Delta {
            members: s.members.clone(),
            map: Some(s.map.clone()),
            heartbeats: s.heartbeats.clone(),
        };
        let msgs = [
            GossipMsg::Syn(s.digest()),
            GossipMsg::Ack {
                delta: full.clone(),
                digest: Some(s.digest()),
            },
            GossipMsg::Ack2(full.clone()),
            GossipMsg::Push(full),
            GossipMsg::JoinAccept(Box::new(s.clone())),
        ];
        for m in &msgs {
            println!("worst-case size bound: {} bytes", m.size_bound());
            m.validate(Some(s.params)).expect("valid");
            assert!(m.size_bound() <= MAX_MESSAGE_BYTES, "{}", m.size_bound());
        }
        // And the limits are what keeps it there: one more row is refused.
        let mut big = Delta::default();
        for i in 0..=MAX_MEMBERS as u32 {
            big.heartbeats.insert(NodeId(i), Heartbeat::default());
        }
        assert!(matches!(
            GossipMsg::Ack2(big).validate(None),
            Err(GossipError::Malformed(_))
        ));
    }

    #[test]
    fn digests_of_equal_states_ask_for_nothing() {
        let s = worst_state();
        let d = s.digest();
        assert!(s.delta_for(&d).is_empty());
        assert!(!s.may_lack(&d));
    }
}

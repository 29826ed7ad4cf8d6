//! A tiny deterministic network for gossipers: rounds of virtual time, instant delivery,
//! crashed nodes that drop everything.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dynakv_gossip::{ClusterParams, ClusterState, GossipConfig, GossipMsg, Gossiper, Outbox};
use dynakv_ring::NodeId;

pub const PARAMS: ClusterParams = ClusterParams {
    partitions: 64,
    replicas: 3,
};

pub fn addr(id: u32) -> String {
    format!("10.0.{}.{}:7000", id / 256, id % 256)
}

#[derive(Debug)]
pub struct Sim {
    pub nodes: BTreeMap<NodeId, Gossiper>,
    pub crashed: BTreeSet<NodeId>,
    pub now: u64,
    pub config: GossipConfig,
    /// Messages delivered so far, and the largest `size_bound` seen.
    pub messages: usize,
    pub max_size: usize,
}

impl Sim {
    /// `n` founders, ids `0..n`, each with its own rng seed derived from `seed`.
    pub fn cluster(n: u32, seed: u64, config: GossipConfig) -> Sim {
        let founders: BTreeMap<NodeId, String> = (0..n).map(|i| (NodeId(i), addr(i))).collect();
        let state = ClusterState::new(PARAMS, &founders).expect("cluster");
        let nodes = (0..n)
            .map(|i| {
                let g = Gossiper::with_state(
                    NodeId(i),
                    state.clone(),
                    1,
                    seed.wrapping_mul(1000).wrapping_add(u64::from(i)),
                    config,
                    0,
                )
                .expect("member");
                (NodeId(i), g)
            })
            .collect();
        Sim {
            nodes,
            crashed: BTreeSet::new(),
            now: 0,
            config,
            messages: 0,
            max_size: 0,
        }
    }

    pub fn node(&mut self, id: u32) -> &mut Gossiper {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    /// Delivers `out` (sent by `from`) and every reply it causes, breadth first.
    pub fn deliver(&mut self, from: NodeId, out: Outbox) {
        let mut queue: VecDeque<(NodeId, NodeId, GossipMsg)> =
            out.into_iter().map(|(to, m)| (from, to, m)).collect();
        while let Some((from, to, msg)) = queue.pop_front() {
            if self.crashed.contains(&to) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            self.messages += 1;
            self.max_size = self.max_size.max(msg.size_bound());
            let replies = node.handle(self.now, from, msg).expect("valid message");
            queue.extend(replies.into_iter().map(|(t, m)| (to, t, m)));
        }
    }

    /// One round: time advances one interval, every live node ticks, then the round's
    /// messages (and the exchanges they start) are delivered.
    pub fn round(&mut self) {
        self.now += self.config.interval_us;
        let now = self.now;
        let mut sent = Vec::new();
        for (&id, g) in &mut self.nodes {
            if !self.crashed.contains(&id) {
                sent.push((id, g.tick(now)));
            }
        }
        for (id, out) in sent {
            self.deliver(id, out);
        }
    }

    /// Whether every live node has the same membership fingerprint.
    pub fn agreed(&self) -> bool {
        let fps: BTreeSet<Option<u64>> = self
            .nodes
            .iter()
            .filter(|(id, _)| !self.crashed.contains(id))
            .map(|(_, g)| g.state().map(ClusterState::fingerprint))
            .collect();
        fps.len() == 1
    }

    /// Runs rounds until `done` holds; returns how many were needed (panics after `max`).
    pub fn rounds_until(&mut self, max: usize, done: impl Fn(&Sim) -> bool) -> usize {
        for r in 0..=max {
            if done(self) {
                return r;
            }
            self.round();
        }
        panic!("not done after {max} rounds");
    }
}

//! The join handshake: a seed answering a join request, a new node taking the state.

use dynakv_ring::NodeId;

use super::{GossipEvent, Gossiper, Outbox};
use crate::changes::Change;
use crate::error::GossipError;
use crate::message::{Delta, GossipMsg};
use crate::state::{ClusterState, Status};

impl Gossiper {
    /// The seed's side: stage the join (unless the node is already a member at that address)
    /// and answer with the whole state, or refuse with a reason.
    pub(super) fn on_join_request(
        &mut self,
        now_us: u64,
        from: NodeId,
        node: NodeId,
        addr: String,
    ) -> Result<Outbox, GossipError> {
        let refuse = |reason: String| Ok(vec![(from, GossipMsg::JoinRefused { reason })]);
        if from != node {
            return refuse(format!("join request for node {node} sent by node {from}"));
        }
        let Some(state) = &self.state else {
            return refuse(format!("seed {} has not joined a cluster itself", self.me));
        };
        let mut out = match state.member(node) {
            Some(m) if m.status != Status::Removed && m.addr == addr => Vec::new(),
            Some(m) if m.status != Status::Removed => {
                return refuse(format!("node id {node} is in use at {}", m.addr));
            }
            _ => match self.stage(now_us, Change::Join { node, addr }) {
                Ok(pushes) => pushes,
                Err(e) => return refuse(e.to_string()),
            },
        };
        if let Some(state) = &self.state {
            out.push((from, GossipMsg::JoinAccept(Box::new(state.clone()))));
        }
        Ok(out)
    }

    /// The new node's side: take the state if it lists this node; once joined, a duplicate
    /// reply is merged like any other state.
    pub(super) fn on_join_accept(
        &mut self,
        now_us: u64,
        from: NodeId,
        state: ClusterState,
    ) -> Result<Outbox, GossipError> {
        if self.state.is_some() {
            // Already joined (a duplicate reply): it is just another replica to merge.
            let delta = Delta {
                members: state.members().clone(),
                map: Some(state.map().clone()),
                heartbeats: state.heartbeats().clone(),
            };
            return self.absorb(now_us, from, &delta);
        }
        match state.member(self.me) {
            Some(m) if m.status != Status::Removed => {}
            _ => {
                return Err(GossipError::Malformed(format!(
                    "join reply from {from} does not list this node {}",
                    self.me
                )))
            }
        }
        let map = state.map().version;
        self.install(state, now_us);
        self.events.push(GossipEvent::Joined { map });
        Ok(Vec::new())
    }
}

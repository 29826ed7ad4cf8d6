//! Status assembly: the node's view for `dynakv status` and the routing information a client
//! needs, built from the core's own state, so every driver reports the same thing.
//!
//! Inputs: the core's state, plus what the driver told it about its links
//! (`Input::PeerStatus`, kept in [`super::node::Liveness`]). Call [`NodeCore::status_report`] and
//! [`NodeCore::cluster_info`] whenever asked; they change nothing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use dynakv_gossip::Status;
use dynakv_proto::wire::{
    ClusterInfo, MemberStatus, StatusReport, TransferDirection, TransferStatus,
};
use dynakv_ring::NodeId;

use super::node::NodeCore;
use crate::store::Store;

/// The address an advertised string names, or the unspecified address when it is not one
/// (the simulator's placeholders; a host name, which a driver resolves itself).
fn parse_addr(advertised: &str) -> SocketAddr {
    advertised
        .parse()
        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

impl<S: Store> NodeCore<S> {
    /// Every member with its address and membership status: the cluster state's members
    /// (removed ones included), then the seeds of a node that has not joined yet.
    fn member_rows(&self) -> Vec<(NodeId, SocketAddr, Option<Status>)> {
        let mut rows = BTreeMap::new();
        if let Some(state) = self.cluster_state() {
            for (id, m) in state.members() {
                rows.insert(*id, (parse_addr(&m.addr), Some(m.status)));
            }
        }
        for (id, addr) in &self.membership.join_seeds {
            rows.entry(*id).or_insert((parse_addr(addr), None));
        }
        let mine = self.membership.my_addr.as_deref().map(parse_addr);
        rows.entry(self.ctx.id()).or_insert((
            mine.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            None,
        ));
        rows.into_iter().map(|(id, (a, s))| (id, a, s)).collect()
    }

    /// What a client needs to route requests: the members that are not removed and have a
    /// usable address, the partition map, and the quorum and timeout defaults.
    pub fn cluster_info(&self) -> ClusterInfo {
        let members = self
            .member_rows()
            .into_iter()
            .filter(|(_, addr, status)| {
                *status != Some(Status::Removed) && !addr.ip().is_unspecified()
            })
            .map(|(id, addr, _)| (id, addr))
            .collect();
        ClusterInfo {
            members,
            map: self.ctx.map.clone(),
            n: self.ctx.cfg.n,
            r: self.ctx.cfg.r,
            w: self.ctx.cfg.w,
            request_timeout_ms: self.ctx.cfg.request_timeout_ms,
        }
    }

    /// This node's view of the cluster for `dynakv status`: members (with link state, the
    /// failure detectors' opinion, membership status and partitions owned), hints, transfers
    /// and counters.
    pub fn status_report(&self) -> StatusReport {
        let counts = self.ctx.map.counts();
        let me = self.ctx.id();
        let members = self
            .member_rows()
            .into_iter()
            .map(|(id, addr, status)| MemberStatus {
                id,
                addr,
                up: id == me || self.liveness.links_up.contains(&id),
                down: self.is_down(id),
                membership: status.map(|s| s.to_string()),
                partitions: counts.get(&id).copied().unwrap_or(0),
            })
            .collect();
        StatusReport {
            node: me,
            members,
            partition_count: self.ctx.map.partition_count(),
            n: self.ctx.cfg.n,
            r: self.ctx.cfg.r,
            w: self.ctx.cfg.w,
            pending_ops: self.pending_ops() as u64,
            hints_pending: self.hints_pending(),
            transfers: self.transfer_rows(),
            down: self.down_peers(),
            stats: self.stats(),
            storage_failure: self.storage_failure().map(str::to_string),
            admission: Default::default(),
        }
    }

    /// Outgoing then incoming transfers, each in (partition, peer) order.
    fn transfer_rows(&self) -> Vec<TransferStatus> {
        let outgoing = self
            .outgoing_transfers()
            .into_iter()
            .map(|t| TransferStatus {
                direction: TransferDirection::Outgoing,
                partition: t.partition,
                peer: t.to,
                keys: t.sent,
                total: Some(t.total),
                resent: Some(t.resent),
                done: t.done,
            });
        let incoming = self
            .incoming_transfers()
            .into_iter()
            .map(|t| TransferStatus {
                direction: TransferDirection::Incoming,
                partition: t.partition,
                peer: t.from,
                keys: t.received,
                total: None,
                resent: None,
                done: t.done,
            });
        outgoing.chain(incoming).collect()
    }
}

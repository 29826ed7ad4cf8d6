//! What each node's driver tells its core about its peer connections (`Input::PeerStatus`),
//! modelled on the real driver (`dynakv-server`'s `peers.rs` over QUIC): a link reports "up"
//! as soon as a connection can be made, and "down" once the peer has been silent for the QUIC
//! idle timeout (a crashed, paused or partitioned peer), or after a failed dial for a link that
//! never came up. The core turns these into its failure detector's opinion (sloppy quorum,
//! hint delivery), so the simulator exercises the same path as production.

use std::collections::BTreeMap;

use dynakv_core::Input;
use dynakv_ring::NodeId;

use crate::world::{Event, World};

/// How often every running node's links are checked, virtual microseconds.
pub(crate) const LINK_WATCH_US: u64 = 250_000;
/// The transport's idle timeout: a connection with no packets for this long is closed.
const IDLE_TIMEOUT_US: u64 = 10_000_000;
/// The transport's dial timeout: a link that never came up reports down after a failed dial.
const DIAL_TIMEOUT_US: u64 = 3_000_000;

/// One link as the driver sees it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LinkWatch {
    /// What the core was last told (`None`: nothing yet; the core assumes up).
    reported: Option<bool>,
    /// Since when the peer has been unreachable without a break.
    unreachable_since: Option<u64>,
}

impl World {
    /// Can packets flow both ways between `a` and `b` right now (both processes running, no
    /// cut or clog in either direction)?
    fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        let running = |id: NodeId| {
            self.nodes
                .get((id.0 as usize).saturating_sub(1))
                .is_some_and(|n| n.is_up() && !n.paused)
        };
        let open = |f: NodeId, t: NodeId| {
            !self.net.blocked.contains_key(&(f, t)) && !self.net.clogged.contains_key(&(f, t))
        };
        running(a) && running(b) && open(a, b) && open(b, a)
    }

    /// Check every running node's links and report changes to its core; re-arms itself.
    pub(crate) fn watch_links(&mut self) {
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            let node = self.node_mut(id);
            // A paused process runs no driver; a stopped one has no links.
            if !node.is_up() || node.paused {
                continue;
            }
            let peers: Vec<NodeId> = node.links.keys().copied().collect();
            let mut watch = std::mem::take(&mut node.link_watch);
            watch.retain(|p, _| peers.contains(p));
            let mut reports = Vec::new();
            for peer in peers {
                let w = watch.entry(peer).or_default();
                if self.reachable(id, peer) {
                    w.unreachable_since = None;
                    if w.reported != Some(true) {
                        w.reported = Some(true);
                        reports.push((peer, true));
                    }
                    continue;
                }
                let since = *w.unreachable_since.get_or_insert(now);
                let limit = if w.reported == Some(true) {
                    IDLE_TIMEOUT_US
                } else {
                    DIAL_TIMEOUT_US
                };
                if w.reported != Some(false) && now.saturating_sub(since) >= limit {
                    w.reported = Some(false);
                    reports.push((peer, false));
                }
            }
            self.node_mut(id).link_watch = watch;
            for (peer, up) in reports {
                let line = format!(
                    "t={now}us node {id} link to {peer} {}",
                    if up { "UP" } else { "DOWN" }
                );
                self.trace_line(line);
                self.input(id, Input::PeerStatus { peer, up });
            }
        }
        self.schedule(now + LINK_WATCH_US, Event::LinkWatch);
    }
}

/// The link states of one node, reset when it restarts (a new process has no connections).
pub(crate) type LinkWatches = BTreeMap<NodeId, LinkWatch>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FaultSet, SimConfig};

    /// (link up as status shows it, peer believed down by the failure detector) at node 1.
    fn view(w: &World, peer: NodeId) -> (bool, bool) {
        let Some(core) = w.nodes[0].core.as_ref() else {
            panic!("node 1 is not running");
        };
        let report = core.status_report();
        let Some(row) = report.members.iter().find(|m| m.id == peer) else {
            panic!("no status row for {peer}");
        };
        (row.up, row.down)
    }

    #[test]
    fn a_crashed_peer_is_reported_down_after_the_idle_timeout_and_up_once_it_is_back() {
        let cfg = SimConfig {
            faults: FaultSet::default(),
            ..SimConfig::default()
        };
        let Ok(mut w) = World::new(7, cfg) else {
            panic!("world");
        };
        let peer = NodeId(2);
        w.preload_next();
        w.run_until(2_000_000, &mut |_| false);
        assert_eq!(view(&w, peer), (true, false), "connected peers report up");

        w.crash(peer);
        let crashed_at = w.now;
        // Within the idle timeout the connection is still believed alive.
        w.run_until(crashed_at + IDLE_TIMEOUT_US - LINK_WATCH_US, &mut |_| false);
        assert!(view(&w, peer).0, "reported down before the idle timeout");
        w.run_until(
            crashed_at + IDLE_TIMEOUT_US + 2 * LINK_WATCH_US,
            &mut |_| false,
        );
        assert_eq!(
            view(&w, peer),
            (false, true),
            "the core marks the peer down"
        );

        w.restart(peer, false);
        let back_at = w.now;
        w.run_until(back_at + 2 * LINK_WATCH_US, &mut |_| false);
        assert!(view(&w, peer).0, "a reconnect reports the link up");
        // Gossip heartbeats clear the phi detector's opinion a few seconds later.
        w.run_until(back_at + 8_000_000, &mut |_| false);
        assert_eq!(view(&w, peer), (true, false), "the peer is back");
    }
}

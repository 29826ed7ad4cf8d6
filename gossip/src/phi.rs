//! The phi-accrual failure detector (Hayashibara et al., 2004), one history per peer.
//!
//! A heartbeat *arrives* when this node learns a newer heartbeat counter for a peer, directly or
//! second-hand through gossip. The detector keeps the last [`PhiConfig::window`] intervals
//! between arrivals and, at time `now`, computes
//!
//! ```text
//! phi = -log10(P(the next arrival is later than now - last_arrival))
//! ```
//!
//! with the interval modelled as a **normal** distribution of the window's mean (plus
//! [`PhiConfig::acceptable_pause_us`]) and standard deviation (at least
//! [`PhiConfig::min_stddev_us`]). The tail is computed with the logistic approximation of the
//! normal CDF used by Akka and Cassandra's successors, which stays finite far into the tail.
//! Before a peer has two arrivals, [`PhiConfig::bootstrap_interval_us`] stands in for the mean.
//!
//! A peer is *down* when its phi reaches [`PhiConfig::threshold`]. That is this node's local
//! opinion, used to pick gossip peers and (in the node) to pick sloppy-quorum fallbacks; it is
//! never a membership change, and a down node keeps its partitions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dynakv_ring::NodeId;

use crate::state::Heartbeat;

/// The detector's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// Phi at or above which a peer is down. Default 8 (a false positive roughly once in
    /// 10^8 intervals under the model).
    pub threshold: f64,
    /// How many recent intervals the mean and deviation are computed over. Default 100.
    pub window: usize,
    /// The floor of the standard deviation, in µs, so that very regular heartbeats do not make
    /// the detector jumpy. Default 200 ms.
    pub min_stddev_us: u64,
    /// Added to the mean interval, in µs: the pause tolerated before phi starts to climb
    /// (gossip delivers heartbeats second-hand, with a few rounds of jitter). Default 1 s.
    pub acceptable_pause_us: u64,
    /// The interval assumed before a peer has two arrivals, in µs. Default 1 s (the gossip
    /// interval).
    pub bootstrap_interval_us: u64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 100,
            min_stddev_us: 200_000,
            acceptable_pause_us: 1_000_000,
            bootstrap_interval_us: 1_000_000,
        }
    }
}

/// The arrival history of one peer.
#[derive(Debug, Clone)]
struct History {
    /// The newest heartbeat seen; `None` while the peer is watched but never heard from.
    last: Option<Heartbeat>,
    /// When the newest heartbeat arrived (or watching started), µs.
    last_arrival_us: u64,
    intervals: VecDeque<u64>,
    /// Running sums over `intervals`, exact in integers (no floating drift).
    sum: u128,
    sum_sq: u128,
}

impl History {
    fn new(last: Option<Heartbeat>, now_us: u64) -> Self {
        History {
            last,
            last_arrival_us: now_us,
            intervals: VecDeque::new(),
            sum: 0,
            sum_sq: 0,
        }
    }
}

/// Per-peer phi-accrual failure detector. Pure: time is passed in, in µs.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    config: PhiConfig,
    peers: BTreeMap<NodeId, History>,
}

impl PhiDetector {
    /// A detector with no peers.
    pub fn new(config: PhiConfig) -> Self {
        PhiDetector {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &PhiConfig {
        &self.config
    }

    /// Starts watching `peer` as of `now_us` if it is not watched yet: a peer that never sends
    /// a heartbeat then goes down after the bootstrap interval instead of staying up forever.
    /// Call it when a member is learned.
    pub fn watch(&mut self, peer: NodeId, now_us: u64) {
        self.peers
            .entry(peer)
            .or_insert_with(|| History::new(None, now_us));
    }

    /// Stops watching `peer` (call it when the peer is removed from the cluster).
    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Records that `hb` was learned for `peer` at `now_us`; returns whether it counted as an
    /// arrival. Call it whenever a merge advances a peer's heartbeat.
    ///
    /// A newer counter of the same generation adds an interval; a newer generation (the peer
    /// restarted) resets the history, since the old intervals say nothing about the new
    /// process; an older or equal heartbeat is ignored.
    pub fn heartbeat(&mut self, peer: NodeId, hb: Heartbeat, now_us: u64) -> bool {
        let window = self.config.window.max(1);
        let h = self
            .peers
            .entry(peer)
            .or_insert_with(|| History::new(None, now_us));
        match h.last {
            Some(last) if hb <= last => false,
            Some(last) if hb.generation == last.generation => {
                let interval = now_us.saturating_sub(h.last_arrival_us);
                h.intervals.push_back(interval);
                h.sum += u128::from(interval);
                h.sum_sq += u128::from(interval) * u128::from(interval);
                if h.intervals.len() > window {
                    if let Some(old) = h.intervals.pop_front() {
                        h.sum -= u128::from(old);
                        h.sum_sq -= u128::from(old) * u128::from(old);
                    }
                }
                h.last = Some(hb);
                h.last_arrival_us = now_us;
                true
            }
            _ => {
                // First heartbeat ever, or a new generation: start a fresh history.
                *h = History::new(Some(hb), now_us);
                true
            }
        }
    }

    /// The suspicion level of `peer` at `now_us` (0 = surely alive, growing without bound
    /// during silence). An unwatched peer has phi 0: no opinion.
    pub fn phi(&self, peer: NodeId, now_us: u64) -> f64 {
        let Some(h) = self.peers.get(&peer) else {
            return 0.0;
        };
        let elapsed = now_us.saturating_sub(h.last_arrival_us) as f64;
        let (mean, stddev) = self.mean_stddev(h);
        let mean = mean + self.config.acceptable_pause_us as f64;
        phi_normal(elapsed, mean, stddev)
    }

    /// Whether `peer` is up at `now_us` (phi below the threshold), in this node's opinion.
    pub fn is_up(&self, peer: NodeId, now_us: u64) -> bool {
        self.phi(peer, now_us) < self.config.threshold
    }

    /// The watched peers that are up at `now_us`.
    pub fn up_set(&self, now_us: u64) -> BTreeSet<NodeId> {
        self.peers
            .keys()
            .copied()
            .filter(|&p| self.is_up(p, now_us))
            .collect()
    }

    /// The watched peers.
    pub fn watched(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    fn mean_stddev(&self, h: &History) -> (f64, f64) {
        let min_std = self.config.min_stddev_us as f64;
        let n = h.intervals.len();
        if n == 0 {
            let mean = self.config.bootstrap_interval_us as f64;
            return (mean, (mean / 4.0).max(min_std));
        }
        let n = n as f64;
        let mean = h.sum as f64 / n;
        let var = (h.sum_sq as f64 / n - mean * mean).max(0.0);
        (mean, var.sqrt().max(min_std))
    }
}

/// `-log10(1 - CDF(elapsed))` for a normal distribution, with the logistic approximation of
/// the CDF (error below 0.0002 in probability, and no catastrophic cancellation in the tail).
fn phi_normal(elapsed: f64, mean: f64, stddev: f64) -> f64 {
    let y = (elapsed - mean) / stddev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // p_later underflows to 0 far in the tail; the floor keeps phi finite (about 308).
    -p_later.max(f64::MIN_POSITIVE).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn hb(generation: u64, counter: u64) -> Heartbeat {
        Heartbeat {
            generation,
            counter,
        }
    }

    /// Heartbeats every second with +-10 % jitter, up to `until` seconds.
    fn steady(d: &mut PhiDetector, peer: NodeId, generation: u64, until: u64) -> u64 {
        let mut t = 0;
        for i in 1..=until {
            t = i * SEC + if i % 2 == 0 { SEC / 10 } else { 0 };
            d.heartbeat(peer, hb(generation, i), t);
        }
        t
    }

    #[test]
    fn steady_heartbeats_keep_phi_low() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let p = NodeId(7);
        let last = steady(&mut d, p, 1, 200);
        for ms in [0, 500, 1000, 1500] {
            let phi = d.phi(p, last + ms * 1000);
            assert!(phi < 1.0, "phi {phi} after {ms} ms");
        }
        assert!(d.is_up(p, last + 2 * SEC));
        assert_eq!(d.up_set(last + SEC), [p].into());
    }

    #[test]
    fn silence_raises_phi_past_the_threshold() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let p = NodeId(7);
        let last = steady(&mut d, p, 1, 50);
        let mut prev = 0.0;
        for s in 1..=10 {
            let phi = d.phi(p, last + s * SEC);
            assert!(phi >= prev, "phi is monotone in silence");
            prev = phi;
        }
        assert!(d.phi(p, last + 4 * SEC) >= 8.0, "down after 4 s of silence");
        assert!(!d.is_up(p, last + 4 * SEC));
        assert!(d.up_set(last + 4 * SEC).is_empty());
        assert!(d.phi(p, last + 3600 * SEC).is_finite());
    }

    #[test]
    fn a_restarted_node_resets_its_history() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let p = NodeId(3);
        // Slow heartbeats (every 10 s) in generation 1...
        for i in 1..=20 {
            d.heartbeat(p, hb(1, i), i * 10 * SEC);
        }
        let t = 200 * SEC;
        let pause = 11 * SEC + SEC / 2;
        assert!(d.is_up(p, t + pause), "a 10 s rhythm tolerates 11.5 s");
        // ...then the node restarts: an old counter of the old generation is ignored, the new
        // generation resets the history to the bootstrap interval of 1 s.
        assert!(!d.heartbeat(p, hb(1, 5), t + SEC));
        assert!(d.heartbeat(p, hb(2, 1), t + SEC));
        assert!(
            !d.is_up(p, t + SEC + pause),
            "the old slow rhythm is forgotten"
        );
        assert!(d.heartbeat(p, hb(2, 2), t + 2 * SEC));
        assert!(d.is_up(p, t + 3 * SEC));
    }

    #[test]
    fn watched_but_silent_peers_go_down_and_unknown_peers_are_up() {
        let mut d = PhiDetector::new(PhiConfig::default());
        d.watch(NodeId(1), 0);
        assert!(d.is_up(NodeId(1), SEC));
        assert!(!d.is_up(NodeId(1), 10 * SEC));
        assert_eq!(d.phi(NodeId(2), 10 * SEC), 0.0);
        d.forget(NodeId(1));
        assert_eq!(d.watched().count(), 0);
    }

    #[test]
    fn window_bounds_the_history() {
        let cfg = PhiConfig {
            window: 10,
            ..PhiConfig::default()
        };
        let mut d = PhiDetector::new(cfg);
        let p = NodeId(1);
        for i in 1..=100 {
            d.heartbeat(p, hb(1, i), i * 10 * SEC);
        }
        // Now fast heartbeats: after 10 of them the slow past is out of the window.
        let base = 1000 * SEC;
        for i in 1..=10 {
            d.heartbeat(p, hb(1, 100 + i), base + i * SEC);
        }
        assert!(!d.is_up(p, base + 10 * SEC + 5 * SEC));
    }
}

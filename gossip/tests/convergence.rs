//! Convergence of one membership change, measured in gossip rounds, for 5, 20 and 100 nodes.
//!
//! Print the figures recorded in docs/MEMBERSHIP.md with
//! `cargo test -p dynakv-gossip --test convergence -- --nocapture`.
//! Not a timing test: rounds are counted in virtual time, every run is seeded and replays
//! exactly.

mod common;

use common::Sim;
use dynakv_gossip::{Change, ClusterState, GossipConfig};
use dynakv_ring::NodeId;

const TRIALS: u64 = 10;
const WARMUP: usize = 15;

#[derive(Debug, Default)]
struct Figures {
    rounds: Vec<usize>,
    messages: usize,
    max_size: usize,
}

/// One change (node `n - 1` leaves, staged on node 0) after a warm-up, then rounds until every
/// node has node 0's membership fingerprint.
fn measure(n: u32, fanout: usize, push_fanout: usize) -> Figures {
    let mut figures = Figures::default();
    for seed in 1..=TRIALS {
        let config = GossipConfig {
            fanout,
            push_fanout,
            ..GossipConfig::default()
        };
        let mut sim = Sim::cluster(n, seed, config);
        for _ in 0..WARMUP {
            sim.round();
        }
        let before = sim.messages;
        let now = sim.now;
        let out = sim
            .node(0)
            .stage(now, Change::Leave(NodeId(n - 1)))
            .expect("leave");
        sim.deliver(NodeId(0), out);
        let target = sim.node(0).state().map(ClusterState::fingerprint);
        let rounds = sim.rounds_until(100, |s| {
            s.nodes
                .values()
                .all(|g| g.state().map(ClusterState::fingerprint) == target)
        });
        figures.rounds.push(rounds);
        figures.messages += sim.messages - before;
        figures.max_size = figures.max_size.max(sim.max_size);
        // No node is suspected in a healthy cluster.
        let now = sim.now;
        for g in sim.nodes.values() {
            let up = g.up_set(now);
            let down: Vec<_> = (0..n).map(NodeId).filter(|p| !up.contains(p)).collect();
            let phis: Vec<_> = down.iter().map(|&p| g.phi(p, now)).collect();
            assert!(down.is_empty(), "false suspicion at n = {n} fanout {fanout} seed {seed} by {}: {down:?} {phis:?} at {now}", g.me());
        }
    }
    figures
}

fn bound(n: u32) -> usize {
    // Generous: push-pull is expected near log(n) / log(1 + 2 * fanout) + 1.
    2 * (f64::from(n).log2().ceil() as usize) + 4
}

#[test]
fn one_change_converges_in_logarithmic_rounds() {
    println!("| nodes | fanout | push | rounds mean | rounds max | bound 2*ceil(log2 n)+4 | msgs/trial | max msg bytes (bound) |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [5u32, 20, 100] {
        for (fanout, push) in [(3usize, 0usize), (3, 3), (1, 0)] {
            let f = measure(n, fanout, push);
            let max = f.rounds.iter().copied().max().unwrap_or(0);
            let mean = f.rounds.iter().sum::<usize>() as f64 / f.rounds.len() as f64;
            println!(
                "| {n} | {fanout} | {} | {mean:.2} | {max} | {} | {} | {} |",
                if push == 0 { "off" } else { "on (3)" },
                bound(n),
                f.messages / TRIALS as usize,
                f.max_size
            );
            assert!(
                max <= bound(n),
                "n = {n}, push {push}: {max} rounds > {}",
                bound(n)
            );
        }
    }
}

#[test]
fn the_simulation_replays_exactly() {
    let run = || {
        let mut sim = Sim::cluster(20, 7, GossipConfig::default());
        for _ in 0..3 {
            sim.round();
        }
        let now = sim.now;
        let out = sim
            .node(3)
            .stage(now, Change::Leave(NodeId(5)))
            .expect("leave");
        sim.deliver(NodeId(3), out);
        for _ in 0..3 {
            sim.round();
        }
        let fps: Vec<_> = sim
            .nodes
            .values()
            .map(|g| g.state().map(ClusterState::fingerprint))
            .collect();
        (sim.messages, fps)
    };
    assert_eq!(run(), run());
}

//! Running one seed end to end, and what the run reports.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::checker::{self, Violation};
use crate::config::{FaultParams, SimConfig};
use crate::error::SimError;
use crate::workload::Phase;
use crate::world::World;

/// Virtual time the quiet phase may take before liveness is declared broken.
const QUIET_BUDGET_US: u64 = 120_000_000;
/// Virtual time the quiet phase lasts at least, so anti-entropy compares every partition.
const QUIET_SETTLE_US: u64 = 15_000_000;
/// Virtual time the quiet phase's end conditions must hold without a break: the last hint
/// or transfer may land just before they first hold, and what it brought must still reach
/// the other replicas (the receiver compares the partition at once, `DataEvent::CompareSoon`).
const QUIET_STABLE_US: u64 = 3_000_000;

/// The result of one simulated run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: u32,
    pub n: u8,
    pub r: u8,
    pub w: u8,
    pub faults: String,
    pub bug: Option<String>,
    pub params: FaultParams,
    pub faults_injected: BTreeMap<String, u32>,
    pub ops_acked: u64,
    pub ops_failed: u64,
    pub writes_unknown: u64,
    pub gets_ok: u64,
    pub sibling_reads: u64,
    /// Old copies restored (as `dynakv restore` would) and acknowledged.
    pub restores_ok: u64,
    pub max_siblings: usize,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// Work done by the availability mechanisms (summed over nodes still running at the end;
    /// a restart resets a node's counters).
    pub mechanisms: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    pub virtual_ms: u64,
    pub wall_ms: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub trace_digest: String,
}

impl RunReport {
    /// Did every invariant hold?
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command line that replays this run exactly.
    pub fn reproduce_command(&self, cfg: &SimConfig) -> String {
        let mut cmd = format!(
            "dynakv-sim run --seed {} --nodes {} --ops {} --n {} --r {} --w {} --faults {}",
            self.seed, cfg.nodes, cfg.ops, cfg.n, cfg.r, cfg.w, cfg.faults
        );
        if cfg.keys != SimConfig::default().keys {
            cmd.push_str(&format!(" --keys {}", cfg.keys));
        }
        if cfg.clients != SimConfig::default().clients {
            cmd.push_str(&format!(" --clients {}", cfg.clients));
        }
        if let Some(b) = cfg.bug {
            cmd.push_str(&format!(" --bug {}", b.name()));
        }
        if cfg.reap {
            cmd.push_str(" --reap");
        }
        cmd
    }
}

/// Run one seed: chaos phase, heal, quiet phase, checks. On a violation the seed is replayed
/// with tracing on the violating key, so the report can show the last events that touched it.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<RunReport, SimError> {
    let mut report = run_once(seed, cfg)?;
    if let Some(key) = report.violations.first().map(|v| v.key.clone()) {
        if !key.is_empty() && cfg.trace_key.is_none() {
            let traced_cfg = SimConfig {
                trace_key: Some(key.clone()),
                ..cfg.clone()
            };
            let mut world = World::new(seed, traced_cfg)?;
            drive(&mut world);
            let trace = world.trace.take().unwrap_or_default();
            let tail = trace[trace.len().saturating_sub(cfg.trace_lines)..].to_vec();
            for v in report.violations.iter_mut().filter(|v| v.key == key) {
                v.events = tail.clone();
            }
        }
    }
    Ok(report)
}

impl World {
    /// Debugging aid: run the phases without the checks.
    pub fn debug_drive(&mut self) -> bool {
        drive(self)
    }
}

fn drive(world: &mut World) -> bool {
    world.preload_next();
    // Each client runs its share of the operations one after another; an operation is at most
    // two requests (read-modify-write), each given up after ~2 s. The preload is sequential.
    let per_client = u64::from(world.cfg.ops) / u64::from(world.cfg.clients.max(1)) + 1;
    let chaos_budget = (per_client * 2 + u64::from(world.cfg.preload)) * 2_100_000 + 60_000_000;
    world.run_until(chaos_budget, &mut |w| w.workload.chaos_done());
    let chaos_finished = world.workload.chaos_done();
    world.workload.phase = Phase::Quiet;
    world.heal_all();
    world.start_quiet();
    let quiet_start = world.now;
    let deadline = quiet_start + QUIET_BUDGET_US;
    // Background work (handoff, anti-entropy, reaping) never stops, so the quiet phase ends when
    // the quorum reads are done, every hint and transfer is delivered, membership is settled,
    // anti-entropy had time to go round, and all of that has held for a while.
    // A reap also restarts the wait: its removals reach the other primaries a moment later.
    let mut settled_since: Option<u64> = None;
    let reaped_now = |w: &World| -> u64 {
        w.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.stats().tombstones_reaped)
            .sum()
    };
    let mut reaped_seen = reaped_now(world);
    world.run_until(deadline, &mut |w| {
        let reaped = reaped_now(w);
        let settled = w.workload.phase == Phase::Done
            && w.hints_pending() == 0
            && w.transfers_pending() == 0
            && w.membership_settled()
            && reaped == std::mem::replace(&mut reaped_seen, reaped);
        if !settled {
            settled_since = None;
            return false;
        }
        let since = *settled_since.get_or_insert(w.now);
        w.now >= quiet_start + QUIET_SETTLE_US
            && w.now >= w.last_replay_at + QUIET_SETTLE_US
            && w.now >= since + QUIET_STABLE_US
    });
    chaos_finished && world.workload.phase == Phase::Done
}

fn mechanisms(world: &World) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    // Counters of cores that crashed or left, plus those running now.
    let stats = world
        .nodes
        .iter()
        .filter_map(|n| n.core.as_ref().map(|c| c.stats()))
        .chain(world.past_stats.iter().copied());
    for s in stats {
        for (k, v) in [
            ("sloppy_writes", s.sloppy_writes),
            ("hints_delivered", s.hints_delivered),
            ("read_repairs", s.read_repairs),
            ("aae_exchanges", s.aae_exchanges),
            ("aae_keys_repaired", s.aae_keys_repaired),
            ("tombstones_reaped", s.tombstones_reaped),
            ("actor_retirements", s.actor_retirements),
            ("transfer_keys_sent", s.transfer_keys_sent),
            ("partitions_dropped", s.partitions_dropped),
            ("transfer_batches_retried", s.transfer_batches_retried),
            ("transfer_passes_restarted", s.transfer_passes_restarted),
            ("non_owner_writes", s.non_owner_writes),
            ("stray_partitions", s.stray_partitions),
            ("quarantined", s.quarantined),
            ("sync_failures", s.sync_failures),
            ("corrupt_records", s.corrupt_records),
            ("scrubbed_records", s.scrubbed_records),
        ] {
            *m.entry(k.to_string()).or_insert(0) += v;
        }
    }
    m
}

fn run_once(seed: u64, cfg: &SimConfig) -> Result<RunReport, SimError> {
    let started = Instant::now();
    let mut world = World::new(seed, cfg.clone())?;
    let finished = drive(&mut world);
    let mut violations = checker::check(&world);
    let transfers_left = world.transfers_pending();
    if transfers_left > 0 || !world.membership_settled() {
        // Debugging aid for membership liveness failures: each node's view and transfers.
        if std::env::var_os("DYNAKV_SIM_DEBUG").is_some() {
            for line in world.debug_membership() {
                eprintln!("{line}");
            }
            for n in &world.nodes {
                if let Some(c) = &n.core {
                    let (out, inc) = (c.outgoing_transfers(), c.incoming_transfers());
                    eprintln!("node {} transfers out={out:?} in={inc:?}", n.id);
                }
            }
        }
        violations.push(Violation {
            invariant: "liveness",
            key: String::new(),
            detail: format!(
                "membership did not settle after the heal: {transfers_left} transfers pending, members agree on the map: {}",
                world.membership_settled()
            ),
            events: Vec::new(),
        });
    }
    let hints_left = world.hints_pending();
    if hints_left > 0 {
        violations.push(Violation {
            invariant: "liveness",
            key: String::new(),
            detail: format!("{hints_left} hints were not handed off after the heal"),
            events: Vec::new(),
        });
    }
    if !finished {
        violations.push(Violation {
            invariant: "liveness",
            key: String::new(),
            detail: "the run did not finish within its virtual-time budget".into(),
            events: Vec::new(),
        });
    }
    let wall = started.elapsed().as_secs_f64();
    let h = &world.workload.history;
    let (acked, failed, unknown) = h.write_counts();
    Ok(RunReport {
        seed,
        nodes: cfg.nodes,
        n: cfg.n,
        r: cfg.r,
        w: cfg.w,
        faults: cfg.faults.to_string(),
        bug: cfg.bug.map(|b| b.name().to_string()),
        params: world.params.clone(),
        faults_injected: world
            .faults
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        ops_acked: acked + h.gets_ok,
        ops_failed: failed + unknown + h.gets_failed,
        writes_unknown: unknown,
        gets_ok: h.gets_ok,
        sibling_reads: h.sibling_reads,
        restores_ok: h.restores_ok,
        max_siblings: h.max_siblings,
        messages_sent: world.net.sent,
        messages_dropped: world.net.dropped,
        messages_duplicated: world.net.duplicated,
        mechanisms: mechanisms(&world),
        violations,
        virtual_ms: world.now / 1000,
        wall_ms: wall * 1000.0,
        events: world.events,
        events_per_sec: if wall > 0.0 {
            world.events as f64 / wall
        } else {
            0.0
        },
        trace_digest: format!("{:016x}", world.trace_digest()),
    })
}

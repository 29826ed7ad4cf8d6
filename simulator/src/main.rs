//! `dynakv-sim`: run the deterministic network-fault simulator from the command line.
//!
//! Exit status: 0 when every invariant holds, 1 on a violation, 2 on bad arguments.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use dynakv_core::PlantedBug;
use dynakv_simulator::{run, FaultSet, RunReport, SimConfig};

#[derive(Parser, Debug)]
#[command(
    name = "dynakv-sim",
    version,
    about = "Deterministic network-fault simulator for dynakv: real node cores, simulated network and disk, invariant checks.",
    long_about = "Runs the real dynakv node core on many simulated nodes in one process, over a simulated network \
                  (loss, duplication, reordering, partitions, clogs) and disk (crash, wipe), with clock skew, in \
                  virtual time. One seed fixes everything: the same seed replays the same run byte for byte.\n\n\
                  Exit status: 0 when every invariant holds, 1 on a violation, 2 on bad arguments."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one seed and print a summary (or JSON).
    Run {
        /// The seed that fixes fault parameters, schedules, latencies and client operations.
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        opts: SimOpts,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
        /// How many of the last events touching a violating key to print (a large number
        /// prints its whole history).
        #[arg(long, default_value_t = 40)]
        trace_lines: usize,
    },
    /// Long runs before a release: run many seeds on every core without stopping at failures,
    /// with a progress bar, then print every failing seed with its reproduce command and a
    /// summary by invariant. Exit status 1 if any seed failed.
    Soak {
        #[command(flatten)]
        seeds: Seeds,
        #[command(flatten)]
        opts: SimOpts,
    },
    /// Run many seeds (in parallel), stop at the first failure and print how to reproduce it.
    Batch {
        #[command(flatten)]
        seeds: Seeds,
        #[command(flatten)]
        opts: SimOpts,
    },
    /// Measure the causal metadata the stores keep under churn: clients read a key and write
    /// back with its context, or delete it; every --every operations, one line per
    /// measurement (records, tombstone records, bytes, context entries, token bytes, actors).
    Metadata(dynakv_simulator::metadata::MetadataConfig),
}

/// Which seeds a batch or soak runs, and on how many threads.
#[derive(Args, Debug)]
struct Seeds {
    /// How many seeds to run.
    #[arg(long)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
}

/// What each planted bug does, for `--help`. The names and the list come from the core
/// ([`PlantedBug::ALL`], [`PlantedBug::name`]); this match is exhaustive, so a bug added there
/// fails to compile here until it is described.
fn bug_help(bug: PlantedBug) -> &'static str {
    match bug {
        PlantedBug::LastWriteWins => "Resolve siblings by last-write-wins",
        PlantedBug::AckBeforeStore => "Acknowledge writes before they are durable",
        PlantedBug::ReuseDotsAfterWipe => {
            "Reuse dots after a disk wipe (keep the old actor identity)"
        }
        PlantedBug::OverwriteOnReplica => "On a replica, overwrite instead of sync-merging",
        PlantedBug::EagerReap => {
            "Reap tombstones at once, without the grace period or the members' votes"
        }
        PlantedBug::KeepIncarnation => {
            "Keep the incarnation the disk recorded at restart (dot reuse after power loss)"
        }
        PlantedBug::RetryFailedSync => {
            "After a failed fsync keep serving and trust the next sync (fsyncgate)"
        }
        PlantedBug::KeepActorAfterCorruption => {
            "After removing a corrupt record keep the same actor (its lost dots can be minted again)"
        }
        PlantedBug::NonOwnerAck => {
            "A replica that handed a partition off still stores writes for it and acks as a primary"
        }
        PlantedBug::IgnoreReapFloor => {
            "Mint without the reap floor (a reaped or restored key can get a dot minted before)"
        }
        PlantedBug::SkipNodeClockCheck => {
            "Merge without the node-clock check (with --reap: a late old copy of a removed key comes back)"
        }
        PlantedBug::GrantEveryClaim => {
            "Grant every claim of a forwarded write (a copy of a forward is coordinated twice)"
        }
        PlantedBug::AckRefusedWrite => {
            "A replica acks a write its disk refused (full) as stored: a copy that does not exist"
        }
    }
}

/// Parses `--bug NAME` against every [`PlantedBug::name`]; `--help` lists the same names.
fn bug_parser() -> impl TypedValueParser<Value = PlantedBug> {
    let names = PlantedBug::ALL.map(|bug| PossibleValue::new(bug.name()).help(bug_help(bug)));
    PossibleValuesParser::new(names).try_map(|name| {
        PlantedBug::ALL
            .into_iter()
            .find(|bug| bug.name() == name)
            .ok_or_else(|| format!("unknown bug {name:?}"))
    })
}

#[derive(Args, Debug, Clone)]
struct SimOpts {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// Client operations in the chaos phase.
    #[arg(long, default_value_t = 1000)]
    ops: u32,
    /// Replicas per key.
    #[arg(long, default_value_t = 3)]
    n: u8,
    /// Read quorum.
    #[arg(long, default_value_t = 2)]
    r: u8,
    /// Write quorum.
    #[arg(long, default_value_t = 2)]
    w: u8,
    /// Keys the clients share (small forces real concurrency).
    #[arg(long, default_value_t = 8)]
    keys: u32,
    /// Concurrent simulated clients.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Faults to allow: `all`, `none`, a list like `loss,crash,partition`, or `-wipe,-skew` (all
    /// but those).
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    faults: FaultSet,
    /// TEST ONLY: plant a known bug in the node core to show the checkers catch it.
    #[arg(long, value_parser = bug_parser())]
    bug: Option<PlantedBug>,
    /// Reap tombstones after a 3 s grace (a real node's default is 60 s). Without it the
    /// simulated nodes keep tombstones for ever, which hides reaping bugs: CI runs both.
    #[arg(long)]
    reap: bool,
}

impl SimOpts {
    fn config(&self) -> Result<SimConfig, String> {
        let cfg = SimConfig {
            nodes: self.nodes,
            ops: self.ops,
            n: self.n,
            r: self.r,
            w: self.w,
            keys: self.keys,
            clients: self.clients,
            faults: self.faults.clone(),
            bug: self.bug,
            reap: self.reap,
            ..SimConfig::default()
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A soak is a batch that does not stop at the first failure.
    let keep_going = matches!(cli.cmd, Cmd::Soak { .. });
    match cli.cmd {
        Cmd::Run {
            seed,
            opts,
            json,
            trace_lines,
        } => {
            let cfg = match opts.config() {
                Ok(c) => SimConfig { trace_lines, ..c },
                Err(e) => return bad_args(&e),
            };
            match run(seed, &cfg) {
                Ok(report) => {
                    if json {
                        match serde_json::to_string(&report) {
                            Ok(s) => println!("{s}"),
                            Err(e) => eprintln!("error: cannot encode the report: {e}"),
                        }
                    } else {
                        print_human(&report, &cfg);
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => bad_args(&e.to_string()),
            }
        }
        Cmd::Metadata(cfg) => {
            if cfg.nodes < u32::from(cfg.n) || cfg.n == 0 || cfg.keys == 0 || cfg.every == 0 {
                return bad_args("need nodes >= n >= 1, keys >= 1 and every >= 1");
            }
            if !(0.0..=1.0).contains(&cfg.delete_ratio) {
                return bad_args("--delete-ratio is between 0 and 1");
            }
            for row in dynakv_simulator::metadata::run(&cfg) {
                match serde_json::to_string(&row) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: cannot encode a row: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Batch { seeds, opts } | Cmd::Soak { seeds, opts } => {
            let cfg = match opts.config() {
                Ok(c) => c,
                Err(e) => return bad_args(&e),
            };
            batch(seeds.seeds, seeds.start, seeds.jobs, cfg, keep_going)
        }
    }
}

fn bad_args(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn print_human(r: &RunReport, cfg: &SimConfig) {
    println!(
        "seed {}  nodes {}  N={} R={} W={}  faults {}{}",
        r.seed,
        r.nodes,
        r.n,
        r.r,
        r.w,
        r.faults,
        r.bug
            .as_ref()
            .map(|b| format!("  PLANTED BUG {b}"))
            .unwrap_or_default()
    );
    println!(
        "  fault mix: loss {:.1}%  dup {:.1}%  latency {}us +jitter {}us  skew <= {}ms drift <= {}ppm",
        r.params.loss * 100.0,
        r.params.dup * 100.0,
        r.params.latency_us,
        r.params.jitter_us,
        r.params.max_skew_us / 1000,
        r.params.max_drift_ppm
    );
    let injected: Vec<String> = r
        .faults_injected
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    println!(
        "  faults injected: {}",
        if injected.is_empty() {
            "none".to_string()
        } else {
            injected.join(", ")
        }
    );
    println!(
        "  messages: {} sent, {} dropped, {} duplicated",
        r.messages_sent, r.messages_dropped, r.messages_duplicated
    );
    let mech: Vec<String> = r
        .mechanisms
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  mechanisms: {}", mech.join(", "));
    println!(
        "  ops: {} acked, {} failed ({} writes with unknown outcome); {} reads saw siblings (max {}); {} old copies restored",
        r.ops_acked, r.ops_failed, r.writes_unknown, r.sibling_reads, r.max_siblings, r.restores_ok
    );
    println!(
        "  virtual time {} ms, wall time {:.1} ms, {} events ({:.0} events/s), trace digest {}",
        r.virtual_ms, r.wall_ms, r.events, r.events_per_sec, r.trace_digest
    );
    if r.passed() {
        println!("  invariants: all hold");
    } else {
        print_violations(r, cfg);
    }
}

fn print_violations(r: &RunReport, cfg: &SimConfig) {
    println!("  INVARIANT VIOLATED ({} violations)", r.violations.len());
    for v in r.violations.iter().take(5) {
        println!("  - [{}] key {:?}: {}", v.invariant, v.key, v.detail);
    }
    if let Some(v) = r.violations.iter().find(|v| !v.events.is_empty()) {
        println!("  last events touching key {:?}:", v.key);
        for e in &v.events {
            println!("    {e}");
        }
    }
    println!("  reproduce: {}", r.reproduce_command(cfg));
}

/// Run `seeds` seeds from `start` on `jobs` threads. A batch stops at the first failure; a soak
/// (`keep_going`) runs them all and reports every failure.
fn batch(
    seeds: u64,
    start: u64,
    jobs: Option<usize>,
    cfg: SimConfig,
    keep_going: bool,
) -> ExitCode {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<RunReport>>> = Arc::new(Mutex::new(None));
    let failures: Arc<Mutex<Vec<RunReport>>> = Arc::new(Mutex::new(Vec::new()));
    let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let end = start.saturating_add(seeds);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..jobs {
        let (next, done, events, stop, failure, failures, error, cfg) = (
            next.clone(),
            done.clone(),
            events.clone(),
            stop.clone(),
            failure.clone(),
            failures.clone(),
            error.clone(),
            cfg.clone(),
        );
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                match run(seed, &cfg) {
                    Ok(report) => {
                        events.fetch_add(report.events, Ordering::Relaxed);
                        if !report.passed() && keep_going {
                            if let Ok(mut all) = failures.lock() {
                                all.push(report);
                            }
                        } else if !report.passed() {
                            stop.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = failure.lock() {
                                // Keep the smallest failing seed for a stable report.
                                if f.as_ref().is_none_or(|old| report.seed < old.seed) {
                                    *f = Some(report);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = error.lock() {
                            *slot = Some(e.to_string());
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The progress bar redraws in place on stderr; indicatif hides it when stderr is not a
    // terminal, so a log or a pipe gets nothing but the summary below.
    let bar = progress_bar(seeds);
    loop {
        let finished = handles.iter().all(|h| h.is_finished());
        let failed = failures.lock().map_or(0, |f| f.len());
        bar.set_position(done.load(Ordering::Relaxed));
        bar.set_message(format!("{failed} failed"));
        if finished {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    for h in handles {
        let _ = h.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let d = done.load(Ordering::Relaxed);
    if let Some(e) = error.lock().ok().and_then(|mut e| e.take()) {
        return bad_args(&e);
    }
    if keep_going {
        let mut all = failures
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        all.sort_by_key(|r| r.seed);
        return soak_summary(&all, d, secs, &cfg);
    }
    if let Some(report) = failure.lock().ok().and_then(|mut f| f.take()) {
        println!(
            "FAILED at seed {} after {d} seeds ({secs:.1} s)",
            report.seed
        );
        print_violations(&report, &cfg);
        return ExitCode::from(1);
    }
    println!(
        "{d} seeds passed: nodes {} ops {} N={} R={} W={} faults {} in {secs:.1} s ({:.0} seeds/s, {:.0} events/s)",
        cfg.nodes,
        cfg.ops,
        cfg.n,
        cfg.r,
        cfg.w,
        cfg.faults,
        d as f64 / secs.max(1e-9),
        events.load(Ordering::Relaxed) as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}

/// A soak's report: every failing seed (first violation and reproduce command), the failures
/// per invariant, and the totals.
fn soak_summary(failed: &[RunReport], done: u64, secs: f64, cfg: &SimConfig) -> ExitCode {
    let mut by_invariant: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in failed {
        let first = r.violations.first();
        for inv in r
            .violations
            .iter()
            .map(|v| v.invariant)
            .collect::<std::collections::BTreeSet<_>>()
        {
            *by_invariant.entry(inv).or_insert(0) += 1;
        }
        println!(
            "seed {}: [{}] {}",
            r.seed,
            first.map_or("", |v| v.invariant),
            first.map_or(String::new(), |v| v.detail.chars().take(160).collect())
        );
        println!("  reproduce: {}", r.reproduce_command(cfg));
    }
    let rate = done as f64 / secs.max(1e-9);
    println!(
        "soak: {done} seeds in {secs:.1} s ({rate:.0} seeds/s), {} failed; faults {}",
        failed.len(),
        cfg.faults
    );
    for (inv, n) in &by_invariant {
        println!("  {inv}: {n} seeds");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The progress bar of a batch or a soak: seeds done of `seeds`, failures, rate and time left.
fn progress_bar(seeds: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(seeds),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "[{bar:30}] {pos}/{len} seeds  {msg}  {per_sec}  eta {eta}",
    ) {
        bar.set_style(style.progress_chars("#> "));
    }
    bar
}

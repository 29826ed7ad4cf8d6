//! `dynakv bench`: a load generator, closed-loop by default, open-loop with `--rate`.
//!
//! Closed loop: `--concurrency` workers each send one request, wait for its reply, and send the
//! next, for `--duration` seconds. Open loop (`--rate R`): R requests per second are sent on
//! schedule whatever the replies do, each timed from when it was due (so a slow node shows up
//! as latency, not as a lower send rate: no coordinated omission), at most `--max-in-flight` at
//! once. Replies are counted as ok, overloaded (the node shed the request) or failed; only
//! answered requests are timed, in HDR histograms per operation (`stats`).
//!
//! What is sent: `--workload a|b|c|d|f` runs a YCSB core workload (`workload`), otherwise
//! `--read-ratio` reads and updates with keys from `--distribution`. `--load` first writes every
//! key once, as YCSB's load phase does. `--json` prints the summary as one JSON object.
//!
//! There is one direct [`Client`] (one connection) per target node, and the workers are spread
//! round-robin over them (each node coordinates what it receives). Writes carry the latest
//! context seen for their key, so siblings stay bounded by real concurrency instead of growing
//! with every write; a read-modify-write writes back with the context its own read returned.

mod stats;
mod workload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use dynakv_client::{Client, Context, Options};
use rand::SeedableRng;
use serde_json::json;

use self::stats::Latencies;
use self::workload::{KeyChooser, KeyDistribution, Mix, Op, Workload};
use super::conn::Target;

/// Flags of `dynakv bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Requests in flight (closed loop: each worker waits for its reply).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Distinct keys (before inserts).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Share of reads, 0.0..=1.0 (the rest are updates); not with --workload.
    #[arg(long, default_value_t = 0.5, conflicts_with = "workload")]
    pub read_ratio: f64,
    /// A YCSB core workload: a (50% update), b (5% update), c (read only), d (read latest, 5%
    /// insert), f (50% read-modify-write). e (range scans) is refused.
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// How keys are chosen without --workload.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform, conflicts_with = "workload")]
    pub distribution: KeyDistribution,
    /// Write every key once before the run (YCSB's load phase), so reads find values.
    #[arg(long)]
    pub load: bool,
    /// Print the summary as one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Replicas per key (default: the cluster's).
    #[arg(long)]
    pub n: Option<u8>,
    /// Read quorum (default: the cluster's).
    #[arg(long)]
    pub r: Option<u8>,
    /// Write quorum (default: the cluster's).
    #[arg(long)]
    pub w: Option<u8>,
    /// Open loop: send this many requests per second on schedule, whatever the replies do
    /// (--concurrency is then ignored).
    #[arg(long, value_name = "OPS_PER_SEC")]
    pub rate: Option<f64>,
    /// Open loop: requests in flight at most; a request due beyond that is not sent and is
    /// counted as skipped (the generator's own bound).
    #[arg(long, default_value_t = 100_000)]
    pub max_in_flight: usize,
    /// Target nodes: every node of --node (or DYNAKV_NODES), one connection each.
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    overloaded: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

/// Everything a request needs, shared by all workers.
#[derive(Debug)]
struct Plan {
    mix: Mix,
    keys: KeyChooser,
    counters: Counters,
    contexts: Mutex<HashMap<u64, Context>>,
    value: Vec<u8>,
    opts: Options,
}

/// Runs the benchmark and prints the summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    if args.concurrency == 0 || args.keys == 0 || args.duration == 0 {
        bail!("--concurrency, --keys and --duration must be positive");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of requests per second");
    }
    let mix = match args.workload {
        Some(w) => Mix::of(w)?,
        None => Mix::custom(args.read_ratio, args.distribution),
    };
    let chooser = mix.chooser();
    let creds = args.target.credentials()?;
    let mut clients = Vec::new();
    for &node in &args.target.nodes {
        let client = Client::direct(node, &creds)?;
        // Dial now, so an unreachable node fails the run before it starts.
        client.cluster_info().await?;
        clients.push(client);
    }
    let plan = Arc::new(Plan {
        mix,
        keys: KeyChooser::new(chooser, args.keys)?,
        counters: Counters::default(),
        contexts: Mutex::default(),
        value: vec![b'x'; args.value_size],
        opts: Options {
            n: args.n,
            r: args.r,
            w: args.w,
            ..Options::default()
        },
    });
    if args.load {
        load(&args, &clients, &plan).await?;
    }
    eprintln!(
        "bench: {}, {} s, {} keys, {} B values, {}, {} node(s)",
        match args.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => format!("{} workers", args.concurrency),
        },
        args.duration,
        args.keys,
        args.value_size,
        match args.workload {
            Some(w) => format!("YCSB workload {w:?}"),
            None => format!("read ratio {}, {:?} keys", args.read_ratio, chooser),
        },
        clients.len()
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let latencies = match args.rate {
        Some(rate) => open_loop(&args, rate, &clients, plan.clone(), started, end).await?,
        None => closed_loop(&args, &clients, plan.clone(), started, end).await?,
    };
    report(&args, &plan.counters, &latencies, started);
    for client in clients {
        client.close().await;
    }
    Ok(())
}

/// YCSB's load phase: every key written once (reading it first, so a second load does not add
/// siblings), by `--concurrency` workers.
async fn load(args: &BenchArgs, clients: &[Client], plan: &Arc<Plan>) -> anyhow::Result<()> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency as usize {
        let (client, plan, next) = (
            clients[w % clients.len()].clone(),
            plan.clone(),
            next.clone(),
        );
        let keys = args.keys;
        workers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return anyhow::Ok(());
                }
                let key = key_name(k);
                let context = client.get_with(key.as_bytes(), plan.opts).await?.context;
                let context = client
                    .put_with(key.as_bytes(), &plan.value, &context, plan.opts)
                    .await?;
                if let Ok(mut m) = plan.contexts.lock() {
                    m.insert(k, context);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    eprintln!(
        "load: {} keys written in {:.1} s",
        args.keys,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--concurrency` workers, each with its own histograms, merged at the end.
async fn closed_loop(
    args: &BenchArgs,
    clients: &[Client],
    plan: Arc<Plan>,
    started: Instant,
    end: Instant,
) -> anyhow::Result<Latencies> {
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = clients[w as usize % clients.len()].clone();
        let plan = plan.clone();
        let mut latencies = Latencies::new()?;
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            while Instant::now() < end {
                let op = plan.mix.pick(&mut rng);
                let t0 = Instant::now();
                let outcome = one(&client, &plan, op, &mut rng).await;
                if outcome == Outcome::Ok {
                    latencies.record(op, t0.elapsed().as_micros() as u64);
                }
                plan.counters.count(outcome);
            }
            latencies
        }));
    }
    let progress = progress_line(plan.clone(), started);
    let mut all = Latencies::new()?;
    for w in workers {
        if let Ok(l) = w.await {
            all.merge(&l);
        }
    }
    progress.abort();
    Ok(all)
}
/// Sends `rate` requests per second on schedule until `end`, each timed from when it was due.
async fn open_loop(
    args: &BenchArgs,
    rate: f64,
    clients: &[Client],
    plan: Arc<Plan>,
    started: Instant,
    end: Instant,
) -> anyhow::Result<Latencies> {
    let latencies = Arc::new(Mutex::new(Latencies::new()?));
    let in_flight = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut due = started;
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let progress = progress_line(plan.clone(), started);
    while due < end {
        // Wake every millisecond and send everything due by now, each with its own due time.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = Instant::now();
        while due <= now && due < end {
            let scheduled = due;
            due += interval;
            if in_flight.load(Ordering::Relaxed) >= args.max_in_flight as u64 {
                plan.counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let client = clients[sent as usize % clients.len()].clone();
            sent += 1;
            let op = plan.mix.pick(&mut rng);
            let mut task_rng = rand::rngs::StdRng::from_rng(&mut rng)?;
            let (plan, latencies, in_flight) = (plan.clone(), latencies.clone(), in_flight.clone());
            in_flight.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let outcome = one(&client, &plan, op, &mut task_rng).await;
                if outcome == Outcome::Ok {
                    let micros = scheduled.elapsed().as_micros() as u64;
                    if let Ok(mut l) = latencies.lock() {
                        l.record(op, micros);
                    }
                }
                plan.counters.count(outcome);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    // Replies to what was sent still count (each request has its own timeout).
    while tasks.join_next().await.is_some() {}
    progress.abort();
    let all = latencies.lock().map(|l| l.clone());
    Ok(all.unwrap_or_else(|p| p.into_inner().clone()))
}

/// One line per second on stderr: replies per second and errors so far.
fn progress_line(plan: Arc<Plan>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let counters = &plan.counters;
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let ok = counters.ok.load(Ordering::Relaxed);
            eprintln!(
                "  {:>4.0} s  {:>8} ops/s  {} overloaded, {} errors",
                started.elapsed().as_secs_f64(),
                ok - last,
                counters.overloaded.load(Ordering::Relaxed),
                counters.failed.load(Ordering::Relaxed)
            );
            last = ok;
        }
    })
}

/// Prints the summary: a line (and one per operation), or one JSON object with `--json`.
fn report(args: &BenchArgs, counters: &Counters, latencies: &Latencies, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let overloaded = counters.overloaded.load(Ordering::Relaxed);
    let skipped = counters.skipped.load(Ordering::Relaxed);
    let throughput = ok as f64 / elapsed;
    if args.json {
        let summary = json!({
            "workload": args.workload.map(|w| format!("{w:?}").to_lowercase()),
            "read_ratio": args.workload.is_none().then_some(args.read_ratio),
            "mode": if args.rate.is_some() { "open" } else { "closed" },
            "rate": args.rate,
            "concurrency": args.rate.is_none().then_some(args.concurrency),
            "keys": args.keys,
            "value_size": args.value_size,
            "elapsed_s": elapsed,
            "ok": ok,
            "overloaded": overloaded,
            "failed": failed,
            "skipped": skipped,
            "ops_per_sec": throughput,
            "latency": latencies.to_json(),
        });
        println!("{summary}");
        return;
    }
    let (p50, p99, p999) = latencies.headline();
    println!(
        "{ok} ok, {overloaded} overloaded, {failed} failed, {skipped} not sent in {elapsed:.1} s: {throughput:.0} ops/s; latency ms p50 {p50:.2}, p99 {p99:.2}, p999 {p999:.2}"
    );
    for line in latencies.per_op_lines() {
        println!("{line}");
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The node shed it (admission control or too many operations pending).
    Overloaded,
    Failed,
}

impl Counters {
    fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Overloaded => &self.overloaded,
            Outcome::Failed => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn key_name(k: u64) -> String {
    format!("bench-{k}")
}

/// One operation; keeps the per-key context cache current.
async fn one(client: &Client, plan: &Plan, op: Op, rng: &mut impl rand::Rng) -> Outcome {
    let k = match op {
        Op::Insert => plan.keys.insert(),
        _ => plan.keys.existing(rng),
    };
    let key = key_name(k);
    let cached = || {
        plan.contexts
            .lock()
            .ok()
            .and_then(|m| m.get(&k).cloned())
            .unwrap_or_default()
    };
    let result = match op {
        Op::Read => client
            .get_with(key.as_bytes(), plan.opts)
            .await
            .map(|object| object.context),
        Op::Update => {
            client
                .put_with(key.as_bytes(), &plan.value, &cached(), plan.opts)
                .await
        }
        Op::Insert => {
            client
                .put_with(key.as_bytes(), &plan.value, &Context::empty(), plan.opts)
                .await
        }
        Op::ReadModifyWrite => match client.get_with(key.as_bytes(), plan.opts).await {
            Ok(object) => {
                client
                    .put_with(key.as_bytes(), &plan.value, &object.context, plan.opts)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    let context = match result {
        Ok(context) => context,
        Err(dynakv_client::ClientError::Request {
            error: dynakv_client::RequestError::Overloaded { .. },
            ..
        }) => return Outcome::Overloaded,
        Err(_) => return Outcome::Failed,
    };
    if let Ok(mut m) = plan.contexts.lock() {
        m.insert(k, context);
    }
    Outcome::Ok
}

//! `dynakv bench`: a load generator, closed-loop by default, open-loop with `--rate`.
//!
//! Closed loop: `--concurrency` workers each send one request, wait for its reply, and send the
//! next, for `--duration` seconds. Open loop (`--rate R`): R requests per second are sent on
//! schedule whatever the replies do, each timed from when it was due (so a slow node shows up
//! as latency, not as a lower send rate), at most `--max-in-flight` at once; replies are
//! counted as ok, overloaded (the node shed the request) or failed. There is one direct [`Client`] (one connection) per target node, and
//! the workers are spread round-robin over them (each node coordinates what it receives).
//! Writes carry the latest context seen for their key, so siblings stay bounded by real
//! concurrency instead of growing with every write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use dynakv_client::{Client, Context, Options};
use rand::{Rng, SeedableRng};

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
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Share of reads, 0.0..=1.0.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
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

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    overloaded: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
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
    let creds = args.target.credentials()?;
    let mut clients = Vec::new();
    for &node in &args.target.nodes {
        let client = Client::direct(node, &creds)?;
        // Dial now, so an unreachable node fails the run before it starts.
        client.cluster_info().await?;
        clients.push(client);
    }
    let opts = Options {
        n: args.n,
        r: args.r,
        w: args.w,
        ..Options::default()
    };
    let counters = Arc::new(Counters::default());
    let contexts: Arc<Mutex<HashMap<u64, Context>>> = Arc::default();
    let value: Arc<[u8]> = vec![b'x'; args.value_size].into();
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    eprintln!(
        "bench: {} workers, {} s, {} keys, {} B values, read ratio {}, {} node(s)",
        args.concurrency,
        args.duration,
        args.keys,
        args.value_size,
        args.read_ratio,
        clients.len()
    );
    if let Some(rate) = args.rate {
        let shared = Shared {
            counters: counters.clone(),
            contexts,
            value,
            opts,
        };
        let all = open_loop(&args, rate, &clients, shared, started, end).await;
        report(&counters, &all, started);
        for client in clients {
            client.close().await;
        }
        return Ok(());
    }
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = clients[w as usize % clients.len()].clone();
        let counters = counters.clone();
        let contexts = contexts.clone();
        let value = value.clone();
        let (keys, read_ratio) = (args.keys, args.read_ratio);
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let k = rng.gen_range(0..keys);
                let read = rng.gen_bool(read_ratio);
                let t0 = Instant::now();
                let outcome = one(&client, k, read, &value, opts, &contexts).await;
                latencies.push(t0.elapsed().as_micros() as u64);
                counters.count(outcome);
            }
            latencies
        }));
    }
    let progress = progress_line(counters.clone(), started);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    progress.abort();
    report(&counters, &all, started);
    for client in clients {
        client.close().await;
    }
    Ok(())
}

/// What an open-loop request task needs.
#[derive(Clone)]
struct Shared {
    counters: Arc<Counters>,
    contexts: Arc<Mutex<HashMap<u64, Context>>>,
    value: Arc<[u8]>,
    opts: Options,
}

/// Sends `rate` requests per second on schedule until `end`, each timed from when it was due;
/// returns the latencies (microseconds) of the requests that got a reply.
async fn open_loop(
    args: &BenchArgs,
    rate: f64,
    clients: &[Client],
    shared: Shared,
    started: Instant,
    end: Instant,
) -> Vec<u64> {
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let in_flight = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut due = started;
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let progress = progress_line(shared.counters.clone(), started);
    while due < end {
        // Wake every millisecond and send everything due by now, each with its own due time.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = Instant::now();
        while due <= now && due < end {
            let scheduled = due;
            due += interval;
            if in_flight.load(Ordering::Relaxed) >= args.max_in_flight as u64 {
                shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let client = clients[sent as usize % clients.len()].clone();
            sent += 1;
            let (k, read) = (rng.gen_range(0..args.keys), rng.gen_bool(args.read_ratio));
            let (shared, latencies, in_flight) =
                (shared.clone(), latencies.clone(), in_flight.clone());
            in_flight.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let outcome = one(
                    &client,
                    k,
                    read,
                    &shared.value,
                    shared.opts,
                    &shared.contexts,
                )
                .await;
                let micros = scheduled.elapsed().as_micros() as u64;
                if outcome != Outcome::Failed {
                    if let Ok(mut l) = latencies.lock() {
                        l.push(micros);
                    }
                }
                shared.counters.count(outcome);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    // Replies to what was sent still count (each request has its own timeout).
    while tasks.join_next().await.is_some() {}
    progress.abort();
    let mut all = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    all.shrink_to_fit();
    all
}

/// One line per second on stderr: replies per second and errors so far.
fn progress_line(counters: Arc<Counters>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
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

/// Prints the summary line.
fn report(counters: &Counters, all: &[u64], started: Instant) {
    let mut all = all.to_vec();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let overloaded = counters.overloaded.load(Ordering::Relaxed);
    let skipped = counters.skipped.load(Ordering::Relaxed);
    println!(
        "{ok} ok, {overloaded} overloaded, {failed} failed, {skipped} not sent in {elapsed:.1} s: {:.0} ops/s; latency ms p50 {:.2}, p99 {:.2}, p999 {:.2}",
        ok as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
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

/// One request; true on success. Keeps the per-key context cache current.
async fn one(
    client: &Client,
    k: u64,
    read: bool,
    value: &[u8],
    opts: Options,
    contexts: &Mutex<HashMap<u64, Context>>,
) -> Outcome {
    let key = format!("bench-{k}");
    let result = if read {
        client
            .get_with(key.as_bytes(), opts)
            .await
            .map(|object| object.context)
    } else {
        let context = contexts
            .lock()
            .ok()
            .and_then(|m| m.get(&k).cloned())
            .unwrap_or_default();
        client.put_with(key.as_bytes(), value, &context, opts).await
    };
    let context = match result {
        Ok(context) => context,
        Err(dynakv_client::ClientError::Request {
            error: dynakv_client::RequestError::Overloaded { .. },
            ..
        }) => return Outcome::Overloaded,
        Err(_) => return Outcome::Failed,
    };
    if let Ok(mut m) = contexts.lock() {
        m.insert(k, context);
    }
    Outcome::Ok
}

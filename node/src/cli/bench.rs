//! `dynakv bench`: a closed-loop load generator.
//!
//! `--concurrency` workers each send one request, wait for its reply, and send the next, for
//! `--duration` seconds. There is one direct [`Client`] (one connection) per target node, and
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
    /// Target nodes: every node of --node (or DYNAKV_NODES), one connection each.
    #[command(flatten)]
    pub target: Target,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
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
                let ok = one(&client, k, read, &value, opts, &contexts).await;
                latencies.push(t0.elapsed().as_micros() as u64);
                let c = if ok { &counters.ok } else { &counters.failed };
                c.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let progress = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let ok = counters.ok.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>4.0} s  {:>8} ops/s  {} errors",
                    started.elapsed().as_secs_f64(),
                    ok - last,
                    counters.failed.load(Ordering::Relaxed)
                );
                last = ok;
            }
        })
    };
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    progress.abort();
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
    println!(
        "{ok} ok, {failed} failed in {elapsed:.1} s: {:.0} ops/s; latency ms p50 {:.2}, p99 {:.2}, p999 {:.2}",
        ok as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    for client in clients {
        client.close().await;
    }
    Ok(())
}

/// One request; true on success. Keeps the per-key context cache current.
async fn one(
    client: &Client,
    k: u64,
    read: bool,
    value: &[u8],
    opts: Options,
    contexts: &Mutex<HashMap<u64, Context>>,
) -> bool {
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
    let Ok(context) = result else {
        return false;
    };
    if let Ok(mut m) = contexts.lock() {
        m.insert(k, context);
    }
    true
}

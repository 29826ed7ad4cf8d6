//! `etcd-load`: the load of `dynakv bench` (closed loop, fixed key space, fixed value size, a
//! read ratio) against an etcd cluster over gRPC, for scripts/compare.sh. Prints one JSON object
//! with the same keys as `dynakv bench --json` (`ok`, `failed`, `ops_per_sec`, `latency.all`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, GetOptions};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// Member endpoints, comma separated (http://127.0.0.1:2379,...).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// gRPC connections, spread over the endpoints.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Share of reads (the rest are puts).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Serializable reads (served by any member, like a quorum-free read) instead of
    /// linearizable ones.
    #[arg(long)]
    serializable: bool,
    /// Write every key once first.
    #[arg(long)]
    load: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.endpoints.is_empty(), "--endpoints is required");
    let mut clients = Vec::new();
    for i in 0..args.connections.max(1) {
        let endpoint = args.endpoints[i % args.endpoints.len()].clone();
        clients.push(Client::connect([endpoint], None).await?);
    }
    let value = vec![b'x'; args.value_size];
    if args.load {
        let next = Arc::new(AtomicU64::new(0));
        let mut set = tokio::task::JoinSet::new();
        for w in 0..args.concurrency {
            let (mut c, next, value, keys) = (
                clients[w % clients.len()].clone(),
                next.clone(),
                value.clone(),
                args.keys,
            );
            set.spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys {
                        return anyhow::Ok(());
                    }
                    c.put(format!("bench-{k}"), value.clone(), None).await?;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let (mut c, value, failed) = (
            clients[w % clients.len()].clone(),
            value.clone(),
            failed.clone(),
        );
        let (keys, ratio, serializable) = (args.keys, args.read_ratio, args.serializable);
        set.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut rng = rand::rngs::StdRng::from_entropy();
            while Instant::now() < end {
                let key = format!("bench-{}", rng.gen_range(0..keys));
                let t0 = Instant::now();
                let ok = if rng.gen_bool(ratio) {
                    let opts = serializable.then(|| GetOptions::new().with_serializable());
                    c.get(key, opts).await.is_ok()
                } else {
                    c.put(key, value.clone(), None).await.is_ok()
                };
                if ok {
                    h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(h)
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(r) = set.join_next().await {
        all.add(r??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "ok": all.len(),
        "failed": failed.load(Ordering::Relaxed),
        "elapsed_s": elapsed,
        "ops_per_sec": all.len() as f64 / elapsed,
        "latency": { "all": {
            "count": all.len(),
            "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "max_ms": all.max() as f64 / 1000.0,
        }},
    });
    println!("{report}");
    Ok(())
}

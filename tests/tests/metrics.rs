//! `/metrics`, `/health` and `/ready` on real processes: the node's plain-HTTP listener, scraped
//! and parsed with a Prometheus text-format parser after real requests through the CLI.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dynakv_tests::{http_get, http_request, Cluster, Setup};
use prometheus_parse::{Scrape, Value};

fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<Scrape> {
    let (code, text) = http_get(addr, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}: {text}");
    }
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?)
}

/// The sample `name` whose labels include every `(label, value)` of `labels`.
fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(k).is_some_and(|got| got == *v))
        })
        .map(|x| &x.value)
}

/// The value of counter or gauge `name` with `labels`.
fn sample(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(s, name, labels)? {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// The `_count` of histogram `name` with `labels`.
fn histogram_count(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(s, name, labels)? {
        Value::Histogram(buckets) => buckets.last().map(|b| b.count),
        _ => None,
    }
}

#[test]
fn a_node_serves_metrics_health_and_readiness_over_http() -> anyhow::Result<()> {
    let mut setup = Setup::nodes(3);
    setup.metrics = true;
    let mut c = Cluster::start_with(&setup)?;
    let m1 = c.nodes[0].metrics.context("node 1 serves metrics")?;
    let a1 = c.addr(1).to_string();

    let (code, body) = http_get(m1, "/health")?;
    assert_eq!((code, body.trim()), (200, "ok"));
    // Ready once it is a valid member with working storage (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(m1, "/ready")?;
        if code == 200 {
            assert_eq!(body.trim(), "ready");
            break;
        }
        assert_eq!(code, 503, "{body}");
        if Instant::now() > deadline {
            bail!("node 1 never became ready: {body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Real requests through the CLI, all coordinated by node 1.
    c.cli_json(&["put", "k1", "v1", "--node", &a1])?;
    c.cli_json(&["put", "k2", "v2", "--node", &a1])?;
    c.cli_json(&["get", "k1", "--node", &a1])?;
    // A quorum failure: W=3 with one of three nodes stopped.
    c.stop(3)?;
    let out = c.cli(&[
        "put",
        "k3",
        "v3",
        "--w",
        "3",
        "--node",
        &a1,
        "--timeout",
        "500",
    ])?;
    assert!(!out.status.success(), "W=3 with a node down must fail");

    let s = scrape(m1)?;
    assert!(
        sample(
            &s,
            "dynakv_requests_total",
            &[("op", "put"), ("outcome", "ok")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        sample(
            &s,
            "dynakv_requests_total",
            &[("op", "get"), ("outcome", "ok")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        sample(
            &s,
            "dynakv_requests_total",
            &[("op", "put"), ("outcome", "quorum_failed")]
        ),
        Some(1.0),
        "the failed W=3 put is counted as a quorum failure"
    );
    assert!(
        histogram_count(&s, "dynakv_request_duration_seconds", &[("op", "put")]).unwrap_or(0.0)
            >= 3.0
    );
    assert!(histogram_count(&s, "dynakv_read_siblings", &[]).unwrap_or(0.0) >= 1.0);
    assert!(histogram_count(&s, "dynakv_fsync_duration_seconds", &[]).unwrap_or(0.0) >= 1.0);
    assert!(sample(&s, "dynakv_store_size_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(sample(&s, "dynakv_replica_writes_total", &[]).is_some());
    assert_eq!(sample(&s, "dynakv_storage_failed", &[]), Some(0.0));
    let sent = sample(&s, "dynakv_transfers_pending", &[("direction", "outgoing")]);
    assert_eq!(sent, Some(0.0));

    // Wrong paths and methods get clear answers; the node keeps serving.
    assert_eq!(http_get(m1, "/nope")?.0, 404);
    assert_eq!(http_request(m1, "POST", "/metrics")?.0, 405);
    assert_eq!(http_get(m1, "/health")?.0, 200);

    // A node waiting to be joined is alive but not ready, and says why.
    let id = c.add_node(None)?;
    let m = c.nodes[id as usize - 1]
        .metrics
        .context("the new node serves metrics")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(m, "/health").is_err() {
        if Instant::now() > deadline {
            bail!("the new node never answered /health");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = http_get(m, "/ready")?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not in a cluster yet"), "{body}");
    Ok(())
}

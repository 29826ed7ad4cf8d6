//! Prometheus metrics and health checks on a plain-HTTP listener of their own (etcd's
//! `--listen-metrics-urls` convention: `--metrics-addr` or the node config's `metrics_addr`).
//!
//! - `GET /metrics`: the Prometheus text format, encoded by `prometheus-client`. Request
//!   latencies and outcomes are recorded by the accept path, store barriers by the store; the
//!   core's counters and gauges are read from a status report taken at each scrape.
//! - `GET /health`: 200 while the process answers (liveness).
//! - `GET /ready`: 200 when the node serves: it is a `valid` member and its storage works;
//!   503 with the reason otherwise (joining, leaving, removed, storage failed, not joined).
//!
//! The listener holds at most [`MAX_CONNECTIONS`] connections and gives each request line and
//! headers [`HEADER_TIMEOUT`]; it carries no data and needs no certificate, so bind it where
//! only the monitoring system reaches (loopback by default in `dynakv dev`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::{oneshot, watch, Semaphore};

use dynakv_proto::wire::{StatusReport, TransferDirection};

use crate::accept::Admission;
use crate::driver::DriverInput;

/// Connections the metrics listener serves at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the core's status report.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// The operation a client request was, as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// get, put, delete, partition_map, admin, join, cluster_info, status.
    pub op: &'static str,
}

/// An operation and how it ended, as labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// As in [`OpLabels`].
    pub op: &'static str,
    /// ok, quorum_failed, overloaded, refused, error.
    pub outcome: &'static str,
}

/// The metrics a node records as it runs (cheap to clone: every field is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    request_seconds: Family<OpLabels, Histogram>,
    requests: Family<OutcomeLabels, Counter>,
    read_siblings: Histogram,
    sync_seconds: Histogram,
    sync_batch: Histogram,
    /// Bytes of the store on disk, refreshed by the core thread after each barrier.
    store_bytes: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Metrics {
            // 50 us to about 26 s.
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
            }),
            requests: Family::default(),
            read_siblings: Histogram::new([1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            // 10 us to about 5 s.
            sync_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            sync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            store_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A client request of kind `op` took `seconds` and ended with `outcome`.
    pub fn request(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        self.request_seconds
            .get_or_create(&OpLabels { op })
            .observe(seconds);
        self.requests
            .get_or_create(&OutcomeLabels { op, outcome })
            .inc();
    }

    /// A get answered with `count` siblings.
    pub fn read_siblings(&self, count: usize) {
        self.read_siblings.observe(count as f64);
    }

    /// One store barrier took `seconds` and made a batch of `inputs` inputs durable.
    pub fn sync(&self, seconds: f64, inputs: usize) {
        self.sync_seconds.observe(seconds);
        self.sync_batch.observe(inputs as f64);
    }

    /// The store's size on disk now.
    pub fn store_bytes(&self, bytes: u64) {
        self.store_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Everything, in the Prometheus text format, with the core's figures from `report`.
    pub fn encode(&self, report: Option<StatusReport>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("dynakv");
        registry.register_with_unit(
            "request_duration",
            "Client requests from arrival to reply, by operation",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        registry.register(
            "requests",
            "Client requests answered, by operation and outcome (quorum_failed: too few replicas answered)",
            self.requests.clone(),
        );
        registry.register(
            "read_siblings",
            "Siblings (concurrent values) per successful get",
            self.read_siblings.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Store barriers (flush plus fdatasync/fsync), one per batch of inputs",
            Unit::Seconds,
            self.sync_seconds.clone(),
        );
        registry.register(
            "fsync_batch_inputs",
            "Inputs (requests and peer messages) made durable by one store barrier",
            self.sync_batch.clone(),
        );
        registry.register_collector(Box::new(CoreFigures {
            report,
            store_bytes: self.store_bytes.load(Ordering::Relaxed),
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// The core's figures at one scrape (from its status report).
#[derive(Debug)]
struct CoreFigures {
    report: Option<StatusReport>,
    store_bytes: u64,
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for CoreFigures {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let bytes = ConstGauge::new(i64::try_from(self.store_bytes).unwrap_or(i64::MAX));
        bytes.encode(e.encode_descriptor(
            "store_size",
            "Bytes of the node's store on disk",
            Some(&Unit::Bytes),
            bytes.metric_type(),
        )?)?;
        let Some(r) = &self.report else {
            return Ok(());
        };
        let s = &r.stats;
        for (name, help, v) in [
            (
                "replica_writes",
                "Replica writes merged into the local store",
                s.replica_writes,
            ),
            (
                "read_repairs",
                "Objects sent back to stale replicas after a get",
                s.read_repairs,
            ),
            (
                "read_repairs_skipped",
                "Read repairs skipped for the per-second budget",
                s.read_repairs_skipped,
            ),
            (
                "sibling_warnings",
                "Writes that left a key with more siblings than sibling_warn",
                s.sibling_warnings,
            ),
            (
                "sloppy_writes",
                "Writes sent to a fallback because a primary was down",
                s.sloppy_writes,
            ),
            (
                "handoff_batches_sent",
                "Hint batches sent to their owners",
                s.handoff_batches_sent,
            ),
            (
                "hints_delivered",
                "Hints the owners acknowledged",
                s.hints_delivered,
            ),
            (
                "hints_received",
                "Hinted objects received from fallbacks",
                s.hints_received,
            ),
            (
                "aae_exchanges",
                "Anti-entropy exchanges started",
                s.aae_exchanges,
            ),
            (
                "aae_keys_repaired",
                "Keys anti-entropy found different and exchanged",
                s.aae_keys_repaired,
            ),
            (
                "aae_tree_builds",
                "Anti-entropy hash trees built from the store",
                s.aae_tree_builds,
            ),
            (
                "tombstones_reaped",
                "Tombstones removed for good",
                s.tombstones_reaped,
            ),
            (
                "late_versions_dropped",
                "Versions of late copies dropped by the node-clock check",
                s.late_versions_dropped,
            ),
            (
                "clock_dots_offered",
                "Objects and dead-dot entries sent to close other replicas' clock holes",
                s.clock_dots_offered,
            ),
            (
                "actor_retirements",
                "Times the node took a new actor identity",
                s.actor_retirements,
            ),
            (
                "transfer_batches_sent",
                "Partition transfer batches sent",
                s.transfer_batches_sent,
            ),
            (
                "transfer_batches_retried",
                "Transfer batches resent from the checkpoint",
                s.transfer_batches_retried,
            ),
            (
                "transfer_passes_restarted",
                "Transfers started over from the first key after the receiver missed batches",
                s.transfer_passes_restarted,
            ),
            (
                "transfer_keys_sent",
                "Keys the transfer receivers acknowledged",
                s.transfer_keys_sent,
            ),
            (
                "transfer_keys_received",
                "Keys received by transfers",
                s.transfer_keys_received,
            ),
            (
                "partitions_dropped",
                "Partitions dropped after handing them off",
                s.partitions_dropped,
            ),
            (
                "corrupt_records",
                "Stored records that failed their checksum or did not decode, removed for repair",
                s.corrupt_records,
            ),
            (
                "scrubbed_records",
                "Stored records the background scrub has checked",
                s.scrubbed_records,
            ),
            (
                "quarantined",
                "Objects kept aside because they could not be applied",
                s.quarantined,
            ),
            (
                "non_owner_writes",
                "Replica writes for partitions this node no longer replicates (hinted on)",
                s.non_owner_writes,
            ),
            (
                "stray_partitions",
                "Stray partition copies handed over again",
                s.stray_partitions,
            ),
            (
                "sync_failures",
                "Store barriers that failed (the node then stops serving)",
                s.sync_failures,
            ),
            (
                "join_refusals",
                "Join attempts a seed refused",
                s.join_refusals,
            ),
            (
                "admission_requests_shed",
                "Client requests answered overloaded at once",
                r.admission.requests_shed,
            ),
            (
                "admission_connections_refused",
                "Client connections refused (too many from one address)",
                r.admission.connections_refused,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        gauge(
            &mut e,
            "pending_operations",
            "Operations this node coordinates right now",
            r.pending_ops,
        )?;
        gauge(
            &mut e,
            "requests_in_flight",
            "Client requests being served right now",
            r.admission.requests_in_flight,
        )?;
        gauge(
            &mut e,
            "storage_failed",
            "1 when a store barrier failed and the node stopped serving until restarted",
            u64::from(r.storage_failure.is_some()),
        )?;
        let hints = ConstGauge::new(0i64);
        let mut family = e.encode_descriptor(
            "hints_pending",
            "Hints this node holds, by the node they are for",
            None,
            hints.metric_type(),
        )?;
        for (target, count) in &r.hints_pending {
            let g = ConstGauge::new(i64::try_from(*count).unwrap_or(i64::MAX));
            g.encode(family.encode_family(&[("target", target.0.to_string())])?)?;
        }
        let mut family = e.encode_descriptor(
            "transfers_pending",
            "Partition transfers not finished, by direction",
            None,
            MetricType::Gauge,
        )?;
        for (label, direction) in [
            ("outgoing", TransferDirection::Outgoing),
            ("incoming", TransferDirection::Incoming),
        ] {
            let n = r
                .transfers
                .iter()
                .filter(|t| t.direction == direction && !t.done)
                .count();
            let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            g.encode(family.encode_family(&[("direction", label)])?)?;
        }
        let mut family = e.encode_descriptor(
            "peer_down",
            "1 for a member this node believes down (its own opinion or gossip's)",
            None,
            MetricType::Gauge,
        )?;
        for m in r.members.iter().filter(|m| m.id != r.node) {
            let g = ConstGauge::new(i64::from(m.down));
            g.encode(family.encode_family(&[("peer", m.id.0.to_string())])?)?;
        }
        Ok(())
    }
}

/// Why the node is not ready to serve, if it is not (`/ready`).
pub fn not_ready(report: &StatusReport) -> Option<String> {
    if let Some(why) = &report.storage_failure {
        return Some(format!("storage failed: {why}"));
    }
    let me = report.members.iter().find(|m| m.id == report.node);
    match me.and_then(|m| m.membership.as_deref()) {
        Some("valid") => None,
        Some(status) => Some(format!("membership status is {status}")),
        None => Some("not in a cluster yet".into()),
    }
}

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub(crate) struct MetricsState {
    pub(crate) metrics: Metrics,
    pub(crate) driver: std::sync::mpsc::Sender<DriverInput>,
    pub(crate) admission: Arc<Admission>,
    /// True once the core runs (a node waiting to join has none to ask).
    pub(crate) serving: Arc<std::sync::atomic::AtomicBool>,
}

impl MetricsState {
    /// The core's status report, with the accept path's admission figures.
    async fn report(&self) -> Option<StatusReport> {
        if !self.serving.load(Ordering::Relaxed) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.driver.send(DriverInput::Status(tx)).ok()?;
        let mut report = tokio::time::timeout(STATUS_WAIT, rx).await.ok()?.ok()?;
        report.admission = self.admission.stats();
        Some(report)
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => match self.report().await {
                None if !self.serving.load(Ordering::Relaxed) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not in a cluster yet (waiting to join)\n".into(),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the core did not answer\n".into(),
                ),
                Some(r) => match not_ready(&r) {
                    None => text(StatusCode::OK, "ready\n".into()),
                    Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                },
            },
            "/metrics" => {
                let report = self.report().await;
                match self.metrics.encode(report) {
                    Ok(body) => {
                        let mut resp = text(StatusCode::OK, body);
                        if let Ok(v) = hyper::header::HeaderValue::from_str(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ) {
                            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                        }
                        resp
                    }
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode the metrics\n".into(),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics, /health or /ready\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Binds the metrics listener (before the node serves, so a taken port is a start error).
pub(crate) async fn bind(addr: SocketAddr) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Config(format!("cannot listen for metrics on {addr}: {e}")))
}

/// Serves `/metrics`, `/health` and `/ready` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: MetricsState,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                tracing::warn!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the scraper retries
        };
        let state = state.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.answer(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_units_and_outcomes() {
        let m = Metrics::new();
        m.request("put", "ok", 0.002);
        m.request("put", "quorum_failed", 0.5);
        m.read_siblings(2);
        m.sync(0.0001, 12);
        m.store_bytes(4096);
        let text = m.encode(None).expect("encodes");
        assert!(
            text.contains("dynakv_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains(r#"dynakv_requests_total{op="put",outcome="quorum_failed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("dynakv_fsync_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("dynakv_store_size_bytes 4096"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}

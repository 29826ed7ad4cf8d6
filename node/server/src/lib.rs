//! dynakv-server: the real driver of a node: tokio + quinn + sled around the sans-IO
//! [`dynakv_core`].
//!
//! # Layout
//! - [`config`]: the cluster file, the node config file and the data directory layout.
//! - [`settings`]: a node's settings from flags, `DYNAKV_<KEY>` variables and `dynakv.toml`,
//!   merged and resolved (host names) into [`NodeOptions`].
//! - [`sled_store`]: the production `Store`, on sled.
//! - `join`: asking a seed to let this node in.
//! - [`error`]: the crate's error enum.
//! - `driver`: the thread that owns the core, batches inputs, group-commits and routes effects.
//! - `peers`: one long-lived QUIC connection per peer pair, with reconnects.
//! - `accept`: the accept loop and the per-request client streams.
//! - `http_api`: the HTTPS/JSON API (`/v1/kv/{key}`), answered through `accept`'s path.
//! - [`metrics`]: `/metrics`, `/health` and `/ready` over plain HTTP.
//!
//! [`run`] wires them together and shuts down gracefully when asked.

pub mod config;
pub mod error;
pub use error::{Error, Result};
pub mod settings;
pub mod sled_store;

mod accept;
mod driver;
mod http_api;
mod join;
pub mod metrics;
mod peers;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynakv_ring::NodeId;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, watch};

use self::accept::{accept_loop, AcceptCtx};
use self::config::{ClusterFile, DataDir, NodeConfigFile};
use self::driver::{Driver, DriverInput};
use self::join::{ask_seed, find_seed, JoinAsk, JoinFile, Seed};
use self::peers::PeerSpawner;
use crate::sled_store::SledStore;
use dynakv_core::{Bootstrap, CoreConfig, NodeCore};
use dynakv_proto::wire::codes;
use dynakv_transport::{
    node_client_config, server_config, server_endpoint, NodeCert, DEFAULT_MAX_FRAME,
};

/// Default number of messages queued per peer.
const DEFAULT_PEER_QUEUE: usize = 16 * 1024;
/// Bound on waiting for connections to close at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How to start one node: the `dynakv node` flags, the node config file and the environment,
/// merged by [`settings::node_options`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id; must match its certificate (and its cluster file entry, for a founder).
    pub id: NodeId,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The address a joining node advertises to the cluster (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// The data directory (sled db, certificate, key, CA copy).
    pub dir: PathBuf,
    /// Seeds to join through, for a node that is not in the cluster file.
    pub join: Vec<SocketAddr>,
    /// The node config file's settings (environment overrides applied): limits, timers,
    /// listeners.
    pub settings: NodeConfigFile,
    /// The cluster file; default `DIR/cluster.toml`.
    pub cluster: Option<PathBuf>,
    /// Start even if the node's private key file is readable by other users (unix); by
    /// default such a node refuses to start.
    pub insecure_key_permissions: bool,
    /// Where to serve `/metrics`, `/health` and `/ready` over plain HTTP (`None`: the node
    /// config's `metrics_addr`, else nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// Where to serve the HTTPS/JSON API over TCP (`None`: the node config's `http_addr`,
    /// else nowhere).
    pub http_addr: Option<SocketAddr>,
}

/// How this start enters the cluster.
enum Entry {
    /// A member of the cluster file.
    Founder(ClusterFile),
    /// Joined before: settings from `DIR/join.toml`.
    Rejoin(JoinFile),
    /// Not in a cluster yet: ask these seeds (maybe none: wait for `dynakv join`).
    Join(Vec<SocketAddr>),
}

/// Client requests served at once by default (node config `max_inflight_requests`).
pub const DEFAULT_MAX_INFLIGHT: usize = 256;
/// Client requests in flight per connection by default (`max_requests_per_connection`).
pub const DEFAULT_MAX_PER_CONNECTION: usize = 128;
/// Client connections per IP address by default (`max_client_connections_per_ip`).
pub const DEFAULT_MAX_CONNS_PER_IP: usize = 256;

/// Runs a node until `shutdown` completes (or until the node is removed from the cluster),
/// then stops accepting, flushes the store and closes every connection. Errors (bad data
/// directory, bad files, port in use) are returned before anything is served; each renders as
/// one clear line.
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(shutdown);
    let dir = DataDir::new(&opts.dir);
    dir.check()?;
    let node_cfg = opts.settings.clone();
    // The address the cluster dials this node at (a joining node advertises it).
    let advertised = opts.advertise.unwrap_or(opts.listen);
    let entry = entry(&opts, &dir)?;
    if !matches!(entry, Entry::Founder(_)) && advertised.ip().is_unspecified() {
        return Err(Error::Config(format!(
            "this node would advertise {advertised}, which no peer can dial: set `advertise` (or --advertise) to the address peers reach it at"
        )));
    }
    let cert = NodeCert::load(dir.root(), opts.insecure_key_permissions)?;
    if cert.node_id() != Some(opts.id) {
        return Err(Error::DataDir(format!(
            "the certificate in {} is for node {:?}, not node {}",
            dir.root().display(),
            cert.node_id().map(|n| n.0),
            opts.id
        )));
    }
    let ca_pem = std::fs::read_to_string(dir.ca_pem())
        .map_err(|e| Error::DataDir(format!("cannot read {}: {e}", dir.ca_pem().display())))?;
    let d = CoreConfig::default();
    let client_max_frame = DEFAULT_MAX_FRAME.max(
        node_cfg.max_value_bytes.unwrap_or(d.max_value_bytes)
            + node_cfg.max_key_bytes.unwrap_or(d.max_key_bytes)
            + (1 << 16),
    );
    // A peer frame can carry an object with many siblings.
    let peer_max_frame = client_max_frame.saturating_mul(4);

    let mut endpoint = server_endpoint(opts.listen, server_config(&ca_pem, &cert)?)?;
    endpoint.set_default_client_config(node_client_config(&ca_pem, &cert)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (driver_tx, driver_rx) = std::sync::mpsc::channel();
    let (join_tx, mut join_rx) = mpsc::unbounded_channel::<JoinAsk>();
    let serving = Arc::new(AtomicBool::new(false));
    let registry: peers::Registry = Arc::new(Mutex::new(BTreeMap::new()));
    let ctx = AcceptCtx {
        driver: driver_tx.clone(),
        me: opts.id,
        links: registry.clone(),
        serving: serving.clone(),
        join: join_tx,
        client_max_frame,
        peer_max_frame,
        default_timeout_ms: Arc::new(AtomicU32::new(d.request_timeout_ms)),
        allow_node_clients: node_cfg.allow_node_clients.unwrap_or(false),
        admission: Arc::new(accept::Admission::new(
            node_cfg
                .max_inflight_requests
                .unwrap_or(DEFAULT_MAX_INFLIGHT),
            node_cfg
                .max_requests_per_connection
                .unwrap_or(DEFAULT_MAX_PER_CONNECTION),
            node_cfg
                .max_client_connections_per_ip
                .unwrap_or(DEFAULT_MAX_CONNS_PER_IP),
        )),
        metrics: metrics::Metrics::new(),
    };
    let default_timeout_ms = ctx.default_timeout_ms.clone();
    let metrics_state = metrics::MetricsState {
        metrics: ctx.metrics.clone(),
        driver: driver_tx.clone(),
        admission: ctx.admission.clone(),
        serving: serving.clone(),
    };
    if let Some(addr) = opts.metrics_addr.or(node_cfg.metrics_addr) {
        let listener = metrics::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /health and /ready over HTTP");
        tokio::spawn(metrics::serve(
            listener,
            metrics_state.clone(),
            shutdown_rx.clone(),
        ));
    }
    if let Some(addr) = opts.http_addr.or(node_cfg.http_addr) {
        let listener = http_api::bind(addr).await?;
        let tls = dynakv_transport::https_server_config(&ca_pem, &cert)?;
        tracing::info!(%addr, "serving the HTTPS API (/v1/kv/{{key}})");
        tokio::spawn(http_api::serve(
            listener,
            tls,
            ctx.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(accept_loop(endpoint.clone(), ctx, shutdown_rx.clone()));

    // Founder, rejoin, or join through a seed (waiting for one if need be).
    let (settings, boot, my_addr, file_addrs, seeds) = match entry {
        Entry::Founder(cluster) => {
            let members = cluster.members();
            let my_addr = members
                .iter()
                .find(|(id, _)| *id == opts.id)
                .map_or(advertised, |(_, a)| *a);
            if my_addr != advertised {
                tracing::warn!(listen = %opts.listen, advertised = %my_addr,
                    "--listen/--advertise differs from this node's address in the cluster file; peers dial the latter");
            }
            let addrs = members.iter().map(|(id, a)| (*id, a.to_string())).collect();
            let boot = Bootstrap::Founders {
                map: cluster.partition_map()?,
                addrs,
            };
            let file_addrs = members.into_iter().collect();
            (cluster, boot, my_addr, file_addrs, Vec::new())
        }
        Entry::Rejoin(file) => {
            tracing::info!(seed = file.seed, seed_addr = %file.seed_addr,
                "restarting a node that joined before (settings from join.toml)");
            let boot = Bootstrap::Join {
                addr: advertised.to_string(),
                seed: NodeId(file.seed),
                seed_addr: file.seed_addr.to_string(),
            };
            let seeds = vec![(NodeId(file.seed), file.seed_addr, None)];
            (
                file.cluster_file(),
                boot,
                advertised,
                BTreeMap::new(),
                seeds,
            )
        }
        Entry::Join(mut seeds) => {
            if seeds.is_empty() {
                tracing::info!(node = %opts.id, listen = %opts.listen,
                    "not in a cluster: waiting for `dynakv join SEED --node {}`", opts.listen);
            } else {
                tracing::info!(node = %opts.id, ?seeds, "joining a cluster");
            }
            let seed: Seed = loop {
                tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("stopped before joining a cluster");
                        endpoint.close(codes::SHUTDOWN.into(), b"node shutting down");
                        return Ok(());
                    }
                    found = find_seed(&endpoint, opts.id, &seeds), if !seeds.is_empty() => break found,
                    Some(ask) = join_rx.recv() => match ask_seed(&endpoint, opts.id, ask.seed).await {
                        Ok(found) => {
                            let _ = ask.reply.send(Ok(format!(
                                "node {} is joining through node {} at {}", opts.id, found.id, found.addr
                            )));
                            break found;
                        }
                        Err(e) => {
                            tracing::warn!(seed = %ask.seed, error = %e, "cannot join through this seed");
                            let _ = ask.reply.send(Err(Error::SeedFailed { seed: ask.seed, reason: e.to_string() }));
                            seeds.retain(|s| *s != ask.seed);
                        }
                    },
                }
            };
            let file = JoinFile::from_seed(&seed);
            file.save(dir.root())?;
            let boot = Bootstrap::Join {
                addr: advertised.to_string(),
                seed: seed.id,
                seed_addr: seed.addr.to_string(),
            };
            // We dialled this connection: read the seed's peer stream on it ourselves.
            tokio::spawn(peers::read_peer_streams(
                seed.conn.clone(),
                seed.id,
                driver_tx.clone(),
                peer_max_frame,
            ));
            let seeds = vec![(seed.id, seed.addr, Some(seed.conn))];
            (
                file.cluster_file(),
                boot,
                advertised,
                BTreeMap::new(),
                seeds,
            )
        }
    };
    let core_cfg = node_cfg.core_config(opts.id, &settings)?;
    // The accept path waits for the core's reply as long as the core's own deadline: the
    // cluster's request timeout, known only now (cluster file or seed). Nothing but joins is
    // served before `serving` is set below, so no request used the placeholder.
    default_timeout_ms.store(core_cfg.request_timeout_ms, Ordering::Relaxed);
    let store = SledStore::open_with_cache(&dir.db(), node_cfg.cache_bytes())?;
    let seed = rand::rngs::OsRng.next_u64();
    let core = NodeCore::open_with(core_cfg, store, boot, seed, 0)?;

    let spawner = PeerSpawner {
        me: opts.id,
        endpoint: endpoint.clone(),
        runtime: tokio::runtime::Handle::current(),
        driver: driver_tx.clone(),
        max_frame: peer_max_frame,
        shutdown: shutdown_rx.clone(),
        queue_len: node_cfg.peer_queue.unwrap_or(DEFAULT_PEER_QUEUE).max(1),
        registry,
        joining: Arc::new(AtomicBool::new(!core.is_joined())),
    };
    let joining = spawner.joining.clone();
    let (removed_tx, removed_rx) = oneshot::channel();
    let driver = Driver::new(
        core,
        spawner,
        file_addrs,
        seeds,
        removed_tx,
        Instant::now(),
        metrics_state.metrics.clone(),
    );
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("dynakv-core-{}", opts.id))
        .spawn(move || {
            let _ = done_tx.send(driver.run(driver_rx));
        })
        .map_err(|e| Error::Runtime(format!("cannot start the core thread: {e}")))?;
    serving.store(true, Ordering::Relaxed);
    tokio::spawn(later_joins(
        join_rx,
        endpoint.clone(),
        opts.id,
        driver_tx.clone(),
        peer_max_frame,
        joining,
    ));
    tracing::info!(node = %opts.id, listen = %opts.listen, advertised = %my_addr, "node serving");

    let removed = tokio::select! {
        _ = &mut shutdown => false,
        Ok(()) = removed_rx => true,
    };
    if removed {
        tracing::info!("this node was removed from the cluster; shutting down");
        let marker = dir.root().join("removed");
        if let Err(e) = std::fs::write(&marker, "removed from the cluster\n") {
            tracing::warn!(error = %e, path = %marker.display(), "cannot write the removal marker");
        }
    }
    tracing::info!("shutting down: no new connections, flushing the store");
    let _ = shutdown_tx.send(true);
    endpoint.set_server_config(None);
    let _ = driver_tx.send(DriverInput::Shutdown);
    let flushed = done_rx
        .await
        .unwrap_or_else(|_| Err(Error::Runtime("the core thread panicked".into())));
    endpoint.close(codes::SHUTDOWN.into(), b"node shutting down");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    flushed?;
    if removed {
        tracing::info!("node stopped: removed from the cluster");
    } else {
        tracing::info!("node stopped");
    }
    Ok(())
}

/// Decides how this start enters the cluster, from the cluster file, `DIR/join.toml` and
/// `--join`.
fn entry(opts: &NodeOptions, dir: &DataDir) -> Result<Entry> {
    let cluster_path = opts.cluster.clone().unwrap_or_else(|| dir.cluster_file());
    let cluster = if opts.cluster.is_some() || cluster_path.exists() {
        Some(ClusterFile::load(&cluster_path)?)
    } else {
        None
    };
    if let Some(cluster) = cluster {
        if cluster.members.iter().any(|m| NodeId(m.id) == opts.id) {
            return Ok(Entry::Founder(cluster));
        }
    }
    if let Some(file) = JoinFile::load(dir.root())? {
        return Ok(Entry::Rejoin(file));
    }
    Ok(Entry::Join(opts.join.clone()))
}

/// `dynakv join` requests once the core runs: resolve the seed's id over TLS and hand it to the
/// core (which ignores it if the node has joined already).
async fn later_joins(
    mut asks: mpsc::UnboundedReceiver<JoinAsk>,
    endpoint: quinn::Endpoint,
    me: NodeId,
    driver: std::sync::mpsc::Sender<DriverInput>,
    max_frame: usize,
    joining: Arc<AtomicBool>,
) {
    while let Some(ask) = asks.recv().await {
        if !joining.load(Ordering::Relaxed) {
            let _ = ask.reply.send(Err(Error::AlreadyInCluster(me)));
            continue;
        }
        let answer = match ask_seed(&endpoint, me, ask.seed).await {
            Ok(seed) => {
                tokio::spawn(peers::read_peer_streams(
                    seed.conn.clone(),
                    seed.id,
                    driver.clone(),
                    max_frame,
                ));
                let (tx, rx) = oneshot::channel();
                let input = DriverInput::AddJoinSeed {
                    seed: seed.id,
                    addr: seed.addr,
                    conn: Some(seed.conn),
                    reply: tx,
                };
                if driver.send(input).is_err() {
                    return;
                }
                rx.await.unwrap_or(Err(Error::ShuttingDown))
            }
            Err(e) => Err(Error::SeedFailed {
                seed: ask.seed,
                reason: e.to_string(),
            }),
        };
        let _ = ask.reply.send(answer);
    }
}

/// Completes once `shutdown` turns true (or its sender is gone). The guard `wait_for` returns
/// is dropped here, so callers can use this inside `select!` in `Send` futures.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Completes on the first SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! The real driver of a node: tokio + quinn + sled around the sans-IO [`crate::core`].
//!
//! # Layout
//! - [`config`]: the cluster file, the node config file and the data directory layout.
//! - `driver`: the thread that owns the core, batches inputs, group-commits and routes effects.
//! - `peers`: one long-lived QUIC connection per peer pair, with reconnects.
//! - `accept`: the accept loop and the per-request client streams.
//!
//! [`run`] wires them together and shuts down gracefully when asked.

pub mod config;

mod accept;
mod driver;
mod peers;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynakv_ring::NodeId;
use rand::RngCore;
use tokio::sync::{mpsc, watch};

use self::accept::{accept_loop, AcceptCtx};
use self::config::{ClusterFile, DataDir, NodeConfigFile};
use self::driver::{Driver, DriverInput, PeerHandle};
use self::peers::Link;
use crate::core::NodeCore;
use crate::error::{Error, Result};
use crate::net::{node_client_config, server_config, server_endpoint, NodeCert, DEFAULT_MAX_FRAME};
use crate::store::SledStore;
use crate::wire::codes;

/// Default number of messages queued per peer.
const DEFAULT_PEER_QUEUE: usize = 16 * 1024;
/// Bound on waiting for connections to close at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How to start one node (the `dynakv node` flags).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id; must match its certificate and its cluster file entry.
    pub id: NodeId,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The data directory (sled db, certificate, key, CA copy).
    pub dir: PathBuf,
    /// Seed addresses for the gossip layer; stored, not used yet (membership is static).
    pub join: Vec<SocketAddr>,
    /// Node config file with overrides of the core limits.
    pub config: Option<PathBuf>,
    /// The cluster file; default `DIR/cluster.toml`.
    pub cluster: Option<PathBuf>,
}

/// Runs a node until `shutdown` completes, then stops accepting, flushes the store and closes
/// every connection. Errors (bad data directory, bad files, port in use) are returned before
/// anything is served; each renders as one clear line.
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let dir = DataDir::new(&opts.dir);
    dir.check()?;
    let cluster_path = opts.cluster.clone().unwrap_or_else(|| dir.cluster_file());
    let cluster = ClusterFile::load(&cluster_path)?;
    let node_cfg = match &opts.config {
        Some(path) => NodeConfigFile::load(path)?,
        None => NodeConfigFile::default(),
    };
    let members = cluster.members();
    let Some(&(_, my_addr)) = members.iter().find(|(id, _)| *id == opts.id) else {
        return Err(Error::Config(format!(
            "node {} is not a member in {}",
            opts.id,
            cluster_path.display()
        )));
    };
    if my_addr != opts.listen {
        tracing::warn!(listen = %opts.listen, advertised = %my_addr,
            "--listen differs from this node's address in the cluster file; peers dial the latter");
    }
    let cert = NodeCert::load(dir.root())?;
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
    let core_cfg = node_cfg.core_config(opts.id, &cluster)?;
    let client_max_frame =
        DEFAULT_MAX_FRAME.max(core_cfg.max_value_bytes + core_cfg.max_key_bytes + (1 << 16));
    // A peer frame can carry an object with many siblings.
    let peer_max_frame = client_max_frame.saturating_mul(4);
    let default_timeout_ms = core_cfg.request_timeout_ms;
    let store = SledStore::open(&dir.db())?;
    let seed = rand::rngs::OsRng.next_u64();
    let core = NodeCore::open(core_cfg, store, cluster.partition_map()?, seed, 0)?;
    if !opts.join.is_empty() {
        tracing::info!(join = ?opts.join, "--join noted; membership is static (cluster file) for now");
    }

    let mut endpoint = server_endpoint(opts.listen, server_config(&ca_pem, &cert)?)?;
    endpoint.set_default_client_config(node_client_config(&ca_pem, &cert)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (driver_tx, driver_rx) = std::sync::mpsc::channel();

    let queue_len = node_cfg.peer_queue.unwrap_or(DEFAULT_PEER_QUEUE).max(1);
    let mut handles = BTreeMap::new();
    let mut links = BTreeMap::new();
    for &(peer, addr) in members.iter().filter(|(id, _)| *id != opts.id) {
        let (queue_tx, queue_rx) = mpsc::channel(queue_len);
        let (accepted_tx, accepted_rx) = mpsc::channel(4);
        let connected = Arc::new(AtomicBool::new(false));
        handles.insert(
            peer,
            PeerHandle {
                addr,
                queue: queue_tx,
                connected: connected.clone(),
            },
        );
        links.insert(peer, accepted_tx);
        let link = Link {
            me: opts.id,
            peer,
            addr,
            endpoint: endpoint.clone(),
            queue: queue_rx,
            accepted: accepted_rx,
            connected,
            driver: driver_tx.clone(),
            max_frame: peer_max_frame,
            shutdown: shutdown_rx.clone(),
            reported: None,
        };
        tokio::spawn(link.run());
    }

    let driver = Driver::new(core, my_addr, handles, Instant::now());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("dynakv-core-{}", opts.id))
        .spawn(move || {
            let _ = done_tx.send(driver.run(driver_rx));
        })
        .map_err(|e| Error::Transport(format!("cannot start the core thread: {e}")))?;

    let ctx = AcceptCtx {
        driver: driver_tx.clone(),
        links,
        client_max_frame,
        peer_max_frame,
        default_timeout_ms,
    };
    tokio::spawn(accept_loop(endpoint.clone(), ctx, shutdown_rx.clone()));
    tracing::info!(node = %opts.id, listen = %opts.listen, members = members.len(), "node serving");

    shutdown.await;
    tracing::info!("shutting down: no new connections, flushing the store");
    let _ = shutdown_tx.send(true);
    endpoint.set_server_config(None);
    let _ = driver_tx.send(DriverInput::Shutdown);
    let flushed = done_rx
        .await
        .unwrap_or_else(|_| Err(Error::Storage("the core thread panicked".into())));
    endpoint.close(codes::SHUTDOWN.into(), b"node shutting down");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    flushed?;
    tracing::info!("node stopped");
    Ok(())
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

//! The one thread that owns the [`NodeCore`]: it takes inputs from a channel, feeds them to the
//! core in batches, makes the batch durable with one `drain_effects` (group commit: one fsync per
//! batch), and routes the effects to peer queues and waiting clients.
//!
//! Why a dedicated OS thread and not a tokio task: `drain_effects` fsyncs sled, which blocks.
//! On a tokio worker that would stall the network tasks of the same worker for the whole fsync;
//! on its own thread the network keeps reading requests meanwhile, and they form the next batch,
//! which is exactly what makes group commit pay off under load.
//!
//! The driver is the only place that reads the clock for the core: time is microseconds since the
//! driver started, on the monotonic clock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use dynakv_gossip::Status;
use dynakv_ring::NodeId;
use tokio::sync::oneshot;

use super::peers::{lock, PeerHandle, PeerSpawner};
use crate::error::{Error, Result};
use crate::sled_store::SledStore;
use dynakv_core::store::Store;
use dynakv_core::{ClientReply, ClientRequest, Effect, Input, NodeCore, PeerMsg, RequestId};
use dynakv_proto::wire::{codes, ClusterInfo, StatusReport};

/// Most inputs handled before effects are drained; bounds the latency a huge burst can add.
const MAX_BATCH: usize = 4096;

/// Prune reply slots of clients that went away after this many new requests.
const PRUNE_EVERY: u64 = 4096;

/// Longest the driver sleeps without looking at the core's timers.
const MAX_IDLE: Duration = Duration::from_millis(500);

/// What the network tasks hand to the driver.
#[derive(Debug)]
pub(crate) enum DriverInput {
    /// A message from a peer whose identity the TLS handshake proved.
    Peer { from: NodeId, msg: PeerMsg },
    /// A peer's connection came up or went down (local failure detection for the core).
    PeerStatus { peer: NodeId, up: bool },
    /// A node with a cluster certificate that this node has no link for dialled in (a node
    /// joining through this one, or a member this node has not heard of yet).
    PeerConnected {
        peer: NodeId,
        conn: quinn::Connection,
    },
    /// `dynakv join`: ask `seed` (at `addr`) for the cluster state, if not joined yet.
    AddJoinSeed {
        seed: NodeId,
        addr: SocketAddr,
        /// The connection used to ask the seed, reused for the link.
        conn: Option<quinn::Connection>,
        reply: oneshot::Sender<std::result::Result<String, Error>>,
    },
    /// A client request and where its reply goes.
    Client {
        request: ClientRequest,
        reply: oneshot::Sender<ClientReply>,
    },
    /// Asks for members, map and quorum defaults.
    ClusterInfo(oneshot::Sender<ClusterInfo>),
    /// Asks for this node's status.
    Status(oneshot::Sender<StatusReport>),
    /// Finish the current batch, flush the store and stop.
    Shutdown,
}

/// The core and everything needed to route its effects.
pub(crate) struct Driver {
    core: NodeCore<SledStore>,
    me: NodeId,
    peers: BTreeMap<NodeId, PeerHandle>,
    spawner: PeerSpawner,
    /// Addresses from the cluster file: used when the cluster state has no usable one.
    file_addrs: BTreeMap<NodeId, SocketAddr>,
    /// Fired once a removed node has lingered long enough: the node then shuts down.
    on_removed: Option<oneshot::Sender<()>>,
    waiting: HashMap<RequestId, oneshot::Sender<ClientReply>>,
    next_request: RequestId,
    started: Instant,
    dropped_sends: u64,
    metrics: crate::metrics::Metrics,
    /// When the store's size on disk was last read for the metrics.
    sized_at: Option<Instant>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `core`; `started` is the instant the core's time 0 stands for. Links are
    /// started for every `seeds` entry (`(id, addr, connection)`: the seeds of a joining node)
    /// and then as the core decides (`Effect::Link`, at the advertised address, else the one in
    /// `file_addrs`). `on_removed` fires when the core says stop (`Effect::Stop`).
    pub(crate) fn new(
        core: NodeCore<SledStore>,
        spawner: PeerSpawner,
        file_addrs: BTreeMap<NodeId, SocketAddr>,
        seeds: Vec<(NodeId, SocketAddr, Option<quinn::Connection>)>,
        on_removed: oneshot::Sender<()>,
        started: Instant,
        metrics: crate::metrics::Metrics,
    ) -> Driver {
        let mut driver = Driver {
            me: core.id(),
            core,
            peers: BTreeMap::new(),
            spawner,
            file_addrs,
            on_removed: Some(on_removed),
            waiting: HashMap::new(),
            next_request: 0,
            started,
            dropped_sends: 0,
            metrics,
            sized_at: None,
        };
        for (seed, addr, conn) in seeds {
            if seed != driver.me && !driver.peers.contains_key(&seed) {
                let handle = driver.spawner.spawn(seed, addr, true, conn);
                driver.peers.insert(seed, handle);
            }
        }
        driver.membership();
        // The core's first effects: the links to the members it knows.
        let effects = driver.core.drain_effects();
        driver.route(effects);
        driver
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs until [`DriverInput::Shutdown`] or until every sender is gone, then flushes the store.
    pub(crate) fn run(mut self, rx: Receiver<DriverInput>) -> Result<()> {
        loop {
            let first = {
                let now = self.now();
                let wait = match self.core.poll_timeout() {
                    Some(at) => Duration::from_micros(at.saturating_sub(now)).min(MAX_IDLE),
                    None => MAX_IDLE,
                };
                if wait.is_zero() {
                    None
                } else {
                    match rx.recv_timeout(wait) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut stop = false;
            let mut handled = 0;
            if let Some(input) = first {
                stop |= self.input(input);
                handled += 1;
            }
            while handled < MAX_BATCH && !stop {
                match rx.try_recv() {
                    Ok(input) => {
                        stop |= self.input(input);
                        handled += 1;
                    }
                    Err(_) => break,
                }
            }
            let now = self.now();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle(now, Input::Timeout);
            }
            let barriers = self.core.store().barriers();
            let syncing = Instant::now();
            let effects = self.core.drain_effects();
            if self.core.store().barriers() != barriers {
                self.metrics.sync(syncing.elapsed().as_secs_f64(), handled);
            }
            self.refresh_store_size();
            // New members get their links before the first message for them is routed.
            self.membership();
            self.route(effects);
            if stop {
                break;
            }
        }
        self.finish()
    }

    /// Reads the store's size on disk for the metrics, at most once a second.
    fn refresh_store_size(&mut self) {
        if self
            .sized_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.sized_at = Some(Instant::now());
        self.metrics.store_bytes(self.core.store().size_on_disk());
    }

    /// Makes everything durable before the process exits.
    fn finish(self) -> Result<()> {
        let mut store = self.core.into_store();
        store.sync()?;
        tracing::info!("store flushed");
        Ok(())
    }

    /// Handles one input; returns true when the driver should stop after this batch.
    fn input(&mut self, input: DriverInput) -> bool {
        let now = self.now();
        match input {
            DriverInput::Peer { from, msg } => self.core.handle(now, Input::Peer { from, msg }),
            DriverInput::PeerStatus { peer, up } => {
                self.core.handle(now, Input::PeerStatus { peer, up })
            }
            DriverInput::Client { request, reply } => {
                self.next_request += 1;
                let id = self.next_request;
                self.waiting.insert(id, reply);
                if id % PRUNE_EVERY == 0 {
                    // Clients that disconnected leave their slot behind when the core never
                    // replies (a failed sync drops replies); forget those.
                    self.waiting.retain(|_, tx| !tx.is_closed());
                }
                self.core.handle(now, Input::Client { id, request });
            }
            DriverInput::PeerConnected { peer, conn } => self.peer_connected(peer, conn),
            DriverInput::AddJoinSeed {
                seed,
                addr,
                conn,
                reply,
            } => {
                let _ = reply.send(self.add_join_seed(seed, addr, conn));
            }
            DriverInput::ClusterInfo(tx) => {
                let _ = tx.send(self.core.cluster_info());
            }
            DriverInput::Status(tx) => {
                let _ = tx.send(self.core.status_report());
            }
            DriverInput::Shutdown => return true,
        }
        false
    }

    /// Tells the link tasks whether this node is still joining (seed links dial then).
    fn membership(&mut self) {
        self.spawner
            .joining
            .store(!self.core.is_joined(), Ordering::Relaxed);
    }

    /// Carries out the core's link decisions (`Effect::Link`/`Unlink`): a new member gets a
    /// link, a moved one is dialled at its new address, a removed one loses its link. An
    /// advertised address that is not a socket address falls back to the cluster file's.
    fn link(&mut self, peer: NodeId, advertised: &str) {
        let addr = match advertised.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => match self.file_addrs.get(&peer) {
                Some(addr) => *addr,
                None => {
                    tracing::warn!(%peer, addr = %advertised,
                        "member advertises no usable address; cannot reach it");
                    return;
                }
            },
        };
        match self.peers.get(&peer) {
            Some(handle) => {
                let mut current = lock(&handle.addr);
                if *current != addr {
                    tracing::info!(%peer, old = %*current, new = %addr, "member address updated");
                    *current = addr;
                }
            }
            None => {
                tracing::info!(%peer, %addr, "new member; linking to it");
                let handle = self.spawner.spawn(peer, addr, false, None);
                self.peers.insert(peer, handle);
            }
        }
    }

    fn unlink(&mut self, peer: NodeId) {
        if self.peers.remove(&peer).is_some() {
            self.spawner.forget(peer);
            tracing::info!(%peer, "member removed from the cluster; dropping its link");
        }
    }

    /// A node with a cluster certificate dialled in before this node had a link for it.
    fn peer_connected(&mut self, peer: NodeId, conn: quinn::Connection) {
        let removed = self
            .core
            .cluster_state()
            .and_then(|s| s.member(peer))
            .is_some_and(|m| m.status == Status::Removed);
        // A removed peer the core still links to (it is handing its hints over) is let in.
        if peer == self.me || (removed && !self.peers.contains_key(&peer)) {
            tracing::warn!(%peer, remote = %conn.remote_address(),
                "connection from a node removed from the cluster (or using this node's id); refused");
            conn.close(codes::NOT_ALLOWED.into(), b"removed from the cluster");
            return;
        }
        if self.peers.contains_key(&peer) {
            // The link appeared meanwhile: hand it over the usual way.
            if let Some(tx) = lock(&self.spawner.registry).get(&peer) {
                let _ = tx.try_send(conn);
            }
            return;
        }
        tracing::info!(%peer, remote = %conn.remote_address(),
            "a node this node has no link for connected (it joins, or this node has not heard of it yet); linking to it");
        let handle = self
            .spawner
            .spawn(peer, conn.remote_address(), false, Some(conn));
        self.peers.insert(peer, handle);
    }

    /// `dynakv join` on a node that is not in a cluster yet.
    fn add_join_seed(
        &mut self,
        seed: NodeId,
        addr: SocketAddr,
        conn: Option<quinn::Connection>,
    ) -> std::result::Result<String, Error> {
        let refused = if self.core.is_joined() {
            Some(Error::AlreadyInCluster(self.me))
        } else if seed == self.me {
            Some(Error::JoinSelf(addr))
        } else {
            None
        };
        if let Some(why) = refused {
            if let Some(conn) = conn {
                conn.close(0u32.into(), b"not needed");
            }
            return Err(why);
        }
        self.core.add_join_seed(seed, addr.to_string());
        if !self.peers.contains_key(&seed) {
            let handle = self.spawner.spawn(seed, addr, true, conn);
            self.peers.insert(seed, handle);
        }
        tracing::info!(%seed, %addr, "joining through a new seed");
        Ok(format!(
            "node {} is joining through node {seed} at {addr}",
            self.me
        ))
    }

    fn route(&mut self, effects: Vec<Effect>) {
        // Links first, so a message to a new member in the same batch finds its link.
        for effect in &effects {
            match effect {
                Effect::Link { peer, addr } => self.link(*peer, addr),
                Effect::Unlink { peer } => self.unlink(*peer),
                _ => {}
            }
        }
        for effect in effects {
            match effect {
                Effect::Link { .. } | Effect::Unlink { .. } => {}
                Effect::Stop { reason } => {
                    tracing::info!(node = %self.me, %reason, "the core asks to stop this node");
                    if let Some(tx) = self.on_removed.take() {
                        let _ = tx.send(());
                    }
                }
                Effect::Send { to, msg } => match self.peers.get(&to) {
                    Some(peer) => {
                        if peer.queue.try_send(msg).is_err() {
                            // The core treats sends as best effort and times out; dropping
                            // here keeps memory bounded while a peer is down or slow.
                            self.dropped_sends += 1;
                            if self.dropped_sends.is_power_of_two() {
                                tracing::warn!(peer = %to, dropped = self.dropped_sends,
                                    "peer queue full or closed; dropping messages");
                            }
                        }
                    }
                    None => tracing::warn!(peer = %to, "message for an unknown node dropped"),
                },
                Effect::Reply { id, reply } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        // The client may have gone away; nothing to do then.
                        let _ = tx.send(reply);
                    }
                }
            }
        }
    }
}

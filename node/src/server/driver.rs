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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynakv_ring::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::core::{ClientReply, ClientRequest, Effect, Input, NodeCore, PeerMsg, RequestId};
use crate::error::Result;
use crate::store::{SledStore, Store};
use crate::wire::{ClusterInfo, MemberStatus, StatusReport, TransferDirection, TransferStatus};

/// Most inputs handled before effects are drained; bounds the latency a huge burst can add.
const MAX_BATCH: usize = 4096;

/// Prune reply slots of clients that went away after this many new requests.
const PRUNE_EVERY: u64 = 4096;

/// What the network tasks hand to the driver.
#[derive(Debug)]
pub(crate) enum DriverInput {
    /// A message from a peer whose identity the TLS handshake proved.
    Peer { from: NodeId, msg: PeerMsg },
    /// A peer's connection came up or went down (local failure detection for the core).
    PeerStatus { peer: NodeId, up: bool },
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

/// The driver's handle on one peer: its outgoing queue and whether a connection is up.
#[derive(Debug, Clone)]
pub(crate) struct PeerHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) queue: mpsc::Sender<PeerMsg>,
    pub(crate) connected: Arc<AtomicBool>,
}

/// The core and everything needed to route its effects.
pub(crate) struct Driver {
    core: NodeCore<SledStore>,
    me: NodeId,
    my_addr: SocketAddr,
    peers: BTreeMap<NodeId, PeerHandle>,
    waiting: HashMap<RequestId, oneshot::Sender<ClientReply>>,
    next_request: RequestId,
    /// Messages the core addressed to this node itself, fed back in the next batch.
    local: VecDeque<PeerMsg>,
    started: Instant,
    dropped_sends: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver for `core`; `started` is the instant the core's time 0 stands for.
    pub(crate) fn new(
        core: NodeCore<SledStore>,
        my_addr: SocketAddr,
        peers: BTreeMap<NodeId, PeerHandle>,
        started: Instant,
    ) -> Driver {
        Driver {
            me: core.id(),
            core,
            my_addr,
            peers,
            waiting: HashMap::new(),
            next_request: 0,
            local: VecDeque::new(),
            started,
            dropped_sends: 0,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs until [`DriverInput::Shutdown`] or until every sender is gone, then flushes the store.
    pub(crate) fn run(mut self, rx: Receiver<DriverInput>) -> Result<()> {
        loop {
            let first = if !self.local.is_empty() {
                match rx.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.core.poll_timeout() {
                    Some(at) => {
                        let now = self.now();
                        if at <= now {
                            None
                        } else {
                            match rx.recv_timeout(Duration::from_micros(at - now)) {
                                Ok(input) => Some(input),
                                Err(RecvTimeoutError::Timeout) => None,
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    }
                    None => match rx.recv() {
                        Ok(input) => Some(input),
                        Err(_) => break,
                    },
                }
            };
            let mut stop = false;
            let mut handled = 0;
            while let Some(msg) = self.local.pop_front() {
                let now = self.now();
                self.core.handle(now, Input::Peer { from: self.me, msg });
            }
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
            let effects = self.core.drain_effects();
            self.route(effects);
            if stop {
                break;
            }
        }
        self.finish()
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
            DriverInput::ClusterInfo(tx) => {
                let _ = tx.send(self.cluster_info());
            }
            DriverInput::Status(tx) => {
                let _ = tx.send(self.status());
            }
            DriverInput::Shutdown => return true,
        }
        false
    }

    fn route(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, msg } if to == self.me => self.local.push_back(msg),
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

    fn members(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut out: Vec<_> = self.peers.iter().map(|(id, p)| (*id, p.addr)).collect();
        out.push((self.me, self.my_addr));
        out.sort();
        out
    }

    fn cluster_info(&self) -> ClusterInfo {
        let cfg = self.core.config();
        ClusterInfo {
            members: self.members(),
            map: self.core.partition_map().clone(),
            n: cfg.n,
            r: cfg.r,
            w: cfg.w,
        }
    }

    fn status(&self) -> StatusReport {
        let cfg = self.core.config();
        let map = self.core.partition_map();
        let counts = map.counts();
        let state = self.core.cluster_state();
        let members = self
            .members()
            .into_iter()
            .map(|(id, addr)| MemberStatus {
                id,
                addr,
                up: id == self.me
                    || self
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.connected.load(Ordering::Relaxed)),
                down: self.core.is_down(id),
                membership: state
                    .and_then(|s| s.member(id))
                    .map(|m| m.status.to_string()),
                partitions: counts.get(&id).copied().unwrap_or(0),
            })
            .collect();
        StatusReport {
            node: self.me,
            members,
            partition_count: map.partition_count(),
            n: cfg.n,
            r: cfg.r,
            w: cfg.w,
            pending_ops: self.core.pending_ops() as u64,
            hints_pending: self.core.hints_pending(),
            transfers: self.transfers(),
            down: self.core.down_peers(),
            stats: self.core.stats(),
        }
    }

    /// Outgoing then incoming transfers, each in (partition, peer) order.
    fn transfers(&self) -> Vec<TransferStatus> {
        let outgoing = self
            .core
            .outgoing_transfers()
            .into_iter()
            .map(|t| TransferStatus {
                direction: TransferDirection::Outgoing,
                partition: t.partition,
                peer: t.to,
                keys: t.sent,
                total: Some(t.total),
                done: t.done,
            });
        let incoming = self
            .core
            .incoming_transfers()
            .into_iter()
            .map(|t| TransferStatus {
                direction: TransferDirection::Incoming,
                partition: t.partition,
                peer: t.from,
                keys: t.received,
                total: None,
                done: t.done,
            });
        outgoing.chain(incoming).collect()
    }
}

//! Links to peer nodes: one long-lived QUIC connection per pair of nodes.
//!
//! The node with the lower id dials, the higher one accepts, so a pair never races into two
//! connections. Both directions use the same connection: each side opens ONE unidirectional
//! stream on it and writes its [`PeerFrame`]s there, length-prefixed, back to back (a long-lived
//! stream per direction rather than a stream per message: no per-message stream setup, and
//! messages to one peer stay in order). When the connection drops, the dialer reconnects with
//! jittered exponential backoff ([`Backoff`]) and the acceptor waits for the new connection;
//! messages queued meanwhile are sent once it is up (the queue is bounded; the driver drops
//! what does not fit).
//!
//! Links come and go with the membership: [`PeerSpawner`] starts one for every member the
//! cluster state lists (and for a node that dials in with a cluster certificate before this
//! node has heard of it: a node joining through us), and a link stops when the driver drops
//! its [`PeerHandle`] (the member was removed). One exception to "the lower id dials": while a
//! node has not joined yet, it dials its seeds itself, since they do not know it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender as StdSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynakv_ring::NodeId;
use tokio::sync::{mpsc, watch};

use super::driver::DriverInput;
use super::stopped;
use crate::error::Result;
use dynakv_core::PeerMsg;
use dynakv_proto::wire::{self, codes, PeerFrame};
use dynakv_transport::{connect, peer_node_id, Backoff, FrameDecoder, DIAL_TIMEOUT};

/// Ceiling of the first reconnect delay; the ceiling doubles up to [`MAX_BACKOFF`] (each delay
/// is drawn between half its ceiling and the ceiling, so links dropped together by a restart do
/// not redial in lockstep).
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect delay, so a restarted peer is found again within a few seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A connection that lived at least this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);
/// Most bytes gathered from the queue into one stream write.
const MAX_WRITE_BATCH: usize = 256 * 1024;

/// Where the accept loop hands a connection from each known peer.
pub(crate) type Registry = Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<quinn::Connection>>>>;

/// Locks a mutex whose data stays valid even if a holder panicked (plain maps and addresses).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The driver's handle on one peer: its outgoing queue and its address. Whether a connection is
/// up reaches the core as `Input::PeerStatus` (status reads it there). Dropping the handle
/// stops the link task.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    /// Where the peer is dialled (updated when the cluster state says otherwise).
    pub(crate) addr: Arc<Mutex<SocketAddr>>,
    pub(crate) queue: mpsc::Sender<PeerMsg>,
    /// Dropped with the handle: tells the link to stop.
    _retire: watch::Sender<bool>,
}

/// Starts link tasks (from the driver thread, on the node's tokio runtime).
#[derive(Debug, Clone)]
pub(crate) struct PeerSpawner {
    pub(crate) me: NodeId,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) driver: StdSender<DriverInput>,
    pub(crate) max_frame: usize,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) queue_len: usize,
    pub(crate) registry: Registry,
    /// True until this node has the cluster state: its seed links dial whatever the ids.
    pub(crate) joining: Arc<AtomicBool>,
}

impl PeerSpawner {
    /// Starts a link to `peer` at `addr`; `seed`: dial it while this node is joining;
    /// `first`: a connection the peer already opened to us.
    pub(crate) fn spawn(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        seed: bool,
        first: Option<quinn::Connection>,
    ) -> PeerHandle {
        let (queue_tx, queue_rx) = mpsc::channel(self.queue_len);
        let (accepted_tx, accepted_rx) = mpsc::channel(4);
        if let Some(conn) = first {
            // A fresh channel has room for one.
            let _ = accepted_tx.try_send(conn);
        }
        let (retire_tx, retire_rx) = watch::channel(false);
        let addr = Arc::new(Mutex::new(addr));
        lock(&self.registry).insert(peer, accepted_tx);
        let link = Link {
            me: self.me,
            peer,
            addr: addr.clone(),
            endpoint: self.endpoint.clone(),
            queue: queue_rx,
            accepted: accepted_rx,
            driver: self.driver.clone(),
            max_frame: self.max_frame,
            shutdown: self.shutdown.clone(),
            retire: retire_rx,
            bootstrap: seed.then(|| self.joining.clone()),
            reported: None,
        };
        self.runtime.spawn(link.run());
        PeerHandle {
            addr,
            queue: queue_tx,
            _retire: retire_tx,
        }
    }

    /// Forgets `peer` on the accept side (its link is stopped by dropping its handle).
    pub(crate) fn forget(&self, peer: NodeId) {
        lock(&self.registry).remove(&peer);
    }
}

/// Everything a link task needs.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) me: NodeId,
    pub(crate) peer: NodeId,
    pub(crate) addr: Arc<Mutex<SocketAddr>>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) queue: mpsc::Receiver<PeerMsg>,
    /// Connections from this peer that the accept loop handed over.
    pub(crate) accepted: mpsc::Receiver<quinn::Connection>,
    pub(crate) driver: StdSender<DriverInput>,
    pub(crate) max_frame: usize,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Turns true, or loses its sender, when the peer left the cluster.
    pub(crate) retire: watch::Receiver<bool>,
    /// `Some(joining)`: a seed of this node, dialled by us while `joining` is true.
    pub(crate) bootstrap: Option<Arc<AtomicBool>>,
    /// What the core was last told about this peer (`None`: nothing yet, it assumes up).
    pub(crate) reported: Option<bool>,
}

impl Link {
    /// Keeps a connection to the peer up and writes queued messages to it until shutdown.
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut next: Option<quinn::Connection> = None;
        loop {
            let conn = match next.take() {
                Some(conn) => conn,
                None => match self.obtain(&mut backoff).await {
                    Some(conn) => conn,
                    None => return,
                },
            };
            tracing::info!(peer = %self.peer, addr = %conn.remote_address(), "peer connection up");
            self.report(true);
            let connected_at = std::time::Instant::now();
            next = self.pump(&conn).await;
            if next.is_none() {
                self.report(false);
            }
            if self.halted() {
                if self.retired() {
                    conn.close(codes::NOT_ALLOWED.into(), b"removed from the cluster");
                    tracing::info!(peer = %self.peer, "peer left the cluster; link closed");
                }
                return;
            }
            if next.is_none() {
                tracing::info!(peer = %self.peer, reason = %conn.close_reason().map(|r| r.to_string()).unwrap_or_else(|| "stream error".into()), "peer connection down");
                // A connection the peer closes at once (it refuses us) must not turn into a
                // tight reconnect loop: back off unless it was up for a while.
                if connected_at.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                } else {
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    let mut stop = self.shutdown.clone();
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits for a usable connection: dials (the lower id) or waits for the peer to dial (the
    /// higher id). `None` on shutdown.
    async fn obtain(&mut self, backoff: &mut Backoff) -> Option<quinn::Connection> {
        let target = Target {
            endpoint: self.endpoint.clone(),
            addr: self.addr.clone(),
            peer: self.peer,
            driver: self.driver.clone(),
            max_frame: self.max_frame,
        };
        loop {
            // A connection the peer opened already wins over dialling a second one.
            if let Ok(conn) = self.accepted.try_recv() {
                return Some(conn);
            }
            let dialer = self.me < self.peer
                || self
                    .bootstrap
                    .as_ref()
                    .is_some_and(|joining| joining.load(Ordering::Relaxed));
            let mut stop = self.shutdown.clone();
            let mut retire = self.retire.clone();
            let dialed = tokio::select! {
                _ = stopped(&mut stop) => return None,
                _ = stopped(&mut retire) => return None,
                conn = self.accepted.recv() => return conn,
                result = target.dial(), if dialer => result,
                // Not the dialer: check again now and then whether that changed.
                _ = tokio::time::sleep(MAX_BACKOFF), if !dialer => continue,
            };
            match dialed {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    if matches!(
                        e,
                        crate::Error::Transport(dynakv_transport::Error::VersionMismatch { .. })
                    ) {
                        // An operator must act (a mixed-version cluster): say so at warn level.
                        tracing::warn!(peer = %self.peer, error = %e, "peer refused: protocol version mismatch");
                    } else {
                        tracing::debug!(peer = %self.peer, error = %e, retry_in = ?delay, "dial failed; backing off");
                    }
                    self.report(false);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        conn = self.accepted.recv() => return conn,
                    }
                }
            }
        }
    }

    /// Shutting down, or the peer was removed?
    fn halted(&self) -> bool {
        *self.shutdown.borrow() || self.retired()
    }

    fn retired(&self) -> bool {
        *self.retire.borrow() || self.retire.has_changed().is_err()
    }

    /// Tells the core (and `status`) that the peer is reachable or not, on changes only.
    fn report(&mut self, up: bool) {
        if self.reported == Some(up) {
            return;
        }
        self.reported = Some(up);
        // A closed driver means shutdown; nothing left to tell.
        let _ = self.driver.send(DriverInput::PeerStatus {
            peer: self.peer,
            up,
        });
    }
}

/// What dialling a peer needs (split from [`Link`] so the link's queues stay borrowable).
#[derive(Debug)]
struct Target {
    endpoint: quinn::Endpoint,
    addr: Arc<Mutex<SocketAddr>>,
    peer: NodeId,
    driver: StdSender<DriverInput>,
    max_frame: usize,
}

impl Target {
    async fn dial(&self) -> Result<quinn::Connection> {
        let addr = *lock(&self.addr);
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connect(&self.endpoint, addr))
            .await
            .map_err(|_| {
                dynakv_transport::Error::Transport(format!("dialing {addr} timed out"))
            })??;
        match peer_node_id(&conn) {
            Some(id) if id == self.peer => {
                tokio::spawn(read_peer_streams(
                    conn.clone(),
                    self.peer,
                    self.driver.clone(),
                    self.max_frame,
                ));
                Ok(conn)
            }
            other => {
                conn.close(codes::NOT_ALLOWED.into(), b"unexpected node identity");
                Err(dynakv_transport::Error::Transport(format!(
                    "{addr} presented node {other:?}, expected node {}",
                    self.peer
                ))
                .into())
            }
        }
    }
}

impl Link {
    /// Writes queued messages on this connection's outgoing stream until it fails. Returns a
    /// replacement connection if the peer dialled again meanwhile.
    async fn pump(&mut self, conn: &quinn::Connection) -> Option<quinn::Connection> {
        let mut send = match conn.open_uni().await {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "cannot open peer stream");
                return None;
            }
        };
        let mut stop = self.shutdown.clone();
        let mut retire = self.retire.clone();
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    let _ = send.finish();
                    return None;
                }
                _ = stopped(&mut retire) => {
                    let _ = send.finish();
                    return None;
                }
                replacement = self.accepted.recv() => {
                    conn.close(codes::REPLACED.into(), b"replaced by a newer connection");
                    return replacement;
                }
                _ = conn.closed() => return None,
                msg = self.queue.recv() => {
                    let msg = msg?;
                    buf.clear();
                    push_frame(&mut buf, msg);
                    // Gather what else is queued into one write: fewer syscalls and packets.
                    while buf.len() < MAX_WRITE_BATCH {
                        match self.queue.try_recv() {
                            Ok(msg) => push_frame(&mut buf, msg),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = send.write_all(&buf).await {
                        tracing::warn!(peer = %self.peer, error = %e, "peer stream failed; reconnecting");
                        conn.close(codes::MALFORMED.into(), b"stream failed");
                        return None;
                    }
                }
            }
        }
    }
}

fn push_frame(buf: &mut Vec<u8>, msg: PeerMsg) {
    match wire::encode(&PeerFrame::Msg(msg)) {
        Ok(payload) => match u32::try_from(payload.len()) {
            Ok(len) => {
                buf.extend_from_slice(&len.to_be_bytes());
                buf.extend_from_slice(&payload);
            }
            Err(_) => tracing::error!(len = payload.len(), "peer message too large; dropped"),
        },
        Err(e) => tracing::error!(error = %e, "cannot encode a peer message; dropped"),
    }
}

/// Accepts the peer's unidirectional streams on `conn` and feeds their frames to the driver.
pub(crate) async fn read_peer_streams(
    conn: quinn::Connection,
    peer: NodeId,
    driver: StdSender<DriverInput>,
    max_frame: usize,
) {
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(read_peer_stream(
            conn.clone(),
            recv,
            peer,
            driver.clone(),
            max_frame,
        ));
    }
}

async fn read_peer_stream(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    peer: NodeId,
    driver: StdSender<DriverInput>,
    max_frame: usize,
) {
    // Read in large chunks and split frames ourselves: one read can carry many small frames.
    let mut decoder = FrameDecoder::new(max_frame);
    loop {
        let chunk = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "peer stream ended");
                return;
            }
        };
        decoder.push(&chunk.bytes);
        loop {
            let frame = match decoder.pop() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return reject(&conn, peer, codes::TOO_LARGE, &e),
            };
            match wire::decode::<PeerFrame>(&frame) {
                Ok(PeerFrame::Msg(msg)) => {
                    if driver.send(DriverInput::Peer { from: peer, msg }).is_err() {
                        return; // the driver stopped: shutting down
                    }
                }
                Err(e) => return reject(&conn, peer, codes::MALFORMED, &e),
            }
        }
    }
}

/// A peer broke the protocol: drop the whole connection (a reconnect resynchronises the stream),
/// never the node.
fn reject(conn: &quinn::Connection, peer: NodeId, code: u32, e: &dyn std::fmt::Display) {
    tracing::warn!(peer = %peer, error = %e, "malformed frame from peer; closing the connection");
    conn.close(code.into(), b"malformed peer frame");
}

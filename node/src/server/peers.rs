//! Links to peer nodes: one long-lived QUIC connection per pair of nodes.
//!
//! The node with the lower id dials, the higher one accepts, so a pair never races into two
//! connections. Both directions use the same connection: each side opens ONE unidirectional
//! stream on it and writes its [`PeerFrame`]s there, length-prefixed, back to back (a long-lived
//! stream per direction rather than a stream per message: no per-message stream setup, and
//! messages to one peer stay in order). When the connection drops, the dialer reconnects with
//! exponential backoff and the acceptor waits for the new connection; messages queued meanwhile
//! are sent once it is up (the queue is bounded; the driver drops what does not fit).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender as StdSender;
use std::sync::Arc;
use std::time::Duration;

use dynakv_ring::NodeId;
use tokio::sync::{mpsc, watch};

use super::driver::DriverInput;
use super::stopped;
use crate::core::PeerMsg;
use crate::error::{Error, Result};
use crate::net::{connect, peer_node_id, FrameDecoder};
use crate::wire::{self, codes, PeerFrame};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect delay, so a restarted peer is found again within a few seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Bound on one dial (handshake included).
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes gathered from the queue into one stream write.
const MAX_WRITE_BATCH: usize = 256 * 1024;

/// Everything a link task needs.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) me: NodeId,
    pub(crate) peer: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) queue: mpsc::Receiver<PeerMsg>,
    /// Connections from this peer that the accept loop handed over.
    pub(crate) accepted: mpsc::Receiver<quinn::Connection>,
    pub(crate) connected: Arc<AtomicBool>,
    pub(crate) driver: StdSender<DriverInput>,
    pub(crate) max_frame: usize,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What the core was last told about this peer (`None`: nothing yet, it assumes up).
    pub(crate) reported: Option<bool>,
}

impl Link {
    /// Keeps a connection to the peer up and writes queued messages to it until shutdown.
    pub(crate) async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut next: Option<quinn::Connection> = None;
        loop {
            let conn = match next.take() {
                Some(conn) => conn,
                None => match self.obtain(&mut backoff).await {
                    Some(conn) => conn,
                    None => return,
                },
            };
            tracing::info!(peer = %self.peer, addr = %self.addr, "peer connection up");
            self.report(true);
            next = self.pump(&conn).await;
            if next.is_none() {
                self.report(false);
            }
            let stopping = *self.shutdown.borrow();
            if stopping {
                return;
            }
            if next.is_none() {
                tracing::info!(peer = %self.peer, reason = %conn.close_reason().map(|r| r.to_string()).unwrap_or_else(|| "stream error".into()), "peer connection down");
            }
        }
    }

    /// Waits for a usable connection: dials (the lower id) or waits for the peer to dial (the
    /// higher id). `None` on shutdown.
    async fn obtain(&mut self, backoff: &mut Duration) -> Option<quinn::Connection> {
        let dialer = self.me < self.peer;
        let target = Target {
            endpoint: self.endpoint.clone(),
            addr: self.addr,
            peer: self.peer,
            driver: self.driver.clone(),
            max_frame: self.max_frame,
        };
        loop {
            let mut stop = self.shutdown.clone();
            let dialed = tokio::select! {
                _ = stopped(&mut stop) => return None,
                conn = self.accepted.recv() => return conn,
                result = target.dial(), if dialer => result,
            };
            match dialed {
                Ok(conn) => {
                    *backoff = MIN_BACKOFF;
                    return Some(conn);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "dial failed; backing off");
                    self.report(false);
                    tokio::select! {
                        _ = tokio::time::sleep(*backoff) => {}
                        conn = self.accepted.recv() => return conn,
                    }
                    *backoff = (*backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Tells the core (and `status`) that the peer is reachable or not, on changes only.
    fn report(&mut self, up: bool) {
        if self.reported == Some(up) {
            return;
        }
        self.reported = Some(up);
        self.connected.store(up, Ordering::Relaxed);
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
    addr: SocketAddr,
    peer: NodeId,
    driver: StdSender<DriverInput>,
    max_frame: usize,
}

impl Target {
    async fn dial(&self) -> Result<quinn::Connection> {
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connect(&self.endpoint, self.addr))
            .await
            .map_err(|_| Error::Transport(format!("dialing {} timed out", self.addr)))??;
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
                Err(Error::Transport(format!(
                    "{} presented node {:?}, expected node {}",
                    self.addr, other, self.peer
                )))
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
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
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
fn reject(conn: &quinn::Connection, peer: NodeId, code: u32, e: &Error) {
    tracing::warn!(peer = %peer, error = %e, "malformed frame from peer; closing the connection");
    conn.close(code.into(), b"malformed peer frame");
}

//! Incoming connections: the accept loop, and one bidirectional stream per client request.
//!
//! Every connection presents a certificate from the cluster CA (the TLS config refuses any
//! other). One that names a node is a peer: it is handed to that peer's link and may also open
//! unidirectional peer streams; its request streams may only ask for the cluster information a
//! joining node needs, unless the node config sets `allow_node_clients`. One that names a client
//! may only open bidirectional request streams, and each request is checked against the role in
//! its certificate ([`needed_role`]); a refusal says which role the request needs and changes
//! nothing. A malformed or oversized request frame gets a [`ServerFrame::Error`] and the stream
//! is stopped with an error code; the connection and the node carry on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::Sender as StdSender;
use std::sync::Arc;
use std::time::Duration;

use dynakv_ring::NodeId;
use tokio::sync::{mpsc, oneshot, watch};

use super::driver::DriverInput;
use super::join::JoinAsk;
use super::peers::{lock, read_peer_streams, Registry};
use super::stopped;
use dynakv_core::{ClientReply, ClientRequest, RequestError};

use crate::error::Error;
use dynakv_proto::wire::{self, codes, ClientFrame, ServerFrame};
use dynakv_transport::{peer_identity, read_frame, write_frame, Identity, Role};

/// How long a client may take to send its request frame (a stalled sender must not hold a
/// stream slot forever).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra wait beyond a request's own timeout before a stream gives up on the core's reply.
const REPLY_GRACE: Duration = Duration::from_secs(2);
/// Bound on a TLS handshake of an incoming connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared, read-only settings of the accept side.
#[derive(Debug, Clone)]
pub(crate) struct AcceptCtx {
    pub(crate) driver: StdSender<DriverInput>,
    /// This node.
    pub(crate) me: NodeId,
    /// Where to hand connections from each known peer.
    pub(crate) links: Registry,
    /// True once the core runs (before, only `Join` requests are served).
    pub(crate) serving: Arc<AtomicBool>,
    /// Where `dynakv join` requests go.
    pub(crate) join: mpsc::UnboundedSender<JoinAsk>,
    pub(crate) client_max_frame: usize,
    pub(crate) peer_max_frame: usize,
    /// The cluster's request timeout (`request_timeout_ms` of cluster.toml, or the seed's for
    /// a joined node): how long a request without its own timeout may take in the core.
    pub(crate) default_timeout_ms: Arc<AtomicU32>,
    /// Serve client requests from node certificates too (node config `allow_node_clients`).
    pub(crate) allow_node_clients: bool,
    /// Front-door limits and their counters.
    pub(crate) admission: Arc<Admission>,
    /// Request latencies and outcomes, for `/metrics`.
    pub(crate) metrics: crate::metrics::Metrics,
}

/// Admission control at the front door: bounds on client requests in flight and on client
/// connections per address, with counters for `dynakv status`. A request beyond the bound is
/// answered "overloaded" without reaching the core, so an open-loop flood costs the node a
/// reply per request, not memory.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) max_inflight: usize,
    pub(crate) max_per_connection: usize,
    pub(crate) max_conns_per_ip: usize,
    in_flight: std::sync::atomic::AtomicUsize,
    shed: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    conns: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One place taken under a limit; dropping it frees the place.
pub(crate) struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a place under `limit` in `counter`, or says how many were taken.
fn take(counter: &std::sync::atomic::AtomicUsize, limit: usize) -> Result<Slot<'_>, usize> {
    let before = counter.fetch_add(1, Ordering::AcqRel);
    if before >= limit {
        counter.fetch_sub(1, Ordering::AcqRel);
        return Err(before);
    }
    Ok(Slot(counter))
}

/// One admitted client connection; dropping it frees its slot.
pub(crate) struct ConnSlot(Arc<Admission>, std::net::IpAddr);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = lock(&self.0.conns);
        if let Some(n) = conns.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&self.1);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(
        max_inflight: usize,
        max_per_connection: usize,
        max_conns_per_ip: usize,
    ) -> Self {
        Admission {
            max_inflight,
            max_per_connection,
            max_conns_per_ip,
            in_flight: Default::default(),
            shed: Default::default(),
            refused: Default::default(),
            conns: Default::default(),
        }
    }

    /// Places for one request on the node and on its connection (`conn` counts that
    /// connection's requests), or `Err(in_flight)` when either is at its limit.
    pub(crate) fn admit<'a>(
        &'a self,
        conn: &'a std::sync::atomic::AtomicUsize,
    ) -> Result<(Slot<'a>, Slot<'a>), usize> {
        let taken = take(&self.in_flight, self.max_inflight)
            .and_then(|node| take(conn, self.max_per_connection).map(|c| (node, c)));
        if taken.is_err() {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// A slot for one client connection from `ip`, or `None` when that address has too many.
    pub(crate) fn admit_conn(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ConnSlot> {
        let mut conns = lock(&self.conns);
        let n = conns.entry(ip).or_insert(0);
        if *n >= self.max_conns_per_ip {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(ConnSlot(self.clone(), ip))
    }

    /// The counters, for `dynakv status`.
    pub(crate) fn stats(&self) -> dynakv_proto::wire::AdmissionStats {
        dynakv_proto::wire::AdmissionStats {
            requests_in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            max_inflight_requests: self.max_inflight as u64,
            max_requests_per_connection: self.max_per_connection as u64,
            requests_shed: self.shed.load(Ordering::Relaxed),
            connections_refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: AcceptCtx,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(conn)) => serve_connection(conn, ctx).await,
                Ok(Err(e)) if dynakv_transport::is_version_mismatch(&e) => tracing::warn!(%remote,
                    ours = dynakv_transport::PROTOCOL_VERSION,
                    "connection refused: the other side speaks another dynakv protocol version \
                     (no common ALPN); run the same dynakv release on every node and client"),
                // Mutual TLS refusals land here (a certificate from another CA): worth a line.
                Ok(Err(e)) if is_tls_refusal(&e) => tracing::warn!(%remote, error = %e,
                    "TLS handshake failed; connection refused (a certificate not from this cluster's CA?)"),
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "handshake abandoned"),
                Err(_) => tracing::debug!(%remote, "handshake timed out"),
            }
        });
    }
}

/// A handshake that failed on a TLS error (ours or the peer's alert), rather than one the
/// dialler abandoned (a peer dialling us at the same moment as we dial it gives up one).
fn is_tls_refusal(e: &quinn::ConnectionError) -> bool {
    // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff (RFC 9001, 4.8).
    let crypto = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

async fn serve_connection(conn: quinn::Connection, ctx: AcceptCtx) {
    let remote = conn.remote_address();
    // Any node certificate from the cluster CA is a peer: a node we do not know yet may be
    // joining through us (the driver then starts a link for it).
    let Some(who) = peer_identity(&conn) else {
        tracing::warn!(%remote, "certificate from the cluster CA names no node or client; connection closed");
        conn.close(
            codes::NOT_ALLOWED.into(),
            b"certificate names no dynakv identity",
        );
        return;
    };
    // A peer link needs both a node certificate and the peer protocol: a client holding a
    // node's certificate stays a client (and is refused unless `allow_node_clients`).
    let peer = match &who {
        Identity::Node(id) if *id != ctx.me && dynakv_transport::is_peer_link(&conn) => Some(*id),
        _ => None,
    };
    match peer {
        Some(id) => {
            tracing::debug!(%remote, peer = %id, "peer connected");
            let link = lock(&ctx.links).get(&id).cloned();
            match link {
                Some(link) => {
                    let _ = link.send(conn.clone()).await;
                }
                None => {
                    let input = DriverInput::PeerConnected {
                        peer: id,
                        conn: conn.clone(),
                    };
                    if ctx.driver.send(input).is_err() {
                        return;
                    }
                }
            }
            tokio::spawn(read_peer_streams(
                conn.clone(),
                id,
                ctx.driver.clone(),
                ctx.peer_max_frame,
            ));
        }
        None => {
            let Some(slot) = ctx.admission.admit_conn(remote.ip()) else {
                tracing::warn!(%remote, %who, limit = ctx.admission.max_conns_per_ip,
                    "too many client connections from this address; connection closed");
                conn.close(
                    codes::NOT_ALLOWED.into(),
                    b"too many connections from this address",
                );
                return;
            };
            tracing::debug!(%remote, %who, "client connected");
            tokio::spawn(refuse_uni_streams(conn.clone(), remote));
            // The slot lives as long as the connection serves streams (below).
            serve_streams(&conn, &ctx, remote, &who).await;
            drop(slot);
            return;
        }
    }
    serve_streams(&conn, &ctx, remote, &who).await;
}

/// One task per bidirectional stream (one request each) until the connection closes.
async fn serve_streams(
    conn: &quinn::Connection,
    ctx: &AcceptCtx,
    remote: SocketAddr,
    who: &Identity,
) {
    // This connection's requests in flight (bounded by `max_requests_per_connection`).
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let in_flight = in_flight.clone();
        tokio::spawn(serve_request(
            send,
            recv,
            ctx.clone(),
            remote,
            who.clone(),
            in_flight,
        ));
    }
}

/// Plain clients may not open unidirectional streams (those carry peer messages).
async fn refuse_uni_streams(conn: quinn::Connection, remote: SocketAddr) {
    while let Ok(mut recv) = conn.accept_uni().await {
        tracing::warn!(%remote, "unidirectional stream from a client without a node certificate; refused");
        let _ = recv.stop(codes::NOT_ALLOWED.into());
    }
}

async fn serve_request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: AcceptCtx,
    remote: SocketAddr,
    who: Identity,
    conn_in_flight: Arc<std::sync::atomic::AtomicUsize>,
) {
    // Admission first: a request over the limit costs a short reply, not a buffer or a task
    // waiting on the core.
    let admission = ctx.admission.clone();
    let _slots = match admission.admit(&conn_in_flight) {
        Ok(slot) => slot,
        Err(in_flight) => {
            let _ = recv.stop(codes::NOT_ALLOWED.into());
            let reply = ServerFrame::Core(ClientReply::Error(RequestError::Overloaded {
                pending: in_flight as u64,
            }));
            respond(&mut send, &reply).await;
            return;
        }
    };
    let read = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_frame(&mut recv, ctx.client_max_frame),
    )
    .await;
    let frame = match read {
        Ok(Ok(Some(payload))) => match wire::decode::<ClientFrame>(&payload) {
            Ok(frame) => frame,
            Err(e) => {
                return refuse(send, recv, remote, codes::MALFORMED, e).await;
            }
        },
        Ok(Ok(None)) => {
            let _ = send.finish();
            return;
        }
        Ok(Err(e @ dynakv_transport::Error::FrameTooLarge { .. })) => {
            return refuse(send, recv, remote, codes::TOO_LARGE, e).await;
        }
        Ok(Err(e)) => return refuse(send, recv, remote, codes::MALFORMED, e).await,
        Err(_) => {
            let e = dynakv_transport::Error::Transport("no complete request frame in time".into());
            return refuse(send, recv, remote, codes::MALFORMED, e).await;
        }
    };
    let started = std::time::Instant::now();
    let op = op_name(&frame);
    let reply = match permission(&who, &frame, ctx.allow_node_clients) {
        Ok(()) => answer(frame, &ctx).await,
        Err(why) => {
            tracing::warn!(%remote, %who, "request refused: {why}");
            ctx.metrics
                .request(op, "refused", started.elapsed().as_secs_f64());
            respond(&mut send, &ServerFrame::Error(why.to_string())).await;
            return;
        }
    };
    if let ServerFrame::Core(ClientReply::Got(got)) = &reply {
        ctx.metrics.read_siblings(got.values.len());
    }
    ctx.metrics
        .request(op, outcome(&reply), started.elapsed().as_secs_f64());
    respond(&mut send, &reply).await;
}

/// The operation a request is, as the `op` label of the metrics.
pub(crate) fn op_name(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Join { .. } => "join",
        ClientFrame::ClusterInfo => "cluster_info",
        ClientFrame::Status => "status",
        ClientFrame::Core(request) => match request {
            ClientRequest::Get { .. } => "get",
            ClientRequest::PartitionMap => "partition_map",
            ClientRequest::Put { .. } => "put",
            ClientRequest::Delete { .. } => "delete",
            ClientRequest::Admin(_) => "admin",
            ClientRequest::Scan { .. } => "scan",
            ClientRequest::Restore { .. } => "restore",
        },
    }
}

/// How a request ended, as the `outcome` label: quorum failures apart from other errors.
pub(crate) fn outcome(reply: &ServerFrame) -> &'static str {
    match reply {
        ServerFrame::Core(ClientReply::Error(e)) => match e {
            RequestError::Timeout { .. }
            | RequestError::Unavailable { .. }
            | RequestError::PrimariesUnavailable { .. }
            | RequestError::ReplicasRefused { .. } => "quorum_failed",
            RequestError::Overloaded { .. } => "overloaded",
            _ => "error",
        },
        ServerFrame::Error(_) => "error",
        _ => "ok",
    }
}

/// The role a request needs: reads and cluster information `read`; puts and deletes
/// `write`; membership changes (join, leave, remove), backup scans and restores `admin` (a
/// scan lists every key; a restore merges objects with any dots, which only an operator's
/// backup should carry).
pub(crate) fn needed_role(frame: &ClientFrame) -> (Role, &'static str) {
    match frame {
        ClientFrame::Join { .. } => (Role::Admin, "join"),
        ClientFrame::ClusterInfo => (Role::Read, "cluster info"),
        ClientFrame::Status => (Role::Read, "status"),
        ClientFrame::Core(request) => match request {
            ClientRequest::Get { .. } => (Role::Read, "get"),
            ClientRequest::PartitionMap => (Role::Read, "partition map"),
            ClientRequest::Put { .. } => (Role::Write, "put"),
            ClientRequest::Delete { .. } => (Role::Write, "delete"),
            ClientRequest::Admin(_) => (Role::Admin, "membership change"),
            ClientRequest::Scan { .. } => (Role::Admin, "backup scan"),
            ClientRequest::Restore { .. } => (Role::Admin, "restore"),
        },
    }
}

/// May `who` make this request? `Err` carries the refusal the client sees.
pub(crate) fn permission(
    who: &Identity,
    frame: &ClientFrame,
    allow_node_clients: bool,
) -> Result<(), Error> {
    let (needed, what) = needed_role(frame);
    match who {
        Identity::Client { role, .. } if role.allows(needed) => Ok(()),
        Identity::Client { name, role } => Err(Error::RoleTooLow {
            what,
            needed,
            name: name.clone(),
            role: *role,
        }),
        // A joining node asks its seed for the cluster's settings with its node certificate.
        Identity::Node(_) if allow_node_clients || matches!(frame, ClientFrame::ClusterInfo) => {
            Ok(())
        }
        Identity::Node(id) => Err(Error::NodeCertificate { node: *id }),
    }
}

pub(crate) async fn answer(frame: ClientFrame, ctx: &AcceptCtx) -> ServerFrame {
    let gone = || ServerFrame::Error("the node is shutting down".into());
    if let ClientFrame::Join { seed } = frame {
        let (tx, rx) = oneshot::channel();
        if ctx.join.send(JoinAsk { seed, reply: tx }).is_err() {
            return gone();
        }
        return match rx.await {
            Ok(Ok(msg)) => ServerFrame::Core(ClientReply::Admin(msg)),
            Ok(Err(e)) => ServerFrame::Error(e.to_string()),
            Err(_) => gone(),
        };
    }
    if !ctx.serving.load(Ordering::Relaxed) {
        return ServerFrame::Error(format!(
            "node {} is not in a cluster yet (start it with --join SEED, or run `dynakv join SEED --node ADDR`)",
            ctx.me
        ));
    }
    match frame {
        ClientFrame::Join { .. } => gone(),
        ClientFrame::Core(request) => {
            let timeout_ms = match &request {
                ClientRequest::Get { opts, .. }
                | ClientRequest::Put { opts, .. }
                | ClientRequest::Delete { opts, .. }
                | ClientRequest::Restore { opts, .. } => opts.timeout_ms,
                ClientRequest::PartitionMap
                | ClientRequest::Admin(_)
                | ClientRequest::Scan { .. } => None,
            }
            .unwrap_or_else(|| ctx.default_timeout_ms.load(Ordering::Relaxed));
            let (tx, rx) = oneshot::channel();
            if ctx
                .driver
                .send(DriverInput::Client { request, reply: tx })
                .is_err()
            {
                return gone();
            }
            let wait = Duration::from_millis(u64::from(timeout_ms)) + REPLY_GRACE;
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(reply)) => ServerFrame::Core(reply),
                Ok(Err(_)) => gone(),
                Err(_) => ServerFrame::Core(ClientReply::Error(RequestError::Internal(
                    "the node did not answer in time (its store may be failing)".into(),
                ))),
            }
        }
        ClientFrame::ClusterInfo => {
            let (tx, rx) = oneshot::channel();
            if ctx.driver.send(DriverInput::ClusterInfo(tx)).is_err() {
                return gone();
            }
            rx.await
                .map(ServerFrame::ClusterInfo)
                .unwrap_or_else(|_| gone())
        }
        ClientFrame::Status => {
            let (tx, rx) = oneshot::channel();
            if ctx.driver.send(DriverInput::Status(tx)).is_err() {
                return gone();
            }
            rx.await
                .map(|mut report| {
                    report.admission = ctx.admission.stats();
                    ServerFrame::Status(Box::new(report))
                })
                .unwrap_or_else(|_| gone())
        }
    }
}

async fn respond(send: &mut quinn::SendStream, reply: &ServerFrame) {
    match wire::encode(reply) {
        Ok(bytes) => {
            if let Err(e) = write_frame(send, &bytes).await {
                tracing::debug!(error = %e, "client went away before the reply");
                return;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a reply"),
    }
    let _ = send.finish();
}

/// Answers a bad request frame with an error frame and stops the stream with `code`.
async fn refuse(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    code: u32,
    e: impl std::fmt::Display,
) {
    tracing::warn!(%remote, error = %e, "bad request frame; closing the stream");
    let _ = recv.stop(code.into());
    respond(
        &mut send,
        &ServerFrame::Error(format!("bad request frame: {e}")),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dynakv_core::{AdminRequest, RequestOptions};

    fn client(role: Role) -> Identity {
        Identity::Client {
            name: "t".into(),
            role,
        }
    }

    #[test]
    fn admission_bounds_requests_per_node_and_per_connection_and_counts_sheds() {
        use std::sync::atomic::AtomicUsize;
        let adm = Admission::new(3, 2, 8);
        let (a, b, c) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let a1 = adm.admit(&a);
        let a2 = adm.admit(&a);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(adm.admit(&a).err(), Some(2), "connection a is at its limit");
        let b1 = adm.admit(&b);
        assert!(b1.is_ok());
        assert_eq!(adm.admit(&c).err(), Some(3), "the node is at its limit");
        let stats = adm.stats();
        assert_eq!((stats.requests_in_flight, stats.requests_shed), (3, 2));
        drop(a1);
        assert!(
            adm.admit(&c).is_ok(),
            "a finished request frees both places"
        );
        assert_eq!(a.load(Ordering::Relaxed), 1);
        drop((a2, b1));
    }

    #[test]
    fn each_role_gets_exactly_its_requests() {
        let get = ClientFrame::Core(ClientRequest::Get {
            key: Bytes::from_static(b"k"),
            opts: RequestOptions::default(),
        });
        let delete = ClientFrame::Core(ClientRequest::Delete {
            key: Bytes::from_static(b"k"),
            context: Default::default(),
            opts: RequestOptions::default(),
        });
        let remove = ClientFrame::Core(ClientRequest::Admin(AdminRequest::Remove {
            node: NodeId(3),
            force: false,
        }));
        let allowed = |who: &Identity, f: &ClientFrame| permission(who, f, false).is_ok();
        for f in [&get, &ClientFrame::Status, &ClientFrame::ClusterInfo] {
            assert!(allowed(&client(Role::Read), f));
        }
        assert!(!allowed(&client(Role::Read), &delete));
        assert!(allowed(&client(Role::Write), &delete));
        assert!(!allowed(&client(Role::Write), &remove));
        let join = ClientFrame::Join {
            seed: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        assert!(!allowed(&client(Role::Write), &join));
        assert!(allowed(&client(Role::Admin), &remove));
        let refusal = permission(&client(Role::Write), &remove, false).err();
        assert!(refusal.is_some_and(|m| m.to_string().contains("needs the admin role")));
        // Node certificates: only what a joining node asks, unless configured otherwise.
        let node = Identity::Node(NodeId(2));
        assert!(allowed(&node, &ClientFrame::ClusterInfo));
        assert!(!allowed(&node, &get) && !allowed(&node, &remove));
        assert!(permission(&node, &remove, true).is_ok());
    }
}

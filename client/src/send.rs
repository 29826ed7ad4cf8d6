//! How a request reaches a node: which nodes to try and in what order, one connection per node
//! (dialled on first use, bounded by [`DIAL_TIMEOUT`]), failover with backoff, and the memory of
//! nodes that failed recently.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_proto::{ClientReply, ClientRequest, RequestError};
use dynakv_transport::{call, client_config, client_endpoint, connect, Backoff, DIAL_TIMEOUT};

use crate::{Answered, Client, ClientError};

/// Ceiling of the first retry delay; the ceiling doubles per attempt up to [`MAX_BACKOFF`]
/// (each delay is drawn between half its ceiling and the ceiling: see [`Backoff`]).
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest delay between two attempts of one request.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a node that just failed is tried last; doubles per failure up to [`MAX_SUSPECT`].
const MIN_SUSPECT: Duration = Duration::from_millis(500);
const MAX_SUSPECT: Duration = Duration::from_secs(10);

/// When a request moves on to the next node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failover {
    /// After any transport failure (dial, stream, no reply in time): for reads, cluster
    /// queries, and puts/deletes (a retried write is at worst an equal sibling).
    Always,
    /// Only when the node could not be dialled. Once the request may have reached a node its
    /// failure is final: an admin request must not act on a second node.
    BeforeSend,
}

/// A client endpoint for reaching `addrs` (IPv4 unless one of them is IPv6).
pub(crate) fn endpoint_for(
    addrs: &[SocketAddr],
    creds: &crate::Credentials,
) -> Result<quinn::Endpoint, ClientError> {
    let cfg = client_config(&creds.ca_pem, creds.cert.as_ref())
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let bind: SocketAddr = if addrs.iter().all(SocketAddr::is_ipv4) {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    client_endpoint(bind, cfg).map_err(|e| ClientError::Unreachable(e.to_string()))
}

/// The core's reply out of `frame`, with request errors and refusals turned into errors that
/// name `node`.
pub(crate) fn core_reply(frame: ServerFrame, node: SocketAddr) -> Result<ClientReply, ClientError> {
    match frame {
        ServerFrame::Core(ClientReply::Error(error @ RequestError::Timeout { .. })) => {
            Err(ClientError::Timeout {
                message: error.to_string(),
                node,
            })
        }
        ServerFrame::Core(ClientReply::Error(error)) => Err(ClientError::Request { error, node }),
        ServerFrame::Core(reply) => Ok(reply),
        other => Err(unexpected(node, &other)),
    }
}

/// A reply that does not fit the request.
pub(crate) fn unexpected(node: SocketAddr, reply: &dyn std::fmt::Debug) -> ClientError {
    ClientError::Protocol(format!("unexpected reply from {node}: {reply:?}"))
}

impl Client {
    /// The nodes to try for `key`, best first: its preference list, then the other members;
    /// for a direct client, its addresses.
    pub(crate) fn candidates(&self, key: &[u8], n: Option<u8>) -> Vec<SocketAddr> {
        let Some(info) = self.cluster() else {
            return self.inner.direct.clone();
        };
        let addr_of = |id| info.members.iter().find(|(m, _)| *m == id).map(|(_, a)| *a);
        let n = usize::from(n.unwrap_or(info.n).max(1));
        let p = info.map.partition_for_key(key);
        let mut out: Vec<SocketAddr> = info
            .map
            .preference_list(p, n)
            .into_iter()
            .filter_map(addr_of)
            .collect();
        for (_, addr) in &info.members {
            if !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }

    /// The nodes for a node-level request (status, cluster info, admin, join), best first: the
    /// client's own addresses (the seeds of a routed client), then the other members.
    pub(crate) fn node_targets(&self) -> Vec<SocketAddr> {
        let mut out = self.inner.direct.clone();
        if let Some(info) = self.cluster() {
            for (_, addr) in &info.members {
                if !out.contains(addr) {
                    out.push(*addr);
                }
            }
        }
        out
    }

    /// Sends a core request to the first of `nodes` that answers; returns the core's successful
    /// reply and the node that coordinated.
    pub(crate) async fn core(
        &self,
        nodes: Vec<SocketAddr>,
        request: ClientRequest,
        wait: Duration,
        failover: Failover,
    ) -> Result<Answered<ClientReply>, ClientError> {
        let (frame, node) = self
            .send(nodes, &ClientFrame::Core(request), wait, failover)
            .await?;
        Ok(Answered {
            node,
            reply: core_reply(frame, node)?,
        })
    }

    /// Sends `frame` to the first node in `nodes` that answers, backing off between attempts.
    /// A node's `ServerFrame::Error` is final (it answered; it refuses).
    pub(crate) async fn send(
        &self,
        nodes: Vec<SocketAddr>,
        frame: &ClientFrame,
        wait: Duration,
        failover: Failover,
    ) -> Result<(ServerFrame, SocketAddr), ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::Unreachable("no node addresses given".into()));
        }
        let nodes = self.healthy_first(nodes);
        let mut failures = Vec::new();
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        for (i, addr) in nodes.iter().copied().enumerate() {
            if i > 0 {
                let delay = backoff.next_delay(&mut rand::thread_rng());
                tokio::time::sleep(delay).await;
            }
            let conn = match self.conn(addr).await {
                Ok(conn) => conn,
                // Every node would refuse it the same way: say so at once.
                Err(dynakv_transport::Error::CertificateRefused(why)) => {
                    return Err(ClientError::Tls(why))
                }
                Err(e) => {
                    self.suspect(addr);
                    failures.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            match call(&conn, frame, wait).await {
                Ok(ServerFrame::Error(message)) => {
                    return Err(ClientError::Refused {
                        message,
                        node: addr,
                    })
                }
                Ok(reply) => {
                    self.trust(addr);
                    return Ok((reply, addr));
                }
                Err(dynakv_transport::Error::CertificateRefused(why)) => {
                    self.inner.conns.lock().await.remove(&addr);
                    return Err(ClientError::Tls(why));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "request failed");
                    self.inner.conns.lock().await.remove(&addr);
                    self.suspect(addr);
                    failures.push(format!("{addr}: {e}"));
                    if failover == Failover::BeforeSend {
                        return Err(ClientError::Unreachable(format!(
                            "{} (the request may have been applied; not retried elsewhere)",
                            failures.join("; ")
                        )));
                    }
                }
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }

    /// `nodes` in order, except that nodes which failed recently go last (in their order).
    fn healthy_first(&self, nodes: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let now = Instant::now();
        let Ok(suspect) = self.inner.suspect.lock() else {
            return nodes;
        };
        let bad = |a: &SocketAddr| suspect.get(a).is_some_and(|(until, _)| *until > now);
        let (mut good, bad): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|a| !bad(a));
        good.extend(bad);
        good
    }

    fn suspect(&self, addr: SocketAddr) {
        if let Ok(mut suspect) = self.inner.suspect.lock() {
            let next = suspect
                .get(&addr)
                .map(|(_, d)| (*d * 2).min(MAX_SUSPECT))
                .unwrap_or(MIN_SUSPECT);
            suspect.insert(addr, (Instant::now() + next, next));
        }
    }

    fn trust(&self, addr: SocketAddr) {
        if let Ok(mut suspect) = self.inner.suspect.lock() {
            suspect.remove(&addr);
        }
    }

    /// A live connection to `addr`, dialled on first use.
    async fn conn(&self, addr: SocketAddr) -> Result<quinn::Connection, dynakv_transport::Error> {
        if let Some(conn) = self.inner.conns.lock().await.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        // Dial without holding the lock, so a dead node does not stall requests to live ones.
        // Two tasks may race to dial the same node; the later connection wins, both work.
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connect(&self.inner.endpoint, addr))
            .await
            .map_err(|_| {
                dynakv_transport::Error::Transport(format!("no answer within {DIAL_TIMEOUT:?}"))
            })??;
        self.inner.conns.lock().await.insert(addr, conn.clone());
        Ok(conn)
    }

    /// Every open connection, removed from the client (for [`Client::close`]).
    pub(crate) async fn take_conns(&self) -> Vec<quinn::Connection> {
        let mut conns = self.inner.conns.lock().await;
        conns.drain().map(|(_, c)| c).collect()
    }
}

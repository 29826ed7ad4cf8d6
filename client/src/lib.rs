//! dynakv-client: the async Rust client of dynakv.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynakv_client::ClientError> {
//! use dynakv_client::{Client, Context};
//! let ca = std::fs::read_to_string("dynakv-dev/ca.pem").unwrap_or_default();
//! let client = Client::connect(&["127.0.0.1:7101".parse().unwrap()], &ca).await?;
//! let ctx = client.put(b"k", b"v1", &Context::empty()).await?;
//! let obj = client.get(b"k").await?;          // every sibling + the causal context
//! client.put(b"k", b"merged", &obj.context).await?; // supersedes what was read
//! # let _ = ctx; Ok(()) }
//! ```
//!
//! # Layout
//! - this file: [`Client`], [`Object`], [`Context`], [`Options`] and [`ClientError`].
//!
//! # Routing and retries
//! [`Client::connect`] asks a seed for the cluster (members, partition map, default N) and sends
//! each request to the first node of the key's preference list, which coordinates it. When a
//! node cannot be reached (dial, stream or reply fails), the client backs off briefly and tries
//! the next node of the list, then the other members. A retried put may be applied twice (same
//! value, two dots: two equal siblings at worst); a failed quorum is NOT retried, it is
//! reported as [`ClientError::Timeout`]. A node that failed is tried last for a while (500 ms,
//! doubling per failure up to 10 s), so a dead node does not cost every request a dial timeout.
//! [`Client::direct`] sends everything to one node.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynakv_proto::codec::token::{context_from_token, context_to_token};
use dynakv_proto::dvv::VersionVector;
use dynakv_proto::wire::{ClientFrame, ClusterInfo, ServerFrame};
use dynakv_proto::{ClientReply, ClientRequest, RequestOptions};
use dynakv_transport::call;
use dynakv_transport::{client_config, client_endpoint, connect};
use tokio::sync::Mutex;

pub use dynakv_proto::RequestError;

/// Bound on dialling one node.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra wait beyond the request timeout before a reply is given up on.
const REPLY_GRACE: Duration = Duration::from_secs(3);
/// Wait when no timeout is set (the node applies the cluster default, well below this).
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a node that just failed is tried last; doubles per failure up to [`MAX_SUSPECT`].
const MIN_SUSPECT: Duration = Duration::from_millis(500);
const MAX_SUSPECT: Duration = Duration::from_secs(10);

/// Every error the client reports.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could be reached; the message lists what was tried.
    #[error("cannot reach the cluster: {0}")]
    Unreachable(String),
    /// The coordinator did not get its quorum in time; carries the node's message.
    #[error("{message}")]
    Timeout {
        /// The coordinator's explanation (who answered, how many were needed).
        message: String,
        /// The node that coordinated.
        node: SocketAddr,
    },
    /// The node refused or failed the request (bad options, too large, storage, ...).
    #[error("request failed at {node}: {error}")]
    Request {
        /// The reason.
        error: RequestError,
        /// The node that answered.
        node: SocketAddr,
    },
    /// A context token could not be decoded.
    #[error("malformed context: {0}")]
    MalformedContext(String),
    /// TLS setup failed (bad CA certificate).
    #[error("tls: {0}")]
    Tls(String),
    /// The node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The causal context of a read: write back with it to replace what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(VersionVector);

impl Context {
    /// The empty context: a write with it is blind (it becomes a sibling of what is stored).
    pub fn empty() -> Context {
        Context::default()
    }

    /// The opaque text form (what the CLI prints and takes).
    pub fn to_token(&self) -> String {
        context_to_token(&self.0)
    }

    /// Parses a token from [`Context::to_token`] or the CLI.
    pub fn from_token(token: &str) -> Result<Context, ClientError> {
        context_from_token(token)
            .map(Context)
            .map_err(|e| ClientError::MalformedContext(e.to_string()))
    }

    /// The version vector inside.
    pub fn version_vector(&self) -> &VersionVector {
        &self.0
    }
}

/// What a get returns: every live sibling and the context covering them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The siblings (empty when the key is missing or deleted).
    pub values: Vec<Bytes>,
    /// The causal context.
    pub context: Context,
}

/// Per-request overrides of the cluster defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Replicas per key.
    pub n: Option<u8>,
    /// Read quorum.
    pub r: Option<u8>,
    /// Write quorum.
    pub w: Option<u8>,
    /// Replies a get needs from primary replicas (PR, at most R); fallbacks do not count.
    pub pr: Option<u8>,
    /// Acknowledgements a put or delete needs from primary replicas (PW, at most W); the write
    /// fails with [`RequestError::PrimariesUnavailable`] rather than rely on fallbacks.
    pub pw: Option<u8>,
    /// Request timeout (whole milliseconds are sent).
    pub timeout: Option<Duration>,
}

impl Options {
    fn request(&self) -> RequestOptions {
        RequestOptions {
            n: self.n,
            r: self.r,
            w: self.w,
            pr: self.pr,
            pw: self.pw,
            timeout_ms: self
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }

    fn wait(&self) -> Duration {
        self.timeout
            .map(|t| t + REPLY_GRACE)
            .unwrap_or(DEFAULT_WAIT)
    }
}

/// A connection to a dynakv cluster. Cheap to clone; share it between tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    /// `None` for a direct client.
    cluster: Option<ClusterInfo>,
    /// Where every request goes when there is no cluster view.
    direct: Vec<SocketAddr>,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// Nodes that failed recently: tried last until the instant, so one dead node does not
    /// cost every request a dial timeout.
    suspect: std::sync::Mutex<HashMap<SocketAddr, (Instant, Duration)>>,
}

fn endpoint_for(addrs: &[SocketAddr], ca_pem: &str) -> Result<quinn::Endpoint, ClientError> {
    let cfg = client_config(ca_pem).map_err(|e| ClientError::Tls(e.to_string()))?;
    let bind: SocketAddr = if addrs.iter().all(SocketAddr::is_ipv4) {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    client_endpoint(bind, cfg).map_err(|e| ClientError::Unreachable(e.to_string()))
}

impl Client {
    /// Connects through the first seed that answers, learns the members and partition map, and
    /// routes each request to a replica of its key. `ca_pem` is the cluster CA certificate.
    pub async fn connect(seeds: &[SocketAddr], ca_pem: &str) -> Result<Client, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::Unreachable("no seed addresses given".into()));
        }
        let direct = Client::direct_many(seeds, ca_pem)?;
        let reply = direct
            .send(
                seeds.to_vec(),
                &ClientFrame::ClusterInfo,
                Duration::from_secs(5),
            )
            .await?;
        let info = match reply.0 {
            ServerFrame::ClusterInfo(info) => info,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected cluster info, got {other:?}"
                )))
            }
        };
        let inner = Arc::try_unwrap(direct.inner)
            .map_err(|_| ClientError::Protocol("client shared during connect".into()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                cluster: Some(info),
                ..inner
            }),
        })
    }

    /// A client that sends every request to `addr`, which coordinates it (no routing).
    pub fn direct(addr: SocketAddr, ca_pem: &str) -> Result<Client, ClientError> {
        Client::direct_many(&[addr], ca_pem)
    }

    fn direct_many(addrs: &[SocketAddr], ca_pem: &str) -> Result<Client, ClientError> {
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint: endpoint_for(addrs, ca_pem)?,
                cluster: None,
                direct: addrs.to_vec(),
                conns: Mutex::new(HashMap::new()),
                suspect: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The cluster as learned at connect time (`None` for a direct client).
    pub fn cluster(&self) -> Option<&ClusterInfo> {
        self.inner.cluster.as_ref()
    }

    /// Reads every sibling of `key` with the cluster defaults.
    pub async fn get(&self, key: &[u8]) -> Result<Object, ClientError> {
        self.get_with(key, Options::default()).await
    }

    /// Reads every sibling of `key`.
    pub async fn get_with(&self, key: &[u8], opts: Options) -> Result<Object, ClientError> {
        let request = ClientRequest::Get {
            key: Bytes::copy_from_slice(key),
            opts: opts.request(),
        };
        match self.core(key, request, opts).await? {
            ClientReply::Got(g) => Ok(Object {
                values: g.values,
                context: Context(g.context),
            }),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to get: {other:?}"
            ))),
        }
    }

    /// Writes `value`, superseding what `context` covers; returns the new context.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &Context,
    ) -> Result<Context, ClientError> {
        self.put_with(key, value, context, Options::default()).await
    }

    /// Writes `value` with per-request options.
    pub async fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        context: &Context,
        opts: Options,
    ) -> Result<Context, ClientError> {
        let request = ClientRequest::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            context: context.0.clone(),
            opts: opts.request(),
        };
        self.write(key, request, opts).await
    }

    /// Deletes what `context` covers; returns the context after the delete.
    pub async fn delete(&self, key: &[u8], context: &Context) -> Result<Context, ClientError> {
        self.delete_with(key, context, Options::default()).await
    }

    /// Deletes with per-request options.
    pub async fn delete_with(
        &self,
        key: &[u8],
        context: &Context,
        opts: Options,
    ) -> Result<Context, ClientError> {
        let request = ClientRequest::Delete {
            key: Bytes::copy_from_slice(key),
            context: context.0.clone(),
            opts: opts.request(),
        };
        self.write(key, request, opts).await
    }

    async fn write(
        &self,
        key: &[u8],
        request: ClientRequest,
        opts: Options,
    ) -> Result<Context, ClientError> {
        match self.core(key, request, opts).await? {
            ClientReply::Written(w) => Ok(Context(w.context)),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply to a write: {other:?}"
            ))),
        }
    }

    /// The nodes to try for `key`, best first.
    fn candidates(&self, key: &[u8], n: Option<u8>) -> Vec<SocketAddr> {
        let Some(info) = &self.inner.cluster else {
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

    async fn core(
        &self,
        key: &[u8],
        request: ClientRequest,
        opts: Options,
    ) -> Result<ClientReply, ClientError> {
        let nodes = self.candidates(key, opts.n);
        let (reply, node) = self
            .send(nodes, &ClientFrame::Core(request), opts.wait())
            .await?;
        match reply {
            ServerFrame::Core(ClientReply::Error(error @ RequestError::Timeout { .. })) => {
                Err(ClientError::Timeout {
                    message: error.to_string(),
                    node,
                })
            }
            ServerFrame::Core(ClientReply::Error(error)) => {
                Err(ClientError::Request { error, node })
            }
            ServerFrame::Core(reply) => Ok(reply),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply: {other:?}"
            ))),
        }
    }

    /// Sends `frame` to the first node in `nodes` that answers, backing off between attempts.
    async fn send(
        &self,
        nodes: Vec<SocketAddr>,
        frame: &ClientFrame,
        wait: Duration,
    ) -> Result<(ServerFrame, SocketAddr), ClientError> {
        let nodes = self.healthy_first(nodes);
        let mut failures = Vec::new();
        let mut backoff = MIN_BACKOFF;
        for (i, addr) in nodes.iter().copied().enumerate() {
            if i > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            let conn = match self.conn(addr).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.suspect(addr);
                    failures.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            match call(&conn, frame, wait).await {
                Ok(ServerFrame::Error(msg)) => {
                    return Err(ClientError::Protocol(format!("{addr}: {msg}")))
                }
                Ok(reply) => {
                    self.trust(addr);
                    return Ok((reply, addr));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "request failed; trying the next node");
                    self.inner.conns.lock().await.remove(&addr);
                    self.suspect(addr);
                    failures.push(format!("{addr}: {e}"));
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
    async fn conn(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        if let Some(conn) = self.inner.conns.lock().await.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        // Dial without holding the lock, so a dead node does not stall requests to live ones.
        // Two tasks may race to dial the same node; the later connection wins, both work.
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connect(&self.inner.endpoint, addr))
            .await
            .map_err(|_| format!("no answer within {DIAL_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        self.inner.conns.lock().await.insert(addr, conn.clone());
        Ok(conn)
    }
}

//! dynakv-client: the async Rust client of dynakv (and the one client code path of the
//! `dynakv` CLI).
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynakv_client::ClientError> {
//! use dynakv_client::{Client, Context};
//! let client = Client::from_env().await?;     // DYNAKV_NODES, _CA, _CERT, _KEY, as the CLI
//! let ctx = client.put(b"k", b"v1", &Context::empty()).await?;
//! let obj = client.get(b"k").await?;          // every sibling + the causal context
//! client.put(b"k", b"merged", &obj.context).await?; // supersedes what was read
//! # let _ = ctx; Ok(()) }
//! ```
//!
//! # Environment
//! [`Client::from_env`] reads the same variables as the `dynakv` CLI:
//! - `DYNAKV_NODES` ([`NODES_ENV`]): comma-separated `IP:PORT` seeds, tried in order
//!   (default [`DEFAULT_NODES`], node 1 of `dynakv dev`);
//! - `DYNAKV_CA` ([`CA_ENV`]): the cluster CA certificate file (default [`DEFAULT_CA`], the
//!   CA of a `dynakv dev` cluster in the current directory);
//! - `DYNAKV_CERT` and `DYNAKV_KEY` ([`CERT_ENV`], [`KEY_ENV`]): this client's certificate and
//!   key from `dynakv ca issue-client` (defaults: the admin client `dynakv dev` creates). Every
//!   node requires a client certificate; its role (read, write, admin) decides what it may do.
//!
//! `dynakv dev` prints an `export` line that sets all four for its cluster.
//! [`Client::connect`] takes the same settings explicitly ([`Credentials`]).
//!
//! # Routing and retries
//! [`Client::connect`] asks a seed for the cluster (members, partition map, default N) and sends
//! each request to the first node of the key's preference list, which coordinates it. When a
//! node cannot be reached (dial, stream or reply fails), the client backs off briefly (a
//! jittered delay of at most 20 ms, doubling per attempt up to 500 ms) and tries the next node
//! of the list, then the other members. A retried put may be applied twice (same
//! value, two dots: two equal siblings at worst); a failed quorum is NOT retried, it is
//! reported as [`ClientError::Timeout`]. A node that failed is tried last for a while (500 ms,
//! doubling per failure up to 10 s), so a dead node does not cost every request a dial timeout.
//! A routed client keeps its view of the cluster current: in the background it asks for the
//! members and partition map again when the view is older than [`VIEW_REFRESH`] (10 s), and at
//! once after a request failed over to another node or was told a node is gone, removed, not
//! joined or short of replicas; [`Client::refresh`] does it on demand and [`Client::cluster`]
//! shows the view. [`ClientError::is_retryable`] says whether a failed request may succeed if
//! sent again.
//! [`Client::direct`] sends everything to one node, which coordinates; [`Client::direct_many`]
//! sends each request to the first of several nodes that answers (what the CLI does).
//!
//! # Node-level requests
//! [`Client::status`], [`Client::cluster_info`], [`Client::admin`] and [`Client::join`] go to
//! the client's own addresses in order (the seeds of a routed client), then the other members.
//! Admin and join requests move on to the next node only when a node cannot be dialled: once a
//! node may have received one, its failure is final, so a `leave` never acts on two nodes.
//!
//! # Full replies
//! [`Client::get_detailed`], [`Client::put_detailed`] and [`Client::delete_detailed`] return
//! the coordinator's whole reply ([`GetReply`], [`PutReply`]: reply and acknowledgement
//! counts) and its address, in an [`Answered`].
//!
//! # Timeouts
//! Dialling a node is bounded by `dynakv_transport::DIAL_TIMEOUT` (3 s). A get/put/delete
//! waits for its reply the request timeout plus 3 s (30 s without one: the node then applies
//! the cluster default, well below that); cluster info 5 s, status 10 s, admin and join 20 s
//! (a join first dials the seed).
//!
//! # Layout
//! - this file: [`Client`], its constructors and requests, and the timeouts;
//! - `credentials`: [`Credentials`] (CA certificate, client certificate and key);
//! - `env`: [`Client::from_env`] and the variable names and defaults;
//! - `send`: node order, connections, failover, backoff and suspicion of failed nodes;
//! - `types`: [`Context`], [`Object`], [`Options`], [`Answered`];
//! - `backup`: [`Client::scan_page`] and [`Client::restore`], for backups;
//! - `error`: [`ClientError`].

mod backup;
mod credentials;
mod env;
mod error;
mod send;
mod types;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_proto::{ClientReply, ClientRequest};
use tokio::sync::Mutex;

pub use credentials::Credentials;
pub use dynakv_proto::wire::{AdmissionStats, ClusterInfo, StatusReport};
/// A key's object as a replica stores it (siblings with their dots, tombstones, the causal
/// context): what [`Client::scan_page`] returns and [`Client::restore`] takes.
pub use dynakv_proto::Object as StoredObject;
pub use dynakv_proto::{AdminRequest, GetReply, PutReply, RequestError, ScanReply};
pub use dynakv_ring::NodeId;
pub use env::{
    CA_ENV, CERT_ENV, DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY, DEFAULT_NODES, KEY_ENV, NODES_ENV,
};
pub use error::ClientError;
pub use types::{Answered, Context, Object, Options};

use send::{core_reply, endpoint_for, unexpected, Failover};

/// Extra wait beyond the request timeout before a reply is given up on.
const REPLY_GRACE: Duration = Duration::from_secs(3);
/// Wait when no timeout is set (the node applies the cluster default, well below this).
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Wait for a cluster-info reply.
const CLUSTER_INFO_WAIT: Duration = Duration::from_secs(5);
/// Wait for a status reply.
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// Wait for an admin or join reply (a join first dials the seed).
const ADMIN_WAIT: Duration = Duration::from_secs(20);
/// How long [`Client::close`] waits for the nodes to learn the connections are closed.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Age past which a routed client refreshes its cluster view (in the background, at the next
/// request); a failover or an answer that says the view is stale refreshes it at once.
pub const VIEW_REFRESH: Duration = Duration::from_secs(10);

/// A routed client's view of the cluster.
#[derive(Debug, Clone)]
struct View {
    info: Arc<ClusterInfo>,
    learned: Instant,
}

/// A connection to a dynakv cluster. Cheap to clone; share it between tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    /// The cluster view and when it was learned; `None` for a direct client.
    cluster: std::sync::RwLock<Option<View>>,
    /// A refresh of the view is under way (at most one at a time).
    refreshing: std::sync::atomic::AtomicBool,
    /// Where every request goes when there is no cluster view (the seeds of a routed client).
    direct: Vec<SocketAddr>,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// Nodes that failed recently: tried last until the instant, so one dead node does not
    /// cost every request a dial timeout.
    suspect: std::sync::Mutex<HashMap<SocketAddr, (Instant, Duration)>>,
}

impl Client {
    /// Connects through the first seed that answers, learns the members and partition map, and
    /// routes each request to a replica of its key. `creds` holds the cluster CA certificate
    /// and this client's certificate. Must be called inside a tokio runtime.
    pub async fn connect(seeds: &[SocketAddr], creds: &Credentials) -> Result<Client, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::Unreachable("no seed addresses given".into()));
        }
        let direct = Client::direct_many(seeds, creds)?;
        let info = direct.cluster_info().await?;
        let inner = Arc::try_unwrap(direct.inner)
            .map_err(|_| ClientError::Protocol("client shared during connect".into()))?;
        let view = View {
            info: Arc::new(info),
            learned: Instant::now(),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                cluster: std::sync::RwLock::new(Some(view)),
                ..inner
            }),
        })
    }

    /// A client that sends every request to `addr`, which coordinates it (no routing).
    /// Dials lazily, on the first request. Must be called inside a tokio runtime.
    pub fn direct(addr: SocketAddr, creds: &Credentials) -> Result<Client, ClientError> {
        Client::direct_many(&[addr], creds)
    }

    /// A client that sends each request to the first of `addrs` that answers (in order, nodes
    /// that failed recently last), which coordinates it (no routing). This is how the CLI uses
    /// `DYNAKV_NODES`. Dials lazily. Must be called inside a tokio runtime.
    pub fn direct_many(addrs: &[SocketAddr], creds: &Credentials) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unreachable("no node addresses given".into()));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint: endpoint_for(addrs, creds)?,
                cluster: std::sync::RwLock::new(None),
                refreshing: std::sync::atomic::AtomicBool::new(false),
                direct: addrs.to_vec(),
                conns: Mutex::new(HashMap::new()),
                suspect: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The client's current view of the cluster: members, partition map, defaults (`None` for
    /// a direct client). Learned at connect time and refreshed as the cluster changes (see
    /// "Routing and retries").
    pub fn cluster(&self) -> Option<Arc<ClusterInfo>> {
        let view = self.inner.cluster.read().ok()?;
        view.as_ref().map(|v| v.info.clone())
    }

    /// Asks the cluster for its members and partition map now and routes by the answer from
    /// then on. For a direct client, this only checks that a node answers.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let info = self.cluster_info().await?;
        if let Ok(mut view) = self.inner.cluster.write() {
            if view.is_some() {
                *view = Some(View {
                    info: Arc::new(info),
                    learned: Instant::now(),
                });
            }
        }
        Ok(())
    }

    /// Refresh the view in the background if it is older than [`VIEW_REFRESH`], or at once
    /// when `stale` (a node failed or answered that it no longer serves); one refresh at a
    /// time. A failed refresh keeps the old view.
    fn refresh_soon(&self, stale: bool) {
        let due = match self.inner.cluster.read() {
            Ok(view) => match view.as_ref() {
                Some(v) => stale || v.learned.elapsed() >= VIEW_REFRESH,
                None => false,
            },
            Err(_) => false,
        };
        if !due
            || self
                .inner
                .refreshing
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            if let Err(e) = client.refresh().await {
                tracing::debug!(error = %e, "cluster view refresh failed; keeping the old view");
            }
            client
                .inner
                .refreshing
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Reads every sibling of `key` with the cluster defaults.
    pub async fn get(&self, key: &[u8]) -> Result<Object, ClientError> {
        self.get_with(key, Options::default()).await
    }

    /// Reads every sibling of `key`.
    pub async fn get_with(&self, key: &[u8], opts: Options) -> Result<Object, ClientError> {
        let got = self.get_detailed(key, opts).await?.reply;
        Ok(Object {
            values: got.values,
            context: Context::bound(key, got.context),
        })
    }

    /// Reads every sibling of `key`; returns the coordinator's full reply (with how many
    /// replicas answered, and how many of them were primaries) and its address.
    pub async fn get_detailed(
        &self,
        key: &[u8],
        opts: Options,
    ) -> Result<Answered<GetReply>, ClientError> {
        let request = ClientRequest::Get {
            key: Bytes::copy_from_slice(key),
            opts: opts.request(),
        };
        let answered = self.keyed(key, request, opts).await?;
        match answered.reply {
            ClientReply::Got(reply) => Ok(Answered {
                node: answered.node,
                reply,
            }),
            other => Err(unexpected(answered.node, &other)),
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
        let written = self.put_detailed(key, value, context, opts).await?;
        Ok(Context::bound(key, written.reply.context))
    }

    /// Writes `value` with per-request options; returns the coordinator's full reply (the new
    /// context and the acknowledgements: total, from primaries, from fallbacks) and its address.
    pub async fn put_detailed(
        &self,
        key: &[u8],
        value: &[u8],
        context: &Context,
        opts: Options,
    ) -> Result<Answered<PutReply>, ClientError> {
        context.check_for(key)?;
        let request = ClientRequest::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            context: context.clock().clone(),
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
        let written = self.delete_detailed(key, context, opts).await?;
        Ok(Context::bound(key, written.reply.context))
    }

    /// Deletes with per-request options; returns the coordinator's full reply and its address
    /// (as [`Client::put_detailed`]).
    pub async fn delete_detailed(
        &self,
        key: &[u8],
        context: &Context,
        opts: Options,
    ) -> Result<Answered<PutReply>, ClientError> {
        context.check_for(key)?;
        let request = ClientRequest::Delete {
            key: Bytes::copy_from_slice(key),
            context: context.clock().clone(),
            opts: opts.request(),
        };
        self.write(key, request, opts).await
    }

    /// Asks a node (see "Node-level requests") for the members, partition map and quorum
    /// defaults. A node that is not in a cluster yet answers [`ClientError::Refused`].
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ClientError> {
        let (frame, node) = self
            .send(
                self.node_targets(),
                &ClientFrame::ClusterInfo,
                CLUSTER_INFO_WAIT,
                Failover::Always,
            )
            .await?;
        match frame {
            ServerFrame::ClusterInfo(info) => Ok(info),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Asks a node (see "Node-level requests") for its view of the cluster: members, who is
    /// up or down, pending hints, partition transfers and its counters.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let (frame, node) = self
            .send(
                self.node_targets(),
                &ClientFrame::Status,
                STATUS_WAIT,
                Failover::Always,
            )
            .await?;
        match frame {
            ServerFrame::Status(report) => Ok(*report),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Sends a membership change to the first node that answers (see "Node-level requests"):
    /// [`AdminRequest::Leave`] makes that node leave, [`AdminRequest::Remove`] removes a
    /// (dead) node through it. Returns what the node staged and its address.
    pub async fn admin(&self, request: AdminRequest) -> Result<Answered<String>, ClientError> {
        let answered = self
            .core(
                self.node_targets(),
                ClientRequest::Admin(request),
                ADMIN_WAIT,
                Failover::BeforeSend,
            )
            .await?;
        match answered.reply {
            ClientReply::Admin(result) => Ok(Answered {
                node: answered.node,
                reply: result,
            }),
            other => Err(unexpected(answered.node, &other)),
        }
    }

    /// Makes the first node that answers, which must not be in a cluster yet, join the cluster
    /// of the member at `seed`. Returns the node's message and its address; a node already in
    /// a cluster answers [`ClientError::Refused`].
    pub async fn join(&self, seed: SocketAddr) -> Result<Answered<String>, ClientError> {
        let (frame, node) = self
            .send(
                self.node_targets(),
                &ClientFrame::Join { seed },
                ADMIN_WAIT,
                Failover::BeforeSend,
            )
            .await?;
        match core_reply(frame, node)? {
            ClientReply::Admin(result) => Ok(Answered {
                node,
                reply: result,
            }),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Closes every open connection and waits briefly (at most 500 ms) for the nodes to learn
    /// it, so they free the connection at once instead of after their idle timeout. Call it
    /// before a short-lived program exits; a request after `close` dials again.
    pub async fn close(&self) {
        for conn in self.take_conns().await {
            conn.close(0u32.into(), b"done");
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.inner.endpoint.wait_idle()).await;
    }

    /// A get, put or delete of `key`: routed to its replicas (or the direct addresses).
    async fn keyed(
        &self,
        key: &[u8],
        request: ClientRequest,
        opts: Options,
    ) -> Result<Answered<ClientReply>, ClientError> {
        self.refresh_soon(false);
        let nodes = self.candidates(key, opts.n);
        let first = nodes.first().copied();
        let result = self
            .core(nodes, request, opts.wait(), Failover::Always)
            .await;
        // Answered by another node than the key's first choice (it failed over), or told the
        // view is stale: learn the cluster again.
        let stale = match &result {
            Ok(answered) => Some(answered.node) != first,
            Err(e) => e.suggests_stale_view(),
        };
        if stale {
            self.refresh_soon(true);
        }
        result
    }

    pub(crate) async fn write(
        &self,
        key: &[u8],
        request: ClientRequest,
        opts: Options,
    ) -> Result<Answered<PutReply>, ClientError> {
        let answered = self.keyed(key, request, opts).await?;
        match answered.reply {
            ClientReply::Written(reply) => Ok(Answered {
                node: answered.node,
                reply,
            }),
            other => Err(unexpected(answered.node, &other)),
        }
    }
}

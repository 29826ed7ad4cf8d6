//! Joining a cluster through a seed (`dynakv node --join SEED`, `dynakv join SEED`).
//!
//! A node that is not in the cluster file asks a seed, over mutual TLS with its own node
//! certificate, for the cluster's settings (`ClientFrame::ClusterInfo`: N, R, W, Q, request
//! timeout), and learns the seed's node id from the certificate the seed presented. It then
//! starts its core with `Bootstrap::Join`, and the core asks the seed to stage the join.
//! A seed that does not answer, or refuses the handshake (a certificate from another CA), is
//! logged and retried with jittered exponential backoff ([`Backoff`]).
//!
//! The settings and the seed are saved in `DIR/join.toml` once learned, so a restart of a node
//! that joined needs no seed (its core restarts from the cluster state in its store).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dynakv_ring::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::config::ClusterFile;
use crate::error::{Error, Result};
use dynakv_proto::wire::{codes, ClientFrame, ClusterInfo, ServerFrame};
use dynakv_transport::{connect, peer_node_id, Backoff};

/// Bound on one attempt at a seed (handshake and answer).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Ceiling of the first delay between two rounds over the seeds; the ceiling doubles up to
/// [`MAX_BACKOFF`] (each delay is drawn between half its ceiling and the ceiling).
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two rounds over the seeds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A `dynakv join` request handed from the accept loop to the node.
#[derive(Debug)]
pub(crate) struct JoinAsk {
    /// The seed's address.
    pub(crate) seed: SocketAddr,
    /// What to tell the CLI.
    pub(crate) reply: oneshot::Sender<std::result::Result<String, Error>>,
}

/// What a seed told us.
#[derive(Debug)]
pub(crate) struct Seed {
    /// Its node id (from its certificate).
    pub(crate) id: NodeId,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// Its cluster settings.
    pub(crate) info: ClusterInfo,
    /// The connection, to be reused as the first peer connection to the seed.
    pub(crate) conn: quinn::Connection,
}

/// `DIR/join.toml`: the cluster settings a joined node learned from its seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinFile {
    /// The seed's node id.
    pub(crate) seed: u32,
    /// The seed's address.
    pub(crate) seed_addr: SocketAddr,
    /// Partitions (Q).
    pub(crate) partitions: u16,
    /// Default replicas per key.
    pub(crate) n: u8,
    /// Default read quorum.
    pub(crate) r: u8,
    /// Default write quorum.
    pub(crate) w: u8,
    /// Default request timeout.
    pub(crate) request_timeout_ms: u32,
}

impl JoinFile {
    /// The file's location in data directory `dir`.
    pub(crate) fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("join.toml")
    }

    /// The saved settings, if this node joined before.
    pub(crate) fn load(dir: &Path) -> Result<Option<JoinFile>> {
        let path = JoinFile::path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("bad {}: {e}", path.display())))
    }

    /// Saves the settings (write to a temporary file, then rename).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let path = JoinFile::path(dir);
        let tmp = dir.join("join.toml.tmp");
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot encode: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    }

    /// The settings a seed gave.
    pub(crate) fn from_seed(seed: &Seed) -> JoinFile {
        JoinFile {
            seed: seed.id.0,
            seed_addr: seed.addr,
            partitions: seed.info.map.partition_count(),
            n: seed.info.n,
            r: seed.info.r,
            w: seed.info.w,
            request_timeout_ms: seed.info.request_timeout_ms,
        }
    }

    /// The settings as a cluster file without members (for `NodeConfigFile::core_config`).
    pub(crate) fn cluster_file(&self) -> ClusterFile {
        ClusterFile {
            partitions: self.partitions,
            n: self.n,
            r: self.r,
            w: self.w,
            request_timeout_ms: self.request_timeout_ms,
            members: Vec::new(),
        }
    }
}

/// One attempt: dial `addr` with the node's endpoint (mutual TLS with the node certificate),
/// read the seed's id from its certificate, ask for its cluster settings.
pub(crate) async fn ask_seed(
    endpoint: &quinn::Endpoint,
    me: NodeId,
    addr: SocketAddr,
) -> Result<Seed> {
    let attempt = async {
        let conn = connect(endpoint, addr).await?;
        let Some(id) = peer_node_id(&conn) else {
            conn.close(codes::NOT_ALLOWED.into(), b"not a node");
            return Err(Error::Join(format!(
                "{addr} did not present a node certificate"
            )));
        };
        if id == me {
            conn.close(codes::NOT_ALLOWED.into(), b"same node");
            return Err(Error::Config(format!("{addr} is this node itself")));
        }
        let reply = dynakv_transport::call(&conn, &ClientFrame::ClusterInfo, ASK_TIMEOUT)
            .await
            .map_err(|e| match conn.close_reason() {
                // With TLS 1.3 the seed checks our certificate after our side of the handshake
                // is done: its refusal shows up here, as the reason the connection closed.
                Some(reason) => Error::Join(format!("{e} (closed: {reason})")),
                None => e.into(),
            })?;
        match reply {
            ServerFrame::ClusterInfo(info) => Ok(Seed {
                id,
                addr,
                info,
                conn,
            }),
            ServerFrame::Error(e) => Err(Error::Join(format!("{addr} (node {id}): {e}"))),
            other => Err(Error::Join(format!(
                "{addr} (node {id}) answered {other:?}"
            ))),
        }
    };
    tokio::time::timeout(ASK_TIMEOUT, attempt)
        .await
        .map_err(|_| Error::Join(format!("{addr} did not answer within {ASK_TIMEOUT:?}")))?
}

/// Asks the seeds in turn until one answers, backing off between rounds; every failure is
/// logged (a TLS refusal names the certificate problem). Runs until a seed answers: the
/// caller races it against shutdown.
pub(crate) async fn find_seed(
    endpoint: &quinn::Endpoint,
    me: NodeId,
    seeds: &[SocketAddr],
) -> Seed {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        // Drawn before the round, so each failure can say when the next round starts.
        let delay = backoff.next_delay(&mut rand::thread_rng());
        for &addr in seeds {
            match ask_seed(endpoint, me, addr).await {
                Ok(seed) => {
                    tracing::info!(seed = %seed.id, %addr, n = seed.info.n,
                        partitions = seed.info.map.partition_count(), "seed answered; joining");
                    return seed;
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, retry_in = ?delay,
                        "cannot join through this seed (not reachable, or it refused our certificate)");
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

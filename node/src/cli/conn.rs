//! Where the CLI sends a request and how it trusts the node.
//!
//! Where: `--node ADDR`, else env `DYNAKV_NODES` (comma separated, tried in order until one
//! answers), else 127.0.0.1:7101. Trust: `--ca FILE`, else env `DYNAKV_CA`, else
//! ./dynakv-dev/ca.pem. The node that receives a request coordinates it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_transport::call;
use dynakv_transport::{client_config, client_endpoint, connect};

/// Bound on dialling one node (handshake included).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// The node used when neither --node nor DYNAKV_NODES says otherwise.
const DEFAULT_NODE: &str = "127.0.0.1:7101";
/// The CA used when neither --ca nor DYNAKV_CA says otherwise.
const DEFAULT_CA: &str = "./dynakv-dev/ca.pem";

/// `--node` and `--ca`, shared by every command that talks to a node.
#[derive(Debug, Args, Clone, Default)]
pub struct Target {
    /// Node to send the request to (it coordinates). Default: env DYNAKV_NODES (comma
    /// separated, first that answers), else 127.0.0.1:7101.
    #[arg(long, value_name = "ADDR")]
    pub node: Option<SocketAddr>,
    /// CA certificate to verify nodes with. Default: env DYNAKV_CA, else ./dynakv-dev/ca.pem.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl Target {
    /// The candidate nodes, in the order to try them.
    pub fn nodes(&self) -> anyhow::Result<Vec<SocketAddr>> {
        if let Some(node) = self.node {
            return Ok(vec![node]);
        }
        let list = std::env::var("DYNAKV_NODES").unwrap_or_else(|_| DEFAULT_NODE.to_string());
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(
                part.parse()
                    .map_err(|_| anyhow!("bad address {part:?} in DYNAKV_NODES"))?,
            );
        }
        if out.is_empty() {
            bail!("DYNAKV_NODES is empty");
        }
        Ok(out)
    }

    /// The CA certificate PEM.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self
            .ca
            .clone()
            .or_else(|| std::env::var_os("DYNAKV_CA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CA));
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the CA certificate {} (pass --ca FILE or set DYNAKV_CA)",
                path.display()
            )
        })
    }

    /// Dials the first node that answers; returns the connection and its address.
    pub async fn connect(&self) -> anyhow::Result<Session> {
        let nodes = self.nodes()?;
        let ca = self.ca_pem()?;
        let bind: SocketAddr = if nodes.iter().all(SocketAddr::is_ipv4) {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = client_endpoint(bind, client_config(&ca)?)?;
        let mut failures = Vec::new();
        for addr in nodes {
            match tokio::time::timeout(DIAL_TIMEOUT, connect(&endpoint, addr)).await {
                Ok(Ok(conn)) => {
                    return Ok(Session {
                        endpoint,
                        conn,
                        addr,
                    })
                }
                Ok(Err(e)) => failures.push(format!("{addr}: {}", short(&e.to_string()))),
                Err(_) => failures.push(format!("{addr}: no answer in {DIAL_TIMEOUT:?}")),
            }
        }
        bail!("cannot reach any node ({})", failures.join("; "))
    }
}

/// Keeps only the interesting tail of a nested transport error.
fn short(msg: &str) -> String {
    msg.replace('\n', " ")
}

/// An open connection to one node.
#[derive(Debug)]
pub struct Session {
    endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    /// The node's address.
    pub addr: SocketAddr,
}

impl Session {
    /// Sends one request and waits at most `wait` for its reply; a `ServerFrame::Error` becomes
    /// an error.
    pub async fn call(&self, frame: &ClientFrame, wait: Duration) -> anyhow::Result<ServerFrame> {
        match call(&self.conn, frame, wait).await {
            Ok(ServerFrame::Error(msg)) => bail!("node {} refused the request: {msg}", self.addr),
            Ok(reply) => Ok(reply),
            Err(e) => Err(anyhow!("node {}: {e}", self.addr)),
        }
    }

    /// Closes the connection politely and waits (briefly) for the node to learn it.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

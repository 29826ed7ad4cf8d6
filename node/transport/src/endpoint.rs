//! Thin helpers around `quinn::Endpoint`: bind a server or client endpoint, dial a node, and
//! tell which node (if any) is on the other end of a connection.

use std::net::SocketAddr;
use std::time::Duration;

use dynakv_ring::NodeId;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::tls::{node_id_from_cert, PROTOCOL_VERSION, SERVER_NAME};

/// Bound on dialling one node, handshake included: the one dial timeout of the client, the CLI
/// and the node's join path.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds a UDP socket on `addr` and accepts QUIC connections with `cfg` (see
/// [`server_config`](crate::tls::server_config)). The endpoint can also dial out: set a client
/// config with `set_default_client_config` to reuse the socket for peer connections.
/// Must be called inside a tokio runtime.
pub fn server_endpoint(addr: SocketAddr, cfg: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(cfg, addr)
        .map_err(|e| Error::Transport(format!("binding QUIC server on {addr}: {e}")))
}

/// Binds a UDP socket on `bind` (use port 0 for an ephemeral port) for outgoing connections
/// with `cfg` (see [`client_config`](crate::tls::client_config) and
/// [`node_client_config`](crate::tls::node_client_config)). Must be called inside a tokio
/// runtime.
pub fn client_endpoint(bind: SocketAddr, cfg: quinn::ClientConfig) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| Error::Transport(format!("binding QUIC client on {bind}: {e}")))?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// Dials the node at `addr` with the endpoint's default client config, verifying its
/// certificate for [`SERVER_NAME`], and waits for the handshake. Callers bound the wait with a
/// timeout of their own choosing; quinn gives up after the idle timeout anyway.
///
/// A node of another protocol version refuses the handshake; the error then says so
/// ([`Error::VersionMismatch`]).
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<quinn::Connection> {
    endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| Error::Transport(format!("connecting to {addr}: {e}")))?
        .await
        .map_err(|e| {
            if let Some(refused) = certificate_refusal(&e) {
                refused
            } else if is_version_mismatch(&e) {
                Error::VersionMismatch {
                    addr: addr.to_string(),
                    ours: PROTOCOL_VERSION,
                }
            } else {
                Error::Transport(format!("handshake with {addr}: {e}"))
            }
        })
}

/// TLS alert `no_application_protocol` (RFC 8446), as QUIC carries it (RFC 9001, 4.8).
const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;
/// TLS alert `certificate_required`: the client presented no certificate.
const CERTIFICATE_REQUIRED: u64 = 0x100 + 116;
/// TLS alerts `bad_certificate` ..= `unknown_ca`: the certificate did not verify.
const BAD_CERTIFICATE: std::ops::RangeInclusive<u64> = (0x100 + 42)..=(0x100 + 48);

/// The error to report when a node refused this side's certificate (`e` carries the node's TLS
/// alert), or `None` for any other failure. With TLS 1.3 the refusal may arrive after the
/// client considers the handshake done, so callers also check a connection's close reason
/// when a stream fails.
pub fn certificate_refusal(e: &quinn::ConnectionError) -> Option<Error> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return None,
    };
    if code == CERTIFICATE_REQUIRED {
        Some(Error::CertificateRefused(
            "this cluster requires a client certificate: see `dynakv ca issue-client` \
             (then pass --cert/--key or set DYNAKV_CERT and DYNAKV_KEY)"
                .into(),
        ))
    } else if BAD_CERTIFICATE.contains(&code) {
        Some(Error::CertificateRefused(
            "the node refused this client's certificate (not issued by this cluster's CA?)".into(),
        ))
    } else {
        None
    }
}

/// Did a handshake fail because the two sides speak different dynakv protocol versions (no
/// common ALPN)? True on both ends: the side that refused and the side that was refused.
pub fn is_version_mismatch(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code) == NO_APPLICATION_PROTOCOL,
        quinn::ConnectionError::ConnectionClosed(c) => {
            u64::from(c.error_code) == NO_APPLICATION_PROTOCOL
        }
        _ => false,
    }
}

/// The node on the other end of `conn`: `Some(id)` if it presented a certificate naming node
/// `id`, `None` for a plain client (no certificate). The certificate has already been verified
/// against the cluster CA during the handshake (a bad one fails the handshake), so this is an
/// authenticated identity. Call after the handshake completes.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    // The end-entity certificate comes first.
    node_id_from_cert(chain.first()?)
}

/// Did `conn` negotiate the node-to-node protocol ([`crate::tls::PEER_ALPN`])? Call after the
/// handshake.
pub fn is_peer_link(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == crate::tls::PEER_ALPN)
}

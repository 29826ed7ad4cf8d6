//! TLS material and rustls/quinn configurations for the cluster.
//!
//! One cluster CA (self-signed, ECDSA P-256) issues a certificate to every node. A node
//! certificate names `dynakv-node` (the one server name every client and peer verifies, so peers
//! can be dialled by address alone) and `node-{id}.dynakv` (the node's identity, read back with
//! [`node_id_from_cert`]). Servers require a client certificate from the CA on every connection:
//! a node certificate makes the connection a peer, a client certificate (see
//! [`crate::identity`]) a client with the role it names; a connection without one is refused at
//! the handshake.
//!
//! Every config is built on an explicit `ring` provider rather than a process-wide default, so the
//! node works no matter which other crates install (or fail to install) a default provider.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dynakv_ring::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::error::{Error, Result};
use crate::files::{check_private, parse_cert_pem, read_file, write_file};
use crate::identity::ClientCert;
use crate::x509;

/// The TLS server name every node certificate carries and every client and peer verifies.
pub const SERVER_NAME: &str = "dynakv-node";
/// The version of the dynakv wire protocol (frames, client and peer messages). Bump it with
/// every incompatible change of `dynakv_proto`'s wire types: nodes and clients of different
/// versions then refuse each other at the handshake with a clear message, instead of failing
/// to decode each other's frames.
pub const PROTOCOL_VERSION: u32 = 12;
/// The ALPN protocol that carries [`PROTOCOL_VERSION`] in the TLS handshake.
pub const ALPN: &[u8] = b"dynakv/12";
/// The ALPN protocol of node-to-node links (same version). A connection is a peer link only if
/// it negotiated this protocol *and* presents a node certificate, so a client that holds a
/// node's certificate can never take over that node's link.
pub const PEER_ALPN: &[u8] = b"dynakv-peer/12";

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node-key.pem";
/// Subject CN of the cluster CA. Fixed, because a loaded CA is rebuilt from these parameters
/// (see [`ClusterCa::load`]); a CA from another cluster has the same name but a different key, so
/// its signatures still fail to verify.
const CA_COMMON_NAME: &str = "dynakv cluster CA";

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// The cluster certificate authority: trusted by every node and client, it issues node
/// certificates. Create it once per cluster with [`ClusterCa::generate`], keep `ca-key.pem` safe,
/// and hand `ca.pem` ([`ClusterCa::cert_pem`]) to nodes and clients.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
    /// rcgen needs an issuer `Certificate` to sign with; for a loaded CA this is rebuilt from the
    /// same parameters and key, so it has the same subject and key identifier as `cert_pem`.
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Only node certificates below the CA: no intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Long validity: the cluster has no rotation machinery yet.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl ClusterCa {
    /// Generates a fresh CA (new P-256 key, self-signed certificate). Call once when a cluster
    /// is created.
    pub fn generate() -> Result<ClusterCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        let issuer = ca_params()?.self_signed(&key).map_err(tls_err)?;
        Ok(ClusterCa {
            cert_pem: issuer.pem(),
            key,
            issuer,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600 on unix) into `dir`, creating it if needed.
    /// Each file is replaced atomically (temporary file + rename), but not the pair together.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key.serialize_pem(), true)
    }

    /// Loads a CA saved by [`ClusterCa::save`]. Fails with an error naming the file that is
    /// missing or corrupt, or if the key does not belong to the certificate.
    pub fn load(dir: &Path) -> Result<ClusterCa> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file(&cert_path, "CA certificate")?;
        let key_pem = read_file(&key_path, "CA private key")?;
        let cert_der = parse_cert_pem(&cert_pem, &cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            tls_err(format!(
                "corrupt CA private key {}: {e}",
                key_path.display()
            ))
        })?;
        if x509::subject_public_key_info(&cert_der).as_deref()
            != Some(key.public_key_der().as_slice())
        {
            return Err(tls_err(format!(
                "CA private key {} does not match certificate {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let issuer = ca_params()?.self_signed(&key).map_err(tls_err)?;
        // Issued certificates take their issuer name from `issuer`; it must equal the saved
        // certificate's subject or they would not chain to it.
        let subject = x509::subject(&cert_der);
        if subject.is_none() || subject != x509::subject(issuer.der()) {
            return Err(tls_err(format!(
                "{} is not a dynakv cluster CA certificate",
                cert_path.display()
            )));
        }
        Ok(ClusterCa {
            cert_pem,
            key,
            issuer,
        })
    }

    /// The CA certificate in PEM: what nodes and clients trust (`ca_pem` of the config builders).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a certificate (with a fresh P-256 key) for node `id`, valid for server and client
    /// authentication. Call when a node joins; issuing again for the same id is harmless.
    pub fn issue_node(&self, id: NodeId) -> Result<NodeCert> {
        let identity = identity_name(id);
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string(), identity.clone()])
            .map_err(tls_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        Ok(NodeCert {
            cert_pem: self.sign(&params, &key)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate for `key` with `params` (PEM).
    pub(crate) fn sign(&self, params: &CertificateParams, key: &KeyPair) -> Result<String> {
        let cert = params
            .clone()
            .signed_by(key, &self.issuer, &self.key)
            .map_err(tls_err)?;
        Ok(cert.pem())
    }
}

/// A node's certificate and private key, both PEM. Issued by [`ClusterCa::issue_node`], stored
/// as `node.pem` and `node-key.pem` in the node's data directory.
#[derive(Clone)]
pub struct NodeCert {
    /// The node certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The node's PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Writes `node.pem` and `node-key.pem` (mode 0600 on unix) into `dir`, creating it if needed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join(NODE_CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(NODE_KEY_FILE), &self.key_pem, true)
    }

    /// Loads `node.pem` and `node-key.pem` from `dir`, checking that both parse and that the
    /// key belongs to the certificate; errors name the offending file. On unix a key file that
    /// other users may read is refused unless `allow_open_key` (then it is only logged).
    pub fn load(dir: &Path, allow_open_key: bool) -> Result<NodeCert> {
        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        check_private(&key_path, "node private key", allow_open_key)?;
        let cert = NodeCert {
            cert_pem: read_file(&cert_path, "node certificate")?,
            key_pem: read_file(&key_path, "node private key")?,
        };
        let cert_der = parse_cert_pem(&cert.cert_pem, &cert_path)?;
        let key = KeyPair::from_pem(&cert.key_pem).map_err(|e| {
            tls_err(format!(
                "corrupt node private key {}: {e}",
                key_path.display()
            ))
        })?;
        if x509::subject_public_key_info(&cert_der).as_deref()
            != Some(key.public_key_der().as_slice())
        {
            return Err(tls_err(format!(
                "node private key {} does not match certificate {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        Ok(cert)
    }

    /// The node id this certificate names, or `None` if the certificate is unreadable.
    pub fn node_id(&self) -> Option<NodeId> {
        let der = x509::pem_certs(&self.cert_pem).ok()?.into_iter().next()?;
        node_id_from_cert(&der)
    }
}

fn identity_name(id: NodeId) -> String {
    format!("node-{}.dynakv", id.0)
}

/// Reads the node identity (`node-{id}.dynakv` SAN DNS name) from a DER certificate. Returns
/// `None` for a certificate without one (a plain client) or for malformed input; never panics.
/// Only meaningful for a certificate whose chain has been verified against the cluster CA.
pub fn node_id_from_cert(der: &[u8]) -> Option<NodeId> {
    x509::dns_names(der)
        .iter()
        .find_map(|name| parse_identity_name(name.as_bytes()))
}

fn parse_identity_name(name: &[u8]) -> Option<NodeId> {
    let digits = name.strip_prefix(b"node-")?.strip_suffix(b".dynakv")?;
    // Canonical decimal only (no sign, no leading zeros), so one id has exactly one name.
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(NodeId)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    // Every certificate in the bundle is trusted, which leaves room for CA rotation later.
    let certs =
        x509::pem_certs(ca_pem).map_err(|e| tls_err(format!("corrupt CA certificate PEM: {e}")))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("invalid CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(tls_err("no certificate in the CA PEM"));
    }
    Ok(Arc::new(roots))
}

fn cert_chain(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain =
        x509::pem_certs(cert_pem).map_err(|e| tls_err(format!("corrupt certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(tls_err("no certificate in the certificate PEM"));
    }
    let key = x509::pem_key(key_pem)
        .map_err(|e| tls_err(format!("no usable private key in the key PEM: {e}")))?;
    Ok((chain, key))
}

/// The QUIC transport settings shared by servers and clients: keep-alive every 2 s, idle
/// timeout 10 s (so a dead peer is noticed quickly), 1024 concurrent bidirectional streams (one
/// per request).
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        10_000,
    ))));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    transport
}

/// The server config of a node: presents `node`'s certificate and requires every connection to
/// present a certificate that chains to the CA in `ca_pem` (a peer node's or a client's); a
/// connection without one, or with another CA's, is refused at the handshake.
pub fn server_config(ca_pem: &str, node: &NodeCert) -> Result<quinn::ServerConfig> {
    let mut tls = node_server_tls(ca_pem, node, true)?;
    tls.alpn_protocols = vec![ALPN.to_vec(), PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The TLS config of a node's HTTPS API (HTTP/1.1 over TCP): presents `node`'s certificate
/// (server name [`SERVER_NAME`]) and asks every client for a certificate from the CA in
/// `ca_pem`. Unlike [`server_config`], a connection *without* a certificate is let in, so the
/// API can answer it `401` with a message instead of a bare handshake failure; one with a
/// certificate from another CA is still refused at the handshake. The caller reads the
/// verified identity from the connection and checks it on every request.
pub fn https_server_config(ca_pem: &str, node: &NodeCert) -> Result<Arc<rustls::ServerConfig>> {
    let mut tls = node_server_tls(ca_pem, node, false)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// TLS 1.3 with `node`'s certificate, verifying client certificates against the CA in
/// `ca_pem`; `require`: refuse a client without one at the handshake.
fn node_server_tls(ca_pem: &str, node: &NodeCert, require: bool) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        root_store(ca_pem)?,
        provider.clone(),
    );
    let verifier = if require {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| tls_err(format!("client verifier: {e}")))?;
    let (chain, key) = cert_chain(&node.cert_pem, &node.key_pem)?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(format!("node certificate/key: {e}")))
}

/// The client config a node uses to dial peers: mutual TLS with `node`'s certificate, the
/// server verified against the CA in `ca_pem`. Connect with server name [`SERVER_NAME`].
pub fn node_client_config(ca_pem: &str, node: &NodeCert) -> Result<quinn::ClientConfig> {
    let (chain, key) = cert_chain(&node.cert_pem, &node.key_pem)?;
    let tls = client_builder(ca_pem)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_err(format!("node certificate/key: {e}")))?;
    finish_client(tls, PEER_ALPN)
}

/// The config of a client: verifies the server against the CA in `ca_pem` and presents `cert`
/// (from `dynakv ca issue-client`). Without a certificate every node refuses the connection;
/// that case exists so the client can say so clearly. Connect with server name [`SERVER_NAME`].
pub fn client_config(ca_pem: &str, cert: Option<&ClientCert>) -> Result<quinn::ClientConfig> {
    client_config_with_alpn(ca_pem, cert, ALPN)
}

/// Like [`client_config`], offering `alpn` instead of [`ALPN`]: for tests that play a client
/// of another protocol version.
pub fn client_config_with_alpn(
    ca_pem: &str,
    cert: Option<&ClientCert>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    finish_client(client_tls(ca_pem, cert)?, alpn)
}

/// The TLS config of an HTTPS client of a node's API ([`https_server_config`]), e.g. the
/// real-process tests: the node verified against the CA in `ca_pem` (server name
/// [`SERVER_NAME`]), `cert` presented if given.
pub fn https_client_config(
    ca_pem: &str,
    cert: Option<&ClientCert>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut tls = client_tls(ca_pem, cert)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn client_tls(ca_pem: &str, cert: Option<&ClientCert>) -> Result<rustls::ClientConfig> {
    let builder = client_builder(ca_pem)?;
    Ok(match cert {
        Some(c) => {
            let (chain, key) = cert_chain(&c.cert_pem, &c.key_pem)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(format!("client certificate/key: {e}")))?
        }
        None => builder.with_no_client_auth(),
    })
}

fn client_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(root_store(ca_pem)?))
}

fn finish_client(mut tls: rustls::ClientConfig, alpn: &[u8]) -> Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_cert_names_its_node() -> Result<()> {
        let ca = ClusterCa::generate()?;
        let node = ca.issue_node(NodeId(42))?;
        assert_eq!(node.node_id(), Some(NodeId(42)));
        let der = parse_cert_pem(&node.cert_pem, Path::new("node.pem"))?;
        let names = x509::dns_names(&der);
        assert!(names.iter().any(|n| n == SERVER_NAME));
        // The CA itself is not a node.
        let ca_der = parse_cert_pem(&ca.cert_pem(), Path::new("ca.pem"))?;
        assert_eq!(node_id_from_cert(&ca_der), None);
        Ok(())
    }

    #[test]
    fn identity_names_are_canonical() {
        assert_eq!(parse_identity_name(b"node-0.dynakv"), Some(NodeId(0)));
        assert_eq!(
            parse_identity_name(b"node-4294967295.dynakv"),
            Some(NodeId(u32::MAX))
        );
        for bad in [
            &b"node-.dynakv"[..],
            b"node-01.dynakv",
            b"node-+1.dynakv",
            b"node-4294967296.dynakv",
            b"node-1.dynakv.evil",
            b"dynakv-node",
        ] {
            assert_eq!(parse_identity_name(bad), None);
        }
    }

    #[test]
    fn configs_build_and_reject_garbage() -> Result<()> {
        let ca = ClusterCa::generate()?;
        let node = ca.issue_node(NodeId(1))?;
        server_config(&ca.cert_pem(), &node)?;
        https_server_config(&ca.cert_pem(), &node)?;
        node_client_config(&ca.cert_pem(), &node)?;
        client_config(&ca.cert_pem(), None)?;
        assert!(client_config("not a pem", None).is_err());
        let broken = NodeCert {
            cert_pem: node.cert_pem.clone(),
            key_pem: String::new(),
        };
        assert!(server_config(&ca.cert_pem(), &broken).is_err());
        assert!(https_server_config(&ca.cert_pem(), &broken).is_err());
        assert!(https_server_config("not a pem", &node).is_err());
        Ok(())
    }
}

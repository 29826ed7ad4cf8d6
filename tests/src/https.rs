//! A small HTTPS client for the API tests: hyper's HTTP/1.1 client over tokio-rustls, with the
//! cluster CA and, if given, a client certificate. Each call is bounded by [`HTTPS_TIMEOUT`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Bound on one request: connect, handshake, request and the whole reply.
pub const HTTPS_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply: status, headers and body.
#[derive(Debug)]
pub struct HttpsReply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpsReply {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "reply {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// One request to the HTTPS API at `addr` (loopback), verified against `ca` (PEM file), with
/// the client certificate and key `cert` if given.
pub fn https_request(
    addr: SocketAddr,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpsReply> {
    let ca_pem = std::fs::read_to_string(ca)?;
    let client_cert = match cert {
        Some((c, k)) => Some(dynakv_transport::ClientCert::load(c, k)?),
        None => None,
    };
    let tls = dynakv_transport::https_client_config(&ca_pem, client_cert.as_ref())?;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, dynakv_transport::SERVER_NAME);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::copy_from_slice(body)))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::time::timeout(HTTPS_TIMEOUT, async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from(dynakv_transport::SERVER_NAME)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let reply = sender.send_request(request).await?;
            let status = reply.status().as_u16();
            let headers = reply.headers().clone();
            let body = reply.into_body().collect().await?.to_bytes().to_vec();
            Ok(HttpsReply {
                status,
                headers,
                body,
            })
        })
        .await
        .context("no HTTPS reply in time")?
    })
}

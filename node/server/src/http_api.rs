//! The HTTPS/JSON API: `GET`, `PUT` and `DELETE /v1/kv/{key}` over HTTP/1.1 and TLS 1.3, for
//! teams that do not use Rust (docs/HTTP.md).
//!
//! Each connection's client certificate is verified against the cluster CA during the
//! handshake ([`dynakv_transport::https_server_config`]); a connection without one is let in so
//! that each of its requests gets a `401` saying what is missing. Every request then goes the
//! way a QUIC request goes: the role check of its certificate ([`accept::permission`]), the
//! same admission limits, the core ([`accept::answer`]), and the same metrics. The routing,
//! the query and header parsing and the reply mapping are plain functions of this module, so
//! they are tested without a socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use dynakv_core::{ClientReply, ClientRequest, RequestError, RequestOptions};
use dynakv_proto::codec::token::context_from_token_for;
use dynakv_proto::dvv::NodeClock;
use dynakv_proto::json::{GetJson, WriteJson};
use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_transport::{identity_from_cert, Identity};

use crate::accept::{self, AcceptCtx};

/// The header that carries a causal context token, in both directions.
pub const CONTEXT_HEADER: &str = "x-dynakv-context";
/// The path prefix of a key.
pub const KV_PREFIX: &str = "/v1/kv/";
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its request line and headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the API listener (before the node serves, so a taken port is a start error).
pub(crate) async fn bind(addr: SocketAddr) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Config(format!("cannot listen for the HTTP API on {addr}: {e}")))
}

/// Serves the API on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: AcceptCtx,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                tracing::warn!(error = %e, "cannot accept an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The same per-address bound as QUIC client connections.
        let Some(slot) = ctx.admission.admit_conn(remote.ip()) else {
            tracing::warn!(%remote, "too many client connections from this address; HTTPS connection closed");
            continue;
        };
        let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "HTTPS handshake failed (a certificate not from this cluster's CA?)");
                    return;
                }
                Err(_) => return,
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| identity_from_cert(cert));
            let conn = Arc::new(Conn {
                ctx,
                who,
                remote,
                in_flight: AtomicUsize::new(0),
            });
            let svc = hyper::service::service_fn(move |req| {
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(conn.handle(req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "HTTPS connection ended");
            }
            drop(slot);
        });
    }
}

/// One HTTPS connection: who it is and its requests in flight.
struct Conn {
    ctx: AcceptCtx,
    /// The identity its verified certificate names (`None`: no certificate).
    who: Option<Identity>,
    remote: SocketAddr,
    in_flight: AtomicUsize,
}

impl Conn {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let (parts, body) = req.into_parts();
        let parsed = match parse(&parts.method, &parts.uri, &parts.headers) {
            Ok(p) => p,
            Err(refusal) => return refusal.response(),
        };
        let Some(who) = &self.who else {
            return Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a client certificate from the cluster CA is required (curl: --cert and --key)",
            )
            .response();
        };
        let mut frame = ClientFrame::Core(parsed);
        let op = accept::op_name(&frame);
        // The role is checked before a body is read: a put refused for its role costs no
        // buffer.
        if let Err(why) = accept::permission(who, &frame, self.ctx.allow_node_clients) {
            tracing::warn!(remote = %self.remote, %who, "HTTPS request refused: {why}");
            self.ctx
                .metrics
                .request(op, "refused", started.elapsed().as_secs_f64());
            return Refusal::new(StatusCode::FORBIDDEN, "forbidden", &why.to_string()).response();
        }
        let _slots = match self.ctx.admission.admit(&self.in_flight) {
            Ok(slots) => slots,
            Err(in_flight) => {
                let e = RequestError::Overloaded {
                    pending: in_flight as u64,
                };
                return error_response(&e);
            }
        };
        if let ClientFrame::Core(ClientRequest::Put { value, .. }) = &mut frame {
            *value = match read_body(body, self.ctx.client_max_frame).await {
                Ok(v) => v,
                Err(refusal) => return refusal.response(),
            };
        }
        let key = match &frame {
            ClientFrame::Core(
                ClientRequest::Get { key, .. }
                | ClientRequest::Put { key, .. }
                | ClientRequest::Delete { key, .. },
            ) => key.clone(),
            _ => Bytes::new(),
        };
        let reply = accept::answer(frame, &self.ctx).await;
        if let ServerFrame::Core(ClientReply::Got(got)) = &reply {
            self.ctx.metrics.read_siblings(got.values.len());
        }
        self.ctx
            .metrics
            .request(op, accept::outcome(&reply), started.elapsed().as_secs_f64());
        reply_response(&key, reply)
    }
}

/// A request refused before it reached the core: status, a short code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: bool,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Refusal {
        Refusal {
            status,
            code,
            message: message.to_string(),
            allow: false,
        }
    }

    fn bad(message: String) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message,
            allow: false,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        let mut resp = json_response(self.status, &body);
        if self.allow {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
        }
        resp
    }
}

/// Route, query and context header of a request (a put's value is left empty: the body is
/// read later, after the role check).
fn parse(
    method: &Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
) -> Result<ClientRequest, Refusal> {
    let Some(raw) = uri.path().strip_prefix(KV_PREFIX) else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: the API is GET, PUT and DELETE /v1/kv/{key}",
        ));
    };
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(Refusal::bad("the key is empty: use /v1/kv/{key}".into()));
    }
    let key = Bytes::from(key);
    let write = match *method {
        Method::GET => false,
        Method::PUT | Method::DELETE => true,
        _ => {
            return Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: format!("{method} is not supported on a key: use GET, PUT or DELETE"),
                allow: true,
            })
        }
    };
    let opts = query_options(uri.query().unwrap_or(""), write)?;
    // A read takes no context: a header sent with it is ignored, not checked.
    let context = match headers.get(CONTEXT_HEADER).filter(|_| write) {
        None => NodeClock::new(),
        Some(v) => {
            let token = v
                .to_str()
                .map_err(|_| Refusal::bad(format!("{CONTEXT_HEADER}: not a context token")))?;
            context_from_token_for(&key, token.trim())
                .map_err(|e| Refusal::bad(format!("{CONTEXT_HEADER}: {e}")))?
        }
    };
    Ok(match *method {
        Method::GET => ClientRequest::Get { key, opts },
        Method::PUT => ClientRequest::Put {
            key,
            value: Bytes::new(),
            context,
            opts,
        },
        _ => ClientRequest::Delete { key, context, opts },
    })
}

/// The per-request options in a query string: `n`, `timeout` (ms), and `r`/`pr` for a read or
/// `w`/`pw` for a write. Anything else, or a value that is not a number, is refused.
fn query_options(query: &str, write: bool) -> Result<RequestOptions, Refusal> {
    let mut opts = RequestOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let small = |what: &str| -> Result<u8, Refusal> {
            value.parse::<u8>().map_err(|_| {
                Refusal::bad(format!(
                    "query {what}={value:?}: expected a number from 1 to 255"
                ))
            })
        };
        match (name, write) {
            ("n", _) => opts.n = Some(small("n")?),
            ("r", false) => opts.r = Some(small("r")?),
            ("pr", false) => opts.pr = Some(small("pr")?),
            ("w", true) => opts.w = Some(small("w")?),
            ("pw", true) => opts.pw = Some(small("pw")?),
            ("timeout", _) => {
                opts.timeout_ms = Some(value.parse::<u32>().map_err(|_| {
                    Refusal::bad(format!("query timeout={value:?}: expected milliseconds"))
                })?)
            }
            ("r" | "pr", true) | ("w" | "pw", false) => {
                return Err(Refusal::bad(format!(
                    "query {name}: {} applies to {}",
                    name,
                    if write { "reads" } else { "writes" }
                )))
            }
            _ => {
                return Err(Refusal::bad(format!(
                    "unknown query parameter {name:?}: use n, r, pr, w, pw or timeout"
                )))
            }
        }
    }
    Ok(opts)
}

/// Reads a put's body, at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, Refusal> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await;
    match collected {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            &format!("the body is longer than this node accepts ({limit} bytes)"),
        )),
        Ok(Err(e)) => Err(Refusal::bad(format!("cannot read the body: {e}"))),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the body did not arrive in time",
        )),
    }
}

/// The HTTP response to the core's reply: `200`/`300`/`404` for a read (one value, siblings,
/// none), `200` for a write, an error status otherwise.
fn reply_response(key: &[u8], reply: ServerFrame) -> Response<Full<Bytes>> {
    match reply {
        ServerFrame::Core(ClientReply::Got(got)) => {
            let status = match got.values.len() {
                0 => StatusCode::NOT_FOUND,
                1 => StatusCode::OK,
                _ => StatusCode::MULTIPLE_CHOICES,
            };
            let body = GetJson::new(key, &got.values, &got.context);
            with_context(json_response(status, &body), &body.context)
        }
        ServerFrame::Core(ClientReply::Written(w)) => {
            let body = WriteJson::new(key, &w);
            with_context(json_response(StatusCode::OK, &body), &body.context)
        }
        ServerFrame::Core(ClientReply::Error(e)) => error_response(&e),
        ServerFrame::Error(why) => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &why).response()
        }
        other => Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("unexpected reply from the node: {other:?}"),
        )
        .response(),
    }
}

/// The status, code and body of a core error. Quorum failures are `503` and say how many
/// replicas answered.
fn error_response(e: &RequestError) -> Response<Full<Bytes>> {
    use RequestError as E;
    let (status, code) = match e {
        E::InvalidOptions(_) | E::BadKey(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        E::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
        E::TooManySiblings { .. } => (StatusCode::CONFLICT, "too_many_siblings"),
        E::ContextTooLarge { .. } => (StatusCode::CONFLICT, "context_too_large"),
        E::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "quorum_timeout"),
        E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "quorum_unavailable"),
        E::PrimariesUnavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "primaries_unavailable")
        }
        E::ReplicasRefused { .. } => (StatusCode::SERVICE_UNAVAILABLE, "replicas_refused"),
        E::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        E::Storage(_) | E::StorageFailed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "storage_failed")
        }
        E::Removed { .. } | E::NotJoined { .. } | E::NotReplica { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "not_member")
        }
        E::ChangeRefused(_) => (StatusCode::CONFLICT, "change_refused"),
        E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let mut body = serde_json::json!({ "error": e.to_string(), "code": code });
    let counts: Vec<(&str, u8)> = match e {
        E::Timeout {
            answered,
            needed,
            asked,
            ..
        } => vec![
            ("answered", *answered),
            ("needed", *needed),
            ("asked", *asked),
        ],
        E::Unavailable {
            needed, available, ..
        }
        | E::PrimariesUnavailable {
            needed, available, ..
        } => vec![("available", *available), ("needed", *needed)],
        E::ReplicasRefused { refused, asked, .. } => {
            vec![("refused", *refused), ("asked", *asked)]
        }
        _ => Vec::new(),
    };
    if let Some(map) = body.as_object_mut() {
        for (name, n) in counts {
            map.insert(name.into(), n.into());
        }
    }
    let mut resp = json_response(status, &body);
    if matches!(e, E::Overloaded { .. }) {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn with_context(mut resp: Response<Full<Bytes>>, token: &str) -> Response<Full<Bytes>> {
    if let Ok(v) = HeaderValue::from_str(token) {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    resp
}

#[cfg(test)]
#[path = "http_api_tests.rs"]
mod tests;

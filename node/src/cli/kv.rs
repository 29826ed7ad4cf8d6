//! `dynakv put`, `get` and `delete`: one request to one node, one line of output.

use std::time::Duration;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use dynakv_proto::codec::token::{context_from_token, context_to_token};
use dynakv_proto::dvv::VersionVector;
use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_proto::{ClientReply, ClientRequest, RequestOptions};

use super::conn::Session;
use super::{DeleteArgs, GetArgs, PutArgs, QuorumArgs};

/// How long the CLI waits beyond the request's own timeout (the node answers by then).
const GRACE: Duration = Duration::from_secs(3);
/// The wait when no --timeout is given: the node applies the cluster default, well below this.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

fn parse_context(token: Option<&str>) -> anyhow::Result<VersionVector> {
    match token {
        None => Ok(VersionVector::default()),
        Some(t) => context_from_token(t).map_err(|e| anyhow!("--context: {e}")),
    }
}

/// Which quorum a command asks for: (R, PR) for a get, (W, PW) for a write.
enum Quorum {
    Read { r: Option<u8>, pr: Option<u8> },
    Write { w: Option<u8>, pw: Option<u8> },
}

fn options(q: QuorumArgs, quorum: Quorum) -> RequestOptions {
    let (r, pr, w, pw) = match quorum {
        Quorum::Read { r, pr } => (r, pr, None, None),
        Quorum::Write { w, pw } => (None, None, w, pw),
    };
    RequestOptions {
        n: q.n,
        r,
        w,
        pr,
        pw,
        timeout_ms: q.timeout,
    }
}

/// The output line of `put` and `delete`, fields in the documented order (context first).
#[derive(serde::Serialize)]
struct WriteLine {
    context: String,
    acks: u8,
    primary_acks: u8,
    fallback_acks: u8,
}

fn print_written(kind: &str, reply: ClientReply) -> anyhow::Result<()> {
    match reply {
        ClientReply::Written(w) => {
            let line = WriteLine {
                context: context_to_token(&w.context),
                acks: w.acks,
                primary_acks: w.primary_acks,
                fallback_acks: w.fallback_acks,
            };
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        other => bail!("unexpected reply to a {kind}: {other:?}"),
    }
}

fn wait_for(q: QuorumArgs) -> Duration {
    q.timeout
        .map(|ms| Duration::from_millis(u64::from(ms)) + GRACE)
        .unwrap_or(DEFAULT_WAIT)
}

/// Sends a core request and returns the core's successful reply; a request error becomes one
/// line naming the coordinator.
async fn core_call(
    session: &Session,
    request: ClientRequest,
    wait: Duration,
) -> anyhow::Result<ClientReply> {
    match session.call(&ClientFrame::Core(request), wait).await? {
        ServerFrame::Core(ClientReply::Error(e)) => {
            bail!("{e} (coordinator {})", session.addr)
        }
        ServerFrame::Core(reply) => Ok(reply),
        other => bail!("unexpected reply from {}: {other:?}", session.addr),
    }
}

/// `dynakv put`.
pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let session = args.target.connect().await?;
    let request = ClientRequest::Put {
        key: Bytes::from(args.key.into_bytes()),
        value: Bytes::from(args.value.into_bytes()),
        context,
        opts: options(
            args.quorum,
            Quorum::Write {
                w: args.w,
                pw: args.pw,
            },
        ),
    };
    let reply = core_call(&session, request, wait_for(args.quorum)).await;
    session.close().await;
    print_written("put", reply?)
}

/// `dynakv delete`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let session = args.target.connect().await?;
    let request = ClientRequest::Delete {
        key: Bytes::from(args.key.into_bytes()),
        context,
        opts: options(
            args.quorum,
            Quorum::Write {
                w: args.w,
                pw: args.pw,
            },
        ),
    };
    let reply = core_call(&session, request, wait_for(args.quorum)).await;
    session.close().await;
    print_written("delete", reply?)
}

/// The output line of `get`, fields in the documented order.
#[derive(serde::Serialize)]
struct GetLine<'a> {
    key: &'a str,
    siblings: Vec<String>,
    /// Present (as "base64") only when some value is not UTF-8; then every sibling is base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    context: String,
}

/// `dynakv get`.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let session = args.target.connect().await?;
    let request = ClientRequest::Get {
        key: Bytes::from(args.key.clone().into_bytes()),
        opts: options(
            args.quorum,
            Quorum::Read {
                r: args.r,
                pr: args.pr,
            },
        ),
    };
    let reply = core_call(&session, request, wait_for(args.quorum)).await;
    session.close().await;
    match reply? {
        ClientReply::Got(g) => {
            let context = context_to_token(&g.context);
            let texts: Option<Vec<&str>> = g
                .values
                .iter()
                .map(|v| std::str::from_utf8(v).ok())
                .collect();
            let line = match texts {
                Some(texts) => GetLine {
                    key: &args.key,
                    siblings: texts.into_iter().map(str::to_string).collect(),
                    encoding: None,
                    context,
                },
                None => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    GetLine {
                        key: &args.key,
                        siblings: g.values.iter().map(|v| b64.encode(v)).collect(),
                        encoding: Some("base64"),
                        context,
                    }
                }
            };
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        other => bail!("unexpected reply to a get: {other:?}"),
    }
}

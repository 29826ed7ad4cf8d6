//! `dynakv put`, `get`, `delete` and `status`: one request to one node, one line of output.

use std::time::Duration;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use dynakv_node::codec::token::{context_from_token, context_to_token};
use dynakv_node::core::{ClientReply, ClientRequest, RequestOptions};
use dynakv_node::dvv::VersionVector;
use dynakv_node::wire::{ClientFrame, ServerFrame, StatusReport};
use serde_json::json;

use super::conn::Session;
use super::{DeleteArgs, GetArgs, PutArgs, QuorumArgs, StatusArgs};

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

fn options(q: QuorumArgs, r: Option<u8>, w: Option<u8>) -> RequestOptions {
    RequestOptions {
        n: q.n,
        r,
        w,
        timeout_ms: q.timeout,
        ..RequestOptions::default()
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
        opts: options(args.quorum, None, args.w),
    };
    let reply = core_call(&session, request, wait_for(args.quorum)).await;
    session.close().await;
    match reply? {
        ClientReply::Written(w) => {
            println!("{}", json!({ "context": context_to_token(&w.context) }));
            Ok(())
        }
        other => bail!("unexpected reply to a put: {other:?}"),
    }
}

/// `dynakv delete`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let session = args.target.connect().await?;
    let request = ClientRequest::Delete {
        key: Bytes::from(args.key.into_bytes()),
        context,
        opts: options(args.quorum, None, args.w),
    };
    let reply = core_call(&session, request, wait_for(args.quorum)).await;
    session.close().await;
    match reply? {
        ClientReply::Written(w) => {
            println!("{}", json!({ "context": context_to_token(&w.context) }));
            Ok(())
        }
        other => bail!("unexpected reply to a delete: {other:?}"),
    }
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
        opts: options(args.quorum, args.r, None),
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

/// `dynakv status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let session = args.target.connect().await?;
    let reply = session
        .call(&ClientFrame::Status, Duration::from_secs(10))
        .await;
    session.close().await;
    let report = match reply? {
        ServerFrame::Status(report) => report,
        other => bail!("unexpected reply to status: {other:?}"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_status(&report);
    }
    Ok(())
}

fn print_status(s: &StatusReport) {
    println!(
        "node {} sees {} members; partitions Q={}, defaults N={} R={} W={}",
        s.node,
        s.members.len(),
        s.partition_count,
        s.n,
        s.r,
        s.w
    );
    println!(
        "  {:>4}  {:<22} {:<5} {:>10}",
        "id", "address", "state", "partitions"
    );
    for m in &s.members {
        let state = if m.up { "up" } else { "down" };
        let me = if m.id == s.node { "  (this node)" } else { "" };
        println!(
            "  {:>4}  {:<22} {:<5} {:>10}{me}",
            m.id.0,
            m.addr.to_string(),
            state,
            m.partitions
        );
    }
    let st = &s.stats;
    println!(
        "requests ok {}, failed {}; replica writes {}; read repairs {}; sibling warnings {}; sync failures {}; pending ops {}",
        st.requests_ok,
        st.requests_failed,
        st.replica_writes,
        st.read_repairs,
        st.sibling_warnings,
        st.sync_failures,
        s.pending_ops
    );
}

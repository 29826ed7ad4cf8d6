//! `dynakv join`, `leave` and `remove`: membership changes, one request to one node, one JSON
//! line of output (`{"node":"ADDR","result":"..."}`) or one error line.

use std::time::Duration;

use anyhow::bail;
use dynakv_proto::wire::{ClientFrame, ServerFrame};
use dynakv_proto::{AdminRequest, ClientReply, ClientRequest};
use dynakv_ring::NodeId;

use super::conn::Target;

/// How long an admin command waits for the node (a join first dials the seed).
const ADMIN_WAIT: Duration = Duration::from_secs(20);

/// The output line.
#[derive(serde::Serialize)]
struct AdminLine {
    node: String,
    result: String,
}

/// `dynakv join SEED`: the node at --node joins the cluster SEED belongs to.
pub async fn join(seed: std::net::SocketAddr, target: Target) -> anyhow::Result<()> {
    send(&target, ClientFrame::Join { seed }).await
}

/// `dynakv leave`: the node at --node hands its partitions off and leaves the cluster.
pub async fn leave(target: Target) -> anyhow::Result<()> {
    send(
        &target,
        ClientFrame::Core(ClientRequest::Admin(AdminRequest::Leave)),
    )
    .await
}

/// `dynakv remove NODE`: the node at --node removes (dead) node NODE from the cluster.
pub async fn remove(node: u32, target: Target) -> anyhow::Result<()> {
    send(
        &target,
        ClientFrame::Core(ClientRequest::Admin(AdminRequest::Remove(NodeId(node)))),
    )
    .await
}

async fn send(target: &Target, frame: ClientFrame) -> anyhow::Result<()> {
    let session = target.connect().await?;
    let reply = session.call(&frame, ADMIN_WAIT).await;
    let addr = session.addr;
    session.close().await;
    match reply? {
        ServerFrame::Core(ClientReply::Admin(result)) => {
            let line = AdminLine {
                node: addr.to_string(),
                result,
            };
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        ServerFrame::Core(ClientReply::Error(e)) => bail!("node {addr} refused: {e}"),
        other => bail!("unexpected reply from {addr}: {other:?}"),
    }
}

//! `dynakv join`, `leave` and `remove`: membership changes, one request through the client to
//! one node, one JSON line of output (`{"node":"ADDR","result":"..."}`) or one error line.

use std::net::SocketAddr;

use dynakv_client::{AdminRequest, Answered, ClientError, NodeId};

use super::conn::Target;

/// The output line.
#[derive(serde::Serialize)]
struct AdminLine {
    node: String,
    result: String,
}

/// `dynakv join SEED`: the node at --node joins the cluster SEED belongs to.
pub async fn join(seed: SocketAddr, target: Target) -> anyhow::Result<()> {
    let client = target.client()?;
    let reply = client.join(seed).await;
    client.close().await;
    print(reply)
}

/// `dynakv leave`: the node at --node hands its partitions off and leaves the cluster.
pub async fn leave(target: Target) -> anyhow::Result<()> {
    admin(&target, AdminRequest::Leave).await
}

/// `dynakv remove NODE [--force]`: the node at --node removes (dead) node NODE from the
/// cluster; a node it can still reach is refused unless `force`.
pub async fn remove(node: u32, force: bool, target: Target) -> anyhow::Result<()> {
    let request = AdminRequest::Remove {
        node: NodeId(node),
        force,
    };
    admin(&target, request).await
}

async fn admin(target: &Target, request: AdminRequest) -> anyhow::Result<()> {
    let client = target.client()?;
    let reply = client.admin(request).await;
    client.close().await;
    print(reply)
}

fn print(reply: Result<Answered<String>, ClientError>) -> anyhow::Result<()> {
    let answered = reply?;
    let line = AdminLine {
        node: answered.node.to_string(),
        result: answered.reply,
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

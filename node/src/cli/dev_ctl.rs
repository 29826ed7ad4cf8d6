//! `dynakv dev stop|start|kill N`: control one node of a running dev cluster, so outages can be
//! tried on real processes.
//!
//! Every node the dev cluster starts has its pid in `DIR/node-I/pid`. `kill` sends SIGKILL (a
//! crash: nothing flushed, no goodbye), `stop` sends SIGTERM and waits for the node's clean
//! shutdown, `start` starts the node again in the background (its pid file updated). The
//! foreground `dynakv dev` reports a node that exits and keeps the others running; on Ctrl-C it
//! stops every node of the directory, the ones `start` brought back included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use dynakv_ring::NodeId;
use dynakv_server::config::ClusterFile;

use super::dev::{node_command, STOP_GRACE};
use super::dev_add::{added_nodes, node_dir, running_pid, spawn_joining, write_pid};

/// What to do with one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM, then wait for the node to stop (it flushes and says goodbye).
    Stop,
    /// Start a stopped node again, in the background.
    Start,
    /// SIGKILL: the node crashes.
    Kill,
}

/// Carries out `control` on node `id` of the dev cluster in `dir`.
pub async fn run(control: Control, dir: &Path, id: u32) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "no dev cluster in {} (run `dynakv dev` first)",
            dir.display()
        )
    })?;
    let cluster_path = dir.join("cluster.toml");
    let cluster = ClusterFile::load(&cluster_path)
        .with_context(|| format!("no dev cluster in {}", dir.display()))?;
    let members = cluster.members();
    let id = NodeId(id);
    let member = members.iter().find(|(m, _)| *m == id).map(|(_, a)| *a);
    let added = added_nodes(&dir, &members)?
        .into_iter()
        .find(|(a, _)| *a == id)
        .map(|(_, added)| added);
    if member.is_none() && added.is_none() {
        let mut ids: Vec<u32> = members.iter().map(|(m, _)| m.0).collect();
        ids.extend(added_nodes(&dir, &members)?.iter().map(|(a, _)| a.0));
        bail!(
            "the dev cluster in {} has no node {id} (nodes: {ids:?})",
            dir.display()
        );
    }
    let ndir = node_dir(&dir, id);
    match control {
        Control::Kill => {
            let pid = running_pid(&ndir).with_context(|| format!("node {id} is not running"))?;
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                .with_context(|| format!("cannot kill node {id}"))?;
            println!(
                "node {id}: killed (pid {}); `dynakv dev start {id} --dir {}` brings it back",
                pid.as_raw_nonzero(),
                dir.display()
            );
        }
        Control::Stop => {
            let pid = running_pid(&ndir).with_context(|| format!("node {id} is not running"))?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .with_context(|| format!("cannot stop node {id}"))?;
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while running_pid(&ndir).is_some() {
                if tokio::time::Instant::now() > deadline {
                    bail!("node {id} did not stop within {STOP_GRACE:?}; `dynakv dev kill {id}` ends it");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("node {id}: stopped");
        }
        Control::Start => {
            if running_pid(&ndir).is_some() {
                bail!("node {id} is already running");
            }
            if ndir.join("removed").exists() {
                bail!("node {id} left the cluster; it cannot be started again");
            }
            let exe = std::env::current_exe().context("cannot locate the dynakv executable")?;
            let pid = if let Some(addr) = member {
                start_member(&exe, &dir, &cluster_path, id, addr)?
            } else if let Some(added) = added {
                spawn_joining(&exe, &ndir, id, &added, true)?.id()
            } else {
                bail!("the dev cluster has no node {id}");
            };
            write_pid(&ndir, pid);
            println!(
                "node {id}: started (pid {pid}; log {})",
                ndir.join("node.log").display()
            );
        }
    }
    Ok(())
}

/// A node of the cluster file, started in its own process group so it outlives this command.
fn start_member(
    exe: &Path,
    dir: &Path,
    cluster: &Path,
    id: NodeId,
    addr: SocketAddr,
) -> anyhow::Result<u32> {
    let mut cmd = node_command(exe, dir, cluster, id, addr)?;
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start node {id}"))?;
    Ok(child.id())
}

/// The node directories of every node of the dev cluster in `dir`, for the foreground `dev` to
/// stop at the end.
pub(super) fn all_node_dirs(
    dir: &Path,
    members: &[(NodeId, SocketAddr)],
) -> Vec<(NodeId, PathBuf)> {
    let mut out: Vec<(NodeId, PathBuf)> = members
        .iter()
        .map(|(id, _)| (*id, node_dir(dir, *id)))
        .collect();
    if let Ok(added) = added_nodes(dir, members) {
        out.extend(added.into_iter().map(|(id, _)| (id, node_dir(dir, id))));
    }
    out
}

//! `dynakv dev add` and the bookkeeping of added nodes (their `added`, `pid` and `removed`
//! files) that the foreground `dynakv dev` uses to restart and stop them.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dynakv_client::Client;
use dynakv_ring::NodeId;
use dynakv_server::config::ClusterFile;
use dynakv_transport::ClusterCa;
use serde::{Deserialize, Serialize};

use super::ca;

/// How long `dev add` waits for the new node to answer.
const ADD_WAIT: Duration = Duration::from_secs(20);
/// How long a detached node gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// DIR/node-I/added: how an added node is started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Added {
    /// Where it listens.
    pub(super) listen: SocketAddr,
    /// The member it joins through.
    pub(super) seed: SocketAddr,
}

/// The directory of node `id` in the dev cluster `dir`.
pub(super) fn node_dir(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{}", id.0))
}

/// The node's log file, twice (stdout and stderr).
pub(super) fn log_files(ndir: &Path) -> anyhow::Result<(File, File)> {
    let log_path = ndir.join("node.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log2 = log.try_clone().context("cannot share the log file")?;
    Ok((log, log2))
}

/// `dynakv dev add`.
pub(super) async fn add(dir: &Path, base_port: u16) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "no dev cluster in {} (start one with `dynakv dev`)",
            dir.display()
        )
    })?;
    let cluster = ClusterFile::load(&dir.join("cluster.toml"))?;
    let members = cluster.members();
    let Some(&(_, seed)) = members.first() else {
        bail!("the dev cluster in {} has no members", dir.display());
    };
    let creds = super::dev::admin_credentials(&dir)?;
    if !answers(&creds, seed).await {
        bail!(
            "the dev cluster in {} is not running (node 1 at {seed} does not answer); start it with `dynakv dev --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let mut id = members.iter().map(|(id, _)| id.0).max().unwrap_or(0);
    for (added, _) in added_nodes(&dir, &members)? {
        id = id.max(added.0);
    }
    let id = NodeId(id + 1);
    let Ok(port) = u16::try_from(u32::from(base_port) + id.0) else {
        bail!("--base-port {base_port} + {id} is past the last port");
    };
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if let Err(e) = UdpSocket::bind(listen) {
        bail!("port {listen} for node {id} is busy ({e})");
    }
    let ca_auth = ClusterCa::load(&dir)?;
    let ndir = node_dir(&dir, id);
    ca::issue(&ca_auth, id, &ndir)?;
    let added = Added { listen, seed };
    let text = toml::to_string(&added).context("cannot encode the added file")?;
    std::fs::write(ndir.join("added"), text)
        .with_context(|| format!("cannot write {}", ndir.join("added").display()))?;
    let exe = std::env::current_exe().context("cannot locate the dynakv executable")?;
    let child = spawn_joining(&exe, &ndir, id, &added, true)?;
    write_pid(&ndir, child.id());
    // Detached: the node outlives this command; the foreground `dev` (or `kill`) stops it.
    drop(child);
    let deadline = tokio::time::Instant::now() + ADD_WAIT;
    loop {
        if answers(&creds, listen).await {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "node {id} at {listen} did not answer within {ADD_WAIT:?}; see {}",
                ndir.join("node.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "node {id}: {listen}  (joined through {seed}; data {}, log {})",
        ndir.display(),
        ndir.join("node.log").display()
    );
    println!("watch the partitions move with `dynakv status --node {listen}`");
    Ok(())
}

/// Does the node at `addr` answer a cluster-info request (it is up and in a cluster)?
async fn answers(creds: &dynakv_client::Credentials, addr: SocketAddr) -> bool {
    let Ok(client) = Client::direct(addr, creds) else {
        return false;
    };
    let answered = client.cluster_info().await.is_ok();
    client.close().await;
    answered
}

/// Starts `dynakv node --join` for an added node; `detached`: a std child in its own process
/// group that outlives this process, else a tokio child of the foreground `dev`.
pub(super) fn spawn_joining(
    exe: &Path,
    ndir: &Path,
    id: NodeId,
    added: &Added,
    detached: bool,
) -> anyhow::Result<Child> {
    let (log, log2) = log_files(ndir)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node")
        .arg("--id")
        .arg(id.0.to_string())
        .arg("--listen")
        .arg(added.listen.to_string())
        .arg("--dir")
        .arg(ndir)
        .arg("--join")
        .arg(added.seed.to_string());
    if let Some(config) = ndir.parent().map(super::dev::node_config) {
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
    }
    for key in dynakv_server::settings::KEYS {
        cmd.env_remove(dynakv_server::settings::env_name(key));
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if detached {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        Ok(Child::Detached(child.id()))
    } else {
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        Ok(Child::Owned(child))
    }
}

/// A started node process.
pub(super) enum Child {
    /// Left running on its own (its pid).
    Detached(u32),
    /// Owned by the foreground `dev`.
    Owned(tokio::process::Child),
}

impl Child {
    /// The process id (0 if unknown).
    pub(super) fn id(&self) -> u32 {
        match self {
            Child::Detached(pid) => *pid,
            Child::Owned(child) => child.id().unwrap_or(0),
        }
    }
}

/// Records the pid of an added node.
pub(super) fn write_pid(ndir: &Path, pid: u32) {
    if let Err(e) = std::fs::write(ndir.join("pid"), format!("{pid}\n")) {
        tracing::warn!(path = %ndir.join("pid").display(), error = %e, "cannot write the pid file");
    }
}

/// The nodes added with `dev add` (directories node-I not in the cluster file, with `added`).
pub(super) fn added_nodes(
    dir: &Path,
    members: &[(NodeId, SocketAddr)],
) -> anyhow::Result<Vec<(NodeId, Added)>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if members.iter().any(|(m, _)| m.0 == id) {
            continue;
        }
        let path = entry.path().join("added");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match toml::from_str::<Added>(&text) {
            Ok(added) => out.push((NodeId(id), added)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable added file")
            }
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// The pid in ndir/pid if that process is still a node of this directory.
pub(super) fn running_pid(ndir: &Path) -> Option<rustix::process::Pid> {
    let text = std::fs::read_to_string(ndir.join("pid")).ok()?;
    let raw: i32 = text.trim().parse().ok()?;
    // The pid may have been reused: check the process is a node of this very directory.
    let cmdline = std::fs::read(format!("/proc/{raw}/cmdline")).ok()?;
    let wanted = ndir.to_str()?;
    let is_ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == wanted.as_bytes());
    if !is_ours {
        return None;
    }
    rustix::process::Pid::from_raw(raw)
}

/// SIGTERM every node of the directory still running detached (added with `dev add`, or
/// brought back with `dev start`), and wait for them (bounded).
pub(super) async fn stop_detached(dir: &Path, members: &[(NodeId, SocketAddr)]) {
    let mut pending = Vec::new();
    for (id, ndir) in super::dev_ctl::all_node_dirs(dir, members) {
        if let Some(pid) = running_pid(&ndir) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            pending.push((id, ndir, pid));
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for (id, ndir, pid) in pending {
        while running_pid(&ndir).is_some() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(node = %id, "did not stop within {STOP_GRACE:?}; killing it");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

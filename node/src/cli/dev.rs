//! `dynakv dev`: a local cluster of N nodes, each its own OS process, in the foreground; and
//! `dynakv dev add`: one more node, started detached, that joins the running cluster.
//!
//! An added node's directory DIR/node-I holds `added` (its listen and seed addresses) and `pid`
//! (its process); the foreground `dev` restarts such nodes with the others, stops them on
//! Ctrl-C, and leaves alone the nodes whose directory holds `removed` (written by a node that
//! left the cluster).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dynakv_client::Client;
use dynakv_ring::NodeId;
use dynakv_server::config::{ClusterFile, MemberEntry};
use dynakv_transport::ClusterCa;
use tokio::process::Child;

use super::dev_add::{
    add, added_nodes, log_files, node_dir, running_pid, spawn_joining, stop_detached, write_pid,
    Child as AddedChild,
};
use super::dev_ctl::{self, Control};
use super::{ca, DevAction, DevArgs};

/// How long a node gets to stop after SIGTERM before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for every node to answer after starting.
const READY_WAIT: Duration = Duration::from_secs(20);

/// One running node process.
struct NodeProc {
    id: u32,
    child: Child,
    /// The node's directory (for its `removed` marker).
    dir: PathBuf,
}

/// Runs the dev cluster until SIGINT/SIGTERM (or until a node dies), or `dev add`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    match args.action {
        Some(DevAction::Add { dir, base_port }) => return add(&dir, base_port).await,
        Some(DevAction::Stop { id, dir }) => return dev_ctl::run(Control::Stop, &dir, id).await,
        Some(DevAction::Start { id, dir }) => return dev_ctl::run(Control::Start, &dir, id).await,
        Some(DevAction::Kill { id, dir }) => return dev_ctl::run(Control::Kill, &dir, id).await,
        None => {}
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    if let Some(config) = &args.config {
        // Checked here, so a typo is one clear line instead of three node logs.
        let file = dynakv_server::config::NodeConfigFile::load(config)?;
        // Every dev node reads the file: who a node is and where it listens is dev's to say.
        let own = [
            ("id", file.id.is_some()),
            ("listen", file.listen.is_some()),
            ("advertise", file.advertise.is_some()),
            ("dir", file.dir.is_some()),
            ("join", file.join.is_some()),
            ("cluster", file.cluster.is_some()),
            ("metrics_addr", file.metrics_addr.is_some()),
            ("http_addr", file.http_addr.is_some()),
        ];
        let set: Vec<&str> = own.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        if !set.is_empty() {
            bail!(
                "{} sets {}: `dev --config` takes limits and timers only (dev gives each node its id, addresses and directory)",
                config.display(),
                set.join(", ")
            );
        }
        std::fs::copy(config, node_config(&dir))
            .with_context(|| format!("cannot copy {} into {}", config.display(), dir.display()))?;
    }
    let cluster_path = dir.join("cluster.toml");
    let cluster = if cluster_path.exists() {
        let cluster = ClusterFile::load(&cluster_path)?;
        if cluster.members.len() != args.nodes as usize {
            tracing::warn!(
                existing = cluster.members.len(),
                asked = args.nodes,
                "the directory already holds a cluster; restarting it as it was"
            );
        }
        cluster
    } else {
        create(&dir, &args)?
    };
    let (cert, key) = admin_client(&dir)?;
    let members = cluster.members();
    for &(id, addr) in &members {
        // Bind and release: a busy port means another cluster (or anything else) is there.
        if let Err(e) = UdpSocket::bind(addr) {
            bail!("port {addr} for node {id} is busy ({e}); stop what uses it or pick another --base-port");
        }
        // The node's metrics listen on the same port number over TCP, its HTTPS API
        // DEV_HTTP_OFFSET above.
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!("TCP port {addr} (metrics of node {id}) is busy ({e}); stop what uses it or pick another --base-port");
        }
        let Some(http) = dev_http_addr(addr) else {
            bail!("no TCP port {DEV_HTTP_OFFSET} above {addr} for node {id}'s HTTP API; pick a lower --base-port");
        };
        if let Err(e) = std::net::TcpListener::bind(http) {
            bail!("TCP port {http} (HTTP API of node {id}) is busy ({e}); stop what uses it or pick another --base-port");
        }
    }
    let exe = std::env::current_exe().context("cannot locate the dynakv executable")?;
    let mut procs = Vec::new();
    for &(id, addr) in &members {
        if node_dir(&dir, id).join("removed").exists() {
            println!("node {id}: left the cluster earlier; not started");
            continue;
        }
        match spawn(&exe, &dir, &cluster_path, id, addr) {
            Ok(child) => {
                write_pid(&node_dir(&dir, id), child.id().unwrap_or(0));
                procs.push(NodeProc {
                    id: id.0,
                    child,
                    dir: node_dir(&dir, id),
                })
            }
            Err(e) => {
                stop_all(&mut procs).await;
                return Err(e);
            }
        }
    }
    // Nodes added by `dev add` earlier: start them again (unless still running detached).
    for (id, added) in added_nodes(&dir, &members)? {
        let ndir = node_dir(&dir, id);
        if ndir.join("removed").exists() || running_pid(&ndir).is_some() {
            continue;
        }
        match spawn_joining(&exe, &ndir, id, &added, false) {
            Ok(AddedChild::Owned(child)) => {
                write_pid(&ndir, child.id().unwrap_or(0));
                println!(
                    "node {id}: {} (added with `dev add`; restarted)",
                    added.listen
                );
                procs.push(NodeProc {
                    id: id.0,
                    child,
                    dir: ndir,
                });
            }
            Ok(AddedChild::Detached(_)) => {}
            Err(e) => {
                tracing::warn!(node = %id, error = %format!("{e:#}"), "cannot restart an added node")
            }
        }
    }
    let addrs: Vec<String> = members.iter().map(|(_, a)| a.to_string()).collect();
    for &(id, addr) in &members {
        let api = dev_http_addr(addr).map_or(String::new(), |a| format!(", api https://{a}"));
        println!(
            "node {id}: {addr}  (data {}, log {}, metrics http://{addr}/metrics{api})",
            node_dir(&dir, id).display(),
            node_dir(&dir, id).join("node.log").display()
        );
    }
    if let Some((_, first)) = members.first() {
        println!("metrics: curl -s http://{first}/metrics | grep '^dynakv_requests_total'   (and /health, /ready)");
        if let Some(http) = dev_http_addr(*first) {
            println!("http api: {}", curl_line(&dir, &cert, &key, http));
        }
    }
    println!(
        "export DYNAKV_NODES={} DYNAKV_CA={} DYNAKV_CERT={} DYNAKV_KEY={}",
        addrs.join(","),
        dir.join("ca.pem").display(),
        cert.display(),
        key.display()
    );
    match wait_ready(&dir, &members).await {
        Ok(()) => println!("cluster ready; Ctrl-C stops every node"),
        Err(e) => tracing::warn!("{e:#}"),
    }
    // A node that dies is reported and the others keep running: `dynakv dev start N` brings
    // it back (detached, so it is stopped below with the rest of the directory).
    let shutdown = dynakv_server::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (id, died) = first_exit(&mut procs) => println!(
                "{died}; the others keep running (`dynakv dev start {id} --dir {}` starts it again)",
                dir.display()
            ),
        }
    }
    stop_all(&mut procs).await;
    stop_detached(&dir, &members).await;
    println!("all nodes stopped");
    Ok(())
}

/// First run: CA, node certificates and the cluster file.
fn create(dir: &Path, args: &DevArgs) -> anyhow::Result<ClusterFile> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let ca: ClusterCa = ca::init(dir)?;
    let mut members = Vec::new();
    for i in 1..=args.nodes {
        let port = u32::from(args.base_port) + i;
        let Ok(port) = u16::try_from(port) else {
            bail!("--base-port {} + {i} is past the last port", args.base_port);
        };
        ca::issue(&ca, NodeId(i), &node_dir(dir, NodeId(i)))?;
        members.push(MemberEntry {
            id: i,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        });
    }
    let cluster = ClusterFile::new(members);
    cluster.save(&dir.join("cluster.toml"))?;
    Ok(cluster)
}

fn spawn(
    exe: &Path,
    dir: &Path,
    cluster: &Path,
    id: NodeId,
    addr: SocketAddr,
) -> anyhow::Result<Child> {
    let cmd = node_command(exe, dir, cluster, id, addr)?;
    tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))
}

/// The command that runs node `id` of the dev cluster in `dir`: its own process group (a
/// terminal's Ctrl-C reaches the whole group; the nodes are stopped by `dev`, in order,
/// instead), its log files, the cluster's node config file if there is one.
pub(super) fn node_command(
    exe: &Path,
    dir: &Path,
    cluster: &Path,
    id: NodeId,
    addr: SocketAddr,
) -> anyhow::Result<std::process::Command> {
    let ndir = node_dir(dir, id);
    let (log, log2) = log_files(&ndir)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node")
        .arg("--id")
        .arg(id.0.to_string())
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--dir")
        .arg(&ndir)
        .arg("--cluster")
        .arg(cluster)
        .arg("--metrics-addr")
        .arg(addr.to_string());
    if let Some(http) = dev_http_addr(addr) {
        cmd.arg("--http-addr").arg(http.to_string());
    }
    // A dev node's settings come from dev and DIR/node.toml only, never from DYNAKV_<KEY>
    // variables the user's shell happens to hold.
    for key in dynakv_server::settings::KEYS {
        cmd.env_remove(dynakv_server::settings::env_name(key));
    }
    if node_config(dir).exists() {
        cmd.arg("--config").arg(node_config(dir));
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    Ok(cmd)
}

/// How far above its QUIC port a dev node serves its HTTPS API (TCP): node 1 of the default
/// cluster at 127.0.0.1:8101.
pub(super) const DEV_HTTP_OFFSET: u16 = 1000;

/// The HTTPS API address of the dev node at `addr`, if the port exists.
pub(super) fn dev_http_addr(addr: SocketAddr) -> Option<SocketAddr> {
    addr.port()
        .checked_add(DEV_HTTP_OFFSET)
        .map(|port| SocketAddr::new(addr.ip(), port))
}

/// A `curl` command that reads `hello` through the HTTPS API at `http` with the dev cluster's
/// admin certificate (the node certificate names `dynakv-node`, hence `--resolve`).
pub(super) fn curl_line(dir: &Path, cert: &Path, key: &Path, http: SocketAddr) -> String {
    format!(
        "curl -s --cacert {} --cert {} --key {} --resolve {name}:{port}:{ip} https://{name}:{port}/v1/kv/hello   (PUT with -X PUT --data-binary VALUE; docs/HTTP.md)",
        dir.join("ca.pem").display(),
        cert.display(),
        key.display(),
        name = dynakv_transport::SERVER_NAME,
        port = http.port(),
        ip = http.ip(),
    )
}

/// The node config file every node of the dev cluster in `dir` reads, if it exists
/// (`dynakv dev --config` puts it there).
pub(super) fn node_config(dir: &Path) -> PathBuf {
    dir.join("node.toml")
}

/// The dev cluster's admin client certificate and key (`DIR/admin.pem`, `DIR/admin-key.pem`,
/// beside the CA and apart from the node directories), issued on first use.
pub(crate) fn admin_client(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("admin.pem"), dir.join("admin-key.pem"));
    if !cert.exists() || !key.exists() {
        let ca = ClusterCa::load(dir)?;
        ca::issue_client(&ca, "admin", dynakv_transport::Role::Admin, dir)?;
    }
    Ok((cert, key))
}

/// The admin client's credentials of the dev cluster in `dir`.
pub(crate) fn admin_credentials(dir: &Path) -> anyhow::Result<dynakv_client::Credentials> {
    let (cert, key) = admin_client(dir)?;
    Ok(dynakv_client::Credentials::from_files(
        &dir.join("ca.pem"),
        &cert,
        &key,
    )?)
}

/// Waits until every node answers a cluster-info request (bounded).
async fn wait_ready(dir: &Path, members: &[(NodeId, SocketAddr)]) -> anyhow::Result<()> {
    let creds = admin_credentials(dir)?;
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    for &(id, addr) in members {
        let client = Client::direct(addr, &creds)?;
        let answered = loop {
            if client.cluster_info().await.is_ok() {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        client.close().await;
        if !answered {
            bail!("node {id} at {addr} did not answer within {READY_WAIT:?}; see its node.log");
        }
    }
    Ok(())
}

/// Completes when any node exits unexpectedly (killed, crashed, stopped with `dev stop`),
/// removing it from `procs` and describing it. A node that left the cluster (exit 0 and its
/// `removed` marker) is reported and forgotten.
async fn first_exit(procs: &mut Vec<NodeProc>) -> (u32, String) {
    loop {
        let mut exited = None;
        for (i, p) in procs.iter_mut().enumerate() {
            if let Ok(Some(status)) = p.child.try_wait() {
                exited = Some((i, status));
                break;
            }
        }
        if let Some((i, status)) = exited {
            let p = procs.remove(i);
            if status.success() && p.dir.join("removed").exists() {
                println!("node {} left the cluster and stopped", p.id);
                continue;
            }
            return (
                p.id,
                format!("node {} exited ({status}; see its node.log)", p.id),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every node, wait for each (bounded), SIGKILL the ones that do not stop.
async fn stop_all(procs: &mut [NodeProc]) {
    for p in procs.iter() {
        if let Some(pid) = p
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    node = p.id,
                    "did not stop within {STOP_GRACE:?}; killing it"
                );
                let _ = p.child.kill().await;
            }
        }
    }
}

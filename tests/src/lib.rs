//! Harness for the real-process tests: start `dynakv node` processes on free loopback ports in a
//! temporary directory, stop/kill/restart them, and run CLI commands against them.
//!
//! The binary is `target/<profile>/dynakv`, found next to the test executable's `deps/` folder
//! (`cargo test --workspace` builds it), or the path in env `DYNAKV_BIN`. Every wait is bounded
//! in time and in tries; every child is killed when its [`Cluster`] is dropped. Clusters are
//! started one at a time (a global lock held by each [`Cluster`]) so the tests do not starve
//! each other on a small machine.
//!
//! [`https`] is the HTTPS client of the API tests.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dynakv_server::config::{ClusterFile, MemberEntry};

pub mod https;

/// Bound on any single wait in the harness.
pub const WAIT: Duration = Duration::from_secs(30);

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The `dynakv` binary under test.
pub fn dynakv_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DYNAKV_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/debug/deps/test-binary -> target/debug/dynakv
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test executable location")?;
    let bin = dir.join("dynakv");
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p dynakv-node` or set DYNAKV_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// `count` distinct UDP ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    // Hold every socket until all are chosen, so the OS cannot hand out one port twice.
    let sockets = (0..count)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()?)
}

/// `count` distinct TCP ports on 127.0.0.1 that were free a moment ago.
pub fn free_tcp_ports(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?)
}

/// `GET path` over plain HTTP/1.1 on `addr` (loopback): the status code and the body. Bounded
/// by a 10 s timeout on connect, read and write.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// Like [`http_get`] with any method.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let limit = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in {raw:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits (bounded) for a child to exit; kills it if it does not.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// How to set up a test cluster: node count, cluster file settings and an optional node config
/// file (the `dynakv node --config` TOML) given to every node.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u32,
    /// Partitions (Q); `None` keeps the cluster file default.
    pub partitions: Option<u16>,
    /// The cluster's default request timeout; `None` keeps the default.
    pub request_timeout_ms: Option<u32>,
    /// Text of the node config file; `None` starts the nodes without `--config`.
    pub node_config: Option<String>,
    /// Give every node a metrics listener (`--metrics-addr`, a free TCP port on loopback).
    pub metrics: bool,
    /// Give every node the HTTPS API (`--http-addr`, a free TCP port on loopback).
    pub http: bool,
}

impl Setup {
    /// `nodes` nodes with every default.
    pub fn nodes(nodes: u32) -> Setup {
        Setup {
            nodes,
            partitions: None,
            request_timeout_ms: None,
            node_config: None,
            metrics: false,
            http: false,
        }
    }
}

/// One node of a test cluster.
#[derive(Debug)]
pub struct TestNode {
    /// Node id (1-based).
    pub id: u32,
    /// Its address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    /// For a node that is not in the cluster file: the seed it joins through.
    pub join: Option<SocketAddr>,
    /// Where it serves `/metrics`, `/health` and `/ready`, if it does.
    pub metrics: Option<SocketAddr>,
    /// Where it serves the HTTPS API, if it does.
    pub http: Option<SocketAddr>,
    child: Option<Child>,
}

/// A cluster of `dynakv node` processes in a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index i = node id i+1.
    pub nodes: Vec<TestNode>,
    bin: PathBuf,
    cluster_file: PathBuf,
    node_config: Option<PathBuf>,
    ca: PathBuf,
    dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Creates a CA, certificates and a cluster file for `n` nodes, starts them, and waits until
    /// every node sees every other as up.
    pub fn start(n: u32) -> anyhow::Result<Cluster> {
        Cluster::start_with(&Setup::nodes(n))
    }

    /// Like [`Cluster::start`], with the cluster file settings and node config of `setup`.
    pub fn start_with(setup: &Setup) -> anyhow::Result<Cluster> {
        let n = setup.nodes;
        let turn = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bin = dynakv_bin()?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        run_ok(&bin, &["ca", "init", "--dir", path_str(&root)?])?;
        // The tests' own client: an admin certificate beside the CA, apart from the nodes.
        let root_s = path_str(&root)?;
        run_ok(
            &bin,
            &[
                "ca",
                "issue-client",
                "--name",
                "admin",
                "--role",
                "admin",
                "--dir",
                root_s,
                "--out",
                root_s,
            ],
        )?;
        let addrs = free_ports(n as usize)?;
        let mut metrics = if setup.metrics {
            free_tcp_ports(n as usize)?
        } else {
            Vec::new()
        }
        .into_iter();
        let mut http = if setup.http {
            free_tcp_ports(n as usize)?
        } else {
            Vec::new()
        }
        .into_iter();
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        for (i, addr) in addrs.into_iter().enumerate() {
            let id = i as u32 + 1;
            let ndir = root.join(format!("node-{id}"));
            run_ok(
                &bin,
                &[
                    "ca",
                    "issue",
                    "--id",
                    &id.to_string(),
                    "--dir",
                    path_str(&root)?,
                    "--out",
                    path_str(&ndir)?,
                ],
            )?;
            members.push(MemberEntry { id, addr });
            nodes.push(TestNode {
                id,
                addr,
                dir: ndir,
                join: None,
                metrics: metrics.next(),
                http: http.next(),
                child: None,
            });
        }
        let cluster_file = root.join("cluster.toml");
        let mut file = ClusterFile::new(members);
        if let Some(q) = setup.partitions {
            file.partitions = q;
        }
        if let Some(ms) = setup.request_timeout_ms {
            file.request_timeout_ms = ms;
        }
        file.save(&cluster_file)?;
        let node_config = match &setup.node_config {
            Some(text) => {
                let path = root.join("node.toml");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut cluster = Cluster {
            nodes,
            bin,
            cluster_file,
            node_config,
            ca: root.join("ca.pem"),
            dir,
            _turn: turn,
        };
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        cluster.wait_all_up()?;
        Ok(cluster)
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate path.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// The CA certificate PEM.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.ca)?)
    }

    /// The admin client's certificate and key files.
    pub fn admin_cert(&self) -> (PathBuf, PathBuf) {
        let root = self.dir.path();
        (root.join("admin.pem"), root.join("admin-key.pem"))
    }

    /// Credentials of the tests' admin client (CA, certificate, key).
    pub fn creds(&self) -> anyhow::Result<dynakv_client::Credentials> {
        let (cert, key) = self.admin_cert();
        Ok(dynakv_client::Credentials::from_files(
            &self.ca, &cert, &key,
        )?)
    }

    /// Issues a client certificate `name` with `role` (read, write, admin) with the cluster's
    /// CA; returns its certificate and key files.
    pub fn issue_client(&self, name: &str, role: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let root = self.dir.path();
        let root_s = path_str(root)?;
        run_ok(
            &self.bin,
            &[
                "ca",
                "issue-client",
                "--name",
                name,
                "--role",
                role,
                "--dir",
                root_s,
                "--out",
                root_s,
            ],
        )?;
        Ok((
            root.join(format!("{name}.pem")),
            root.join(format!("{name}-key.pem")),
        ))
    }

    /// Every node address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u32) -> SocketAddr {
        self.nodes[id as usize - 1].addr
    }

    /// The `dynakv` binary the cluster runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The log of node `id` (its stdout and stderr).
    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Issues a certificate for a new node (the next id) with the cluster CA and starts it
    /// with `--join` through node `seed` (`None`: with the cluster file, which does not list
    /// it, so it waits for `dynakv join`); returns its id. Does not wait for the join.
    pub fn add_node(&mut self, seed: Option<u32>) -> anyhow::Result<u32> {
        let id = self.nodes.len() as u32 + 1;
        let ndir = self.dir.path().join(format!("node-{id}"));
        run_ok(
            &self.bin,
            &[
                "ca",
                "issue",
                "--id",
                &id.to_string(),
                "--dir",
                path_str(self.dir.path())?,
                "--out",
                path_str(&ndir)?,
            ],
        )?;
        let addr = free_ports(1)?
            .pop()
            .context("no free port for the new node")?;
        self.nodes.push(TestNode {
            id,
            addr,
            dir: ndir,
            join: seed.map(|s| self.addr(s)),
            metrics: free_tcp_ports(1)?.pop(),
            http: None,
            child: None,
        });
        self.spawn(id)?;
        Ok(id)
    }

    /// Waits (bounded) for node `id` to exit by itself; returns its exit status, or `None` if
    /// it did not exit in time (it is killed then).
    pub fn wait_exit(&mut self, id: u32, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[id as usize - 1].child.take()?;
        wait_exit(&mut child, within)
    }

    /// Has node `id`'s process exited by itself? Its exit status if so (it is then
    /// forgotten); `None` while it runs. Never waits.
    pub fn exited(&mut self, id: u32) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[id as usize - 1];
        let status = node.child.as_mut()?.try_wait().ok().flatten()?;
        node.child = None;
        Some(status)
    }

    /// Starts node `id` again on its data without waiting for anything.
    pub fn spawn_again(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)
    }

    fn spawn(&mut self, id: u32) -> anyhow::Result<()> {
        let node = &mut self.nodes[id as usize - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))?;
        let membership: Vec<std::ffi::OsString> = match node.join {
            Some(seed) => vec!["--join".into(), seed.to_string().into()],
            None => vec!["--cluster".into(), self.cluster_file.clone().into()],
        };
        let child = Command::new(&self.bin)
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                &node.addr.to_string(),
            ])
            .arg("--dir")
            .arg(&node.dir)
            .args(&membership)
            .args(
                self.node_config
                    .iter()
                    .flat_map(|path| [std::ffi::OsStr::new("--config"), path.as_os_str()]),
            )
            .args(
                node.metrics
                    .iter()
                    .flat_map(|a| ["--metrics-addr".to_string(), a.to_string()]),
            )
            .args(
                node.http
                    .iter()
                    .flat_map(|a| ["--http-addr".to_string(), a.to_string()]),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Stops node `id` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, id: u32) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            signal(&child, rustix::process::Signal::TERM);
            match wait_exit(&mut child, WAIT) {
                Some(status) if status.success() => {}
                other => bail!("node {id} did not stop cleanly: {other:?}"),
            }
        }
        Ok(())
    }

    /// Freezes node `id` with SIGSTOP: its connections stay open but it answers nothing (a
    /// hung process). [`Cluster::resume`] thaws it; dropping the cluster kills it anyway.
    pub fn pause(&self, id: u32) {
        if let Some(child) = &self.nodes[id as usize - 1].child {
            signal(child, rustix::process::Signal::STOP);
        }
    }

    /// Thaws a node frozen by [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u32) {
        if let Some(child) = &self.nodes[id as usize - 1].child {
            signal(child, rustix::process::Signal::CONT);
        }
    }

    /// Kills node `id` with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.nodes[id as usize - 1].child.take() {
            signal(&child, rustix::process::Signal::KILL);
            let _ = wait_exit(&mut child, WAIT);
        }
    }

    /// Starts node `id` again on its data and waits until the cluster is whole.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)?;
        self.wait_all_up()
    }

    /// Is node `id` running (started and not stopped or killed by the harness)?
    pub fn is_running(&self, id: u32) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Starts every stopped node, then waits until the cluster is whole.
    pub fn start_stopped(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_none())
            .map(|n| n.id)
            .collect();
        for id in stopped {
            self.spawn(id)?;
        }
        self.wait_all_up()
    }

    /// `dynakv status --json` of node `id`.
    pub fn status(&self, id: u32) -> anyhow::Result<serde_json::Value> {
        self.cli_json(&["status", "--json", "--node", &self.addr(id).to_string()])
    }

    /// Waits until every running node answers `status` and sees every running node as up.
    pub fn wait_all_up(&self) -> anyhow::Result<()> {
        let running = self.running();
        let start = Instant::now();
        for tries in 0.. {
            let mut all = true;
            for &id in &running {
                let out = self.cli(&["status", "--json", "--node", &self.addr(id).to_string()])?;
                let up = out.status.success()
                    && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                        .ok()
                        .and_then(|v| {
                            v["members"].as_array().map(|ms| {
                                ms.iter().all(|m| {
                                    m["up"].as_bool() == Some(true)
                                        || !running
                                            .iter()
                                            .any(|r| m["id"].as_u64() == Some(u64::from(*r)))
                                })
                            })
                        })
                        .unwrap_or(false);
                all &= up;
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > WAIT || tries > 300 {
                bail!(
                    "cluster not up after {:?}; logs in {}",
                    start.elapsed(),
                    self.dir.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs the CLI with DYNAKV_CA, the admin client's DYNAKV_CERT/DYNAKV_KEY and
    /// DYNAKV_NODES (every node) set for this cluster.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let (cert, key) = self.admin_cert();
        self.cli_as(&cert, &key, args)
    }

    /// Runs the CLI like [`Cluster::cli`] with another client certificate and key.
    pub fn cli_as(&self, cert: &Path, key: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let nodes: Vec<String> = self.addrs().iter().map(ToString::to_string).collect();
        Ok(Command::new(&self.bin)
            .args(args)
            .env("DYNAKV_CA", &self.ca)
            .env("DYNAKV_CERT", cert)
            .env("DYNAKV_KEY", key)
            .env("DYNAKV_NODES", nodes.join(","))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs the CLI, requires success, and parses its one JSON line.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "dynakv {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

fn run_ok(bin: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(bin).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "dynakv {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

//! The `dynakv` CLI against real node processes: the DVV sibling vectors with `--node` choosing
//! the coordinator, quorum failures, bad input, and `dynakv dev`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use dynakv_tests::https::https_request;
use dynakv_tests::{dynakv_bin, signal, wait_exit, Cluster, WAIT};

fn siblings(v: &serde_json::Value) -> BTreeSet<String> {
    v["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ctx(v: &serde_json::Value) -> anyhow::Result<String> {
    v["context"]
        .as_str()
        .map(str::to_string)
        .context("no context in output")
}

#[test]
fn dvv_vectors_through_the_cli() -> anyhow::Result<()> {
    let c = Cluster::start(3)?;
    let (a, b) = (c.addr(1).to_string(), c.addr(2).to_string());
    let put = |key: &str, v: &str, context: Option<&str>, node: &str| {
        let mut args = vec!["put", key, v, "--node", node];
        if let Some(t) = context {
            args.extend(["--context", t]);
        }
        c.cli_json(&args)
    };
    // R = 3 so the read sees every replica whatever the coordinator.
    let get = |key: &str, node: &str| c.cli_json(&["get", key, "--node", node, "--r", "3"]);

    // Vector 1: sequential overwrite.
    let k1 = put("v1key", "v1", None, &a)?;
    put("v1key", "v2", Some(&ctx(&k1)?), &a)?;
    assert_eq!(siblings(&get("v1key", &a)?), set(&["v2"]));

    // Vector 2: blind writes keep siblings, through one coordinator and through two.
    put("v2a", "v1", None, &a)?;
    put("v2a", "v2", None, &a)?;
    assert_eq!(siblings(&get("v2a", &b)?), set(&["v1", "v2"]));
    put("v2b", "v1", None, &a)?;
    put("v2b", "v2", None, &b)?;
    assert_eq!(siblings(&get("v2b", &a)?), set(&["v1", "v2"]));

    // Vector 3: two clients with the same stale context, same coordinator: both survive, v1 not.
    let k = ctx(&put("v3", "v1", None, &a)?)?;
    put("v3", "v2", Some(&k), &a)?;
    put("v3", "v3", Some(&k), &a)?;
    assert_eq!(siblings(&get("v3", &a)?), set(&["v2", "v3"]));
    // Variant: the second client goes through B.
    let k = ctx(&put("v3b", "v1", None, &a)?)?;
    put("v3b", "v2", Some(&k), &a)?;
    put("v3b", "v3", Some(&k), &b)?;
    assert_eq!(siblings(&get("v3b", &a)?), set(&["v2", "v3"]));

    // Vector 4: Mary and Peter.
    put("v4", "v1", None, &a)?;
    let peter = get("v4", &a)?;
    assert_eq!(siblings(&peter), set(&["v1"]));
    put("v4", "v2", None, &a)?; // Mary, blind
    assert_eq!(siblings(&get("v4", &a)?), set(&["v1", "v2"]));
    put("v4", "v3", Some(&ctx(&peter)?), &a)?;
    let after = get("v4", &a)?;
    assert_eq!(siblings(&after), set(&["v2", "v3"]));

    // Vector 5: a context covering every sibling collapses them.
    put("v4", "v4", Some(&ctx(&after)?), &b)?;
    assert_eq!(siblings(&get("v4", &a)?), set(&["v4"]));

    // Delete with a covering context: the key reads as missing (exit 0), with a context.
    let before = get("v4", &a)?;
    c.cli_json(&["delete", "v4", "--context", &ctx(&before)?, "--node", &a])?;
    let gone = get("v4", &b)?;
    assert!(siblings(&gone).is_empty());
    assert!(gone["context"].is_string());
    // A missing key is a success with no siblings.
    assert!(siblings(&get("never-written", &a)?).is_empty());
    Ok(())
}

/// Exactly one non-empty line on stderr, returned.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {text}");
    lines[0].to_string()
}

#[test]
fn bad_input_and_quorum_failures_give_one_clear_line() -> anyhow::Result<()> {
    let mut c = Cluster::start(3)?;
    let a = c.addr(1).to_string();

    let out = c.cli(&["put", "k", "v", "--no-such-flag"])?;
    assert!(!out.status.success());
    assert!(one_line(&out.stderr).contains("--no-such-flag"));

    let out = c.cli(&[
        "put",
        "k",
        "v",
        "--context",
        "!!not-a-token!!",
        "--node",
        &a,
    ])?;
    assert!(!out.status.success());
    assert!(one_line(&out.stderr).contains("malformed context"));

    // A context read from one key, sent with a write of another: refused, nothing written
    // (it would supersede the other key's values that share its dots, unseen).
    let first = c.cli_json(&["put", "one", "v1", "--node", &a])?;
    c.cli_json(&["put", "two", "mine", "--node", &a])?;
    let out = c.cli(&["put", "two", "x", "--context", &ctx(&first)?, "--node", &a])?;
    assert!(!out.status.success());
    let line = one_line(&out.stderr);
    assert!(line.contains("another key"), "{line}");
    let out = c.cli(&["delete", "two", "--context", &ctx(&first)?, "--node", &a])?;
    assert!(!out.status.success());
    assert_eq!(
        siblings(&c.cli_json(&["get", "two", "--node", &a])?),
        set(&["mine"])
    );
    c.cli_json(&["put", "one", "v2", "--context", &ctx(&first)?, "--node", &a])?;
    assert_eq!(
        siblings(&c.cli_json(&["get", "one", "--node", &a])?),
        set(&["v2"])
    );

    let out = c.cli(&["put", "k", "v", "--w", "4", "--node", &a])?;
    assert!(!out.status.success());
    let line = one_line(&out.stderr);
    assert!(line.contains("w must be between 1 and n=3"), "{line}");

    // Nobody listens on this port.
    let free = dynakv_tests::free_ports(1)?[0].to_string();
    let out = c.cli(&["get", "k", "--node", &free])?;
    assert!(!out.status.success());
    assert!(one_line(&out.stderr).contains("cannot reach"));

    // One of three nodes down: W=3 fails naming the replicas that answered, W=2 succeeds.
    c.stop(3)?;
    let out = c.cli(&[
        "put",
        "q",
        "v",
        "--w",
        "3",
        "--timeout",
        "1000",
        "--node",
        &a,
    ])?;
    assert!(!out.status.success());
    let line = one_line(&out.stderr);
    // Depending on whether the coordinator already noticed node 3 is gone, it fails fast
    // ("unavailable") or after the timeout; either way the line says how many replicas it had.
    assert!(
        (line.contains("timed out") && line.contains("2 of 3 replicas answered"))
            || (line.contains("unavailable") && line.contains("only 2")),
        "{line}"
    );
    c.cli_json(&["put", "q", "v2", "--w", "2", "--node", &a])?;
    c.restart(3)?;
    c.cli_json(&["put", "q", "v3", "--w", "3", "--node", &a])?;
    Ok(())
}

/// A base port P with P+1..=P+3 free on UDP and TCP (QUIC and metrics) and P+1001..=P+1003
/// free on TCP (the HTTPS API).
fn free_base_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let p = probe.local_addr()?.port();
        drop(probe);
        if !(2..=64_000).contains(&p) {
            continue;
        }
        let base = p - 1;
        let tcp = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        let ok = (1..=3).all(|i| {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok()
                && tcp(base + i)
                && tcp(base + 1000 + i)
        });
        if ok {
            return Ok(base);
        }
    }
    bail!("no free port range found")
}

/// `dynakv dev --config` checks the file before it starts anything: a typo is one clear line.
#[test]
fn dev_refuses_a_bad_node_config_before_starting_nodes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node-typo.toml");
    std::fs::write(&config, "cache_mbs = 16\n")?;
    let out = Command::new(dynakv_bin()?)
        .args(["dev", "--base-port", "1", "--config"])
        .arg(&config)
        .arg("--dir")
        .arg(dir.path().join("dk"))
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node-typo.toml") && err.contains("cache_mbs"),
        "{err}"
    );
    assert!(
        !dir.path().join("dk").join("node-1").exists(),
        "a node was set up"
    );
    Ok(())
}

/// Starts `dynakv dev` on `dir` and `base` (plus `extra` flags) and waits for "cluster ready";
/// returns the process, the channel of its later stdout lines, and the lines so far.
fn start_dev(
    dir: &std::path::Path,
    base: u16,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<(std::process::Child, mpsc::Receiver<String>, Vec<String>)> {
    let mut dev = Command::new(dynakv_bin()?)
        .args(["dev", "--base-port", &base.to_string()])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = dev.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("cluster ready")) {
        match rx.recv_timeout(WAIT) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = dev.kill();
                let _ = dev.wait();
                bail!(
                    "dev printed no 'cluster ready' in {:?}: {lines:?}",
                    start.elapsed()
                );
            }
        }
    }
    Ok((dev, rx, lines))
}

/// Runs `dynakv ARGS` with the dev cluster's export line; (success, stdout, stderr).
fn dynakv(vars: &[(String, String)], args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(dynakv_bin()?)
        .args(args)
        .env_remove("DYNAKV_NODES")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Issue 13, part 6: `dynakv dev kill|stop|start N` control single nodes of a running dev
/// cluster; the foreground `dev` reports a node that dies and keeps the others running, and
/// stops every node (the restarted one included) at the end.
#[test]
fn dev_kill_stop_and_start_single_nodes_while_the_others_serve() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_base_port()?;
    let (mut dev, rx, lines) = start_dev(dir.path(), base, &[])?;
    let export = lines
        .iter()
        .find_map(|l| l.strip_prefix("export "))
        .with_context(|| format!("no export line: {lines:?}"))?;
    let vars: Vec<(String, String)> = export
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let d = dir.path().to_str().context("temp dir path")?;
    let node = |i: u16| format!("127.0.0.1:{}", base + i);
    let result = (|| -> anyhow::Result<()> {
        let (ok, out, err) = dynakv(&vars, &["dev", "kill", "2", "--dir", d])?;
        assert!(ok && out.contains("node 2: killed"), "{out}{err}");
        // The foreground dev reports it and keeps going.
        let deadline = Instant::now() + WAIT;
        loop {
            match rx.recv_timeout(WAIT) {
                Ok(line) if line.contains("node 2 exited") => {
                    assert!(line.contains("the others keep running"), "{line}");
                    break;
                }
                Ok(_) if Instant::now() < deadline => {}
                other => bail!("dev did not report node 2: {other:?}"),
            }
        }
        assert!(dev.try_wait()?.is_none(), "dev stopped when one node died");
        // Nodes 1 and 3 are a write quorum.
        let (ok, out, err) = dynakv(&vars, &["put", "k", "v", "--w", "2", "--node", &node(1)])?;
        assert!(ok && out.contains("\"acks\":2"), "{out}{err}");
        // Node 2 is down: stopping it again is a clear error; starting it brings it back.
        let (ok, _, err) = dynakv(&vars, &["dev", "stop", "2", "--dir", d])?;
        assert!(!ok && err.contains("node 2 is not running"), "{err}");
        let (ok, out, err) = dynakv(&vars, &["dev", "start", "2", "--dir", d])?;
        assert!(ok && out.contains("node 2: started"), "{out}{err}");
        let (ok, _, err) = dynakv(&vars, &["dev", "start", "2", "--dir", d])?;
        assert!(!ok && err.contains("already running"), "{err}");
        let deadline = Instant::now() + WAIT;
        while !dynakv(&vars, &["status", "--node", &node(2)])?.0 {
            assert!(Instant::now() < deadline, "node 2 did not come back");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // A clean stop frees node 3's port; an unknown id is refused.
        let (ok, out, err) = dynakv(&vars, &["dev", "stop", "3", "--dir", d])?;
        assert!(ok && out.contains("node 3: stopped"), "{out}{err}");
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, base + 3)).is_ok());
        let (ok, _, err) = dynakv(&vars, &["dev", "kill", "9", "--dir", d])?;
        assert!(!ok && err.contains("no node 9"), "{err}");
        Ok(())
    })();
    signal(&dev, rustix::process::Signal::TERM);
    let status = wait_exit(&mut dev, WAIT).context("dev did not exit after SIGTERM")?;
    result?;
    assert!(status.success(), "dev exited with {status}");
    // Every node is gone, the one `dev start` brought back included.
    assert_ports_free(base)
}

#[test]
fn dev_starts_three_processes_and_sigterm_stops_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_base_port()?;
    // A node config file for every node (a small page cache): the nodes must start with it.
    let config = dir.path().join("tuning.toml");
    std::fs::write(&config, "cache_mb = 16\nsibling_warn = 20\n")?;
    let (mut dev, _rx, lines) =
        start_dev(dir.path(), base, &["--config".as_ref(), config.as_os_str()])?;
    // The export line a user copies: it must set everything the CLI needs (nodes, CA, and the
    // admin client certificate every node requires).
    let export = lines
        .iter()
        .find_map(|l| l.strip_prefix("export "))
        .with_context(|| format!("no export line: {lines:?}"))?;
    let vars: Vec<(&str, &str)> = export
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let names: BTreeSet<&str> = vars.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        BTreeSet::from(["DYNAKV_NODES", "DYNAKV_CA", "DYNAKV_CERT", "DYNAKV_KEY"]),
        "{export}"
    );
    // Three processes: every node answers status (through the export line's settings alone).
    for i in 1..=3u16 {
        let out = Command::new(dynakv_bin()?)
            .args([
                "status",
                "--json",
                "--node",
                &format!("127.0.0.1:{}", base + i),
            ])
            .env_remove("DYNAKV_NODES")
            .envs(vars.iter().copied())
            .current_dir(std::env::temp_dir())
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The printed curl line works as printed: its certificates and port reach the HTTPS API.
    let curl = lines
        .iter()
        .find_map(|l| l.strip_prefix("http api: "))
        .with_context(|| format!("no curl line: {lines:?}"))?;
    let words: Vec<&str> = curl.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1).copied())
            .with_context(|| format!("no {flag} in {curl}"))
    };
    let port: u16 = after("--resolve")?
        .split(':')
        .nth(1)
        .context("--resolve NAME:PORT:IP")?
        .parse()?;
    let api = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (ca, cert, key) = (after("--cacert")?, after("--cert")?, after("--key")?);
    let cert = Some((std::path::Path::new(cert), std::path::Path::new(key)));
    let ca = std::path::Path::new(ca);
    let put = https_request(api, ca, cert, "PUT", "/v1/kv/hello", &[], b"world")?;
    assert_eq!(put.status, 200, "{:?}", put.json()?);
    let got = https_request(api, ca, cert, "GET", "/v1/kv/hello", &[], b"")?;
    assert_eq!(got.json()?["siblings"][0], "world");
    signal(&dev, rustix::process::Signal::TERM);
    let status = wait_exit(&mut dev, WAIT).context("dev did not exit after SIGTERM")?;
    assert!(status.success(), "dev exited with {status}");
    // Every node process is gone: their ports are free again.
    assert_ports_free(base)
}

/// The three dev node ports after `base` are free again (their processes are gone), the
/// HTTPS API's included.
fn assert_ports_free(base: u16) -> anyhow::Result<()> {
    for i in 1..=3u16 {
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, base + i)).is_err() {
            bail!("port {} still busy", base + i);
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, base + 1000 + i)).is_err() {
            bail!("TCP port {} (HTTP API) still busy", base + 1000 + i);
        }
    }
    Ok(())
}

//! Issue 13, part 5, on real processes: a node started from `dynakv.toml` alone, a node started
//! from `DYNAKV_<KEY>` environment variables alone that joins through a host name, `dynakv
//! config check` (good and bad settings), and `dynakv safe-to-stop` before and after a member
//! goes down.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dynakv_tests::{dynakv_bin, free_ports, signal, wait_exit, Cluster, WAIT};

/// Node processes stopped (SIGTERM, then kill) when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            signal(child, rustix::process::Signal::TERM);
            let _ = wait_exit(child, Duration::from_secs(10));
        }
    }
}

fn dynakv(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Output> {
    Ok(Command::new(dynakv_bin()?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()?)
}

fn ok_json(out: Output) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        bail!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn path(p: &Path) -> anyhow::Result<String> {
    Ok(p.to_str().context("non-UTF-8 path")?.to_string())
}

#[test]
fn nodes_start_from_dynakv_toml_or_the_environment_and_config_check_explains() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let r = path(root)?;
    ok_json_or_unit(dynakv(&["ca", "init", "--dir", &r], &[])?)?;
    for id in ["1", "2"] {
        let out = path(&root.join(format!("node-{id}")))?;
        ok_json_or_unit(dynakv(
            &["ca", "issue", "--id", id, "--dir", &r, "--out", &out],
            &[],
        )?)?;
    }
    ok_json_or_unit(dynakv(
        &[
            "ca",
            "issue-client",
            "--name",
            "admin",
            "--role",
            "admin",
            "--dir",
            &r,
            "--out",
            &r,
        ],
        &[],
    )?)?;
    let ports = free_ports(2)?;
    let (a1, a2) = (ports[0], ports[1]);
    std::fs::write(
        root.join("cluster.toml"),
        format!("[[members]]\nid = 1\naddr = \"{a1}\"\n"),
    )?;

    // Node 1: everything in dynakv.toml.
    let toml = root.join("dynakv.toml");
    std::fs::write(
        &toml,
        format!(
            "id = 1\nlisten = \"{a1}\"\ndir = \"{}\"\ncluster = \"{}\"\ncache_mb = 16\n",
            path(&root.join("node-1"))?,
            path(&root.join("cluster.toml"))?
        ),
    )?;
    let t = path(&toml)?;
    let checked = ok_json(dynakv(&["config", "check", "--config", &t], &[])?)?;
    assert_eq!(checked["id"], 1, "{checked}");
    assert_eq!(checked["cache_mb"], 16, "{checked}");
    assert!(
        checked["entry"]
            .as_str()
            .is_some_and(|e| e.starts_with("founder")),
        "{checked}"
    );
    // The environment overrides the file, and is checked the same way.
    let env_cache = [("DYNAKV_CACHE_MB", "32".to_string())];
    let checked = ok_json(dynakv(&["config", "check", "--config", &t], &env_cache)?)?;
    assert_eq!(checked["cache_mb"], 32, "{checked}");
    let bad = dynakv(
        &["config", "check", "--config", &t],
        &[("DYNAKV_CACHE_MB", "lots".to_string())],
    )?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DYNAKV_CACHE_MB"));

    let log = |name: &str| -> anyhow::Result<std::fs::File> {
        Ok(std::fs::File::create(root.join(name))?)
    };
    let node1 = Command::new(dynakv_bin()?)
        .args(["node", "--config", &t])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log("node-1.out")?)
        .stderr(log("node-1.log")?)
        .spawn()?;
    let mut procs = Procs(vec![node1]);

    // Node 2: the environment alone, joining through a host name and advertising one.
    let node2_env = [
        ("DYNAKV_ID", "2".to_string()),
        ("DYNAKV_LISTEN", a2.to_string()),
        ("DYNAKV_ADVERTISE", format!("localhost:{}", a2.port())),
        ("DYNAKV_DIR", path(&root.join("node-2"))?),
        ("DYNAKV_JOIN", format!("localhost:{}", a1.port())),
    ];
    let checked = ok_json(dynakv(&["config", "check"], &node2_env)?)?;
    assert!(
        checked["entry"]
            .as_str()
            .is_some_and(|e| e.starts_with("joins through")),
        "{checked}"
    );
    let node2 = Command::new(dynakv_bin()?)
        .arg("node")
        .envs(node2_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log("node-2.out")?)
        .stderr(log("node-2.log")?)
        .spawn()?;
    procs.0.push(node2);

    // Both serve: a write through node 2 is read through node 1.
    let cli_env = [
        ("DYNAKV_CA", path(&root.join("ca.pem"))?),
        ("DYNAKV_CERT", path(&root.join("admin.pem"))?),
        ("DYNAKV_KEY", path(&root.join("admin-key.pem"))?),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let out = dynakv(&["put", "k", "v", "--node", &a2.to_string()], &cli_env)?;
        if out.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "node 2 never served: {}\nnode 2 log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(root.join("node-2.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = ok_json(dynakv(&["get", "k", "--node", &a1.to_string()], &cli_env)?)?;
    assert_eq!(got["siblings"][0], "v", "{got}");
    let status = ok_json(dynakv(
        &["status", "--json", "--node", &a1.to_string()],
        &cli_env,
    )?)?;
    let members = status["members"].as_array().context("members")?;
    assert!(
        members
            .iter()
            .any(|m| m["id"] == 2 && m["addr"] == a2.to_string()),
        "node 2 is known at the address its host name resolved to: {status}"
    );

    // Bad settings: one clear line each, exit 1.
    std::fs::write(root.join("typo.toml"), "id = 1\ncache_mbs = 2\n")?;
    let typo = dynakv(
        &[
            "config",
            "check",
            "--config",
            &path(&root.join("typo.toml"))?,
        ],
        &[],
    )?;
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        !typo.status.success() && err.contains("line 2") && err.contains("cache_mbs"),
        "{err}"
    );
    let no_id = dynakv(&["config", "check", "--listen", &a1.to_string()], &[])?;
    let err = String::from_utf8_lossy(&no_id.stderr);
    assert!(err.contains("--id") && err.contains("DYNAKV_ID"), "{err}");
    // A joining node bound to every interface must say which address peers dial.
    let mut wildcard = node2_env.to_vec();
    wildcard.retain(|(k, _)| *k != "DYNAKV_ADVERTISE" && *k != "DYNAKV_LISTEN");
    wildcard.push(("DYNAKV_LISTEN", format!("0.0.0.0:{}", a2.port())));
    let out = dynakv(&["config", "check"], &wildcard)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("advertise"), "{err}");
    let wrong = dynakv(&["config", "check", "--config", &t, "--id", "2"], &[])?;
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("not node 2"),
        "{err}"
    );
    drop(procs);
    Ok(())
}

/// `ca` commands print a line or nothing; only success matters here.
fn ok_json_or_unit(out: Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn safe_to_stop_says_no_once_another_replica_is_down() -> anyhow::Result<()> {
    let mut c = Cluster::start(3)?;
    let node1 = c.addr(1).to_string();
    let safe = c.cli_json(&["safe-to-stop", "--node", &node1])?;
    assert_eq!(safe["safe"], true, "{safe}");
    // About one node only: a list could fail over and answer for another.
    let two = format!("{node1},{}", c.addr(2));
    let out = c.cli(&["safe-to-stop", "--node", &two])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one node"));
    c.stop(3)?;
    let deadline = Instant::now() + WAIT;
    let verdict = loop {
        let out = c.cli(&["safe-to-stop", "--node", &node1])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if v["safe"] == false {
            assert_eq!(out.status.code(), Some(1), "exit 1 when not safe");
            break v;
        }
        if Instant::now() > deadline {
            bail!("node 1 still says safe with node 3 down: {v}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        verdict["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("node(s) 3 down")),
        "{verdict}"
    );
    Ok(())
}

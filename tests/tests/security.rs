//! Who may talk to a node, through real processes: every client presents a certificate from
//! the cluster CA, the role in it decides what it may do, node certificates are for peers, and
//! a live member cannot be removed by accident, and a node refuses to start on a private key
//! other users can read.

use std::time::Duration;

use dynakv_client::{Client, ClientError, Context, Credentials};
use dynakv_tests::Cluster;

/// The CLI's stderr and whether it succeeded.
fn run(
    c: &Cluster,
    cert: &std::path::Path,
    key: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    let out = c.cli_as(cert, key, args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn clients_must_present_a_certificate_and_its_role_decides_what_they_may_do() -> anyhow::Result<()>
{
    let c = Cluster::start(3)?;
    let rt = tokio::runtime::Runtime::new()?;

    // No certificate at all: refused at the handshake, with the way out in the message.
    let bare = Credentials::without_certificate(c.ca_pem()?);
    let err = rt.block_on(async {
        let client = Client::direct(c.addr(1), &bare)?;
        client.get(b"k").await
    });
    match err {
        Err(ClientError::Tls(m)) => assert!(
            m.contains("requires a client certificate") && m.contains("dynakv ca issue-client"),
            "{m}"
        ),
        other => panic!("a client without a certificate must be refused, got {other:?}"),
    }
    // The CLI without a certificate file says the same before it dials.
    let missing = c.dir().join("nobody.pem");
    let (ok, stderr) = run(&c, &missing, &missing, &["get", "k"])?;
    assert!(!ok && stderr.contains("dynakv ca issue-client"), "{stderr}");

    // A read client reads and asks for status, and may not write.
    let (rc, rk) = c.issue_client("reader", "read")?;
    let (ok, stderr) = run(&c, &rc, &rk, &["put", "k", "v"])?;
    assert!(
        !ok && stderr.contains("put needs the write role"),
        "{stderr}"
    );
    let (ok, stderr) = run(&c, &rc, &rk, &["status", "--json"])?;
    assert!(ok, "{stderr}");

    // A write client writes and deletes, and may not change the membership.
    let (wc, wk) = c.issue_client("writer", "write")?;
    let (ok, stderr) = run(&c, &wc, &wk, &["put", "k", "v"])?;
    assert!(ok, "{stderr}");
    let (ok, stderr) = run(&c, &rc, &rk, &["get", "k"])?;
    assert!(ok, "{stderr}");
    let (ok, stderr) = run(&c, &wc, &wk, &["remove", "3"])?;
    assert!(!ok && stderr.contains("needs the admin role"), "{stderr}");
    // Even an admin may not remove a live, reachable member without --force: it should leave.
    let out = c.cli(&["remove", "3"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("up and reachable")
            && stderr.contains("dynakv leave"),
        "{stderr}"
    );
    // Nothing changed: node 3 is still a member and up.
    let status = c.status(1)?;
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let three = members.iter().find(|m| m["id"].as_u64() == Some(3));
    assert!(
        three.is_some_and(|m| m["membership"].as_str() == Some("valid")),
        "{status}"
    );

    // A node's certificate is for peers, not for client requests.
    let node_dir = c.dir().join("node-2");
    let as_node = Credentials::from_files(
        c.ca_path(),
        &node_dir.join("node.pem"),
        &node_dir.join("node-key.pem"),
    )?;
    let refused = rt.block_on(async {
        let client = Client::direct(c.addr(1), &as_node)?;
        client.put(b"k", b"from-a-node", &Context::empty()).await
    });
    match refused {
        Err(ClientError::Refused { message, .. }) => {
            assert!(
                message.contains("node certificates are for peers"),
                "{message}"
            )
        }
        other => panic!("a node certificate must not act as a client, got {other:?}"),
    }
    // The value is the writer's, untouched by the refused requests.
    let got = c.cli_json(&["get", "k", "--r", "3"])?;
    assert_eq!(got["siblings"], serde_json::json!(["v"]), "{got}");
    Ok(())
}

#[test]
fn a_node_refuses_to_start_on_a_private_key_others_can_read() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut c = Cluster::start(1)?;
    c.stop(1)?;
    let key = c.dir().join("node-1").join("node-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    c.spawn_again(1)?;
    let status = c.wait_exit(1, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the node must exit with an error, got {status:?}"
    );
    let log = c.log(1);
    assert!(
        log.contains("node-key.pem") && log.contains("chmod 600"),
        "{log}"
    );
    // Fixed as the message says, it starts again.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    c.restart(1)?;
    Ok(())
}

#[test]
fn a_force_removed_live_node_hands_its_hints_over_before_it_stops() -> anyhow::Result<()> {
    let mut c = Cluster::start(4)?;
    let rt = tokio::runtime::Runtime::new()?;
    let info = rt.block_on(async {
        let client = Client::direct(c.addr(1), &c.creds()?)?;
        let info = client.cluster_info().await;
        client.close().await;
        anyhow::Ok(info?)
    })?;
    // A key whose replicas are three of the four nodes; the fourth (F) is its only fallback.
    let key = "handover";
    let replicas: Vec<u32> = info
        .map
        .preference_list(info.map.partition_for_key(key.as_bytes()), 3)
        .iter()
        .map(|id| id.0)
        .collect();
    let Some(f) = (1..=4u32).find(|id| !replicas.contains(id)) else {
        anyhow::bail!("no fallback for {key}: {replicas:?}");
    };
    let (x, coordinator) = (replicas[1], replicas[0]);
    // X hangs: a W=3 put then lands on F as a hint for X.
    c.pause(x);
    let put = c.cli_json(&[
        "put",
        key,
        "only-hinted-for-x",
        "--w",
        "3",
        "--node",
        &c.addr(coordinator).to_string(),
    ])?;
    assert_eq!(put["fallback_acks"].as_u64(), Some(1), "{put}");
    // F is removed while it holds that hint (forced: it is up and reachable).
    let out = c.cli(&[
        "remove",
        &f.to_string(),
        "--force",
        "--node",
        &c.addr(coordinator).to_string(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Past its 10 s linger it is still running: the hint has nowhere to go yet.
    std::thread::sleep(Duration::from_secs(13));
    assert!(
        c.exited(f).is_none(),
        "F must not stop while it holds a hint: {}",
        c.log(f)
    );
    // X is back: F hands the hint over, then stops by itself.
    c.resume(x);
    let status = c.wait_exit(f, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "F should stop cleanly once its hints are over ({status:?}): {}",
        c.log(f)
    );
    assert!(!c.log(f).contains("could not hand over"), "{}", c.log(f));
    let x_status = c.status(x)?;
    assert!(
        x_status["stats"]["hints_received"].as_u64() >= Some(1),
        "X took the hint from F: {x_status}"
    );
    Ok(())
}

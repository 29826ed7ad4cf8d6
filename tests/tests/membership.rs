//! Issue 6 against real node processes: joins, leaves and partition transfers on loopback.
//!
//! - grow a 3-node cluster to 5 under a write load, shrink it back to 3 with `dynakv leave`:
//!   every acknowledged write is readable, partition counts are balanced, no transfer pending,
//!   and the nodes that left exit by themselves (exit 0);
//! - kill -9 the receiving node in the middle of a partition transfer: after its restart the
//!   transfer resumes from its checkpoint (the keys sent twice are a small fraction of the
//!   partition) and every key of the partitions it now replicates is on it;
//! - a node whose certificate comes from another CA is refused, and both sides log it;
//! - a node started outside any cluster joins with `dynakv join`.
//!
//! Every wait is a bounded polling loop on observable state; no assertion depends on timing.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dynakv_client::{Client, Context, Options};
use dynakv_ring::{NodeId, PartitionMap};
use dynakv_tests::{free_ports, Cluster, Setup};
use serde_json::Value;

/// Bound on each convergence wait (joins, transfers, leaves).
const CONVERGE: Duration = Duration::from_secs(120);

/// Faster timers than production so membership changes settle within the test's waits;
/// `batch` keys per transfer batch, `max_transfers` sent at the same time by one node.
fn setup(nodes: u32, partitions: u16, batch: usize, max_transfers: usize) -> Setup {
    Setup {
        nodes,
        partitions: Some(partitions),
        request_timeout_ms: Some(2000),
        node_config: Some(format!(
            "gossip_interval_ms = 200\ntick_ms = 50\ntransfer_batch = {batch}\n\
             max_transfers = {max_transfers}\n"
        )),
        metrics: false,
        http: false,
    }
}

/// Polls `check` until it returns true (bounded by [`CONVERGE`]).
fn wait_until(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() > CONVERGE {
            bail!("{what}: not reached within {CONVERGE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn member(status: &Value, id: u32) -> Option<&Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(u64::from(id)))
}

fn membership(status: &Value, id: u32) -> Option<String> {
    member(status, id).and_then(|m| m["membership"].as_str().map(str::to_string))
}

fn transfers(status: &Value) -> Vec<Value> {
    status["transfers"].as_array().cloned().unwrap_or_default()
}

fn pending_transfers(status: &Value) -> usize {
    transfers(status)
        .iter()
        .filter(|t| t["done"].as_bool() != Some(true))
        .count()
}

/// Partitions per owning member (joining, valid or leaving).
fn partition_counts(status: &Value) -> BTreeMap<u32, u64> {
    status["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| {
                    matches!(
                        m["membership"].as_str(),
                        Some("joining" | "valid" | "leaving")
                    )
                })
                .filter_map(|m| Some((m["id"].as_u64()? as u32, m["partitions"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// True when `status` shows exactly `owners` owning partitions, each valid, with counts
/// within floor/ceil of Q / owners, and no transfer pending.
fn settled(status: &Value, owners: &[u32]) -> bool {
    let q = status["partition_count"].as_u64().unwrap_or(0);
    let counts = partition_counts(status);
    let k = owners.len() as u64;
    let (lo, hi) = (q / k, q.div_ceil(k));
    counts.keys().copied().collect::<Vec<_>>() == owners
        && owners
            .iter()
            .all(|id| membership(status, *id).as_deref() == Some("valid"))
        && counts.values().all(|c| (lo..=hi).contains(c))
        && counts.values().sum::<u64>() == q
        && pending_transfers(status) == 0
}

fn all_settled(c: &Cluster, owners: &[u32]) -> anyhow::Result<bool> {
    for &id in owners {
        match c.status(id) {
            Ok(s) if settled(&s, owners) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_3_to_5_and_shrink_back_under_writes() -> anyhow::Result<()> {
    let mut c = Cluster::start_with(&setup(3, 16, 64, 2))?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    // The writer's client, watched: its cluster view must follow the joins and leaves.
    let view = client.clone();
    let view_members = |v: &Client| -> Vec<u32> {
        v.cluster()
            .map(|i| i.members.iter().map(|(id, _)| id.0).collect())
            .unwrap_or_default()
    };
    let w2 = Options {
        w: Some(2),
        timeout: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, acked_count) = (stop.clone(), acked_count.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("load-{i}");
                if client
                    .put_with(k.as_bytes(), k.as_bytes(), &Context::empty(), w2)
                    .await
                    .is_ok()
                {
                    acked.push(k);
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    wait_until("first writes acknowledged", || {
        Ok(acked_count.load(Ordering::Relaxed) >= 100)
    })?;

    // Grow: two nodes join through different seeds while the writes go on.
    let n4 = c.add_node(Some(1))?;
    let n5 = c.add_node(Some(2))?;
    assert_eq!((n4, n5), (4, 5));
    let before_growth = acked_count.load(Ordering::Relaxed);
    wait_until("5 valid members, balanced, transfers done", || {
        all_settled(&c, &[1, 2, 3, 4, 5])
    })?;
    let grown = c.status(1)?;
    assert!(
        transfers(&grown)
            .iter()
            .any(|t| t["peer"].as_u64() >= Some(4)),
        "node 1 moved partitions to the new nodes: {grown}"
    );
    // The routed client learned the new members and map by itself (it refreshes its view
    // as it goes), so its writes go to the partitions' new owners.
    wait_until("the writer's client sees 5 members", || {
        Ok(view_members(&view) == [1, 2, 3, 4, 5])
    })?;

    // Shrink: nodes 4 and 5 leave, hand their partitions back and stop by themselves.
    for id in [4, 5] {
        let out = c.cli_json(&["leave", "--node", &c.addr(id).to_string()])?;
        assert_eq!(out["result"], format!("node {id} is leaving"), "{out}");
    }
    for id in [4, 5] {
        let status = c.wait_exit(id, CONVERGE);
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} should exit 0 after its removal: {status:?}"
        );
        assert!(
            c.log(id).contains("node stopped: removed from the cluster"),
            "node {id} logs its removal"
        );
    }
    wait_until("3 valid members, balanced, transfers done", || {
        all_settled(&c, &[1, 2, 3])
    })?;
    wait_until("the writer's client sees 3 members again", || {
        Ok(view_members(&view) == [1, 2, 3])
    })?;
    for id in 1..=3 {
        let s = c.status(id)?;
        for gone in [4, 5] {
            assert_eq!(membership(&s, gone).as_deref(), Some("removed"), "{s}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await?;
    println!(
        "{} writes acknowledged ({before_growth} before the joins)",
        acked.len()
    );
    assert!(
        acked.len() > before_growth,
        "writes were acknowledged during the membership changes ({} before, {} in all)",
        before_growth,
        acked.len()
    );

    // Every acknowledged write is readable with R=2 through the 3 remaining nodes.
    let addrs: Vec<_> = (1..=3).map(|id| c.addr(id)).collect();
    let reader = Client::connect(&addrs, &c.creds()?).await?;
    let r2 = Options {
        r: Some(2),
        ..Options::default()
    };
    let mut missing = Vec::new();
    for k in &acked {
        let got = reader.get_with(k.as_bytes(), r2).await?;
        if !got.values.iter().any(|v| v.as_ref() == k.as_bytes()) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}

/// An outgoing transfer seen in a sender's status.
#[derive(Debug, Clone, Copy)]
struct Caught {
    sender: u32,
    partition: u64,
    keys: u64,
    total: u64,
    resent: u64,
}

/// The first outgoing transfer to `to` that is under way (some keys acknowledged, not all).
fn transfer_under_way(c: &Cluster, to: u32) -> anyhow::Result<Option<Caught>> {
    for sender in 1..=3 {
        let Ok(s) = c.status(sender) else { continue };
        for t in transfers(&s) {
            let outgoing =
                t["direction"] == "outgoing" && t["peer"].as_u64() == Some(u64::from(to));
            let keys = t["keys"].as_u64().unwrap_or(0);
            let total = t["total"].as_u64().unwrap_or(0);
            if outgoing && t["done"] == false && keys > 0 && keys < total {
                let partition = t["partition"].as_u64().context("partition")?;
                let resent = t["resent"].as_u64().context("resent")?;
                return Ok(Some(Caught {
                    sender,
                    partition,
                    keys,
                    total,
                    resent,
                }));
            }
        }
    }
    Ok(None)
}

fn outgoing(c: &Cluster, sender: u32, partition: u64, to: u32) -> anyhow::Result<Value> {
    let s = c.status(sender)?;
    transfers(&s)
        .into_iter()
        .find(|t| {
            t["direction"] == "outgoing"
                && t["partition"].as_u64() == Some(partition)
                && t["peer"].as_u64() == Some(u64::from(to))
        })
        .with_context(|| format!("node {sender} has no transfer of {partition} to {to}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_interrupted_by_kill_9_resumes_from_its_checkpoint() -> anyhow::Result<()> {
    // Small batches, one transfer at a time per sender: a partition takes many batches.
    let mut c = Cluster::start_with(&setup(3, 8, 4, 1))?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    let keys: Vec<String> = (0..4000).map(|i| format!("moving-{i}")).collect();
    let mut writes = tokio::task::JoinSet::new();
    for chunk in keys.chunks(250) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        writes.spawn(async move {
            for k in chunk {
                client
                    .put(k.as_bytes(), k.as_bytes(), &Context::empty())
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }

    let new = c.add_node(Some(1))?;
    let mut caught = None;
    wait_until("a transfer to the new node under way", || {
        caught = transfer_under_way(&c, new)?;
        Ok(caught.is_some())
    })?;
    c.kill(new);
    let Caught {
        sender,
        partition,
        keys: keys_at_kill,
        total,
        resent: resent_at_kill,
    } = caught.context("no transfer caught")?;
    assert!(total > 100, "the partition is large ({total} keys)");

    // Restart the receiver: it rejoins from its stored state and the transfer goes on.
    c.spawn_again(new)?;
    wait_until("the new node valid, every transfer done", || {
        all_settled(&c, &[1, 2, 3, 4])
    })?;
    let t = outgoing(&c, sender, partition, new)?;
    let keys_done = t["keys"].as_u64().context("keys")?;
    let resent = t["resent"].as_u64().context("resent")? - resent_at_kill;
    assert_eq!(keys_done, total, "the transfer completed: {t}");
    println!(
        "partition {partition} from node {sender}: {keys_at_kill} of {total} keys acknowledged \
         at the kill, {resent} keys sent again after it"
    );
    assert!(
        resent * 4 < total,
        "resumed from the checkpoint: {resent} keys resent of {total} ({keys_at_kill} were acknowledged before the kill)"
    );
    // Whether the batch in flight at the kill is retried after its timeout or delivered by the
    // peer link after the reconnect depends on timing; either way the transfer went on from its
    // cursor: had it restarted from zero, `keys` would exceed `total` (checked above).

    // Every key of the partitions node 4 now replicates is on node 4 itself: stop the others
    // and read with R=1 through node 4 alone.
    let map: PartitionMap = Client::connect(&[c.addr(new)], &c.creds()?)
        .await?
        .cluster()
        .context("cluster info")?
        .map
        .clone();
    for id in 1..=3 {
        c.stop(id)?;
    }
    let alone = Client::direct(c.addr(new), &c.creds()?)?;
    let r1 = Options {
        r: Some(1),
        timeout: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let mut checked = 0;
    for k in &keys {
        let p = map.partition_for_key(k.as_bytes());
        if !map.preference_list(p, 3).contains(&NodeId(new)) {
            continue;
        }
        let got = alone.get_with(k.as_bytes(), r1).await?;
        assert_eq!(
            got.values.iter().map(|v| v.as_ref()).collect::<Vec<_>>(),
            vec![k.as_bytes()],
            "{k} (partition {p}) is on node {new}"
        );
        checked += 1;
    }
    assert!(
        checked > keys.len() / 2,
        "node {new} replicates most partitions ({checked} keys)"
    );
    Ok(())
}

/// A child process killed when dropped.
struct Rogue(Child);

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let c = Cluster::start_with(&setup(3, 8, 64, 2))?;
    let other_ca = c.dir().join("other-ca");
    let rogue_dir = c.dir().join("rogue");
    let bin = c.bin().to_path_buf();
    for args in [
        vec!["ca", "init", "--dir", other_ca.to_str().context("path")?],
        vec![
            "ca",
            "issue",
            "--id",
            "4",
            "--dir",
            other_ca.to_str().context("path")?,
            "--out",
            rogue_dir.to_str().context("path")?,
        ],
    ] {
        let out = Command::new(&bin).args(&args).output()?;
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    // It trusts the cluster's CA (so it can check the seed), but its own certificate is not
    // from that CA.
    std::fs::copy(c.ca_path(), rogue_dir.join("ca.pem"))?;
    let listen = free_ports(1)?.pop().context("port")?;
    let log_path = c.dir().join("rogue.log");
    let log = std::fs::File::create(&log_path)?;
    let _rogue = Rogue(
        Command::new(&bin)
            .args(["node", "--id", "4", "--listen", &listen.to_string()])
            .arg("--dir")
            .arg(&rogue_dir)
            .args(["--join", &c.addr(1).to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    wait_until("both sides log the refusal", || {
        let rogue_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(c.log(1)
            .contains("TLS handshake failed; connection refused")
            && rogue_log.contains("cannot join through this seed")
            && rogue_log.contains("invalid peer certificate"))
    })?;
    for id in 1..=3 {
        let s = c.status(id)?;
        assert!(member(&s, 4).is_none(), "node 4 is not a member: {s}");
    }
    Ok(())
}

#[test]
fn a_node_outside_any_cluster_joins_with_the_cli() -> anyhow::Result<()> {
    let mut c = Cluster::start_with(&setup(3, 8, 64, 2))?;
    let id = c.add_node(None)?;
    let addr = c.addr(id).to_string();
    // Not in a cluster yet: it answers, but only to say so.
    wait_until("the waiting node answers", || {
        let out = c.cli(&["status", "--node", &addr])?;
        Ok(String::from_utf8_lossy(&out.stderr).contains("is not in a cluster yet"))
    })?;
    let joined = c.cli_json(&["join", &c.addr(2).to_string(), "--node", &addr])?;
    assert_eq!(
        joined["result"],
        format!("node {id} is joining through node 2 at {}", c.addr(2)),
        "{joined}"
    );
    wait_until("4 valid members, balanced", || {
        all_settled(&c, &[1, 2, 3, 4])
    })?;
    // Joining again is refused with a clear error.
    let again = c.cli(&["join", &c.addr(1).to_string(), "--node", &addr])?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already in a cluster"),
        "{again:?}"
    );
    Ok(())
}

//! Issue 5 against real node processes: a 5-node cluster with N=3 on loopback.
//!
//! - sloppy quorum: with two of a key's three primaries stopped, a W=3 put succeeds through two
//!   fallbacks, and PW=2 / PR=2 refuse with a clear error;
//! - hinted handoff: when the primaries return, every node's `hints_pending` drains to zero and
//!   the primaries hold the value;
//! - anti-entropy: a node whose database was deleted gets its keys back with read repair off;
//! - deletes: a tombstone written while a primary is down reaches it, is reaped after the grace
//!   period, and the key stays deleted through anti-entropy rounds and a restart of every node.
//!
//! Every wait is a bounded polling loop on observable state (status counters, reads), never a
//! fixed sleep that the assertion depends on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dynakv_client::Client;
use dynakv_ring::PartitionMap;
use dynakv_tests::{Cluster, Setup};
use serde_json::Value;

/// Bound on each convergence wait (hints draining, anti-entropy, reaping).
const CONVERGE: Duration = Duration::from_secs(90);

/// Faster timers than production, so the background work happens within the test's waits.
fn setup(read_repair: bool) -> Setup {
    Setup {
        nodes: 5,
        partitions: Some(16),
        request_timeout_ms: Some(1000),
        node_config: Some(format!(
            "aae_interval_ms = 200\ntombstone_grace_ms = 3000\nhandoff_backoff_max_ms = 1000\n\
             read_repair = {read_repair}\n"
        )),
        metrics: false,
        http: false,
    }
}

/// The cluster's partition map, as a client learns it.
struct Placement {
    map: PartitionMap,
    n: usize,
}

impl Placement {
    fn of(c: &Cluster) -> anyhow::Result<Placement> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ca = c.creds()?;
        let addrs = c.addrs();
        rt.block_on(async move {
            let client = Client::connect(&addrs, &ca).await?;
            let info = client.cluster().context("no cluster info")?;
            Ok(Placement {
                map: info.map.clone(),
                n: usize::from(info.n),
            })
        })
    }

    /// The key's preference list (its N primaries, in order) and the rest of its ring walk
    /// (the fallbacks, in order).
    fn key(&self, key: &str) -> (Vec<u32>, Vec<u32>) {
        let p = self.map.partition_for_key(key.as_bytes());
        let walk: Vec<u32> = self.map.walk(p).into_iter().map(|id| id.0).collect();
        let primaries: Vec<u32> = self
            .map
            .preference_list(p, self.n)
            .into_iter()
            .map(|id| id.0)
            .collect();
        assert_eq!(primaries.len(), 3, "N=3 on 5 nodes");
        assert_eq!(
            walk[..3],
            primaries[..],
            "the walk starts with the preference list"
        );
        (primaries, walk[3..].to_vec())
    }
}

fn node(c: &Cluster, id: u32) -> String {
    c.addr(id).to_string()
}

fn siblings(v: &Value) -> BTreeSet<String> {
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

fn num(v: &Value, field: &str) -> anyhow::Result<u64> {
    v[field]
        .as_u64()
        .with_context(|| format!("no number {field} in {v}"))
}

/// What node `id` itself holds for `key`: a get it coordinates with R=1 is answered from its
/// own store (the coordinator's local read counts first).
fn local(c: &Cluster, id: u32, key: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(siblings(&c.cli_json(&[
        "get",
        key,
        "--r",
        "1",
        "--node",
        &node(c, id),
    ])?))
}

/// Sum of one core counter over every running node.
fn counter_sum(c: &Cluster, name: &str) -> anyhow::Result<u64> {
    let mut sum = 0;
    for id in c.running() {
        sum += num(&c.status(id)?["stats"], name)?;
    }
    Ok(sum)
}

/// Hints node `id` holds for `target`.
fn hints_for(status: &Value, target: u32) -> u64 {
    status["hints_pending"][target.to_string()]
        .as_u64()
        .unwrap_or(0)
}

/// Polls `check` (bounded by [`CONVERGE`]) until it returns `Some`.
fn eventually<T>(
    what: &str,
    c: &Cluster,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        if start.elapsed() > CONVERGE {
            bail!(
                "{what}: not reached within {CONVERGE:?}; node logs in {}",
                c.dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sloppy_quorum_takes_w3_through_fallbacks_refuses_pw2_and_hints_drain_on_return(
) -> anyhow::Result<()> {
    let mut c = Cluster::start_with(&setup(true))?;
    let key = "sloppy-cart";
    let (primaries, fallbacks) = Placement::of(&c)?.key(key);
    let (p1, p2, p3) = (primaries[0], primaries[1], primaries[2]);
    c.stop(p2)?;
    c.stop(p3)?;
    // The coordinator's own view: it saw both connections go away.
    eventually("p1 sees p2 and p3 down", &c, || {
        let st = c.status(p1)?;
        let down: BTreeSet<u64> = st["down"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        Ok((down.contains(&u64::from(p2)) && down.contains(&u64::from(p3))).then_some(()))
    })?;

    // W=3 with one primary up: two fallbacks take the write with hints.
    let put = c.cli_json(&["put", key, "apples", "--w", "3", "--node", &node(&c, p1)])?;
    assert_eq!(num(&put, "acks")?, 3, "{put}");
    assert_eq!(num(&put, "primary_acks")?, 1, "{put}");
    assert_eq!(num(&put, "fallback_acks")?, 2, "{put}");
    assert!(put["context"].as_str().is_some_and(|t| !t.is_empty()));

    // The same put demanding two primary acks fails, saying why; so does a delete.
    for args in [
        vec!["put", key, "apples", "--w", "3", "--pw", "2"],
        vec!["delete", key, "--w", "2", "--pw", "2"],
    ] {
        let mut args = args;
        let coordinator = node(&c, p1);
        args.extend(["--node", &coordinator]);
        let out = c.cli(&args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("needs 2 primary replicas") && err.contains("fallbacks do not count"),
            "{args:?}: {err}"
        );
    }
    // Reads: PR=2 fails the same way; R=3 is served by the primary and the two fallbacks.
    let out = c.cli(&["get", key, "--r", "3", "--pr", "2", "--node", &node(&c, p1)])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs 2 primary replicas"));
    let got = c.cli_json(&["get", key, "--r", "3", "--pr", "1", "--node", &node(&c, p1)])?;
    assert_eq!(siblings(&got), set(&["apples"]));

    // The fallbacks hold one hint each for the stopped primaries, and status says so.
    let mut held = [0u64; 2];
    for f in &fallbacks {
        let st = c.status(*f)?;
        held[0] += hints_for(&st, p2);
        held[1] += hints_for(&st, p3);
    }
    assert_eq!(
        held,
        [1, 1],
        "hints for nodes {p2} and {p3} on {fallbacks:?}"
    );
    let expected = local(&c, p1, key)?;
    assert_eq!(expected, set(&["apples"]));

    // The primaries return: hinted handoff delivers, and every node's hints drain to zero.
    let delivered_before = counter_sum(&c, "hints_delivered")?;
    c.restart(p2)?;
    c.restart(p3)?;
    eventually("hints_pending empty on every node", &c, || {
        for id in c.running() {
            let st = c.status(id)?;
            let pending = st["hints_pending"].as_object().context("hints_pending")?;
            if pending.values().any(|n| n.as_u64() != Some(0)) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    assert!(counter_sum(&c, "hints_delivered")? >= delivered_before + 2);
    for id in [p2, p3] {
        assert_eq!(local(&c, id, key)?, expected, "node {id} after handoff");
    }
    Ok(())
}

#[test]
fn node_with_a_wiped_database_gets_its_data_back_by_anti_entropy() -> anyhow::Result<()> {
    // Read repair off: nothing but anti-entropy can bring the data back (no writes happen
    // while the node is away, so there are no hints either).
    let mut c = Cluster::start_with(&setup(false))?;
    let victim = 2;
    let placement = Placement::of(&c)?;
    let mut keys = Vec::new();
    for i in 0..24 {
        let key = format!("aae-{i}");
        let put = c.cli_json(&["put", &key, &format!("value-{i}"), "--w", "3"])?;
        assert_eq!(num(&put, "primary_acks")?, 3, "{put}");
        if placement.key(&key).0.contains(&victim) {
            keys.push((key, format!("value-{i}")));
        }
    }
    assert!(keys.len() >= 3, "too few keys on node {victim}: {keys:?}");

    c.stop(victim)?;
    let db = c.nodes[victim as usize - 1].dir.join("data");
    std::fs::remove_dir_all(&db).with_context(|| format!("removing {}", db.display()))?;
    assert!(c.nodes[victim as usize - 1].dir.join("node.pem").is_file());
    let repaired_before = counter_sum(&c, "aae_keys_repaired")?;
    c.restart(victim)?;

    // Reads at the victim with R=1 show its own store; with read repair off they change nothing.
    eventually("every key back on the wiped node", &c, || {
        for (key, value) in &keys {
            if local(&c, victim, key)? != set(&[value]) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    let st = c.status(victim)?;
    assert_eq!(num(&st["stats"], "read_repairs")?, 0, "{st}");
    assert!(counter_sum(&c, "aae_keys_repaired")? >= repaired_before + keys.len() as u64);
    Ok(())
}

#[test]
fn deleted_key_stays_deleted_through_handoff_reaping_and_restarts() -> anyhow::Result<()> {
    let mut c = Cluster::start_with(&setup(true))?;
    let key = "gone";
    let (primaries, _) = Placement::of(&c)?.key(key);
    let (p1, p3) = (primaries[0], primaries[2]);
    let put = c.cli_json(&["put", key, "old", "--w", "3", "--node", &node(&c, p1)])?;
    assert_eq!(num(&put, "primary_acks")?, 3, "{put}");
    let read = c.cli_json(&["get", key, "--r", "3", "--node", &node(&c, p1)])?;
    assert_eq!(siblings(&read), set(&["old"]));
    let context = read["context"].as_str().context("context")?.to_string();

    // One primary misses the delete: it still holds "old" when it comes back.
    c.stop(p3)?;
    let del = c.cli_json(&[
        "delete",
        key,
        "--context",
        &context,
        "--w",
        "2",
        "--node",
        &node(&c, p1),
    ])?;
    assert!(num(&del, "acks")? >= 2, "{del}");
    c.restart(p3)?;
    for id in c.running() {
        let got = c.cli_json(&["get", key, "--r", "3", "--node", &node(&c, id)])?;
        assert_eq!(
            siblings(&got),
            set(&[]),
            "get at node {id} after the restart"
        );
    }

    // Past the grace period the tombstone is reaped on the primaries...
    eventually("the tombstone reaped", &c, || {
        Ok((counter_sum(&c, "tombstones_reaped")? >= 1).then_some(()))
    })?;
    // ...and several anti-entropy rounds over every partition later, nothing came back.
    let exchanges: Vec<u64> = c
        .running()
        .into_iter()
        .map(|id| num(&c.status(id)?["stats"], "aae_exchanges"))
        .collect::<anyhow::Result<_>>()?;
    eventually("every node ran 32 more anti-entropy exchanges", &c, || {
        for (i, id) in c.running().into_iter().enumerate() {
            if num(&c.status(id)?["stats"], "aae_exchanges")? < exchanges[i] + 32 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    let check_deleted = |c: &Cluster, when: &str| -> anyhow::Result<()> {
        for &id in &primaries {
            assert_eq!(
                local(c, id, key)?,
                set(&[]),
                "node {id} holds the key {when}"
            );
        }
        for id in c.running() {
            let got = c.cli_json(&["get", key, "--r", "3", "--node", &node(c, id)])?;
            assert_eq!(siblings(&got), set(&[]), "get at node {id} {when}");
        }
        Ok(())
    };
    check_deleted(&c, "after reaping")?;

    // Every node restarts; the key stays deleted.
    for id in 1..=5 {
        c.stop(id)?;
    }
    c.start_stopped()?;
    check_deleted(&c, "after restarting every node")?;
    Ok(())
}

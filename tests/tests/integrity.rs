//! Issue 13, part 4, on real processes: a record corrupted on disk is never served, is counted
//! in the node's stats, and is repaired from the other replicas.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use dynakv_client::{Client, Context, Options};
use dynakv_core::store::{Space, Store};
use dynakv_server::sled_store::SledStore;
use dynakv_tests::Cluster;

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_corrupted_on_disk_is_not_served_and_is_repaired() -> anyhow::Result<()> {
    let mut c = Cluster::start(3)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    let w3 = Options {
        w: Some(3),
        ..Options::default()
    };
    client
        .put_with(b"precious", b"v1", &Context::empty(), w3)
        .await?;
    let p = client
        .cluster()
        .context("cluster view")?
        .map
        .partition_for_key(b"precious");

    // Node 2 stops; one bit of its record flips on disk (opened as the node opens it).
    c.stop(2)?;
    let db = c.dir().join("node-2").join("data");
    {
        let mut store = SledStore::open(&db)?;
        let space = Space::Partition(p);
        let mut record = store
            .get(space, b"precious")?
            .context("node 2 holds the key")?;
        let middle = record.len() / 2;
        record[middle] ^= 0x04;
        store.put(space, b"precious", &record)?;
        store.sync()?;
    }
    c.restart(2)?;

    // Read through node 2 alone with R=3: it must not serve the corrupt copy, and the read
    // repairs it (the other two replicas answer).
    let node2 = Client::direct(c.addr(2), &c.creds()?)?;
    let all = Options {
        r: Some(3),
        ..Options::default()
    };
    let got = node2.get_with(b"precious", all).await?;
    assert_eq!(got.values, vec![bytes::Bytes::from_static(b"v1")]);
    let status = c.status(2)?;
    assert_eq!(status["stats"]["corrupt_records"], 1, "{status}");

    // Repaired on node 2's disk: with the other two stopped, node 2 alone serves v1 (R=1).
    c.stop(1)?;
    c.stop(3)?;
    let r1 = Options {
        r: Some(1),
        timeout: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let start = Instant::now();
    loop {
        match node2.get_with(b"precious", r1).await {
            Ok(got) if got.values == vec![bytes::Bytes::from_static(b"v1")] => break,
            other if start.elapsed() > CONVERGE => anyhow::bail!("not repaired: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok(())
}

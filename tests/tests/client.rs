//! The client crate against real node processes: quorum reads and writes, forwarded writes,
//! siblings and merge, durability across SIGKILL, and a node surviving garbage on its port.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynakv_client::{Client, ClientError, Context, Options};
use dynakv_proto::wire::{self, ServerFrame};
use dynakv_tests::Cluster;
use dynakv_transport::{client_config, client_endpoint, connect, read_frame, write_frame};

/// Bytes of a str, for terse assertions.
fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn values(o: &dynakv_client::Object) -> BTreeSet<Vec<u8>> {
    o.values.iter().map(|v| v.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_and_writes_through_the_client() -> anyhow::Result<()> {
    let c = Cluster::start(3)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    assert_eq!(client.cluster().map(|i| i.members.len()), Some(3));

    let missing = client.get(b"nothing").await?;
    assert!(missing.values.is_empty());

    let all = Options {
        r: Some(3),
        w: Some(3),
        ..Options::default()
    };
    let ctx = client.put_with(b"k", b"v1", &Context::empty(), all).await?;
    let got = client.get_with(b"k", all).await?;
    assert_eq!(values(&got), BTreeSet::from([b("v1")]));
    client.put(b"k", b"v2", &ctx).await?;
    let got = client.get(b"k").await?;
    assert_eq!(values(&got), BTreeSet::from([b("v2")]));

    // Tokens round-trip and malformed ones are a typed error.
    assert_eq!(Context::from_token(&got.context.to_token())?, got.context);
    assert!(matches!(
        Context::from_token("%%%"),
        Err(ClientError::MalformedContext(_))
    ));

    // A context is bound to its key: the context of `k` sent with a write of `other` is refused
    // before anything is sent, and `other` keeps its value.
    client.put(b"other", b"mine", &Context::empty()).await?;
    for refused in [
        client.put(b"other", b"x", &got.context).await,
        client.delete(b"other", &got.context).await,
    ] {
        assert!(
            matches!(&refused, Err(ClientError::MalformedContext(m)) if m.contains("another key")),
            "{refused:?}"
        );
    }
    assert_eq!(
        values(&client.get(b"other").await?),
        BTreeSet::from([b("mine")])
    );

    client.delete(b"k", &got.context).await?;
    assert!(client.get_with(b"k", all).await?.values.is_empty());

    // W > N is refused by the coordinator with a request error.
    let bad = Options {
        w: Some(4),
        ..Options::default()
    };
    match client.put_with(b"k", b"x", &Context::empty(), bad).await {
        Err(ClientError::Request { .. }) => {}
        other => panic!("expected a request error, got {other:?}"),
    }

    // Values that are not UTF-8 come out of the CLI in base64, flagged.
    client
        .put(b"bin", &[0xff, 0xfe, 0x00], &Context::empty())
        .await?;
    let line = tokio::task::block_in_place(|| {
        c.cli_json(&["get", "bin", "--r", "3", "--node", &c.addr(1).to_string()])
    })?;
    assert_eq!(line["encoding"], "base64");
    assert_eq!(line["siblings"], serde_json::json!(["//4A"]));

    // A direct client makes that node coordinate (forwarded writes: see the next test).
    let direct = Client::direct(c.addr(2), &c.creds()?)?;
    direct.put(b"d", b"via-2", &Context::empty()).await?;
    assert_eq!(
        values(&client.get(b"d").await?),
        BTreeSet::from([b("via-2")])
    );
    Ok(())
}

/// Writes sent to a node that does not replicate their key are forwarded over the peer links to
/// one that does, which claims each from the forwarder before it coordinates: overwrites and
/// deletes through the forwarding node supersede what they read, and nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_node_that_is_no_replica_are_forwarded_once() -> anyhow::Result<()> {
    let c = Cluster::start(4)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    let map = client
        .cluster()
        .map(|i| i.map.clone())
        .expect("cluster info");
    let outsider = Client::direct(c.addr(4), &c.creds()?)?;
    let keys: Vec<String> = (0..2_000)
        .map(|i| format!("fwd-{i}"))
        .filter(|k| {
            let p = map.partition_for_key(k.as_bytes());
            !map.preference_list(p, 3).contains(&dynakv_ring::NodeId(4))
        })
        .take(12)
        .collect();
    assert_eq!(keys.len(), 12, "keys node 4 does not replicate");
    let all = Options {
        r: Some(3),
        ..Options::default()
    };
    for (i, k) in keys.iter().enumerate() {
        let first = outsider.put(k.as_bytes(), b"v1", &Context::empty()).await?;
        let second = outsider.put(k.as_bytes(), b"v2", &first).await?;
        if i % 2 == 0 {
            outsider.delete(k.as_bytes(), &second).await?;
        }
    }
    for (i, k) in keys.iter().enumerate() {
        let expected = if i % 2 == 0 {
            BTreeSet::new()
        } else {
            BTreeSet::from([b("v2")])
        };
        assert_eq!(
            values(&client.get_with(k.as_bytes(), all).await?),
            expected,
            "{k}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_and_merge_through_the_client() -> anyhow::Result<()> {
    let c = Cluster::start(3)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    let x = Client::direct(c.addr(1), &c.creds()?)?;
    let y = Client::direct(c.addr(3), &c.creds()?)?;
    x.put(b"cart", b"apples", &Context::empty()).await?;
    y.put(b"cart", b"bread", &Context::empty()).await?;
    let read = Options {
        r: Some(3),
        ..Options::default()
    };
    let both = client.get_with(b"cart", read).await?;
    assert_eq!(values(&both), BTreeSet::from([b("apples"), b("bread")]));

    client.put(b"cart", b"apples,bread", &both.context).await?;
    let merged = client.get_with(b"cart", read).await?;
    assert_eq!(values(&merged), BTreeSet::from([b("apples,bread")]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_keeps_every_write_it_acknowledged() -> anyhow::Result<()> {
    let mut c = Cluster::start(3)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    // W = 3: every replica, node 2 included, acknowledged each write that returned Ok.
    let all = Options {
        w: Some(3),
        timeout: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, acked_count) = (stop.clone(), acked_count.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("durable-{i}");
                if client
                    .put_with(k.as_bytes(), k.as_bytes(), &Context::empty(), all)
                    .await
                    .is_ok()
                {
                    acked.push(k);
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
            }
            acked
        })
    };
    // Kill node 2 while writes are in flight, once some have been acknowledged.
    for _ in 0..600 {
        if acked_count.load(Ordering::Relaxed) >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| c.kill(2));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await?;
    assert!(
        acked.len() >= 30,
        "only {} writes acknowledged",
        acked.len()
    );
    tokio::task::block_in_place(|| c.restart(2))?;
    // R = 1 through node 2 itself: its own copy answers first.
    let node2 = Client::direct(c.addr(2), &c.creds()?)?;
    let local = Options {
        r: Some(1),
        ..Options::default()
    };
    for k in &acked {
        let got = node2.get_with(k.as_bytes(), local).await?;
        assert_eq!(
            values(&got),
            BTreeSet::from([k.as_bytes().to_vec()]),
            "key {k}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_when_a_node_is_down() -> anyhow::Result<()> {
    let mut c = Cluster::start(3)?;
    let client = Client::connect(&c.addrs(), &c.creds()?).await?;
    let keys: Vec<String> = (0..30).map(|i| format!("failover-{i}")).collect();
    for k in &keys {
        client
            .put(k.as_bytes(), b"before", &Context::empty())
            .await?;
    }
    tokio::task::block_in_place(|| c.stop(1))?;
    // Every key whose preference list starts with node 1 now goes to the next replica.
    for k in &keys {
        let got = client.get(k.as_bytes()).await?;
        client.put(k.as_bytes(), b"after", &got.context).await?;
        assert_eq!(
            values(&client.get(k.as_bytes()).await?),
            BTreeSet::from([b("after")])
        );
    }
    Ok(())
}

/// The admin client's certificate and key as the transport takes them.
fn admin_cert(c: &Cluster) -> anyhow::Result<dynakv_transport::ClientCert> {
    let (cert, key) = c.admin_cert();
    Ok(dynakv_transport::ClientCert::load(&cert, &key)?)
}

/// A client-side QUIC connection that speaks raw bytes.
async fn raw_conn(
    c: &Cluster,
    addr: SocketAddr,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let ep = client_endpoint(
        (Ipv4Addr::LOCALHOST, 0).into(),
        client_config(&c.ca_pem()?, Some(&admin_cert(c)?))?,
    )?;
    let conn = connect(&ep, addr).await?;
    Ok((ep, conn))
}

/// Sends `bytes` on a new bidi stream; returns the node's error frame, if it sent one.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Option<String>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    // The node may stop the stream before everything is written; that is fine.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let reply =
        tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv, 1 << 20)).await?;
    Ok(match reply {
        Ok(Some(frame)) => match wire::decode::<ServerFrame>(&frame)? {
            ServerFrame::Error(msg) => Some(msg),
            other => anyhow::bail!("unexpected reply to garbage: {other:?}"),
        },
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_survives_garbage_and_oversized_frames() -> anyhow::Result<()> {
    let c = Cluster::start(3)?;
    let target = c.addr(1);
    let (_ep, conn) = raw_conn(&c, target).await?;

    // A well-framed payload that is not a ClientFrame.
    let mut garbage = 7u32.to_be_bytes().to_vec();
    garbage.extend([0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x99]);
    let err = send_raw(&conn, &garbage).await?;
    assert!(err.is_some_and(|m| m.contains("bad request frame")));

    // A length prefix far past the limit: refused from the header alone.
    let err = send_raw(&conn, &u32::MAX.to_be_bytes()).await?;
    assert!(err.is_some_and(|m| m.contains("exceeds the limit")));

    // Half a header, then the end of the stream.
    let _ = send_raw(&conn, &[0, 0]).await?;

    // A unidirectional stream from a plain client is refused.
    let mut uni = conn.open_uni().await?;
    let _ = write_frame(&mut uni, b"not a peer").await;
    let _ = uni.finish();

    // Raw UDP garbage at the QUIC port.
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    udp.send_to(b"\x00\x01garbage datagram that is not QUIC", target)?;
    udp.send_to(&[0xC0; 1200], target)?;

    // The node still serves requests, on the same connection and on a new one.
    let client = Client::direct(target, &c.creds()?)?;
    client.put(b"after", b"garbage", &Context::empty()).await?;
    assert_eq!(
        values(&client.get(b"after").await?),
        BTreeSet::from([b("garbage")])
    );
    let err = send_raw(&conn, &[0, 0, 0, 1, 0xff]).await?;
    assert!(err.is_some());
    Ok(())
}

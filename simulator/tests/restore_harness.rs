//! The two requests behind backup and restore, in the in-memory harness: a scan returns what
//! one replica stores (tombstones included) and only for partitions it replicates; a restore
//! merges a stored object without minting, so it never undoes a newer write or a delete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use dynakv_core::{ClientReply, ClientRequest, Object, RequestError, RequestOptions};
use dynakv_proto::dvv::NodeClock;
use dynakv_simulator::harness::{n, set, strings, Cluster};

/// The object `at` stores for `key`, as a scan returns it.
fn stored(c: &mut Cluster, at: u32, key: &str) -> Object {
    let p = c.map().partition_for_key(key.as_bytes());
    let reply = c.request(
        n(at),
        ClientRequest::Scan {
            partition: p,
            after: None,
            limit: 100,
        },
    );
    let ClientReply::Scanned(page) = reply else {
        panic!("scan failed: {reply:?}")
    };
    assert_eq!(page.next, None, "one page");
    page.items
        .into_iter()
        .find(|(k, _)| k.as_ref() == key.as_bytes())
        .map(|(_, o)| o)
        .expect("the key is stored")
}

fn restore(c: &mut Cluster, at: u32, key: &str, object: Object) -> ClientReply {
    c.request(
        n(at),
        ClientRequest::Restore {
            key: Bytes::from(key.to_string()),
            object,
            opts: RequestOptions::default(),
        },
    )
}

#[test]
fn a_restore_merges_and_never_undoes_a_newer_write_or_a_delete() {
    let mut c = Cluster::new(3, 3, 2, 2);
    c.put_ok(n(1), "k", "v1", &NodeClock::new());
    c.run();
    let old = stored(&mut c, 2, "k");

    // Deleted after the backup: restoring the old object does not bring v1 back.
    let read = c.get_ok(n(1), "k");
    c.delete_w1(n(1), "k", &read.context);
    c.run();
    let ClientReply::Written(w) = restore(&mut c, 3, "k", old.clone()) else {
        panic!("restore failed")
    };
    assert_eq!(w.dot, None, "a restore mints nothing");
    c.run();
    assert!(c.get_ok(n(2), "k").values.is_empty(), "still deleted");

    // A newer write over the delete: restoring the old object again changes nothing.
    let read = c.get_ok(n(1), "k");
    c.put_ok(n(1), "k", "v2", &read.context);
    c.run();
    restore(&mut c, 1, "k", old.clone());
    c.run();
    assert_eq!(strings(&c.get_ok(n(3), "k").values), set(&["v2"]));

    // Into a key the cluster lost: the object comes back as it was, on every replica, and a
    // second restore of it is a no-op.
    restore(&mut c, 2, "gone", old.clone());
    restore(&mut c, 2, "gone", old);
    c.run();
    for at in 1..=3 {
        let (values, _) = c.local(n(at), "gone");
        assert_eq!(values, set(&["v1"]), "node {at}");
    }
}

#[test]
fn a_scan_answers_only_for_partitions_the_node_replicates() {
    let mut c = Cluster::new(4, 2, 1, 1);
    c.put_ok(n(1), "k", "v", &NodeClock::new());
    c.run();
    let map = c.map();
    let p = map.partition_for_key(b"k");
    let replicas = map.preference_list(p, 2);
    let outsider = (1..=4)
        .map(n)
        .find(|id| !replicas.contains(id))
        .expect("one");
    let reply = c.request(
        outsider,
        ClientRequest::Scan {
            partition: p,
            after: None,
            limit: 10,
        },
    );
    match reply {
        ClientReply::Error(RequestError::NotReplica { node, partition }) => {
            assert_eq!((node, partition), (outsider, p))
        }
        other => panic!("expected NotReplica, got {other:?}"),
    }
    // A tombstone is part of what a replica stores, so a backup keeps deletes.
    let read = c.get_ok(n(1), "k");
    c.delete_w1(replicas[0], "k", &read.context);
    c.run();
    let at = replicas[0].0;
    let object = stored(&mut c, at, "k");
    assert!(
        object.values().iter().all(|v| v.data().is_none()),
        "{object:?}"
    );
}

/// A restore of a backup older than a reap does not bring the reaped value back: the replicas'
/// partition clocks remember its dot as stored and superseded, as a kept tombstone would. Nor
/// may it make a node mint a dot it minted before. Here A minted v as A:1 and the delete as A:2;
/// the tombstone was reaped and the backup restored {A:1: v}; a blind write through A must not
/// be named A:2 again (the deleter's context {A:2} would then drop it unseen). Before the clocks
/// the restore brought v back, and a reap that kept the actor and only lifted the counter of
/// keys where the actor held no live value reused A:2.
#[test]
fn a_restore_after_a_reap_never_makes_a_node_reuse_a_dot() {
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| cfg.tombstone_grace_ms = 3_000);
    let v = c.put_ok(n(1), "k", "v", &NodeClock::new());
    c.run();
    let backup = stored(&mut c, 1, "k");
    let read = c.get_ok(n(1), "k");
    let deleted = c.delete_w1(n(1), "k", &read.context);
    c.run_for(30_000);
    assert!(
        c.nodes.values().any(|x| x.stats().tombstones_reaped > 0),
        "the tombstone was reaped"
    );
    let ClientReply::Written(_) = restore(&mut c, 1, "k", backup) else {
        panic!("restore failed")
    };
    c.run();
    assert_eq!(
        strings(&c.get_ok(n(2), "k").values),
        set(&[]),
        "the restore did not undo the delete"
    );
    let w = c.put_ok(n(1), "k", "w", &NodeClock::new());
    let minted = [v.dot, deleted.dot, w.dot];
    assert!(minted.iter().all(Option::is_some), "{minted:?}");
    assert_ne!(w.dot, deleted.dot, "the delete's dot was minted again");
    assert_ne!(w.dot, v.dot);
    c.run();
    // The deleter writes back with its delete's context: it saw v, never w.
    c.put_ok(n(1), "k", "x", &deleted.context);
    c.run();
    let got = c.get_ok(n(2), "k");
    assert_eq!(strings(&got.values), set(&["w", "x"]), "w must survive");
}

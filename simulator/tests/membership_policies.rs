//! Policies that used to live in the driver and are now the core's, so both drivers (and the
//! simulator) run the same decisions: which peers to keep a link to, and when a removed node
//! stops itself.

use std::collections::BTreeSet;

use dynakv_core::{AdminRequest, ClientReply, ClientRequest};
use dynakv_simulator::harness::{n, Cluster};

fn ids(list: &[u32]) -> BTreeSet<dynakv_ring::NodeId> {
    list.iter().map(|i| n(*i)).collect()
}

#[test]
fn links_follow_the_membership_and_a_removed_node_stops_itself_after_its_linger() {
    let mut c = Cluster::with_config(4, 3, 2, 2, |cfg| cfg.removed_linger_ms = 2_000);
    c.run_for(200);
    for me in 1..=4u32 {
        let others: Vec<u32> = (1..=4).filter(|i| *i != me).collect();
        assert_eq!(
            c.links[&n(me)],
            ids(&others),
            "node {me} links to every other member"
        );
    }
    let reply = c.request(n(1), ClientRequest::Admin(AdminRequest::Remove(n(4))));
    assert!(matches!(reply, ClientReply::Admin(_)), "{reply:?}");
    // Gossip spreads the removal; node 4 learns it too, lingers 2 s, then asks to stop.
    c.run_for(1_000);
    assert!(
        c.stopped.is_empty(),
        "nobody stops before the linger is over"
    );
    c.run_for(6_000);
    for me in 1..=3u32 {
        let others: Vec<u32> = (1..=3).filter(|i| *i != me).collect();
        assert_eq!(
            c.links[&n(me)],
            ids(&others),
            "node {me} dropped its link to the removed node"
        );
    }
    assert_eq!(c.stopped, ids(&[4]), "only the removed node stops");
}

#[test]
fn a_removed_node_refuses_requests_with_a_clear_error_until_it_stops() {
    let mut c = Cluster::with_config(4, 3, 2, 2, |cfg| cfg.removed_linger_ms = 60_000);
    c.run_for(200);
    let reply = c.request(n(1), ClientRequest::Admin(AdminRequest::Remove(n(4))));
    assert!(matches!(reply, ClientReply::Admin(_)), "{reply:?}");
    c.run_for(3_000);
    let reply = c.request(n(4), ClientRequest::PartitionMap);
    match reply {
        ClientReply::Error(dynakv_core::RequestError::Removed { node }) => assert_eq!(node, n(4)),
        other => panic!("expected a Removed error, got {other:?}"),
    }
}

/// Keys (of `keys`) that `at` replicates under its map but does not hold.
fn missing_at(c: &Cluster, at: dynakv_ring::NodeId, keys: &[String]) -> Vec<String> {
    let core = &c.nodes[&at];
    let map = core.partition_map().clone();
    let nval = usize::from(core.config().n);
    keys.iter()
        .filter(|k| {
            let p = map.partition_for_key(k.as_bytes());
            map.preference_list(p, nval).contains(&at)
                && !core
                    .partition_objects(p)
                    .expect("scan")
                    .iter()
                    .any(|(key, _)| key.as_ref() == k.as_bytes())
        })
        .cloned()
        .collect()
}

#[test]
fn a_joining_node_turns_valid_only_once_its_partitions_have_arrived() {
    // One key per batch, so moving the data takes many round trips.
    let mut c = Cluster::with_config(3, 3, 2, 2, |cfg| cfg.transfer_batch = 1);
    c.run_for(200);
    let keys: Vec<String> = (0..120).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        c.put_ok(n(1), k, "v", &Default::default());
    }
    c.join(n(4), n(1));
    let mut valid_at = None;
    for step in 0..2_400u32 {
        c.run_for(50);
        let status = c.nodes[&n(4)].member_status();
        if status == Some(dynakv_gossip::Status::Valid) {
            valid_at = Some(step);
            break;
        }
    }
    let Some(step) = valid_at else {
        panic!("node 4 never turned valid within 120 s");
    };
    let missing = missing_at(&c, n(4), &keys);
    assert!(
        missing.is_empty(),
        "node 4 turned valid after {} ms while {} of its keys had not arrived: {:?}",
        (step + 1) * 50,
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        !c.nodes[&n(4)]
            .partition_map()
            .replicated_partitions(n(4), 3)
            .is_empty(),
        "node 4 replicates something"
    );
}

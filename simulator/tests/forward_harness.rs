//! Forwarded writes are coordinated at most once: every copy of a `Forward` is claimed from
//! the forwarder, which grants one claim per operation while it waits. Copies that arrive again,
//! late, or after the coordinator restarted bring nothing back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dynakv_core::{CoordMsg, PeerMsg, PutReply};
use dynakv_proto::dvv::NodeClock;
use dynakv_ring::NodeId;
use dynakv_simulator::harness::{n, set, Cluster};

/// A 4-node, N=3 cluster and a key node 4 does not replicate, with its first primary.
fn cluster_and_key() -> (Cluster, String, NodeId) {
    let c = Cluster::new(4, 3, 2, 2);
    let map = c.map();
    let (key, first) = (0..10_000)
        .map(|i| format!("key-{i}"))
        .find_map(|k| {
            let prim = map.preference_list(map.partition_for_key(k.as_bytes()), 3);
            (!prim.contains(&n(4))).then_some((k, prim[0]))
        })
        .expect("a key node 4 does not replicate");
    (c, key, first)
}

/// The recorded messages of coordination kind `pick` (a `Forward`, a `Grant`...).
fn recorded(c: &Cluster, pick: fn(&CoordMsg) -> bool) -> Vec<(NodeId, NodeId, PeerMsg)> {
    c.recorded
        .iter()
        .filter(|(_, _, m)| matches!(m, PeerMsg::Coord(cm) if pick(cm)))
        .cloned()
        .collect()
}

/// Put "v1" blindly through node 4, which forwards it to `first`: the reply and the forward.
fn forwarded_put(
    c: &mut Cluster,
    key: &str,
    first: NodeId,
) -> (PutReply, (NodeId, NodeId, PeerMsg)) {
    c.record(true);
    let v1 = c.put_ok(n(4), key, "v1", &NodeClock::new());
    let forwards = recorded(c, |m| matches!(m, CoordMsg::Forward { .. }));
    c.record(false);
    assert_eq!(forwards.len(), 1, "one forward");
    assert_eq!(forwards[0].1, first, "to the first primary");
    (v1, forwards[0].clone())
}

/// Seed 2644's trace, by hand: node 4 forwards a put to the key's first primary, the client
/// overwrites the value, the primary restarts, and then the old forward arrives again (a
/// duplicate, a resend after a reconnect), with an old grant before and after it. The
/// restarted primary kept nothing in memory, yet the overwritten value does not come back.
#[test]
fn a_forward_delivered_again_after_the_coordinator_restarts_is_not_coordinated_twice() {
    let (mut c, key, first) = cluster_and_key();
    let (v1, forward) = forwarded_put(&mut c, &key, first);
    let grants = recorded(&c, |m| matches!(m, CoordMsg::Grant { granted: true, .. }));
    assert_eq!(grants.len(), 1, "one grant from node 4");
    c.put_ok(first, &key, "v2", &v1.context);
    c.run_for(1_000);
    assert_eq!(c.read_all(first, &key), set(&["v2"]));

    c.restart(first);
    let (g_from, g_to, grant) = grants[0].clone();
    c.inject(g_from, g_to, grant.clone());
    // The restarted primary's claim for the copy is lost, and the old grant arrives again
    // while the copy waits: it names the first copy's nonce, not this one's.
    c.cut_one(first, n(4));
    let (f_from, f_to, forward) = forward;
    c.inject(f_from, f_to, forward.clone());
    c.inject(g_from, g_to, grant);
    c.heal();
    c.run_for(3_000);
    // And once more with every link up: the claim reaches node 4, whose operation has ended.
    c.inject(f_from, f_to, forward);
    c.run_for(1_000);
    assert_eq!(
        c.read_all(first, &key),
        set(&["v2"]),
        "the overwritten value came back"
    );
}

/// Copies of a forward while the forwarder still waits, and after it has its answer, are
/// coordinated once: the write gets one dot, and a late copy cannot undo a later delete.
#[test]
fn copies_of_a_forward_in_one_life_are_coordinated_once() {
    let (mut c, key, first) = cluster_and_key();
    let (v1, (from, to, forward)) = forwarded_put(&mut c, &key, first);
    let deleted = c.delete_w1(first, &key, &v1.context);
    assert!(deleted.dot.is_some());
    c.run_for(1_000);
    for _ in 0..3 {
        c.inject(from, to, forward.clone());
    }
    c.run_for(2_000);
    assert_eq!(
        c.read_all(first, &key),
        set(&[]),
        "the deleted value came back"
    );
}

/// A forward whose forwarder restarted before the copy arrived is not coordinated: the
/// forwarder no longer waits for it (its client had its answer, or an error).
#[test]
fn a_forward_from_a_forwarder_that_restarted_is_dropped() {
    let (mut c, key, first) = cluster_and_key();
    let (v1, (from, to, forward)) = forwarded_put(&mut c, &key, first);
    c.put_ok(first, &key, "v2", &v1.context);
    c.restart(n(4));
    c.restart(first);
    c.inject(from, to, forward);
    c.run_for(2_000);
    assert_eq!(c.read_all(first, &key), set(&["v2"]));
}

/// A claim delivered twice is answered twice; the answers may arrive in either order. The
/// copy it names is started by whichever comes first, and the other starts nothing: a second
/// answer to the same claim is a grant too, so it cannot cancel the copy (found in review: a
/// refusal overtaking the grant left the forwarder's operation claimed and the write stranded).
#[test]
fn a_claim_answered_twice_starts_the_write_once_in_either_order() {
    let (mut c, key, first) = cluster_and_key();
    c.record(true);
    // The replica's claim is lost on the way; the forwarder's answers are held.
    c.cut_one(first, n(4));
    let put = c.submit(
        n(4),
        dynakv_core::ClientRequest::Put {
            key: key.clone().into(),
            value: "v1".into(),
            context: NodeClock::new(),
            opts: Default::default(),
        },
    );
    let claims = recorded(&c, |m| matches!(m, CoordMsg::Claim { .. }));
    assert_eq!(claims.len(), 1, "one claim for the one copy");
    c.heal();
    c.cut_one(n(4), first);
    let (from, to, claim) = claims[0].clone();
    c.inject(from, to, claim.clone());
    c.inject(from, to, claim);
    let grants = recorded(&c, |m| matches!(m, CoordMsg::Grant { .. }));
    assert_eq!(grants.len(), 2);
    c.heal();
    // The second answer first, then the first.
    for (from, to, grant) in grants.into_iter().rev() {
        c.inject(from, to, grant);
    }
    c.run_for(500);
    let reply = c.take_reply(put).expect("the forwarded put was answered");
    assert!(
        matches!(reply, dynakv_core::ClientReply::Written(_)),
        "{reply:?}"
    );
    assert_eq!(c.read_all(first, &key), set(&["v1"]));
}
